"""Checker for subscriptions of a topic with shard groups (actors/group_walk.py).

``groups_consumed``, per subscription, over the history
(``produce.done``, ``consume.deliver``, ``consume.reset``, the
supervisor's ``groups.created``/``groups.dropped``):

* every record acknowledged at quorum or all was delivered to the
  subscription -- unless its shard was dropped by retention *before* a
  consumer of the subscription reported skipping it: a ``consume.reset``
  of the record's shard index whose span ``[dropped, to)`` of shard ids
  holds the record's shard, at or after the drop.  A record skipped
  without such a report, or skipped while its group was still live, is a
  violation;
* in group order: per consumer and shard index, the shard ids of the
  deliveries never decrease -- a consumer never goes back to an older
  group, so it finished each group's shard before taking the next one's
  (order within a shard is ``delivery_order``'s).
"""
from __future__ import annotations

from typing import Any

from sim.history import Violation


def check_walk(history: list[Any], topic: str, shards: int, subscriptions: list[str],
               modes: dict[str, str]) -> tuple[list[Violation], dict[str, Any]]:
    out: list[Violation] = []
    # shard id -> shard index: every group takes a block of ``shards`` fresh ids
    # (the shard count of a topic with groups never changes), the first 0..shards-1
    index = _Index(shards)
    dropped: dict[int, float] = {}
    resets: dict[str, list[tuple[float, int, int, int]]] = {s: [] for s in subscriptions}
    delivered: dict[str, set[bytes]] = {s: set() for s in subscriptions}
    last: dict[tuple[str, int], int] = {}
    prefix = topic + "#"
    stats = {"deliveries": 0, "resets": 0, "skipped_records": 0, "groups_walked": 0}
    walked: set[tuple[str, int]] = set()
    for r in history:
        f = r.fields
        if r.kind == "groups.dropped" and f["topic"] == topic:
            for s in f["shards"]:
                dropped.setdefault(s, r.t)
        elif r.kind == "consume.reset" and f["subscription"] in resets:
            stats["resets"] += 1
            resets[f["subscription"]].append((r.t, f["index"], _sid(f["dropped"]), _sid(f["to"])))
        elif r.kind == "consume.deliver" and f["subscription"] in delivered and f["shard"].startswith(prefix):
            stats["deliveries"] += 1
            delivered[f["subscription"]].add(f["payload"])
            sid = _sid(f["shard"])
            if (f["consumer"], sid) not in walked:
                walked.add((f["consumer"], sid))
                stats["groups_walked"] += 1
            if modes.get(f["subscription"]) == "shared":
                continue
            key = (f["consumer"], index.get(sid, -1))
            prev = last.get(key)
            if prev is not None and sid < prev:
                out.append(Violation("groups_consumed", f"{f['consumer']} got {f['shard']} offset {f['offset']} "
                                     f"after records of the later shard {prefix}{prev} of the same index",
                                     {"consumer": f["consumer"], "shard": f["shard"]}))
            last[key] = max(sid, prev if prev is not None else sid)
    for r in history:
        if r.kind != "produce.done" or r.fields["status"] != "ok":
            continue
        a = r.fields
        if a["level"] not in ("quorum", "all") or not a["shard"].startswith(prefix):
            continue
        sid = _sid(a["shard"])
        for i in range(a["count"]):
            p = f"{a['producer']}|{a['shard']}|{a['seq'] + i}".encode()
            for s in subscriptions:
                if p in delivered[s]:
                    continue
                d = dropped.get(sid)
                cover = [t for t, ix, frm, to in resets[s]
                         if ix == index.get(sid) and frm <= sid and (to < 0 or sid < to)]
                if d is not None and any(t >= d for t in cover):
                    stats["skipped_records"] += 1
                    continue
                if d is None:
                    why = "its group was never dropped"
                elif cover:
                    why = (f"its group was dropped at t={d:.3f}s, after the subscription skipped it "
                           f"(t={min(cover):.3f}s)")
                else:
                    why = f"its group was dropped at t={d:.3f}s and no consumer reported skipping it"
                out.append(Violation("groups_consumed", f"{p.decode()} (acknowledged at {a['level']}) was never "
                                     f"delivered to subscription {s}: {why}", {"subscription": s,
                                                                               "payload": p.decode()}))
    if len(out) > 20:
        out = out[:20] + [Violation("groups_consumed", f"... and {len(out) - 20} more", {})]
    return out, stats


class _Index:
    def __init__(self, shards: int) -> None:
        self.shards = shards

    def get(self, sid: int, default: int = -1) -> int:
        return sid % self.shards


def _sid(shard: str) -> int:
    return int(shard.rpartition("#")[2])
