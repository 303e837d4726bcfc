"""A local agency on Thespian's real TCP transport, for tests and experiments.

:class:`LocalAgency` starts N :class:`actors.raft_peer.RaftPeer` actors in one
``multiprocTCPBase`` ActorSystem on the loopback interface.  Thespian runs
every actor in its own OS process (forked from the ActorSystem's admin
process), so each peer has its own pid, its own RocksDB store under
``<base_dir>/<node_id>`` and talks to the others over real TCP sockets::

    with LocalAgency(tmp_path, n=3) as agency:
        leader = agency.leader(timeout_s=10)
        assert agency.write("/x", 1).status == "ok"
        assert agency.read("/x").result["values"] == [1]
        agency.kill(leader)                 # SIGKILL of that peer's process
        agency.leader(timeout_s=10)         # one of the survivors
    # leaving the block shuts the ActorSystem down and checks the processes

Process layout (``Process Startup Method`` is the default ``fork``)::

    this process --fork--> (intermediate, exits at once) --fork--> admin
    admin --fork--> logger
    admin --fork--> one process per RaftPeer

Loopback only.  Out of the box Thespian advertises the address of the
interface that routes to 8.8.8.8 (found with a connected UDP socket) and
binds every listening socket to all interfaces.  While an agency runs this
module therefore sets ``THESPIAN_BASE_IPADDR=127.0.0.1`` (so every advertised
address is 127.0.0.1 and no route probing happens) and installs a small
patch on Thespian's ``IPActorAddress.bindArgs`` so that sockets whose
advertised address is a loopback address bind to that address instead of
``0.0.0.0``.  Both are inherited by the forked admin and actor processes.

Quiet output.  Thespian has two logs: its internal ``thesplog`` (warnings and
up appended to ``$TMPDIR/thespian.log`` by default) and the actors' standard
``logging``, forwarded to a logger process that writes to stderr by default.
Here both go to files under ``base_dir`` (``thespian.log`` and
``actors.log``), which is also where to look when a peer misbehaves.

Client semantics.  :meth:`write` and :meth:`read` use ``ActorSystem.ask``
(which returns the next message from *any* actor, so late answers to earlier
asks are skipped by matching ``(client, req_id)``), ask the last known leader
first and fall back to the other live peers on timeouts, ``fail`` answers
(no leader, leader not ready, ...) and ``unknown`` answers, each attempt with
a fresh, increasing ``req_id`` (the state machine refuses a req_id at or
below the client's last applied one).  Retrying an ``unknown`` write may
apply it twice, which is harmless for the plain ``set`` that :meth:`write`
issues; use :meth:`request` with ``retry_unknown=False`` for anything else.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from thespian.actors import ActorSystem, PoisonMessage

from actors.raft_peer import RaftPeer
from protocol.agency import (
    FAIL,
    OK,
    UNKNOWN,
    AgencyReply,
    AgencyRequest,
    Mutation,
    Read,
    StatusQuery,
    StatusReply,
    Txn,
)
from protocol.host import HostConfig
from protocol.raft import RaftBoot, RaftTuning
from runtime.cluster_auth import install as install_cluster_auth
from runtime.cluster_auth import new_secret

log = logging.getLogger("chorus.agency_local")

LOOPBACK = "127.0.0.1"

# FAIL answers that say "not now" rather than "never": worth another attempt.
_TRANSIENT_FAILS = (
    "no leader known",
    "peer is starting",
    "leader not ready",
    "leadership lost",
    "entry was overwritten",
    "overloaded",
)


# ----------------------------------------------------------------- loopback
_bind_patch_installed = False


def _install_bind_patch() -> None:
    """Make Thespian bind to the address it advertises, not 0.0.0.0.

    ``IPActorAddress`` keeps the advertised ``sockname`` (the node's
    ``cluster_host``, through THESPIAN_BASE_IPADDR) and, for "external"
    addresses (all of the TCP transport's listening sockets), a bind name of
    ``('', port)``: every interface.  The patched ``bindArgs`` binds to the
    advertised host instead, so the cluster ports listen only where the
    configuration says (loopback by default); it only ever narrows what is
    exposed."""
    global _bind_patch_installed
    if _bind_patch_installed:
        return
    from thespian.system.transport.IPBase import IPActorAddress

    original = IPActorAddress.bindArgs

    def bindArgs(self: Any) -> tuple:
        args = original.fget(self)
        host = self.sockname[0] if self.sockname else None
        if args and args[0][0] in ("", "0.0.0.0") and isinstance(host, str) and host not in ("", "0.0.0.0"):
            return ((host,) + tuple(args[0][1:]),)
        return args

    bindArgs.__doc__ = "bindArgs bound to the advertised sockname (runtime.agency_local)"
    IPActorAddress.bindArgs = property(bindArgs)
    _bind_patch_installed = True


# Thespian pauses a transmit after a hiccup -- EAGAIN while awaiting the
# receiver's ACK, or the connection closed under it -- for MIN_BACKOFF_DELAY
# * 1.7, growing by 1.7 on each further failure up to about 7 s.  Its 20 ms
# minimum (a first pause of 34 ms) is a tail-latency source between two
# actors that message each other both ways at once: Thespian reuses one TCP
# connection per pair of actors in both directions, and a transmit awaiting
# its ACK is then often woken without one (a Dispatcher and a shard leader
# hit this about ten times a second at 10,000 msgs/s, which put p99 over
# 50 ms on a single node).  A 1 ms minimum keeps the exponential growth for
# a peer that stays unreachable.
THESPIAN_BACKOFF_MIN_MS = 1.0


def tune_thespian_transport() -> None:
    """Shorten Thespian's first transmit back-off (see THESPIAN_BACKOFF_MIN_MS).
    Call before starting the ActorSystem: its processes inherit the setting."""
    import thespian.system.transport as transport

    transport.MIN_BACKOFF_DELAY = timedelta(milliseconds=THESPIAN_BACKOFF_MIN_MS)


_PORTS_HANDED_OUT: set[int] = set()
FREE_PORT_LOW = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago, never the same twice in a
    process.  Chosen below the kernel's ephemeral range: a port from that
    range (what binding port 0 gives) can be taken by any outgoing
    connection -- Thespian opens many -- before the node gets to bind it."""
    import random

    top = _ephemeral_low() - 1
    for _ in range(100 if top > FREE_PORT_LOW + 1000 else 0):
        port = random.randint(FREE_PORT_LOW, top)
        if port in _PORTS_HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _PORTS_HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- processes
def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state),
    or None if there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    st = _proc_stat(pid)
    return st[19] if st else None  # field 22 of stat(5)


