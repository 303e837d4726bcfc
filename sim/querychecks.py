"""The history-query checker (``query_exact``), over ``query.done`` records
of sim/querier.py and the shard leaders' final logs.

A query's answer must be exactly the acknowledged records of its range, in
order:

* **exact snapshot** -- the answer equals, in (timestamp, shard, offset)
  order, the records of each shard's final committed log (below the final
  leader's high watermark) whose offset is below the watermark the query
  pinned on its first page and whose producer timestamp is in [from, to).
  Records below a watermark never change, so this forbids gaps, duplicates,
  reordering and anything uncommitted (a record that was never
  acknowledged and lost is in no final log).
* **acknowledged before it started** -- every record acknowledged at
  quorum or all before the query started, in the range, is in the answer,
  for each shard all of whose pages were served by the shard's leader (a
  follower's watermark may trail the leader's by one push; see
  docs/ARCHITECTURE.md).

Retention: records of shards dropped by retention (their group expired)
are left out of both sides -- their final log is gone.

Queries that gave up (no replica answered for ``give_up_s``) are counted,
not judged.
"""
from __future__ import annotations

from typing import Any

from protocol.records import decode_batch, is_control
from sim.history import Record as HistRecord
from sim.history import Violation


def committed(batches: list[bytes], hw: int) -> list[tuple[int, int, bytes]]:
    """(offset, producer timestamp, payload) of the non-control records below ``hw``."""
    out = []
    for b in batches:
        _h, recs = decode_batch(b)
        out += [(r.offset, r.producer_ts_ms, r.payload) for r in recs if r.offset < hw and not is_control(r)]
    return out


def check_queries(history: list[HistRecord], logs: dict[str, list[tuple[int, int, bytes]]],
                  topic: str, dropped: frozenset[int] = frozenset()) -> tuple[list[Violation], dict[str, Any]]:
    """``logs``: shard name -> committed records of its final leader;
    ``dropped``: ids of shards whose group was dropped by retention (their
    records in an answer are not judged: their final log is gone)."""
    bad: list[Violation] = []
    stats = {"queries": 0, "gave_up": 0, "records": 0, "pages_leader_only": 0}
    index_of = {name: int(name.rpartition("#")[2]) for name in logs if name.startswith(topic + "#")}
    where: dict[bytes, tuple[int, int, int]] = {}  # payload -> (ts, index, offset)
    for name, recs in logs.items():
        if name in index_of:
            for off, ts, p in recs:
                where[p] = (ts, index_of[name], off)
    acked = []  # (t, payload)
    for r in history:
        f = r.fields
        if r.kind == "produce.done" and f["status"] == "ok" and f["level"] in ("quorum", "all") \
                and f["shard"].startswith(topic + "#"):
            acked += [(r.t, f"{f['producer']}|{f['shard']}|{f['seq'] + i}".encode()) for i in range(f["count"])]
    for r in history:
        if r.kind != "query.done" or r.fields["topic"] != topic:
            continue
        f = r.fields
        if f["status"] != "ok":
            stats["gave_up"] += 1
            continue
        stats["queries"] += 1
        stats["records"] += len(f["results"])
        lo, hi, pinned = f["from_ms"], f["to_ms"], f["pinned"]
        expected = sorted((ts, index_of[name], off) for name, recs in logs.items() if name in index_of
                          for off, ts, _p in recs
                          if off < pinned.get(index_of[name], 0) and lo <= ts < hi)
        got = [tuple(x) for x in f["results"] if x[0] not in dropped]
        want = [(i, off, ts) for ts, i, off in expected]
        if got != want:
            first = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
            bad.append(Violation("query_exact", f"{f['querier']} at t={f['start_t']:.3f}s [{lo}, {hi}): "
                                 f"{len(got)} records, expected {len(want)}; first difference at #{first}: "
                                 f"got {got[first] if first < len(got) else None}, "
                                 f"expected {want[first] if first < len(want) else None}",
                                 {"pinned": pinned}))
            continue
        leader_only = set(f["leader_only"])
        stats["pages_leader_only"] += len(leader_only)
        have = {(i, off) for i, off, _ts in got}
        for t, p in acked:
            if t >= f["start_t"]:
                continue
            pos = where.get(p)
            if pos is None:
                continue  # lost: acked_writes_durable reports it
            ts, i, off = pos
            if lo <= ts < hi and i in leader_only and (i, off) not in have:
                bad.append(Violation("query_exact", f"{f['querier']} at t={f['start_t']:.3f}s [{lo}, {hi}): "
                                     f"record {p.decode()} (shard {i}, offset {off}, ts {ts}) acknowledged at "
                                     f"t={t:.3f}s is missing", {"pinned": pinned}))
                break
    return bad, stats
