"""Shard groups by time: the pure group list (protocol/groups.py) and the
supervisor's rollover, truncate and drop transactions (actors/supervisor_groups.py)."""
from __future__ import annotations

from actors.supervisor import Plan, SupervisorCore
from protocol.agency import AgencyReply
from protocol.groups import CLOSE_SLACK_MS, GroupList, ShardGroup, groups_path
from protocol.node import NodeHeartbeat, TopicReply, TruncateShards
from protocol.shard import ReplicaState
from protocol.topics import TopicSpec

H = 3_600_000
T0 = 1_000 * H + 123  # ms since the epoch, 123 ms into an hour


def test_first_group_ends_at_the_next_aligned_boundary() -> None:
    gl = GroupList.first(3, T0, H)
    assert gl.groups == (ShardGroup(0, T0, 1001 * H, (0, 1, 2)),) and gl.next_shard == 3
    assert gl.current(T0) == gl.groups[0] and gl.current(1001 * H) is None
    assert GroupList.from_json(gl.to_json()) == gl
    assert GroupList.from_json({"name": "x"}) is None  # a topic spec is no group list


def test_next_group_takes_a_fresh_block_of_shard_ids_and_continues_the_span() -> None:
    gl = GroupList.first(2, T0, H)
    assert not gl.needs_next(T0, H) and gl.needs_next(1001 * H - 10, H)
    gl = gl.next_group(2, 1001 * H - 10, H)
    assert gl.last == ShardGroup(1, 1001 * H, 1002 * H, (2, 3)) and gl.next_shard == 4
    assert gl.current(1001 * H - 1).id == 0 and gl.current(1001 * H).id == 1
    # a supervisor that was away: no gap, the new group reaches past now
    late = GroupList.first(2, T0, H).next_group(2, 1003 * H + 5, H)
    assert late.last.start_ms == 1001 * H and late.last.end_ms == 1004 * H


def test_truncate_closes_the_current_group_now() -> None:
    gl = GroupList.first(2, T0, H)
    new, closed = gl.truncate(2, T0 + 500, H)
    assert closed == ShardGroup(0, T0, T0 + 500, (0, 1))
    assert new.last == ShardGroup(1, T0 + 500, 1001 * H, (2, 3))
    assert new.current(T0 + 499).id == 0 and new.current(T0 + 500).id == 1
    # with the next group already created: it starts now instead, no new shards
    pre = gl.next_group(2, 1001 * H - 10, H)
    new, closed = pre.truncate(2, T0 + 500, H)
    assert closed.end_ms == T0 + 500 and new.groups[1].start_ms == T0 + 500 and new.next_shard == 4


def test_expired_groups_are_whole_groups_past_retention_and_slack() -> None:
    gl = GroupList.first(1, T0, H).next_group(1, 1001 * H, H).next_group(1, 1002 * H, H)
    ret = 2 * H
    assert gl.expired(1003 * H + CLOSE_SLACK_MS - 1, ret) == []
    assert [g.id for g in gl.expired(1003 * H + CLOSE_SLACK_MS, ret)] == [0]
    assert gl.expired(10**15, None) == []
    assert [g.id for g in gl.without(gl.expired(1003 * H + CLOSE_SLACK_MS, ret)).groups] == [1, 2]


def test_oversize_drops_the_oldest_closed_groups_per_shard_index() -> None:
    gl = GroupList.first(2, T0, H).next_group(2, 1001 * H, H).next_group(2, 1002 * H, H)
    sizes = {0: 5, 1: 1, 2: 5, 3: 1, 4: 5, 5: 1}  # index 0 holds 15, index 1 holds 3
    now = 1002 * H + CLOSE_SLACK_MS  # groups 0 and 1 are closed for good, 2 is open
    assert [g.id for g in gl.oversize(sizes, 1, now - 1)] == [0]  # group 1 closed, but within the slack
    assert gl.oversize(sizes, 15, now) == []
    assert [g.id for g in gl.oversize(sizes, 10, now)] == [0]
    assert [g.id for g in gl.oversize(sizes, 1, now)] == [0, 1]  # never the open group
    assert gl.oversize(sizes, None, now) == []


def test_for_range_widens_group_spans_by_the_slack() -> None:
    gl = GroupList.first(1, T0, H).next_group(1, 1001 * H, H)
    assert [g.id for g in gl.for_range(T0, T0 + 1, slack_ms=0)] == [0]
    assert [g.id for g in gl.for_range(1001 * H + 5, 1001 * H + 6, slack_ms=0)] == [1]
    assert [g.id for g in gl.for_range(1001 * H - 5, 1001 * H - 4, slack_ms=10)] == [0, 1]


