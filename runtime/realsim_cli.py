"""``brokerctl simulate FILE --real``: run and report scenario runs on real processes."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from runtime.realjudge import report_lines
from runtime.realsim import RealResult, run_real  # noqa: I001


def _verdicts(console: Any, r: RealResult) -> None:
    from runtime.cli import _verdicts as table

    table(r)  # the simulator's table: every check run, its verdict and first violation (skipped ones: above)


def simulate_real(console: Any, scn: Any, seeds: list[int], time_scale: float, work_dir: Path | None) -> int:
    """Run ``seeds`` one after the other; print each run and the totals.
    Returns the exit code: 0 when every run passed every check, 2 when the
    scenario cannot run on real processes."""
    from runtime.realsim import check_runnable

    try:
        check_runnable(scn, time_scale)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    base = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="chorus-real-"))
    results: list[RealResult] = []
    for seed in seeds:
        run_dir = base / f"{scn.name}-seed{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        console.print(f"[bold]{scn.name}[/] seed {seed} on real processes ({len(results) + 1}/{len(seeds)})")
        r = run_real(scn, seed, run_dir, time_scale=time_scale, progress=lambda s: console.print(f"  {s}"))
        results.append(r)
        for line in report_lines(r):
            console.print(line, highlight=False)
        _verdicts(console, r)
        if r.ok:
            console.print("[green bold]all checks passed[/]")
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            if r.error:
                console.print(r.error, highlight=False, markup=False)
            console.print(f"[red bold]FAILED[/] seed {seed} ({', '.join(r.failed_checks())}); data kept in {run_dir}; "
                          f"replay with\n  {r.replay}")
    if len(results) > 1:
        kinds: dict[str, int] = {}
        for r in results:
            for k, v in r.fault_counts.items():
                kinds[k] = kinds.get(k, 0) + v
        failed = [r for r in results if not r.ok]
        console.print(f"{len(results)} real runs, {len(failed)} failed; faults injected: "
                      + (", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "none"))
        console.print(f"acknowledged at quorum/all: {sum(r.acked for r in results)}, lost: "
                      f"{sum(r.lost for r in results)}; at one/any: {sum(r.acked_weak for r in results)}, "
                      f"lost: {sum(r.lost_weak for r in results)} (allowed)")
        for r in failed:
            console.print(f"[red]seed {r.seed}[/] ({', '.join(r.failed_checks())}): {r.replay}")
    return 0 if all(r.ok for r in results) else 1
