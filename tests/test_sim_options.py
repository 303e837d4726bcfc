"""SimOptions: validation, copies with overrides, swarm draws."""
from __future__ import annotations

import dataclasses
import random

import pytest

from sim.options import SimOptions


def test_defaults_are_fault_free() -> None:
    o = SimOptions()
    assert o.loss == 0 and o.duplicate == 0 and not o.reorder
    assert o.spike_prob == 0 and o.clock_offset_max_s == 0 and o.clock_drift_max_ppm == 0
    assert o.latency_min_ms <= o.latency_mean_ms <= o.latency_max_ms


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"loss": 1.5}, "loss"),
        ({"duplicate": -0.1}, "duplicate"),
        ({"spike_prob": 2}, "spike_prob"),
        ({"latency_min_ms": 5.0, "latency_mean_ms": 2.0}, "latency_mean_ms"),
        ({"latency_max_ms": 1.0}, "latency_max_ms"),
        ({"local_latency_ms": float("nan")}, "local_latency_ms"),
        ({"reorder": 1}, "reorder"),
        ({"loss": "0.1"}, "loss"),
        ({"clock_drift_max_ppm": 200_000.0}, "clock_drift_max_ppm"),
        ({"clock_offset_max_s": float("inf")}, "clock_offset_max_s"),
    ],
)
def test_invalid_values_raise_naming_the_knob(kw: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        SimOptions(**kw)


def test_with_overrides_copies_and_validates() -> None:
    base = SimOptions()
    lossy = base.with_overrides(loss=0.25, reorder=True)
    assert lossy.loss == 0.25 and lossy.reorder
    assert base.loss == 0.0 and not base.reorder
    with pytest.raises(ValueError, match="unknown SimOptions knob"):
        base.with_overrides(lossiness=0.1)
    with pytest.raises(ValueError, match="loss"):
        base.with_overrides(loss=3.0)


def test_swarm_is_deterministic_valid_and_varied() -> None:
    draws = [SimOptions.swarm(random.Random(seed)) for seed in range(200)]
    again = [SimOptions.swarm(random.Random(seed)) for seed in range(200)]
    assert draws == again
    for o in draws:
        o.validate()  # never raises
    # Each fault class is sometimes on and sometimes off.
    for name in ("loss", "duplicate", "spike_prob", "clock_offset_max_s", "clock_drift_max_ppm"):
        on = sum(1 for o in draws if getattr(o, name) > 0)
        assert 40 < on < 160, (name, on)
    reorders = sum(1 for o in draws if o.reorder)
    assert 40 < reorders < 160
    assert len({dataclasses.astuple(o) for o in draws}) == len(draws)
