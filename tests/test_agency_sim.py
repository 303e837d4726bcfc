"""The agency (RaftPeer actors) in the deterministic simulator.

Three peers ``n1..n3`` and a probe actor on its own node.  The test drives
the probe with injected ``Do`` messages; the probe sends them on to peers
over the simulated network and records every answer (with its own clock),
so that the tests can assert on what a client would see."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from thespian.actors import ActorAddress

from actors.agency_sm import AgencyState, matches
from actors.base import ChorusActor
from actors.raft_core import LEADER
from actors.raft_peer import RaftPeer
from protocol.agency import (
    FAIL,
    OK,
    UNKNOWN,
    AgencyReply,
    AgencyRequest,
    MembershipChange,
    Mutation,
    Precondition,
    Read,
    StatusQuery,
    StatusReply,
    Txn,
    Unwatch,
    Watch,
    WatchEvents,
)
from protocol.raft import RaftBoot, RaftTuning
from sim.world import World

PEERS = ["n1", "n2", "n3"]
# Explore other schedules: AGENCY_SIM_SEED_OFFSET=n shifts every test's seed.
SEED_OFFSET = int(os.environ.get("AGENCY_SIM_SEED_OFFSET", "0"))


# ------------------------------------------------------------------ probe
@dataclass(frozen=True)
class Do:
    """Harness -> probe: send these messages to ``target``, in order."""

    target: ActorAddress
    msgs: tuple


class Probe(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[float, Any]] = []  # (probe clock, message)

    def on_Do(self, msg: Do, sender: Any) -> None:
        for m in msg.msgs:
            self.send(msg.target, m)

    def _keep(self, msg: Any, sender: Any) -> None:
        self.got.append((self.now(), msg))

    on_AgencyReply = on_WatchEvents = on_StatusReply = _keep


# ---------------------------------------------------------------- cluster
def addr(node: str) -> ActorAddress:
    return ActorAddress(f"{node}/raft")


def setm(path: str, value: Any) -> Mutation:
    return Mutation(path, "set", value)


class Cluster:
    def __init__(self, seed: int, tuning: RaftTuning | None = None, request_timeout_s: float = 5.0) -> None:
        self.w = World(seed + SEED_OFFSET)
        self.tuning = tuning or RaftTuning()
        self.timeout = request_timeout_s
        self.peers = list(PEERS)
        for n in self.peers + ["probe"]:
            self.w.add_node(n)
        self.book = tuple((p, addr(p)) for p in self.peers)
        for p in self.peers:
            self.w.spawn(p, RaftPeer, "raft", self.boot(p, voters=tuple(self.peers)))
        self.probe_addr = self.w.spawn("probe", Probe, "probe")
        self.req_ids: dict[str, int] = {}

    def boot(self, node: str, voters: tuple[str, ...], book=None) -> RaftBoot:
        return RaftBoot(node, book or self.book, voters=voters, tuning=self.tuning,
                        request_timeout_s=self.timeout)

    # ------------------------------------------------------------ queries
    @property
    def probe(self) -> Probe:
        return self.w.actor(self.probe_addr)

    def peer(self, node: str) -> RaftPeer:
        return self.w.actor(addr(node))

    def leader(self) -> str | None:
        best = None
        for p in self.peers:
            a = self.peer(p) if self.w.is_up(p) else None
            if a is not None and a.core is not None and a.core.role == LEADER:
                if best is None or a.core.term > best[0]:
                    best = (a.core.term, p)
        return best[1] if best else None

    def followers(self) -> list[str]:
        lead = self.leader()
        return [p for p in self.peers if p != lead and self.w.is_up(p)]

    def wait(self, cond: Callable[[], Any], timeout: float, step: float = 0.01) -> bool:
        end = self.w.now + timeout
        while not cond():
            if self.w.now >= end:
                return False
            self.w.run_for(step)
        return True

    def wait_leader(self, timeout: float = 5.0) -> str:
        assert self.wait(lambda: self.leader() is not None and self._leader_ready(), timeout), "no leader"
        return self.leader()

    def _leader_ready(self) -> bool:
        lead = self.leader()
        core = self.peer(lead).core
        if core.term_at(core.commit) != core.term:  # its no-op is not committed: not ready for reads
            return False
        # every up member knows it (else a forwarded request would be refused)
        return all(self.peer(p).core.leader == lead for p in core.config.members() if self.w.is_up(p))

    def converged(self, nodes=None) -> bool:
        lead = self.leader()
        if lead is None:
            return False
        commit = self.peer(lead).core.commit
        return all(self.peer(p) is not None and self.peer(p).core.applied == commit
                   and self.peer(p).sm.applied_index == commit for p in (nodes or self.peers))

    # ----------------------------------------------------------- requests
    def send(self, node: str, *msgs: Any) -> None:
        self.w.send(self.probe_addr, Do(addr(node), tuple(msgs)))

    def next_id(self, client: str) -> int:
        self.req_ids[client] = self.req_ids.get(client, 0) + 1
        return self.req_ids[client]

    def replies(self, client: str, req_id: int) -> list[tuple[float, AgencyReply]]:
        return [(t, m) for t, m in self.probe.got
                if isinstance(m, AgencyReply) and m.client == client and m.req_id == req_id]

    def request(self, node: str, op: Any, client: str = "c", req_id: int | None = None,
                timeout: float = 3.0) -> AgencyReply:
        if req_id is None:
            req_id = self.next_id(client)
        seen = len(self.replies(client, req_id))
        self.send(node, AgencyRequest(client, req_id, op))
        ok = self.wait(lambda: len(self.replies(client, req_id)) > seen, timeout)
        assert ok, f"no answer from {node} to {client}#{req_id} within {timeout}s"
        return self.replies(client, req_id)[-1][1]

    def write(self, node: str, *mutations: Mutation, pre=(), **kw) -> AgencyReply:
        return self.request(node, Txn(tuple(mutations), tuple(pre)), **kw)

    def write_ok(self, *mutations: Mutation, client: str = "w", timeout: float = 6.0) -> dict:
        """A write that must commit within ``timeout``: retried with the
        same request id (the session makes it apply at most once)."""
        req_id = self.next_id(client)
        end = self.w.now + timeout
        while self.w.now < end:
            lead = self.leader()
            if lead is None:
                self.w.run_for(0.05)
                continue
            rep = self.request(lead, Txn(tuple(mutations)), client=client, req_id=req_id,
                               timeout=min(3.0, max(0.01, end - self.w.now)))
            if rep.status == OK:
                assert rep.result["ok"] is True, rep
                return rep.result
            self.w.run_for(0.05)
        raise AssertionError(f"write {mutations} did not commit within {timeout}s")

    def read(self, node: str, *paths: str, linearizable: bool = True, **kw) -> AgencyReply:
        return self.request(node, Read(tuple(paths), linearizable), **kw)

    def membership(self, node: str, op: str, target: str, req_id: int, timeout: float = 3.0) -> AgencyReply:
        self.send(node, MembershipChange("admin", req_id, op, target, addr(target)))
        assert self.wait(lambda: self.replies("admin", req_id), timeout), f"no answer to {op} {target}"
        return self.replies("admin", req_id)[-1][1]

    def watch_events(self, watch_id: str) -> list[WatchEvents]:
        return [m for _, m in self.probe.got if isinstance(m, WatchEvents) and m.watch_id == watch_id]

    def no_errors(self) -> None:
        assert self.w.errors == [], [
            (e.actor, e.exc_type, e.msg_type, e.message, e.traceback[-800:]) for e in self.w.errors
        ]


# ===================================================================== (a)
def test_write_via_follower_then_linearizable_and_stale_reads():
    c = Cluster(seed=11)
    lead = c.wait_leader()
    f1, f2 = c.followers()

    rep = c.write(f1, setm("/x", 1), setm("/y/z", "a"))
    assert rep.status == OK, rep
    assert rep.result == {"ok": True, "revision": 1}
    assert rep.leader == lead

    # the entry was applied on the leader at least (the leader answered)
    assert c.peer(lead).sm.get("/x") == 1

    for node in (f2, f1, lead):
        rd = c.read(node, "/x", "/y", "/nope")
        assert rd.status == OK, rd
        assert rd.result == {"revision": 1, "values": [1, {"z": "a"}, None]}

    # a failed precondition is still an OK answer with result ok=False
    rep = c.write(f2, setm("/x", 99), pre=(Precondition("/x", "equals", 0),))
    assert rep.status == OK and rep.result == {"ok": False, "failed": [0], "revision": 1}

    assert c.wait(c.converged, 2.0)
    # Stale reads are served by the peer itself: cut f1 off from the other
    # peers (the probe still reaches everybody), commit a newer value, and
    # f1 still answers from its own, older state.
    c.w.bridge([f1], [p for p in c.peers if p != f1], "probe")
    rep = c.write(lead, setm("/x", 2))
    assert rep.status == OK and rep.result["revision"] == 2
    stale = c.read(f1, "/x", linearizable=False)
    assert stale.status == OK and stale.result == {"revision": 1, "values": [1]}
    fresh = c.read(f2, "/x", linearizable=False)
    fresh_lin = c.read(f2, "/x")
    assert fresh_lin.status == OK and fresh_lin.result == {"revision": 2, "values": [2]}
    assert fresh.result["values"] in ([1], [2])  # f2 may not have applied yet: still local

    c.w.heal()
    assert c.wait(c.converged, 3.0)
    assert c.read(f1, "/x", linearizable=False).result == {"revision": 2, "values": [2]}
    snaps = {c.peer(p).sm.snapshot() for p in c.peers}
    assert len(snaps) == 1
    c.no_errors()


# ===================================================================== (b)
def test_watch_on_follower_gets_prefix_changes_in_order_and_resumes():
    c = Cluster(seed=23)
    lead = c.wait_leader()
    follower = c.followers()[0]
    c.send(follower, Watch("w1", "/cfg", 0))
    assert c.wait(lambda: c.watch_events("w1"), 1.0)
    first = c.watch_events("w1")
    assert first[0].events == () and first[0].compacted is False

    oracle = AgencyState()
    script = [
        (setm("/cfg/a", 1),),
        (setm("/other", 1),),
        (setm("/cfgx", 1),),  # shares the prefix string, not the path
        (setm("/cfg/b/c", 2), setm("/other", 2)),
        (Mutation("/cfg/a", "incr", 5),),
        (Mutation("/cfg/b", "delete"),),
        (setm("/cfg", {"z": 1, "y": {"q": 2}}),),  # replaces the subtree
        (Mutation("/", "delete"),),
        (setm("/cfg/k", "v"), setm("/cfg2/k", "v")),
    ]
    nodes = [follower, lead] + c.followers()
    for i, muts in enumerate(script):
        rep = c.write(nodes[i % len(nodes)], *muts)
        assert rep.status == OK and rep.result["ok"], rep
        res, _ = oracle.apply_txn(Txn(muts))
        assert res["revision"] == rep.result["revision"]
    assert c.wait(c.converged, 2.0)
    c.w.run_for(0.2)

    expected = [ev for ev in oracle.history if matches("/cfg", ev[1])]
    got = [tuple(ev) for m in c.watch_events("w1") for ev in m.events]
    assert got == expected
    assert all(matches("/cfg", ev[1]) for ev in got)
    revs = [ev[0] for ev in got]
    assert revs == sorted(revs)
    for m in c.watch_events("w1"):
        assert m.compacted is False
        assert all(ev[0] <= m.revision for ev in m.events)

    # re-register from a revision in the middle: exactly the changes after it
    R = 4
    before = len(c.watch_events("w1"))
    c.send(follower, Watch("w1", "/cfg", R))
    assert c.wait(lambda: len(c.watch_events("w1")) > before, 1.0)
    c.w.run_for(0.1)
    resumed = c.watch_events("w1")[before:]
    assert [tuple(ev) for m in resumed for ev in m.events] == [ev for ev in expected if ev[0] > R]
    assert not any(m.compacted for m in resumed)

    # the re-registered watcher keeps getting pushes, once each
    before = len(c.watch_events("w1"))
    rep = c.write(lead, setm("/cfg/new", 1), setm("/elsewhere", 1))
    assert c.wait(lambda: len(c.watch_events("w1")) > before, 1.0)
    c.w.run_for(0.2)
    pushed = [tuple(ev) for m in c.watch_events("w1")[before:] for ev in m.events]
    assert pushed == [(rep.result["revision"], "/cfg/new", 1)]

    # after Unwatch nothing more arrives
    c.send(follower, Unwatch("w1"))
    c.w.run_for(0.05)
    before = len(c.watch_events("w1"))
    assert c.write(lead, setm("/cfg/after", 1)).status == OK
    c.w.run_for(0.3)
    assert len(c.watch_events("w1")) == before
    c.no_errors()


def test_watch_on_lagging_follower_skips_changes_up_to_from_revision():
    """A watcher that already saw revision R elsewhere re-registers on a
    follower that has not applied R yet: it must get only changes > R."""
    c = Cluster(seed=29)
    lead = c.wait_leader()
    follower = c.followers()[0]
    c.w.bridge([follower], [p for p in c.peers if p != follower], "probe")
    for i in range(3):
        c.write_ok(setm("/cfg/a", i))
    R = c.peer(lead).sm.revision
    assert R == 3 and c.peer(follower).sm.revision == 0
    c.send(follower, Watch("w", "/cfg", R))
    assert c.wait(lambda: c.watch_events("w"), 1.0)
    c.w.heal()
    assert c.wait(c.converged, 3.0)
    rep = c.write(lead, setm("/cfg/b", 1))
    assert c.wait(c.converged, 1.0)
    c.w.run_for(0.2)
    got = [tuple(ev) for m in c.watch_events("w") for ev in m.events]
    assert got == [(rep.result["revision"], "/cfg/b", 1)]
    c.no_errors()


def test_watch_sees_changes_installed_by_snapshot():
    """A follower that catches up through InstallSnapshot must not silently
    skip the changes the snapshot covers for its watchers."""
    c = Cluster(seed=5, tuning=RaftTuning(snapshot_threshold_entries=8))
    lead = c.wait_leader()
    follower = c.followers()[0]
    c.send(follower, Watch("w", "/cfg", 0))
    assert c.write(lead, setm("/cfg/a", 0)).status == OK
    assert c.wait(c.converged, 2.0)

    c.w.bridge([follower], [p for p in c.peers if p != follower], "probe")
    for i in range(1, 25):
        c.write_ok(setm("/cfg/a", i), setm("/other", i))
    assert c.peer(lead).core.snap.index > c.peer(follower).core.last_index  # needs a snapshot
    c.w.heal()
    assert c.wait(c.converged, 5.0)
    c.w.run_for(0.2)
    assert any(r.kind == "raft.snapshot_install" and r.fields["peer"] == follower for r in c.w.history)

    msgs = c.watch_events("w")
    got = [tuple(ev) for m in msgs for ev in m.events]
    expected = [ev for ev in c.peer(lead).sm.history if matches("/cfg", ev[1])]
    # every change, in order (the snapshot's history still holds them all)
    assert got == expected
    assert not any(m.compacted for m in msgs)
    assert msgs[-1].revision == c.peer(lead).sm.revision
    c.no_errors()


# ===================================================================== (c)
def test_membership_learner_promote_and_remove():
    c = Cluster(seed=37)
    lead = c.wait_leader()
    for i in range(30):
        c.write_ok(setm(f"/data/{i % 7}", i))

    c.w.add_node("n4")
    book4 = c.book + (("n4", addr("n4")),)
    c.w.spawn("n4", RaftPeer, "raft", c.boot("n4", voters=(), book=book4))
    c.peers.append("n4")
    c.w.run_for(0.05)
    assert c.peer("n4").core.config.voters == ()

    # add_learner, and a second change while it is uncommitted is refused;
    # the leader is cut off from the others for a moment (shorter than an
    # election timeout) so that the first change surely is uncommitted
    c.w.bridge([lead], [p for p in c.peers if p != lead], "probe")
    c.send(lead,
           MembershipChange("admin", 1, "add_learner", "n4", addr("n4")),
           MembershipChange("admin", 2, "add_voter", "n4", addr("n4")))
    assert c.wait(lambda: c.replies("admin", 2), 0.2)
    r2 = c.replies("admin", 2)[-1][1]
    assert r2.status == FAIL and "in progress" in r2.error, r2
    assert not c.replies("admin", 1)
    c.w.heal()
    assert c.wait(lambda: c.replies("admin", 1), 2.0)
    r1 = c.replies("admin", 1)[-1][1]
    assert r1.status == OK, r1
    assert c.leader() == lead

    c.write_ok(setm("/during/learner", 1))
    assert c.wait(lambda: c.converged(), 3.0), "learner did not catch up"
    lc = c.peer(lead).core
    assert c.peer("n4").core.applied == lc.commit
    assert c.peer("n4").sm.snapshot() == c.peer(lead).sm.snapshot()
    for p in c.peers:
        cfg = c.peer(p).core.config
        assert (cfg.voters, cfg.learners) == (("n1", "n2", "n3"), ("n4",)), p
    assert c.peer("n4").core.role != LEADER and not c.peer("n4").core.is_voter()

    # promote
    rep = c.membership(lead, "add_voter", "n4", 3)
    assert rep.status == OK, rep
    c.write_ok(setm("/during/promote", 1))
    assert c.wait(c.converged, 3.0)
    for p in c.peers:
        cfg = c.peer(p).core.config
        assert (cfg.voters, cfg.learners) == (("n1", "n2", "n3", "n4"), ()), p

    # a follower passes a membership change on to the leader, which answers:
    # "unchanged" (the leader's own verdict) for a voter already there, and a
    # re-join of a voter as a learner (its node restarted) keeps it a voter
    other = [p for p in c.peers if p != c.leader()][0]
    rep = c.membership(other, "add_voter", "n4", 4)
    assert rep.status == FAIL and rep.error == "configuration unchanged" and rep.leader == c.leader(), rep
    rep = c.membership(other, "add_learner", "n4", 6)
    assert rep.status == FAIL and rep.error == "configuration unchanged", rep

    # remove the current leader (an original peer): it steps down
    old = c.leader()
    assert old in PEERS
    rep = c.membership(old, "remove_voter", old, 5)
    assert rep.status == OK, rep
    remaining = [p for p in c.peers if p != old]
    assert c.wait(lambda: c.leader() in remaining, 5.0), "no new leader among the remaining peers"
    c.write_ok(setm("/during/remove", 1), timeout=8.0)
    for i in range(5):
        c.write_ok(setm(f"/after/{i}", i))
    assert c.wait(lambda: c.converged(remaining), 3.0)
    for p in remaining:
        cfg = c.peer(p).core.config
        assert (cfg.voters, cfg.learners) == (tuple(sorted(remaining)), ()), p
    assert c.peer(old).core.role != LEADER
    # every acknowledged write is there, on every remaining peer
    lead2 = c.leader()
    rd = c.read(remaining[0], "/during", "/after")
    assert rd.status == OK
    assert rd.result["values"] == [{"learner": 1, "promote": 1, "remove": 1}, {str(i): i for i in range(5)}]
    assert len({c.peer(p).sm.snapshot() for p in remaining}) == 1
    assert c.peer(lead2).sm.get("/data") == {str(k): max(i for i in range(30) if i % 7 == k) for k in range(7)}
    c.no_errors()


# ===================================================================== (d)
@pytest.mark.parametrize("threshold", [2000, 8], ids=["log", "snapshot"])
def test_follower_crash_restart_recovers_log_and_catches_up(threshold):
    c = Cluster(seed=41, tuning=RaftTuning(snapshot_threshold_entries=threshold))
    lead = c.wait_leader()
    for i in range(6):
        c.write_ok(setm(f"/k/{i}", i))
    assert c.wait(c.converged, 2.0)
    f = c.followers()[0]
    fp = c.peer(f)
    before_log = fp.final_log()
    before_hs = (fp.core.term, fp.core.vote)
    before_applied = fp.sm.applied_index

    c.w.crash(f)
    assert c.peer(f) is None
    for i in range(6, 26):
        c.write_ok(setm(f"/k/{i % 9}", i), Mutation("/count", "incr", 1))
    c.w.restart(f)
    c.w.run_for(0.0)  # deliver the boot message only
    fp = c.peer(f)
    assert fp is not None and fp.core is not None
    assert (fp.core.term, fp.core.vote) == before_hs
    assert fp.final_log() == before_log, "the restarted follower lost synced log entries"
    assert fp.core.last_index >= before_applied

    assert c.wait(c.converged, 5.0), "restarted follower did not catch up"
    lead = c.leader()
    assert c.peer(f).sm.snapshot() == c.peer(lead).sm.snapshot()
    assert c.peer(f).sm.get("/count") == 20
    installed = any(r.kind == "raft.snapshot_install" and r.fields["peer"] == f for r in c.w.history)
    assert installed == (threshold == 8)
    rd = c.read(f, "/count", linearizable=False)
    assert rd.result["values"] == [20]
    c.no_errors()


# ===================================================================== (e)
def test_requests_before_any_leader_get_a_definite_fail():
    c = Cluster(seed=3)
    c.w.run_until(0.0)  # boot messages only
    sent = []
    for i, p in enumerate(c.peers):
        c.send(p,
               AgencyRequest("c", 10 * i + 1, Txn((setm("/x", 1),))),
               AgencyRequest("c", 10 * i + 2, Read(("/x",))),
               AgencyRequest("c", 10 * i + 3, Read(("/x",), linearizable=False)),
               MembershipChange("admin", 10 * i + 4, "add_learner", "n9", addr("n9")))
        sent += [10 * i + 1, 10 * i + 2, 10 * i + 3]
    c.w.run_for(0.1)
    assert c.leader() is None, "test assumes no leader within 100 ms"
    for rid in sent:
        reps = c.replies("c", rid)
        assert len(reps) == 1, (rid, reps)
        rep = reps[0][1]
        if rid % 10 == 3:  # a stale read is served locally even without a leader
            assert rep.status == OK and rep.result == {"revision": 0, "values": [None]}
        else:
            assert rep.status == FAIL and rep.leader is None and rep.error, rep
    for i in range(len(c.peers)):
        rep = c.replies("admin", 10 * i + 4)
        assert len(rep) == 1 and rep[0][1].status == FAIL
    # and nothing was applied: the first leader starts from an empty state
    lead = c.wait_leader()
    assert c.read(lead, "/x").result == {"revision": 0, "values": [None]}
    c.no_errors()


def test_write_to_leader_partitioned_before_commit_gets_an_answer():
    timeout = 1.5
    c = Cluster(seed=7, request_timeout_s=timeout)
    lead = c.wait_leader()
    c.write_ok(Mutation("/cnt", "incr", 0))
    others = [p for p in c.peers if p != lead]
    # cut the leader off from the other peers (the probe reaches everybody)
    c.w.bridge([lead], others, "probe")
    t_sent = c.w.monotonic("probe")
    c.send(lead, AgencyRequest("c", 1, Txn((Mutation("/cnt", "incr", 1),))))
    c.w.run_for(0.1)
    assert c.peer(lead).pending, "the write should be proposed and pending on the old leader"
    assert c.wait(lambda: c.replies("c", 1), timeout + 0.5), "silence from the old leader"
    t_rep, rep = c.replies("c", 1)[0]
    assert rep.status in (OK, FAIL, UNKNOWN)
    assert rep.status != OK  # it could not have committed without a quorum
    assert t_rep - t_sent <= timeout + 0.2, (t_rep - t_sent)

    # the majority elected a new leader meanwhile; the client retries the
    # same request id there and it is applied exactly once
    assert c.wait(lambda: c.leader() in others, 3.0)
    new = c.leader()
    retry = c.request(new, Txn((Mutation("/cnt", "incr", 1),)), client="c", req_id=1)
    assert retry.status == OK and retry.result["ok"], retry
    again = c.request(new, Txn((Mutation("/cnt", "incr", 1),)), client="c", req_id=1)
    assert again.status == OK and again.result.get("retry") is True
    c.w.heal()
    assert c.wait(c.converged, 5.0)
    assert all(c.peer(p).sm.get("/cnt") == 1 for p in c.peers)
    assert len(c.replies("c", 1)) == 3  # one answer per request sent
    c.no_errors()


def test_status_query():
    c = Cluster(seed=19)
    lead = c.wait_leader()
    c.write_ok(setm("/a", 1))
    for p in c.peers:
        c.send(p, StatusQuery())
    assert c.wait(lambda: len([m for _, m in c.probe.got if isinstance(m, StatusReply)]) == 3, 1.0)
    st = {m.node_id: m.status for _, m in c.probe.got if isinstance(m, StatusReply)}
    assert st[lead]["role"] == LEADER and st[lead]["revision"] == 1
    assert all(s["leader"] == lead and s["voters"] == PEERS for s in st.values())
    c.no_errors()
