"""The Dispatcher's subscriptions on topics with shard groups (a mixin).

A client's ``SubscribeRequest`` on a topic with shard groups attaches one
``_Sub`` per shard index, as on any topic, but each index's ``_Sub``
walks the groups (actors/group_walk.py): it starts at the index's shard in
the oldest live group, moves to the next group's shard once that shard's
leader answers a keep-alive with ``drained`` (the group is closed for good
and the subscription acknowledged all of it), and -- when retention drops
the group it is reading before that -- moves to the oldest remaining
group and reports it:

* a log line (``subscription reset``, level warning) with the topic,
  subscription, shard index and the dropped and next shard ids;
* the counter ``chorus_subscription_resets_total`` in /metrics;
* a ``SubscriptionReset`` push frame to the consumer's connection, which
  the client logs and keeps (``Consumer.resets``).

Every attach is also recorded in the agency (``walks_path(topic,
subscription, index)`` -> shard id), and a consumer that attaches first
reads it: its walk resumes at the recorded shards, and an index whose
recorded shard was dropped while no consumer was attached is reset and
reported -- the same three ways, to the consumer that attaches now.
Without the record nothing would remember the subscription was ever
there: the dropped shard took its cursor with it.

Cursors stay per shard id, in each shard's own log, so acknowledgements,
redelivery and failover work unchanged; deliveries and acks name the
shard *index*, which maps to the shard the index is attached to now.
Since protocol version 2 a delivery also names the shard id its records
came from and an ack names it back: an ack for a shard the index no longer
reads (its group was dropped and the subscription reset, or it was
drained and the walk moved on) is discarded, never applied to the new
shard's records at the same offsets.  A version 1 client's acks carry no
shard id; for them, after a reset, acks of offsets above the highest this
connection was delivered from the new shard are ignored (they were meant
for records of the dropped group) -- which leaves a window of one round
trip in which such an ack can still hit a new record.
"""
from __future__ import annotations

from typing import Any

from actors.group_walk import Attach, Detach, GroupWalk, Reset
from protocol.agency import Mutation, Txn
from protocol.consume import Unsubscribe
from protocol.groups import walks_path

RESETS_LOG_MAX = 50  # the last resets kept for the metrics snapshot
NO_SHARD = 0xFFFF_FFFF


class _Walk:
    __slots__ = ("topic", "subscription", "mode", "consumer", "walk", "subs", "hi", "reset", "ready", "recorded")

    def __init__(self, topic: str, subscription: str, mode: str, consumer: str, indices: int) -> None:
        self.topic, self.subscription, self.mode, self.consumer = topic, subscription, mode, consumer
        self.walk = GroupWalk(indices)
        self.subs: dict[int, Any] = {}  # index -> _Sub
        self.hi: dict[int, int] = {}  # index -> highest offset delivered from the current shard
        self.reset: set[int] = set()  # indices reset to a new shard (acks above ``hi`` are stale)
        self.ready = False  # the recorded positions are read: the walk may take views
        self.recorded: dict[int, int | None] = {}  # index -> the position last seen in the agency (None: none)


