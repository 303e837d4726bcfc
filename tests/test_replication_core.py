"""Interaction tests of the sans-IO shard replication core (actors.replication).

Each test drives ``ShardCore`` instances directly over a hand-driven network:
fence and assign epochs as the supervisor would, produce, deliver / drop /
cut the Push and PushAck messages, advance time with ``tick``, and assert on
roles, epochs, logs, high watermarks and the replies clients receive.
Storage is a real ``ShardLog`` over a ``MemoryStore`` (or a ``MemoryDisk``
table where crashes matter)."""
from __future__ import annotations

import pytest

from actors.replication import CONTROL_HEADER, FENCED, FOLLOWER, LEADER, ShardCore, is_control
from protocol.records import Record, decode_batch, encode_batch
from protocol.shard import Assign, Fence, Position, Produce, Push, PushAck, ShardBugs, ShardTuning
from storage.memory import MemoryDisk, MemoryStore
from storage.shardlog import ShardLog

SHARD = "acme/shop/orders/events#0"
IDS = ("a", "b", "c")
CLIENT = "client"  # reply_to of every produce: replies are collected under it
SUP = "sup"  # reply_to of every fence


def batch(*payloads: bytes, pid: int = 0, seq: int = 0) -> bytes:
    return encode_batch([Record(key=None, payload=p) for p in payloads], producer_id=pid, base_sequence=seq)


