"""The CONNECT side of :class:`actors.mqtt_core.MqttCore` (sans-IO): how a
CONNECT gets to its persistent session -- fetched from the node the
session-owner registry names (``actors/mqtt_owners.py``), claimed there by
compare-and-set, then answered -- and how a node hands its session over
when another node fetches it.  A mixin: the state it works on (``takeovers``,
``sessions``, ``owners``, ...) belongs to the core."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.mqtt_session import Msg, Session
from protocol.mqtt import ACCEPTED, REFUSED_SERVER_UNAVAILABLE, Connack, Connect, parse_shared
from protocol.mqtt_cluster import MqttTakeover, MqttTakeoverReply

if TYPE_CHECKING:
    from actors.mqtt_core import _Conn


class ConnectFlow:
    def _abandon(self, conn_id: Any) -> None:
        """The client went away before its CONNACK: a connect still fetching
        its session stops there, so that it cannot take the session from the
        node the client tries next (found by the simulator).  A claim already
        sent to the agency cannot be called back: its outcome stands, and one
        whose answer was lost is settled by the registry (``tick``)."""
        for req, tk in list(self.takeovers.items()):
            if tk["conn"] == conn_id and tk["phase"] == "fetch":
                del self.takeovers[req]
                self.record("mqtt.abandoned", node=self.node_id, client=tk["cid"], phase=tk["phase"])

    def _committed(self, tk: dict) -> bool:
        """A claim whose answer was lost (or said "no leader") and the registry
        names this node at the epoch it claimed: it committed.  (A refused
        precondition is a definite no: the entry may name this node at that
        epoch from before, when the claim was made from a view behind it.)"""
        return tk["maybe"] and tk["epoch"] > 0 and \
            self.owners.view.get(tk["cid"]) == (self.node_id, tk["epoch"])

    # ---------------------------------------------------------- CONNECT
    def _connect(self, c: _Conn, p: Connect, now: float) -> None:
        cid = p.client_id or f"auto-{self.node_id}-{self.routes.epoch}-{self._mid()}"
        if cid not in self.sessions and len(self.sessions) >= self.t.sessions_max:
            self._send(c.id, [Connack(False, REFUSED_SERVER_UNAVAILABLE)])
            self._close(c.id)
            self.conns.pop(c.id, None)
            return
        c.client_id = cid
        c.user = p.username
        c.pending = []
        self.req += 1
        self.takeovers[self.req] = {"conn": c.id, "connect": p, "cid": cid, "phase": "", "prev": None, "epoch": 0,
                                    "state": None, "deadline": 0.0, "how": "", "maybe": False,
                                    # a client that gave up waiting (1.5 x its keep-alive) takes nothing
                                    "until": now + min(self.t.claim_wait_s, p.keep_alive_s * self.t.keepalive_factor
                                                       or self.t.claim_wait_s)}
        self._begin(self.req)

    def _begin(self, req: int) -> None:
        """A CONNECT's way to its session (``actors/mqtt_owners.py``): fetch
        the state from the registered owner when that is another node, then
        claim the session in the agency, then connect.  A clean CONNECT
        releases the session instead."""
        tk = self.takeovers[req]
        if not self.routes_loaded:
            # the registry is not read yet (a restart): a claim made from an empty view would be wrong,
            # and its epoch could match an entry already there (found by the simulator)
            tk["phase"] = "retry"
            return
        if tk["state"] is not None:  # starting over: what we fetched is not ours to keep
            s = self.sessions.get(tk["cid"])
            if s is not None and s.conn is None:
                self._discard(s)
        prev = tk["prev"] = self.owners.view.get(tk["cid"])
        tk["state"] = None
        if tk["connect"].clean_session or prev is None or prev[0] == self.node_id:
            self._claim(req)
            return
        tk["phase"] = "fetch"
        tk["deadline"] = self.clock + self.t.takeover_wait_s
        self.sends.append((prev[0], MqttTakeover(tk["cid"], self.node_id, req, False, fetch=True, epoch=prev[1])))

    def _claim(self, req: int) -> None:
        tk = self.takeovers[req]
        cid = tk["cid"]
        if tk["connect"].clean_session:
            txn, prev = self.owners.release(cid)
            epoch = 0
        else:
            txn, prev, epoch = self.owners.claim(cid)
        if prev != tk["prev"]:  # the registry moved on while we fetched: start over from its new owner
            self._begin(req)
            return
        tk["phase"], tk["epoch"] = "claim", epoch
        if txn is None:
            self._claimed(req)
            return

        def done(reply: Any) -> None:
            if self.takeovers.get(req) is not tk or tk["phase"] != "claim":
                return
            if getattr(reply, "status", "") == "ok" and (getattr(reply, "result", None) or {}).get("ok", True):
                self._claimed(req)
            else:
                tk["phase"] = "retry"  # not committed, or the entry changed: the next tick starts over
                # no answer, or no leader: the claim may still have committed (``_committed``)
                tk["maybe"] = getattr(reply, "status", "") != "ok"

        self.txns.append((txn, done))

    def _claimed(self, req: int) -> None:
        """The session is this node's now (or, for a clean CONNECT, nobody's):
        settle what it is, then every other node drops its copy and closes
        its connection for the client (MQTT-3.1.4-2).  Done here, not when
        the client is answered: the registry names this node even if the
        client has gone meanwhile, so the session must be here."""
        tk = self.takeovers[req]
        cid, p = tk["cid"], tk["connect"]
        s = self.sessions.get(cid)
        if p.clean_session:
            how = "clean"
        elif tk["state"] is not None:
            how = "handed"  # installed when the state came
        elif s is not None and not s.clean and self.node_id in ((tk["prev"] or ("",))[0],
                                                                (self.owners.view.get(cid) or ("",))[0]):
            # the registry named this node, so the copy here is that session -- also when the epoch
            # differs: a claim of ours whose answer was lost committed (found by the simulator)
            how = "kept"
        else:
            how = "fresh"
            if s is not None:
                self._discard(s)  # a copy the registry no longer gives this node
            s = self._new_session(cid, False)
        if s is not None and how != "clean":
            s.epoch = tk["epoch"]
            s.save_subs()
        tk["how"] = how
        self.record("mqtt.claimed", node=self.node_id, client=cid, how=how,
                    source=tk["prev"][0] if how == "handed" else None)
        self.doomed.pop(cid, None)
        for node in self.peers:
            self.sends.append((node, MqttTakeover(cid, self.node_id, req, p.clean_session)))
        self._finish_connect(req, self.clock)

    def takeover(self, m: MqttTakeover, now: float) -> MqttTakeoverReply | None:
        """Another node takes the client.  ``fetch``: it asks for the state of
        our session at ``epoch`` -- the client's connection here is closed, the
        session is kept until the other node's claim commits (then a plain
        takeover drops it), and publishes that still reach it are passed on.
        Otherwise: drop the connection and the session (no answer)."""
        s = self.sessions.get(m.client_id)
        if s is not None and s.conn is not None:
            c = self.conns.pop(s.conn, None)
            self._close(s.conn)
            s.conn = None
            self.record("mqtt.taken_over", node=self.node_id, client=m.client_id, by=m.node, had_conn=c is not None)
        connecting = any(tk["cid"] == m.client_id for tk in self.takeovers.values())
        if not m.fetch:
            if s is not None and not connecting:
                self._discard(s)
            return None
        if connecting:
            return None  # claiming it ourselves: no answer yet (the asker tries again), never a wrong "none"
        state = None
        if s is not None and not s.clean and s.epoch == m.epoch:
            state = {"subs": dict(s.subs),
                     # unacknowledged messages keep their packet ids: the client may hold a QoS 2
                     # one awaiting PUBREL, and a new message under that id would look like a resend
                     "inflight": [[pid, x.topic, x.payload, x.qos, x.mid, x.retain, stage]
                                  for pid, (x, stage) in s.inflight.items()],
                     "next_pid": s.next_pid,
                     "queue": [[x.topic, x.payload, x.qos, x.mid, x.retain] for x in s.queue],
                     "in_qos2": sorted(s.in_qos2), "recent": s.recent_mids(), "epoch": s.epoch}
            for flt in s.subs:
                group, real = parse_shared(flt)
                if group is None and self.moved.add(real, (m.client_id, m.node)):
                    self.moved_until.append((now + self.t.moved_grace_s, real, (m.client_id, m.node)))
            self.doomed[m.client_id] = now + self.t.moved_grace_s  # dropped then, unless claimed back
        return MqttTakeoverReply(m.client_id, self.node_id, m.req, state)

    def takeover_reply(self, m: MqttTakeoverReply, now: float) -> None:
        tk = self.takeovers.get(m.req)
        if tk is None or tk["cid"] != m.client_id or tk["phase"] != "fetch" or tk["prev"] is None \
                or m.node != tk["prev"][0]:
            return
        if m.session is not None and m.session.get("epoch") == tk["prev"][1]:
            tk["state"] = m.session  # the registered owner's copy at its epoch: never a stale one
            self._install(tk["cid"], m.session)
        self._claim(m.req)  # (no session there: the owner has nothing to hand over)

    def _install(self, cid: str, state: dict) -> Session:
        """A handed-over session, before the claim commits: deliveries queue
        in it from now on (and passed-on ones find it)."""
        old = self.sessions.get(cid)
        if old is not None:
            self._discard(old)  # a copy of our own the registry no longer gives us
        s = self._new_session(cid, False)
        for flt, qos in state["subs"].items():
            self._add_sub(s, flt, qos)
        for pid, topic, payload, qos, mid, retain, stage in state.get("inflight", ()):
            s.adopt(pid, Msg(topic, payload, qos, mid, retain), stage)
        s.next_pid = state.get("next_pid", s.next_pid)
        for topic, payload, qos, mid, retain in state["queue"]:
            s.offer(Msg(topic, payload, qos, mid, retain), [])
        # QoS 2 publishes it received and has not seen released: a resend is not a new message
        s.in_qos2.update(state.get("in_qos2", ()))
        for mid in state.get("recent", ()):  # what it had: passed-on copies are dropped here too
            s.remember(mid)
        self._sync_routes(None)
        return s

    def _refuse(self, req: int, why: str) -> None:
        tk = self.takeovers.pop(req)
        self.record("mqtt.refused", node=self.node_id, client=tk["cid"], why=why)
        if tk["state"] is not None:
            s = self.sessions.get(tk["cid"])
            if s is not None and s.conn is None:
                self._discard(s)  # installed for a claim that did not happen: the owner still has it
        if self.conns.pop(tk["conn"], None) is not None:
            self._send(tk["conn"], [Connack(False, REFUSED_SERVER_UNAVAILABLE)])
            self._close(tk["conn"])

    def _finish_connect(self, req: int, now: float) -> None:
        tk = self.takeovers.pop(req)
        c = self.conns.get(tk["conn"])
        if c is None:
            return  # the client went away meanwhile (the session, if any, stays this node's)
        p: Connect = tk["connect"]
        cid = tk["cid"]
        s = self.sessions.get(cid)
        if s is not None and s.conn is not None and s.conn != c.id:
            old = self.conns.pop(s.conn, None)  # MQTT-3.1.4-2: the existing client is disconnected
            self._close(s.conn)
            s.conn = None
            self.record("mqtt.taken_over", node=self.node_id, client=cid, by=self.node_id, had_conn=old is not None)
        present = tk["how"] in ("handed", "kept")
        if tk["how"] == "clean":
            if s is not None:
                self._discard(s)
            s = self._new_session(cid, True)
        elif self.access is not None and any(not self.access(c.user, "consume", f) for f in s.subs):
            # a session (and its queue) this user may not read: another user's
            # client id, or a role revoked meanwhile -- it starts afresh
            self.record("mqtt.session_denied", node=self.node_id, client=cid, user=c.user)
            self._discard(s)
            s = self._new_session(cid, p.clean_session)
            present = False
        s.conn = c.id
        s.will = p.will
        s.keepalive_s = p.keep_alive_s
        c.session = s
        out: list = [Connack(present, ACCEPTED)]
        s.resume(out)
        self._send(c.id, out)
        self.record("mqtt.connected", node=self.node_id, client=cid, clean=p.clean_session, present=present)
        pending, c.pending = c.pending or [], None
        for q in pending:
            if c.id in self.to_close:
                break
            self._packet(c, q, now)

    def _tick_connects(self, now: float) -> None:
        for req, tk in list(self.takeovers.items()):
            if tk["phase"] == "retry" and self._committed(tk):
                self._claimed(req)  # its answer was lost (a leader change), not the claim (found by the simulator)
            elif tk["phase"] == "retry" and tk["conn"] not in self.conns:
                # the client left: never claim again for it; wait for the registry to show the outcome
                if now >= tk["until"]:
                    self._refuse(req, "the client left and its claim did not commit")
            elif tk["phase"] == "retry" or tk["phase"] == "fetch" and now >= tk["deadline"]:
                owner = tk["prev"][0] if tk["prev"] else ""
                if tk["phase"] == "fetch" and self.unseen.get(owner, 0.0) > self.t.route_dead_after_s:
                    self._claim(req)  # its node is gone for good: what it held is lost; start afresh
                elif now >= tk["until"]:
                    self._refuse(req, "the session's node or the agency did not answer")
                else:
                    self._begin(req)
