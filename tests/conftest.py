"""Test configuration.

Hypothesis explores fresh random examples on developer machines; under CI
(``CI`` set in the environment) it is derandomized, so a landing never
depends on the luck of the draw -- the examples are still varied, but the
same on every CI run of the same code.  Anything a developer run finds is
reported with the seed that reproduces it.
"""
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # An xdist worker starts with COLUMNS=80, and a rich Console made at
    # import (the admin CLI's) would keep that width for good, ignoring the
    # wider COLUMNS a test gives its CliRunner.
    os.environ.pop("COLUMNS", None)


def _mark_real(items):
    """Every ``*_real.py`` module starts real node processes: ``realnet``
    (``-m "not realnet"`` leaves them out)."""
    for item in items:
        if item.path.name.endswith("_real.py") and not item.get_closest_marker("realnet"):
            item.add_marker(pytest.mark.realnet)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests marked slow (more seeds of what the default run covers) run
    only when the -m expression names them (``-m slow``) or when asked for
    by node id.  Done here rather than with -m in addopts: a command's own
    -m, like the README's ``-m "not realnet"``, would replace that one."""
    _mark_real(items)  # first: -m reads realnet
    if "slow" in (config.getoption("markexpr") or "") or any("::" in a for a in config.args):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def shipped_run():
    """``shipped_run(name, seed)``: the result of simulating the shipped
    scenario ``scenarios/<name>.yml`` (correct cores) with ``seed``, once per
    test session.  A run is deterministic, so tests that judge the same run
    from different sides (the Raft checks, the data plane's) share it instead
    of simulating it again.  Callers must not modify the result."""
    from sim.runner import run
    from sim.scenario import load

    root = Path(__file__).resolve().parents[1]
    runs = {}

    def get(name: str, seed: int):
        if (name, seed) not in runs:
            runs[name, seed] = run(load(root / "scenarios" / f"{name}.yml"), seed)
        return runs[name, seed]

    return get


@pytest.fixture(scope="session")
def lowest_failing_seed():
    """``lowest_failing_seed(scn, fails, seeds=500)``: the result of the
    lowest seed in 1..seeds whose run ``fails``, or None.

    The seeds run in two worker processes and finish in whatever order the
    machine schedules them; taking the first failure to finish would make
    the seed a test judges (and so its outcome) depend on that order.  This
    answers only once every lower seed has finished, so it is the same seed
    on every run, at the same cost: the sweep stops there."""
    from sim.sweep import sweep

    def lowest(scn, fails, seeds: int = 500):
        finished = {}
        nxt = 1
        for r in sweep(scn, list(range(1, seeds + 1)), jobs=2):
            finished[r.seed] = r
            while nxt in finished:
                r = finished.pop(nxt)
                if fails(r):
                    return r
                nxt += 1
        return None

    return lowest


@pytest.fixture(scope="session")
def catching_seed(lowest_failing_seed):
    """``catching_seed(scn, fails, recorded, sweep=False)``: the result of a
    seed in 1..500 whose run ``fails``, or None.

    By default the ``recorded`` seed (one that failed before, kept with the
    test) is replayed first, as hypothesis replays its example database: one
    run while it still fails.  With ``sweep=True`` (the slow twins), or when
    the recorded seed no longer fails (a warning says so), the answer is
    ``lowest_failing_seed``'s, swept from seed 1."""
    from sim.runner import run

    def catching(scn, fails, recorded: int, sweep: bool = False):
        assert 1 <= recorded <= 500
        if not sweep:
            r = run(scn, recorded)
            if fails(r):
                return r
        r = lowest_failing_seed(scn, fails)
        if r is not None and r.seed != recorded:
            warnings.warn(f"{scn.name}: the lowest seed that fails is {r.seed}, not the recorded {recorded}",
                          stacklevel=2)
        return r

    return catching
