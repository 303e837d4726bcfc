"""Simulator speed and agency performance in simulated time.

Runs a 3-peer agency under a steady workload with no faults and reports:
events per wall-clock second, simulated seconds per wall-clock second,
agency commit throughput (writes per simulated second) and write latency
percentiles in simulated time.  Also times one seed of each scenario.

    .venv/bin/python bench/sim_speed.py [--seconds 120] [--clients 8] [--rate 50]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from sim.runner import percentile as pct
from sim.runner import run
from sim.scenario import load, parse

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120.0, help="simulated seconds of steady load")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rate", type=float, default=50.0, help="operations per second per client")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    scn = parse({
        "name": "steady",
        "duration_s": args.seconds,
        "settle_s": 2,
        "cluster": {"peers": 3},
        "network": {"latency_min_ms": 1, "latency_mean_ms": 2, "latency_max_ms": 20},
        "workload": {"clients": args.clients, "keys": 16, "rate_per_s": args.rate,
                     "read": 0.2, "write": 0.8, "timeout_s": 2},
        "checks": ["election_safety", "state_machine_safety", "liveness"],
    }, "bench")
    print(f"steady agency: 3 peers, {args.clients} clients x {args.rate}/s, {args.seconds:.0f} simulated s")
    for seed in range(1, args.seeds + 1):
        r = run(scn, seed)
        evps = r.events / r.wall_seconds
        speed = r.sim_seconds / r.wall_seconds
        lat = r.commit_latency_ms
        print(f"  seed {seed}: {r.events} events in {r.wall_seconds:.2f} s = {evps:,.0f} events/s, "
              f"{speed:.0f}x real time; {r.commits / args.seconds:.0f} commits/simulated s; "
              f"write latency p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms p999 {pct(lat, 99.9):.1f} ms "
              f"(simulated); checks {'ok' if r.ok else r.failed_checks()}")

    print("one seed of each scenario (75 simulated s each):")
    for f in sorted((ROOT / "scenarios").glob("*.yml")):
        s = load(f)
        walls = []
        for seed in (1, 2, 3):
            t0 = time.perf_counter()
            r = run(s, seed)
            walls.append(time.perf_counter() - t0)
        w = statistics.median(walls)
        print(f"  {f.name:22s} median {w:.2f} s per seed = {r.sim_seconds / w:.0f}x real time; "
              f"200 seeds on 2 cores ~ {200 * w / 2:.0f} s")


if __name__ == "__main__":
    main()
