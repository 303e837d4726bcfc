"""Every network and clock fault knob of the simulator, in one place.

A :class:`SimOptions` is a plain, validated value.  The simulator
(:class:`sim.world.World`) reads it when a message is sent and when a node
is added; ``World.set_network(**kw)`` swaps in a modified copy mid-run.
Units are part of every name (``_ms``, ``_s``, ``_ppm``); probabilities are
in ``[0, 1]``.

Fault model of a message between two *different* nodes (same-node messages
always take exactly ``local_latency_ms`` and are never lost, duplicated,
reordered or spiked):

* **loss** -- dropped with probability ``loss`` (decided at send time).
* **latency** -- ``latency_min_ms + Exp(mean = latency_mean_ms -
  latency_min_ms)``, capped at ``latency_max_ms``.  ``latency_mean_ms`` is
  therefore the mean of the *uncapped* distribution, not of the tail.
* **spikes** -- with probability ``spike_prob`` a further
  ``uniform(0.5, 1.0) * spike_ms`` is added.  Spikes are *not* capped by
  ``latency_max_ms`` (they model GC pauses, retransmits, bufferbloat).
* **reordering** -- when ``reorder`` is False, delivery is FIFO per
  (sender actor, receiver actor) pair: a message is never delivered before
  one sent earlier on the same pair (a slow message delays the ones behind
  it, like a TCP stream).  When True, each message gets an extra
  ``uniform(0, reorder_jitter_ms)`` delay and no FIFO clamp, so messages
  overtake each other whenever their delays allow.
* **duplication** -- with probability ``duplicate`` a second copy is sent
  with an independently drawn delay (and the same FIFO rule).

Clock model (drawn once per node in ``World.add_node``, from a seeded RNG):

* ``clock_offset_max_s > 0`` -- the node's wall clock starts
  ``uniform(-max, +max)`` seconds off true virtual time.
* ``clock_drift_max_ppm > 0`` -- the node's clocks (monotonic and wall) run
  at ``1 + uniform(-max, +max) * 1e-6`` times virtual time, which also
  stretches or shrinks its timers.

Changing the clock knobs with ``set_network`` only affects nodes added
later; use ``World.set_clock`` for existing nodes.
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, fields
from typing import Any

#: Drift beyond this (10 %) is not a clock, it is a bug in the test.
DRIFT_PPM_LIMIT = 100_000.0


@dataclass
class SimOptions:
    """Network and clock fault knobs (defaults: a fast, fault-free LAN)."""

    latency_min_ms: float = 0.5
    latency_mean_ms: float = 2.0
    latency_max_ms: float = 50.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    reorder_jitter_ms: float = 0.0
    spike_prob: float = 0.0
    spike_ms: float = 0.0
    local_latency_ms: float = 0.01
    clock_offset_max_s: float = 0.0
    clock_drift_max_ppm: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------ checking
    def validate(self) -> None:
        """Raise ValueError naming the first knob with an impossible value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "reorder":
                if not isinstance(value, bool):
                    raise ValueError(f"reorder must be a bool, not {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be finite and >= 0, got {value!r}")
        for name in ("loss", "duplicate", "spike_prob"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)!r}")
        if self.latency_mean_ms < self.latency_min_ms:
            raise ValueError(
                f"latency_mean_ms ({self.latency_mean_ms}) must be >= "
                f"latency_min_ms ({self.latency_min_ms})"
            )
        if self.latency_max_ms < self.latency_mean_ms:
            raise ValueError(
                f"latency_max_ms ({self.latency_max_ms}) must be >= "
                f"latency_mean_ms ({self.latency_mean_ms})"
            )
        if self.clock_drift_max_ppm >= DRIFT_PPM_LIMIT:
            raise ValueError(
                f"clock_drift_max_ppm must be < {DRIFT_PPM_LIMIT:g}, "
                f"got {self.clock_drift_max_ppm!r}"
            )

    # ------------------------------------------------------------- copying
    def with_overrides(self, **kw: Any) -> "SimOptions":
        """A validated copy with the given knobs replaced."""
        known = {f.name for f in fields(self)}
        unknown = sorted(k for k in kw if k not in known)
        if unknown:
            raise ValueError(
                f"unknown SimOptions knob(s): {', '.join(unknown)}; "
                f"known: {', '.join(f.name for f in fields(self))}"
            )
        return dataclasses.replace(self, **kw)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --------------------------------------------------------------- swarm
    @classmethod
    def swarm(cls, rng: random.Random) -> "SimOptions":
        """Draw a random fault mix, TigerBeetle "swarm testing" style.

        Each fault class (loss, duplication, reordering, spikes, clock
        offset, clock drift) is independently switched on with probability
        1/2, and when on its magnitude is drawn uniformly within sane bounds,
        so different seeds explore very different environments rather than
        the same average one.  Latency is always present (it is not a fault)
        but its shape varies.  Draws happen in a fixed order, so the result
        depends only on the RNG state.  Bounds:

        * latency_min_ms 0.05-2; latency_mean_ms = min + 0.1-20;
          latency_max_ms = mean x 2-10; local_latency_ms 0.001-0.1;
        * loss 0.001-0.2; duplicate 0.001-0.1;
        * reorder with reorder_jitter_ms 0-50;
        * spike_prob 0.001-0.05 with spike_ms 50-3000;
        * clock_offset_max_s 0.001-10; clock_drift_max_ppm 1-500.
        """

        def on() -> bool:
            return rng.random() < 0.5

        lat_min = rng.uniform(0.05, 2.0)
        lat_mean = lat_min + rng.uniform(0.1, 20.0)
        lat_max = lat_mean * rng.uniform(2.0, 10.0)
        opts: dict[str, Any] = {
            "latency_min_ms": lat_min,
            "latency_mean_ms": lat_mean,
            "latency_max_ms": lat_max,
            "local_latency_ms": rng.uniform(0.001, 0.1),
        }
        if on():
            opts["loss"] = rng.uniform(0.001, 0.2)
        if on():
            opts["duplicate"] = rng.uniform(0.001, 0.1)
        if on():
            opts["reorder"] = True
            opts["reorder_jitter_ms"] = rng.uniform(0.0, 50.0)
        if on():
            opts["spike_prob"] = rng.uniform(0.001, 0.05)
            opts["spike_ms"] = rng.uniform(50.0, 3000.0)
        if on():
            opts["clock_offset_max_s"] = rng.uniform(0.001, 10.0)
        if on():
            opts["clock_drift_max_ppm"] = rng.uniform(1.0, 500.0)
        return cls(**opts)
