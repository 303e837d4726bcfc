"""Request latency histograms of a listener (binary, HTTP, MQTT).

A :class:`LatencyHistogram` counts observations in fixed buckets, as a
Prometheus histogram does.  It lives where a request's start and answer are
seen -- an I/O thread -- and is read as a JSON-able snapshot by whoever
reports it (the MQTT front's status, the /metrics collector).  Fixed size,
no locks: one thread writes, a reader at worst sees an observation half
counted, which the next scrape corrects.
"""
from __future__ import annotations

from bisect import bisect_left

# upper bounds, seconds (plus +Inf): 0.5 ms .. 10 s
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PENDING_MAX = 65_536  # requests whose start a listener remembers at once (per listener)


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect_left(BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def snapshot(self) -> dict:
        return {"buckets_s": list(BUCKETS_S), "counts": list(self.counts), "sum_s": self.sum_s}
