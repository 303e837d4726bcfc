"""Run many seeds of a scenario in parallel worker processes."""
from __future__ import annotations

import multiprocessing as mp
from typing import Iterator

from sim.runner import RunResult, run
from sim.scenario import Scenario


def _run_one(args: tuple[Scenario, int]) -> RunResult:
    scn, seed = args
    try:
        return run(scn, seed)
    except Exception as exc:  # never lose a seed to a harness exception
        import traceback

        return RunResult(
            scenario=scn.name, seed=seed, trace_hash="", violations={}, ops={}, leaders=[], faults=[],
            events=0, sim_seconds=0.0, wall_seconds=0.0,
            error="".join(traceback.format_exception(exc))[-4000:],
        )


def sweep(scn: Scenario, seeds: list[int], jobs: int = 0) -> Iterator[RunResult]:
    """Yield one RunResult per seed as they finish (unordered)."""
    jobs = jobs or mp.cpu_count() or 1
    if jobs == 1 or len(seeds) == 1:
        for s in seeds:
            yield _run_one((scn, s))
        return
    ctx = mp.get_context("fork")
    with ctx.Pool(jobs) as pool:
        yield from pool.imap_unordered(_run_one, [(scn, s) for s in seeds], chunksize=1)
