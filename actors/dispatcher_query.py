"""The Dispatcher's history queries (a mixin): fan a time-range read out to
one live replica of each shard of a topic, merge the pages by (producer
timestamp, shard, offset) and answer with a continuation token.

The sans-IO parts (validation, the per-replica scan, the merge and the
token) are in ``actors/query.py``; this module only sends ``QueryShard``
messages and waits for their answers.  For each shard that may hold
records of the range (``shards_for_range``) it asks the current planned
leader first (after a failover, the new one), then the other replicas in
plan order, each at most once a round: a replica that does not answer
within ``QUERY_REPLICA_TIMEOUT_S``, or refuses (starting, fenced, behind
the watermark the first page pinned), is replaced by the next one (a
planned leader that refuses because it has not committed in its epoch yet
is asked again after ``QUERY_RETRY_S``), until the query's deadline
(``ListenConfig.request_timeout_s``).  Queries in flight on a node are
bounded (``QUERIES_MAX``).
"""
from __future__ import annotations

from typing import Any, Callable

from actors.query import (
    PAGE_BYTES_MAX,
    Cursor,
    QueryError,
    QueryParams,
    ShardPage,
    check_params,
    merge,
    query_id,
    shards_for_range,
)
from protocol.frames import ErrorCode, QueriedRecord, QueryHeader, QueryRequest, QueryResponse
from protocol.query import QueryShard, QueryShardReply
from protocol.records import Record

QUERY_REPLICA_TIMEOUT_S = 2.0  # a replica silent this long is replaced by another of the shard
QUERY_RETRY_S = 0.1            # pause before asking a shard's replicas again after every one refused
QUERIES_MAX = 256              # history queries in flight on one node


class _Query:
    __slots__ = ("topic", "params", "cursor", "pages", "waiting", "deadline", "ok", "fail", "done", "attempts",
                 "served", "failed")

    def __init__(self, topic: str, params: QueryParams, cursor: Cursor, deadline: float,
                 ok: Callable, fail: Callable) -> None:
        self.topic, self.params, self.cursor, self.deadline = topic, params, cursor, deadline
        self.ok, self.fail = ok, fail
        self.pages: dict[int, ShardPage] = {}
        self.waiting: set[int] = set()
        self.attempts: dict[int, int] = {}
        self.served: dict[int, dict] = {}  # shard index -> the replica that answered and its watermark
        self.failed: dict[int, set[str]] = {}  # shard index -> replicas that timed out or refused this round
        self.done = False