class Net:
    def __init__(self, ids=IDS, tuning=None, disks=False):
        self.ids = tuple(ids)
        self.tuning = tuning or ShardTuning()
        self.disks = {i: MemoryDisk() for i in self.ids} if disks else None
        self.stores = {i: MemoryStore(i) for i in self.ids}
        self.cores = {i: self.make_core(i) for i in self.ids}
        self.now = 0.0
        self.queue: list = []
        self.cut: set[tuple[str, str]] = set()
        self.replies: dict[str, list] = {}
        self.persisted: dict[str, list[int]] = {i: [] for i in self.ids}
        self.records: list[tuple[str, dict]] = []
        self.acked: dict[str, int] = {i: 0 for i in self.ids}  # highest successful PushAck end sent

    # -- construction ----------------------------------------------------
    def open_log(self, i):
        store = self.disks[i].open("shard") if self.disks else self.stores[i]
        return ShardLog(store)

    def make_core(self, i, epoch=0):
        return ShardCore(SHARD, i, self.open_log(i), self.tuning, epoch=epoch, replicas=self.ids)

    def __getitem__(self, i) -> ShardCore:
        return self.cores[i]

    # -- effects ---------------------------------------------------------
    def absorb(self, i, rd):
        for m in rd.messages:
            if isinstance(m, PushAck) and m.success:
                self.acked[m.frm] = max(self.acked[m.frm], m.end)
        self.queue.extend(rd.messages)
        for to, m in rd.replies:
            self.replies.setdefault(to, []).append(m)
        if rd.persist_epoch is not None:
            self.persisted[i].append(rd.persist_epoch)
        self.records.extend(rd.records)
        return rd

    def step(self, m):
        c = self.cores[m.to]
        if isinstance(m, Push):
            return self.absorb(m.to, c.on_push(m, self.now))
        return self.absorb(m.to, c.on_ack(m, self.now))

    def take(self, pred=lambda m: True):
        """Remove and return the first queued message matching ``pred``."""
        for k, m in enumerate(self.queue):
            if pred(m):
                return self.queue.pop(k)
        raise AssertionError(f"no queued message matches; queue: {self.queue}")

    def deliver_one(self, frm, to, kind=None):
        m = self.take(lambda m: m.frm == frm and m.to == to and (kind is None or isinstance(m, kind)))
        return self.step(m)

    def deliver(self, max_steps=10_000):
        steps = 0
        while self.queue and steps < max_steps:
            steps += 1
            m = self.queue.pop(0)
            if (m.frm, m.to) in self.cut or m.to not in self.cores:
                continue
            self.step(m)
        assert not self.queue, "network did not quiesce"

    def drop(self, pred=lambda m: True):
        dropped = [m for m in self.queue if pred(m)]
        self.queue = [m for m in self.queue if not pred(m)]
        return dropped

    def isolate(self, i):
        for j in self.ids:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def heal(self):
        self.cut.clear()

    # -- supervisor ------------------------------------------------------
    def fence(self, epoch, ids=None):
        out = {}
        for i in ids or self.ids:
            rd = self.absorb(i, self.cores[i].fence(Fence(SHARD, epoch, SUP)))
            out[i] = rd
        return out

    def assign(self, epoch, leader, ids=None):
        """Fence ``ids`` (default: all) to ``epoch``, then assign ``leader``
        (the leader first, as the supervisor's agency commit would)."""
        ids = tuple(ids or self.ids)
        self.fence(epoch, ids)
        for i in sorted(ids, key=lambda i: i != leader):
            self.absorb(i, self.cores[i].assign(Assign(SHARD, epoch, leader, self.ids), self.now))
        assert self.cores[leader].role == LEADER
        return self.cores[leader]

    # -- clients ---------------------------------------------------------
    def produce(self, i, *payloads, level="quorum", pid=0, seq=0, req_id=0, raw=None):
        """Produce to ``i``; returns the replies that came back at once."""
        data = raw if raw is not None else batch(*payloads, pid=pid, seq=seq)
        m = Produce(SHARD, "cl", req_id, data, len(payloads), level, pid, seq, CLIENT)
        rd = self.absorb(i, self.cores[i].produce(m, self.now))
        return [r for to, r in rd.replies if to == CLIENT]

    def client_replies(self):
        return self.replies.get(CLIENT, [])

    def new_epoch_then_rejoin(self, first: bytes, second: bytes) -> None:
        """Epoch 2 led by b over b and c while a is cut off (b writes
        ``first``); then a, healed, rejoins as b's follower and b writes
        ``second``, which makes a back up to b's log."""
        self.assign(2, "b", ids=("b", "c"))
        self.produce("b", first)
        self.deliver()
        self.heal()
        self.assign(2, "b", ids=("a",))
        self.produce("b", second)
        self.deliver()

    def settle(self, ids=None):
        """Deliver everything, then once more after a leader's probe interval
        (so tests other than the first do not depend on the new leader
        pushing its control batch at once)."""
        self.deliver()
        self.tick(self.tuning.isr_timeout_s / 2, ids)
        self.deliver()

    def tick(self, dt, ids=None):
        self.now = round(self.now + dt, 6)
        for i in ids or self.ids:
            self.absorb(i, self.cores[i].tick(self.now))

    # -- inspection ------------------------------------------------------
    def raw(self, i):
        log = self.cores[i].log
        return log.read(log.start_offset, 1 << 30) if log.end_offset > log.start_offset else []

    def entries(self, i):
        """``[(offset, epoch, payload or 'CONTROL'), ...]`` of ``i``'s log."""
        out = []
        for b in self.raw(i):
            h, recs = decode_batch(b)
            for k, r in enumerate(recs):
                out.append((h.base_offset + k, h.leader_epoch, "CONTROL" if is_control(r) else r.payload))
        return out

    def payloads(self, i):
        return [p for _, _, p in self.entries(i) if p != "CONTROL"]


def started(ids=IDS, tuning=None, disks=False, leader="a"):
    """A shard whose epoch-1 leader's control batch is on every replica."""
    net = Net(ids, tuning, disks)
    net.assign(1, leader)
    net.settle()
    assert all(net.raw(i) == net.raw(leader) for i in ids) and net[leader].hw == 1
    return net


# ---------------------------------------------------------------- 1. basics
def test_assign_makes_one_leader_with_a_control_batch_that_followers_receive():
    net = Net()
    net.assign(1, "a")
    assert [c.role for c in net.cores.values()] == [LEADER, FOLLOWER, FOLLOWER]
    assert {c.leader for c in net.cores.values()} == {"a"}
    assert net.entries("a") == [(0, 1, "CONTROL")]
    (rec,) = decode_batch(net.raw("a")[0])[1]
    assert dict(rec.headers)[CONTROL_HEADER] == b"epoch-start 1 a"
    assert net["a"].hw == 0
    # The new leader pushes its control batch right away (no tick needed).
    assert any(isinstance(m, Push) and m.batches for m in net.queue)
    net.deliver()
    for i in IDS:
        assert net.raw(i) == net.raw("a"), i
    assert net["a"].hw == 1  # its own epoch's control batch is on a majority


