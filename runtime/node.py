"""One Chorus node as a real process: ``brokerctl run``.

A node is a Thespian ``multiprocTCPBase`` ActorSystem with its own admin
port (the *cluster port*), hosting the same actor classes the simulator
runs: a RaftPeer (agency voter), a Supervisor, a NodeActor (which creates a
ShardReplica per local shard) and a Dispatcher (client protocol and HTTP
API through the socket bridge).  Thespian runs each actor in its own OS
process, forked from the node's admin.

This module is the node's *launcher*, a plain process that

1. reads the configuration (:class:`NodeConfig`: defaults < file < env <
   flags) and checks the data directory's cluster id;
2. starts the ActorSystem bound to the configured host and creates the
   actors;
3. boots the Dispatcher first, so the HTTP API answers at once, including
   ``GET /api/v1/cluster/directory`` (this node's actor addresses);
4. finds its peers: it reads the directory of every seed (``--join`` /
   ``peers``) and of every node those name, and boots the RaftPeer,
   Supervisor and NodeActor with what it found; then enters the Thespian
   convention;
5. keeps reading the directories every second and tells its actors when a
   peer's addresses change (a restarted peer has new ones);
6. on SIGTERM or Ctrl-C shuts the ActorSystem down and waits until every
   process it ran is gone.

Membership goes through a Thespian convention with several potential
leaders (by default every agency voter): each node announces its node id,
cluster id and HTTP endpoint as ActorSystem capabilities, and the
Dispatchers list the members they hear of in their directories.  A
convention does not say where a node's actors are, and a restarted node's
actors get new addresses: the directory carries that, on a port every node
serves anyway; Thespian's own transport carries all actor traffic.
(docs/ARCHITECTURE.md, "Production runtime".)
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from protocol.node import CAP_CLUSTER, CAP_HTTP, CAP_NODE, CONVENTION_CAPABILITY
from protocol.shard import ShardTuning

from runtime.logfmt import configure_stderr, log_defs  # noqa: E402

log = logging.getLogger("chorus.node")

DEFAULT_CLIENT_PORT = 7171
DEFAULT_HTTP_PORT = 7181
DEFAULT_ADMIN_PORT = 7191
DEFAULT_MQTT_PORT = 1883  # MQTT 3.1.1 (the IANA port)
LOCAL_PORT_STRIDE = 100  # node k of `run --nodes N` uses the defaults + (k-1) * stride
DIRECTORY_POLL_S = 1.0
BOOTSTRAP_WAIT_S = 20.0  # at start-up, for the agency to decide whether this node makes the first admin
FAILOVER_GRACE_MS_MIN = 200.0  # below this, two replica reports could not fit in the grace
FAILOVER_GRACE_MS_MAX = 600_000.0
# Every shard replica is a process with a timer and reports to every
# node's supervisor, so their rates set what an idle cluster costs: a
# 16-shard topic (48 replicas) on three nodes took more than the two cores
# of this machine at the simulator's rates (50 ms ticks, reports every
# 150 ms).  Real nodes tick every 100 ms and report four times per
# failover_grace_ms.
SHARD_TICK_MS = 100
REPORTS_PER_GRACE = 4
VERSION = "0.1.0"


@dataclass
class NodeConfig:
    """Everything a node needs to start (see docs/ARCHITECTURE.md for the file format)."""

    node_id: str = "n1"
    cluster_id: str = ""  # empty: take the data directory's, or a new one on first start
    data_dir: str = "data"
    host: str = "127.0.0.1"  # every port binds here; keep the cluster port on a private network
    # the cluster (Thespian) ports bind here and are advertised with it; empty: ``host``
    cluster_host: str = ""
    # where a node that joins (or one of a new multi-node cluster) reads the cluster's secret; it is
    # copied into the data directory (runtime/cluster_auth.py)
    cluster_secret_file: str = ""
    client_port: int = DEFAULT_CLIENT_PORT
    http_port: int = DEFAULT_HTTP_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    mqtt_port: int = DEFAULT_MQTT_PORT  # -1: no MQTT listener
    peers: list[str] = field(default_factory=list)  # HTTP host:port of other nodes (seeds)
    initial_nodes: list[str] = field(default_factory=list)  # node ids of the first cluster; default [node_id]
    # cluster (admin) host:port of the Thespian convention's leaders, in
    # priority order; empty: the agency voters' cluster ports
    convention_leaders: list[str] = field(default_factory=list)
    group_commit_ms: float = 0.0  # 0: sync each write at once (lowest latency); >0: share one sync per window
    # a shard leader silent this long is failed over; stalls shorter than
    # this (a slow fsync, a collector pause) leave leadership where it is
    failover_grace_ms: float = 1500.0
    # hinted handoff for level any (actors/hinted_handoff.py): queued bytes on this node (the oldest hints
    # are dropped beyond), the age after which a hint is dropped, the drain rate
    hh_bytes_max: int = 64 << 20
    hh_age_max_s: float = 3600.0
    hh_drain_bytes_per_s: float = 8 << 20
    # shard moves (actors/moves.py): a leader copies its log to a move's target at most this fast
    move_bytes_per_s: float = 32 << 20
    log_level: str = "WARNING"
    boot_timeout_s: float = 60.0
    # TLS on the client, MQTT and HTTP ports (all three speak TLS only when
    # set; the cluster port is not affected).  PEM files; tls_ca_file is what
    # the nodes trust when they call each other's HTTP API (default: the
    # certificate itself, right for a self-signed one); tls_self_signed
    # makes a certificate for 127.0.0.1/localhost in <data_dir>/tls.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    tls_self_signed: bool = False
    # Limits per listener (runtime/bridge.py, runtime/mqtt_listener.py,
    # runtime/http_api.py).  In-flight bytes: read from one connection and
    # not yet answered (reading pauses beyond); out bytes: queued for a
    # client that does not read (it is disconnected beyond).
    client_connections_max: int = 1024
    client_frame_bytes_max: int = 16 << 20
    client_inflight_bytes_max: int = 64 << 20
    client_out_bytes_max: int = 32 << 20
    mqtt_connections_max: int = 10_000
    mqtt_packet_bytes_max: int = 1 << 20
    mqtt_inflight_bytes_max: int = 8 << 20
    mqtt_out_bytes_max: int = 8 << 20
    http_connections_max: int = 256
    http_body_bytes_max: int = 1 << 20
    # Users and per-tenant permissions on every client port (runtime/authn.py).
    # On by default: the first start of a new cluster creates user "admin"
    # with a random password in <data_dir>/admin.password.  Off: anyone who
    # reaches a port may do anything (a trusted network only).
    auth: bool = True
    user_requests_per_s_max: float = 10_000.0  # per user and node: binary requests and HTTP calls; 0: no limit
    user_mqtt_publishes_per_s_max: float = 100_000.0  # per user and node: MQTT PUBLISH packets; 0: no limit
    # GET /metrics (runtime/metrics.py): whether it needs a user (only where auth is on; false: open like
    # /api/v1/status), and the label sets per kind of series before the rest is summed as "_other"
    metrics_auth: bool = True
    metrics_series_max: int = 200

    @property
    def tls(self) -> bool:
        """Whether the client-facing ports speak TLS."""
        return bool(self.tls_cert_file or self.tls_self_signed)

    @property
    def cluster_addr(self) -> str:
        """The address the cluster (Thespian) ports bind to and advertise."""
        return self.cluster_host or self.host

    @classmethod
    def load(cls, path: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> "NodeConfig":
        """Defaults, then the file (YAML or TOML), then ``CHORUS_<FIELD>``
        environment variables, then flags that are not None."""
        values: dict[str, Any] = {}
        if path:
            values.update(_read_config_file(path))
        env = os.environ if env is None else env
        for f in fields(cls):
            raw = env.get("CHORUS_" + f.name.upper())
            if raw is not None:
                values[f.name] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        cfg = cls()
        for f in fields(cls):
            if f.name in values:
                setattr(cfg, f.name, _coerce(f.name, getattr(cfg, f.name), values[f.name]))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from protocol.topics import _PART_RE  # same rule as topic name parts

        if not _PART_RE.fullmatch(self.node_id):
            raise ValueError(f"node_id {self.node_id!r}: 1-64 characters of A-Z a-z 0-9 . _ -")
        if self.cluster_id and not _PART_RE.fullmatch(self.cluster_id):
            raise ValueError(f"cluster_id {self.cluster_id!r}: 1-64 characters of A-Z a-z 0-9 . _ -")
        for name in ("client_port", "http_port", "admin_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {port}")
        if not -1 <= self.mqtt_port <= 65535:
            raise ValueError(f"mqtt_port must be in 0..65535 (or -1 for none), got {self.mqtt_port}")
        ports = [p for p in (self.client_port, self.http_port, self.admin_port, self.mqtt_port) if p > 0]
        if len(set(ports)) != len(ports):
            raise ValueError(f"client, http, admin and mqtt ports must differ, got {ports}")
        if not FAILOVER_GRACE_MS_MIN <= self.failover_grace_ms <= FAILOVER_GRACE_MS_MAX:
            raise ValueError(f"failover_grace_ms must be in {FAILOVER_GRACE_MS_MIN:g}..{FAILOVER_GRACE_MS_MAX:g}, "
                             f"got {self.failover_grace_ms:g}")
        for p in self.peers:
            _split_endpoint(p)
        for p in self.convention_leaders:
            _split_endpoint(p)
        if self.cluster_host:
            import ipaddress

            try:
                ipaddress.IPv4Address(self.cluster_host)
            except ValueError:
                raise ValueError(f"cluster_host must be an IPv4 address (the cluster ports bind to it), "
                                 f"got {self.cluster_host!r}") from None
        _validate_limits(self)
        _validate_tls(self)
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(l.lower() for l in LOG_LEVELS)}, "
                             f"got {self.log_level!r}")
        self.log_level = self.log_level.upper()
        if not self.initial_nodes:
            self.initial_nodes = [self.node_id]


# name -> (lowest, highest) of the listeners' limits
LIMITS = {
    "client_connections_max": (1, 1_000_000),
    "client_frame_bytes_max": (4096, 1 << 30),
    "client_inflight_bytes_max": (4096, 1 << 40),
    "client_out_bytes_max": (4096, 1 << 40),
    "mqtt_connections_max": (1, 10_000_000),
    "mqtt_packet_bytes_max": (128, 268_435_455 + 5),  # MQTT's largest remaining length + fixed header
    "mqtt_inflight_bytes_max": (128, 1 << 40),
    "mqtt_out_bytes_max": (4096, 1 << 40),
    "http_connections_max": (1, 1_000_000),
    "http_body_bytes_max": (1024, 1 << 30),
    "user_requests_per_s_max": (0, 1e9),  # 0: no limit
    "user_mqtt_publishes_per_s_max": (0, 1e9),
    "metrics_series_max": (1, 100_000),
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _validate_limits(cfg: NodeConfig) -> None:
    for name, (lo, hi) in LIMITS.items():
        v = getattr(cfg, name)
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be in {lo}..{hi}, got {v}")
    if cfg.client_inflight_bytes_max < cfg.client_frame_bytes_max:
        raise ValueError(f"client_inflight_bytes_max ({cfg.client_inflight_bytes_max}) must be at least "
                         f"client_frame_bytes_max ({cfg.client_frame_bytes_max}): one request must fit")


def _validate_tls(cfg: NodeConfig) -> None:
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise ValueError("tls_cert_file and tls_key_file go together: give both, or neither")
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        path = getattr(cfg, name)
        if path and not Path(path).is_file():
            raise ValueError(f"{name}: no such file {path!r}")
    if cfg.tls_ca_file and not cfg.tls:
        raise ValueError("tls_ca_file is set but TLS is not: give tls_cert_file and tls_key_file "
                         "(or tls_self_signed) too")


def prepare_tls(cfg: NodeConfig) -> str:
    """Make the self-signed certificate if asked for and none is given (in
    ``<data_dir>/tls``); returns the file clients should trust ("" without TLS)."""
    from runtime.tls import TlsError, ensure_self_signed, server_context

    try:
        if cfg.tls_self_signed and not cfg.tls_cert_file:
            cfg.tls_cert_file, cfg.tls_key_file = ensure_self_signed(cfg.data_dir)
        if cfg.tls_cert_file:
            server_context(cfg.tls_cert_file, cfg.tls_key_file)  # a bad file: stop here, not in an actor
    except TlsError as exc:
        raise SystemExit(f"node {cfg.node_id}: {exc}") from None
    return cfg.tls_ca_file or cfg.tls_cert_file


def http_client_ssl(cfg: NodeConfig) -> Any:
    """The SSLContext a node uses for other nodes' HTTP API (None without TLS)."""
    if not cfg.tls:
        return None
    from runtime.tls import client_context

    return client_context(cfg.tls_ca_file or cfg.tls_cert_file or None)


