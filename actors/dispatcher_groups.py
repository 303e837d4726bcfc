"""The Dispatcher's view of shard groups by time (a mixin; see
protocol/groups.py).

Every poll also reads the topics' group lists.  A request for shard index
``i`` of a topic with shard groups goes to shard ``i`` of the group that
holds this node's clock (the current group); a write the leader refuses
because its group closed (truncate-shards, or a clock ahead of this view)
is sent again to the current group after the next poll.  History queries
fan out to the shards of every group whose span meets the queried range
(widened by ``QUERY_SLACK_MS``).  ``truncate_shards`` is the admin call
behind ``brokerctl topics truncate-shards``.
"""
from __future__ import annotations

from typing import Any, Callable

from protocol.groups import QUERY_SLACK_MS, GroupList
from protocol.node import TruncateShards

GROUP_RETRIES_MAX = 3  # a write refused by a closed group is sent again at most this often


class DispatcherGroups:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    def _groups_polled(self, tree: Any) -> None:
        from actors.supervisor_groups import walk_lists

        lists = {}
        for topic, raw in walk_lists(tree or {}):
            gl = GroupList.from_json(raw)
            if gl is not None:
                lists[topic] = gl
        self.groups = lists

    def _group_list(self, topic: str) -> GroupList | None:
        return self.__dict__.get("groups", {}).get(topic)

    def _group_shard(self, topic: str, index: int) -> str | None:
        """Shard ``index`` of the topic's current group; the plain shard for
        a topic without groups; None if no group holds this node's clock yet."""
        gl = self._group_list(topic)
        if gl is None:
            return f"{topic}#{index}"
        g = gl.current(int(self.wall() * 1000))
        if g is None or index >= len(g.shards):
            return None
        return f"{topic}#{g.shards[index]}"

    def _groups_for_range(self, topic: str, spec: dict, from_ms: int, to_ms: int) -> list[tuple[int, str]] | None:
        """(shard id, shard name) of every shard of every group meeting the
        range, oldest group first; None for a topic without groups."""
        gl = self._group_list(topic)
        if gl is None:
            return None
        return [(s, f"{topic}#{s}") for g in gl.for_range(from_ms, to_ms, QUERY_SLACK_MS) for s in g.shards]

    def _groups_json(self, topic: str) -> list[dict] | None:
        gl = self._group_list(topic)
        return None if gl is None else [g.to_json() for g in gl.groups]

    def _admin_truncate_shards(self, args: dict, ok: Callable, fail: Callable) -> None:
        name = args.get("name", "")
        spec = self._known_topic(name, fail)
        if spec is None:
            return
        if spec.get("shard_group_ms") is None:
            fail(400, "bad_request", f"topic {name!r} has no shard groups; create it with a shard group duration "
                                     "(shard_group_ms) to use truncate-shards")
            return
        before = self._group_list(name)

        def applied() -> dict | None:
            gl = self._group_list(name)
            if gl is None or gl == before:
                return None
            return {"topic": name, "groups": self._groups_json(name)}

        self._topic_call(TruncateShards(self.client, 0, name), ok, fail, applied)
