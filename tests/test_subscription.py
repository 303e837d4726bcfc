"""SubscriptionCore: unit tests per mode, plus a stateful model check.

The stateful machine drives random interleavings of attach / detach /
records arrival (including duplicates, overlaps and gaps) / ack / nack /
bogus acks / tick / broker restart against a model that checks, after every
step:

* the persisted cursor never moves backwards and never passes an offset that
  no consumer acknowledged after receiving it;
* no consumer holds more than ``inflight_max`` records;
* exclusive / failover: per consumer and shard, delivered offsets increase
  except at a restart, which starts at the first unacknowledged offset;
* fetch requests never exceed the buffer and are never doubled up;

and in a final settle phase (a consumer acks everything it gets, time
passes) that every offset below the high watermark gets acknowledged.
Mutant cores prove the machine can fail.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from actors.subscription import SubscriptionCore
from protocol.consume import Deliver, FetchMore, Mode, PersistCursor, Refused

ROOT = Path(__file__).resolve().parents[1]


def dl(effects):
    return [(e.consumer, e.shard, e.offset, e.redelivery) for e in effects if isinstance(e, Deliver)]


def offs(effects, consumer=None):
    return [e.offset for e in effects if isinstance(e, Deliver) and (consumer is None or e.consumer == consumer)]


def fetches(effects):
    return [(e.shard, e.from_offset, e.max_records) for e in effects if isinstance(e, FetchMore)]


def persists(effects):
    return [(e.shard, e.offset) for e in effects if isinstance(e, PersistCursor)]


def recs(n, start=0):
    return [f"r{i}" for i in range(start, start + n)]


def core(mode, shards=(0,), **kw):
    return SubscriptionCore("sub", mode, list(shards), **kw)


# ---------------------------------------------------------------- protocol
def test_protocol_module_is_standalone_and_modes() -> None:
    tree = ast.parse((ROOT / "protocol" / "consume.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not mods & {"actors", "storage", "sim", "runtime"}
    assert Mode.EXCLUSIVE == "exclusive" and Mode.SHARED == "shared" and Mode.FAILOVER == "failover"
    assert Mode("failover").ordered and not Mode("shared").ordered
    d = Deliver("a", 0, 1, "x", False)
    with pytest.raises(AttributeError):
        d.offset = 2  # type: ignore[misc]


def test_validation() -> None:
    with pytest.raises(ValueError):
        core("broadcast")
    with pytest.raises(ValueError):
        core("shared", inflight_max=0)
    with pytest.raises(ValueError):
        core("shared", buffer_max=0)
    with pytest.raises(ValueError):
        core("shared", ack_timeout_s=0)
    with pytest.raises(ValueError):
        core("shared", nack_delay_s=-1)
    with pytest.raises(ValueError):
        core("shared", cursors={7: 3})
    with pytest.raises(ValueError):
        core("shared", cursors={0: -1})


# --------------------------------------------------------------- exclusive
def test_exclusive_delivers_in_order_and_refuses_a_second_consumer() -> None:
    c = core("exclusive", buffer_max=10)
    assert fetches(c.attach("a", 0)) == [(0, 0, 10)]
    eff = c.attach("b", 0)
    assert len(eff) == 1 and isinstance(eff[0], Refused) and eff[0].consumer == "b"
    assert "exclusive" in eff[0].reason and "'a'" in eff[0].reason
    assert dl(c.records(0, 0, recs(4), 1)) == [("a", 0, i, False) for i in range(4)]
    assert c.state()["consumers"] == ["a"]
    # b is not attached: its acks are ignored
    assert c.ack("b", 0, 0, 1) == []
    assert c.state()["shards"][0]["cursor"] == 0
    # attaching a again is a no-op
    assert c.attach("a", 2) == []
    assert c.state()["consumers"] == ["a"]


def test_exclusive_detach_then_new_consumer_gets_everything_unacked_in_order() -> None:
    c = core("exclusive")
    c.attach("a", 0)
    c.records(0, 0, recs(5), 0)
    assert persists(c.ack("a", 0, 0, 1)) == [(0, 1)]
    assert persists(c.ack("a", 0, 2, 1)) == []
    assert c.detach("a", 2) == []
    assert c.detach("a", 2) == []  # unknown consumer now
    eff = c.attach("b", 3)
    assert dl(eff) == [("b", 0, 1, True), ("b", 0, 3, True), ("b", 0, 4, True)]
    assert c.ack("a", 0, 1, 4) == []  # a's late ack
    assert persists(c.ack("b", 0, 1, 4)) == [(0, 3)]


# ---------------------------------------------------------------- failover
def test_failover_standby_takes_over_and_gets_unacked_in_order() -> None:
    c = core("failover")
    c.attach("a", 0)
    c.attach("b", 0)
    c.attach("c", 0)
    eff = c.records(0, 0, recs(6), 0)
    assert offs(eff, "a") == [0, 1, 2, 3, 4, 5] and offs(eff, "b") == [] and offs(eff, "c") == []
    assert c.state()["active"] == "a"
    c.ack("a", 0, 0, 1)
    c.ack("a", 0, 3, 1)
    eff = c.detach("a", 2)  # declared dead
    assert dl(eff) == [("b", 0, o, True) for o in (1, 2, 4, 5)]
    assert c.state()["active"] == "b"
    # the old active's acks no longer count
    assert c.ack("a", 0, 1, 3) == []
    assert persists(c.ack("b", 0, 1, 3)) == [(0, 2)]
    # a standby leaving changes nothing
    assert c.detach("c", 4) == []
    assert c.state()["active"] == "b"
    # the next in attach order takes over: a re-attaches at the end
    c.attach("a", 5)
    assert offs(c.detach("b", 6), "a") == [2, 4, 5]


def test_failover_delivers_nothing_to_standby_when_active_is_full() -> None:
    c = core("failover", inflight_max=2)
    c.attach("a", 0)
    c.attach("b", 0)
    assert offs(c.records(0, 0, recs(5), 0)) == [0, 1]
    assert c.state()["inflight_by_consumer"]["b"] == []
    assert dl(c.ack("a", 0, 1, 1)) == [("a", 0, 2, False)]


# ------------------------------------------------------------------ shared
def test_shared_round_robin_and_out_of_order_acks() -> None:
    c = core("shared")
    for name in ("a", "b", "c"):
        c.attach(name, 0)
    eff = c.records(0, 0, recs(6), 0)
    assert [(x[0], x[2]) for x in dl(eff)] == [("a", 0), ("b", 1), ("c", 2), ("a", 3), ("b", 4), ("c", 5)]
    assert persists(c.ack("c", 0, 2, 1)) == []
    assert persists(c.ack("b", 0, 1, 1)) == []
    assert c.state()["shards"][0]["acked_above_cursor"] == [1, 2]
    assert persists(c.ack("a", 0, 0, 1)) == [(0, 3)]
    assert c.state()["shards"][0]["acked_above_cursor"] == []
    assert persists(c.ack("c", 0, 5, 1)) == []
    assert persists(c.ack("b", 0, 4, 1)) == []
    assert persists(c.ack("a", 0, 3, 1)) == [(0, 6)]


def test_shared_detach_redelivers_to_remaining_consumers() -> None:
    c = core("shared")
    c.attach("a", 0)
    c.attach("b", 0)
    c.records(0, 0, recs(4), 0)  # a: 0, 2   b: 1, 3
    c.ack("b", 0, 1, 1)
    eff = c.detach("b", 2)
    assert dl(eff) == [("a", 0, 3, True)]
    assert c.ack("b", 0, 3, 3) == []
    c.ack("a", 0, 0, 3)
    c.ack("a", 0, 2, 3)
    assert persists(c.ack("a", 0, 3, 3)) == [(0, 4)]


def test_shared_nack_redelivers_at_once_to_the_next_consumer() -> None:
    c = core("shared")
    c.attach("a", 0)
    c.attach("b", 0)
    c.records(0, 0, recs(2), 0)  # a: 0, b: 1
    assert dl(c.nack("a", 0, 0, 1)) == [("b", 0, 0, True)]  # the rotation is at a, but a just failed
    assert c.nack("a", 0, 0, 1) == []  # a no longer holds 0
    assert dl(c.nack("b", 0, 1, 1)) == [("a", 0, 1, True)]
    c.detach("a", 2)
    assert dl(c.nack("b", 0, 0, 2)) == [("b", 0, 0, True)]  # nobody else: back to b


def test_shared_nack_delay() -> None:
    c = core("shared", nack_delay_s=5.0)
    c.attach("a", 0)
    c.records(0, 0, recs(1), 0)
    assert dl(c.nack("a", 0, 0, 1)) == []
    assert c.state()["shards"][0]["delayed"] == [0]
    assert dl(c.tick(5.9)) == []
    assert dl(c.tick(6.0)) == [("a", 0, 0, True)]
    assert persists(c.ack("a", 0, 0, 7)) == [(0, 1)]


def test_shared_ack_timeout_moves_record_to_another_consumer() -> None:
    c = core("shared", ack_timeout_s=10.0)
    c.attach("a", 0)
    c.attach("b", 0)
    c.records(0, 0, recs(2), 0)  # a: 0, b: 1
    assert dl(c.tick(9.99)) == []
    c.ack("b", 0, 1, 5)
    eff = c.tick(10.0)
    assert dl(eff) == [("b", 0, 0, True)]
    assert c.ack("a", 0, 0, 11) == []  # late: a no longer holds it
    assert persists(c.ack("b", 0, 0, 11)) == [(0, 2)]


# ----------------------------------------------------- ordered redelivery
def test_ordered_nack_restarts_from_first_unacked_offset() -> None:
    c = core("exclusive")
    c.attach("a", 0)
    c.records(0, 0, recs(6), 0)
    c.ack("a", 0, 0, 1)
    c.ack("a", 0, 2, 1)
    eff = c.nack("a", 0, 4, 1)
    assert dl(eff) == [("a", 0, o, True) for o in (1, 3, 4, 5)]
    assert c.nack("a", 0, 0, 1) == []  # acked already
    assert persists(c.ack("a", 0, 1, 2)) == [(0, 3)]


def test_batched_acks_persist_once_and_deliver_once() -> None:
    c = core("exclusive", inflight_max=3)
    c.attach("a", 0)
    assert offs(c.records(0, 0, recs(8), 0)) == [0, 1, 2]
    eff = c.ack_many("a", 0, [1, 0, 2, 7], 1)  # 7 is not in flight: ignored
    assert persists(eff) == [(0, 3)]
    assert dl(eff) == [("a", 0, o, False) for o in (3, 4, 5)]
    assert c.ack_many("a", 0, [0, 1], 2) == []  # nothing accepted, nothing happens


def test_batched_nacks_rewind_an_ordered_shard_once() -> None:
    c = core("failover")
    c.attach("a", 0)
    c.records(0, 0, recs(4), 0)
    eff = c.nack_many("a", 0, [1, 2, 3], 1)
    # one rewind: each unacked record comes back once, in order
    assert dl(eff) == [("a", 0, o, True) for o in range(4)]
    assert c.state()["inflight_by_consumer"]["a"] == [(0, o) for o in range(4)]


def test_batched_nacks_release_each_record_in_shared_mode() -> None:
    c = core("shared")
    c.attach("a", 0)
    c.attach("b", 0)
    c.records(0, 0, recs(4), 0)  # a: 0, 2; b: 1, 3
    eff = c.nack_many("a", 0, [0, 2, 1], 1)  # 1 is b's: ignored
    assert sorted(offs(eff, "b")) == [0, 2]
    assert sorted(o for _s, o in c.state()["inflight_by_consumer"]["b"]) == [0, 1, 2, 3]


def test_ordered_nack_delay_pauses_the_shard_only() -> None:
    c = core("failover", shards=(0, 1), nack_delay_s=3.0)
    c.attach("a", 0)
    c.records(0, 0, recs(2), 0)
    c.records(1, 0, recs(1), 0)
    assert dl(c.nack("a", 0, 1, 1)) == []
    assert c.state()["shards"][0]["paused_until"] == 4.0
    # shard 1 keeps flowing
    assert dl(c.records(1, 1, recs(1, 1), 2)) == [("a", 1, 1, False)]
    assert dl(c.tick(3.5)) == []
    assert dl(c.tick(4.0)) == [("a", 0, 0, True), ("a", 0, 1, True)]


def test_ordered_ack_timeout_rewinds_the_shard() -> None:
    c = core("exclusive", ack_timeout_s=10.0, shards=(0, 1))
    c.attach("a", 0)
    c.records(0, 0, recs(3), 0)
    c.records(1, 0, recs(2), 5)
    c.ack("a", 0, 1, 1)
    eff = c.tick(10.0)  # shard 0 expires, shard 1 (delivered at 5) does not
    assert dl(eff) == [("a", 0, 0, True), ("a", 0, 2, True)]
    assert dl(c.tick(15.0)) == [("a", 1, 0, True), ("a", 1, 1, True)]
    # a consumer that never acks keeps getting its records back
    assert offs(c.tick(20.0)) == [0, 2]


def test_acks_are_accepted_only_from_the_holder() -> None:
    c = core("shared")
    c.attach("a", 0)
    c.records(0, 0, recs(3), 0)
    assert c.ack("a", 9, 0, 1) == []  # unknown shard
    assert c.ack("a", 0, 99, 1) == []  # unknown offset
    assert c.ack("zed", 0, 0, 1) == []  # not attached
    assert persists(c.ack("a", 0, 0, 1)) == [(0, 1)]
    assert c.ack("a", 0, 0, 1) == []  # duplicate
    assert c.nack("a", 0, 0, 1) == []  # below cursor
    assert c.ack("a", 0, 2, 1) == []  # accepted, but the cursor cannot advance past 1
    assert c.ack("a", 0, 2, 1) == []  # duplicate
    assert c.state()["shards"][0]["acked_above_cursor"] == [2]
    assert persists(c.ack("a", 0, 1, 1)) == [(0, 3)]


# ------------------------------------------------------------------ restart
def test_restart_from_restored_cursors() -> None:
    c = core("exclusive", shards=(0, 1), cursors={0: 5}, buffer_max=4)
    assert c.state()["shards"][0]["cursor"] == 5
    assert fetches(c.attach("a", 0)) == [(0, 5, 4), (1, 0, 4)]
    # the host answers from an older offset: everything below the cursor is ignored
    eff = c.records(0, 2, recs(6, 2), 1)  # offsets 2..7
    assert offs(eff) == [5, 6, 7]
    assert all(not r for (_, _, _, r) in dl(eff))
    assert c.state()["shards"][0]["end"] == 8
    assert c.ack("a", 0, 3, 1) == []
    assert persists(c.ack("a", 0, 5, 1)) == [(0, 6)]


# ------------------------------------------------------------------ bounds
def test_inflight_max_bounds_each_consumer() -> None:
    c = core("shared", inflight_max=2)
    c.attach("a", 0)
    c.attach("b", 0)
    eff = c.records(0, 0, recs(7), 0)
    assert [(x[0], x[2]) for x in dl(eff)] == [("a", 0), ("b", 1), ("a", 2), ("b", 3)]
    st_ = c.state()
    assert [len(v) for v in st_["inflight_by_consumer"].values()] == [2, 2]
    assert st_["shards"][0]["ready"] == [4, 5, 6]
    assert [(x[0], x[2]) for x in dl(c.ack("b", 0, 3, 1))] == [("b", 4)]
    assert dl(c.tick(1)) == []


def test_buffer_max_bounds_fetches_and_records() -> None:
    c = core("shared", buffer_max=4, inflight_max=100)
    assert fetches(c.attach("a", 0)) == [(0, 0, 4)]
    eff = c.records(0, 0, recs(10), 0)  # only 4 fit
    assert offs(eff) == [0, 1, 2, 3]
    assert fetches(eff) == []  # full
    assert c.state()["shards"][0]["end"] == 4
    c.ack("a", 0, 1, 1)
    assert fetches(c.ack("a", 0, 2, 1)) == []  # cursor did not move: no room
    eff = c.ack("a", 0, 0, 1)
    assert persists(eff) == [(0, 3)] and fetches(eff) == [(0, 4, 3)]
    assert offs(c.records(0, 3, recs(7, 3), 1)) == [4, 5, 6]  # 3 is a duplicate; 7.. do not fit


def test_one_outstanding_fetch_per_shard_and_retry_on_tick() -> None:
    c = core("shared", buffer_max=10, fetch_retry_s=2.0)
    assert fetches(c.attach("a", 0)) == [(0, 0, 10)]
    assert fetches(c.attach("b", 0)) == []
    assert fetches(c.records(0, 0, [], 0.5)) == []  # nothing durable yet: no busy loop
    assert fetches(c.tick(1.9)) == []
    assert fetches(c.tick(2.0)) == [(0, 0, 10)]
    assert fetches(c.tick(3.0)) == []
    eff = c.records(0, 0, recs(2), 3.5)  # answered: room 8, 0 waiting -> ask again
    assert fetches(eff) == [(0, 2, 8)]
    assert fetches(c.records(0, 0, recs(2), 3.6)) == []  # duplicate answer changes nothing
    assert fetches(c.records(0, 5, recs(2, 5), 3.7)) == []  # gap: ignored
    assert c.state()["shards"][0]["end"] == 2


def test_no_fetch_without_consumers_and_unknown_shard_ignored() -> None:
    c = core("failover")
    assert c.tick(0) == []
    assert c.records(3, 0, recs(2), 0) == []
    assert c.records(0, 0, recs(2), 0) == []  # buffered, nobody to deliver to
    assert c.state()["shards"][0]["buffered"] == 2
    assert offs(c.attach("a", 1)) == [0, 1]


def test_persist_once_per_call_and_only_on_advance() -> None:
    c = core("shared", shards=(0, 1))
    c.attach("a", 0)
    c.records(0, 0, recs(3), 0)
    c.records(1, 0, recs(3), 0)
    for o in (2, 1):
        assert persists(c.ack("a", 0, o, 1)) == []
    assert persists(c.ack("a", 0, 0, 1)) == [(0, 3)]
    assert persists(c.ack("a", 1, 1, 1)) == []
    assert c.cursors() == {0: 3, 1: 0}


def test_shards_are_served_fairly() -> None:
    c = core("exclusive", shards=(0, 1, 2), inflight_max=3)
    c.records(0, 0, recs(5), 0)
    c.records(1, 0, recs(5), 0)
    c.records(2, 0, recs(5), 0)
    eff = c.attach("a", 0)
    assert sorted((x[1], x[2]) for x in dl(eff)) == [(0, 0), (1, 0), (2, 0)]


def test_deterministic() -> None:
    def run():
        c = core("shared", shards=(0, 1), inflight_max=3, buffer_max=5, nack_delay_s=1.0)
        log = []
        for name in ("x", "y", "z"):
            log += c.attach(name, 0)
        log += c.records(1, 0, recs(5), 0) + c.records(0, 0, recs(5), 0)
        log += c.nack("y", 0, 0, 1) + c.nack("x", 1, 0, 1) + c.tick(2) + c.detach("z", 3) + c.tick(40)
        return log
    assert run() == run()


# ------------------------------------------------------------ stateful model
SHARDS = (0, 1)
CONSUMERS = ("a", "b", "c")


class SubscriptionMachine(RuleBasedStateMachine):
    """Model check of SubscriptionCore; ``mode`` and ``core_cls`` are set by
    :func:`machine_for`."""

    mode = "shared"
    core_cls = SubscriptionCore

    def __init__(self) -> None:
        super().__init__()
        self.core = None

    @initialize(inflight_max=st.integers(1, 3), buffer_max=st.integers(1, 6),
                nack_delay=st.sampled_from([0.0, 2.0]), ack_timeout=st.sampled_from([5.0, 10.0]))
    def init(self, inflight_max, buffer_max, nack_delay, ack_timeout) -> None:
        self.kw = dict(inflight_max=inflight_max, buffer_max=buffer_max, nack_delay_s=nack_delay,
                       ack_timeout_s=ack_timeout, fetch_retry_s=1.0)
        self.now = 0.0
        self.log = {s: [] for s in SHARDS}  # durable records: len(log[s]) is the high watermark
        self.persisted = {s: 0 for s in SHARDS}
        self.delivered_to = defaultdict(set)  # (s, o) -> consumers that ever got it
        self.model_acked = set()  # (s, o) acked by a consumer that had received it
        self.core = self.core_cls("sub", self.mode, list(SHARDS), **self.kw)
        self._fresh_host()

    def _fresh_host(self) -> None:
        self.attached = []  # model of attached consumers, attach order
        self.received = {c: [] for c in CONSUMERS}  # what each consumer got and may still ack / nack
        self.last = {}  # (consumer, shard) -> last delivered offset
        self.pending_fetch = {s: None for s in SHARDS}
        self.fetch_open = {s: False for s in SHARDS}

    # ---------------------------------------------------------- plumbing
    def _apply(self, effects, source: str, attaching: str | None = None) -> None:
        kw = self.kw
        ordered = self.mode != "shared"
        delivered = []
        for e in effects:
            if isinstance(e, Refused):
                assert self.mode == "exclusive" and attaching == e.consumer and self.attached, f"bad {e}"
                assert e.reason, "refusal without a reason"
            elif isinstance(e, PersistCursor):
                s, o = e.shard, e.offset
                assert o > self.persisted[s], f"cursor of {s} moved from {self.persisted[s]} to {o}"
                for x in range(self.persisted[s], o):
                    assert (s, x) in self.model_acked, f"cursor of {s} passed unacked offset {x}"
                assert o <= len(self.log[s])
                self.persisted[s] = o
            elif isinstance(e, Deliver):
                c, s, o = e.consumer, e.shard, e.offset
                assert c in self.attached, f"delivery to detached {c}"
                if ordered:
                    assert c == self.attached[0], f"delivery to standby {c}"
                assert o < len(self.log[s]) and e.record == self.log[s][o], f"wrong record {e}"
                assert o >= self.persisted[s], f"delivered {o} below cursor {self.persisted[s]}"
                if e.redelivery:
                    assert self.delivered_to[(s, o)], "redelivery flag on a first delivery"
                self.delivered_to[(s, o)].add(c)
                self.received[c].append((s, o))
                delivered.append(e)
            elif isinstance(e, FetchMore):
                s = e.shard
                assert e.max_records >= 1
                assert self.persisted[s] <= e.from_offset
                assert e.from_offset + e.max_records <= self.persisted[s] + kw["buffer_max"], "fetch beyond buffer"
                if source != "tick":
                    assert not self.fetch_open[s], "second outstanding fetch"
                self.fetch_open[s] = True
                self.pending_fetch[s] = (e.from_offset, e.max_records)
            else:
                raise AssertionError(f"unknown effect {e!r}")
        state = self.core.state()
        if ordered:
            for e in delivered:
                sh = state["shards"][e.shard]
                acked = set(range(sh["cursor"])) | set(sh["acked_above_cursor"])
                last = self.last.get((e.consumer, e.shard))
                if last is not None and e.offset <= last:
                    # a restart: at the first unacked offset, and a redelivery
                    assert e.redelivery, "went back without redelivery"
                    assert all(x in acked for x in range(e.offset)), f"restart at {e.offset} not first unacked"
                elif last is not None:
                    gap = [x for x in range(last + 1, e.offset) if x not in acked]
                    assert not gap, f"skipped unacked {gap} going from {last} to {e.offset}"
                else:
                    assert all(x in acked for x in range(e.offset)), "first delivery is not at the cursor"
                self.last[(e.consumer, e.shard)] = e.offset
        for c, held in state["inflight_by_consumer"].items():
            assert len(held) <= kw["inflight_max"], f"{c} holds {len(held)} > {kw['inflight_max']}"
            for key in held:
                assert c in self.delivered_to[key], f"{c} holds {key} it never got"
        assert state["consumers"] == self.attached, f"consumers {state['consumers']} != {self.attached}"
        for s in SHARDS:
            sh = state["shards"][s]
            assert sh["cursor"] == self.persisted[s], f"cursor {sh['cursor']} not persisted ({self.persisted[s]})"
            assert sh["end"] - sh["cursor"] <= kw["buffer_max"], "buffer overflow"
            assert {(s, x) for x in sh["acked_above_cursor"]} <= self.model_acked, "acked what nobody acked"

    # ------------------------------------------------------------- rules
    @rule(s=st.sampled_from(SHARDS), n=st.integers(1, 4))
    def append(self, s, n) -> None:
        base = len(self.log[s])
        self.log[s].extend(f"{s}:{o}" for o in range(base, base + n))

    @rule(s=st.sampled_from(SHARDS), count=st.integers(1, 8), overlap=st.integers(0, 2), empty=st.booleans())
    def serve_fetch(self, s, count, overlap, empty) -> None:
        req = self.pending_fetch[s]
        if req is None:
            return
        f, m = req
        hw = len(self.log[s])
        if hw <= f:
            if empty:  # answer "nothing yet" instead of holding the request
                self.pending_fetch[s] = None
                self._records(s, f, [])
            return
        self.pending_fetch[s] = None
        stop = min(hw, f + min(m, count))
        first = max(0, f - overlap)
        self._records(s, first, self.log[s][first:stop])

    @rule(s=st.sampled_from(SHARDS), first=st.integers(0, 30), n=st.integers(0, 5))
    def stray_records(self, s, first, n) -> None:
        """Duplicate, stale, overlapping or gapped answers."""
        hw = len(self.log[s])
        if first > hw:
            return
        self._records(s, first, self.log[s][first:min(hw, first + n)])

    def _records(self, s, first, batch) -> None:
        before = self.core.state()["shards"][s]["end"]
        eff = self.core.records(s, first, batch, self.now)
        if self.core.state()["shards"][s]["end"] > before:
            self.fetch_open[s] = False
        self._apply(eff, "records")

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 6.0, 11.0]))
    def tick(self, dt) -> None:
        self.now += dt
        self._apply(self.core.tick(self.now), "tick")

    @rule(c=st.sampled_from(CONSUMERS))
    def attach(self, c) -> None:
        refuse = self.mode == "exclusive" and self.attached and c not in self.attached
        eff = self.core.attach(c, self.now)
        if refuse:
            assert any(isinstance(e, Refused) for e in eff)
        elif c not in self.attached:
            self.attached.append(c)
        self._apply(eff, "attach", attaching=c)

    @rule(c=st.sampled_from(CONSUMERS))
    def detach(self, c) -> None:
        eff = self.core.detach(c, self.now)
        if c in self.attached:
            self.attached.remove(c)
        else:
            assert eff == [], "detach of an unknown consumer had effects"
        self._apply(eff, "detach")

    def _take(self, c, i):
        got = self.received[c]
        return got.pop(i % len(got)) if got else None

    def _ack(self, c, s, o) -> None:
        if c in self.delivered_to[(s, o)]:
            self.model_acked.add((s, o))
        self._apply(self.core.ack(c, s, o, self.now), "ack")

    @rule(c=st.sampled_from(CONSUMERS), i=st.integers(0, 20))
    def ack(self, c, i) -> None:
        key = self._take(c, i)
        if key is not None:
            self._ack(c, *key)

    @rule(c=st.sampled_from(CONSUMERS), i=st.integers(0, 20))
    def lose(self, c, i) -> None:
        """The consumer silently drops a record (lost message, hung handler):
        only the ack timeout brings it back."""
        self._take(c, i)

    @rule(c=st.sampled_from(CONSUMERS), s=st.sampled_from(SHARDS), o=st.integers(0, 25))
    def ack_anything(self, c, s, o) -> None:
        self._ack(c, s, o)

    @rule(c=st.sampled_from(CONSUMERS), i=st.integers(0, 20))
    def nack(self, c, i) -> None:
        key = self._take(c, i)
        if key is not None:
            self._apply(self.core.nack(c, key[0], key[1], self.now), "nack")

    @rule(c=st.sampled_from(CONSUMERS), n=st.integers(1, 6), negative=st.booleans(), bogus=st.integers(0, 25))
    def settle_many(self, c, n, negative, bogus) -> None:
        """One message settles several records per shard (how real consumers
        ack), with a bogus offset mixed in."""
        got = self.received[c]
        batch = [got.pop(0) for _ in range(min(n, len(got)))]
        per_shard = defaultdict(list)
        for s, o in batch:
            per_shard[s].append(o)
        for s in sorted(per_shard):
            offsets = per_shard[s] + [bogus]
            if negative:
                self._apply(self.core.nack_many(c, s, offsets, self.now), "nack")
                continue
            for o in offsets:
                if c in self.delivered_to[(s, o)]:
                    self.model_acked.add((s, o))
            self._apply(self.core.ack_many(c, s, offsets, self.now), "ack")

    @rule()
    def restart(self) -> None:
        """The broker restarts from the persisted cursors."""
        self.core = self.core_cls("sub", self.mode, list(SHARDS), cursors=dict(self.persisted), **self.kw)
        self._fresh_host()
        self._apply([], "restart")

    # ------------------------------------------------------------ settle
    def teardown(self) -> None:
        # hypothesis calls teardown in a ``finally``: when a step already
        # failed, do not settle (it would mask the first failure)
        if self.core is None or sys.exc_info()[0] is not None:
            return
        # everything received so far is lost (messages dropped, handlers hung):
        # what is in flight now only comes back through the ack timeout
        for c in CONSUMERS:
            self.received[c].clear()
        if not self.attached:
            self.attach(CONSUMERS[0])
        step = max(self.kw["ack_timeout_s"], self.kw["nack_delay_s"], self.kw["fetch_retry_s"]) + 1
        for _ in range(1000):
            if all(self.persisted[s] == len(self.log[s]) for s in SHARDS):
                break
            for s in SHARDS:
                req = self.pending_fetch[s]
                if req is not None and len(self.log[s]) > req[0]:
                    self.pending_fetch[s] = None
                    self._records(s, req[0], self.log[s][req[0]:req[0] + req[1]])
            while any(self.received[c] for c in self.attached):
                for c in list(self.attached):
                    while self.received[c]:
                        self._ack(c, *self.received[c].pop(0))
            self.tick(step)
        for s in SHARDS:
            assert self.persisted[s] == len(self.log[s]), (
                f"shard {s}: cursor stuck at {self.persisted[s]} of {len(self.log[s])}")


def machine_for(mode: str, core_cls=SubscriptionCore):
    return type(f"Machine_{mode}_{core_cls.__name__}", (SubscriptionMachine,), {"mode": mode, "core_cls": core_cls})


MODEL_SETTINGS = settings(max_examples=150, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("mode", ["exclusive", "failover", "shared"])
def test_model(mode: str) -> None:
    run_state_machine_as_test(machine_for(mode), settings=MODEL_SETTINGS)


# ---------------------------------------------------- mutants: the model bites
class CursorSkipsUnacked(SubscriptionCore):
    """Treats a nack as an ack (loses the record)."""

    def nack(self, consumer, shard, offset, now_s):
        return self.ack(consumer, shard, offset, now_s)


class IgnoresInflightMax(SubscriptionCore):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.inflight_max = 10 ** 6


class NeverRedeliversOnTimeout(SubscriptionCore):
    def tick(self, now_s):
        self._timeouts.clear()
        return super().tick(now_s)


class RewindsToWrongPlace(SubscriptionCore):
    def _rewind(self, sh):
        super()._rewind(sh)
        if sh.end > sh.cursor + 1:
            sh.next_deliver = sh.cursor + 1


class FetchesTwice(SubscriptionCore):
    def _fetch(self, now_s, out, retry=False):
        for s in self.shards:
            self._sh[s].fetch_sent_at = None
        super()._fetch(now_s, out)


MUTANT_SETTINGS = settings(max_examples=2000, stateful_step_count=60, deadline=None, database=None,
                           phases=[Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("mode,mutant", [
    ("shared", CursorSkipsUnacked),
    ("failover", CursorSkipsUnacked),
    ("shared", IgnoresInflightMax),
    ("exclusive", IgnoresInflightMax),
    ("shared", NeverRedeliversOnTimeout),
    ("failover", NeverRedeliversOnTimeout),
    ("exclusive", RewindsToWrongPlace),
    ("shared", FetchesTwice),
])
def test_model_catches_mutant(mode, mutant) -> None:
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine_for(mode, mutant), settings=MUTANT_SETTINGS)


def test_timeout_heap_stays_bounded_under_rewinds() -> None:
    c = core("exclusive", inflight_max=50)
    c.attach("a", 0)
    c.records(0, 0, recs(50), 0)
    for i in range(200):  # every nack rewinds and redelivers 50 records
        assert len(offs(c.nack("a", 0, 0, i))) == 50
    assert c.state()["timers"] <= 2 * 50 + 1024 + 1
    assert offs(c.tick(1000.0)) == list(range(50))  # only live entries expire
