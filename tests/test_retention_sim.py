"""Shard groups and retention in the simulator: groups roll over, are
truncated and are dropped while producers write and clients query
(scenarios/retention.yml, checkers sim/retentionchecks.py and
sim/querychecks.py), and proof that the checks catch a supervisor that
drops a group early and leaders that take writes after their group closed."""
from __future__ import annotations

from pathlib import Path

import pytest

from protocol.shard import ShardBugs
from sim.runner import run
from sim.scenario import load

ROOT = Path(__file__).resolve().parents[1]


def scenario():
    return load(ROOT / "scenarios" / "retention.yml")


def test_groups_roll_over_and_drop_without_losing_anything_within_retention(shipped_run):
    r = shipped_run("retention", 1)
    assert r.ok, (r.replay, {k: [str(v) for v in vs[:3]] for k, vs in r.violations.items() if vs})
    ret = r.data_stats["retention"]
    # groups were created (rollover and truncate-shards) and whole groups dropped, with their records
    assert ret["groups_created"] >= 5 and ret["groups_dropped"] >= 3 and ret["records_dropped"] > 100, ret
    q = r.data_stats["queries"]
    assert q["queries"] >= 10 and q["records"] > 500, q
    assert any("crash" in text for _t, text in r.faults), r.faults


@pytest.mark.parametrize("bug", ["drop_group_early", "write_closed_group"])
@pytest.mark.parametrize("sweep", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["recorded", "sweep"])
def test_sweep_catches_a_group_dropped_early_and_writes_to_a_closed_group(bug, sweep, catching_seed):
    """drop_group_early: the supervisor drops a group at half its retention;
    write_closed_group: leaders take writes after their group closed, so
    writers with an old view keep filling a truncated group."""
    scn = scenario().with_shard_bugs(ShardBugs(**{bug: True}))
    found = catching_seed(scn, lambda r: "retention_safe" in r.failed_checks(), 1, sweep)
    assert found is not None, f"{bug} not caught in 500 seeds"
    assert bug in found.replay
    assert run(scenario(), found.seed).ok
