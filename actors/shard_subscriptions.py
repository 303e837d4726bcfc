"""Durable named subscriptions of one shard, run by the shard's leader.

Each subscription is a ``SubscriptionCore`` (actors/subscription.py) fed
with the shard's committed records (below the high watermark).  Its cursor
-- the first unacknowledged offset -- is persisted as a *control record in
the shard's own log* (``chorus.control: cursor``), appended at most every
``cursor_flush_s`` and replicated like data, so a subscription survives the
loss of any minority of the shard's replicas.  A new leader rebuilds every
subscription's cursor (and mode) from the control records in its log;
records after a cursor that had not yet been persisted are delivered again
(at-least-once).

Control records occupy offsets; they are handed to the core as ``None`` and
acknowledged on the consumer's behalf as soon as they are "delivered".

Consumers send ``Subscribe`` periodically as a heartbeat; one silent for
``consumer_timeout_s`` is detached (in failover mode the next consumer takes
over and receives everything unacknowledged, in order).
"""
from __future__ import annotations

from typing import Any

from actors.replication import CONTROL_HEADER, CURSOR
from actors.subscription import SubscriptionCore
from protocol.consume import (
    AckRecords,
    Deliver,
    Delivery,
    FetchMore,
    PersistCursor,
    Refused,
    Subscribe,
    SubscribeReply,
)
from protocol.records import Record

SUBSCRIPTIONS_MAX = 1_000
CONSUMERS_MAX = 10_000
DRAINED_SCAN_MAX = 1_000  # records read past the cursor to tell a drained subscription


def cursor_record(subscription: str, mode: str, offset: int) -> Record:
    return Record(key=None, payload=b"", headers=(
        (CONTROL_HEADER, CURSOR), ("subscription", subscription.encode()), ("mode", mode.encode()),
        ("offset", str(offset).encode())))


