"""MqttFront: a node's MQTT 3.1.1 front end, the thin actor shell around
``MqttCore`` (``actors/mqtt_core.py``).

Where packets come from:

* production: its host's MQTT listener (``host.open_mqtt_listener``,
  ``runtime/mqtt_listener.py``), an I/O thread that decodes packets and
  posts them as events; the actor watches its descriptor with
  ``ThespianWatch`` (as the Dispatcher does with its bridge);
* the simulator: ``MqttIn`` messages from simulated clients, answered with
  ``MqttOut``.

Everything else is actor messages: ``MqttForward``/``MqttForwardAck``
between the nodes' fronts, ``MqttTakeover`` when a client id connects
elsewhere, the agency (one read of ``/chorus/mqtt`` at boot, then a watch)
and the local Supervisor's ``NodesReply`` (whose nodes are dead).

After every message the shell carries out the core's outboxes in the order
that keeps "persist before acknowledge": store writes are synced, then the
agency transactions, forwards and answers to other nodes go out, then the
packets to the clients.
"""
from __future__ import annotations

from typing import Any

from thespian.actors import ThespianWatch

from actors.base import ChorusActor
from actors.mqtt_bridge import BridgeShell
from actors.mqtt_core import MqttCore
from protocol.agency import AgencyReply, AgencyRequest, Read, Watch, WatchEvents
from protocol.mqtt import Connect
from protocol.mqtt_cluster import (
    MQTT_ROOT,
    MqttBoot,
    MqttForward,
    MqttForwardAck,
    MqttIn,
    MqttOut,
    MqttPeers,
    MqttStatusQuery,
    MqttStatusReply,
    MqttTakeover,
    MqttTakeoverReply,
)
from protocol.node import NodesQuery, NodesReply
from protocol.users import USERS_ROOT, Grants, mqtt_allows

EPOCH_KEY = b"epoch"
NODES_QUERY_S = 1.0
REWATCH_S = 5.0
AGENCY_WAITERS_MAX = 10_000
DECISIONS_MAX = 100_000  # cached permission decisions of MQTT publishes and subscriptions
AGENCY_REPLY_WAIT_S = 5.0  # then a request counts as failed (its outcome is unknown)


