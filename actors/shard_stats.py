"""Traffic counters of one shard replica, for metrics and the dashboard.

A :class:`ShardStats` counts, while its replica leads: records and bytes of
produce requests it took (``produced_*``; a batch a producer retries counts
again), records and bytes it pushed to subscribers (``delivered_*``) and
returned to fetches (``fetched_*``).  Counters start at zero when a replica
process starts and only grow, like Prometheus counters: a new leader's
counters start from zero after a failover (``rate()`` and ``increase()``
handle that).  The replica reports them with its shard status
(``ShardInfo``) together with its followers' positions, from which the
replication lag follows.  Plain integers, no clock: safe for the simulator.
"""
from __future__ import annotations

from typing import Any

from protocol.records import read_header

COUNTERS = ("produced_records", "produced_bytes", "delivered_records", "delivered_bytes",
            "fetched_records", "fetched_bytes")


class ShardStats:
    def __init__(self) -> None:
        self.c = dict.fromkeys(COUNTERS, 0)

    def produced(self, records: int, nbytes: int) -> None:
        self.c["produced_records"] += records
        self.c["produced_bytes"] += nbytes

    def delivered(self, records: tuple) -> None:
        """A Delivery's ``records``: (offset, payload, redelivery) tuples."""
        self.c["delivered_records"] += len(records)
        self.c["delivered_bytes"] += sum(len(r[1]) for r in records)

    def fetched(self, batches: Any) -> None:
        for b in batches:
            h = read_header(b, check_body=False)
            self.c["fetched_records"] += max(0, h.end_offset - h.base_offset)
            self.c["fetched_bytes"] += len(b)

    def as_dict(self) -> dict:
        return dict(self.c)


def follower_positions(core: Any) -> dict[str, int]:
    """Leader only: each follower's acknowledged end offset."""
    if core is None or core.role != "leader":
        return {}
    return {n: int(f.acked) for n, f in sorted(core.followers.items())}
