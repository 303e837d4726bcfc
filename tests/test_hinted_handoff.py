"""The hinted-handoff queue core (actors/hinted_handoff.py), without actors."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.hinted_handoff import HandoffCore, HandoffTuning, decode, encode, Hint, key_of
from protocol.shard import ShardBugs
from storage.base import WriteBatch
from storage.memory import MemoryDisk

A, B = "t/p/c/x#0", "t/p/c/x#1"


def apply(store, out) -> None:
    wb = WriteBatch()
    for k, v in out.puts:
        wb.put(k, v)
    for k in out.deletes:
        wb.delete(k)
    if len(wb):
        store.write(wb)
    if out.sync:
        store.sync()


def test_a_hint_round_trips_through_its_encoding():
    h = Hint(7, A, 1001, 35, 5, b"\x00batch\xff", 12.5)
    assert decode(key_of(7), encode(h)) == h
    big = Hint(8, A, (1 << 64) - 1, (1 << 32) - 1, 5, b"", 0.0)  # producer ids are u64, sequences u32
    assert decode(key_of(8), encode(big)) == big


def test_a_hint_is_synced_before_it_is_acknowledged_and_survives_a_crash():
    disk = MemoryDisk()
    store = disk.open("handoff")
    core = HandoffCore()
    out, h = core.add(A, 1001, 0, 5, b"x" * 10, now_wall_s=1.0)
    assert h is not None and out.sync and out.puts
    apply(store, out)
    disk.crash()
    again = HandoffCore()
    again.load(disk.open("handoff").scan(b"h", b"h\xff"))
    assert again.hints == 1 and again.queues[A][0].sequence == 0 and again.next_id == 2


def test_the_broken_variant_does_not_sync_and_a_crash_loses_the_hint():
    disk = MemoryDisk()
    store = disk.open("handoff")
    core = HandoffCore(bugs=ShardBugs(hh_ack_before_sync=True))
    out, _h = core.add(A, 1001, 0, 5, b"x", now_wall_s=1.0)
    assert not out.sync
    apply(store, out)
    disk.crash()
    assert list(disk.open("handoff").scan(b"h", b"h\xff")) == []


def test_drain_sends_the_head_of_each_reachable_shard_one_at_a_time():
    core = HandoffCore()
    for seq in (0, 5, 10):
        core.add(A, 1, seq, 5, b"a", 0.0)
    core.add(B, 1, 0, 5, b"b", 0.0)
    out = core.tick(0.0, 0.0, reachable=[A])
    assert [(h.shard, h.sequence) for h in out.send] == [(A, 0)]
    assert core.tick(0.1, 0.1, reachable=[A]).send == []  # in flight
    done = core.answered(A, out.send[0].id, "ok", 0.2)
    assert done.deletes == [key_of(out.send[0].id)]
    assert [h.sequence for h in core.tick(0.3, 0.3, reachable=[A, B]).send] == [5]  # the rate: one at a time
    assert [(h.shard, h.sequence) for h in core.tick(0.31, 0.31, reachable=[A, B]).send] == [(B, 0)]


def test_an_unanswered_hint_is_sent_again_after_the_drain_timeout():
    core = HandoffCore(HandoffTuning(drain_timeout_s=1.0))
    core.add(A, 1, 0, 5, b"a", 0.0)
    first = core.tick(0.0, 0.0, [A]).send
    assert core.tick(0.5, 0.5, [A]).send == []
    assert core.tick(1.1, 1.1, [A]).send == first


def test_a_refusal_to_retry_waits_and_keeps_the_hint():
    core = HandoffCore(HandoffTuning(retry_s=0.2))
    core.add(A, 1, 0, 5, b"a", 0.0)
    h = core.tick(0.0, 0.0, [A]).send[0]
    core.answered(A, h.id, "retry", 0.1)
    assert core.tick(0.2, 0.2, [A]).send == []
    assert core.tick(0.31, 0.31, [A]).send == [h]
    assert core.answered(A, 999, "ok", 0.4).deletes == []  # a stale answer changes nothing


def test_the_byte_bound_drops_the_oldest_hints_with_a_count_and_a_log_line():
    core = HandoffCore(HandoffTuning(bytes_max=25))
    for seq in range(3):
        core.add(A, 1, seq * 5, 5, b"x" * 10, float(seq))
    assert core.bytes <= 25 and [h.sequence for h in core.queues[A]] == [5, 10]
    assert core.counters["dropped_bytes"] == 1
    out, h = core.add(A, 1, 15, 5, b"x" * 26, 3.0)
    assert h is None and core.counters["refused_too_big"] == 1 and not out.puts


def test_the_age_bound_drops_old_hints():
    core = HandoffCore(HandoffTuning(age_max_s=10.0))
    core.add(A, 1, 0, 5, b"x", 0.0)
    core.add(A, 1, 5, 5, b"x", 8.0)
    out = core.tick(0.0, 12.0, reachable=[])
    assert len(out.deletes) == 1 and out.logs and core.counters["dropped_age"] == 1
    assert [h.sequence for h in core.queues[A]] == [5]


def test_the_drain_is_rate_limited():
    core = HandoffCore(HandoffTuning(drain_bytes_per_s=100.0))
    core.add(A, 1, 0, 5, b"x" * 50, 0.0)
    core.add(B, 1, 0, 5, b"y" * 50, 0.0)
    assert len(core.tick(0.0, 0.0, [A, B]).send) == 1  # the second must wait half a second
    assert core.tick(0.4, 0.4, [A, B]).send == []
    assert len(core.tick(0.5, 0.5, [A, B]).send) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), st.integers(1, 40), st.sampled_from(["ok", "retry", "lost"])),
                min_size=1, max_size=40),
       st.integers(30, 400))
def test_drained_hints_leave_in_arrival_order_per_shard_within_the_bounds(ops, bytes_max):
    """Whatever the answers, each shard's hints are sent and forgotten in
    the order they came, the queue stays within its bound, and after a
    restart from the store the same hints remain."""
    disk = MemoryDisk()
    store = disk.open("handoff")
    core = HandoffCore(HandoffTuning(bytes_max=bytes_max, drain_timeout_s=0.5, retry_s=0.1))
    seqs = {A: 0, B: 0}
    drained = {A: [], B: []}
    now = 0.0
    for shard, size, answer in ops:
        out, _h = core.add(shard, 1, seqs[shard], 1, b"z" * size, now)
        apply(store, out)
        seqs[shard] += 1
        assert core.bytes <= bytes_max
        now += 0.3
        out = core.tick(now, now, [A, B])
        apply(store, out)
        for h in out.send:
            if answer != "lost":
                done = core.answered(h.shard, h.id, answer, now)
                apply(store, done)
                if answer == "ok":
                    drained[h.shard].append(h.sequence)
    for shard in (A, B):
        assert drained[shard] == sorted(drained[shard])
        left = [h.sequence for h in core.queues.get(shard, ())]
        assert left == sorted(left) and (not drained[shard] or not left or left[0] > drained[shard][-1])
    store.sync()
    again = HandoffCore()
    again.load(disk.open("handoff").scan(b"h", b"h\xff"))
    assert {s: [h.id for h in q] for s, q in again.queues.items()} == \
        {s: [h.id for h in q] for s, q in core.queues.items()}
