"""Passed-on publishes merged into their origin's direct stream (sans-IO).

A publish can reach a node by two paths: straight from the node the client
published it on (its *origin*: forward batches, in the origin's order), and
passed on by a node a session had moved away from (``Fwd.hops`` > 0).  The
second path can overtake the first -- a direct batch lost and being resent
while a later publish comes round through the old node -- and a subscriber
would see the origin's messages out of order (found by the simulator).

Each message id is ``<origin>.<epoch>.<n>``, ``n`` counting the origin's
publishes.  A passed-on publish is held while this node's direct stream
from its origin has a gap (a later batch came before an earlier one, which
the origin is resending: ``RouteTable.gaps``) and has not reached it yet;
a direct publish first releases the held ones before it (in the origin's
order), one the direct stream brought as well is then dropped by the
session's duplicate filter, and the rest go once the gap is closed.  A held
publish is released after ``hold_s`` at the latest, and at most
``held_max`` are held.  Without a gap nothing is held: a passed-on publish
the origin did not send here directly (its route table was behind) is
delivered at once.
"""
from __future__ import annotations

from typing import Any

Key = tuple[str, int, int]  # origin, epoch, n


def mid_key(mid: str) -> Key | None:
    origin, _, rest = mid.rpartition(".")
    origin, _, epoch = origin.rpartition(".")
    try:
        return origin, int(epoch), int(rest)
    except ValueError:
        return None


class PassMerge:
    def __init__(self, hold_s: float, held_max: int = 10_000) -> None:
        self.hold_s = hold_s
        self.held_max = held_max
        self.seen: dict[str, tuple[int, int]] = {}  # origin -> (epoch, n) of its latest direct publish here
        self.held: dict[str, list[tuple[int, int, float, Any]]] = {}  # origin -> [(epoch, n, deadline, fwd)]
        self.count = 0

    def passed(self, mid: str, fwd: Any, now: float, gaps: dict[str, int]) -> bool:
        """A passed-on publish: True when it is held (deliver it later)."""
        key = mid_key(mid)
        if key is None or key[0] not in gaps or self.count >= self.held_max:
            return False
        origin, epoch, n = key
        if self.seen.get(origin, (-1, -1)) >= (epoch, n):
            return False  # the direct stream is past it: deliver (or drop as a copy) now
        self.held.setdefault(origin, []).append((epoch, n, now + self.hold_s, fwd))
        self.count += 1
        return True

    def direct(self, mid: str) -> list[Any]:
        """A direct publish: the held ones to deliver before it, in order."""
        key = mid_key(mid)
        if key is None:
            return []
        origin, epoch, n = key
        if self.seen.get(origin, (-1, -1)) < (epoch, n):
            self.seen[origin] = (epoch, n)
        if not self.held:
            return []
        return self._release(origin, lambda e, k, _d: (e, k) <= (epoch, n))

    def closed(self, gaps: dict[str, int]) -> list[Any]:
        """Held publishes of origins whose direct stream has no gap any more."""
        out: list[Any] = []
        for origin in sorted(o for o in self.held if o not in gaps):
            out += self._release(origin, lambda _e, _k, _d: True)
        return out

    def due(self, now: float) -> list[Any]:
        """Held publishes whose time is up, in each origin's order."""
        out: list[Any] = []
        for origin in sorted(self.held):
            out += self._release(origin, lambda _e, _k, deadline: deadline <= now, everything_before=True)
        return out

    def _release(self, origin: str, pred: Any, everything_before: bool = False) -> list[Any]:
        items = self.held.get(origin)
        if not items:
            return []
        items.sort(key=lambda x: (x[0], x[1]))
        cut = 0
        for i, (e, k, d, _f) in enumerate(items):
            if pred(e, k, d):
                cut = i + 1  # (with everything_before: an earlier one goes with a later one that is due)
            elif not everything_before:
                break
        out = [f for _e, _k, _d, f in items[:cut]]
        del items[:cut]
        if not items:
            del self.held[origin]
        self.count -= len(out)
        return out
