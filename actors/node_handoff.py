"""Hinted handoff on the coordinating node: the NodeActor's thin shell
around :class:`actors.hinted_handoff.HandoffCore`.

A ``Produce`` at level ``any`` from an idempotent producer (producer id not
0) that reaches a NodeActor makes that node its coordinator:

* while the shard has hints queued here, the write joins the queue behind
  them (a later write must not overtake earlier ones: the leader would
  refuse it as out of order);
* otherwise it goes to the leader at level ``quorum`` (not ``one``: a write
  the leader alone took can die with it at a failover, and the gap it
  leaves in the producer's sequence would block every later hint); an
  ``ok`` is passed on (``level`` ``quorum``); a definite refusal (bad batch, out-of-order
  sequence) is passed on; no leader known, a leader that does not answer
  within ``hh_direct_timeout_s``, an ``unknown`` outcome or another
  refusal make it a hint;
* a hint is written and synced, *then* acknowledged (``level`` ``any``,
  no offset).

Every ``TICK_S`` the queue expires old hints and sends the head hint of
each shard whose leader is known, at level ``quorum`` with the producer id
and sequence of the original write, so the leader answers a hint it has
already written (a retry, a crash between sending and forgetting it) as a
duplicate instead of writing it twice.  A hint is forgotten only when the
leader acknowledged it at quorum.  Writes of producers without an id are
forwarded as before (level ``any`` = ``one``): a retried hint could not be
recognised.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from actors.hinted_handoff import KEY_PREFIX, HandoffCore, HandoffOut, HandoffTuning, Hint
from protocol.node import HandoffQuery, HandoffReply
from protocol.shard import Produce, ProduceReply, ShardTuning
from storage.base import WriteBatch

TICK_S = 0.05
HOPS_MAX = 3


class NodeHandoff:
    """Mixin for NodeActor (needs ``boot``, ``client``, ``_route``)."""

    def _hh_boot(self) -> None:
        t = self.boot.tuning or ShardTuning()
        self.hh = HandoffCore(HandoffTuning(bytes_max=t.hh_bytes_max, age_max_s=t.hh_age_max_s,
                                            drain_bytes_per_s=t.hh_drain_bytes_per_s,
                                            direct_timeout_s=t.hh_direct_timeout_s), t.bugs)
        self.hh_store = self.open_store("handoff")
        self.hh.load(self.hh_store.scan(KEY_PREFIX, KEY_PREFIX + b"\xff"))
        self.hh_direct: dict[int, list] = {}  # req id -> [original Produce, reply to, deadline, hops, leader hint]
        self.hh_drain: dict[str, tuple[int, int]] = {}  # shard -> (req id, hint id) of the hint in flight
        self.hh_leader: dict[str, str] = {}  # shard -> leader named by a replica that refused a drained hint
        self.hh_req = 0
        self.hh_gen = 0
        if self.hh.hints:
            self.record("handoff.loaded", node=self.boot.node_id, hints=self.hh.hints)
        self._hh_arm()

    def _hh_arm(self) -> None:
        self.hh_gen += 1
        self.set_timer(TICK_S, ("hh", self.hh_gen))

    def _hh_takes(self, msg: Produce) -> bool:
        return msg.level == "any" and bool(msg.producer_id) and self.boot is not None

    # ----------------------------------------------------------- the write
    def _hh_produce(self, msg: Produce, sender: Any) -> None:
        to = msg.reply_to or sender
        if self.hh.has(msg.shard):
            self._hh_hint(msg, to)
            return
        self.hh_req += 1
        self.hh_direct[self.hh_req] = [msg, to, self.now() + self.hh.tuning.direct_timeout_s, 0, None]
        self._hh_direct_send(self.hh_req)

    def _hh_direct_send(self, req: int) -> None:
        msg, to, _deadline, _hops, leader = self.hh_direct[req]
        target = self._route(msg.shard, leader)
        if target is None:
            del self.hh_direct[req]
            self._hh_hint(msg, to)
            return
        self.send(target, replace(msg, level="quorum", client=self.client, req_id=req, reply_to=None))

    def _hh_direct_reply(self, req: int, e: list, reply: ProduceReply) -> None:
        msg, to = e[0], e[1]
        err = reply.error.lower()
        if reply.status == "ok" or (reply.status == "fail" and ("out-of-order" in err or "bad batch" in err)):
            self.send(to, replace(reply, client=msg.client, req_id=msg.req_id, leader=None))
            return
        if reply.status == "fail" and reply.leader and reply.leader != e[4] and e[3] < HOPS_MAX:
            e[3] += 1
            e[4] = reply.leader
            self.hh_direct[req] = e
            self._hh_direct_send(req)
            return
        self._hh_hint(msg, to)

    def _hh_hint(self, msg: Produce, to: Any) -> None:
        out, h = self.hh.add(msg.shard, msg.producer_id, msg.sequence, msg.count, msg.batch, self.wall())
        if h is None:
            self.send(to, ProduceReply(msg.shard, msg.client, msg.req_id, "fail",
                                       error="overloaded: the batch exceeds the hinted-handoff bound"))
            return
        self._hh_apply(out)  # written and synced before the acknowledgement
        self.record("handoff.stored", node=self.boot.node_id, shard=msg.shard, producer_id=msg.producer_id,
                    seq=msg.sequence, hint=h.id)
        self.send(to, ProduceReply(msg.shard, msg.client, msg.req_id, "ok", base_offset=-1, level="any"))

    # ----------------------------------------------------------- the drain
    def _hh_tick(self) -> None:
        now = self.now()
        for req in [r for r, e in self.hh_direct.items() if now >= e[2]]:
            e = self.hh_direct.pop(req)
            self._hh_hint(e[0], e[1])
        if self.hh.queues:
            reachable = [s for s in self.hh.queues if self._route(s, self.hh_leader.get(s)) is not None]
            self._hh_apply(self.hh.tick(now, self.wall(), reachable))
        self._hh_arm()

    def _hh_send(self, h: Hint) -> None:
        target = self._route(h.shard, self.hh_leader.get(h.shard))
        if target is None:
            return  # answered by the drain timeout: sent again later
        self.hh_req += 1
        self.hh_drain[h.shard] = (self.hh_req, h.id)
        forget = bool(getattr(self.hh.bugs, "hh_forget_sequence", False))
        self.send(target, Produce(h.shard, self.client, self.hh_req, h.batch, h.count, "quorum",
                                  0 if forget else h.producer_id, 0 if forget else h.sequence))

    def _hh_drain_reply(self, reply: ProduceReply) -> None:
        cur = self.hh_drain.get(reply.shard)
        if cur is None or cur[0] != reply.req_id:
            return
        del self.hh_drain[reply.shard]
        if reply.status != "ok" and reply.leader != self.hh_leader.get(reply.shard):
            if reply.leader:
                self.hh_leader[reply.shard] = reply.leader  # follow the replica's hint next time
            else:
                self.hh_leader.pop(reply.shard, None)
        if reply.status == "ok":
            outcome = "ok"
            self.record("handoff.drained", node=self.boot.node_id, shard=reply.shard, hint=cur[1],
                        base_offset=reply.base_offset, duplicate=reply.duplicate)
        elif reply.status == "fail" and "bad batch" in reply.error.lower():
            outcome = "drop"
        else:
            outcome = "retry"
        if outcome != "ok":
            self.record("handoff.refused", node=self.boot.node_id, shard=reply.shard, hint=cur[1],
                        status=reply.status, error=reply.error)
        self._hh_apply(self.hh.answered(reply.shard, cur[1], outcome, self.now(), reply.error))

    def _hh_apply(self, out: HandoffOut) -> None:
        if out.writes():
            wb = WriteBatch()
            for k, v in out.puts:
                wb.put(k, v)
            for k in out.deletes:
                wb.delete(k)
            self.hh_store.write(wb)
        if out.sync:
            self.hh_store.sync()
        for line in out.logs:
            self.log_event("warning", line)
            self.record("handoff.dropped", node=self.boot.node_id, text=line)
        for h in out.send:
            self._hh_send(h)

    # ------------------------------------------------------------- answers
    def on_ProduceReply(self, msg: ProduceReply, sender: Any) -> None:
        if self.boot is None or msg.client != self.client:
            return
        e = self.hh_direct.pop(msg.req_id, None)
        if e is not None:
            self._hh_direct_reply(msg.req_id, e, msg)
        else:
            self._hh_drain_reply(msg)

    def on_HandoffQuery(self, msg: HandoffQuery, sender: Any) -> None:
        st = self.hh.status() if self.boot is not None else {}
        self.send(msg.reply_to or sender, HandoffReply(self.boot.node_id if self.boot else "", st))