class DispatcherQuery:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    query_bug: str = ""  # a deliberately broken variant, for the simulator's sweep ("" : none)

    def _admin_query(self, args: dict, ok: Callable, fail: Callable) -> None:
        topic = args.get("topic", "")
        spec = self._known_topic(topic, fail)
        if spec is None:
            return

        def done(out: list[tuple[int, Record]], token: str | None, served: dict[int, dict]) -> None:
            recs = []
            for index, r in out:
                j = _record_json(r)
                j["shard"] = index
                j["broker_timestamp_ms"] = r.broker_ts_ms
                recs.append(j)
            ok({"topic": topic, "records": recs, "next": token,
                "served_by": {str(i): v for i, v in sorted(served.items())}})

        try:
            self._query_page(topic, spec, args.get("from"), args.get("to"), args.get("key"), args.get("limit"),
                       args.get("after"), done, lambda status, slug, text: fail(status, slug, text))
        except QueryError as exc:
            fail(400, "bad_request", str(exc))

    def _query_frame(self, conn: int, corr: int, m: QueryRequest, first: bool = True) -> None:
        spec = self.topics.get(m.topic)
        if spec is None:
            if first:
                self._after_poll(conn, corr, lambda: self._query_frame(conn, corr, m, False))
                return
            self._error(conn, corr, ErrorCode.UNKNOWN_TOPIC, f"topic {m.topic!r} does not exist")
            return

        def done(out: list[tuple[int, Record]], token: str | None, _served: dict[int, dict]) -> None:
            recs = tuple(QueriedRecord(shard=i, offset=r.offset, timestamp_ms=r.producer_ts_ms,
                                       broker_timestamp_ms=r.broker_ts_ms, has_key=r.key is not None,
                                       key=r.key or b"", value=r.payload,
                                       headers=tuple(QueryHeader(name=k, value=v) for k, v in r.headers))
                         for i, r in out)
            self._frame(conn, corr, QueryResponse(records=recs, next_token=token or ""))

        def failed(status: int, slug: str, text: str) -> None:
            code = {504: ErrorCode.TIMEOUT, 503: ErrorCode.OVERLOADED}.get(status, ErrorCode.INVALID_REQUEST)
            self._error(conn, corr, code, text)

        try:
            self._query_page(m.topic, spec, m.from_ms, m.to_ms, m.key if m.has_key else None, m.limit, m.after or None,
                       done, failed)
        except QueryError as exc:
            self._error(conn, corr, ErrorCode.INVALID_REQUEST, str(exc))

    def _query_page(self, topic: str, spec: dict, from_ms: Any, to_ms: Any, key: Any, limit: Any, after: Any,
              ok: Callable[[list[tuple[int, Record]], str | None, dict[int, dict]], None],
              fail: Callable[[int, str, str], None]) -> None:
        """Run one page of a query; ``ok(records, next token or None)``.
        Raises QueryError on bad input."""
        params = check_params(from_ms, to_ms, key, limit)
        qid = query_id(topic, params)
        cursor = Cursor.decode(after, qid) if after else Cursor(qid)
        live = self.__dict__.setdefault("queries_live", set())  # ids of this node's queries in flight
        if len(live) >= QUERIES_MAX:
            fail(503, "overloaded", f"{QUERIES_MAX} history queries in flight on this node; retry later")
            return
        q = _Query(topic, params, cursor, self.now() + self.boot.listen.request_timeout_s, ok, fail)
        grouped = self._groups_for_range(topic, spec, params.from_ms, params.to_ms)
        for index, shard in grouped if grouped is not None else shards_for_range(topic, spec, params.from_ms,
                                                                                    params.to_ms):
            c = cursor.shards.get(index)
            if c is not None and c.done:
                continue
            q.waiting.add(index)
        if not q.waiting:
            ok([], None, {})
            return
        live.add(id(q))
        for index in sorted(q.waiting):
            self._query_shard(q, index)

    def _query_candidates(self, shard: str) -> list[str]:
        plan = self.plans.get(shard) or {}
        leader = plan.get("leader") or ""
        replicas = [str(r) for r in plan.get("replicas") or ()]
        return ([leader] if leader else []) + [r for r in replicas if r != leader]

    def _query_shard(self, q: _Query, index: int, delay_s: float = 0.0) -> None:
        from actors.dispatcher import PENDING_MAX, _Pending  # the Dispatcher's pending-request table

        shard = f"{q.topic}#{index}"
        candidates = self._query_candidates(shard)
        attempt = q.attempts.get(index, 0)
        q.attempts[index] = attempt + 1
        now = self.now()
        if now >= q.deadline:
            self._query_fail(q, 504, "timeout", f"no replica of shard {shard} answered the query in time")
            return
        c = q.cursor.shards.get(index)
        after = c.after if c is not None else None
        pinned = c.hw if c is not None else -1
        req_id = self._next_req()
        msg = QueryShard(shard, self.client, req_id, q.params.from_ms, q.params.to_ms, q.params.key,
                         after[0] if after else -1, after[1] if after else -1, pinned,
                         q.params.limit, PAGE_BYTES_MAX)

        def got(reply: QueryShardReply) -> None:
            if q.done:
                return
            if reply.status != "ok":
                retry(ErrorCode.NOT_LEADER, reply.error)
                return
            q.pages[index] = ShardPage(reply.records, reply.hw, reply.more)
            q.served[index] = {"node": reply.node, "hw": reply.hw, "records": len(reply.records),
                               "more": reply.more, "attempts": q.attempts[index]}
            q.waiting.discard(index)
            if not q.waiting:
                self._query_finish(q)

        # the current planned leader first (after a failover: the new one),
        # then the other replicas; each at most once a round
        failed = q.failed.setdefault(index, set())
        untried = [n for n in candidates if n not in failed]
        if not untried:
            failed.clear()
            untried = candidates
        target = untried[0] if untried else None

        def retry(code: Any, text: str) -> None:
            if q.done:
                return
            if target is not None and (code is ErrorCode.TIMEOUT or target != candidates[0]):
                failed.add(target)  # a leader that refused (not serving yet) is asked again shortly
            self._query_shard(q, index, 0.0 if code is ErrorCode.TIMEOUT else QUERY_RETRY_S)

        p = _Pending(req_id, msg, min(q.deadline, now + delay_s + QUERY_REPLICA_TIMEOUT_S), got, retry, shard)
        p.target_hint = target
        if delay_s > 0 and len(self.pending) < PENDING_MAX:
            self.pending[req_id] = p
            p.retry_at = now + delay_s
            return
        self._start(p)

    def _query_finish(self, q: _Query) -> None:
        q.done = True
        self.queries_live.discard(id(q))
        page_bytes = min(PAGE_BYTES_MAX, self.boot.listen.frame_bytes_max // 2)  # leaves room for framing
        out = merge(q.cursor, q.pages, q.params.limit, page_bytes)
        q.ok(out, None if q.cursor.finished else q.cursor.encode(), q.served)

    def _query_fail(self, q: _Query, status: int, slug: str, text: str) -> None:
        if not q.done:
            q.done = True
            self.queries_live.discard(id(q))
            q.fail(status, slug, text)

    def on_QueryShardReply(self, msg: QueryShardReply, sender: Any) -> None:
        p = self.pending.pop(msg.req_id, None)
        if p is not None:
            p.on_ok(msg)


def _record_json(r: Record) -> dict:
    from actors.dispatcher import _record_json as as_json

    return as_json(r)