class _Tracked:
    """The node's store, remembering whether anything awaits a sync."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.dirty = False

    def put(self, key: bytes, value: bytes) -> None:
        self.store.put(key, value)
        self.dirty = True

    def delete(self, key: bytes) -> None:
        self.store.delete(key)
        self.dirty = True

    def scan(self, start: bytes, end: bytes) -> Any:
        return self.store.scan(start, end)

    def sync(self) -> None:
        if self.dirty:
            self.store.sync()
            self.dirty = False


class MqttFront(ChorusActor, BridgeShell):
    def __init__(self) -> None:
        super().__init__()
        self.bridge_req = 0
        self.bridge_waiting: dict[int, tuple] = {}  # LogAppend req -> (spec, items, attempt)
        self.bridge_retry: list[tuple] = []
        self.boot: MqttBoot | None = None
        self.core: MqttCore | None = None
        self.store: _Tracked | None = None
        self.listener: Any = None
        self.peer_addrs: dict[str, Any] = {}
        self.sim_conns: dict[str, Any] = {}  # simulated connection -> client actor address
        self.replies: list[tuple[Any, Any]] = []
        self.agency_req = 0
        self.agency_waiters: dict[int, tuple[float, Any]] = {}  # req -> (deadline, callback)
        self.revision = 0
        self.watch_id = ""
        self.gen = 0
        self.last_nodes_query = 0.0
        self.last_watch = 0.0
        # with authentication: the users (read once, then followed by a watch),
        # for the listener's password checks and the core's permission checks
        self.users_tree: dict | None = None
        self.users_revision = 0
        self.grants: dict[str, Grants] = {}
        self.decisions: dict[tuple, bool] = {}  # (user, action, topic) -> allowed, while the users are the same

    # ---------------------------------------------------------------- boot
    def on_MqttBoot(self, msg: MqttBoot, sender: Any) -> None:
        if self.boot is not None:
            self.boot = msg
            self._peers(msg.peers)
            return
        if msg.host is not None:
            self.adopt_host_config(msg.host)
        self.boot = msg
        self.store = _Tracked(self.open_store("mqtt"))
        raw = self.store.store.get(EPOCH_KEY)
        epoch = (int(raw) if raw else 0) + 1  # every incarnation numbers its forwards afresh
        self.store.put(EPOCH_KEY, str(epoch).encode())
        self.store.sync()
        self.core = MqttCore(msg.node_id, msg.tuning, self.store, epoch, self.record)
        self.core.routes.bugs = msg.bugs
        self.core.trace_messages = getattr(self.host, "records_wanted", True)  # the simulator's host: always
        self.watch_id = f"mqtt-{msg.node_id}-{epoch}"
        self._peers(msg.peers)
        if msg.listen is not None:
            try:
                self.listener = self.host.open_mqtt_listener(msg.listen)
            except RuntimeError as exc:  # the port is taken, or not ours to bind
                self.record("mqtt.listen_failed", node=msg.node_id, error=str(exc))
                if sender is not None:
                    self.send(sender, ("mqtt-failed", str(exc)))
                self.core = None  # this node serves no MQTT; the launcher stops
                return
        self.record("mqtt.boot", node=msg.node_id, epoch=epoch,
                    port=self.listener.port if self.listener is not None else None)
        if msg.listen is not None and msg.listen.auth:
            self.core.access = self._access
            self._read_users()
        self._load()
        self._arm()
        if sender is not None:
            self.send(sender, ("mqtt-listening", self.listener.port if self.listener is not None else 0))

    def _peers(self, peers: tuple) -> None:
        self.peer_addrs = {n: a for n, a in peers if n != self.boot.node_id and a is not None}
        if self.core is not None:
            self.core.peers = sorted(self.peer_addrs)

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """The node shuts down: close the MQTT sockets now, so the process
        leaves at once and clients see the connection close."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None

    def on_MqttPeers(self, msg: MqttPeers, sender: Any) -> None:
        if self.boot is not None:
            self._peers(msg.peers)

    def _load(self) -> None:
        self._agency(Read((MQTT_ROOT,), linearizable=False), self._loaded)

    def _loaded(self, reply: AgencyReply) -> None:
        if reply.status != "ok" or not isinstance(reply.result, dict):
            return  # the next tick reads again
        self.revision = reply.result.get("revision", 0)
        self.core.agency_loaded((reply.result.get("values") or [None])[0])
        self._watch()

    # -------------------------------------------------------------- users
    def _read_users(self) -> None:
        self._agency(Read((USERS_ROOT,), linearizable=False), self._users_read)

    def _users_read(self, reply: AgencyReply) -> None:
        if reply.status != "ok" or not isinstance(reply.result, dict):
            return  # the next tick reads again
        tree = (list(reply.result.get("values") or []) + [None])[0]
        first = self.users_tree is None
        self.users_revision = max(self.users_revision, reply.result.get("revision", 0))
        self._users_are(dict(tree) if isinstance(tree, dict) else {})
        if first:
            self._watch_users()

    def _watch_users(self) -> None:
        self.send(self.boot.agency, Watch(self.watch_id + "-users", USERS_ROOT, self.users_revision))

    def _users_changed(self, msg: WatchEvents) -> None:
        """A record is stored as many leaves (the agency flattens objects):
        on any change, read the users again (a local read)."""
        if msg.compacted or self.users_tree is None or any(rev > self.users_revision for rev, _, _ in msg.events):
            self._read_users()

    def _users_are(self, tree: dict) -> None:
        if tree == self.users_tree:
            return
        self.users_tree = tree
        self.grants = {n: Grants.of(dict(r, name=n)) for n, r in tree.items() if isinstance(r, dict)}
        self.decisions = {}
        if self.listener is not None:
            self.listener.set_users(tree)  # the listener checks passwords at CONNECT

    def _access(self, user: str | None, action: str, name: str) -> bool:
        """Every PUBLISH asks: decisions are kept until the users change
        (at most DECISIONS_MAX of them)."""
        key = (user, action, name)
        ok = self.decisions.get(key)
        if ok is None:
            g = self.grants.get(user or "")
            ok = g is not None and mqtt_allows(g, action, name)
            if len(self.decisions) >= DECISIONS_MAX:
                self.decisions.clear()
            self.decisions[key] = ok
        return ok

    def _watch(self) -> None:
        self.last_watch = self.now()
        self.send(self.boot.agency, Watch(self.watch_id, MQTT_ROOT, self.revision))

    # ------------------------------------------------------------- agency
    def _agency(self, op: Any, on_reply: Any) -> None:
        """Send ``op`` to the local agency peer; ``on_reply`` gets its reply, or
        a "timeout" one after AGENCY_REPLY_WAIT_S: a request lost on its way to
        the leader must not leave a route write, claim or retained write
        waiting forever (found by the simulator: a route delete lost while the
        leader was cut off was never tried again)."""
        self.agency_req += 1
        self.agency_waiters[self.agency_req] = (self.now() + AGENCY_REPLY_WAIT_S, on_reply)
        if len(self.agency_waiters) > AGENCY_WAITERS_MAX:
            self._agency_timeout(min(self.agency_waiters), "too many requests waiting")
        self.send(self.boot.agency, AgencyRequest(self.watch_id, self.agency_req, op))

    def _agency_timeout(self, req: int, why: str) -> None:
        _, cb = self.agency_waiters.pop(req)
        cb(AgencyReply(self.watch_id, req, "timeout", error=why))  # the outcome is unknown: callers try again

    def on_AgencyReply(self, msg: AgencyReply, sender: Any) -> None:
        waiter = self.agency_waiters.pop(msg.req_id, None)
        if waiter is not None:
            waiter[1](msg)

    def on_WatchEvents(self, msg: WatchEvents, sender: Any) -> None:
        if self.core is not None and msg.watch_id == self.watch_id + "-users":
            self._users_changed(msg)
            return
        if self.core is None or msg.watch_id != self.watch_id:
            return
        if msg.compacted:
            self._load()  # too far behind for the history: read it all again
            return
        for rev, path, value in msg.events:
            if rev > self.revision:
                self.core.agency_event(path, value)
        self.revision = max(self.revision, msg.revision)

    # -------------------------------------------------------------- time
    def _arm(self) -> None:
        self.gen += 1
        self.set_timer(self.boot.tuning.tick_s, ("mqtt-tick", self.gen))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload != ("mqtt-tick", self.gen) or self.core is None:
            return
        now = self.now()
        for req in [r for r, (deadline, _cb) in self.agency_waiters.items() if deadline <= now]:
            self._agency_timeout(req, f"no answer within {AGENCY_REPLY_WAIT_S:g} s")
        self.core.tick(now)
        self.core.routes.retry(now, self._to_node)
        self._bridges_tick(now)
        if self.core.access is not None and self.users_tree is None:
            self._read_users()
        if not self.core.routes_loaded:
            self._load()
        elif now - self.last_watch >= REWATCH_S:
            self._watch()  # idempotent: a restarted agency peer forgot our watch
            if self.users_tree is not None:
                self._watch_users()
        if self.boot.supervisor is not None and now - self.last_nodes_query >= NODES_QUERY_S:
            self.last_nodes_query = now
            self.send(self.boot.supervisor, NodesQuery())
        self._arm()

    def on_NodesReply(self, msg: NodesReply, sender: Any) -> None:
        if self.core is None:
            return
        limit = self.boot.tuning.route_dead_after_s
        seen = dict(msg.seen_ago_s)
        self.core.unseen = seen
        dead = [n for n in self.core.routes.routes if n != self.boot.node_id and seen.get(n, 0.0) > limit]
        live = [n for n, ago in seen.items() if ago <= limit] + [self.boot.node_id]
        if dead and min(live) == self.boot.node_id:
            self.core.nodes_dead(dead)  # one node deletes them; every node hears it from its watch

    # ------------------------------------------------------- client I/O
    def on_WatchMessage(self, msg: Any, sender: Any) -> None:
        if self.listener is None:
            return
        now = self.now()
        for event in self.listener.take():
            if event[0] == "packets":
                self.core.packets(event[1], event[2], now)
            elif event[0] == "closed":
                self.core.closed(event[1], now)

    def on_MqttIn(self, msg: MqttIn, sender: Any) -> None:
        if self.core is None:
            return
        now = self.now()
        if msg.closed:
            self.sim_conns.pop(msg.conn, None)
            self.core.closed(msg.conn, now)
            return
        if msg.conn not in self.core.conns and (not msg.packets or type(msg.packets[0]) is not Connect):
            # a connection this incarnation does not have (it restarted, or closed it): reset, as TCP would
            self.send(sender, MqttOut(msg.conn, (), True))
            return
        self.sim_conns[msg.conn] = sender
        self.core.packets(msg.conn, list(msg.packets), now)

    # ---------------------------------------------------------- cluster
    def on_MqttForward(self, msg: MqttForward, sender: Any) -> None:
        if self.core is None:
            return
        seq = self.core.forwarded(msg, self.now())
        if seq >= 0:
            self.replies.append((sender, MqttForwardAck(self.boot.node_id, msg.epoch, seq, self.core.routes.epoch)))

    def on_MqttForwardAck(self, msg: MqttForwardAck, sender: Any) -> None:
        if self.core is not None:
            self.core.routes.acked(msg.node, msg.epoch, msg.seq, self.now(), msg.dest_epoch)

    def on_MqttTakeover(self, msg: MqttTakeover, sender: Any) -> None:
        if self.core is not None:
            reply = self.core.takeover(msg, self.now())
            if reply is not None:
                self.replies.append((sender, reply))

    def on_MqttTakeoverReply(self, msg: MqttTakeoverReply, sender: Any) -> None:
        if self.core is not None:
            self.core.takeover_reply(msg, self.now())

    def on_MqttStatusQuery(self, msg: MqttStatusQuery, sender: Any) -> None:
        if self.core is not None:
            st = self.core.status()
            st["port"] = self.listener.port if self.listener is not None else None
            latency = getattr(self.listener, "latency", None)
            if latency is not None:
                st["latency"] = latency.snapshot()
            if self.core.access is not None and self.listener is not None:
                st["auth"] = {"users": len(self.grants), **self.listener.auth.stats}
            self.send(sender, MqttStatusReply(self.boot.node_id, st))

    # ------------------------------------------------------------ flush
    def _to_node(self, node: str, msg: Any) -> bool:
        addr = self.peer_addrs.get(node)
        if addr is None:
            return False
        self.send(addr, msg)
        return True

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        super().receiveMessage(msg, sender)
        core = self.core
        if core is not None:
            self._flush(core)
        if self.listener is not None:
            return ThespianWatch([self.listener.fileno()])
        return None

    def _flush(self, core: MqttCore) -> None:
        self.store.sync()  # persist before acknowledging
        self._bridges_flush()
        while core.txns:
            txns, core.txns = core.txns, []
            for txn, cb in txns:
                self._agency(txn, cb)
        core.routes.flush(self.now(), self._to_node)
        for node, m in core.sends:
            self._to_node(node, m)
        core.sends = []
        replies, self.replies = self.replies, []
        for addr, m in replies:
            self.send(addr, m)
        out, closing = core.out, core.to_close
        core.out, core.to_close = {}, set()
        if self.listener is not None:
            if out or closing:
                self.listener.send(out, closing)
            return
        for conn in sorted(set(out) | closing, key=str):  # not a set's per-process order
            addr = self.sim_conns.get(conn)
            if addr is not None:
                self.send(addr, MqttOut(conn, tuple(out.get(conn, ())), conn in closing))
            if conn in closing:
                self.sim_conns.pop(conn, None)