def test_quorum_write_is_acknowledged_only_after_a_majority_synced():
    net = started()
    a = net["a"]
    assert net.produce("a", b"q1") == []
    assert a.hw == 1
    pushes = [m for m in net.queue if isinstance(m, Push)]
    assert sorted(m.to for m in pushes) == ["b", "c"]
    net.deliver_one("a", "b")  # b appends and syncs; its ack is still in flight
    assert net["b"].log.synced_offset == 2
    assert net.client_replies() == [] and a.hw == 1
    net.deliver_one("b", "a")  # the majority {a, b} has it now
    (r,) = net.client_replies()
    assert (r.status, r.base_offset, r.level, r.leader, r.epoch, r.duplicate) == ("ok", 1, "quorum", "a", 1, False)
    assert a.hw == 2
    assert net["c"].log.end_offset == 1  # c was not needed
    net.deliver()
    assert net.payloads("c") == [b"q1"]


def test_one_and_any_are_acknowledged_immediately_by_the_leader():
    net = started()
    for k, level in enumerate(("one", "any")):
        (r,) = net.produce("a", b"x%d" % k, level=level, req_id=k)
        assert (r.status, r.base_offset, r.level) == ("ok", 1 + k, level)
        assert net["a"].log.synced_offset == 2 + k
    assert net["a"].hw == 1  # nothing replicated yet
    assert net.payloads("b") == []


def test_all_waits_for_every_in_sync_follower():
    net = started()
    assert net.produce("a", b"all", level="all") == []
    net.deliver_one("a", "b")
    net.deliver_one("b", "a")
    assert net["a"].hw == 2  # quorum reached ...
    assert net.client_replies() == []  # ... but c is in sync and has not got it
    net.deliver_one("a", "c")
    assert net.client_replies() == []
    net.deliver_one("c", "a")
    (r,) = net.client_replies()
    assert (r.status, r.base_offset, r.level) == ("ok", 1, "all")


def test_follower_high_watermark_follows_the_leader():
    net = started()
    for k in range(3):
        net.produce("a", b"v%d" % k)
        net.deliver()
    a, b, c = net["a"], net["b"], net["c"]
    assert a.hw == 4
    # Followers learn the hw from the next push; it never passes the leader's.
    assert b.hw <= a.hw and c.hw <= a.hw and b.hw == 3
    assert b.read(0, 1 << 20) == a.read(0, 1 << 20)[: len(b.read(0, 1 << 20))]
    net.tick(net.tuning.isr_timeout_s / 2)  # idle: the leader refreshes followers
    net.deliver()
    assert b.hw == c.hw == a.hw == 4
    assert [decode_batch(x)[1][0].payload for x in b.read(1, 1 << 20)] == [b"v0", b"v1", b"v2"]


def test_a_lagging_follower_never_takes_a_high_watermark_beyond_its_log():
    net = started(tuning=ShardTuning(push_batches_max=1))
    net.isolate("c")
    for k in range(3):
        net.produce("a", b"v%d" % k)
        net.deliver()
    assert net["a"].hw == 4 and net["c"].log.end_offset == 1
    net.heal()
    net.tick(net.tuning.isr_timeout_s / 2, ids=("a",))  # probe: one batch per push
    (push,) = [m for m in net.queue if m.to == "c"]
    assert push.hw == 4 and len(push.batches) == 1
    net.deliver_one("a", "c")
    assert net["c"].log.end_offset == 2 and net["c"].hw == 2
    net.deliver()
    assert net["c"].hw == 4 and net.raw("c") == net.raw("a")


# ------------------------------------------------------------ 2. not leader
def test_produce_to_a_follower_fails_and_names_the_leader():
    net = started()
    (r,) = net.produce("b", b"x")
    assert (r.status, r.error, r.leader, r.epoch) == ("fail", "not the leader", "a", 1)
    assert net.raw("b") == net.raw("a") and net.queue == []
    net.fence(2, ["c"])
    (r,) = net.produce("c", b"x")
    assert (r.status, r.error, r.leader, r.epoch) == ("fail", "not the leader", None, 2)


