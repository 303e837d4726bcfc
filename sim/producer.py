"""Simulated producers for the shard data plane.

A producer is an actor on its own client node.  It writes batches of
records to the shards of a topic (keyless: round robin), one batch in
flight per shard, each batch carrying the producer id and the sequence
number of its first record (idempotent producer).  A batch that gets no
definite answer -- timeout, ``unknown``, leader moved -- is retried with
the *same* sequence, to the leader named in the last answer or to another
node, until it gets a definite answer; the leader answers a retried batch
with its original offset instead of appending it again.  (Giving up and
moving on would leave a hole in the sequence that the leader must refuse:
later batches would never be accepted.)  ``attempts_max`` only bounds a
batch that can never succeed.

History records (for sim/datachecks.py):

* ``produce.invoke`` {producer, shard, seq, count, level}
* ``produce.done``   {producer, shard, seq, count, level, status, base_offset, duplicate, leader,
  level_met} (``level_met`` ``any``: kept as a hint by the coordinating node)

Payloads are ``b"<producer>|<shard>|<seq>"`` so a checker can find every
acknowledged record in the final logs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import ChorusActor
from protocol.records import Record, encode_batch
from protocol.shard import GROUP_CLOSED, Produce, ProduceReply
from sim.groupview import GroupView


@dataclass(frozen=True)
class ProducerBoot:
    producer: str
    producer_id: int
    shards: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (shard, ((node, replica address), ...))
    rate_per_s: float = 20.0  # batches per second
    records_per_batch: int = 5
    level: str = "quorum"
    timeout_s: float = 1.0
    attempts_max: int = 100_000
    stop_after_s: float = 1e9
    # shard groups: write to the current group of ``topic`` (read from the
    # agency, ``agency`` = its peers; re-read every ``refresh_s`` and when a
    # leader says the group is closed); ``nodes`` route any shard
    topic: str = ""
    agency: tuple[Any, ...] = ()
    nodes: tuple[tuple[str, Any], ...] = ()
    refresh_s: float = 1.0
    pad_bytes: int = 0  # a header of this many random bytes on every record (retention by size)


def payload(producer: str, shard: str, seq: int) -> bytes:
    return f"{producer}|{shard}|{seq}".encode()


class ShardProducer(GroupView, ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.boot: ProducerBoot | None = None
        self.seq: dict[str, int] = {}
        self.inflight: dict[str, tuple[int, int, Produce, int]] = {}  # shard -> (seq, count, request, attempt)
        self.leader: dict[str, str] = {}
        self.rr = 0
        self.req = 0
        self.suspect: dict[str, float] = {}  # node -> when a request to it went unanswered
        self.last_target: dict[str, str] = {}

    def on_ProducerBoot(self, msg: ProducerBoot, sender: Any) -> None:
        if self.boot is not None:
            return
        self.boot = msg
        self.routes = {s: dict(reps) for s, reps in msg.shards}
        self.order = [s for s, _ in msg.shards]
        self.started = self.now()
        if msg.agency:
            self._gv_refresh()
            self.set_timer(msg.refresh_s, ("refresh", 0, 0))
        self._think()

    def _think(self) -> None:
        self.set_timer(self.rng.expovariate(self.boot.rate_per_s), ("next", 0, 0))

    def _group_shards(self) -> None:
        """Write to the shards of the group that holds this producer's clock."""
        g = self.view.current(int(self.wall() * 1000)) if self.view is not None else None
        self.order = [f"{self.boot.topic}#{s}" for s in g.shards] if g is not None else []
        if g is None:
            self._gv_refresh()  # no group holds this clock (yet): read the list again
        for s in self.order:
            self.routes.setdefault(s, dict(self.boot.nodes))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        kind, shard, attempt = msg.payload
        if kind == "gv_timeout":
            self._gv_timeout(shard)
            return
        if kind == "refresh":
            if self.now() - self.started < self.boot.stop_after_s:
                self._gv_refresh()
                self.set_timer(self.boot.refresh_s, ("refresh", 0, 0))
            return
        if kind == "next":
            if self.now() - self.started < self.boot.stop_after_s:
                self._issue()
                self._think()
            return
        cur = self.inflight.get(shard)
        if cur is None or (cur[0], cur[3]) != attempt:
            return  # a timer of an earlier batch or attempt (a batch's first attempt is 1 too)
        if kind == "timeout":
            silent = self.last_target.get(shard)
            if silent is not None:
                self.suspect[silent] = self.now()  # skip it in the rotation for a while
            self.leader.pop(shard, None)
            self._retry(shard, "timeout")
        elif kind == "retry":
            self._send(shard)

    def _issue(self) -> None:
        if self.boot.agency:
            self._group_shards()
        n = len(self.order)
        for i in range(n):
            shard = self.order[(self.rr + i) % n]
            if shard not in self.inflight:
                self.rr = (self.rr + i + 1) % n
                break
        else:
            return  # every shard has a batch in flight
        b = self.boot
        seq = self.seq.get(shard, 0)
        count = b.records_per_batch
        self.seq[shard] = seq + count
        pad = (("pad", self.rng.randbytes(b.pad_bytes)),) if b.pad_bytes else ()  # random: zstd keeps its size
        recs = [Record(key=None, payload=payload(b.producer, shard, seq + i), producer_ts_ms=int(self.wall() * 1000),
                       headers=pad)
                for i in range(count)]
        batch = encode_batch(recs, producer_id=b.producer_id, base_sequence=seq)
        self.req += 1
        req = Produce(shard, b.producer, self.req, batch, count, b.level, b.producer_id, seq)
        self.record("produce.invoke", producer=b.producer, shard=shard, seq=seq, count=count, level=b.level)
        self.inflight[shard] = (seq, count, req, 1)
        self._send(shard)

    def _send(self, shard: str) -> None:
        seq, count, req, attempt = self.inflight[shard]
        reps = self.routes[shard]
        target = self.leader.get(shard)
        if target not in reps:
            now = self.now()
            nodes = [n for n in sorted(reps) if now - self.suspect.get(n, -1e9) > 1.0] or sorted(reps)
            target = nodes[(attempt - 1) % len(nodes)]
        self.last_target[shard] = target
        self.send(reps[target], req)
        self.set_timer(self.boot.timeout_s, ("timeout", shard, (seq, attempt)))

    def _retry(self, shard: str, why: str, backoff_s: float = 0.0) -> None:
        seq, count, req, attempt = self.inflight[shard]
        if attempt >= self.boot.attempts_max:
            self._done(shard, "unknown", -1, False, why)
            return
        self.inflight[shard] = (seq, count, req, attempt + 1)
        if backoff_s:
            self.set_timer(backoff_s, ("retry", shard, (seq, attempt + 1)))
        else:
            self._send(shard)

    def on_ProduceReply(self, msg: ProduceReply, sender: Any) -> None:
        cur = self.inflight.get(msg.shard)
        if cur is None or cur[2].req_id != msg.req_id:
            return  # answer to a batch already settled
        if msg.leader:
            self.leader[msg.shard] = msg.leader
        if msg.status == "ok":
            self._done(msg.shard, "ok", msg.base_offset, msg.duplicate, "", msg.level)
        elif msg.status == "fail" and msg.error.startswith("bad batch"):
            self._done(msg.shard, "fail", -1, False, msg.error)
        elif msg.status == "fail" and msg.error.startswith(GROUP_CLOSED):
            self._done(msg.shard, "fail", -1, False, msg.error)  # a definite no: move to the current group
            self._gv_refresh()
        else:
            if msg.leader is None:
                self.leader.pop(msg.shard, None)
            self._retry(msg.shard, msg.error or msg.status, backoff_s=0.05)

    def _done(self, shard: str, status: str, base: int, duplicate: bool, error: str, level_met: str = "") -> None:
        seq, count, req, _attempt = self.inflight.pop(shard)
        self.record("produce.done", producer=self.boot.producer, shard=shard, seq=seq, count=count,
                    level=self.boot.level, status=status, base_offset=base, duplicate=duplicate,
                    leader=self.leader.get(shard), error=error, level_met=level_met)