# -- the supervisor ----------------------------------------------------------------------------------------

NAME = "acme/shop/orders/created"


def _core(now_s: float, wall_ms: int) -> SupervisorCore:
    core = SupervisorCore("n1", "sup-test", grace_s=0.6, nodes=("n1", "n2", "n3"))
    core.tick(0.0)
    core.active = core.loaded = True
    core.last_load_s = core.groups_loaded_s = now_s
    for n in ("n1", "n2", "n3"):
        core.heartbeat(NodeHeartbeat(n, 1), now_s)
    core.wall_ms = wall_ms
    return core


def _reply(core: SupervisorCore, kind: str, ok: bool = True) -> tuple:
    out, _ = core.take()
    (eff,) = [e for e in out if e[0] == "agency" and core.inflight.get(e[2], ("",))[0] == kind]
    core.agency_reply(AgencyReply("sup-test", eff[2], "ok", {"ok": ok}), 1.0)
    return eff[1]


def test_supervisor_rolls_over_truncates_and_drops_in_guarded_transactions() -> None:
    spec = TopicSpec(NAME, shards=2, replication_factor=2, retention_ms=H, shard_group_ms=H)
    core = _core(1.0, T0)
    gl = GroupList.first(2, T0, H)
    core.group_specs = {NAME: spec}
    core.group_lists = {NAME: gl.to_json()}
    for s in (0, 1):
        core.plans[f"{NAME}#{s}"] = Plan(1, "n1", ("n1", "n2"))
    # a truncate: one transaction guarded by the list as read, closing group 0 now
    core.wall_ms = T0 + 1000
    core.truncate_shards(TruncateShards("c", 7, NAME), "me", 1.0)
    txn = _reply(core, "group_truncate")
    assert txn.preconditions[0].path == groups_path(NAME) and txn.preconditions[0].value == gl.to_json()
    paths = {m.path: m.value for m in txn.mutations}
    assert paths[f"/chorus/plan/shards/{NAME}/0/until_ms"] == T0 + 1000
    new = GroupList.from_json(paths[groups_path(NAME)])
    assert [g.shards for g in new.groups] == [(0, 1), (2, 3)] and new.groups[0].end_ms == T0 + 1000
    assert {p for p in paths if p.endswith("/2") or p.endswith("/3")} == {
        f"/chorus/plan/shards/{NAME}/2", f"/chorus/plan/shards/{NAME}/3"}
    assert paths[f"/chorus/plan/shards/{NAME}/2"]["until_ms"] == new.groups[1].end_ms
    out, _ = core.take()
    assert any(e[0] == "reply" and isinstance(e[2], TopicReply) and e[2].status == "ok" for e in out)
    assert f"{NAME}#2" in core.plans and f"{NAME}#3" in core.plans
    # past end + retention + slack: group 0 is dropped with its plans
    core.wall_ms = T0 + 1000 + H + CLOSE_SLACK_MS
    core.tick(1.5)  # first the group after group 1 (its time has come too)...
    txn = _reply(core, "group_create")
    assert [g.shards for g in GroupList.from_json(txn.mutations[0].value).groups][-1] == (4, 5)
    core.tick(1.6)  # ... then the drop
    txn = _reply(core, "group_drop")
    assert {m.path for m in txn.mutations if m.kind == "delete"} == {
        f"/chorus/plan/shards/{NAME}/0", f"/chorus/plan/shards/{NAME}/1"}
    assert f"{NAME}#0" not in core.plans


def test_supervisor_drops_by_size_from_the_replicas_reports() -> None:
    spec = TopicSpec(NAME, shards=1, replication_factor=1, retention_bytes=2 << 20, shard_group_ms=H)
    core = _core(1.0, 1001 * H + CLOSE_SLACK_MS)
    gl = GroupList.first(1, T0, H).next_group(1, 1001 * H, H)  # group 0 closed for good, group 1 open
    core.group_specs = {NAME: spec}
    core.group_lists = {NAME: gl.to_json()}
    core.replica_state(ReplicaState(f"{NAME}#0", "n1", 1, "leader", "n1", 1, 10, 10, log_bytes=2 << 20), 1.0)
    core.replica_state(ReplicaState(f"{NAME}#1", "n1", 1, "leader", "n1", 1, 10, 10, log_bytes=1 << 20), 1.0)
    core.tick(1.1)
    txn = _reply(core, "group_drop")
    assert {m.path for m in txn.mutations if m.kind == "delete"} == {f"/chorus/plan/shards/{NAME}/0"}
