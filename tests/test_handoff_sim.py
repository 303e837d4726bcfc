"""Hinted handoff in the simulator: the hinted-handoff scenario (the shard
leader cut off from the coordinating node, then healed; the coordinating
node crashes mid-drain) keeps every write acknowledged as a hint, exactly
once and in order, and the checkers catch deliberately broken handoff."""
from __future__ import annotations

from pathlib import Path

import pytest

from protocol.shard import ShardBugs
from sim.runner import run
from sim.scenario import load

ROOT = Path(__file__).resolve().parents[1]
NAME = "hinted-handoff"


def scenario():
    return load(ROOT / "scenarios" / f"{NAME}.yml")


def violations(r) -> dict:
    return {k: [str(v) for v in vs[:3]] for k, vs in r.violations.items() if vs}


@pytest.mark.parametrize("seed", [1, 2])
def test_every_write_acknowledged_as_a_hint_lands_once_and_in_order(seed, shipped_run):
    r = shipped_run(NAME, seed)
    assert r.ok, (r.replay, violations(r))
    assert r.data_stats["hinted_records"] > 0, "the scenario kept no write as a hint"
    notes = " ".join(text for _t, text in r.faults)
    assert "crash n1" in notes and "restart n1" in notes


@pytest.mark.parametrize("bug,expect", [
    ("hh_ack_before_sync", {"hinted_writes_delivered"}),
    ("hh_drain_newest_first", {"hinted_writes_delivered"}),
    ("hh_forget_sequence", {"no_duplicates"}),
])
def test_sweep_of_at_most_500_seeds_catches_broken_handoff(bug, expect, lowest_failing_seed, shipped_run):
    scn = scenario().with_shard_bugs(ShardBugs(**{bug: True}))
    found = lowest_failing_seed(scn, lambda r: bool(expect & set(r.failed_checks())))
    assert found is not None, f"{bug} not caught in 500 seeds of {NAME}"
    assert f"--bug {bug}" in found.replay
    correct = shipped_run(NAME, found.seed) if found.seed <= 2 else run(scenario(), found.seed)
    assert correct.ok, (found.seed, violations(correct))
