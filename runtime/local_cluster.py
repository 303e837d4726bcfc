"""``brokerctl run --nodes N``: a local cluster of N node processes on one machine.

Node ``nK`` (K = 1..N) gets the default ports plus ``(K-1) * 100`` (client
7171, 7271, ...; HTTP 7181, 7281, ...; cluster 7191, 7291, ...; or from a
``base`` port set) and the data directory ``<data_dir>/nK``.  Each node is a
separate ``python -m runtime.node`` process with every other node as a
seed, so killing one (``kill -9`` of its launcher and its Thespian process
group) is a real node failure and starting it again is a real restart.

The launcher shows a live status panel (rich) read from each node's HTTP
API, and on SIGTERM/Ctrl-C stops every node with SIGTERM and waits for them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from runtime.node import LOCAL_PORT_STRIDE, NodeConfig


def node_configs(base: NodeConfig, n: int) -> list[NodeConfig]:
    import secrets

    ids = [f"n{k}" for k in range(1, n + 1)]
    cluster_id = base.cluster_id or _existing_cluster_id(base.data_dir, ids) or f"c-{secrets.token_hex(6)}"
    if base.tls_self_signed and not base.tls_cert_file:
        # one certificate for every node, so that each trusts the others' HTTP API
        from runtime.node import prepare_tls

        base = replace(base)
        prepare_tls(base)
    out = []
    for k, nid in enumerate(ids):
        off = k * LOCAL_PORT_STRIDE
        out.append(replace(base, node_id=nid, data_dir=str(Path(base.data_dir) / nid),
                           client_port=base.client_port + off, http_port=base.http_port + off,
                           admin_port=base.admin_port + off,
                           mqtt_port=base.mqtt_port + off if base.mqtt_port > 0 else base.mqtt_port,
                           initial_nodes=list(ids), peers=[],
                           cluster_id=cluster_id))
    secret_file = base.cluster_secret_file or shared_secret_file(Path(base.data_dir))
    for cfg in out:
        cfg.peers = [f"{o.host}:{o.http_port}" for o in out if o.node_id != cfg.node_id]
        cfg.cluster_secret_file = secret_file
    return out


def shared_secret_file(base_dir: Path) -> str:
    """``base_dir/cluster.secret``, made on first use: the one secret of the
    nodes a launcher starts (each copies it into its data directory)."""
    from runtime.cluster_auth import SECRET_FILE, new_secret, write_secret

    path = base_dir / SECRET_FILE
    if not path.exists():
        base_dir.mkdir(parents=True, exist_ok=True)
        write_secret(path, new_secret())
    return str(path)


def _existing_cluster_id(data_dir: str, ids: list[str]) -> str | None:
    """The cluster id a previous run left in the nodes' data directories."""
    for nid in ids:
        try:
            return json.loads((Path(data_dir) / nid / "identity.json").read_text())["cluster_id"]
        except (OSError, ValueError, KeyError):
            continue
    return None


def spawn_node(cfg: NodeConfig, log_path: Path, *, prefix: list[str] | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start one node process (its output goes to ``log_path``); ``prefix``
    runs it through a command (``ip netns exec NS``), ``env`` adds variables."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    try:
        return subprocess.Popen([*(prefix or []), sys.executable, "-m", "runtime.node", json.dumps(asdict(cfg))],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env} if env else None)
    finally:
        out.close()


def node_status(cfg: NodeConfig, timeout_s: float = 1.0) -> dict | None:
    from runtime.node import fetch_json, http_client_ssl

    st = fetch_json(f"{cfg.host}:{cfg.http_port}", "/api/v1/status", timeout_s, http_client_ssl(cfg))
    return st if isinstance(st, dict) else None


def stop_node(proc: subprocess.Popen, timeout_s: float = 20.0) -> int | None:
    """SIGTERM the node launcher and wait (it shuts its ActorSystem down)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_node_group(proc.pid)
            proc.kill()
            proc.wait(5)
    return proc.returncode


def kill_node_group(launcher_pid: int, data_dir: str | None = None) -> None:
    """SIGKILL a node: its launcher and its Thespian admin's process group."""
    admin = None
    if data_dir:
        try:
            admin = json.loads((Path(data_dir) / "node.pid").read_text()).get("admin")
        except (OSError, ValueError):
            admin = None
    if admin:
        try:
            os.killpg(os.getpgid(admin), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.kill(launcher_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _panel(cfgs: list[NodeConfig], procs: list[subprocess.Popen]) -> Any:
    from rich.table import Table

    table = Table(title="Chorus local cluster", expand=False)
    for col in ("node", "pid", "state", "client", "http", "mqtt", "agency", "replicas", "sees alive"):
        table.add_column(col)
    for cfg, proc in zip(cfgs, procs):
        st = node_status(cfg, 0.5) if proc.poll() is None else None
        state = "[red]exited[/]" if proc.poll() is not None else ("[green]up[/]" if st else "[yellow]starting[/]")
        agency = ""
        alive = ""
        replicas = ""
        if st:
            ag = st.get("agency", {})
            agency = f"{ag.get('role')} (term {ag.get('term')})"
            alive = ", ".join(n["node_id"] for n in st.get("nodes", []) if n.get("alive"))
            replicas = str(st.get("replicas", ""))
        table.caption = _admin_line(cfgs) or table.caption
        table.add_row(cfg.node_id, str(proc.pid), state, f"{cfg.host}:{cfg.client_port}",
                      f"{cfg.host}:{cfg.http_port}", f"{cfg.host}:{cfg.mqtt_port}" if cfg.mqtt_port > 0 else "-",
                      agency, replicas, alive)
    return table


def _admin_line(cfgs: list[NodeConfig]) -> str:
    """Where the first admin's password is, once the node that made it wrote it."""
    from runtime.authn import ADMIN_PASSWORD_FILE, read_admin_password

    for cfg in cfgs:
        password = read_admin_password(cfg.data_dir) if cfg.auth else None
        if password:
            return (f"user admin, password {password} ({Path(cfg.data_dir) / ADMIN_PASSWORD_FILE}; brokerctl "
                    f"commands run from here use it)")
    return ""


def run_local_cluster(base: NodeConfig, n: int, *, live: bool = True) -> int:
    from rich.console import Console
    from rich.live import Live

    cfgs = node_configs(base, n)
    console = Console()
    if cfgs[0].tls:
        console.print(f"TLS only on the client, MQTT and HTTP ports; clients trust "
                      f"{cfgs[0].tls_ca_file or cfgs[0].tls_cert_file}", highlight=False)
    procs = [spawn_node(c, Path(c.data_dir) / "logs" / "node.out") for c in cfgs]
    stop = {"now": False}

    def _signal(_s: int, _f: Any) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if live and console.is_terminal:
            with Live(_panel(cfgs, procs), console=console, refresh_per_second=1) as view:
                while not stop["now"] and any(p.poll() is None for p in procs):
                    time.sleep(1.0)
                    view.update(_panel(cfgs, procs))
        else:
            console.print(f"started {n} nodes: " + ", ".join(f"{c.node_id} (pid {p.pid}, http {c.host}:"
                                                              f"{c.http_port})" for c, p in zip(cfgs, procs)))
            shown = not cfgs[0].auth
            while not stop["now"] and any(p.poll() is None for p in procs):
                time.sleep(0.5)
                if not shown and _admin_line(cfgs):
                    shown = True
                    console.print(_admin_line(cfgs), highlight=False)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            stop_node(p)
        for s, h in old.items():
            signal.signal(s, h)
    console.print("all nodes stopped")
    return 0
