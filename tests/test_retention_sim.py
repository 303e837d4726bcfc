"""Shard groups and retention in the simulator: groups roll over, are
truncated and are dropped while producers write, clients query and
consumers walk the groups (scenarios/retention.yml, retention-bytes.yml;
checkers sim/retentionchecks.py, sim/querychecks.py, sim/walkchecks.py),
and proof that the checks catch a supervisor that drops a group early,
leaders that take writes after their group closed, and consumers that skip
a live group or reset to the newest group instead of the oldest left."""
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
    c = r.data_stats["consumption"]
    # the consumers read every group; the one stalled past retention skipped
    # the records of the groups dropped meanwhile, and reported each skip
    assert c["deliveries"] > 5000 and c["groups_walked"] >= 20, c
    assert c["resets"] >= 1 and c["skipped_records"] > 100, c


def test_retention_by_size_drops_the_oldest_closed_groups(shipped_run):
    r = shipped_run("retention-bytes", 1)
    assert r.ok, (r.replay, {k: [str(v) for v in vs[:3]] for k, vs in r.violations.items() if vs})
    ret = r.data_stats["retention"]
    assert ret["groups_dropped"] >= 3 and ret["records_dropped"] > 500, ret
    c = r.data_stats["consumption"]
    assert c["deliveries"] > 3000 and c["resets"] >= 1, c


@pytest.mark.parametrize("bug", ["skip_next_group", "reset_to_newest"])
@pytest.mark.parametrize("sweep", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["recorded", "sweep"])
def test_sweep_catches_consumers_that_skip_a_live_group(bug, sweep, catching_seed):
    """skip_next_group: a consumer done with a group's shard attaches to the
    group after the next; reset_to_newest: a consumer whose shard was dropped
    moves to the newest group instead of the oldest remaining one."""
    scn = scenario().with_shard_bugs(ShardBugs(**{bug: True}))
    found = catching_seed(scn, lambda r: "groups_consumed" in r.failed_checks(), 1, sweep)
    assert found is not None, f"{bug} not caught in 500 seeds"
    assert bug in found.replay


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