class DispatcherGroupSubs:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    def _gsubs(self) -> dict[tuple[int, int], _Walk]:
        return self.__dict__.setdefault("gwalks", {})

    def gsub_resets(self) -> int:
        return self.__dict__.get("gsub_reset_count", 0)

    def gsub_stale_acks(self) -> int:
        """Acknowledged offsets discarded because the ack named a shard its index had left."""
        return self.__dict__.get("gsub_stale_ack_count", 0)

    def _gsub_subscribe(self, conn: int, corr: int, m: Any, consumer: str, spec: dict, first: bool) -> bool:
        """Handle a SubscribeRequest on a topic with groups; False for a topic without."""
        if spec.get("shard_group_ms") is None:
            return False
        gl = self._group_list(m.topic)
        if gl is None:  # the topic is new here: its group list comes with the next poll
            if first:
                self._after_poll(conn, corr, lambda: self._subscribe(conn, corr, m, False))
                return True
            from actors.dispatcher_common import Refusal
            from protocol.frames import ErrorCode

            raise Refusal(ErrorCode.OVERLOADED, 503, "unavailable",
                          f"topic {m.topic!r} has no shard group list yet; retry")
        n = int(spec.get("shards", 1))
        from actors.dispatcher_subs import _Sub
        from protocol.frames import SubscribeResponse

        walks = self._gsubs()
        for w in walks.values():  # (the consumer's name carries its connection)
            if (w.topic, w.subscription, w.consumer) == (m.topic, m.subscription, consumer):
                self._frame(conn, corr, SubscribeResponse(active=True))  # a keep-alive
                return True
        w = _Walk(m.topic, m.subscription, str(m.mode), consumer, n)
        walks[(conn, corr)] = w
        self.subscribe_waits[(conn, corr)] = {"left": n, "deadline": self.now() + self.boot.listen.request_timeout_s}
        mine = self.conn_subs.setdefault(conn, [])
        for i in range(n):
            s = _Sub(conn, corr, m.topic, i, m.subscription, str(m.mode), consumer)
            s.shard = ""
            w.subs[i] = s
            mine.append(s)
        self._gsub_resume(conn, corr, w)
        return True

    def _gsub_resume(self, conn: int, corr: int, w: _Walk) -> None:
        """Read where the subscription's indices were last attached (the
        agency, ``walks_path``), then start the walk there: an index whose
        recorded shard was dropped meanwhile is reset -- and the reset
        reported to this consumer."""
        from protocol.agency import Read

        def read(reply: Any) -> None:
            if self._gsubs().get((conn, corr)) is not w:
                return  # the consumer left meanwhile
            tree = reply.result["values"][0] if reply.status == "ok" and isinstance(reply.result, dict) else None
            if reply.status != "ok":
                self.log_event("warning", "subscription positions unreadable", topic=w.topic,
                               subscription=w.subscription, error=reply.error or reply.status)
            positions = {}
            for k, v in (tree or {}).items() if isinstance(tree, dict) else ():
                if str(k).isdigit() and isinstance(v, int):
                    positions[int(k)] = v
            w.walk.resume(positions)
            w.recorded = {i: positions.get(i) for i in w.subs}
            w.ready = True
            gl = self._group_list(w.topic)
            if gl is not None:
                self._gsub_apply(w, w.walk.view(gl))

        self._agency(Read((walks_path(w.topic, w.subscription),)), read)

    def _gsub_view(self) -> None:
        """After each poll: walk every subscription with the new group lists."""
        for w in list(self._gsubs().values()):
            gl = self._group_list(w.topic)
            if gl is not None and w.ready:
                self._gsub_apply(w, w.walk.view(gl))

    def _gsub_drained(self, s: Any) -> None:
        w = self._gsubs().get((s.conn, s.corr))
        if w is not None and s.shard:
            self._gsub_apply(w, w.walk.drained(int(s.shard.rpartition("#")[2])))

    def _gsub_apply(self, w: _Walk, effects: list[Any]) -> None:
        now = self.now()
        for e in effects:
            s = w.subs.get(getattr(e, "index", -1))
            if s is None:  # (Refresh: the next poll, within POLL_S, brings a fresher list anyway)
                continue
            if isinstance(e, Reset):
                self._gsub_report(w, s, e)
            elif isinstance(e, Detach):
                if self.subs.get((s.shard, s.subscription, s.consumer)) is s:
                    del self.subs[(s.shard, s.subscription, s.consumer)]
                if s.replica is not None:
                    self.send(s.replica, Unsubscribe(s.shard, s.subscription, s.consumer))
                s.shard, s.replica, s.hint = "", None, None
            elif isinstance(e, Attach):
                s.shard = f"{w.topic}#{e.shard}"
                s.replica, s.hint = None, None
                w.hi[e.index] = -1
                self.subs[(s.shard, s.subscription, s.consumer)] = s
                self._send_subscribe(s, now)
                self._gsub_record(w, e.index, e.shard)

    def _gsub_record(self, w: _Walk, index: int, shard: int, tries: int = 3) -> None:
        """Record that the subscription's index ``index`` reads ``shard`` now
        (where a later consumer resumes, and learns of drops meanwhile).
        Positions only move forward: consumers of one subscription on other
        nodes record too, and a slower one must not write an older shard
        over a newer one -- so the write is conditional on the value last
        seen, and a refused one re-reads and stops if the record is ahead."""
        from protocol.agency import Precondition, Read

        path = walks_path(w.topic, w.subscription, index)
        was = w.recorded.get(index)
        if was is not None and was >= shard:
            return
        pre = Precondition(path, "absent") if was is None else Precondition(path, "equals", was)

        def reread(reply: Any) -> None:
            if reply.status != "ok" or not isinstance(reply.result, dict):
                return
            now = reply.result["values"][0]
            w.recorded[index] = now if isinstance(now, int) else None
            self._gsub_record(w, index, shard, tries - 1)

        def written(reply: Any) -> None:
            if reply.status == "ok" and isinstance(reply.result, dict) and reply.result.get("ok"):
                w.recorded[index] = max(shard, w.recorded.get(index) or 0)
            elif reply.status == "ok" and tries > 1:  # someone else recorded meanwhile: look
                self._agency(Read((path,)), reread)
            # (no answer: the next attach of this index writes again)

        self._agency(Txn((Mutation(path, "set", shard),), (pre,)), written)

    def _gsub_report(self, w: _Walk, s: Any, e: Reset) -> None:
        from protocol.frames import SubscriptionReset

        self.__dict__["gsub_reset_count"] = self.gsub_resets() + 1
        w.reset.add(e.index)
        reason = (f"shard {w.topic}#{e.dropped} was dropped by retention before subscription "
                  f"{w.subscription!r} acknowledged all of it; continuing at the oldest remaining record"
                  + (f", the start of shard {w.topic}#{e.to}" if e.to >= 0 else ""))
        self.log_event("warning", "subscription reset", topic=w.topic, subscription=w.subscription,
                       index=e.index, dropped_shard=e.dropped, next_shard=e.to,
                       consumer=w.consumer.rpartition("@")[0])
        self.record("dispatcher.subscription_reset", topic=w.topic, subscription=w.subscription, index=e.index,
                    dropped=e.dropped, to=e.to)
        self._frame(s.conn, s.corr, SubscriptionReset(
            topic=w.topic, shard=e.index, subscription=w.subscription, dropped_shard_id=e.dropped,
            next_shard_id=e.to if e.to >= 0 else NO_SHARD, reason=reason), answers=False)

    def _gsub_delivered(self, s: Any, offsets: list[int]) -> None:
        w = self._gsubs().get((s.conn, s.corr))
        if w is not None and offsets:
            w.hi[s.index] = max(w.hi.get(s.index, -1), max(offsets))

    def _gsub_ack_target(self, conn: int, m: Any, consumer: str) -> tuple[Any, tuple[int, ...]] | None:
        """(the _Sub an ack of shard index ``m.shard`` goes to, the offsets
        to pass on); None when the topic has no groups."""
        for w in self._gsubs().values():
            s = w.subs.get(m.shard)
            if s is None or s.conn != conn or (w.topic, w.subscription, w.consumer) != (
                    m.topic, m.subscription, consumer):
                continue
            offsets = tuple(m.offsets)
            if m.shard_id != NO_SHARD:  # (version 2) the ack names the shard its records came from
                if f"{w.topic}#{m.shard_id}" != s.shard:  # a shard this index left: a stale ack
                    self.__dict__["gsub_stale_ack_count"] = self.gsub_stale_acks() + len(offsets)
                    self.record("dispatcher.stale_ack", topic=w.topic, subscription=w.subscription,
                                index=m.shard, shard_id=m.shard_id, offsets=len(offsets))
                    offsets = ()
            elif m.shard in w.reset:  # (version 1) acks of the dropped group's records must not hit the new shard's
                offsets = tuple(o for o in offsets if o <= w.hi.get(m.shard, -1))
            return s, offsets
        return None

    def _gsub_forget(self, conn: int, corr: int | None = None) -> None:
        for key in [k for k in self._gsubs() if k[0] == conn and (corr is None or k[1] == corr)]:
            del self._gsubs()[key]
