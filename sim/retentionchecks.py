"""Checkers for shard groups and retention (protocol/groups.py), over the
history (``produce.invoke``/``produce.done``, the supervisor's
``groups.dropped``) and the nodes' final disks.

* ``retention_safe`` -- nothing within retention is dropped: a record
  acknowledged at quorum or all whose shard was dropped at time ``d`` was
  written before ``d - retention`` (its write was *invoked* before then:
  the leader appended it no earlier than that, so this never accuses a
  correct drop).  Records of shards that still exist are judged by
  ``acked_writes_durable`` as always.
  A group dropped by size (``retention_bytes``) must have been closed for
  good: its records were written at least half of ``CLOSE_SLACK_MS``
  before the drop.
* ``dropped_data_removed`` -- a dropped shard's databases are gone from the
  disk of every node that was up from the drop to the end (the space is
  given back), also of nodes that were down at the drop (they delete what
  was dropped meanwhile when they come back); drops in the last
  ``YOUNG_S`` of the run are not judged.

Also :func:`live_group_shards`: the shards of the groups that exist at the
end, read from the agency leader's state machine.
"""
from __future__ import annotations

from typing import Any

from protocol.agency import Read
from protocol.groups import CLOSE_SLACK_MS, GroupList, groups_path
from sim.history import Violation


# Shards created this close to the end of a run (the supervisor keeps
# rolling groups over during the settle phase) may not have replicated
# their first (epoch) batch yet: they are not judged.
YOUNG_S = 2.0


def live_group_shards(h: Any, topic: str) -> list[str]:
    leader = h.leader()
    if leader is None:
        return []
    sm = h.world.actor(f"{leader}/raft").sm
    raw = (sm.read(Read((groups_path(topic),))).get("values") or [None])[0]
    gl = GroupList.from_json(raw)
    young = {s for r in h.world.history if r.kind == "groups.created" and r.fields["topic"] == topic
             and r.t > h.world.now - YOUNG_S for s in r.fields["shards"]}
    return [f"{topic}#{s}" for s in gl.shard_ids() if s not in young] if gl is not None else []


def check_retention(h: Any, scn: Any, leaders: dict) -> tuple[dict[str, list[Violation]], dict[str, Any]]:
    out: dict[str, list[Violation]] = {"retention_safe": [], "dropped_data_removed": []}
    topic = h.grouped_topic
    spec = scn.data.topics[0]
    history = h.world.history
    dropped: dict[str, float] = {}  # shard -> sim time of the drop
    by_size: set[str] = set()
    for r in history:
        if r.kind == "groups.dropped" and r.fields["topic"] == topic:
            for s in r.fields["shards"]:
                dropped.setdefault(f"{topic}#{s}", r.t)
                if r.fields.get("by") == "size":
                    by_size.add(f"{topic}#{s}")
    stats = {"groups_created": sum(1 for r in history if r.kind == "groups.created"),
             "groups_dropped": sum(1 for r in history if r.kind == "groups.dropped"),
             "groups_truncated": sum(1 for r in history if r.kind == "groups.truncated"),
             "shards_dropped": len(dropped), "records_dropped": 0}
    invoked: dict[tuple[str, str, int], float] = {}
    for r in history:
        if r.kind == "produce.invoke":
            f = r.fields
            invoked.setdefault((f["producer"], f["shard"], f["seq"]), r.t)
    retention_s = (spec.retention_ms or 0) / 1000.0
    for r in history:
        f = r.fields
        if r.kind != "produce.done" or f["status"] != "ok" or f["shard"] not in dropped:
            continue
        if f["level"] not in ("quorum", "all"):
            continue
        stats["records_dropped"] += f["count"]
        d = dropped[f["shard"]]
        t = invoked.get((f["producer"], f["shard"], f["seq"]), r.t)
        if f["shard"] in by_size:
            # dropped by size: only a group closed for good (CLOSE_SLACK_MS
            # past its end) may go, so its writes are that much older (half
            # of it is left for the nodes' clock offsets)
            if t > d - CLOSE_SLACK_MS / 2000.0:
                out["retention_safe"].append(Violation(
                    "retention_safe", f"shard {f['shard']} was dropped by size at t={d:.3f}s, but {f['producer']} "
                    f"seq {f['seq']} written there at t={t:.3f}s (acknowledged at t={r.t:.3f}s) was too recent for "
                    "its group to be closed for good", {"shard": f["shard"]}))
            continue
        if t >= d - retention_s:
            out["retention_safe"].append(Violation(
                "retention_safe", f"shard {f['shard']} was dropped at t={d:.3f}s, but {f['producer']} seq "
                f"{f['seq']} written there at t={t:.3f}s (acknowledged at t={r.t:.3f}s) was within the "
                f"retention of {retention_s:g}s", {"shard": f["shard"]}))
    for n in h.peers:
        if not h.world.is_up(n):
            continue
        names = set(h.world._nodes[n].disk.names())
        for shard in sorted(s for s, d in dropped.items() if d <= h.world.now - YOUNG_S):
            if f"shard/{shard}" in names or f"shard/{shard}.meta" in names:
                out["dropped_data_removed"].append(Violation(
                    "dropped_data_removed", f"node {n} still holds the data of shard {shard}, dropped at "
                    f"t={dropped[shard]:.3f}s", {"node": n, "shard": shard}))
    for k in out:
        if len(out[k]) > 20:
            out[k] = out[k][:20] + [Violation(k, f"... and {len(out[k]) - 20} more", {})]
    return out, stats
