"""Sans-IO core: a durable subscription's walk through a topic's shard groups.

A topic with shard groups (protocol/groups.py) keeps shard index ``i`` of
each group in its own shard (fresh shard ids per group).  A subscription
keeps one cursor *per shard id*, in that shard's log, exactly as for a
topic without groups (actors/shard_subscriptions.py) -- so acknowledgement,
redelivery and failover need nothing new.  What is new is which shard of
index ``i`` a consumer is attached to; this core decides it, for one
consumer of one subscription, from two inputs:

``view(groups)``
    The topic's group list (or None for a topic without groups).  An index
    not attached yet attaches to its shard in the **oldest** live group
    (a subscription starts at the oldest record, as on a topic without
    groups).  An attached shard that is no longer in the list was
    **dropped** by retention: the index moves to its shard in the oldest
    remaining group and -- unless that shard had been reported drained --
    the move is reported as a :class:`Reset` (records were skipped, like
    Kafka's offset-out-of-range reset to the earliest offset).

``resume(positions)``
    Before the first view: the shard each index was attached to when the
    subscription's last consumer left (recorded outside the shards, since
    a dropped shard takes its cursors with it).  An index resumes at its
    recorded shard while that shard is live; if retention dropped it
    meanwhile, the index moves to its shard in the oldest remaining group
    and the move is reported as a :class:`Reset` -- to the consumer that
    attaches now, although no consumer was attached when the group went.

``drained(shard_id)``
    The shard's leader reported that the shard's group is closed for good
    and every record of it is acknowledged by this subscription.  The
    index moves on to its shard in the next group (if the view does not
    have one yet, :class:`Refresh` asks for a fresher view).

Effects, in order: :class:`Reset`, then :class:`Detach`, then
:class:`Attach`, per index ascending; :class:`Refresh` last.  The core
never attaches two shards of one index at once, so records of an index
are delivered group after group, in order.

With ``bug="skip_next_group"`` (a deliberately broken variant for the
simulator's checkers) a drained index skips the next group and attaches to
the one after it; with ``bug="reset_to_newest"`` a dropped shard's index
moves to the newest group instead of the oldest remaining one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WALK_BUGS = ("skip_next_group", "reset_to_newest")


@dataclass(frozen=True)
class Attach:
    index: int
    shard: int


@dataclass(frozen=True)
class Detach:
    index: int
    shard: int


@dataclass(frozen=True)
class Reset:
    """Index ``index`` was attached to ``dropped`` (not drained) when its
    group was dropped by retention; it continues at ``to`` (-1: no live
    group has the index)."""

    index: int
    dropped: int
    to: int


@dataclass(frozen=True)
class Refresh:
    pass


class GroupWalk:
    def __init__(self, indices: int, bug: str = "") -> None:
        if bug and bug not in WALK_BUGS:
            raise ValueError(f"unknown group walk bug {bug!r} (known: {', '.join(WALK_BUGS)})")
        self.indices = indices
        self.bug = bug
        self.at: dict[int, int] = {}  # index -> attached shard id
        self.done: set[int] = set()  # shard ids reported drained (only of the latest view)
        self.chains: dict[int, list[int]] = {}  # index -> its shard ids, oldest group first
        self.newest_seen = -1  # highest shard id ever in a view: a view without it is stale
        self.resumed: dict[int, int] = {}  # index -> shard recorded by an earlier consumer (not attached yet)

    def resume(self, positions: dict[int, int]) -> None:
        """Where an earlier consumer of the subscription left each index
        (index -> shard id); call before the first :meth:`view`."""
        self.resumed = {int(i): int(s) for i, s in positions.items() if 0 <= int(i) < self.indices}

    def attached(self, index: int) -> int | None:
        return self.at.get(index)

    def view(self, groups: Any) -> list[Any]:
        """``groups``: a protocol.groups.GroupList (None: not grouped)."""
        if groups is None:
            return []
        ids = [s for g in groups.groups for s in g.shards]
        if ids and max(ids) < self.newest_seen:
            return []  # older than a view already taken: ignore
        self.newest_seen = max([self.newest_seen] + ids)
        self.chains = {i: [g.shards[i] for g in groups.groups if i < len(g.shards)] for i in range(self.indices)}
        self.done &= set(ids) | set(self.at.values())  # an attached drained shard stays drained when dropped
        return self._step()

    def drained(self, shard: int) -> list[Any]:
        if shard not in self.at.values():
            return []
        self.done.add(shard)
        return self._step()

    def _step(self) -> list[Any]:
        resets, detaches, attaches = [], [], []
        refresh = False
        for i in range(self.indices):
            chain = self.chains.get(i, [])
            cur = self.at.get(i)
            target = cur
            if cur is None and i in self.resumed:
                was = self.resumed[i]
                later = [s for s in chain if s > was]
                if was in chain:
                    target = was
                elif not later:
                    continue  # a view older than the recorded shard's group: wait for a fresher one
                else:  # dropped while no consumer was attached: report it to this one
                    target = later[-1] if self.bug == "reset_to_newest" else later[0]
                    resets.append(Reset(i, was, target))
                del self.resumed[i]
            elif cur is None:
                target = chain[0] if chain else None
            elif cur not in chain:
                later = [s for s in chain if s > cur]
                if not later:
                    continue  # a view that does not know the attached shard's group yet
                target = later[-1] if self.bug == "reset_to_newest" else later[0]
                if cur not in self.done:
                    resets.append(Reset(i, cur, target))
            elif cur in self.done:
                later = [s for s in chain if s > cur]
                if not later:
                    refresh = True
                    continue
                target = later[1] if self.bug == "skip_next_group" and len(later) > 1 else later[0]
            if target == cur or target is None:
                continue
            if cur is not None:
                detaches.append(Detach(i, cur))
                self.done.discard(cur)
            self.at[i] = target
            attaches.append(Attach(i, target))
        return resets + detaches + attaches + ([Refresh()] if refresh else [])