# ----------------------------------------------------------- 3. epoch fence
def test_fence_rejects_old_epoch_and_old_leader_steps_down():
    net = started()
    out = net.fence(2, ["b"])
    assert out["b"].persist_epoch == 2
    assert out["b"].replies == [(SUP, Position(SHARD, "b", 2, 1, 1))]
    assert net.fence(2, ["b"])["b"].persist_epoch is None  # no change, nothing to persist
    assert net.fence(1, ["b"])["b"].replies[0][1].epoch == 2  # never goes back
    assert net["b"].role == FENCED and net["b"].leader is None

    assert net.produce("a", b"old", level="quorum") == []
    rd = net.deliver_one("a", "b")
    (ack,) = rd.messages
    assert isinstance(ack, PushAck) and not ack.success and ack.epoch == 2
    assert net.payloads("b") == []  # nothing appended from the old epoch

    rd = net.deliver_one("b", "a")  # the old leader learns of epoch 2
    a = net["a"]
    assert a.role != LEADER and a.epoch == 2 and rd.persist_epoch == 2
    (r,) = net.client_replies()
    assert r.status == "unknown" and r.base_offset == 1
    assert a.waiters == []
    net.deliver()  # c still takes the epoch-1 push; its ack no longer matters
    assert a.hw == 1 and net.client_replies() == [r]
    (r2,) = net.produce("a", b"late")
    assert r2.status == "fail" and r2.error == "not the leader"


def test_fence_of_a_leader_answers_its_waiters_unknown():
    net = started()
    assert net.produce("a", b"pending") == []
    out = net.fence(2, ["a"])
    a = net["a"]
    assert a.role == FENCED and a.leader is None and a.epoch == 2 and out["a"].persist_epoch == 2
    assert [(to, r.status, r.base_offset) for to, r in out["a"].replies if to == CLIENT] == [(CLIENT, "unknown", 1)]
    assert a.waiters == [] and a.followers == {}
    net.deliver()  # late acks of epoch 1 change nothing
    assert a.hw == 1 and len(net.client_replies()) == 1


def test_push_from_a_newer_epoch_and_assign_persist_the_epoch():
    net = started()
    assert net.persisted == {"a": [1], "b": [1], "c": [1]}
    net.isolate("c")
    net.assign(2, "b", ids=("a", "b"))
    assert net.persisted["a"] == [1, 2] and net.persisted["b"] == [1, 2]
    net.deliver()
    net.heal()
    # c missed fence and assign; a push of epoch 2 makes it follow b.
    net.produce("b", b"x")
    net.deliver()
    c = net["c"]
    assert c.epoch == 2 and c.role == FOLLOWER and c.leader == "b" and net.persisted["c"] == [1, 2]
    assert net.raw("c") == net.raw("b")


# ---------------------------------------------------- 4. divergent suffix
def test_returning_old_leader_truncates_its_divergent_suffix():
    net = started()
    net.produce("a", b"committed")
    net.deliver()
    net.isolate("a")
    for k in range(2):
        (r,) = net.produce("a", b"lost%d" % k, level="one", req_id=k)
        assert r.status == "ok"
    net.deliver()  # the pushes are cut off
    assert net.payloads("a") == [b"committed", b"lost0", b"lost1"]

    net.assign(2, "b", ids=("b", "c"))
    net.produce("b", b"n0")
    net.produce("b", b"n1")
    net.deliver()
    assert net["b"].hw == net["b"].log.end_offset == 5
    assert net.entries("a")[2:] == [(2, 1, b"lost0"), (3, 1, b"lost1")]
    assert net.entries("b")[2:] == [(2, 2, "CONTROL"), (3, 2, b"n0"), (4, 2, b"n1")]

    net.heal()
    net.assign(2, "b", ids=("a",))  # a rejoins as a follower of b
    assert net["a"].role == FOLLOWER and net["a"].leader == "b"
    net.produce("b", b"n2")  # the push mismatches; b backs up batch by batch
    net.deliver()
    assert net.raw("a") == net.raw("b")
    assert net.payloads("a") == [b"committed", b"n0", b"n1", b"n2"]
    assert ("shard.truncate", {"shard": SHARD, "node": "a", "epoch": 2, "to": 2}) in net.records
    assert net["a"].log.epoch_index() == net["b"].log.epoch_index() == [(1, 0), (2, 2)]
    assert net["b"].followers["a"].acked == 6


