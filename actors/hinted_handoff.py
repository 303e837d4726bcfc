"""Hinted handoff: the sans-IO queue core (issue 14, level ``any``).

A coordinating node that cannot reach a shard's leader keeps an idempotent
producer's write as a *hint* in a durable queue and acknowledges it at
``any`` once the hint is synced.  Hints drain to the shard's leader --
whichever node leads it when the drain runs, so a failover drains to the
new leader -- oldest first, one hint in flight per shard, rate-limited.

This module does no I/O.  :class:`HandoffCore` keeps the queues in memory
and returns :class:`HandoffOut` effects: store writes (puts and deletes),
whether to sync them before anything else happens, hints to send, and log
lines.  The actor shell (actors/node_handoff.py) carries them out in that
order: write, sync, then answer the client or send.

Bounds (units in the names, ``HandoffTuning``): ``bytes_max`` of queued
batches per node (the oldest hints are dropped to make room, counted and
logged), ``age_max_s`` per hint (older ones dropped, counted, logged),
``drain_bytes_per_s`` for the drain and ``hints_max`` entries.

Store layout: ``b"h" + u64 big-endian id`` -> ``_HDR`` + shard + batch.  Ids
grow per node, so a scan returns the hints in arrival order; a hint's age
is wall-clock time so that it survives a restart.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

KEY_PREFIX = b"h"
_HDR = struct.Struct(">QQIdH")  # producer id (u64), sequence, record count, added (wall s), shard length


@dataclass(frozen=True)
class HandoffTuning:
    bytes_max: int = 64 << 20
    age_max_s: float = 3600.0
    hints_max: int = 100_000
    drain_bytes_per_s: float = 8 << 20
    drain_timeout_s: float = 1.0  # a drained hint not answered this long is sent again
    retry_s: float = 0.2  # after a refusal (no leader, out of order) wait this long
    direct_timeout_s: float = 1.0  # a direct write not answered this long becomes a hint


@dataclass(frozen=True)
class Hint:
    id: int
    shard: str
    producer_id: int
    sequence: int
    count: int
    batch: bytes
    added_s: float


@dataclass
class HandoffOut:
    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    sync: bool = False
    send: list[Hint] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def writes(self) -> bool:
        return bool(self.puts or self.deletes)


def key_of(hint_id: int) -> bytes:
    return KEY_PREFIX + hint_id.to_bytes(8, "big")


def encode(h: Hint) -> bytes:
    s = h.shard.encode()
    return _HDR.pack(h.producer_id, h.sequence, h.count, h.added_s, len(s)) + s + h.batch


def decode(key: bytes, value: bytes) -> Hint:
    pid, seq, count, added, n = _HDR.unpack_from(value)
    start = _HDR.size
    shard = value[start:start + n].decode()
    return Hint(int.from_bytes(key[len(KEY_PREFIX):], "big"), shard, pid, seq, count, value[start + n:], added)


class HandoffCore:
    def __init__(self, tuning: HandoffTuning | None = None, bugs: Any = None) -> None:
        self.tuning = tuning or HandoffTuning()
        self.bugs = bugs  # ShardBugs (its hh_* flags)
        self.queues: dict[str, deque[Hint]] = {}
        self.bytes = 0
        self.hints = 0
        self.next_id = 1
        self.inflight: dict[str, tuple[int, float]] = {}  # shard -> (hint id, sent at, monotonic s)
        self.wait_until: dict[str, float] = {}  # shard -> no send before (monotonic s)
        self.send_at = 0.0  # rate limit: no send before this (monotonic s)
        self.counters = {"stored": 0, "drained": 0, "dropped_bytes": 0, "dropped_age": 0, "dropped_refused": 0,
                         "refused_too_big": 0}

    def _bug(self, name: str) -> bool:
        return bool(getattr(self.bugs, name, False))

    # ------------------------------------------------------------ state
    def load(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild the queues from the store (after a restart)."""
        for key, value in items:
            h = decode(key, value)
            self._push(h)
            self.next_id = max(self.next_id, h.id + 1)

    def _push(self, h: Hint) -> None:
        self.queues.setdefault(h.shard, deque()).append(h)
        self.bytes += len(h.batch)
        self.hints += 1

    def _drop_head(self, shard: str, out: HandoffOut) -> Hint:
        q = self.queues[shard]
        h = q.popleft()
        if not q:
            del self.queues[shard]
        self.bytes -= len(h.batch)
        self.hints -= 1
        if self.inflight.get(shard, (None,))[0] == h.id:
            del self.inflight[shard]
        out.deletes.append(key_of(h.id))
        return h

    def has(self, shard: str) -> bool:
        return shard in self.queues

    def _oldest_shard(self) -> str:
        return min(self.queues, key=lambda s: self.queues[s][0].id)

    # ------------------------------------------------------------ input
    def add(self, shard: str, producer_id: int, sequence: int, count: int, batch: bytes,
            now_wall_s: float) -> tuple[HandoffOut, Hint | None]:
        """Queue a write; the hint is durable once ``out`` is written and
        synced.  None (nothing written) when one batch exceeds the bound."""
        out = HandoffOut()
        t = self.tuning
        if len(batch) > t.bytes_max:
            self.counters["refused_too_big"] += 1
            return out, None
        while self.queues and (self.bytes + len(batch) > t.bytes_max or self.hints + 1 > t.hints_max):
            old = self._drop_head(self._oldest_shard(), out)
            self.counters["dropped_bytes"] += 1
            out.logs.append(f"hinted handoff full ({t.bytes_max} bytes, {t.hints_max} hints): dropped the oldest "
                            f"hint for {old.shard} (producer {old.producer_id} seq {old.sequence})")
        h = Hint(self.next_id, shard, producer_id, sequence, count, batch, now_wall_s)
        out.puts.append((key_of(h.id), encode(h)))  # first: a hint that cannot be encoded changes nothing
        self.next_id += 1
        self._push(h)
        self.counters["stored"] += 1
        out.sync = not self._bug("hh_ack_before_sync")
        return out, h

    def tick(self, now_s: float, now_wall_s: float, reachable: Iterable[str]) -> HandoffOut:
        """Expire old hints; pick the hints to send now: the head of every
        queue whose shard has a known leader (``reachable``), nothing in
        flight (or its answer overdue), within the drain rate."""
        out = HandoffOut()
        t = self.tuning
        for shard in sorted(self.queues):
            while shard in self.queues and now_wall_s - self.queues[shard][0].added_s > t.age_max_s:
                old = self._drop_head(shard, out)
                self.counters["dropped_age"] += 1
                out.logs.append(f"hinted handoff: dropped a hint for {shard} older than {t.age_max_s} s "
                                f"(producer {old.producer_id} seq {old.sequence})")
        ok = set(reachable)
        for shard in sorted(self.queues, key=lambda s: self.queues[s][0].id):
            if shard not in ok or now_s < self.send_at or now_s < self.wait_until.get(shard, 0.0):
                continue
            fl = self.inflight.get(shard)
            if fl is not None and now_s - fl[1] < t.drain_timeout_s:
                continue
            q = self.queues[shard]
            h = q[-1] if self._bug("hh_drain_newest_first") else q[0]
            self.inflight[shard] = (h.id, now_s)
            self.send_at = max(self.send_at, now_s) + len(h.batch) / t.drain_bytes_per_s
            out.send.append(h)
        return out

    def answered(self, shard: str, hint_id: int, outcome: str, now_s: float, error: str = "") -> HandoffOut:
        """The target answered a drained hint: ``ok`` (written, or a
        duplicate), ``retry`` (no leader, timeout, out of order: wait
        ``retry_s`` and send again) or ``drop`` (a definite refusal)."""
        out = HandoffOut()
        fl = self.inflight.get(shard)
        if fl is None or fl[0] != hint_id:
            return out  # a stale answer
        del self.inflight[shard]
        if outcome == "retry":
            self.wait_until[shard] = now_s + self.tuning.retry_s
            return out
        q = self.queues.get(shard)
        if not q:
            return out
        if q[0].id == hint_id:
            h = self._drop_head(shard, out)
        else:  # only the broken drain order answers for another hint than the head
            h = next(x for x in q if x.id == hint_id)
            q.remove(h)
            if not q:
                del self.queues[shard]
            self.bytes -= len(h.batch)
            self.hints -= 1
            out.deletes.append(key_of(h.id))
        if outcome == "ok":
            self.counters["drained"] += 1
        else:
            self.counters["dropped_refused"] += 1
            out.logs.append(f"hinted handoff: {shard} refused the hint of producer {h.producer_id} "
                            f"seq {h.sequence}: {error}; dropped")
        self.wait_until.pop(shard, None)
        return out

    def status(self) -> dict:
        return {"hints": self.hints, "bytes": self.bytes, "bytes_max": self.tuning.bytes_max,
                "age_max_s": self.tuning.age_max_s,
                "queues": {s: {"hints": len(q), "bytes": sum(len(h.batch) for h in q)}
                           for s, q in sorted(self.queues.items())},
                **self.counters}
