"""Shard moves and drains in the simulator (scenarios/shard-move.yml,
scenarios/drain.yml; checkers in sim/movechecks.py), and proof that the
checkers catch the two deliberately broken moves."""
from __future__ import annotations

from pathlib import Path

import pytest

from protocol.shard import ShardBugs
from sim.runner import run
from sim.scenario import load

ROOT = Path(__file__).resolve().parents[1]
SAFETY = {"acked_writes_durable", "replicas_identical", "moves_keep_majority", "moves_in_sync", "offsets_unique"}


def scenario(name: str = "shard-move"):
    return load(ROOT / "scenarios" / f"{name}.yml")


def test_moves_finish_under_crashes_partitions_and_clock_skew(shipped_run):
    r = shipped_run("shard-move", 1)
    assert r.ok, (r.replay, {k: [str(v) for v in vs[:3]] for k, vs in r.violations.items() if vs})
    s = r.data_stats
    assert s["moves_done"] >= 5 and s["handovers"] >= 1 and s["move_steps_checked"] >= s["moves_done"], s
    assert any("crash" in text for _t, text in r.faults) and any("partition" in text for _t, text in r.faults)
    assert s["acked_records"] > 5000, s


def test_a_drained_node_ends_up_empty(shipped_run):
    r = shipped_run("drain", 1)
    assert r.ok, (r.replay, {k: [str(v) for v in vs[:3]] for k, vs in r.violations.items() if vs})
    assert r.data_stats["moves_done"] >= 1 and any("drain n1" in text for _t, text in r.faults)


@pytest.mark.parametrize("sweep", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["recorded", "sweep"])
def test_sweep_of_at_most_500_seeds_catches_a_source_removed_before_the_target_is_in_sync(sweep, catching_seed):
    scn = scenario().with_shard_bugs(ShardBugs(move_remove_before_sync=True))
    found = catching_seed(scn, lambda r: bool(SAFETY & set(r.failed_checks())), 1, sweep)
    assert found is not None, "move_remove_before_sync not caught in 500 seeds"
    assert "move_remove_before_sync" in found.replay


@pytest.mark.parametrize("sweep", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["recorded", "sweep"])
def test_sweep_of_at_most_500_seeds_catches_a_leader_move_without_a_new_epoch(sweep, catching_seed):
    scn = scenario().with_shard_bugs(ShardBugs(move_same_epoch=True))
    found = catching_seed(scn, lambda r: bool(SAFETY & set(r.failed_checks())), 9, sweep)
    assert found is not None, "move_same_epoch not caught in 500 seeds"
    assert "move_same_epoch" in found.replay
    assert run(scenario(), found.seed).ok
