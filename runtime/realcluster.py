"""Real node processes for tests and benchmarks: start, kill -9, restart and stop them by PID.

Every node is a ``python -m runtime.node`` process (the same as ``brokerctl
run``) on 127.0.0.1 with free ports and its data under a test directory.

Nodes require users (unless started with ``auth=False``): the harness reads
the first admin's password from whichever node's data directory has it
(``admin.password``) and uses it for its HTTP calls; :attr:`RealCluster.auth`
gives it to clients (``Client(c.client("n1"), **c.auth)``), and
:meth:`RealCluster.mqtt_login` to paho clients.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from runtime.agency_local import _children_of, free_port, process_exists
from runtime.authn import read_admin_password
from runtime.local_cluster import shared_secret_file, spawn_node
from runtime.node import NodeConfig


class RealCluster:
    def __init__(self, base_dir: Path, n: int = 3, *, netns: Any = None, env: dict[str, str] | None = None,
                 **overrides: Any) -> None:
        """``netns``: a :class:`runtime.realfaults.NetLab` whose namespaces
        the nodes run in (each bound to its address there); ``env``: extra
        environment variables of the node processes."""
        self.base_dir = Path(base_dir)
        self.netns = netns
        self.env = dict(env or {})
        ids = [f"n{k}" for k in range(1, n + 1)]
        self.cfgs: dict[str, NodeConfig] = {}
        for nid in ids:
            host = {"host": netns.addr[nid]} if netns is not None else {}
            self.cfgs[nid] = NodeConfig(node_id=nid, cluster_id="c-test", data_dir=str(self.base_dir / nid),
                                        client_port=free_port(), http_port=free_port(), admin_port=free_port(),
                                        mqtt_port=free_port(),
                                        initial_nodes=list(ids), **host, **overrides)
        self.secret_file = shared_secret_file(self.base_dir)
        for nid, cfg in self.cfgs.items():
            cfg.peers = [f"{c.host}:{c.http_port}" for o, c in self.cfgs.items() if o != nid]
            cfg.cluster_secret_file = self.secret_file
        self.procs: dict[str, subprocess.Popen] = {}
        self._password: str | None = None

    # -------------------------------------------------------------- users
    @property
    def password(self) -> str | None:
        """The bootstrap admin's password (None with auth off or before it exists)."""
        if self._password is None:
            for cfg in self.cfgs.values():
                self._password = read_admin_password(cfg.data_dir)
                if self._password:
                    break
        return self._password

    @property
    def auth(self) -> dict[str, str]:
        """``username=``/``password=`` of the admin, for the Python client."""
        return {"username": "admin", "password": self.password} if self.password else {}

    def mqtt_login(self, client: Any) -> Any:
        """Log a paho client in as the admin; returns it."""
        if self.password:
            client.username_pw_set("admin", self.password)
        return client

    def hello(self, client_id: str) -> Any:
        """A binary-protocol Handshake as the admin."""
        from protocol.frames import Auth, Handshake

        if not self.password:
            return Handshake(client_id=client_id)
        return Handshake(client_id=client_id, auth=Auth.PASSWORD, username="admin", password=self.password)

    def mqtt_connect(self, client_id: str, **kw: Any) -> Any:
        """An MQTT CONNECT as the admin."""
        from protocol.mqtt import Connect

        if self.password:
            kw.update(username="admin", password=self.password.encode())
        return Connect(client_id=client_id, **kw)

    def _logs_in(self, nid: str) -> bool:
        """Whether the admin can log in at ``nid`` (its listeners read the
        users a moment after the agency has them); True with auth off."""
        if not self.password:
            return True
        me = self.get(nid, "/whoami", timeout_s=2)
        return isinstance(me, dict) and me.get("name") == "admin"

    def auth_headers(self) -> dict[str, str]:
        import base64

        if not self.password:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"admin:{self.password}".encode()).decode()}

    def add_node(self, nid: str, join: str) -> NodeConfig:
        """Configure a brand-new node that joins the running cluster through
        node ``join`` (like ``brokerctl run --node-id nid --join HOST:PORT``:
        no cluster id, no initial nodes); start it with :meth:`start`."""
        cfg = NodeConfig(node_id=nid, data_dir=str(self.base_dir / nid), client_port=free_port(),
                         http_port=free_port(), admin_port=free_port(), mqtt_port=free_port(),
                         peers=[f"127.0.0.1:{self.cfgs[join].http_port}"], cluster_secret_file=self.secret_file)
        self.cfgs[nid] = cfg
        return cfg

    # ---------------------------------------------------------- lifecycle
    def start(self, *nodes: str, timeout_s: float = 60.0) -> "RealCluster":
        names = nodes or tuple(self.cfgs)
        for nid in names:
            self.spawn(nid)
        for nid in names:
            self.wait_ready(nid, timeout_s)
        self.wait_all_alive(timeout_s)
        return self

    def spawn(self, nid: str) -> subprocess.Popen:
        """Start node ``nid``'s process without waiting for it."""
        cfg = self.cfgs[nid]
        prefix = self.netns.exec_prefix(nid) if self.netns is not None else []
        self.procs[nid] = spawn_node(cfg, Path(cfg.data_dir) / "logs" / "node.out", prefix=prefix, env=self.env)
        return self.procs[nid]

    def wait_all_alive(self, timeout_s: float = 60.0) -> None:
        """Until every running node sees every running node registered and alive."""
        running = sorted(n for n, p in self.procs.items() if p.poll() is None)
        deadline = time.monotonic() + timeout_s
        nodes: Any = None
        for nid in running:
            while time.monotonic() < deadline:
                nodes = self.get(nid, "/nodes", timeout_s=2)
                if isinstance(nodes, list) and {n["node_id"] for n in nodes if n["alive"] and n["client"]} \
                        >= set(running):
                    break
                time.sleep(0.2)
            else:
                raise TimeoutError(f"node {nid} does not see {running} alive: {nodes}")

    def wait_ready(self, nid: str, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[nid]
            if proc.poll() is not None:
                raise RuntimeError(f"node {nid} exited with {proc.returncode}: {self.output(nid)[-2000:]}")
            st = self.get(nid, "/status", timeout_s=2)
            if isinstance(st, dict) and st.get("agency", {}).get("leader") and "ready" in self.output(nid) \
                    and self._logs_in(nid):
                return st
            time.sleep(0.3)
        raise TimeoutError(f"node {nid} not ready in {timeout_s}s: {self.output(nid)[-2000:]}")

    def output(self, nid: str) -> str:
        try:
            return (Path(self.cfgs[nid].data_dir) / "logs" / "node.out").read_text()
        except OSError:
            return ""

    def node_pids(self, nid: str) -> list[int]:
        """The launcher, the Thespian admin and every actor process of a node."""
        if self.netns is not None:  # everything in the node's namespace
            return sorted(set(self.netns.pids(nid)) | {self.procs[nid].pid})
        pids = [self.procs[nid].pid]
        try:
            admin = json.loads((Path(self.cfgs[nid].data_dir) / "node.pid").read_text()).get("admin")
        except (OSError, ValueError):
            admin = None
        if admin:
            pids.append(admin)
            todo = [admin]
            while todo:
                kids = _children_of(todo.pop())
                pids.extend(kids)
                todo.extend(kids)
        return pids

    def kill9(self, nid: str) -> list[int]:
        """SIGKILL every process of the node (a machine failure)."""
        pids = self.node_pids(nid)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs[nid].wait(10)
        return pids

    def stop(self, nid: str, timeout_s: float = 30.0) -> int:
        proc = self.procs[nid]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout_s)
        return proc.returncode

    @classmethod
    def running(cls, base_dir: Path, n: int = 3, **overrides: Any) -> Iterator["RealCluster"]:
        """Start a cluster, yield it, stop it and check nothing outlived
        SIGTERM (the body of a pytest fixture)."""
        c = cls(base_dir, n=n, **overrides)
        try:
            c.start()
            yield c
        finally:
            leftovers = c.stop_all()
            assert leftovers == [], f"processes outlived SIGTERM: {leftovers}"

    def stop_all(self) -> list[int]:
        """SIGTERM every node; then SIGKILL anything of ours still alive.
        Returns the pids that had to be killed."""
        watched = {nid: self.node_pids(nid) for nid in self.procs}
        for nid, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for nid, proc in self.procs.items():
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                pass
        leftovers = []
        deadline = time.monotonic() + 5
        for pids in watched.values():
            for p in pids:
                while process_exists(p) and not _zombie(p) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if process_exists(p) and not _zombie(p):
                    leftovers.append(p)
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        return leftovers

    # -------------------------------------------------------------- HTTP
    def trust_file(self, nid: str) -> str:
        """The certificate a client of a node with TLS trusts ("" without TLS)."""
        cfg = self.cfgs[nid]
        if not cfg.tls:
            return ""
        from runtime.tls import SELF_SIGNED_CERT, SELF_SIGNED_DIR

        return cfg.tls_ca_file or cfg.tls_cert_file or str(Path(cfg.data_dir) / SELF_SIGNED_DIR / SELF_SIGNED_CERT)

    def _ssl(self, nid: str) -> Any:
        from runtime.tls import client_context

        return client_context(self.trust_file(nid)) if self.cfgs[nid].tls else None

    def url(self, nid: str, path: str) -> str:
        scheme = "https" if self.cfgs[nid].tls else "http"
        return f"{scheme}://{self.cfgs[nid].host}:{self.cfgs[nid].http_port}/api/v1{path}"

    def get(self, nid: str, path: str, timeout_s: float = 10) -> Any:
        from runtime.tls import urlopen

        try:
            req = urllib.request.Request(self.url(nid, path), headers=self.auth_headers())
            with urlopen(req, timeout=timeout_s, context=self._ssl(nid)) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")
        except (OSError, ValueError):
            return None

    def call(self, nid: str, method: str, path: str, body: Any = None, timeout_s: float = 20) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(nid, path), data=data, method=method,
                                     headers={"Content-Type": "application/json", **self.auth_headers()})
        from runtime.tls import urlopen

        try:
            with urlopen(req, timeout=timeout_s, context=self._ssl(nid)) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def http_raw(self, nid: str, path: str, timeout_s: float = 20, auth: bool = True) -> tuple[int, dict, bytes]:
        """GET any path of a node's HTTP port (``/metrics``, ``/``): status, headers, body."""
        from runtime.tls import urlopen

        scheme = "https" if self.cfgs[nid].tls else "http"
        req = urllib.request.Request(f"{scheme}://{self.cfgs[nid].host}:{self.cfgs[nid].http_port}{path}",
                                     headers=self.auth_headers() if auth else {})
        try:
            with urlopen(req, timeout=timeout_s, context=self._ssl(nid)) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def mqtt(self, nid: str) -> tuple[str, int]:
        return self.cfgs[nid].host, self.cfgs[nid].mqtt_port

    def client(self, nid: str) -> str:
        return f"{self.cfgs[nid].host}:{self.cfgs[nid].client_port}"

    def create_topic(self, nid: str, name: str, shards: int = 1, rf: int | None = None) -> dict:
        spec = {"name": name, "shards": shards}
        if rf is not None:
            spec["replication_factor"] = rf
        status, body = self.call(nid, "POST", "/topics", spec)
        assert status == 201, body
        self.wait_leaders(nid, name)
        return body

    def wait_leaders(self, nid: str, topic: str, timeout_s: float = 30.0, exclude: str | None = None) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        shards: Any = None
        while time.monotonic() < deadline:
            shards = self.get(nid, f"/shards?topic={topic}")
            if isinstance(shards, list) and shards and all(
                    s["state"] == "ok" and s["leader"] != exclude for s in shards):
                return shards
            time.sleep(0.2)
        raise TimeoutError(f"shards of {topic} not led in {timeout_s}s: {shards}")


def _zombie(pid: int) -> bool:
    from runtime.agency_local import _is_zombie

    return _is_zombie(pid)