class ShardSubscriptions:
    def __init__(self, shard: str, *, ack_timeout_s: float = 5.0, consumer_timeout_s: float = 2.0,
                 cursor_flush_s: float = 0.1) -> None:
        self.shard = shard
        self.ack_timeout_s = ack_timeout_s
        self.consumer_timeout_s = consumer_timeout_s
        self.cursor_flush_s = cursor_flush_s
        self.cores: dict[str, SubscriptionCore] = {}
        self.modes: dict[str, str] = {}
        self.restored: dict[str, tuple[str, int]] = {}
        self.consumers: dict[tuple[str, str], tuple[Any, float]] = {}
        self.dirty: dict[str, int] = {}
        self.persisted: dict[str, int] = {}
        self.fetches: dict[str, FetchMore] = {}
        self.last_flush_s = 0.0
        self.out: list[tuple[Any, Any]] = []
        self.epoch = 0
        self.redeliver_below = -1  # see reset

    def reset(self, cursors: dict[str, tuple[str, int]], epoch: int = 0, redeliver_below: int = -1) -> None:
        """On becoming leader: forget volatile state, restore cursors.
        ``redeliver_below``: a leader that restarted and resumed the epoch
        it led may have delivered the records below this offset already
        (in this very epoch): their deliveries say redelivery."""
        self.epoch = epoch
        self.redeliver_below = redeliver_below
        self.cores, self.modes, self.consumers, self.dirty, self.fetches = {}, {}, {}, {}, {}
        self.restored = dict(cursors)  # the log's latest cursor records (ShardCore.cursors)
        self.persisted = {s: off for s, (_m, off) in self.restored.items()}

    def _core(self, name: str, mode: str) -> SubscriptionCore | str:
        core = self.cores.get(name)
        if core is not None:
            return core
        if len(self.cores) >= SUBSCRIPTIONS_MAX:
            return "too many subscriptions on this shard"
        stored = self.restored.get(name)
        if stored is not None:
            mode = stored[0]
        try:
            core = SubscriptionCore(name, mode, [0], cursors={0: stored[1]} if stored else None,
                                    ack_timeout_s=self.ack_timeout_s, fetch_retry_s=0.05)
        except ValueError as exc:
            return str(exc)
        self.cores[name] = core
        self.modes[name] = mode
        return core

    # ------------------------------------------------------------- inputs
    def subscribe(self, m: Subscribe, reply_to: Any, now_s: float, read: Any, closed: bool = False) -> None:
        """``closed``: the shard's group takes no more records (and every
        record it has is committed); a subscription that acknowledged all of
        them is answered ``drained`` on every Subscribe."""
        core = self._core(m.subscription, m.mode)
        if isinstance(core, str):
            self.out.append((reply_to, SubscribeReply(m.shard, m.subscription, m.consumer, "fail", error=core)))
            return
        if self.modes[m.subscription] != m.mode:
            self.out.append((reply_to, SubscribeReply(
                m.shard, m.subscription, m.consumer, "fail",
                error=f"subscription {m.subscription!r} is {self.modes[m.subscription]}, not {m.mode}")))
            return
        key = (m.subscription, m.consumer)
        fresh = key not in self.consumers
        if fresh and len(self.consumers) >= CONSUMERS_MAX:
            self.out.append((reply_to, SubscribeReply(m.shard, m.subscription, m.consumer, "fail",
                                                      error="too many consumers")))
            return
        self.consumers[key] = (reply_to, now_s)
        if fresh:
            self._take_over(m.subscription, m.consumer, now_s, read)
            effects = core.attach(m.consumer, now_s)
            refused = [e for e in effects if isinstance(e, Refused)]
            if refused:
                del self.consumers[key]
                self.out.append((reply_to, SubscribeReply(m.shard, m.subscription, m.consumer, "fail",
                                                          error=refused[0].reason)))
                return
            self.out.append((reply_to, SubscribeReply(m.shard, m.subscription, m.consumer, "ok",
                                                      drained=closed and self.drained(m.subscription, read))))
            self._effects(m.subscription, effects, now_s, read)
        elif closed and self.drained(m.subscription, read):
            self.out.append((reply_to, SubscribeReply(m.shard, m.subscription, m.consumer, "ok", drained=True)))

    def drained(self, name: str, read: Any) -> bool:
        """Every committed data record is acknowledged: nothing but control
        records (cursors) from the committed cursor on."""
        core = self.cores.get(name)
        if core is None:
            return False
        rest = read(core.cursors().get(0, 0), DRAINED_SCAN_MAX)
        return len(rest) < DRAINED_SCAN_MAX and all(r is None for r in rest)

    def _take_over(self, subscription: str, consumer: str, now_s: float, read: Any) -> None:
        """A consumer that comes back over another connection (a node
        restarted, the client reconnected elsewhere) is attached under a new
        ``<consumer_id>@<node>.<connection>`` name.  Its old attachment is
        detached at once instead of after ``consumer_timeout_s``: otherwise
        an exclusive subscription refuses the consumer its own place, and
        what the old attachment held in flight waits for the timeout."""
        base, at, _where = consumer.rpartition("@")
        if not at:
            return
        stale = [c for (s, c) in self.consumers if s == subscription and c != consumer
                 and c.rpartition("@")[0] == base]
        core = self.cores[subscription]
        for c in sorted(stale):
            del self.consumers[(subscription, c)]
            self._effects(subscription, core.detach(c, now_s), now_s, read)

    def ack(self, m: AckRecords, now_s: float, read: Any) -> None:
        core = self.cores.get(m.subscription)
        if core is None:
            return
        # the whole batch at once: the records it makes room for leave in one
        # Delivery, and a batch of nacks rewinds an ordered subscription once
        settle = core.nack_many if m.negative else core.ack_many
        self._effects(m.subscription, settle(m.consumer, 0, m.offsets, now_s), now_s, read)

    def unsubscribe(self, subscription: str, consumer: str, now_s: float, read: Any) -> None:
        """Detach a consumer at once (its connection closed)."""
        if self.consumers.pop((subscription, consumer), None) is None:
            return
        core = self.cores.get(subscription)
        if core is not None:
            self._effects(subscription, core.detach(consumer, now_s), now_s, read)

    def describe(self) -> list[dict[str, Any]]:
        """Each subscription: name, mode, committed cursor and consumers."""
        out = []
        for name in sorted(set(self.cores) | set(self.restored)):
            core = self.cores.get(name)
            if core is not None:
                cursor = core.cursors().get(0, 0)
                consumers = sorted(c for (s, c) in self.consumers if s == name)
            else:
                cursor, consumers = self.restored[name][1], []
            out.append({"subscription": name, "mode": self.modes.get(name) or self.restored[name][0],
                        "committed": cursor, "consumers": consumers})
        return out

    def tick(self, now_s: float, read: Any) -> list[tuple[str, str, int]]:
        """Returns cursor records to append: (subscription, mode, offset)."""
        for key in sorted(self.consumers):
            _addr, seen = self.consumers[key]
            if now_s - seen > self.consumer_timeout_s:
                del self.consumers[key]
                core = self.cores.get(key[0])
                if core is not None:
                    self._effects(key[0], core.detach(key[1], now_s), now_s, read)
        for name in sorted(self.cores):
            self._effects(name, self.cores[name].tick(now_s), now_s, read)
        self.feed(now_s, read)
        if self.dirty and now_s - self.last_flush_s >= self.cursor_flush_s:
            self.last_flush_s = now_s
            out = [(s, self.modes[s], off) for s, off in sorted(self.dirty.items())]
            self.persisted.update(self.dirty)
            self.dirty = {}
            return out
        return []

    def feed(self, now_s: float, read: Any) -> None:
        """Answer outstanding fetches with committed records, if any."""
        for name in sorted(self.fetches):
            f = self.fetches.get(name)
            if f is None:
                continue
            recs = read(f.from_offset, f.max_records)
            if recs:
                del self.fetches[name]
                self._effects(name, self.cores[name].records(0, f.from_offset, recs, now_s), now_s, read)

    # ------------------------------------------------------------ effects
    def _effects(self, name: str, effects: list[Any], now_s: float, read: Any) -> None:
        deliveries: dict[str, list[tuple[int, bytes, bool]]] = {}
        auto_ack: list[tuple[str, int]] = []
        for e in effects:
            if isinstance(e, Deliver):
                if e.record is None:
                    auto_ack.append((e.consumer, e.offset))
                else:
                    again = e.redelivery or e.offset < self.redeliver_below
                    deliveries.setdefault(e.consumer, []).append((e.offset, e.record, again))
            elif isinstance(e, PersistCursor):
                if e.offset > self.persisted.get(name, -1) and self._moved_over_data(name, e.offset, read):
                    self.dirty[name] = e.offset
            elif isinstance(e, FetchMore):
                self.fetches[name] = e
        for consumer in sorted(deliveries):
            entry = self.consumers.get((name, consumer))
            if entry is not None:
                self.out.append((entry[0], Delivery(self.shard, name, consumer, tuple(deliveries[consumer]),
                                                         self.epoch)))
        core = self.cores.get(name)
        for consumer, off in auto_ack:
            self._effects(name, core.ack(consumer, 0, off, now_s), now_s, read)
        if any(isinstance(e, FetchMore) for e in effects):
            self.feed(now_s, read)

    def _moved_over_data(self, name: str, offset: int, read: Any) -> bool:
        """Whether a cursor advance to ``offset`` passed a data record since
        the last cursor persisted (or about to be).  One that passed only
        control records -- cursors themselves -- is not persisted: they are
        acknowledged again at once after a restore, and persisting it would
        append a cursor record that moves the cursor again, every
        ``cursor_flush_s``, for as long as a consumer is attached."""
        prev = max(self.persisted.get(name, -1), self.dirty.get(name, -1))
        if prev < 0 or offset - prev > DRAINED_SCAN_MAX:
            return True
        between = read(prev, offset - prev)
        return len(between) < offset - prev or any(r is not None for r in between)

    def take(self) -> list[tuple[Any, Any]]:
        out, self.out = self.out, []
        return out
