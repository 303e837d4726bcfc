"""A simulated history-query client: the coordinator's part of a query
(``actors/query.py``: merge, cursor, token) run against the replicas.

Every ``every_s`` (exponential) it queries the topic over a random range of
producer timestamps that ends at or before its own clock, paging with a
small ``limit`` so that continuation tokens are exercised on every query.
For each page and each shard not done it asks one replica through that
node's NodeActor (the node's local replica serves it): the replica the
shard's last answer named as leader, else the nodes in turn; a replica
that does not answer within ``timeout_s`` or refuses is replaced by the
next node (fail-over), as the Dispatcher does.

History records (for sim/querychecks.py):

* ``query.done`` {querier, topic, from_ms, to_ms, start_t, status,
  results: [[shard index, offset, timestamp], ...], pinned: {index: hw},
  leader_only: [indexes whose every page came from the shard's leader]}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import ChorusActor
from actors.query import Cursor, ShardPage, check_params, merge, query_id
from protocol.node import Routed
from protocol.query import QueryShard, QueryShardReply
from sim.groupview import GroupView


@dataclass(frozen=True)
class QuerierBoot:
    querier: str
    topic: str
    shards: int
    nodes: tuple[tuple[str, Any], ...]  # (node, NodeActor address)
    every_s: float = 0.5
    limit: int = 7
    timeout_s: float = 0.5
    give_up_s: float = 10.0
    stop_after_s: float = 1e9
    agency: tuple[Any, ...] = ()  # set for a topic with shard groups: query each group meeting the range


class ShardQuerier(GroupView, ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.boot: QuerierBoot | None = None
        self.req = 0
        self.q: dict | None = None
        self.leaders: dict[int, str] = {}

    def on_QuerierBoot(self, msg: QuerierBoot, sender: Any) -> None:
        if self.boot is not None:
            return
        self.boot = msg
        self.started = self.now()
        self.nodes = dict(msg.nodes)
        self.order = [n for n, _ in msg.nodes]
        self._think()

    def _think(self) -> None:
        self.set_timer(self.rng.expovariate(1.0 / self.boot.every_s), ("next",))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        kind = msg.payload[0]
        if kind == "gv_timeout":
            self._gv_timeout(msg.payload[1])
            return
        if kind == "next":
            if self.q is None and self.now() - self.started < self.boot.stop_after_s:
                if self.boot.agency:
                    self.q = {"reading": True, "n": -1, "waiting": {}}  # read the group list first (fresh: a linearizable read)
                    self._gv_refresh(self._start)
                else:
                    self._start()
            if self.now() - self.started < self.boot.stop_after_s:
                self._think()
            return
        if kind == "timeout" and self.q is not None:
            _k, qn, index, req = msg.payload
            w = self.q["waiting"].get(index)
            if qn == self.q["n"] and w is not None and w[0] == req:
                self._ask(index, w[1] + 1)

    def _start(self) -> None:
        now_ms = int(self.wall() * 1000)
        span = self.rng.randint(500, 15_000)
        to_ms = max(0, now_ms - self.rng.randint(0, 3000))
        from_ms = max(0, to_ms - span)
        params = check_params(from_ms, to_ms, None, self.boot.limit)
        if self.boot.agency:
            groups = self.view.for_range(from_ms, to_ms) if self.view is not None else []
            shards = [s for g in groups for s in g.shards]
        else:
            shards = list(range(self.boot.shards))
        self.q = {"shards": shards, "n": self.req, "params": params, "cursor": Cursor(query_id(self.boot.topic, params)),
                  "start_t": self.now(), "results": [], "pages": {}, "waiting": {}, "follower": set(),
                  "pinned": {}}
        self._page()

    def _page(self) -> None:
        q = self.q
        q["pages"] = {}
        if not q["shards"]:
            self._finish("ok")
            return
        for i in q["shards"]:
            c = q["cursor"].shards.get(i)
            if c is None or not c.done:
                self._ask(i, 0)

    def _ask(self, index: int, attempt: int) -> None:
        q = self.q
        if self.now() - q["start_t"] > self.boot.give_up_s:
            self._finish("gave_up")
            return
        leader = self.leaders.get(index)
        rotation = ([leader] if leader in self.nodes else []) + [n for n in self.order if n != leader]
        node = rotation[attempt % len(rotation)]
        c = q["cursor"].shards.get(index)
        after = c.after if c is not None else None
        self.req += 1
        p = q["params"]
        m = QueryShard(f"{self.boot.topic}#{index}", self.boot.querier, self.req, p.from_ms, p.to_ms, None,
                       after[0] if after else -1, after[1] if after else -1, c.hw if c is not None else -1,
                       p.limit, 1 << 20)
        q["waiting"][index] = (self.req, attempt)
        self.send(self.nodes[node], Routed(m, node))
        self.set_timer(self.boot.timeout_s, ("timeout", q["n"], index, self.req))

    def on_QueryShardReply(self, msg: QueryShardReply, sender: Any) -> None:
        q = self.q
        if q is None:
            return
        index = int(msg.shard.rpartition("#")[2])
        w = q["waiting"].get(index)
        if w is None or w[0] != msg.req_id:
            return
        if msg.leader:
            self.leaders[index] = msg.leader
        if msg.status != "ok":
            self._ask(index, w[1] + 1)
            return
        if msg.leader != msg.node:
            q["follower"].add(index)
        del q["waiting"][index]
        q["pinned"].setdefault(index, msg.hw)
        q["pages"][index] = ShardPage(msg.records, msg.hw, msg.more)
        if q["waiting"]:
            return
        out = merge(q["cursor"], q["pages"], q["params"].limit)
        q["results"] += [[i, r.offset, r.producer_ts_ms] for i, r in out]
        if q["cursor"].finished:
            self._finish("ok")
        else:
            q["cursor"] = Cursor.decode(q["cursor"].encode(), q["cursor"].query)  # through the token, as a client
            self._page()

    def _finish(self, status: str) -> None:
        q, self.q = self.q, None
        p = q["params"]
        self.record("query.done", querier=self.boot.querier, topic=self.boot.topic, from_ms=p.from_ms,
                    to_ms=p.to_ms, start_t=q["start_t"], status=status, results=q["results"],
                    pinned=dict(q["pinned"]),
                    leader_only=sorted(set(q["shards"]) - q["follower"]))
