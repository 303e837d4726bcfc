"""The benchmark's fixed-rate pacing (runtime.bench.Pacer), on a fake clock."""
from __future__ import annotations

import pytest

from runtime.bench import Pacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_pacer_holds_the_rate_and_sleeps_in_chunks_not_per_message():
    t = FakeTime()
    p = Pacer(10_000, sleep_min_s=0.002, clock=t.clock, sleep=t.sleep)
    for i in range(50_000):
        p.wait(i)
        due = p.start + i / 10_000
        assert t.now >= due - 0.002  # never ahead of schedule by the chunk or more
        t.now += 0.00001  # the send itself: 10 us, far faster than the rate
    elapsed = t.now - p.start
    assert 4.99 <= elapsed <= 5.01  # 50,000 messages at 10,000/s
    assert len(t.sleeps) <= 50_000 * 0.0001 / 0.002 + 1  # about one sleep per 2 ms, not one per message
    assert all(s >= 0.002 for s in t.sleeps)


def test_pacer_never_sleeps_when_behind():
    t = FakeTime()
    p = Pacer(1_000, clock=t.clock, sleep=t.sleep)
    for i in range(100):
        p.wait(i)
        t.now += 0.005  # each send takes 5 ms: slower than the rate
    assert t.sleeps == []


def test_pacer_refuses_a_rate_of_zero():
    with pytest.raises(ValueError):
        Pacer(0)