def shard_tuning(cfg: NodeConfig) -> ShardTuning:
    """The ShardTuning of this node's replicas (see SHARD_TICK_MS)."""
    return ShardTuning(group_commit_ms=cfg.group_commit_ms, tick_ms=SHARD_TICK_MS,
                       state_interval_ms=max(SHARD_TICK_MS, int(cfg.failover_grace_ms / REPORTS_PER_GRACE)),
                       hh_bytes_max=cfg.hh_bytes_max, hh_age_max_s=cfg.hh_age_max_s,
                       hh_drain_bytes_per_s=cfg.hh_drain_bytes_per_s, move_bytes_per_s=cfg.move_bytes_per_s)


def _coerce(name: str, default: Any, value: Any) -> Any:
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"configuration {name}: cannot use {value!r}") from None


def _read_config_file(path: str) -> dict:
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".toml":
        import tomllib

        doc = tomllib.loads(text)
    else:
        import yaml

        doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: the configuration must be a mapping")
    doc = doc.get("node", doc)
    return {k.replace("-", "_"): v for k, v in doc.items()}


def _split_endpoint(ep: str) -> tuple[str, int]:
    host, sep, port = ep.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{ep!r} is not HOST:PORT")
    return host, int(port)


# ------------------------------------------------------------ addresses
def address_to_str(addr: Any) -> str:
    """A Thespian TCP ActorAddress as ``host:port``."""
    details = getattr(addr, "addressDetails", None)
    sockname = getattr(details, "sockname", None)
    if not sockname:
        raise ValueError(f"not a TCP actor address: {addr!r}")
    return f"{sockname[0]}:{sockname[1]}"


