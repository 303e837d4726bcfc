"""Link filtering (partitions) and the delay model between nodes.

**Partitions.**  The network holds a list of active *rules*; a directed
link ``src -> dst`` between two different nodes is *cut* when any rule cuts
it (rules compose by union; ``heal`` removes them all).  Rules name nodes,
and are re-evaluated whenever a node is added:

* :class:`Partition` ``(groups)`` -- symmetric: two nodes can talk only if
  they are in the same group.  Nodes not listed in any group together form
  one extra group (so ``partition(["a"])`` isolates ``a`` from everyone
  else, and the rest still talk among themselves).
* :class:`OneWay` ``(srcs, dsts)`` -- messages from any of ``srcs`` to any
  of ``dsts`` are cut; the reverse direction still flows.
* :class:`Bridge` ``(side_a, side_b, bridge)`` -- ``side_a`` and ``side_b``
  cannot talk to each other (either direction); the bridge node talks to
  both.  Nodes named in none of the three are unaffected.

The world checks the cut set when a message is sent *and* when it is
delivered, so a message in flight when a partition starts is dropped.
Messages within one node, and to or from the harness (``sim/...``), are
never filtered.

**Delays.**  :class:`DelayModel` turns :class:`sim.options.SimOptions` into
integer microsecond delays drawn from one seeded ``random.Random`` (see
``sim.options`` for the distribution).  Draws are skipped for knobs that
are off, so a run's RNG stream depends only on the seed and on the knobs.
"""
from __future__ import annotations

import random
from math import log as _log
from dataclasses import dataclass
from typing import Iterable, Sequence

from sim.options import SimOptions

_US_PER_MS = 1000.0


def _names(nodes: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(nodes, str):
        return (nodes,)
    return tuple(nodes)


@dataclass(frozen=True)
class Partition:
    groups: tuple[tuple[str, ...], ...]

    def cuts(self, nodes: Sequence[str]) -> list[tuple[str, str]]:
        group_of: dict[str, int] = {}
        for index, group in enumerate(self.groups):
            for node in group:
                group_of[node] = index
        rest = len(self.groups)
        out = []
        for a in nodes:
            for b in nodes:
                if a != b and group_of.get(a, rest) != group_of.get(b, rest):
                    out.append((a, b))
        return out

    def describe(self) -> str:
        return " | ".join(",".join(g) for g in self.groups)


@dataclass(frozen=True)
class OneWay:
    srcs: tuple[str, ...]
    dsts: tuple[str, ...]

    def cuts(self, nodes: Sequence[str]) -> list[tuple[str, str]]:
        return [(a, b) for a in self.srcs for b in self.dsts if a != b]

    def describe(self) -> str:
        return f"{','.join(self.srcs)} -/-> {','.join(self.dsts)}"


@dataclass(frozen=True)
class Bridge:
    side_a: tuple[str, ...]
    side_b: tuple[str, ...]
    bridge: str

    def cuts(self, nodes: Sequence[str]) -> list[tuple[str, str]]:
        out = []
        for a in self.side_a:
            for b in self.side_b:
                out.append((a, b))
                out.append((b, a))
        return out

    def describe(self) -> str:
        return f"{','.join(self.side_a)} <-{self.bridge}-> {','.join(self.side_b)}"


Rule = Partition | OneWay | Bridge


def make_partition(groups: Sequence[Iterable[str] | str]) -> Partition:
    tuples = tuple(_names(g) for g in groups)
    seen: set[str] = set()
    for group in tuples:
        for node in group:
            if node in seen:
                raise ValueError(f"node {node!r} is listed in more than one partition group")
            seen.add(node)
    if not tuples:
        raise ValueError("partition() needs at least one group")
    return Partition(tuples)


def make_oneway(srcs: Iterable[str] | str, dsts: Iterable[str] | str) -> OneWay:
    return OneWay(_names(srcs), _names(dsts))


def make_bridge(side_a: Iterable[str] | str, side_b: Iterable[str] | str, bridge: str) -> Bridge:
    a, b = _names(side_a), _names(side_b)
    if set(a) & set(b):
        raise ValueError("bridge(): side_a and side_b overlap")
    if bridge in a or bridge in b:
        raise ValueError(f"bridge(): bridge node {bridge!r} must not be in side_a or side_b")
    return Bridge(a, b, bridge)


class Network:
    """The active rules and the resulting set of cut directed links."""

    __slots__ = ("rules", "cut")

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.cut: set[tuple[str, str]] = set()

    def add(self, rule: Rule, nodes: Sequence[str]) -> None:
        self.rules.append(rule)
        self.recompute(nodes)

    def heal(self) -> None:
        self.rules.clear()
        self.cut = set()

    def recompute(self, nodes: Sequence[str]) -> None:
        cut: set[tuple[str, str]] = set()
        for rule in self.rules:
            cut.update(rule.cuts(nodes))
        self.cut = cut

    def is_cut(self, src: str, dst: str) -> bool:
        return (src, dst) in self.cut


class DelayModel:
    """Seeded draws of loss, duplication and delay for cross-node messages.

    The world draws loss and duplication inline on its hot path, in this
    order per message: loss (if ``loss > 0``), delay, duplication (if
    ``duplicate > 0``), the duplicate's delay -- all from ``rng``."""

    __slots__ = (
        "rng", "loss", "duplicate", "reorder", "min_us", "tail_us", "max_us",
        "jitter_us", "spike_prob", "spike_us", "local_us",
    )

    def __init__(self, options: SimOptions, rng: random.Random) -> None:
        self.rng = rng
        self.configure(options)

    def configure(self, o: SimOptions) -> None:
        self.loss = o.loss
        self.duplicate = o.duplicate
        self.reorder = o.reorder
        self.min_us = o.latency_min_ms * _US_PER_MS
        self.tail_us = (o.latency_mean_ms - o.latency_min_ms) * _US_PER_MS
        self.max_us = o.latency_max_ms * _US_PER_MS
        self.jitter_us = o.reorder_jitter_ms * _US_PER_MS if o.reorder else 0.0
        self.spike_prob = o.spike_prob
        self.spike_us = o.spike_ms * _US_PER_MS
        self.local_us = int(round(o.local_latency_ms * _US_PER_MS))

    def delay_us(self) -> int:
        """One cross-node delay: min + exponential tail (capped), spike, jitter."""
        random_ = self.rng.random
        d = self.min_us
        if self.tail_us > 0.0:
            d -= _log(1.0 - random_()) * self.tail_us  # Exp(mean = tail_us)
            if d > self.max_us:
                d = self.max_us
        if self.spike_prob > 0.0 and random_() < self.spike_prob:
            d += self.spike_us * (0.5 + 0.5 * random_())
        if self.jitter_us > 0.0:
            d += random_() * self.jitter_us
        return int(d)