def test_rejoining_old_leader_is_repaired_by_tick_without_new_writes():
    net = started()
    net.isolate("a")
    net.produce("a", b"lost", level="one")
    net.deliver()
    net.assign(2, "b", ids=("b", "c"))
    net.deliver()
    net.heal()
    net.fence(2, ["a"])
    for _ in range(12):
        net.tick(net.tuning.isr_timeout_s / 4)
        net.deliver()
    assert net["a"].role == FOLLOWER and net["a"].leader == "b"
    assert net.raw("a") == net.raw("b") and net.payloads("a") == []


# ----------------------------------------------------- 5. hw: own epoch only
def _figure8(net):
    """Leave X (epoch 1) at offset 1 on a and c, a leading epoch 3 whose
    control batch has not reached anyone; b holds an epoch-2 batch at 1."""
    net.assign(1, "a")
    net.settle()
    net.isolate("a")
    net.produce("a", b"X", level="one")
    net.deliver()
    net.heal()
    net.isolate("b")
    net.isolate("a")
    net.assign(2, "b", ids=("b", "c"))  # b leads epoch 2 but reaches nobody
    net.deliver()
    assert net.entries("b")[1] == (1, 2, "CONTROL")
    net.heal()
    net.isolate("b")
    a = net.assign(3, "a", ids=("a", "c"))
    assert net.entries("a") == [(0, 1, "CONTROL"), (1, 1, b"X"), (2, 3, "CONTROL")]
    if not net.queue:  # (only were the control batch not pushed at once)
        net.tick(net.tuning.isr_timeout_s / 2, ids=("a",))
    # push_batches_max=1: the leader backs up to X, pushes it alone ...
    for _ in range(20):
        if a.followers["c"].acked == 2:
            break
        m = net.take(lambda m: (m.frm, m.to) not in net.cut)
        net.step(m)
    assert net.entries("c") == [(0, 1, "CONTROL"), (1, 1, b"X")]
    # ... and now X is on a majority (a and c), under a leader of epoch 3.
    assert net.acked["c"] == 2 and a.followers["c"].acked == 2
    # The next push would carry the epoch-3 control batch; it is lost.
    assert net.drop(lambda m: isinstance(m, Push) and m.to == "c")
    return a


def test_hw_does_not_count_an_older_epochs_batch_on_a_majority():
    net = Net(tuning=ShardTuning(push_batches_max=1))
    a = _figure8(net)
    assert a.hw == 1  # not 2: X is of epoch 1
    assert a.read(0, 1 << 20) == net.raw("a")[:1]
    assert net["c"].hw <= 1
    net.drop()
    # Once the control batch of epoch 3 reaches c, X is committed with it.
    net.tick(net.tuning.isr_timeout_s / 2)
    net.deliver()
    assert a.hw == 3 and net.raw("c") == net.raw("a")
    assert [decode_batch(x)[1][0].payload for x in a.read(1, 1 << 20)][:1] == [b"X"]


def test_figure8_the_uncommitted_batch_may_be_overwritten_by_a_later_leader():
    net = Net(tuning=ShardTuning(push_batches_max=1))
    _figure8(net)
    net.drop()
    net.heal()
    net.isolate("a")  # a fails before its control batch replicates
    # b (last epoch 2 > c's 1) is the best candidate for epoch 4.
    net.assign(4, "b", ids=("b", "c"))
    for _ in range(4):
        net.deliver()
        net.tick(net.tuning.isr_timeout_s / 2, ids=("b",))
    net.deliver()
    assert net.entries("c") == net.entries("b") == [(0, 1, "CONTROL"), (1, 2, "CONTROL"), (2, 4, "CONTROL")]
    # That was legal only because no replica ever counted X as committed.
    assert all(x != b"X" for x in net.payloads("b"))
    assert net["b"].hw == 3


