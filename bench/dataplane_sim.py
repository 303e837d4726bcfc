"""Data-plane performance in simulated time.

Reports, for a 3-node cluster in the simulator:

* produce throughput (records acknowledged per simulated second) and
  produce latency percentiles (simulated ms) at quorum, with no faults;
* the failover-time distribution -- shard leader crash to the first
  acknowledged write on that shard -- over many seeds of
  scenarios/shard-leader-crash.yml (target: p99 <= 2 s simulated).

    .venv/bin/python bench/dataplane_sim.py [--seeds 50] [--producers 4] [--rate 50]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from sim.runner import percentile as pct
from sim.runner import run
from sim.scenario import load, parse
from sim.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=50, help="seeds of the failover scenario")
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=50.0, help="batches per second per producer")
    ap.add_argument("--records", type=int, default=20, help="records per batch")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()

    for level in ("one", "quorum", "all"):
        scn = parse({
            "name": f"steady-{level}", "duration_s": args.seconds, "settle_s": 4,
            "cluster": {"peers": 3},
            "network": {"latency_min_ms": 0.2, "latency_mean_ms": 0.5, "latency_max_ms": 5},
            "workload": {"clients": 0},
            "data": {"topics": [{"name": "bench/sim/data/events", "shards": 3, "replication_factor": 3}],
                     "producers": args.producers, "rate_per_s": args.rate, "records_per_batch": args.records,
                     "level": level},
            "checks": ["acked_writes_durable", "no_duplicates", "replicas_identical"],
        }, "bench")
        t0 = time.perf_counter()
        r = run(scn, 1)
        wall = time.perf_counter() - t0
        lat = r.produce_latency_ms
        recs = r.data_stats.get("acked_records", 0)
        print(f"level {level:6s}: {recs / args.seconds:,.0f} records/simulated s "
              f"({len(lat)} batches of {args.records}); latency p50 {pct(lat, 50):.2f} ms, "
              f"p99 {pct(lat, 99):.2f} ms, p999 {pct(lat, 99.9):.2f} ms (simulated, 0.2-5 ms links); "
              f"{r.events} events in {wall:.1f} s wall; checks {'ok' if r.ok else r.failed_checks()}")

    scn = load(ROOT / "scenarios" / "shard-leader-crash.yml")
    t0 = time.perf_counter()
    times: list[float] = []
    failed = 0
    for r in sweep(scn, list(range(1, args.seeds + 1))):
        times.extend(r.failover_s)
        failed += not r.ok
    wall = time.perf_counter() - t0
    print(f"failover over {args.seeds} seeds ({len(times)} leader crashes, {failed} failed runs, {wall:.0f} s): "
          f"p50 {pct(times, 50):.2f} s, p90 {pct(times, 90):.2f} s, p99 {pct(times, 99):.2f} s, "
          f"max {max(times, default=0):.2f} s (simulated)")


if __name__ == "__main__":
    main()
