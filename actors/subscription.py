"""Sans-IO core of one durable named subscription (Andy X / Pulsar style).

``SubscriptionCore`` is a plain class: no clock, no I/O, no randomness.
Time is the ``now_s`` number passed to every input (seconds on a clock
that never goes backwards -- the host's ``monotonic()``).  Every input
returns a list of effects from :mod:`protocol.consume`, in the order the
host must carry them out: ``Refused``, then ``PersistCursor`` (at most one
per shard, the newest value, shards ascending), then ``Deliver`` (in
delivery order), then ``FetchMore`` (shards ascending).

Model
=====

A topic is split into shards; each shard is an append-only log read from the
committed **cursor** of the subscription: the lowest offset not yet
acknowledged (everything below it is acknowledged).  Per shard the core
holds a window ``[cursor, end)`` of records it has received from the log
(``end - cursor <= buffer_max``).  Each record in the window is in exactly
one of these states:

* *acked* -- acknowledged, above the cursor (out-of-order acks); only its
  offset is kept;
* *in flight* -- delivered to one consumer and awaiting its ack, with a
  deadline ``delivered_at + ack_timeout_s``;
* *delayed* (shared mode) -- nacked, to be redelivered at
  ``nacked_at + nack_delay_s``;
* *ready* -- waiting to be delivered.

Inputs
======

``attach(consumer, now_s)``
    Adds a consumer.  Attaching an already attached consumer is a no-op.
    *exclusive*: while a consumer is attached any other is answered with
    ``Refused`` (nothing else changes).  *failover*: consumers are ranked by
    attach order; the first is **active** and gets all deliveries, the others
    stand by and get nothing.  *shared*: consumers join the round-robin
    rotation (in attach order).

``detach(consumer, now_s)``
    Removes a consumer (also how the host reports a consumer declared dead).
    Unknown consumers are ignored.  Every record it held in flight is
    released.  *shared*: released records become ready and are redelivered
    (lowest offsets first) to the remaining consumers.  *exclusive /
    failover*: if it was the active consumer, every shard **rewinds**
    (below) and the next consumer in attach order (failover) -- or the next
    consumer to attach (exclusive) -- receives everything unacknowledged
    again, in order, starting at the cursor.  Detaching a standby changes
    nothing else.

``records(shard, first_offset, records, now_s)``
    Records read from the log: ``records[i]`` is at ``first_offset + i``.
    The log is immutable, so records below ``end`` (already received, or
    below the cursor) are ignored as duplicates, whatever their content;
    records beyond ``cursor + buffer_max`` are dropped (they do not fit and
    will be fetched again).  A batch starting above ``end`` (a gap) is
    ignored entirely.  A call that adds at least one record answers the
    outstanding ``FetchMore`` of the shard.  Unknown shards are ignored.

``ack(consumer, shard, offset, now_s)``
    Accepted only if the record is in flight **to that consumer**; anything
    else -- unknown shard or offset, already acked, below the cursor, a
    record that timed out, was nacked, rewound or released by a detach and
    not (yet) redelivered to this consumer -- is ignored and produces no
    effect beyond what the call would produce anyway.  Acks may come in any
    order: the cursor advances over the contiguous acked prefix, and each
    advance yields one ``PersistCursor(shard, new_cursor)``.

``nack(consumer, shard, offset, now_s)``
    Same acceptance rule as ``ack``.  *shared*: the record is released and
    redelivered (possibly to another consumer) -- at once when
    ``nack_delay_s == 0``, else by the first ``tick`` at or after
    ``now_s + nack_delay_s``.  *exclusive / failover*: the shard **rewinds**
    and, when ``nack_delay_s > 0``, delivery on that shard pauses until
    ``now_s + nack_delay_s`` (resumed by any input at or after that time).

``ack_many(consumer, shard, offsets, now_s)`` / ``nack_many(...)``
    The acks (nacks) of one message from the consumer, in order: each
    offset is judged by the acceptance rule against the state left by the
    offsets before it, but nothing is delivered in between -- deliveries
    and fetches the batch makes room for are computed once, at the end, and
    the cursor advance yields one ``PersistCursor``.  So a batch of nacks
    in an ordered mode rewinds the shard once (the later offsets are no
    longer in flight), and every released record is delivered again once.

``tick(now_s)``
    Expires in-flight records whose deadline is ``<= now_s`` (shared: the
    record is released and redelivered; exclusive / failover: its shard
    rewinds), releases delayed nacks that are due, resumes paused shards,
    and re-issues (if still wanted, and a consumer is attached) a
    ``FetchMore`` that has been outstanding for at least ``fetch_retry_s``
    (lost request, or nothing was durable yet).  Only ticks re-ask.

**Rewind** (exclusive / failover only): every record of the shard in flight
to the active consumer is released (acks for them are then ignored until
they are delivered again) and delivery of the shard restarts at the cursor
(the first unacknowledged offset) and continues in offset order, skipping
acknowledged offsets.  So, per shard, a consumer sees increasing offsets,
except that after a redelivery it may see a record again, and then the
sequence restarts at the first unacknowledged offset and increases again.

Delivery
========

Every input ends by delivering what it can:

* a consumer never holds more than ``inflight_max`` records in flight
  (summed over shards); delivery to it stops until it acks, nacks, times
  out or detaches;
* shards are served round-robin, one record per shard per pass, starting
  one shard further on each call, so a busy shard does not starve others;
* *exclusive / failover*: the active consumer receives, per shard, the
  next unacked offset in order; *shared*: each ready record (lowest offset
  of a shard first, so redeliveries go out first) goes to the next consumer
  of the rotation that has room -- skipping, for a redelivery, the consumer
  that held it last unless no other consumer has room.  Order is not guaranteed in shared mode;
* ``Deliver.redelivery`` is True when this core delivered that offset before
  (a restored core does not know what its predecessor delivered, so after a
  restart the first delivery of each record says False).

Delivery is at-least-once: a record leaves the subscription only by an
accepted ack; released records are always redelivered.

Fetching
========

While at least one consumer is attached, a shard with no outstanding fetch
asks ``FetchMore(shard, end, cursor + buffer_max - end)`` when it has room
and fewer than ``max(1, buffer_max // 2)`` records waiting for delivery.
So received plus requested records never exceed ``buffer_max`` per shard,
and there is at most one outstanding fetch per shard until records arrive
(a ``records`` call that adds at least one) or a ``tick`` re-asks after
``fetch_retry_s``.  The host answers with durable records only (below the
high watermark); it may answer with fewer, with none, or hold the request
until records become durable.  No fetch is issued before the first input
(the constructor returns nothing): hosts call ``attach`` or ``tick``.

Restart
=======

``cursors`` restores the persisted cursors (first unacked offset per shard,
default 0).  Records below a restored cursor are never delivered again:
fetching starts at the cursor and older records are ignored.  Acks above
the cursor are not persisted, so records acked out of order before a
restart are delivered again after it (at-least-once).

Bounds
======

Per shard: ``end - cursor <= buffer_max`` received records (payloads are
dropped on ack), so the acked-above-cursor set, the delivery counts and the
ready/delayed sets are bounded by ``buffer_max``.  Per consumer:
``inflight_max`` records in flight.  The ack-timeout heap is compacted when
stale entries outnumber live ones.

Determinism: iteration is over lists, insertion-ordered dicts, sorted sets
and heaps with unique tie-breakers, never over hash order.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Iterable

from sortedcontainers import SortedSet

from protocol.consume import Deliver, FetchMore, Mode, PersistCursor, Refused


@dataclass(slots=True)
class _Flight:
    consumer: str
    deadline: float
    seq: int


class _Shard:
    """Per-shard window ``[cursor, end)``; see the module docstring."""

    __slots__ = ("shard", "cursor", "end", "records", "acked", "inflight", "attempts", "ready", "delayed",
                 "last_holder", "next_deliver", "paused_until", "fetch_sent_at")

    def __init__(self, shard: int, cursor: int) -> None:
        self.shard = shard
        self.cursor = cursor
        self.end = cursor  # next offset expected from the log
        self.records: dict[int, Any] = {}  # received and not acked, offsets in [cursor, end)
        self.acked: set[int] = set()  # acked offsets above the cursor
        self.inflight: dict[int, _Flight] = {}
        self.attempts: dict[int, int] = {}  # deliveries so far of unacked offsets
        self.ready: SortedSet = SortedSet()  # shared mode: deliverable offsets
        self.delayed: dict[int, float] = {}  # shared mode: nacked offset -> due time
        self.last_holder: dict[int, str] = {}  # shared mode: last consumer of unacked offsets
        self.next_deliver = cursor  # ordered modes: next offset to deliver
        self.paused_until: float | None = None  # ordered modes: delayed nack
        self.fetch_sent_at: float | None = None  # outstanding FetchMore


class _Out:
    __slots__ = ("refused", "persist", "deliver", "fetch")

    def __init__(self) -> None:
        self.refused: list[Refused] = []
        self.persist: dict[int, int] = {}
        self.deliver: list[Deliver] = []
        self.fetch: list[FetchMore] = []

    def effects(self) -> list[Any]:
        out: list[Any] = list(self.refused)
        out.extend(PersistCursor(s, self.persist[s]) for s in sorted(self.persist))
        out.extend(self.deliver)
        out.extend(sorted(self.fetch, key=lambda f: f.shard))
        return out


class SubscriptionCore:
    """One durable named subscription over a set of shards.  See the module
    docstring for the exact semantics."""

    def __init__(self, name: str, mode: str, shards: list[int], *, cursors: dict[int, int] | None = None,
                 ack_timeout_s: float = 30.0, inflight_max: int = 1000, buffer_max: int = 10_000,
                 nack_delay_s: float = 0.0, fetch_retry_s: float = 1.0) -> None:
        self.name = name
        self.mode = Mode(mode)  # ValueError on an unknown mode
        if not ack_timeout_s > 0:
            raise ValueError("ack_timeout_s must be positive")
        if not fetch_retry_s > 0:
            raise ValueError("fetch_retry_s must be positive")
        if nack_delay_s < 0:
            raise ValueError("nack_delay_s must not be negative")
        if inflight_max < 1 or buffer_max < 1:
            raise ValueError("inflight_max and buffer_max must be at least 1")
        self.ack_timeout_s = float(ack_timeout_s)
        self.inflight_max = int(inflight_max)
        self.buffer_max = int(buffer_max)
        self.nack_delay_s = float(nack_delay_s)
        self.fetch_retry_s = float(fetch_retry_s)
        self.low_water = max(1, self.buffer_max // 2)
        self.shards: list[int] = sorted(set(shards))
        cursors = dict(cursors or {})
        unknown = sorted(set(cursors) - set(self.shards))
        if unknown:
            raise ValueError(f"cursors for unknown shards {unknown}")
        self._sh: dict[int, _Shard] = {}
        for s in self.shards:
            c = cursors.get(s, 0)
            if not isinstance(c, int) or c < 0:
                raise ValueError(f"cursor of shard {s} must be a non-negative int, got {c!r}")
            self._sh[s] = _Shard(s, c)
        self._ordered = self.mode.ordered
        self._consumers: list[str] = []  # attach order; [0] is active in ordered modes
        self._held: dict[str, dict[tuple[int, int], None]] = {}  # consumer -> in-flight (shard, offset)
        self._timeouts: list[tuple[float, int, int, int]] = []  # (deadline, seq, shard, offset)
        self._delays: list[tuple[float, int, int, int]] = []  # (due, seq, shard, offset)
        self._seq = 0
        self._rr = 0  # shared: index of the next consumer of the rotation
        self._shard_rr = 0  # index of the shard served first
        self._compact_at = 1024  # rebuild the timeout heap beyond this size

    # ---------------------------------------------------------------- inputs
    def attach(self, consumer: str, now_s: float) -> list[Any]:
        out = _Out()
        if consumer not in self._held:
            if self.mode is Mode.EXCLUSIVE and self._consumers:
                out.refused.append(Refused(consumer, f"subscription {self.name!r} is exclusive and consumer "
                                                     f"{self._consumers[0]!r} is attached"))
                return out.effects()
            self._consumers.append(consumer)
            self._held[consumer] = {}
        self._pump(now_s, out)
        return out.effects()

    def detach(self, consumer: str, now_s: float) -> list[Any]:
        out = _Out()
        if consumer not in self._held:
            return []
        idx = self._consumers.index(consumer)
        if self._ordered:
            if idx == 0:
                for s in self.shards:
                    self._rewind(self._sh[s])
        else:
            for key in sorted(self._held[consumer]):
                self._release(self._sh[key[0]], key[1])
            if idx < self._rr:
                self._rr -= 1
        self._consumers.pop(idx)
        del self._held[consumer]
        if self._consumers:
            self._rr %= len(self._consumers)
        else:
            self._rr = 0
        self._pump(now_s, out)
        return out.effects()

    def records(self, shard: int, first_offset: int, records: list[Any], now_s: float) -> list[Any]:
        out = _Out()
        sh = self._sh.get(shard)
        if sh is None:
            return []
        if first_offset <= sh.end:
            start = sh.end
            stop = min(first_offset + len(records), sh.cursor + self.buffer_max)
            for o in range(start, stop):
                sh.records[o] = records[o - first_offset]
                if not self._ordered:
                    sh.ready.add(o)
            if stop > start:
                sh.end = stop
                sh.fetch_sent_at = None  # the outstanding fetch is answered
        self._pump(now_s, out)
        return out.effects()

    def ack(self, consumer: str, shard: int, offset: int, now_s: float) -> list[Any]:
        return self.ack_many(consumer, shard, (offset,), now_s)

    def ack_many(self, consumer: str, shard: int, offsets: Iterable[int], now_s: float) -> list[Any]:
        sh = self._sh.get(shard)
        if sh is None:
            return []
        accepted = False
        for offset in offsets:
            if not self._holds(sh, consumer, offset):
                continue
            self._unhold(sh, offset)
            sh.records.pop(offset, None)
            sh.attempts.pop(offset, None)
            sh.last_holder.pop(offset, None)
            sh.acked.add(offset)
            accepted = True
        if not accepted:
            return []
        out = _Out()
        before = sh.cursor
        while sh.cursor in sh.acked:
            sh.acked.discard(sh.cursor)
            sh.cursor += 1
        if sh.cursor != before:
            out.persist[shard] = sh.cursor
            if sh.next_deliver < sh.cursor:
                sh.next_deliver = sh.cursor
        self._pump(now_s, out)
        return out.effects()

    def nack(self, consumer: str, shard: int, offset: int, now_s: float) -> list[Any]:
        return self.nack_many(consumer, shard, (offset,), now_s)

    def nack_many(self, consumer: str, shard: int, offsets: Iterable[int], now_s: float) -> list[Any]:
        sh = self._sh.get(shard)
        if sh is None:
            return []
        accepted = False
        for offset in offsets:
            if not self._holds(sh, consumer, offset):
                continue
            accepted = True
            if self._ordered:
                self._rewind(sh)
                if self.nack_delay_s > 0:
                    sh.paused_until = now_s + self.nack_delay_s
            else:
                self._unhold(sh, offset)
                if self.nack_delay_s > 0:
                    due = now_s + self.nack_delay_s
                    sh.delayed[offset] = due
                    self._seq += 1
                    heapq.heappush(self._delays, (due, self._seq, shard, offset))
                else:
                    sh.ready.add(offset)
        if not accepted:
            return []
        out = _Out()
        self._pump(now_s, out)
        return out.effects()

    def tick(self, now_s: float) -> list[Any]:
        out = _Out()
        rewind: set[int] = set()
        while self._timeouts and self._timeouts[0][0] <= now_s:
            _, seq, s, o = heapq.heappop(self._timeouts)
            sh = self._sh[s]
            fl = sh.inflight.get(o)
            if fl is None or fl.seq != seq:
                continue  # acked, nacked or released since: stale entry
            if self._ordered:
                rewind.add(s)
            else:
                self._release(sh, o)
        for s in sorted(rewind):
            self._rewind(self._sh[s])
        while self._delays and self._delays[0][0] <= now_s:
            due, _, s, o = heapq.heappop(self._delays)
            sh = self._sh[s]
            if sh.delayed.get(o) == due:
                del sh.delayed[o]
                sh.ready.add(o)
        for s in self.shards:
            sh = self._sh[s]
            if sh.paused_until is not None and sh.paused_until <= now_s:
                sh.paused_until = None
        self._pump(now_s, out, retry=True)
        return out.effects()

    # ------------------------------------------------------------ inspection
    def state(self) -> dict[str, Any]:
        """A plain-data snapshot (copies), for tests, metrics and debugging."""
        active = self._consumers[0] if (self._ordered and self._consumers) else None
        return {
            "name": self.name,
            "mode": str(self.mode),
            "consumers": list(self._consumers),
            "active": active,
            "inflight_by_consumer": {c: sorted(self._held[c]) for c in self._consumers},
            "timers": len(self._timeouts) + len(self._delays),  # heap entries, stale ones included
            "shards": {s: {
                "cursor": sh.cursor,
                "end": sh.end,
                "buffered": len(sh.records),
                "acked_above_cursor": sorted(sh.acked),
                "inflight": {o: sh.inflight[o].consumer for o in sorted(sh.inflight)},
                "ready": list(sh.ready) if not self._ordered else
                [o for o in range(sh.next_deliver, sh.end) if o not in sh.acked],
                "delayed": sorted(sh.delayed),
                "next_deliver": sh.next_deliver if self._ordered else None,
                "paused_until": sh.paused_until,
                "fetch_outstanding": sh.fetch_sent_at is not None,
            } for s, sh in ((s, self._sh[s]) for s in self.shards)},
        }

    def cursors(self) -> dict[int, int]:
        """Committed cursor per shard (what ``PersistCursor`` last said)."""
        return {s: self._sh[s].cursor for s in self.shards}

    # ------------------------------------------------------------- internals
    def _holds(self, sh: _Shard, consumer: str, offset: int) -> bool:
        fl = sh.inflight.get(offset)
        return fl is not None and fl.consumer == consumer

    def _unhold(self, sh: _Shard, offset: int) -> None:
        fl = sh.inflight.pop(offset)
        self._held[fl.consumer].pop((sh.shard, offset), None)

    def _release(self, sh: _Shard, offset: int) -> None:
        """Shared mode: in flight -> ready."""
        self._unhold(sh, offset)
        sh.ready.add(offset)

    def _rewind(self, sh: _Shard) -> None:
        """Ordered modes: release the shard's in-flight records and restart
        delivery at the cursor."""
        for o in sorted(sh.inflight):
            self._unhold(sh, o)
        sh.next_deliver = sh.cursor

    def _pump(self, now_s: float, out: _Out, retry: bool = False) -> None:
        if not self._consumers:
            return
        if self._ordered:
            self._deliver_ordered(now_s, out)
        else:
            self._deliver_shared(now_s, out)
        self._fetch(now_s, out, retry)

    def _shard_order(self) -> list[_Shard]:
        n = len(self.shards)
        if n == 0:
            return []
        k = self._shard_rr % n
        self._shard_rr = (k + 1) % n
        return [self._sh[s] for s in self.shards[k:] + self.shards[:k]]

    def _send(self, sh: _Shard, offset: int, consumer: str, now_s: float, out: _Out) -> None:
        n = sh.attempts.get(offset, 0)
        sh.attempts[offset] = n + 1
        self._seq += 1
        deadline = now_s + self.ack_timeout_s
        sh.inflight[offset] = _Flight(consumer, deadline, self._seq)
        self._held[consumer][(sh.shard, offset)] = None
        if not self._ordered:
            sh.last_holder[offset] = consumer
        heapq.heappush(self._timeouts, (deadline, self._seq, sh.shard, offset))
        if len(self._timeouts) > self._compact_at:
            self._compact()
        out.deliver.append(Deliver(consumer, sh.shard, offset, sh.records[offset], n > 0))

    def _deliver_ordered(self, now_s: float, out: _Out) -> None:
        consumer = self._consumers[0]
        room = self.inflight_max - len(self._held[consumer])
        order = self._shard_order()
        progress = True
        while room > 0 and progress:
            progress = False
            for sh in order:
                if room <= 0:
                    break
                if sh.paused_until is not None:
                    if now_s < sh.paused_until:
                        continue
                    sh.paused_until = None
                while sh.next_deliver < sh.end and sh.next_deliver in sh.acked:
                    sh.next_deliver += 1
                if sh.next_deliver >= sh.end:
                    continue
                o = sh.next_deliver
                sh.next_deliver += 1
                self._send(sh, o, consumer, now_s, out)
                room -= 1
                progress = True

    def _deliver_shared(self, now_s: float, out: _Out) -> None:
        order = self._shard_order()
        n = len(self._consumers)
        progress = True
        while progress:
            progress = False
            for sh in order:
                if not sh.ready:
                    continue
                o = sh.ready[0]
                avoid = sh.last_holder.get(o)  # a redelivery goes elsewhere if it can
                idx = -1
                for i in range(n):
                    j = (self._rr + i) % n
                    if len(self._held[self._consumers[j]]) < self.inflight_max:
                        if self._consumers[j] != avoid:
                            idx = j
                            break
                        if idx < 0:
                            idx = j
                if idx < 0:
                    return  # every consumer is full
                sh.ready.pop(0)
                self._send(sh, o, self._consumers[idx], now_s, out)
                self._rr = (idx + 1) % n
                progress = True

    def _fetch(self, now_s: float, out: _Out, retry: bool = False) -> None:
        """Ask for more where wanted; ``retry`` (ticks only): re-ask where the
        outstanding fetch is at least ``fetch_retry_s`` old."""
        for s in self.shards:
            sh = self._sh[s]
            if sh.fetch_sent_at is not None and not (retry and now_s - sh.fetch_sent_at >= self.fetch_retry_s):
                continue
            room = sh.cursor + self.buffer_max - sh.end
            if room <= 0:
                continue
            waiting = (sh.end - sh.next_deliver) if self._ordered else len(sh.ready)
            if waiting >= self.low_water:
                continue
            out.fetch.append(FetchMore(s, sh.end, room))
            sh.fetch_sent_at = now_s

    def _compact(self) -> None:
        """Drop stale heap entries (acked, nacked, released records); amortized
        O(1) per delivery, keeps the heap within twice the live entries + 1024."""
        self._timeouts = [(fl.deadline, fl.seq, s, o) for s in self.shards
                          for o, fl in sorted(self._sh[s].inflight.items())]
        heapq.heapify(self._timeouts)
        self._compact_at = 2 * len(self._timeouts) + 1024
