"""Shard groups by time: the per-topic group list and its pure operations.

A topic whose spec has ``shard_group_ms`` (e.g. one hour) keeps its data
in *shard groups*: each group covers a span of wall-clock time
``[start_ms, end_ms)`` and has its own ``shards`` -- one shard per shard
index of the topic, each with its own replicas and owners, chosen when the
group is created (so nodes added later take new groups).  Shard ids are
plain ints unique within the topic: each new group takes a fresh block
(``next_shard`` ..), so replicas, replication, failover, hinted handoff
and fetch keep working per ``topic#id`` unchanged.

The agency holds one list per topic::

    /chorus/plan/groups/<tenant>/<product>/<component>/<topic>
        -> {"next_shard": N, "groups": [{"id", "start_ms", "end_ms", "shards"}, ...]}

A write goes to the group whose ``[start_ms, end_ms)`` holds the writer's
clock (:meth:`GroupList.current`); the leader of a group's shard refuses
writes once its clock reaches the group's ``end_ms`` (every shard plan of
the group carries it as ``until_ms``), so writers with an old view move
on.  The supervisor creates the next group ``PRECREATE_MS`` before the
current one ends, closes the current group at once on ``truncate-shards``
and drops whole groups once ``end_ms + retention_ms + CLOSE_SLACK_MS`` has
passed (or the oldest ones while the topic is larger than
``retention_bytes``).  A topic without ``shard_group_ms`` has no list: one
everlasting group, shards ``0..shards-1``, exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

GROUPS_ROOT = "/chorus/plan/groups"
# Create the next group this long before the current one ends, so writers
# switch by their clock without waiting for the supervisor.
PRECREATE_MS_MAX = 5_000
# A group is dropped only CLOSE_SLACK_MS after end_ms + retention_ms: the
# time replicas may take to learn that truncate-shards closed their group
# early (a node polls the plans every 0.25 s), while they still take writes.
CLOSE_SLACK_MS = 2_000
# History queries by producer timestamp fan out to every group whose span,
# widened by this much, meets the queried range: a producer's clock may be
# this far off the broker clocks that placed its records in a group.
QUERY_SLACK_MS = 60_000
GROUPS_MAX = 10_000  # groups one topic may hold at once


def groups_path(topic: str) -> str:
    return f"{GROUPS_ROOT}/{topic}"


# Where each subscription of a topic with groups was last attached, per
# shard index (-> shard id), written by the Dispatcher whenever a walk
# attaches (actors/dispatcher_gsubs.py): a subscription whose shard is
# dropped while no consumer is attached is told so when one attaches.
WALKS_ROOT = "/chorus/walks"


def walks_path(topic: str, subscription: str | None = None, index: int | None = None) -> str:
    """``/chorus/walks/<topic>[/<subscription>[/<index>]]`` ('/' and '%' in
    the subscription name escaped, so one name is one path segment)."""
    out = f"{WALKS_ROOT}/{topic}"
    if subscription is not None:
        out += "/" + subscription.replace("%", "%25").replace("/", "%2F")
        if index is not None:
            out += f"/{index}"
    return out


def align_end(now_ms: int, duration_ms: int) -> int:
    """The first multiple of ``duration_ms`` after ``now_ms`` (group ends are
    aligned, like calendar hours or days)."""
    return (now_ms // duration_ms + 1) * duration_ms


@dataclass(frozen=True)
class ShardGroup:
    id: int
    start_ms: int
    end_ms: int
    shards: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "start_ms": self.start_ms, "end_ms": self.end_ms, "shards": list(self.shards)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ShardGroup":
        return cls(int(d["id"]), int(d["start_ms"]), int(d["end_ms"]), tuple(int(s) for s in d["shards"]))

    def holds(self, ms: int) -> bool:
        return self.start_ms <= ms < self.end_ms

    def meets(self, from_ms: int, to_ms: int, slack_ms: int = 0) -> bool:
        """Whether ``[from_ms, to_ms)`` meets the span widened by ``slack_ms``."""
        return self.start_ms - slack_ms < to_ms and from_ms < self.end_ms + slack_ms


@dataclass(frozen=True)
class GroupList:
    groups: tuple[ShardGroup, ...]
    next_shard: int

    def to_json(self) -> dict[str, Any]:
        return {"next_shard": self.next_shard, "groups": [g.to_json() for g in self.groups]}

    @classmethod
    def from_json(cls, d: Any) -> "GroupList | None":
        """None for anything that is not a group list (a topic without groups)."""
        if not isinstance(d, Mapping) or "groups" not in d:
            return None
        return cls(tuple(ShardGroup.from_json(g) for g in d["groups"]), int(d.get("next_shard", 0)))

    @classmethod
    def first(cls, shards: int, now_ms: int, duration_ms: int) -> "GroupList":
        return cls((ShardGroup(0, now_ms, align_end(now_ms, duration_ms), tuple(range(shards))),), shards)

    @property
    def last(self) -> ShardGroup:
        return self.groups[-1]

    def current(self, now_ms: int) -> ShardGroup | None:
        """The group new writes at ``now_ms`` go to: the one holding it; a
        clock ahead of every group gets None (wait for the next group), a
        clock behind every group the oldest."""
        for g in self.groups:
            if g.holds(now_ms):
                return g
        if self.groups and now_ms < self.groups[0].start_ms:
            return self.groups[0]
        return None

    def shard_ids(self) -> list[int]:
        return [s for g in self.groups for s in g.shards]

    def for_range(self, from_ms: int, to_ms: int, slack_ms: int = QUERY_SLACK_MS) -> list[ShardGroup]:
        return [g for g in self.groups if g.meets(from_ms, to_ms, slack_ms)]

    # --------------------------------------------------- the supervisor's steps
    def next_group(self, shards: int, now_ms: int, duration_ms: int) -> "GroupList":
        """Append the group that follows the last one: it starts where the
        last ends (or now, if that is past) and ends at the next aligned
        boundary after its start."""
        start = self.last.end_ms if self.groups else now_ms
        end = align_end(max(start, now_ms), duration_ms)
        if self.groups and self.last.end_ms < now_ms:  # the supervisor was away: no gap in the spans
            start = self.last.end_ms
        ids = tuple(range(self.next_shard, self.next_shard + shards))
        g = ShardGroup((self.last.id + 1) if self.groups else 0, start, end, ids)
        return GroupList(self.groups + (g,), self.next_shard + shards)

    def needs_next(self, now_ms: int, duration_ms: int) -> bool:
        lead = min(PRECREATE_MS_MAX, duration_ms // 4)
        return not self.groups or now_ms >= self.last.end_ms - lead

    def truncate(self, shards: int, now_ms: int, duration_ms: int) -> tuple["GroupList", ShardGroup | None]:
        """Close the group holding ``now_ms`` at once: its end becomes now
        and the next group starts now (a pre-created next group is moved
        forward; else a new one is appended).  Returns the new list and the
        closed group (None if no group holds now)."""
        cur = self.current(now_ms)
        if cur is None or cur.start_ms > now_ms:
            return self.next_group(shards, now_ms, duration_ms), None
        closed = replace(cur, end_ms=now_ms)
        groups = [closed if g.id == cur.id else g for g in self.groups]
        later = [g for g in groups if g.id > cur.id]
        if later:
            nxt = later[0]
            groups = [replace(g, start_ms=now_ms) if g.id == nxt.id else g for g in groups]
            return GroupList(tuple(groups), self.next_shard), closed
        gl = GroupList(tuple(groups), self.next_shard)
        ids = tuple(range(gl.next_shard, gl.next_shard + shards))
        g = ShardGroup(cur.id + 1, now_ms, align_end(now_ms, duration_ms), ids)
        return GroupList(gl.groups + (g,), gl.next_shard + shards), closed

    def expired(self, now_ms: int, retention_ms: int | None, slack_ms: int = CLOSE_SLACK_MS) -> list[ShardGroup]:
        """Groups wholly past retention: ``end_ms + retention_ms + slack_ms
        <= now_ms``.  The group new writes go to is never among them."""
        if retention_ms is None:
            return []
        return [g for g in self.groups if g.end_ms + retention_ms + slack_ms <= now_ms
                and g is not self.current(now_ms)]

    def oversize(self, bytes_of: Mapping[int, int], retention_bytes: int | None, now_ms: int,
                 slack_ms: int = CLOSE_SLACK_MS) -> list[ShardGroup]:
        """The oldest closed groups to drop so that every shard index holds
        at most ``retention_bytes`` over all groups (``bytes_of[shard id]``:
        one replica's log, unknown counts 0) -- retention by size is per
        shard, like Kafka's per partition.  Only groups closed for good
        (``end_ms + slack_ms <= now``: a replica that has not yet heard of
        an early close may take writes until then) are dropped."""
        if retention_bytes is None or not self.groups:
            return []
        width = max(len(g.shards) for g in self.groups)
        totals = [sum(bytes_of.get(g.shards[i], 0) for g in self.groups if i < len(g.shards)) for i in range(width)]
        out = []
        for g in self.groups:
            if max(totals) <= retention_bytes or g.end_ms + slack_ms > now_ms:
                break
            out.append(g)
            for i, s in enumerate(g.shards):
                totals[i] -= bytes_of.get(s, 0)
        return out

    def without(self, dropped: list[ShardGroup]) -> "GroupList":
        ids = {g.id for g in dropped}
        return GroupList(tuple(g for g in self.groups if g.id not in ids), self.next_shard)
