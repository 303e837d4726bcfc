"""Interaction tests of the sans-IO Raft core over a hand-driven network.

Each test drives cores directly: ``tick`` them, deliver or drop their
messages, and assert on roles, terms, logs and commit indices -- the style
of etcd's raft interaction tests, without any simulator or actor."""
from __future__ import annotations

import random


from actors.raft_core import CANDIDATE, FOLLOWER, LEADER, PRECANDIDATE, RaftCore
from protocol.raft import (
    ENTRY_COMMAND,
    AppendEntries,
    ClusterConfig,
    RaftBugs,
    RaftTuning,
    RequestVote,
    SnapshotMeta,
)


class Net:
    def __init__(self, ids, seed=1, tuning=None, learners=()):
        self.tuning = tuning or RaftTuning(snapshot_threshold_entries=10_000)
        cfg = ClusterConfig(tuple(ids), tuple(learners))
        self.cores = {
            i: RaftCore(i, random.Random(seed * 100 + n), self.tuning, snapshot=SnapshotMeta(0, 0, cfg))
            for n, i in enumerate(list(ids) + list(learners))
        }
        self.queue = []
        self.cut: set[tuple[str, str]] = set()
        self.applied = {i: [] for i in self.cores}
        self.reads = {i: [] for i in self.cores}

    def absorb(self, i, rd):
        self.queue.extend(rd.messages)
        self.applied[i].extend(rd.committed)
        self.reads[i].extend(rd.read_states)
        return rd

    def isolate(self, i):
        for j in self.cores:
            if j != i:
                self.cut.add((i, j))
                self.cut.add((j, i))

    def heal(self):
        self.cut.clear()

    def deliver(self, max_rounds=10_000):
        rounds = 0
        while self.queue and rounds < max_rounds:
            rounds += 1
            m = self.queue.pop(0)
            if (m.frm, m.to) in self.cut or m.to not in self.cores:
                continue
            self.absorb(m.to, self.cores[m.to].step(m))

    def tick(self, i, n=1):
        for _ in range(n):
            self.absorb(i, self.cores[i].tick())

    def tick_all(self, n=1):
        for _ in range(n):
            for i in self.cores:
                self.tick(i)
            self.deliver()

    def elect(self, i):
        c = self.cores[i]
        self.tick(i, c.randomized_timeout)
        self.deliver()
        assert c.role == LEADER, c.status()
        return c

    def propose(self, i, data: bytes):
        c = self.cores[i]
        r = c.propose(data)
        self.absorb(i, c.ready())
        return r

    def leaders(self):
        return [i for i, c in self.cores.items() if c.role == LEADER]


def cmd_data(entries):
    return [e.data for e in entries if e.kind == ENTRY_COMMAND]


def test_single_node_elects_itself_and_commits():
    net = Net(["a"])
    leader = net.elect("a")
    assert net.propose("a", b"x") == (2, 1)
    assert leader.commit == 2
    assert cmd_data(net.applied["a"]) == [b"x"]


def test_three_nodes_elect_one_leader_and_replicate():
    net = Net(["a", "b", "c"])
    leader = net.elect("a")
    assert leader.term == 1
    assert {c.role for i, c in net.cores.items() if i != "a"} == {FOLLOWER}
    for k in range(10):
        net.propose("a", b"v%d" % k)
    net.deliver()
    net.tick_all(3)  # heartbeats carry the commit index to followers
    for i in "abc":
        assert cmd_data(net.applied[i]) == [b"v%d" % k for k in range(10)], i


def test_prevote_keeps_a_partitioned_peer_from_inflating_terms():
    net = Net(["a", "b", "c"])
    net.elect("a")
    net.isolate("c")
    net.tick_all(100)  # c times out repeatedly but only pre-campaigns
    assert net.cores["c"].term == 1
    assert net.cores["c"].role == PRECANDIDATE
    net.heal()
    net.tick_all(5)
    assert net.leaders() == ["a"] and net.cores["a"].term == 1


def test_check_quorum_steps_down_an_isolated_leader():
    net = Net(["a", "b", "c"])
    net.elect("a")
    net.isolate("a")
    net.tick_all(40)
    assert net.cores["a"].role != LEADER
    assert len(net.leaders()) == 1 and net.leaders()[0] in "bc"


def test_leader_lease_ignores_vote_requests_from_a_rejoining_peer():
    net = Net(["a", "b", "c"], tuning=RaftTuning(pre_vote=False))
    net.elect("a")
    # c, without pre-vote, campaigns at a higher term; b heard from a recently.
    rv = RequestVote("c", "b", 5, 1, 1, pre=False)
    rd = net.cores["b"].step(rv)
    assert rd.messages == [] and net.cores["b"].term == 1


def test_vote_is_granted_once_per_term():
    net = Net(["a", "b", "c"], tuning=RaftTuning(check_quorum=False))
    b = net.cores["b"]
    r1 = b.step(RequestVote("a", "b", 2, 0, 0))
    r2 = b.step(RequestVote("c", "b", 2, 0, 0))
    assert r1.messages[0].granted and not r2.messages[0].granted
    assert r1.hard_state == (2, "a")


def test_double_vote_bug_grants_two_votes():
    net = Net(["a", "b", "c"], tuning=RaftTuning(check_quorum=False, bugs=RaftBugs(double_vote=True)))
    b = net.cores["b"]
    b.step(RequestVote("a", "b", 2, 0, 0))
    assert b.step(RequestVote("c", "b", 2, 0, 0)).messages[0].granted


