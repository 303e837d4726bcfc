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

    def _group_at(self, topic: str, index: int, group: Any, fail: Callable) -> tuple[int, str] | None | bool:
        """(group id, shard name) of shard ``index`` in group ``group`` (None:
        the current group) of a topic with groups; None for a topic without
        (``group`` must then be None); False after ``fail`` (404)."""
        gl = self._group_list(topic)
        if gl is None:
            if group is not None:
                fail(400, "bad_request", f"topic {topic!r} has no shard groups")
                return False
            return None
        if group is None:
            g = gl.current(int(self.wall() * 1000))
        else:
            g = next((x for x in gl.groups if x.id == int(group)), None)
        if g is None and group is None:
            fail(503, "unavailable", f"topic {topic!r} has no shard group for now yet; retry")
            return False
        if g is None or index >= len(g.shards):
            live = ", ".join(str(x.id) for x in gl.groups)
            fail(404, "not_found", f"topic {topic!r} has no live shard group {group} (live: {live}); "
                                   "it may have been dropped by retention")
            return False
        return g.id, f"{topic}#{g.shards[index]}"

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

    # ------------------------------------------- binary protocol: older groups
    def _groups_frame(self, conn: int, corr: int, m: Any, first: bool = True) -> None:
        """GroupsRequest: the topic's live groups with their shards' leaders."""
        from actors.dispatcher import Refusal, _split
        from protocol.frames import ErrorCode, GroupMetadata, GroupsResponse, ShardMetadata

        spec = self.topics.get(m.topic)
        if spec is None or (spec.get("shard_group_ms") is not None and self._group_list(m.topic) is None):
            if first:
                self._after_poll(conn, corr, lambda: self._groups_frame(conn, corr, m, False))
                return
            if spec is None:
                raise Refusal(ErrorCode.UNKNOWN_TOPIC, 404, "not_found", f"topic {m.topic!r} does not exist")
        gl = self._group_list(m.topic)
        out = []
        for g in (gl.groups if gl is not None else ()):
            shards = []
            for i, sid in enumerate(g.shards):
                plan = self.plans.get(f"{m.topic}#{sid}") or {}
                leader = plan.get("leader") or ""
                host, port = _split(self.nodes.get(leader, {}).get("client", ""))
                shards.append(ShardMetadata(shard=i, leader=leader, host=host, port=port,
                                            epoch=int(plan.get("epoch", 0))))
            out.append(GroupMetadata(group=g.id, start_ms=g.start_ms, end_ms=g.end_ms, shard_ids=g.shards,
                                     shards=tuple(shards)))
        self._frame(conn, corr, GroupsResponse(topic=m.topic, groups=tuple(out)))

    def _group_fetch_frame(self, conn: int, corr: int, m: Any, first: bool = True) -> None:
        """GroupFetchRequest: a fetch of shard index ``m.shard`` of group ``m.group``."""
        from actors.dispatcher import FETCH_WAIT_MS_MAX, Refusal
        from protocol.frames import ErrorCode, GroupFetchResponse

        spec = self.topics.get(m.topic)
        gl = self._group_list(m.topic)
        if spec is None or gl is None:
            if first:
                self._after_poll(conn, corr, lambda: self._group_fetch_frame(conn, corr, m, False))
                return
            if spec is None:
                raise Refusal(ErrorCode.UNKNOWN_TOPIC, 404, "not_found", f"topic {m.topic!r} does not exist")
            raise Refusal(ErrorCode.INVALID_REQUEST, 400, "bad_request",
                          f"topic {m.topic!r} has no shard groups: use FetchRequest")
        g = next((x for x in gl.groups if x.id == m.group), None)
        if g is None or m.shard >= len(g.shards):
            live = ", ".join(str(x.id) for x in gl.groups)
            raise Refusal(ErrorCode.UNKNOWN_SHARD, 404, "not_found",
                          f"topic {m.topic!r} has no shard {m.shard} in a live group {m.group} (live groups: "
                          f"{live}); a group past retention is dropped")
        sid = g.shards[m.shard]
        wait_s = min(m.max_wait_ms, FETCH_WAIT_MS_MAX) / 1000.0
        self._read(f"{m.topic}#{sid}", m.offset, min(m.max_bytes, self.boot.listen.frame_bytes_max - 4096), wait_s,
                   lambda r: self._frame(conn, corr, GroupFetchResponse(high_watermark=r.hw, shard_id=sid,
                                                                        batches=r.batches)),
                   lambda code, text: self._error(conn, corr, code, text))