# ------------------------------------------------------- 6. idempotence
def test_idempotent_producer_dedups_refuses_gaps_and_survives_failover():
    net = started()
    assert net.produce("a", b"p0", b"p1", pid=7, seq=0) == []  # quorum: wait for the followers
    net.deliver()
    (r1,) = net.client_replies()
    assert (r1.status, r1.base_offset, r1.duplicate) == ("ok", 1, False)
    end = net["a"].log.end_offset
    assert end == 3

    (r2,) = net.produce("a", b"p0", b"p1", pid=7, seq=0, req_id=1)  # retried batch
    assert (r2.status, r2.base_offset, r2.duplicate) == ("ok", 1, True)
    assert net["a"].log.end_offset == end and net.queue == []

    (r3,) = net.produce("a", b"p5", pid=7, seq=5, req_id=2)
    assert r3.status == "fail" and "out-of-order sequence 5, expected 2" in r3.error
    assert net["a"].log.end_offset == end

    assert net.produce("a", b"p2", pid=7, seq=2, req_id=3) == []
    net.deliver()
    assert net.client_replies()[-1].base_offset == 3
    (r4,) = net.produce("a", b"p0", b"p1", pid=7, seq=0, req_id=4)  # older than the last batch
    assert r4.status == "ok" and r4.duplicate and net["a"].log.end_offset == 4
    assert net.payloads("a") == [b"p0", b"p1", b"p2"]

    # Failover: b rebuilds the producer table from the replicated headers.
    net.isolate("a")
    net.assign(2, "b", ids=("b", "c"))
    net.settle()
    (r5,) = net.produce("b", b"p2", pid=7, seq=2, req_id=5)
    assert (r5.status, r5.base_offset, r5.duplicate, r5.epoch) == ("ok", 3, True, 2)
    (r6,) = net.produce("b", b"p9", pid=7, seq=9, req_id=6)
    assert r6.status == "fail" and "expected 3" in r6.error
    net.produce("b", b"p3", pid=7, seq=3, req_id=7)
    net.deliver()
    assert net.client_replies()[-1].base_offset == 5
    assert net.payloads("b") == [b"p0", b"p1", b"p2", b"p3"]

    # And from the log alone, after a restart.
    fresh = ShardCore(SHARD, "c", ShardLog(net.stores["c"]), net.tuning, epoch=2, replicas=IDS)
    assert fresh.producers[7][:2] == (4, 5)  # next sequence 4; last batch at offset 5
    net.absorb("c", fresh.resume(3, "c", IDS, net.now))
    assert fresh.role == LEADER
    rd = fresh.produce(Produce(SHARD, "cl", 8, batch(b"p3", pid=7, seq=3), 1, "one", 7, 3, CLIENT), net.now)
    ((_, r7),) = rd.replies
    assert (r7.status, r7.base_offset, r7.duplicate) == ("ok", 5, True)


# ---------------------------------------------- 7. lost pushes and the ISR
def test_lost_pushes_are_recovered_by_a_tick_probe():
    net = started()
    half = net.tuning.isr_timeout_s / 2
    assert net.produce("a", b"x") == []
    assert len(net.drop()) == 2
    net.tick(half * 0.8)
    assert net.queue == []  # too early to suspect a loss
    net.tick(half * 0.2)
    assert sorted(m.to for m in net.queue if isinstance(m, Push) and m.batches) == ["b", "c"]
    net.deliver()
    (r,) = net.client_replies()
    assert r.status == "ok" and net.raw("b") == net.raw("c") == net.raw("a")