def address_from_str(text: str) -> Any:
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    host, port = _split_endpoint(text)
    return ActorAddress(TCPv4ActorAddress(host, port, external=True))


# ------------------------------------------------------------- data dir
def claim_data_dir(cfg: NodeConfig) -> str:
    """Create the data directory and return the cluster id it belongs to;
    refuse a directory of another cluster or another node."""
    data = Path(cfg.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    ident = data / "identity.json"
    if ident.exists():
        doc = json.loads(ident.read_text())
        if doc.get("node_id") != cfg.node_id:
            raise SystemExit(f"{data} belongs to node {doc.get('node_id')!r}, not {cfg.node_id!r}")
        if cfg.cluster_id and doc.get("cluster_id") != cfg.cluster_id:
            raise SystemExit(f"{data} belongs to cluster {doc.get('cluster_id')!r}, not {cfg.cluster_id!r}")
        return str(doc["cluster_id"])
    cluster_id = cfg.cluster_id or f"c-{secrets.token_hex(6)}"
    tmp = data / "identity.json.tmp"
    tmp.write_text(json.dumps({"node_id": cfg.node_id, "cluster_id": cluster_id,
                               "initial_nodes": cfg.initial_nodes}))
    os.replace(tmp, ident)
    return cluster_id


# ------------------------------------------------------------- directory
def fetch_json(endpoint: str, path: str, timeout_s: float = 2.0, context: Any = None) -> Any:
    """GET http://endpoint{path} as JSON (https:// with the SSLContext
    ``context``), or None if unreachable."""
    if not endpoint:
        return None
    scheme = "https" if context is not None else "http"
    try:
        if context is None:
            r = urllib.request.urlopen(f"{scheme}://{endpoint}{path}", timeout=timeout_s)
        else:
            r = urllib.request.urlopen(f"{scheme}://{endpoint}{path}", timeout=timeout_s, context=context)
        with r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def fetch_directory(endpoint: str, timeout_s: float = 2.0, context: Any = None) -> dict | None:
    """GET http://endpoint/api/v1/cluster/directory, or None if unreachable."""
    doc = fetch_json(endpoint, "/api/v1/cluster/directory", timeout_s, context)
    return doc if isinstance(doc, dict) and isinstance(doc.get("nodes"), list) else None


# ---------------------------------------------------------------- node
class Node:
    """A running node (see the module docstring)."""

    def __init__(self, cfg: NodeConfig, *, on_status: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.say = on_status or (lambda text: log.info(text))
        self.asys: Any = None
        self.addrs: dict[str, Any] = {}
        self.cluster_id = ""
        self.client_port = 0
        self.http_port = 0
        self.mqtt_port = 0
        self.peers: dict[str, dict] = {}  # node id -> directory entry (strings)
        self.joining = False  # a new node added to a running cluster (an agency learner)
        self.admin_pid: int | None = None
        self.convention_leaders: list[str] = []
        self.cluster_voters: tuple[str, ...] = ()  # the agency voters a peer reported at boot
        self.trust_file = ""  # the certificate (or CA) clients trust, when TLS is on
        self.http_ssl: Any = None  # SSLContext for other nodes' HTTP API, when TLS is on
        self.admin_bootstrap = ""  # created | exists | undecided (runtime/authn.py)
        self._stop = False

    # ---------------------------------------------------------- start
    def start(self) -> "Node":
        from thespian.actors import ActorSystem

        from actors.dispatcher import Dispatcher
        from actors.mqtt_front import MqttFront
        from actors.node import NodeActor
        from actors.raft_peer import RaftPeer
        from actors.supervisor import Supervisor
        from protocol.host import HostConfig
        from protocol.node import DispatcherBoot, ListenConfig, NodeEndpoints
        from runtime.agency_local import (
            _children_of,
            _install_bind_patch,
            reap_new_children,
            tune_thespian_transport,
        )
        from runtime.cluster_auth import SECRET_FILE, node_secret
        from runtime.cluster_auth import install as install_cluster_auth

        cfg = self.cfg
        self.cluster_id = claim_data_dir(cfg)
        self.trust_file = prepare_tls(cfg)
        self.http_ssl = http_client_ssl(cfg)
        data = Path(cfg.data_dir).resolve()
        (data / "logs").mkdir(exist_ok=True)
        secret, how = node_secret(data, cfg.cluster_secret_file,
                                  new_cluster=set(cfg.initial_nodes) <= {cfg.node_id} and not cfg.peers)
        install_cluster_auth(secret)  # before the ActorSystem: its processes inherit it
        if how == "created":
            self.say(f"node {cfg.node_id}: new cluster secret in {data / SECRET_FILE}; nodes that join need a copy "
                     f"(--cluster-secret-file)")
        os.environ["THESPIAN_BASE_IPADDR"] = cfg.cluster_addr
        os.environ["THESPLOG_FILE"] = str(data / "logs" / "thespian.log")
        os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")
        from thespian.system import utilis

        utilis._thesplog_file = None
        _install_bind_patch()
        tune_thespian_transport()
        before = set(_children_of(os.getpid()))
        self.asys = ActorSystem("multiprocTCPBase", {"Admin Port": cfg.admin_port, CAP_NODE: cfg.node_id,
                                                     CAP_CLUSTER: self.cluster_id},
                                logDefs=log_defs(str(data / "logs" / "actors.log"), cfg.log_level.upper(), cfg.node_id),
                                transientUnique=True)
        reap_new_children(before)
        self.host_cfg = HostConfig(cfg.node_id, str(data))
        for name, cls in (("raft", RaftPeer), ("supervisor", Supervisor), ("node", NodeActor),
                          ("dispatcher", Dispatcher), ("mqtt", MqttFront)):
            self.addrs[name] = self.asys.createActor(cls)
        self.endpoints = NodeEndpoints(cfg.node_id, admin=f"{cfg.cluster_addr}:{cfg.admin_port}", raft=self.addrs["raft"],
                                       supervisor=self.addrs["supervisor"], node=self.addrs["node"],
                                       dispatcher=self.addrs["dispatcher"], mqtt=self.addrs["mqtt"])
        listen = ListenConfig(host=cfg.host, client_port=cfg.client_port, http_port=cfg.http_port,
                              frame_bytes_max=cfg.client_frame_bytes_max,
                              conn_out_bytes_max=cfg.client_out_bytes_max,
                              connections_max=cfg.client_connections_max,
                              inflight_bytes_max=cfg.client_inflight_bytes_max,
                              http_connections_max=cfg.http_connections_max,
                              http_body_bytes_max=cfg.http_body_bytes_max,
                              tls_cert_file=cfg.tls_cert_file, tls_key_file=cfg.tls_key_file,
                              auth=cfg.auth, user_requests_per_s_max=cfg.user_requests_per_s_max,
                              metrics_auth=cfg.metrics_auth, metrics_series_max=cfg.metrics_series_max)
        boot = DispatcherBoot(cfg.node_id, self.cluster_id, self.addrs["node"], self.addrs["raft"],
                              self.addrs["supervisor"], listen, self.endpoints, self.host_cfg, VERSION)
        reply = self.asys.ask(self.addrs["dispatcher"], boot, 20)
        if not (isinstance(reply, tuple) and reply and reply[0] == "listening"):
            raise RuntimeError(f"the dispatcher did not start listening (answer: {reply!r}); "
                               f"see {data / 'logs'}")
        self.client_port, self.http_port = reply[1], reply[2]
        self.asys.updateCapability(CAP_HTTP, f"{cfg.host}:{self.http_port}")
        self._boot_mqtt(data)
        self._publish()
        mqtt = f"mqtt {cfg.host}:{self.mqtt_port}, " if self.mqtt_port else ""
        self.say(f"node {cfg.node_id}: client {cfg.host}:{self.client_port}, http {cfg.host}:{self.http_port}, "
                 f"{mqtt}cluster {cfg.cluster_addr}:{cfg.admin_port}, data {data}")
        if cfg.tls:
            self.say(f"node {cfg.node_id}: TLS only (1.2 or newer) on the client, MQTT and HTTP ports; "
                     f"certificate {cfg.tls_cert_file}; clients trust {self.trust_file}")
        self._discover(initial=True)
        if cfg.peers and not self.peers and set(cfg.initial_nodes) <= {cfg.node_id} and not (data / "raft").exists():
            # a brand-new node told to join: never form a cluster of its own
            raise SystemExit(f"node {cfg.node_id}: no seed of {', '.join(cfg.peers)} answered within "
                             f"{cfg.boot_timeout_s:g} s; not starting a cluster of its own")
        self._boot_actors()
        if self.joining:
            self._join_agency()
        self._enter_convention()
        self._bootstrap_admin(BOOTSTRAP_WAIT_S)
        self._learn_admin_pid()
        self._write_pidfile()
        return self

    def _bootstrap_admin(self, timeout_s: float) -> None:
        """A new cluster's first admin (runtime/authn.py), made by exactly one
        node; the others, and every later start, find it there.  Undecided
        (no agency quorum yet) it is tried again from the directory poll."""
        if not self.cfg.auth or self.admin_bootstrap in ("created", "exists"):
            return
        from runtime.authn import ADMIN_PASSWORD_FILE, bootstrap_admin

        data = Path(self.cfg.data_dir).resolve()
        self.admin_bootstrap = bootstrap_admin(lambda req, t: self.asys.ask(self.addrs["raft"], req, t),
                                               self.cfg.node_id, data, timeout_s=timeout_s)
        if self.admin_bootstrap == "created":
            path = data / ADMIN_PASSWORD_FILE
            shown = f"password {path.read_text().strip()} (also in {path}, mode 0600)" if sys.stdout.isatty() \
                else f"password in {path} (mode 0600)"
            self.say(f"node {self.cfg.node_id}: new cluster: created user admin (role admin), {shown}; "
                     f"brokerctl run from this directory uses it")

    def _boot_mqtt(self, data: Path) -> None:
        """Start the MQTT front end (it listens unless ``mqtt_port`` is -1)."""
        from protocol.mqtt_cluster import MqttBoot, MqttListenConfig

        cfg = self.cfg
        listen = MqttListenConfig(host=cfg.host, port=cfg.mqtt_port, connections_max=cfg.mqtt_connections_max,
                                  conn_out_bytes_max=cfg.mqtt_out_bytes_max,
                                  packet_bytes_max=cfg.mqtt_packet_bytes_max,
                                  inflight_bytes_max=cfg.mqtt_inflight_bytes_max,
                                  tls_cert_file=cfg.tls_cert_file,
                                  tls_key_file=cfg.tls_key_file, auth=cfg.auth,
                                  user_publishes_per_s_max=cfg.user_mqtt_publishes_per_s_max,
                                  ) if cfg.mqtt_port >= 0 else None
        boot = MqttBoot(cfg.node_id, self.addrs["raft"], self.addrs["supervisor"],
                        ((cfg.node_id, self.addrs["mqtt"]),), listen, host=self.host_cfg,
                        node=self.addrs["node"], dispatcher=self.addrs["dispatcher"])
        reply = self.asys.ask(self.addrs["mqtt"], boot, 20)
        if isinstance(reply, tuple) and reply and reply[0] == "mqtt-failed":
            raise SystemExit(f"node {cfg.node_id}: cannot serve MQTT on {cfg.host}:{cfg.mqtt_port}: {reply[1]} "
                             "(choose another --mqtt-port, or -1 for none)")
        if not (isinstance(reply, tuple) and reply and reply[0] == "mqtt-listening"):
            raise RuntimeError(f"the MQTT front end did not start (answer: {reply!r}); see {data / 'logs'}")
        self.mqtt_port = reply[1]

    def _enter_convention(self) -> None:
        """Register this node's ActorSystem with the Thespian convention.

        Every potential leader (``convention_leaders``, by default the
        agency voters' cluster ports, in node-id order) hears of every
        member; a member hears of the leaders.  Each node's Dispatcher
        watches the convention and lists the members of its own cluster in
        its directory, which is how launchers find nodes they were not told
        of (a node that joined through another seed), with no single point
        of failure while one potential leader is up."""
        cfg = self.cfg
        leaders = list(cfg.convention_leaders)
        if not leaders:
            voters = self.cluster_voters or tuple(sorted(set(cfg.initial_nodes)))
            mine = f"{cfg.cluster_addr}:{cfg.admin_port}"
            for nid in voters:
                admin = mine if nid == cfg.node_id else self.peers.get(nid, {}).get("admin")
                if admin:
                    leaders.append(admin)
            leaders = leaders or [mine]
        self.convention_leaders = leaders
        self.asys.updateCapability(CAP_CLUSTER, self.cluster_id)  # a joining node adopted the cluster's id
        self.asys.updateCapability(CONVENTION_CAPABILITY, leaders)
        self._publish()

    def _mine(self) -> dict:
        cfg = self.cfg
        return {"node_id": cfg.node_id, "client": f"{cfg.host}:{self.client_port}",
                "http": f"{cfg.host}:{self.http_port}", "admin": f"{cfg.cluster_addr}:{cfg.admin_port}",
                "mqtt_listen": f"{cfg.host}:{self.mqtt_port}" if self.mqtt_port else "",
                **{k: address_to_str(self.addrs[k]) for k in ("raft", "supervisor", "node", "dispatcher", "mqtt")}}

    def _publish(self) -> None:
        """Tell the dispatcher the directory it serves."""
        from protocol.node import Directory

        doc = {"cluster_id": self.cluster_id, "convention_leaders": list(self.convention_leaders),
               "nodes": [self._mine()] + [self.peers[n] for n in sorted(self.peers)]}
        self.asys.tell(self.addrs["dispatcher"], Directory(doc))

    def _discover(self, initial: bool = False) -> bool:
        """Read the seeds' and known peers' directories; True if anything changed."""
        cfg = self.cfg
        wanted = [n for n in cfg.initial_nodes if n != cfg.node_id]
        deadline = time.monotonic() + (cfg.boot_timeout_s if initial else 0)
        changed = False
        said: list[str] = []
        while True:
            # our own directory too: it lists nodes registered in the agency
            # that joined through another seed
            own = [f"{cfg.host}:{self.http_port}"] if self.http_port and not initial else []
            endpoints = list(dict.fromkeys(own + list(cfg.peers) + [p["http"] for p in self.peers.values()]))
            heard_from: set[str] = set()
            for ep in endpoints:
                doc = fetch_directory(ep, context=self.http_ssl)
                if doc is None or not doc.get("cluster_id"):
                    continue  # not up, or its launcher has not published its directory yet
                if doc.get("cluster_id") != self.cluster_id:
                    if initial and not self.peers and doc.get("cluster_id") and not cfg.cluster_id \
                            and _fresh_identity(cfg):
                        # a new node joining: adopt the cluster's id
                        self.cluster_id = doc["cluster_id"]
                        _rewrite_identity(cfg, self.cluster_id)
                    else:
                        raise SystemExit(f"{ep} belongs to cluster {doc.get('cluster_id')!r}; this node is in "
                                         f"cluster {self.cluster_id!r}: refusing to join")
                # A node's own entry (first in its directory) is authoritative;
                # what it says of others may be stale (e.g. a peer that restarted).
                for k, entry in enumerate(doc["nodes"]):
                    nid = entry.get("node_id")
                    if not nid or nid == cfg.node_id or not isinstance(entry, dict):
                        continue
                    if k == 0:
                        heard_from.add(nid)
                    elif nid in heard_from or nid in self.peers:
                        continue
                    if self.peers.get(nid) != entry:
                        self.peers[nid] = entry
                        changed = True
            # a joining node (no other initial nodes) waits for at least one seed
            reached = all(n in self.peers for n in wanted) and (bool(self.peers) or not cfg.peers)
            if not initial or reached or time.monotonic() >= deadline or self._stop:
                break
            missing = [n for n in wanted if n not in self.peers] or [f"a seed ({', '.join(cfg.peers)})"]
            if missing != said:
                said = missing
                self.say(f"node {cfg.node_id}: waiting for {', '.join(missing)}")
            time.sleep(0.5)
        if changed:
            self._publish()
        return changed

    def _boot_actors(self) -> None:
        from actors.supervisor import SupervisorBoot
        from protocol.node import NodeBoot
        from protocol.raft import RaftBoot

        cfg = self.cfg
        peers = self._peer_addrs("raft")
        voters = tuple(sorted(set(cfg.initial_nodes)))
        learners: tuple[str, ...] = ()
        cluster = self.cluster_voters = self._cluster_voters()
        if cluster and cfg.node_id not in cluster:
            # Joining a running cluster: never boot as a voter of a
            # configuration of our own (a one-node "cluster" that would elect
            # itself); take the cluster's and ask its leader to add us.
            voters, learners, self.joining = cluster, (cfg.node_id,), True
        self.asys.tell(self.addrs["raft"], RaftBoot(cfg.node_id, peers, voters=voters, learners=learners,
                                                    host=self.host_cfg))
        sups = self._peer_addrs("supervisor")
        nodes = tuple(sorted(set(cfg.initial_nodes) | {n for n, _ in sups}))
        self.asys.tell(self.addrs["supervisor"], SupervisorBoot(cfg.node_id, self.addrs["raft"], sups, nodes,
                                                                grace_s=cfg.failover_grace_ms / 1000.0,
                                                                host=self.host_cfg))
        tuning = shard_tuning(cfg)
        self.asys.tell(self.addrs["node"], NodeBoot(cfg.node_id, self.addrs["raft"], self._peer_addrs("node"),
                                                    tuple(a for _, a in sups), self.addrs["supervisor"], tuning,
                                                    self.host_cfg))
        self._tell_mqtt_peers()

    def _tell_mqtt_peers(self) -> None:
        from protocol.mqtt_cluster import MqttPeers

        self.asys.tell(self.addrs["mqtt"], MqttPeers(self._peer_addrs("mqtt")))

    def _cluster_voters(self) -> tuple[str, ...]:
        """The agency voters as a peer reports them (``GET /api/v1/status``);
        empty when no peer answers with any (a cluster that is forming)."""
        for entry in self.peers.values():
            st = fetch_json(entry.get("http", ""), "/api/v1/status", context=self.http_ssl)
            voters = (st or {}).get("agency", {}).get("voters") if isinstance(st, dict) else None
            if voters:
                return tuple(sorted(voters))
        return ()

    def _join_agency(self) -> None:
        """Ask the agency leader to add this node as a learner (it then
        replicates the cluster's metadata), retrying with the leader hint
        until ``boot_timeout_s``.  A node that is already a member gets
        "configuration unchanged", which is success too."""
        from protocol.agency import OK, AgencyReply, MembershipChange

        cfg = self.cfg
        deadline = time.monotonic() + cfg.boot_timeout_s
        req, last = 0, "no peer answered"
        hint: str | None = None
        while time.monotonic() < deadline and not self._stop:
            order = ([hint] if hint in self.peers else []) + sorted(n for n in self.peers if n != hint)
            for nid in order:
                try:
                    addr = address_from_str(self.peers[nid]["raft"])
                except (KeyError, ValueError):
                    continue
                req += 1
                r = self.asys.ask(addr, MembershipChange(f"join-{cfg.node_id}", req, "add_learner", cfg.node_id,
                                                         self.addrs["raft"]), 5)
                if not isinstance(r, AgencyReply):
                    last = f"{nid} did not answer"
                    continue
                if r.status == OK or "unchanged" in (r.error or ""):
                    self.say(f"node {cfg.node_id}: joined cluster {self.cluster_id} (agency learner)")
                    return
                last = f"{nid}: {r.error or r.status}"
                if r.leader and r.leader != nid:
                    hint = r.leader
                    break
            time.sleep(0.5)
        raise SystemExit(f"node {cfg.node_id}: could not join the agency within {cfg.boot_timeout_s:g} s ({last})")

    def _peer_addrs(self, kind: str) -> tuple[tuple[str, Any], ...]:
        out = [(self.cfg.node_id, self.addrs[kind])]
        for nid in sorted(self.peers):
            try:
                out.append((nid, address_from_str(self.peers[nid][kind])))
            except (KeyError, ValueError):
                continue
        return tuple(sorted(out, key=lambda kv: kv[0]))

    def _tell_peers(self) -> None:
        from protocol.node import NodeEndpoints, PeersAre
        from protocol.raft import RaftBoot

        cfg = self.cfg
        self.asys.tell(self.addrs["raft"], RaftBoot(cfg.node_id, self._peer_addrs("raft"),
                                                    voters=tuple(sorted(set(cfg.initial_nodes))),
                                                    host=self.host_cfg))
        eps = [self.endpoints]
        for nid in sorted(self.peers):
            e = self.peers[nid]
            try:
                eps.append(NodeEndpoints(nid, e.get("client", ""), e.get("http", ""), e.get("admin", ""),
                                         address_from_str(e["raft"]), address_from_str(e["supervisor"]),
                                         address_from_str(e["node"]), address_from_str(e["dispatcher"]),
                                         address_from_str(e["mqtt"]) if e.get("mqtt") else None))
            except (KeyError, ValueError):
                continue
        self.asys.tell(self.addrs["node"], PeersAre(tuple(eps)))
        self._tell_mqtt_peers()

    def _learn_admin_pid(self) -> None:
        from protocol.agency import StatusQuery, StatusReply

        from runtime.agency_local import _parent_pid

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.asys.ask(self.addrs["raft"], StatusQuery(), 1.0)
            if isinstance(r, StatusReply) and r.pid:
                self.admin_pid = _parent_pid(r.pid)
                break

    def _write_pidfile(self) -> None:
        doc = {"launcher": os.getpid(), "admin": self.admin_pid,
               "client": f"{self.cfg.host}:{self.client_port}", "http": f"{self.cfg.host}:{self.http_port}",
               "mqtt": f"{self.cfg.host}:{self.mqtt_port}" if self.mqtt_port else "",
               "tls_ca_file": str(Path(self.trust_file).resolve()) if self.trust_file else ""}
        path = Path(self.cfg.data_dir) / "node.pid"
        path.write_text(json.dumps(doc))

    # ----------------------------------------------------------- run
    def run_forever(self) -> None:
        while not self._stop:
            slept = 0.0
            while slept < DIRECTORY_POLL_S and not self._stop:
                time.sleep(0.1)
                slept += 0.1
            if self._stop:
                break
            try:
                if self.admin_bootstrap == "undecided":
                    self._bootstrap_admin(1.0)
                if self._discover():
                    self._tell_peers()
            except SystemExit:
                raise
            except Exception:
                log.exception("directory poll failed")

    def stop(self) -> None:
        self._stop = True

    def shutdown(self, timeout_s: float = 10.0) -> list[int]:
        """Shut the ActorSystem down; returns pids still alive (should be none)."""
        from runtime.agency_local import _children_of, process_exists

        if self.asys is None:
            return []
        watched = []
        if not self.admin_pid and self.cfg.admin_port:  # the start failed before it learned it: who listens there
            from runtime.agency_local import pid_listening_on

            pid = pid_listening_on(self.cfg.admin_port)
            self.admin_pid = pid if pid is not None and pid != os.getpid() else None
        if self.admin_pid:
            watched = [self.admin_pid] + _children_of(self.admin_pid)
        try:
            # the client-facing actors first: their sockets close at once and
            # clients move to another node while the rest shuts down
            from thespian.actors import ActorExitRequest

            for name in ("dispatcher", "mqtt"):
                if name in self.addrs:
                    self.asys.tell(self.addrs[name], ActorExitRequest())
            self.asys.shutdown()
        except Exception as exc:
            log.warning("ActorSystem shutdown: %r", exc)
        self.asys = None
        deadline = time.monotonic() + timeout_s
        left = [p for p in watched if process_exists(p) and not _zombie(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if process_exists(p) and not _zombie(p)]
        for p in left:  # still running after a clean shutdown: do not leave orphans
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            (Path(self.cfg.data_dir) / "node.pid").unlink()
        except OSError:
            pass
        return left


def _zombie(pid: int) -> bool:
    from runtime.agency_local import _is_zombie

    return _is_zombie(pid)


def _fresh_identity(cfg: NodeConfig) -> bool:
    """True when this data directory has never booted an agency peer."""
    return not (Path(cfg.data_dir) / "raft").exists()


def _rewrite_identity(cfg: NodeConfig, cluster_id: str) -> None:
    ident = Path(cfg.data_dir) / "identity.json"
    doc = json.loads(ident.read_text())
    doc["cluster_id"] = cluster_id
    ident.write_text(json.dumps(doc))


def run_node(cfg: NodeConfig, say: Callable[[str], None] = print) -> int:
    """Start a node, serve until SIGTERM/SIGINT, shut down cleanly."""
    node = Node(cfg, on_status=say)

    def _signal(signum: int, _frame: Any) -> None:
        node.stop()

    old = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            node.start()
        except BaseException:
            node.shutdown()
            raise
        say(f"node {cfg.node_id}: ready (cluster {node.cluster_id}); Ctrl-C or SIGTERM stops it")
        node.run_forever()
    finally:
        left = node.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
    if left:
        say(f"node {cfg.node_id}: killed {len(left)} process(es) that outlived the shutdown: {left}")
    say(f"node {cfg.node_id}: stopped")
    return 0


def from_json(text: str) -> NodeConfig:
    cfg = NodeConfig(**json.loads(text))
    cfg.validate()
    return cfg


def _main() -> None:  # `python -m runtime.node '<json config>'`, used by `run --nodes N`
    cfg = from_json(sys.argv[1])
    configure_stderr(cfg.log_level, cfg.node_id)
    sys.exit(run_node(cfg, say=lambda t: print(t, flush=True)))


if __name__ == "__main__":
    _main()


__all__ = ["NodeConfig", "Node", "run_node", "address_to_str", "address_from_str", "fetch_directory"]