def test_follower_rejects_mismatching_prev_and_leader_backs_up():
    net = Net(["a", "b", "c"])
    net.elect("a")
    for k in range(5):
        net.propose("a", b"%d" % k)
    net.isolate("c")
    for k in range(5, 50):
        net.propose("a", b"%d" % k)
    net.deliver()
    net.heal()
    net.tick_all(5)
    assert net.cores["c"].last_index == net.cores["a"].last_index
    assert cmd_data(net.applied["c"]) == [b"%d" % k for k in range(50)]


def test_divergent_suffix_is_truncated():
    net = Net(["a", "b", "c"])
    net.elect("a")
    net.propose("a", b"committed")
    net.deliver()
    net.isolate("a")
    net.propose("a", b"lost-1")  # never replicated
    net.propose("a", b"lost-2")
    net.tick_all(40)
    new = net.leaders()[0]
    net.propose(new, b"winner")
    net.deliver()
    net.heal()
    net.tick_all(20)
    for i in "abc":
        assert cmd_data(net.applied[i]) == [b"committed", b"winner"], i


def test_old_term_entries_are_not_committed_by_counting():
    """Figure 8: a leader may not commit an entry from an earlier term just
    because a majority stores it; it commits it with one of its own."""
    net = Net(["a", "b", "c"], tuning=RaftTuning(check_quorum=False, pre_vote=False))
    a = net.elect("a")
    net.isolate("a")
    net.propose("a", b"old")  # index 2, term 1, only on a
    # a becomes leader again in a later term without committing a term-2 entry
    a.step(RequestVote("b", "a", 3, 0, 0))  # bump a's term
    net.heal()
    net.cut = {("b", "a"), ("c", "a")}  # a's messages go out, replies are lost
    a_term_before = a.term
    net.tick("a", a.randomized_timeout + 1)
    net.deliver()
    assert a.term > a_term_before


def test_propose_config_one_at_a_time_and_learners_do_not_vote():
    net = Net(["a", "b", "c"], learners=["d"])
    net.elect("a")
    net.tick_all(2)
    res = net.cores["a"].propose_config(ClusterConfig(("a", "b", "c", "d"), ()))
    assert isinstance(res, tuple)
    net.absorb("a", net.cores["a"].ready())
    again = net.cores["a"].propose_config(ClusterConfig(("a", "b", "c", "d", "e"), ()))
    # either still pending (refused) or committed already and then allowed
    if net.cores["a"].commit < res[0]:
        assert again == "another membership change is in progress"
    net.deliver()
    net.tick_all(3)
    assert net.cores["d"].config.voters == ("a", "b", "c", "d")


def test_two_voters_at_once_is_refused():
    net = Net(["a", "b", "c"])
    net.elect("a")
    net.tick_all(2)
    assert net.cores["a"].propose_config(ClusterConfig(("a", "b", "c", "d", "e"), ())) == (
        "only one voter may be added or removed at a time"
    )


def test_read_index_needs_a_quorum_round():
    net = Net(["a", "b", "c"])
    a = net.elect("a")
    net.tick_all(2)
    assert a.read_index("r1")
    net.absorb("a", a.ready())
    assert net.reads["a"] == []  # not before a quorum confirmed leadership
    net.deliver()
    assert net.reads["a"] == [("r1", a.commit)]


def test_read_index_fails_on_isolated_leader():
    net = Net(["a", "b", "c"])
    a = net.elect("a")
    net.tick_all(2)
    net.isolate("a")
    assert a.read_index("r1")
    net.absorb("a", a.ready())
    net.tick_all(40)
    assert net.reads["a"] == []
    assert a.role != LEADER and a.pending_reads == []


def test_snapshot_installs_on_a_lagging_follower():
    net = Net(["a", "b", "c"])
    a = net.elect("a")
    net.isolate("c")
    for k in range(30):
        net.propose("a", b"%d" % k)
    net.deliver()
    net.tick_all(2)
    rd = a.compact(a.applied, b"SNAPSHOT-DATA")
    assert rd.snapshot is not None and rd.compacted_to == a.applied
    assert a.log == [] or a.log[0].index == a.applied + 1
    net.heal()
    restored = []
    for _ in range(5):
        for i in net.cores:
            rd = net.cores[i].tick()
            net.absorb(i, rd)
        while net.queue:
            m = net.queue.pop(0)
            rd = net.cores[m.to].step(m)
            if rd.restore:
                restored.append((m.to, rd.restore[1]))
            net.absorb(m.to, rd)
    assert restored == [("c", b"SNAPSHOT-DATA")]
    assert net.cores["c"].commit == a.commit


def test_stale_leader_steps_down_on_higher_term_append():
    net = Net(["a", "b", "c"])
    a = net.elect("a")
    rd = a.step(AppendEntries("b", "a", 7, 0, 0, (), 0))
    assert a.role == FOLLOWER and a.term == 7 and a.leader == "b"
    assert rd.hard_state == (7, None)


def test_messages_are_persisted_before_sent_in_ready_order():
    net = Net(["a", "b", "c"], tuning=RaftTuning(pre_vote=False))
    a = net.cores["a"]
    rd = a.tick()
    while not rd.messages:
        rd = a.tick()
    assert a.role == CANDIDATE
    # the vote for itself is in the same Ready as the requests: host persists first
    assert rd.hard_state == (1, "a")
