"""SupervisorCore decisions that real processes expose and the simulator (where replicas start at once) does not."""
from __future__ import annotations

from actors.supervisor import REPLICA_BOOT_S, Plan, SupervisorCore
from protocol.shard import ReplicaState


def _core(now_s: float) -> SupervisorCore:
    core = SupervisorCore("n1", "sup-test", grace_s=0.6, nodes=("n1", "n2", "n3"))
    core.tick(0.0)  # started
    core.active = core.loaded = True
    core.last_load_s = now_s
    return core


def test_a_new_shard_leader_gets_time_to_start_before_failover() -> None:
    core = _core(100.0)
    core.plans["t#0"] = Plan(1, "n2", ("n1", "n2", "n3"))  # a topic created long after the supervisor started
    core.tick(100.0)
    core.tick(100.0 + 2 * core.grace_s + 0.1)  # a replica process takes a while to come up
    assert "t#0" not in core.failovers
    core.replica_state(ReplicaState("t#0", "n2", 1, "leader", "n2", 1, 0, 0), 101.5)
    core.tick(101.6)
    assert "t#0" not in core.failovers


def test_a_new_shard_leader_that_never_reports_is_failed_over() -> None:
    core = _core(100.0)
    core.plans["t#0"] = Plan(1, "n2", ("n1", "n2", "n3"))
    core.tick(100.0)
    core.tick(100.0 + REPLICA_BOOT_S + 0.1)
    assert "t#0" in core.failovers


def test_a_leader_that_stops_reporting_is_failed_over_after_the_grace() -> None:
    core = _core(100.0)
    core.plans["t#0"] = Plan(1, "n2", ("n1", "n2", "n3"))
    core.replica_state(ReplicaState("t#0", "n2", 1, "leader", "n2", 1, 0, 0), 100.0)
    core.tick(100.0 + core.grace_s / 2)
    assert "t#0" not in core.failovers
    core.tick(100.0 + core.grace_s + 0.1)
    assert "t#0" in core.failovers