def _parent_pid(pid: int) -> int | None:
    st = _proc_stat(pid)
    return int(st[1]) if st else None


def pid_listening_on(port: int) -> int | None:
    """The pid of the process with a TCP socket listening on ``port`` (from
    /proc): how a launcher finds a Thespian admin it has not learned the pid
    of yet (one that failed early), so that it can stop it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
            if any(os.readlink(f"/proc/{name}/fd/{fd}") in inodes for fd in fds):
                return int(name)
        except OSError:
            continue
    return None


def _children_of(ppid: int) -> list[int]:
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            st = _proc_stat(int(name))
            if st and int(st[1]) == ppid:
                out.append(int(name))
    return out


def reap_new_children(before: set[int]) -> None:
    """Thespian starts the admin through a short-lived intermediate child
    of this process (it forks the admin and exits) and never waits for it;
    reap exactly the children that appeared since ``before`` and have
    exited, so no zombie is left."""
    for pid in set(_children_of(os.getpid())) - before:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.01)


def process_exists(pid: int) -> bool:
    """True while ``pid`` names a process, zombies included
    (``os.kill(pid, 0)`` succeeds)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_zombie(pid: int) -> bool:
    st = _proc_stat(pid)
    return bool(st) and st[0] in ("Z", "X")


# -------------------------------------------------------------------- agency
class LocalAgency:
    """N RaftPeers in one Thespian ``multiprocTCPBase`` ActorSystem on 127.0.0.1.

    ``node_ids`` defaults to ``a1 .. aN``.  ``admin_port`` defaults to a free
    port.  Use as a context manager, or call :meth:`start` and, in a
    ``finally``, :meth:`shutdown`.

    A client attempt waits ``first_attempt_timeout_s`` for its answer, each
    further attempt of the same call twice as long, up to
    ``attempt_timeout_s``: a request forwarded to a leader that just died is
    silently lost (the follower's send fails; nobody answers), so the first
    retry should come about when a new leader can have been elected."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        n: int = 3,
        *,
        node_ids: Sequence[str] | None = None,
        admin_port: int | None = None,
        tuning: RaftTuning | None = None,
        request_timeout_s: float = 5.0,
        client: str = "agency-local",
        attempt_timeout_s: float = 2.0,
        first_attempt_timeout_s: float = 0.5,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.node_ids = tuple(node_ids) if node_ids is not None else tuple(f"a{i}" for i in range(1, n + 1))
        if len(set(self.node_ids)) != len(self.node_ids) or not self.node_ids:
            raise ValueError(f"node ids must be distinct and non-empty: {self.node_ids}")
        self.admin_port = admin_port
        self.tuning = tuning or RaftTuning()
        self.request_timeout_s = request_timeout_s
        self.client = client
        self.attempt_timeout_s = attempt_timeout_s
        self.first_attempt_timeout_s = first_attempt_timeout_s
        self.asys: ActorSystem | None = None
        self.addrs: dict[str, Any] = {}
        self.pids: dict[str, int] = {}
        self.killed: set[str] = set()
        self.leader_hint: str | None = None
        self.system_pids: dict[str, int] = {}  # "admin", "logger" -> pid
        self._start_times: dict[int, str | None] = {}
        self._req_id = 0
        self._env_saved: dict[str, str | None] | None = None
        self._stopped = False
        self._leftovers: list[int] = []

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LocalAgency":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def start(self, boot_timeout_s: float = 30.0) -> "LocalAgency":
        """Start the ActorSystem and the peers, boot them, learn their pids.

        On any failure everything started so far is shut down again."""
        if self.asys is not None:
            raise RuntimeError("already started")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.admin_port is None:
            self.admin_port = free_port()
        try:
            self._set_env()
            _install_bind_patch()
            tune_thespian_transport()
            install_cluster_auth(new_secret())  # one ActorSystem: its processes share the secret
            before = set(_children_of(os.getpid()))
            self.asys = ActorSystem(
                "multiprocTCPBase",
                {"Admin Port": self.admin_port},
                logDefs=self._log_defs(),
                transientUnique=True,  # never becomes the process-global ActorSystem
            )
            self._reap_intermediate(before)
            for nid in self.node_ids:
                self.addrs[nid] = self.asys.createActor(RaftPeer)
            peers = tuple((nid, self.addrs[nid]) for nid in self.node_ids)
            for nid in self.node_ids:
                boot = RaftBoot(
                    node_id=nid,
                    peers=peers,
                    voters=self.node_ids,
                    tuning=self.tuning,
                    host=HostConfig(nid, str(self.base_dir / nid)),
                    request_timeout_s=self.request_timeout_s,
                )
                self.asys.tell(self.addrs[nid], boot)
            deadline = time.monotonic() + boot_timeout_s
            for nid in self.node_ids:
                while True:
                    st = self.status(nid, timeout_s=min(1.0, max(0.05, deadline - time.monotonic())))
                    if st is not None and st.pid is not None and st.status.get("role") != "starting":
                        self.pids[nid] = st.pid
                        self._start_times[st.pid] = _start_time(st.pid)
                        break
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"peer {nid} did not boot within {boot_timeout_s}s "
                                           f"(see {self.base_dir / 'actors.log'})")
                    time.sleep(0.05)
            self._learn_system_pids()
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self, timeout_s: float = 5.0, kill_leftovers: bool = True) -> list[int]:
        """Shut the ActorSystem down and wait up to ``timeout_s`` for every
        process it ran (peers, admin, logger) to be gone.

        Returns the pids still present after the wait (zombies included:
        ``os.kill(pid, 0)`` still succeeds on them).  With ``kill_leftovers``
        those that are still the very processes we saw (same start time)
        are then SIGKILLed, so nothing outlives the agency even when the
        shutdown misbehaves.  Safe to call again (e.g. from a ``finally``
        after an interrupted call); once complete it returns the same list.

        ``ActorSystem.shutdown()`` itself returns within tens of ms; most of
        the wait is for the admin, which Thespian daemonizes (setsid and a
        double fork), so it is an orphan: once it exits it stays a zombie
        until PID 1 reaps it (1-1.7 s in the sandbox this was written in)."""
        if self._stopped:
            return list(self._leftovers)
        asys = self.asys
        if asys is not None:
            try:
                asys.shutdown()
            except Exception as exc:  # report, but go on cleaning up
                log.warning("ActorSystem shutdown failed: %r", exc)
            # Only now: if something (a watchdog, ^C) interrupted the
            # shutdown above, a second call sends it again.
            self.asys = None
        self._restore_env()
        deadline = time.monotonic() + timeout_s
        left = [p for p in self._watched_pids() if process_exists(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if process_exists(p)]
        if left and kill_leftovers:
            for p in left:
                self._kill_pid(p)
        self._leftovers = left
        self._stopped = True
        return list(left)

    # --------------------------------------------------------------- status
    def status(self, node_id: str, timeout_s: float = 1.0) -> StatusReply | None:
        """The peer's StatusReply, or None without an answer in time."""
        if self.asys is None:
            raise RuntimeError("agency is not running")
        return self._ask(
            self.addrs[node_id], StatusQuery(), timeout_s,
            lambda m: isinstance(m, StatusReply) and m.node_id == node_id,
        )

    def live_nodes(self) -> list[str]:
        return [n for n in self.node_ids if n not in self.killed]

    def leader(self, timeout_s: float = 10.0, exclude: Iterable[str] = ()) -> str | None:
        """Poll the live peers until one says it is the leader; the one with
        the highest term wins if several do.  None after ``timeout_s``."""
        skip = set(exclude)
        deadline = time.monotonic() + timeout_s
        while True:
            best: tuple[int, str] | None = None
            for nid in self.live_nodes():
                if nid in skip:
                    continue
                st = self.status(nid, timeout_s=min(0.5, max(0.05, deadline - time.monotonic())))
                if st is not None and st.status.get("role") == "leader":
                    cand = (int(st.status.get("term", 0)), nid)
                    best = cand if best is None or cand > best else best
            if best is not None:
                self.leader_hint = best[1]
                return best[1]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def pid(self, node_id: str) -> int:
        return self.pids[node_id]

    # ---------------------------------------------------------------- faults
    def kill(self, node_id: str, wait_s: float = 5.0) -> None:
        """SIGKILL the peer's actor process (that process only) and wait for
        it to be gone or a zombie.  The peer is then skipped by requests."""
        pid = self.pids[node_id]
        self.killed.add(node_id)
        if self.leader_hint == node_id:
            self.leader_hint = None
        self._kill_pid(pid)
        deadline = time.monotonic() + wait_s
        while process_exists(pid) and not _is_zombie(pid):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"peer {node_id} (pid {pid}) survived SIGKILL for {wait_s}s")
            time.sleep(0.02)

    # -------------------------------------------------------------- clients
    def write(self, path: str, value: Any, timeout_s: float = 10.0, via: str | None = None) -> AgencyReply:
        """Set ``path`` to ``value``; retried as described in the module doc."""
        return self.request(Txn((Mutation(path, "set", value),)), timeout_s, retry_unknown=True, via=via)

    def read(self, path: str | Sequence[str], timeout_s: float = 10.0, linearizable: bool = True,
             via: str | None = None) -> AgencyReply:
        """Read one path or several; ``result`` is
        ``{"revision": r, "values": [...]}`` on success."""
        paths = (path,) if isinstance(path, str) else tuple(path)
        return self.request(Read(paths, linearizable), timeout_s, retry_unknown=True, via=via)

    def request(self, op: Txn | Read, timeout_s: float = 10.0, retry_unknown: bool = False,
                via: str | None = None) -> AgencyReply:
        """Send ``op`` until a peer answers ``ok`` or the deadline passes.

        The first attempt goes to ``via`` if given (e.g. a follower, to
        exercise forwarding), later ones to the last known leader and the
        other live peers.  Returns the ``ok`` reply, a non-transient ``fail``
        reply, an ``unknown`` reply when ``retry_unknown`` is false, or else
        the last answer seen (a synthesized ``unknown`` one if no peer
        answered)."""
        if self.asys is None:
            raise RuntimeError("agency is not running")
        deadline = time.monotonic() + timeout_s
        last: AgencyReply | None = None
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            target = via if (attempt == 0 and via is not None and via not in self.killed) else \
                self._pick_target(attempt)
            attempt += 1
            if target is None:
                break
            self._req_id += 1
            req_id = self._req_id
            reply = self._ask(
                self.addrs[target], AgencyRequest(self.client, req_id, op),
                min(self.first_attempt_timeout_s * 2 ** min(attempt - 1, 16), self.attempt_timeout_s, remaining),
                lambda m: isinstance(m, AgencyReply) and m.client == self.client and m.req_id == req_id,
            )
            if reply is None:
                log.debug("no answer from %s to req %d", target, req_id)
                if self.leader_hint == target:
                    self.leader_hint = None
                continue
            last = reply
            if reply.leader is not None and reply.leader in self.addrs and reply.leader not in self.killed:
                self.leader_hint = reply.leader
            if reply.status == OK:
                return reply
            if reply.status == UNKNOWN and not retry_unknown:
                return reply
            if reply.status == FAIL and not any(t in reply.error for t in _TRANSIENT_FAILS):
                return reply
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if last is not None:
            return last
        return AgencyReply(self.client, self._req_id, UNKNOWN, None, None,
                           f"no answer from any peer within {timeout_s}s")

    # ------------------------------------------------------------- internal
    def _pick_target(self, attempt: int) -> str | None:
        live = self.live_nodes()
        if not live:
            return None
        if self.leader_hint in live and attempt % 2 == 0:
            return self.leader_hint
        return live[attempt % len(live)]

    def _ask(self, addr: Any, msg: Any, timeout_s: float, match: Callable[[Any], bool]) -> Any:
        """ask(), skipping messages that do not ``match`` (late answers to
        earlier asks, PoisonMessage returns, ...) until ``timeout_s``."""
        assert self.asys is not None
        end = time.monotonic() + timeout_s
        reply = self.asys.ask(addr, msg, timeout_s)
        while True:
            if reply is not None:
                if match(reply):
                    return reply
                if isinstance(reply, PoisonMessage):
                    log.debug("poison returned: %r", reply.poisonMessage)
                else:
                    log.debug("skipping unrelated message %r", reply)
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            # ask() returns None early when the transport run is aborted by a
            # failed transmit of an earlier ask; keep listening until the end.
            reply = self.asys.listen(remaining)
            if reply is None and end - time.monotonic() > 0.01:
                time.sleep(0.01)

    def _log_defs(self) -> dict:
        return {
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "filename": str(self.base_dir / "actors.log"),
                    "formatter": "plain",
                    "level": "WARNING",
                }
            },
            "root": {"handlers": ["file"], "level": "WARNING"},
        }

    _ENV = ("THESPIAN_BASE_IPADDR", "THESPLOG_FILE")

    def _set_env(self) -> None:
        from thespian.system import utilis

        self._env_saved = {k: os.environ.get(k) for k in self._ENV}
        os.environ["THESPIAN_BASE_IPADDR"] = LOOPBACK
        os.environ["THESPLOG_FILE"] = str(self.base_dir / "thespian.log")
        # thesplog caches its file name on first use; make it re-read it.
        utilis._thesplog_file = None

    def _restore_env(self) -> None:
        if self._env_saved is None:
            return
        from thespian.system import utilis

        for k, v in self._env_saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        utilis._thesplog_file = None
        self._env_saved = None

    def _reap_intermediate(self, before: set[int]) -> None:
        reap_new_children(before)

    def _learn_system_pids(self) -> None:
        """The admin is the parent of the actor processes; the logger is the
        admin's other child."""
        parents = {_parent_pid(p) for p in self.pids.values()}
        parents.discard(None)
        if len(parents) != 1:
            return
        admin = parents.pop()
        assert admin is not None
        self.system_pids["admin"] = admin
        self._start_times[admin] = _start_time(admin)
        others = [p for p in _children_of(admin) if p not in self.pids.values()]
        if len(others) == 1:
            self.system_pids["logger"] = others[0]
            self._start_times[others[0]] = _start_time(others[0])

    def _watched_pids(self) -> list[int]:
        return list(self.pids.values()) + list(self.system_pids.values())

    def _kill_pid(self, pid: int) -> None:
        """SIGKILL ``pid`` if it is still the process we learned about."""
        known = self._start_times.get(pid)
        if known is not None and _start_time(pid) not in (None, known):
            return  # the pid was reused by some other process
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
