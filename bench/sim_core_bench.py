"""Raw simulator throughput: ping-pong deliveries per second of CPU time.

Two ChorusActors on two different nodes bounce a small frozen-dataclass
message back and forth (cross-node path: pickling, latency draw, FIFO clamp,
queue, unpickling, dispatch, trace hash).  Several pairs run at once so the
event queue holds more than one event, as in real runs.  Time is measured as
process CPU time (best of ``--repeat`` runs), which is what matters for seed
sweeps and is far less noisy than wall time on a shared machine; the wall
time of the same run is shown too.

    .venv/bin/python bench/sim_core_bench.py [--pairs 8] [--seconds 2.0]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.base import ChorusActor  # noqa: E402
from sim.options import SimOptions  # noqa: E402
from sim.world import World  # noqa: E402


@dataclass(frozen=True)
class Ball:
    n: int


@dataclass(frozen=True)
class Serve:
    peer: object


class Player(ChorusActor):
    def on_Serve(self, msg: Serve, sender: object) -> None:
        self.send(msg.peer, Ball(0))

    def on_Ball(self, msg: Ball, sender: object) -> None:
        self.send(sender, Ball(msg.n + 1))


def run(pairs: int, virtual_s: float, options: SimOptions) -> tuple[int, float, float, World]:
    world = World(seed=1, options=options)
    world.add_node("a")
    world.add_node("b")
    for i in range(pairs):
        left = world.spawn("a", Player, f"p{i}")
        right = world.spawn("b", Player, f"p{i}")
        world.send(left, Serve(right))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    world.run_until(virtual_s)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return world.stats["delivered"], cpu, wall, world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="virtual seconds to simulate")
    parser.add_argument("--repeat", type=int, default=5, help="runs per configuration; best is shown")
    args = parser.parse_args()
    for label, options in (
        ("fault-free", SimOptions()),
        ("faulty", SimOptions(loss=0.01, duplicate=0.01, reorder=True, reorder_jitter_ms=1.0,
                              spike_prob=0.001, spike_ms=100.0)),
    ):
        results = [run(args.pairs, args.seconds, options) for _ in range(args.repeat)]
        delivered, cpu, wall, world = min(results, key=lambda r: r[1])
        print(f"{label:10s}: {delivered} deliveries in {cpu:.3f}s CPU ({wall:.3f}s wall) = "
              f"{delivered / cpu:,.0f}/s CPU, {delivered / wall:,.0f}/s wall  "
              f"(events={world.stats['events']}, hash={world.trace_hash()[:12]})")


if __name__ == "__main__":
    main()
