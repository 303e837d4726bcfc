"""The history of a real scenario run, in the simulator's format.

:class:`Recorder` collects ``sim.history.Record`` entries from the
harness's threads (producers' acknowledgement callbacks, consumers), with
``t`` in scenario seconds: real seconds since the start of the workload
divided by the run's time scale, so the checkers' phase boundaries
(``duration_s``) mean what they mean in the simulator.  Records carry the
payloads the data checkers parse (``producer|shard|seq``).
"""
from __future__ import annotations

import threading
import time
from typing import Any

from sim.history import Record


class Recorder:
    """The run's history, in the simulator's format, from many threads.
    ``t`` is scenario seconds since ``t0`` (real seconds / scale)."""

    def __init__(self, t0: float, scale: float) -> None:
        self.t0, self.scale = t0, scale
        self.records: list[Record] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return (time.monotonic() - self.t0) / self.scale

    def record(self, node: str, actor: str, kind: str, **fields: Any) -> Record:
        with self._lock:
            r = Record(self.now(), node, actor, kind, fields)
            self.records.append(r)
            return r

    def produce_done(self, producer: str, shard: str, seq: int, level: str, md: Any, error: BaseException | None,
                     leader: str | None = None) -> Record:
        """One record's outcome as the producer saw it (``count`` 1): its
        offset and the level the node reached, or ``unknown`` on an error
        (the record may or may not be stored)."""
        if error is None:
            return self.record(producer, "producer", "produce.done", producer=producer, shard=shard, seq=seq,
                               count=1, level=level, status="ok", base_offset=md.offset, duplicate=False,
                               leader=leader, error="", level_met=str(md.level))
        return self.record(producer, "producer", "produce.done", producer=producer, shard=shard, seq=seq, count=1,
                           level=level, status="unknown", base_offset=-1, duplicate=False, leader=leader,
                           error=repr(error)[:200], level_met="")

    def snapshot(self) -> list[Record]:
        with self._lock:
            return sorted(self.records, key=lambda r: r.t)


def payload(producer: str, shard: str, seq: int) -> bytes:
    """The record payload the data checkers parse (``producer|shard|seq``)."""
    return f"{producer}|{shard}|{seq}".encode()


def keys_for_shards(shards: int) -> list[bytes]:
    """One key per shard that routes to it (the clients' key hashing)."""
    from protocol.hashing import shard_for_key

    out: dict[int, bytes] = {}
    k = 0
    while len(out) < shards:
        key = b"k%d" % k
        out.setdefault(shard_for_key(key, shards), key)
        k += 1
    return [out[i] for i in range(shards)]


def outcome(f: Any, shard: str) -> tuple[Any, BaseException | None]:
    exc = f.exception()
    if exc is not None:
        return None, exc
    md = f.result()
    if f"{md.topic}#{md.shard}" != shard:
        return None, RuntimeError(f"stored in shard {md.shard}, not {shard}")
    return md, None