def test_a_silent_follower_leaves_the_in_sync_set_and_rejoins_when_caught_up():
    net = started()
    a = net["a"]
    timeout = net.tuning.isr_timeout_s
    step = net.tuning.tick_ms / 1000
    net.isolate("c")
    net.produce("a", b"all", level="all")
    net.deliver()
    assert a.hw == 2 and net.client_replies() == [] and a.in_sync == IDS
    t0 = net.now  # c's last progress: it acknowledged the control batch
    while net.now + step < t0 + timeout - step / 2:
        net.tick(step, ids=("a",))
        net.deliver()
        assert "c" in a.in_sync and net.client_replies() == [], net.now
    net.tick(step, ids=("a",))  # a full isr_timeout_s without progress from c
    assert net.now == pytest.approx(t0 + timeout)
    net.deliver()
    assert a.in_sync == ("a", "b")
    (r,) = net.client_replies()
    assert r.status == "ok" and r.base_offset == 1
    assert ("shard.isr", {"shard": SHARD, "node": "a", "epoch": 1, "in_sync": ("a", "b")}) in net.records

    net.heal()
    for _ in range(int(timeout / step)):
        net.tick(step, ids=("a",))
        net.deliver()
    assert a.in_sync == IDS and net.raw("c") == net.raw("a")


def test_an_idle_live_follower_stays_in_sync_when_a_write_arrives():
    net = started()
    a = net["a"]
    step = net.tuning.tick_ms / 1000
    for _ in range(100):  # 5 s idle: only heartbeats
        net.tick(step, ids=("a",))
        net.deliver()
    assert a.in_sync == IDS
    net.produce("a", b"w", level="all")
    net.tick(step, ids=("a",))  # a tick before the acks come back
    assert a.in_sync == IDS
    net.deliver()
    assert net.client_replies()[0].status == "ok"


# ------------------------------------------------------------ 8. crashes
def test_a_follower_only_acknowledges_synced_data():
    net = started(disks=True)
    for k in range(5):
        net.produce("a", b"v%d" % k)
        if k % 2:
            net.deliver()
    # Deliver the pushes to b but crash b before anything else happens.
    while any(m.to == "b" for m in net.queue):
        net.deliver_one("a", "b")
    acked_b = net.acked["b"]
    assert acked_b == net["a"].log.end_offset == 6
    net.disks["b"].crash()
    log = net.open_log("b")
    assert log.end_offset >= acked_b
    assert log.read(0, 1 << 30) == net.raw("a")[: len(log.read(0, 1 << 30))]
    # The leader acknowledged "one" only after its own sync.
    (r,) = net.produce("a", b"one", level="one")
    assert r.status == "ok"
    net.disks["a"].crash()
    assert net.open_log("a").end_offset == 7


def test_truncation_is_durable_before_the_follower_acknowledges():
    net = started(disks=True)
    net.isolate("a")
    net.produce("a", b"lost0", level="one")
    net.produce("a", b"lost1", level="one")
    net.drop()
    net.assign(2, "b", ids=("b", "c"))
    net.deliver()
    net.heal()
    net.assign(2, "b", ids=("a",))
    net.produce("b", b"n0")
    net.deliver()
    assert net.raw("a") == net.raw("b")
    net.disks["a"].crash()
    log = net.open_log("a")
    assert log.read(0, 1 << 30) == net.raw("b")
    core = ShardCore(SHARD, "a", log, net.tuning, epoch=2, replicas=IDS)
    assert core.producers == {} and log.last_epoch == 2


# ---------------------------------------------------------- 9. ShardBugs
@pytest.mark.parametrize("bug", [False, True])
def test_bug_hw_before_quorum_acks_quorum_writes_alone(bug):
    net = started(tuning=ShardTuning(bugs=ShardBugs(hw_before_quorum=bug)))
    replies = net.produce("a", b"x", level="quorum")
    if bug:
        assert [r.status for r in replies] == ["ok"] and net["a"].hw == 2
    else:
        assert replies == [] and net["a"].hw == 1
    assert all(m.to in ("b", "c") for m in net.queue)  # no follower has it yet


@pytest.mark.parametrize("bug", [False, True])
def test_bug_accept_stale_epoch_takes_an_old_leaders_push(bug):
    net = started(tuning=ShardTuning(bugs=ShardBugs(accept_stale_epoch=bug)))
    net.fence(2, ["b"])
    net.produce("a", b"stale")
    (ack,) = net.deliver_one("a", "b").messages
    assert ack.success is bug
    assert net.payloads("b") == ([b"stale"] if bug else [])


