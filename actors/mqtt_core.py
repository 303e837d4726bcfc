"""The MQTT 3.1.1 broker of one node (sans-IO): connections, sessions,
local delivery, retained messages, wills, keep-alive and client-id
takeover, over the cluster route table of ``actors/mqtt_routes.py``.

The actor shell (``actors/mqtt_front.py``) feeds it decoded packets per
connection, forwarded batches from other nodes, agency watch events and
ticks, and carries out what it leaves in its outboxes, in this order:
store writes then ``sync()`` (persist before acknowledging), agency
transactions, messages to other nodes, packets to connections.

* ``out``: connection -> packets to send; ``to_close``: connections to
  close after their packets.
* ``sends``: (node, message) for other nodes' MqttFronts.
* ``txns``: (Txn, callback(reply)) for the agency.

A publish is delivered to the local sessions whose subscriptions match
(once per session, at the highest QoS of its matching subscriptions,
MQTT-3.3.5-1) and forwarded to the nodes whose routes match.  The
publisher's PUBACK/PUBREC leaves when the local deliveries are stored and
every destination node acknowledged, or after ``ack_wait_max_s``.  A
retained publish (MQTT-3.3.1-5..11) is written to the agency
(``/chorus/mqtt/retained``: replicated and durable) before it is
acknowledged; an empty retained payload deletes it.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Callable

from actors.mqtt_bridge import LogBridges
from actors.mqtt_connect import ConnectFlow
from actors.mqtt_owners import SessionExpiry, SessionOwners
from actors.mqtt_passing import PassMerge
from actors.mqtt_routes import RouteTable, Settle, escape, unescape
from actors.mqtt_session import Msg, Session
from actors.mqtt_trie import TopicTrie
from protocol.agency import Mutation, Txn
from protocol.mqtt import (
    SUBACK_FAILURE,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    parse_shared,
)
from protocol.mqtt_cluster import (
    PASS_HOPS_MAX, RETAINED_ROOT, ROUTES_ROOT, Fwd, MqttForward, MqttTuning,
)

PENDING_PACKETS_MAX = 1000  # packets a client may send before its CONNACK
STATUS_FILTERS_MAX = 100  # route filters per node shown in the status


class _Conn:
    __slots__ = ("id", "client_id", "session", "last_rx", "pending", "graceful", "user")

    def __init__(self, conn_id: Any, now: float) -> None:
        self.id = conn_id
        self.client_id: str | None = None
        self.session: Session | None = None
        self.last_rx = now
        self.pending: list | None = None  # packets held while the CONNECT waits for a takeover
        self.graceful = False
        self.user: str | None = None  # the CONNECT's user name (the listener verified its password)


class MqttCore(ConnectFlow):
    def __init__(self, node_id: str, tuning: MqttTuning, store: Any, epoch: int,
                 record: Callable[..., None] = lambda kind, **f: None) -> None:
        self.node_id = node_id
        self.t = tuning
        self.store = store
        self.record = record
        # per-message records (mqtt.published, mqtt.delivered): the simulator's
        # history wants them; a production node only logs them at debug level,
        # and its shell turns them off when that is off (two calls per message)
        self.trace_messages = True
        self.routes = RouteTable(node_id, tuning, epoch)
        self.bridges = LogBridges(node_id)
        self.owners = SessionOwners(node_id)
        self.retain_gen: dict[str, int] = {}  # topic -> number of its latest retained publish in flight
        self.retain_retry: list[tuple] = []
        self.doomed: dict[str, float | None] = {}  # client id -> when to drop our copy (the registry names another owner)
        self.unseen: dict[str, float] = {}  # node -> seconds since the supervisor heard of it
        self.expiry = SessionExpiry(tuning.session_expiry_s, tuning.session_expiry_scan_s)
        self.passing = PassMerge(tuning.ack_wait_max_s)
        self.clock = 0.0  # the latest time an input brought (for agency callbacks)
        self.local = TopicTrie()  # real filter -> (client id, group or "")
        self.sessions: dict[str, Session] = {}
        self.conns: dict[Any, _Conn] = {}
        self.filter_refs: dict[str, int] = {}  # filter as subscribed -> local sessions with it
        self.retained: dict[str, tuple[bytes, int]] = {}
        self.peers: list[str] = []  # other nodes' ids
        self.takeovers: dict[int, dict] = {}  # CONNECTs on their way to a session: req -> state (_connect)
        self.req = 0
        self.mids = 0
        self.route_waiters: list[tuple[set[str], Callable[[], None]]] = []
        self.routes_written: set[str] = set()  # own routes the agency has
        self.routes_loaded = False
        self.local_rr: dict[tuple[str, str], int] = {}
        # sessions handed over to another node: real filter -> (client id, node);
        # publishes that still reach this node for them are passed on until the
        # other nodes' route tables show the move (``moved_grace_s``)
        self.moved = TopicTrie()
        self.moved_until: list[tuple[float, str, tuple[str, str]]] = []
        self.out: dict[Any, list] = {}
        self.to_close: set[Any] = set()
        self.sends: list[tuple[str, Any]] = []
        self.txns: list[tuple[Txn, Callable[[Any], None]]] = []
        self.stats = {"published": 0, "delivered": 0, "forwarded": 0, "dropped": 0, "denied": 0}
        # (user, "produce" | "consume", topic or filter) -> allowed?  None: no
        # permissions (the simulator, or a node with auth off); see protocol/users.py
        self.access: Callable[[str | None, str, str], bool] | None = None
        self._restore()

    # ------------------------------------------------------------ restore
    def _restore(self) -> None:
        """Persistent sessions from the node's store (after a restart)."""
        for key, value in list(self.store.scan(b"s\x00", b"s\x01")):
            cid = key[2:].decode()
            s = self._new_session(cid, clean=False)
            s.restore_queue()
            doc = json.loads(value)
            s.epoch = int(doc.get("epoch", 0))
            for flt, qos in doc.get("subs", {}).items():
                self._add_sub(s, flt, qos)

    def _new_session(self, cid: str, clean: bool) -> Session:
        s = Session(cid, clean, self.store, self.t.inflight_max, self.t.session_queue_max, self.t.recent_mids_max)
        self.sessions[cid] = s
        return s

    # ---------------------------------------------------------- outboxes
    def _send(self, conn: Any, packets: list) -> None:
        if packets:
            self.out.setdefault(conn, []).extend(packets)

    def _close(self, conn: Any) -> None:
        self.to_close.add(conn)

    # ------------------------------------------------------- connections
    def packets(self, conn_id: Any, packets: list, now: float) -> None:
        self.clock = now
        c = self.conns.get(conn_id)
        if c is None:
            c = self.conns[conn_id] = _Conn(conn_id, now)
        c.last_rx = now
        for p in packets:
            if conn_id in self.to_close:
                return
            if c.pending is not None:
                if len(c.pending) >= PENDING_PACKETS_MAX:
                    self._close(conn_id)
                    return
                c.pending.append(p)
                continue
            self._packet(c, p, now)

    def _packet(self, c: _Conn, p: Any, now: float) -> None:
        t = type(p)
        if t is Publish:
            self._client_publish(c, p, now)
        elif t is Puback or t is Pubcomp:
            if c.session is not None:
                out: list = []
                c.session.acked(p.packet_id, out)
                self._send(c.id, out)
        elif t is Pubrec:
            if c.session is not None:
                out = []
                c.session.received(p.packet_id, out)
                self._send(c.id, out)
        elif t is Pubrel:
            if c.session is not None:
                c.session.in_qos2.discard(p.packet_id)
            self._send(c.id, [Pubcomp(p.packet_id)])
        elif t is Subscribe:
            self._subscribe(c, p)
        elif t is Unsubscribe:
            self._unsubscribe(c, p)
        elif t is Pingreq:
            self._send(c.id, [Pingresp()])
        elif t is Disconnect:
            c.graceful = True  # MQTT-3.14.4-3: the will is discarded
            self._close(c.id)
            self._gone(c, now)
        elif t is Connect:
            if c.client_id is None:
                self._connect(c, p, now)
            else:
                self._abort(c, now)  # MQTT-3.1.0-2: a second CONNECT

    def closed(self, conn_id: Any, now: float) -> None:
        """The connection dropped (or the listener closed it): abrupt unless
        a DISCONNECT came first."""
        c = self.conns.get(conn_id)
        if c is not None:
            self._gone(c, now)
        self.to_close.discard(conn_id)
        self.out.pop(conn_id, None)

    def _abort(self, c: _Conn, now: float) -> None:
        self._close(c.id)
        self._gone(c, now)

    def _gone(self, c: _Conn, now: float) -> None:
        if self.conns.pop(c.id, None) is None:
            return
        if c.session is None:
            self._abandon(c.id)
        s = c.session
        if s is None or s.conn != c.id:
            return  # never connected, or taken over already
        s.conn = None
        will, s.will = s.will, None
        if will is not None and not c.graceful:
            self.record("mqtt.will", node=self.node_id, client=s.client_id, topic=will.topic)
            self.publish(will.topic, will.payload, will.qos, will.retain, now, None)
        if s.clean:
            self._discard(s)
        self.record("mqtt.disconnected", node=self.node_id, client=s.client_id, graceful=c.graceful)

    def _discard(self, s: Session) -> None:
        for flt in list(s.subs):
            self._drop_sub(s, flt)
        s.forget()
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
        if self.routes_loaded:
            self._sync_routes(None)

    # ------------------------------------------------------ (UN)SUBSCRIBE
    def _add_sub(self, s: Session, flt: str, qos: int) -> bool:
        """True when this node had no subscription to ``flt`` before (a new route)."""
        group, real = parse_shared(flt)
        s.subs[flt] = qos
        if not self.local.add(real, (s.client_id, group or "")):
            return False
        n = self.filter_refs.get(flt, 0)
        self.filter_refs[flt] = n + 1
        return n == 0

    def _drop_sub(self, s: Session, flt: str) -> None:
        if s.subs.pop(flt, None) is None:
            return
        group, real = parse_shared(flt)
        if self.local.remove(real, (s.client_id, group or "")):
            n = self.filter_refs.get(flt, 0) - 1
            if n <= 0:
                self.filter_refs.pop(flt, None)
            else:
                self.filter_refs[flt] = n

    def _subscribe(self, c: _Conn, p: Subscribe) -> None:
        s = c.session
        if s is None:
            return
        codes = []
        fresh = []
        for flt, qos in p.topics:
            if flt not in s.subs and len(s.subs) >= self.t.subscriptions_per_session_max:
                codes.append(SUBACK_FAILURE)
                continue
            if self.access is not None and not self.access(c.user, "consume", flt):
                self.stats["denied"] += 1
                self.record("mqtt.denied", node=self.node_id, client=s.client_id, user=c.user, filter=flt)
                codes.append(SUBACK_FAILURE)
                continue
            self._add_sub(s, flt, qos)
            codes.append(qos)  # every QoS is granted as asked
            fresh.append((flt, qos))
        s.save_subs()
        self.record("mqtt.subscribed", node=self.node_id, client=s.client_id, filters=tuple(f for f, _ in fresh))
        conn = c.id

        def ack() -> None:
            if s.conn != conn:
                return
            out: list = [Suback(p.packet_id, tuple(codes))]
            for flt, qos in fresh:  # MQTT-3.3.1-6: retained messages on subscribe
                group, real = parse_shared(flt)
                if group is None:
                    for topic in self._retained_matching(real):
                        payload, rq = self.retained[topic]
                        s.offer(Msg(topic, payload, min(qos, rq), self._mid(), True), out)
            self._send(conn, out)

        self._sync_routes(ack)

    def _unsubscribe(self, c: _Conn, p: Unsubscribe) -> None:
        s = c.session
        if s is None:
            return
        for flt in p.filters:
            self._drop_sub(s, flt)
        s.save_subs()
        self._send(c.id, [Unsuback(p.packet_id)])
        self._sync_routes(None)

    def _retained_matching(self, real: str) -> list[str]:
        probe = TopicTrie()
        probe.add(real, 0)
        return sorted(t for t in self.retained if probe.has_match(t))

    # --------------------------------------------------------- own routes
    def _sync_routes(self, then: Callable[[], None] | None) -> None:
        """Write this node's route changes to the agency; ``then`` runs once
        they are committed (at once when nothing changed)."""
        want = set(self.filter_refs)
        add = want - self.routes_written
        drop = self.routes_written - want
        if not add and not drop:
            if then is not None:
                if any(w for w, _ in self.route_waiters):
                    self.route_waiters.append((set(), then))  # keep SUBACKs in order
                else:
                    then()
            return
        self.routes_written = set(want)
        muts = tuple(Mutation(f"{ROUTES_ROOT}/{self.node_id}/{escape(f)}", "set", 1) for f in sorted(add)) + \
            tuple(Mutation(f"{ROUTES_ROOT}/{self.node_id}/{escape(f)}", "delete") for f in sorted(drop))
        waiter = (set(add), then)
        if then is not None or add:
            self.route_waiters.append(waiter)

        def done(reply: Any) -> None:
            result = getattr(reply, "result", None)
            if getattr(reply, "status", "") != "ok" or (isinstance(result, dict) and not result.get("ok", True)):
                # not committed (no leader, a partition, refused as stale): try again at the next tick
                self.routes_written -= add
                self.routes_written |= drop
                return
            for w, _ in self.route_waiters:  # the SUBACKs waiting for these filters (a retry's too)
                w.difference_update(add)
                w.intersection_update(self.filter_refs)
            self._release_waiters()

        self.txns.append((Txn(muts), done))

    def _release_waiters(self) -> None:
        while self.route_waiters and not self.route_waiters[0][0]:
            _, then = self.route_waiters.pop(0)
            if then is not None:
                then()

    def agency_loaded(self, tree: dict) -> None:
        """The agency's /chorus/mqtt subtree (boot, or a compacted watch)."""
        tree = tree if isinstance(tree, dict) else {}
        routes = dict(tree.get("routes") or {})
        self.routes_written = {unescape(seg) for seg in routes.pop(self.node_id, None) or {}}
        self.routes.load(routes)  # this node's own routes are kept by _sync_routes, not looked up
        self.retained = {}
        for seg, doc in (tree.get("retained") or {}).items():
            self._retain_doc(unescape(seg), doc)
        self.bridges.load(tree.get("bridges"))
        self.owners.load(tree.get("sessions"))
        for cid, s in list(self.sessions.items()):
            if not s.clean and s.conn is None and not self.owners.mine(cid, s.epoch):
                # taken over or ended elsewhere while this node was away -- or the local agency
                # peer, itself just restarted, has not caught up yet: judged again later
                self.doomed.setdefault(cid, None)  # the grace starts at the next tick
        self.routes_loaded = True
        self._sync_routes(None)

    def agency_event(self, path: str, value: Any) -> None:
        rel = path[len("/chorus/mqtt/"):].split("/")
        if rel[0] == "routes" and len(rel) == 3:
            node, flt = rel[1], unescape(rel[2])
            if node == self.node_id:
                if value is None and flt in self.routes_written:
                    # deleted by a node that took us for dead: say it again
                    self.routes_written.discard(flt)
                    self._sync_routes(None)
                elif value is not None and flt not in self.routes_written:
                    # ours from before a restart, which the boot read (a local one) did not show yet:
                    # the next tick deletes it if no session here has that filter any more
                    self.routes_written.add(flt)
                return
            if value is None:
                self.routes.remove_route(node, flt)
            else:
                self.routes.add_route(node, flt)
        elif rel[0] == "sessions" and len(rel) == 2:
            cid, owner = self.owners.event(rel[1], value)
            s = self.sessions.get(cid)
            connecting = any(tk["cid"] == cid for tk in self.takeovers.values())
            if s is not None and not s.clean and owner != (self.node_id, s.epoch) and not connecting:
                # Another node holds the session now (or nobody): our copy waits for the new
                # owner's takeover and is judged again then.  Only a later epoch closes our
                # client: a peer catching up after a restart replays older changes too.
                if s.conn is not None and owner is not None and owner[1] > s.epoch:
                    self.conns.pop(s.conn, None)
                    self._close(s.conn)
                    s.conn = None
                self.doomed.setdefault(cid, self.clock + self.t.moved_grace_s)
        elif rel[0] == "bridges" and len(rel) == 2:
            self.bridges.set(rel[1], value)
        elif rel[0] == "retained" and len(rel) in (2, 3):
            # the agency keeps {"p": ..., "q": ...} as two leaves, .../p and .../q: one event each
            topic = unescape(rel[1])
            leaf = rel[2] if len(rel) == 3 else ""
            if value is None:
                self.retained.pop(topic, None)
            elif leaf == "p":
                self.retained[topic] = (base64.b64decode(value), self.retained.get(topic, (b"", 0))[1])
            elif leaf == "q":
                if topic in self.retained:
                    self.retained[topic] = (self.retained[topic][0], int(value))
            else:
                self._retain_doc(topic, value)

    def _retain_doc(self, topic: str, doc: Any) -> None:
        if isinstance(doc, dict) and "p" in doc:
            self.retained[topic] = (base64.b64decode(doc["p"]), int(doc.get("q", 0)))

    # ------------------------------------------------------------ PUBLISH
    def _mid(self) -> int:
        self.mids += 1
        return self.mids

    def _client_publish(self, c: _Conn, p: Publish, now: float) -> None:
        s = c.session
        if s is None:
            return
        conn, pid, qos = c.id, p.packet_id, p.qos
        if qos == 2:
            if pid in s.in_qos2:
                self._send(conn, [Pubrec(pid)])  # a resend of one delivered already (MQTT-4.3.3-2)
                return
            s.in_qos2.add(pid)

        def settled() -> None:
            self._send(conn, [Puback(pid) if qos == 1 else Pubrec(pid)])

        if p.topic.startswith("$"):
            # MQTT 4.7.2: '$' topics are the server's; a client's publish to one is dropped
            if qos:
                settled()
            return
        if self.access is not None and not self.access(c.user, "produce", p.topic):
            # acknowledged and dropped, as MQTT-3.3.5-2 allows; counted and recorded
            self.stats["denied"] += 1
            self.record("mqtt.denied", node=self.node_id, client=s.client_id, user=c.user, topic=p.topic)
            if qos:
                settled()
            return
        self.publish(p.topic, p.payload, qos, p.retain, now, settled if qos else None)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, now: float,
                done: Callable[[], None] | None, mid: str | None = None) -> None:
        """Route one publish (from a local client or a will)."""
        mid = mid or f"{self.node_id}.{self.routes.epoch}.{self._mid()}"
        self.stats["published"] += 1
        settle = Settle(done, now + self.t.ack_wait_max_s) if done is not None else None
        if settle is not None:
            self.routes.settles.append(settle)
        if retain:
            self._retain(topic, payload, qos, settle)
        if self.trace_messages:
            self.record("mqtt.published", node=self.node_id, topic=topic, qos=qos, mid=mid)
        nodes, groups = self.routes.destinations(topic, self._has_group_member)
        mine = tuple(k for k, n in groups.items() if n == self.node_id) if groups else ()
        self._deliver_local(topic, payload, qos, mid, mine)
        # sorted: sets of strings iterate in a per-process order (the simulator replays a seed anywhere)
        per_node: dict[str, list[tuple[str, str]]] = {n: [] for n in sorted(nodes)}
        for key, n in groups.items():
            if n != self.node_id:
                per_node.setdefault(n, []).append(key)
        for n, gs in sorted(per_node.items()):
            self.stats["forwarded"] += 1
            self.routes.enqueue(n, Fwd(topic, payload, qos, mid, tuple(sorted(gs))), settle)
        if len(self.moved):
            self._pass_on(Fwd(topic, payload, qos, mid), settle)
        self.bridges.capture(topic, payload, settle)
        if settle is not None:
            settle.release()

    def _retain(self, topic: str, payload: bytes, qos: int, settle: Settle | None) -> None:
        path = f"{RETAINED_ROOT}/{escape(topic)}"
        if payload:
            if len(payload) > self.t.retained_payload_bytes_max or \
                    (topic not in self.retained and len(self.retained) >= self.t.retained_max):
                self.stats["dropped"] += 1
                return  # delivered, not retained: over the bounds
            mut = Mutation(path, "set", {"p": base64.b64encode(payload).decode(), "q": qos})
        else:
            mut = Mutation(path, "delete")  # MQTT-3.3.1-10: an empty payload clears it
        gen = self.retain_gen[topic] = self.retain_gen.get(topic, 0) + 1
        if settle is not None:
            settle.add()
            settle.deadline = float("inf")  # acknowledged once stored, not after ack_wait_max_s
        self._retain_write(topic, mut, settle, gen, self.clock + self.t.claim_wait_s)

    def _retain_write(self, topic: str, mut: Mutation, settle: Settle | None, gen: int, until: float) -> None:
        """Write a retained message to the agency; the publisher is
        acknowledged once it is committed.  A write that fails is tried
        again every tick until ``until``; then the publish stays
        unacknowledged (the client sends it again after reconnecting).  A
        newer retained publish to the topic supersedes an older one."""

        def done(reply: Any) -> None:
            current = self.retain_gen.get(topic) == gen
            if getattr(reply, "status", "") == "ok" or not current:
                if current:
                    del self.retain_gen[topic]
                    if mut.kind == "set":
                        self._retain_doc(topic, mut.value)  # read your writes; the watch says it too
                    else:
                        self.retained.pop(topic, None)
                if settle is not None:
                    settle.release()
            elif self.clock < until:
                self.retain_retry.append((topic, mut, settle, gen, until))
            else:
                del self.retain_gen[topic]
                self.stats["dropped"] += 1
                if settle is not None:
                    settle.done = None  # never acknowledged
                    settle.release()

        self.txns.append((Txn((mut,)), done))

    def _has_group_member(self, group: str, real: str) -> bool:
        return any(g == group for _, g in self.local.values(real))

    def _deliver_local(self, topic: str, payload: bytes, qos: int, mid: str, groups: tuple) -> None:
        best: dict[str, int] = {}
        members: dict[tuple[str, str], list[str]] = {}
        for flt, (cid, group) in self.local.match(topic):
            s = self.sessions.get(cid)
            if s is None:
                continue
            g = s.subs.get(f"$share/{group}/{flt}" if group else flt, 0)
            if group:
                if (group, flt) in groups:
                    members.setdefault((group, flt), []).append(cid)
                continue
            if g >= best.get(cid, -1):
                best[cid] = g
        for key, cids in sorted(members.items()):  # one member per shared group, round robin
            cids.sort()
            online = [x for x in cids if self.sessions[x].conn is not None] or cids
            k = self.local_rr.get(key, 0)
            self.local_rr[key] = k + 1
            cid = online[k % len(online)]
            g = self.sessions[cid].subs.get(f"$share/{key[0]}/{key[1]}", 0)
            best[cid] = max(best.get(cid, -1), g)
        for cid, g in sorted(best.items()):  # the trie's sets iterate in a per-process order
            s = self.sessions[cid]
            out: list = []
            s.offer(Msg(topic, payload, min(qos, g), mid), out)
            self.stats["delivered"] += 1
            if out:
                self._send(s.conn, out)
            if self.trace_messages:
                self.record("mqtt.delivered", node=self.node_id, client=cid, topic=topic, mid=mid, qos=min(qos, g))

    def forwarded(self, m: MqttForward, now: float) -> int:
        """A batch from another node; returns the sequence to acknowledge (-1: none)."""
        ok, seq = self.routes.accept(m)
        if ok:
            passing = self.passing
            for f in m.items:
                if len(self.moved) and f.hops < PASS_HOPS_MAX:
                    self._pass_on(f, None)
                if f.hops:
                    if self.routes.gaps and passing.passed(f.mid, f, now, self.routes.gaps):
                        continue  # held until the origin's direct stream here reaches it (actors/mqtt_passing.py)
                elif passing.held:
                    for h in passing.direct(f.mid):
                        self._deliver_forwarded(h)
                self._deliver_forwarded(f)
            if passing.held:
                for h in passing.closed(self.routes.gaps):
                    self._deliver_forwarded(h)
            else:
                last = next((f.mid for f in reversed(m.items) if not f.hops), None)
                if last is not None:
                    passing.direct(last)  # one look per batch: the stream is in the origin's order
        return seq

    def _deliver_forwarded(self, f: Fwd) -> None:
        # the broken variant also hides the copy from the sessions' duplicate filter
        mid = f"{f.mid}+{self._mid()}" if self.routes.bugs.no_forward_dedup else f.mid
        self._deliver_local(f.topic, f.payload, f.qos, mid, f.groups)

    def _expire(self, now: float) -> None:
        """End the persistent sessions offline for ``session_expiry_s``, and
        drop registry entries that name this node for a session it does not
        have (one that expired while the agency could not be written, or one
        whose claim committed after its CONNECT gave up): every entry then
        stands for a session, at most ``sessions_max`` per node."""
        busy = {tk["cid"] for tk in self.takeovers.values()}
        offline = [cid for cid, s in self.sessions.items()
                   if not s.clean and s.conn is None and cid not in busy and cid not in self.doomed]
        for cid in self.expiry.scan(offline, now):
            s = self.sessions[cid]
            self.record("mqtt.expired", node=self.node_id, client=cid, queued=len(s.queue) + len(s.inflight))
            self._discard(s)
        for cid, (node, _epoch) in sorted(self.owners.view.items()):
            if node == self.node_id and cid not in self.sessions and cid not in busy:
                txn, _prev = self.owners.release(cid)
                if txn is not None:
                    self.txns.append((txn, lambda reply: None))  # a failed one is tried at the next scan

    def _pass_on(self, f: Fwd, settle: Settle | None) -> None:
        """Publishes for sessions that moved to another node follow them there."""
        for node in sorted({node for _, (_, node) in self.moved.match(f.topic)}):
            self.routes.enqueue(node, Fwd(f.topic, f.payload, f.qos, f.mid, (), f.hops + 1), settle)

    # -------------------------------------------------------------- time
    def tick(self, now: float) -> None:
        for cid_conn, c in list(self.conns.items()):
            s = c.session
            if s is not None and s.keepalive_s and now - c.last_rx > s.keepalive_s * self.t.keepalive_factor:
                self.record("mqtt.keepalive_timeout", node=self.node_id, client=s.client_id)
                self._abort(c, now)  # MQTT-3.1.2-24
        self.clock = now
        self._tick_connects(now)
        again, self.retain_retry = self.retain_retry, []
        for topic, mut, settle, gen, until in again:
            self._retain_write(topic, mut, settle, gen, until)
        for cid, until in list(self.doomed.items()):
            if until is None:
                self.doomed[cid] = now + self.t.moved_grace_s
            elif now >= until:
                del self.doomed[cid]
                s = self.sessions.get(cid)
                if s is not None and not s.clean and not self.owners.mine(cid, s.epoch):
                    self._discard(s)
        if self.passing.held:
            for f in self.passing.due(now):
                self._deliver_forwarded(f)
        if self.routes_loaded and self.expiry.due(now):
            self._expire(now)
        while self.moved_until and self.moved_until[0][0] <= now:
            _, real, value = self.moved_until.pop(0)
            self.moved.remove(real, value)
        live = []
        for st in self.routes.settles:
            if st.done is not None:
                if now >= st.deadline:
                    st.expire()
                else:
                    live.append(st)
        self.routes.settles = live
        if self.routes_loaded and set(self.filter_refs) != self.routes_written:
            self._sync_routes(None)  # a write that failed (routes_written is set back), once per tick

    def nodes_dead(self, dead: list[str]) -> None:
        """Nodes unheard of for ``route_dead_after_s``: forget their routes;
        the lowest-numbered live node also deletes them from the agency."""
        muts = []
        for node in dead:
            filters = sorted(self.routes.routes.get(node, ()))
            n = self.routes.drop_node(node)
            self.stats["dropped"] += n
            muts += [Mutation(f"{ROUTES_ROOT}/{node}/{escape(f)}", "delete") for f in filters]
        if muts:
            self.txns.append((Txn(tuple(muts)), lambda _r: None))

    def status(self) -> dict:
        return {"sessions": len(self.sessions), "connections": len(self.conns),
                "online": sum(1 for s in self.sessions.values() if s.conn is not None),
                "subscriptions": sum(len(s.subs) for s in self.sessions.values()),
                "routes": {n: len(f) for n, f in sorted(self.routes.routes.items())},
                "route_sample": {n: sorted(f)[:STATUS_FILTERS_MAX] for n, f in sorted(self.routes.routes.items())},
                "retained": len(self.retained), "forward_queued": self.routes.queued(),
                "forward_retries": self.routes.retries, **self.stats,
                **self.bridges.status()}
