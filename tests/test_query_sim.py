"""History queries in the simulator: clients page through time ranges while
shard leaders crash (scenarios/history-query.yml, checker sim/querychecks.py),
and proof that the checker catches a continuation that drops ties."""
from __future__ import annotations

from pathlib import Path

import pytest

from protocol.shard import ShardBugs
from sim.runner import run
from sim.scenario import load

ROOT = Path(__file__).resolve().parents[1]


def scenario():
    return load(ROOT / "scenarios" / "history-query.yml")


def test_queries_return_exactly_the_acknowledged_records_across_leader_crashes(shipped_run):
    for seed in (1, 2):
        r = shipped_run("history-query", seed)
        assert r.ok, (r.replay, {k: [str(v) for v in vs[:3]] for k, vs in r.violations.items() if vs})
        q = r.data_stats["queries"]
        assert q["queries"] >= 10 and q["records"] > 1000 and q["gave_up"] == 0, q
        assert any("crash" in text for _t, text in r.faults), r.faults


@pytest.mark.parametrize("sweep", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["recorded", "sweep"])
def test_sweep_of_at_most_500_seeds_catches_a_token_that_drops_ties(sweep, catching_seed):
    scn = scenario().with_shard_bugs(ShardBugs(query_drops_ties=True))
    found = catching_seed(scn, lambda r: "query_exact" in r.failed_checks(), 2, sweep)
    assert found is not None, "query_drops_ties not caught in 500 seeds"
    assert "query_drops_ties" in found.replay
    assert run(scenario(), found.seed).ok