@pytest.mark.parametrize("bug", [False, True])
def test_bug_no_truncation_keeps_a_divergent_batch(bug):
    net = started(tuning=ShardTuning(bugs=ShardBugs(no_truncation=bug)))
    net.isolate("a")
    net.produce("a", b"lost", level="one")
    net.drop()
    net.new_epoch_then_rejoin(b"new", b"newer")
    if bug:
        assert b"lost" in net.payloads("a") and net.raw("a") != net.raw("b")
    else:
        assert net.raw("a") == net.raw("b") and b"lost" not in net.payloads("a")



def test_group_commit_shares_one_sync_and_acks_only_after_it():
    """With group_commit_ms > 0, appends from several produce requests are
    synced once by flush(); nothing is replicated or acknowledged before."""
    from protocol.records import Record, encode_batch
    from protocol.shard import Assign, Produce, ShardTuning
    from actors.replication import ShardCore
    from storage.memory import MemoryStore
    from storage.shardlog import ShardLog

    class CountingStore(MemoryStore):
        syncs = 0

        def sync(self):
            CountingStore.syncs += 1
            super().sync()

    store = CountingStore()
    core = ShardCore("t/p/c/x#0", "a", ShardLog(store), ShardTuning(group_commit_ms=2.0),
                     replicas=("a",))
    core.assign(Assign("t/p/c/x#0", 1, "a", ("a",)), 0.0)
    before = CountingStore.syncs
    readies = []
    for i in range(5):
        batch = encode_batch([Record(None, b"v%d" % i)])
        readies.append(core.produce(Produce("t/p/c/x#0", "c", i, batch, 1, "one", reply_to="me"), 0.001 * i))
    assert readies[0].flush_after_s == 0.002 and all(r.flush_after_s is None for r in readies[1:])
    assert all(not r.replies for r in readies)  # nothing acknowledged before the sync
    assert CountingStore.syncs == before
    done = core.flush(0.006)
    assert CountingStore.syncs == before + 1
    assert sorted(m.req_id for _, m in done.replies) == [0, 1, 2, 3, 4]
    assert all(m.status == "ok" for _, m in done.replies)


# ------------------------------------------------------ subscription cursors
@pytest.mark.parametrize("pending_max", [2, 1000])
def test_every_replica_keeps_the_logs_latest_cursors_without_rereading_its_log(monkeypatch, pending_max):
    """A new leader restores subscription cursors from ``ShardCore.cursors``,
    kept as batches arrive (folded every ``CURSOR_PENDING_MAX`` batches
    without a producer id), not from a scan of the whole log; it must equal
    that scan, on followers, after a restart and after a truncation."""
    import actors.replication as repl
    from actors.replication import read_cursors
    from actors.shard_subscriptions import cursor_record

    monkeypatch.setattr(repl, "CURSOR_PENDING_MAX", pending_max)
    net = started()
    for k in range(5):
        net.produce("a", b"plain%d" % k)  # no producer id: read for cursors
        net.produce("a", b"idem%d" % k, pid=7, seq=k, req_id=100 + k)
        net.absorb("a", net["a"].append_control([cursor_record("s1", "exclusive", k),
                                                 cursor_record(f"s{k % 3 + 2}", "shared", 10 * k)], net.now))
        net.deliver()
    expected = read_cursors(net.raw("a"))
    assert expected == {"s1": ("exclusive", 4), "s2": ("shared", 30), "s3": ("shared", 40), "s4": ("shared", 20)}
    for i in IDS:
        assert net[i].cursors() == expected, i
    restarted = net.make_core("b", epoch=1)  # the boot scan gives the same table
    assert restarted.cursors() == expected

    # a cursor record in an old leader's divergent suffix is forgotten once truncated
    net.isolate("a")
    net.absorb("a", net["a"].append_control([cursor_record("s1", "exclusive", 99)], net.now))
    assert net["a"].cursors()["s1"] == ("exclusive", 99)
    net.deliver()
    net.new_epoch_then_rejoin(b"n0", b"n1")
    assert net.raw("a") == net.raw("b")
    assert net["a"].cursors() == read_cursors(net.raw("a")) == expected
