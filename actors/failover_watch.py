"""What a supervisor saw of its failovers: why, how long, how many.

:class:`FailoverWatch` is a plain class the ``SupervisorCore`` calls at the
three moments of a failover it runs:

1. ``detected`` -- the tick that decides the planned leader has failed
   (with the reason, from :func:`why_failed`);
2. ``promoted`` -- the agency committed the new leader;
3. ``leader_report`` -- the first state report in which the new leader
   claims leadership of the new epoch: from then on it takes writes.

The time from 1 to 3 on the supervisor's clock is the failover's duration
as the supervisor sees it (a client sees it plus the grace the supervisor
waited before deciding, ``silent_s``).  The watch keeps counters, a
histogram of durations and the last ``RECENT_MAX`` failovers, and queues
one log line per detection and per completion (``take_logs``), which the
actor writes through its host.  It never adds checker records, so
simulator traces do not change.  Bounded: one open entry per shard in
failover, ``RECENT_MAX`` finished ones.
"""
from __future__ import annotations

from collections import deque
from typing import Any

RECENT_MAX = 20
LOGS_MAX = 200  # lines queued for the actor to write (a core run without its actor keeps the newest)
# upper bounds of the duration histogram, seconds (plus +Inf)
DURATION_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


def why_failed(plan_leader: str, seen: Any, plan_epoch: int, now_s: float) -> tuple[str, float | None]:
    """A sentence saying why the planned leader counts as failed, and how
    long it had been silent (None if it never reported).  ``seen`` is the
    supervisor's (time, ReplicaState) of that leader, or None."""
    if not plan_leader:
        return "the shard has no leader in its plan", None
    if seen is None:
        return f"planned leader {plan_leader} never reported its state", None
    t, st = seen
    silent = now_s - t
    if st.epoch != plan_epoch or st.role != "leader":
        return (f"{plan_leader} does not lead epoch {plan_epoch} (it reports epoch {st.epoch} as {st.role})",
                round(silent, 3))
    return f"no state report from leader {plan_leader} for {silent:.2f} s", round(silent, 3)


class FailoverWatch:
    def __init__(self) -> None:
        self.open: dict[str, dict] = {}  # shard -> the failover in progress
        self.recent: deque[dict] = deque(maxlen=RECENT_MAX)
        self.counters = {"started": 0, "completed": 0, "abandoned": 0, "replacements": 0}
        self.bucket_counts = [0] * (len(DURATION_BUCKETS_S) + 1)
        self.duration_sum_s = 0.0
        self.logs: deque[tuple[str, str, dict]] = deque(maxlen=LOGS_MAX)  # (level, message, fields)

    def detected(self, shard: str, epoch: int, old_leader: str, reason: str, silent_s: float | None,
                 now_s: float, wall_s: float) -> None:
        self.counters["started"] += 1
        self.open[shard] = {"shard": shard, "old_leader": old_leader, "old_epoch": epoch, "reason": reason,
                            "silent_s": silent_s, "detected_s": now_s, "at": wall_s, "epoch": None,
                            "new_leader": None}
        self.logs.append(("warning", "shard leader failed; failing over",
                          {"shard": shard, "epoch": epoch, "old_leader": old_leader or "-", "reason": reason,
                           "silent_s": silent_s}))

    def promoted(self, shard: str, leader: str, epoch: int, now_s: float) -> None:
        fo = self.open.get(shard)
        if fo is not None:
            fo.update(new_leader=leader, epoch=epoch, promoted_s=now_s)

    def abandoned(self, shard: str, why: str) -> None:
        fo = self.open.pop(shard, None)
        if fo is not None:
            self.counters["abandoned"] += 1
            self.logs.append(("warning", "failover round abandoned; the next tick starts again",
                              {"shard": shard, "old_leader": fo["old_leader"] or "-", "why": why}))

    def replaced(self, shard: str, dead: str, spare: str) -> None:
        self.counters["replacements"] += 1
        self.logs.append(("warning", "replacing the replica of a silent node",
                          {"shard": shard, "dead": dead, "spare": spare}))

    def leader_report(self, shard: str, node: str, role: str, epoch: int, now_s: float) -> dict | None:
        """A replica's state report: completes the shard's failover when it
        is the promoted leader leading the new epoch; returns the entry."""
        fo = self.open.get(shard)
        if fo is None or fo["new_leader"] != node or role != "leader" or epoch != fo["epoch"]:
            return None
        del self.open[shard]
        took = max(0.0, now_s - fo["detected_s"])
        fo["took_s"] = round(took, 3)
        fo["promote_s"] = round(fo.pop("promoted_s") - fo["detected_s"], 3)
        del fo["detected_s"]
        self.counters["completed"] += 1
        self.duration_sum_s += took
        self.bucket_counts[next((i for i, b in enumerate(DURATION_BUCKETS_S) if took <= b),
                                len(DURATION_BUCKETS_S))] += 1
        self.recent.append(fo)
        self.logs.append(("warning", "failover done: the new leader takes writes",
                          {"shard": shard, "epoch": fo["epoch"], "old_leader": fo["old_leader"] or "-",
                           "new_leader": node, "took_ms": int(took * 1000),
                           "promoted_after_ms": int(fo["promote_s"] * 1000), "reason": fo["reason"]}))
        return fo

    def take_logs(self) -> list[tuple[str, str, dict]]:
        out = list(self.logs)
        self.logs.clear()
        return out

    def stats(self) -> dict:
        """JSON-able counters, duration histogram and recent failovers."""
        return {**self.counters, "in_progress": len(self.open),
                "duration_buckets_s": list(DURATION_BUCKETS_S), "duration_counts": list(self.bucket_counts),
                "duration_sum_s": round(self.duration_sum_s, 6), "recent": list(self.recent)}
