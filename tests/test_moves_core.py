"""The sans-IO parts of shard moves: learners and the leader handover in
``ShardCore`` (actors/replication.py), and the rebalance planner
(actors/rebalance.py).  The protocol as a whole is judged by the simulator
(tests/test_moves_sim.py) and on real processes (tests/test_moves_real.py)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.rebalance import load_of, plan_rebalance
from actors.replication import FOLLOWER, LEADER
from protocol.shard import Assign, Handover, HandoverReady, Push, ShardTuning
from tests.test_replication_core import SHARD, Net

SUP = "sup"


def _with_learner(tuning=None):
    """a leads b, c; d is a learner (a move's target), all in epoch 2."""
    net = Net(("a", "b", "c", "d"), tuning)
    voters = ("a", "b", "c")
    for i in ("a", "b", "c", "d"):
        net.absorb(i, net[i].assign(Assign(SHARD, 1, "a", voters), net.now))
    net.settle(("a", "b", "c"))
    for i in sorted(net.ids, key=lambda i: i != "a"):
        net.absorb(i, net[i].assign(Assign(SHARD, 2, "a", voters, ("d",)), net.now))
    return net


def test_a_learner_copies_the_log_but_never_counts_for_the_high_watermark():
    net = _with_learner()
    net.isolate("b")
    net.isolate("c")
    net.cut -= {("a", "d"), ("d", "a")}
    net.produce("a", b"x1", level="quorum")
    net.deliver()
    net.tick(0.1)
    net.deliver()
    assert net.payloads("d") == [b"x1"]  # the learner has it ...
    assert net["a"].hw < net["a"].log.end_offset  # ... and it does not make it committed
    assert not [r for r in net.client_replies() if r.status == "ok"]
    net.heal()
    net.tick(ShardTuning().isr_timeout_s)
    net.deliver()
    assert [r.status for r in net.client_replies()] == ["ok"]
    assert "d" not in net["a"].in_sync  # in-sync lists voters only


def test_the_copy_to_a_learner_is_rate_limited():
    tuning = ShardTuning(move_bytes_per_s=2000, push_bytes_max=1000)
    net = Net(("a", "b", "c", "d"), tuning)
    voters = ("a", "b", "c")
    for i in ("a", "b", "c"):
        net.absorb(i, net[i].assign(Assign(SHARD, 1, "a", voters), net.now))
    for k in range(40):
        net.produce("a", b"p" * 200, req_id=k)
        net.deliver()
    for i in sorted(net.ids, key=lambda i: i != "a"):
        net.absorb(i, net[i].assign(Assign(SHARD, 2, "a", voters, ("d",)), net.now))
    end = net["a"].log.end_offset
    copied = []
    for _ in range(10):  # one second
        net.tick(0.1)
        net.deliver()
        copied.append(net["d"].log.end_offset)
    learner_bytes = sum(len(b) for b in net.raw("d"))
    assert net["d"].log.end_offset < end  # not all of it within a second ...
    assert learner_bytes <= 2000 * 1.0 + 2 * 1000  # ... about move_bytes_per_s (one push may overdraw)
    for _ in range(100):
        net.tick(0.1)
        net.deliver()
    assert net["d"].log.end_offset == net["a"].log.end_offset  # and it gets there


def test_a_leader_restarted_during_the_copy_goes_on_copying_to_the_learner():
    # the shard-move scenario found a move learning forever: the restarted
    # leader led the planned epoch, so no Assign came, and it had forgotten d
    net = _with_learner()
    net.settle()
    net.isolate("d")
    for k in range(5):
        net.produce("a", b"r%d" % k, req_id=k)
        net.deliver()
    net.heal()
    again = type(net["a"])(SHARD, "a", net["a"].log, net.tuning, epoch=2, replicas=("a", "b", "c"))
    net.cores["a"] = again
    net.absorb("a", again.resume(2, "a", ("a", "b", "c"), net.now, ("d",)))
    assert again.role == LEADER and again.learners == ("d",)
    for _ in range(20):
        net.tick(0.1)
        net.deliver()
    assert net.payloads("d") == net.payloads("a") and len(net.payloads("d")) == 5


def test_handover_freezes_the_leader_until_a_newer_epoch_and_survives_a_restart():
    net = _with_learner()
    net.settle()
    for i in sorted(net.ids, key=lambda i: i != "a"):  # d joins the voters (epoch 3)
        net.absorb(i, net[i].assign(Assign(SHARD, 3, "a", ("a", "b", "c", "d")), net.now))
    net.produce("a", b"before")
    net.settle()
    rd = net.absorb("a", net["a"].handover(Handover(SHARD, 3, "d", SUP)))
    ready = [m for to, m in rd.replies if to == SUP]
    assert ready == [HandoverReady(SHARD, "a", 3, "d", net["a"].log.end_offset)]
    assert rd.persist_handover == (3, "d")
    # frozen: writes are refused with a retryable error, nothing is appended
    end = net["a"].log.end_offset
    (r,) = net.produce("a", b"during")
    assert r.status == "fail" and "moving to d" in r.error
    assert net["a"].log.end_offset == end
    # a restart from the same storage keeps the freeze (persisted before HandoverReady left)
    again = type(net["a"])(SHARD, "a", net["a"].log, net.tuning, epoch=3, replicas=("a", "b", "c", "d"),
                           handover=(3, "d"))
    again.resume(3, "a", ("a", "b", "c", "d"), net.now)
    assert again.role == LEADER and again.handing_over == "d"
    net.cores["a"] = again
    (r,) = net.produce("a", b"after restart")
    assert r.status == "fail"
    # the handover's new epoch lifts it: d leads with everything a had
    for i in sorted(net.ids, key=lambda i: i != "d"):
        net.absorb(i, net[i].assign(Assign(SHARD, 4, "d", ("a", "b", "c", "d")), net.now))
    assert net["a"].role == FOLLOWER and net["a"].handing_over == ""
    assert b"before" in net.payloads("d")
    net.produce("d", b"new leader", req_id=9)
    net.settle()
    assert net.payloads("a") == net.payloads("d")


def test_handover_waits_for_the_target_to_hold_the_whole_log():
    net = _with_learner()
    net.settle()
    for i in sorted(net.ids, key=lambda i: i != "a"):
        net.absorb(i, net[i].assign(Assign(SHARD, 3, "a", ("a", "b", "c", "d")), net.now))
    net.settle()
    net.produce("a", b"late")
    net.drop(lambda m: isinstance(m, Push) and m.to == "d")  # d has not got it yet
    rd = net.absorb("a", net["a"].handover(Handover(SHARD, 3, "d", SUP)))
    assert not [m for to, m in rd.replies if to == SUP]
    net.tick(ShardTuning().isr_timeout_s)  # the probe re-sends to d
    net.deliver()
    assert any(isinstance(m, HandoverReady) for m in net.replies.get(SUP, []))
    assert net.payloads("d")[-1] == b"late"


def test_rebalance_evens_replicas_and_moves_leaders_off_a_crowded_node():
    shards = [(f"t#{i}", ("n1", "n2", "n3"), "n1") for i in range(6)]
    nodes = ["n1", "n2", "n3", "n4"]
    plan = plan_rebalance(shards, nodes)
    after = {s: (r, l) for s, r, l in shards}
    for m in plan:
        reps, lead = after[m.shard]
        assert m.frm in reps and m.to not in reps
        after[m.shard] = (tuple(m.to if n == m.frm else n for n in reps), m.to if m.leader else lead)
    load = load_of([(s, r, l) for s, (r, l) in after.items()], nodes)
    counts = [v[0] for v in load.values()]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 18
    assert load["n1"][1] < 6 and load["n4"][1] > 0  # some leaderships moved with their replicas
    assert plan_rebalance([(s, r, l) for s, (r, l) in after.items()], nodes) == []  # balanced: nothing to do


def test_rebalance_empties_a_node_that_may_not_hold_replicas():
    shards = [("t#0", ("n1", "n2", "n3"), "n2"), ("t#1", ("n1", "n3", "n4"), "n1")]
    plan = plan_rebalance(shards, ["n2", "n3", "n4", "n5"])
    assert {m.shard for m in plan if m.frm == "n1"} == {"t#0", "t#1"}
    assert all(m.to != "n1" for m in plan)



def _after(shards, plan):
    after = {s: (r, l) for s, r, l in shards}
    for m in plan:
        reps, lead = after[m.shard]
        assert m.frm in reps and m.to not in reps
        after[m.shard] = (tuple(m.to if n == m.frm else n for n in reps), m.to if m.leader else lead)
    return [(s, r, l) for s, (r, l) in after.items()]


def test_rebalance_gives_a_new_node_leaderships_by_swapping_replicas():
    # replica moves alone left n5 without a leadership here (n2 and n3 kept two each)
    shards = [("t#0", ("n1", "n2", "n3"), "n2"), ("s#0", ("n1", "n2"), "n1"), ("s#1", ("n1", "n3"), "n3"),
              ("s#2", ("n3", "n1"), "n3"), ("s#3", ("n1", "n3"), "n3")]
    nodes = ["n1", "n2", "n3", "n5"]
    load = load_of(_after(shards, plan_rebalance(shards, nodes)), nodes)
    assert load["n5"][1] >= 1 and max(v[1] for v in load.values()) <= 2, load
    assert max(v[0] for v in load.values()) - min(v[0] for v in load.values()) <= 1, load


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.permutations(["n1", "n2", "n3"]), st.integers(2, 3), st.integers(0, 2)),
                min_size=1, max_size=14))
def test_rebalance_onto_a_new_node_evens_replicas_and_leaderships(layout):
    shards = [(f"t#{i}", tuple(p[:rf]), p[lead % rf]) for i, (p, rf, lead) in enumerate(layout)]
    nodes = ["n1", "n2", "n3", "n4"]
    after = _after(shards, plan_rebalance(shards, nodes))
    load = load_of(after, nodes)
    reps, leads = [v[0] for v in load.values()], [v[1] for v in load.values()]
    assert max(reps) - min(reps) <= 1 and sum(reps) == sum(len(r) for _, r, _ in shards), load
    assert max(leads) - min(leads) <= 2, load
    assert plan_rebalance(after, nodes) == []  # a second run finds nothing to do
