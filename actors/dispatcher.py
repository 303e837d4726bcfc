"""Dispatcher: a node's front door for clients (binary protocol and HTTP API).

The actor owns no sockets.  Its host gives it an I/O bridge
(``host.open_bridge``; ``runtime/bridge.py`` in production): an I/O thread
decodes client frames and HTTP calls and posts them as events; the actor
watches the bridge's descriptor with ``ThespianWatch``, takes the events on
each ``WatchMessage`` and answers through ``bridge.send``.

What it does with them is the same as what the simulator's clients do:

* ``ProduceRequest`` at level ``any`` -> ``Produce`` to the local
  NodeActor, which coordinates it with hinted handoff
  (actors/dispatcher_handoff.py, actors/node_handoff.py);
* other ``ProduceRequest`` -> ``Produce`` to the local NodeActor, which forwards
  it to the shard's leader (node-side routing: any node coordinates any
  request); ``FetchRequest`` -> ``ReadShard``; ``SubscribeRequest`` and
  ``AckRequest`` -> subscriptions on the shards' leaders
  (actors/dispatcher_subs.py; across shard groups, dispatcher_gsubs.py).
* A replica that is not the leader answers with the leader's name; the
  request is sent again through ``Routed`` (at most ``HOPS_MAX`` times), and
  while a shard has no leader the request is retried every
  ``RETRY_S`` until its deadline.
* Metadata (topics, shard plans, node endpoints) is a local read of the
  agency every ``POLL_S``.
* Admin calls from the HTTP API (status, shard map, topics, lookups,
  produce and fetch for small use, subscriptions, namespaces) are answered
  from that view, the agency, the supervisor and the shard leaders.

Bounds: requests waiting here (``PENDING_MAX``), produce bytes waiting per
shard (``ListenConfig.shard_inflight_bytes_max``, beyond which a produce is
refused with ``OVERLOADED``), subscriptions per connection.  Of a shard's
writes, at most ``ListenConfig.shard_send_bytes_max`` bytes are sent to its
leader at a time; the rest wait here in order.  A leader's mailbox full of
megabyte batches kept it from reporting its state within the failover
grace: a 1 GiB fill set off a failover storm (epoch 140 in 9 minutes).
"""
from __future__ import annotations

import base64
from collections import deque
from typing import Any, Callable

from thespian.actors import ThespianWatch

from actors.base import ChorusActor
from actors.dispatcher_groups import GROUP_RETRIES_MAX, DispatcherGroups
from actors.dispatcher_gsubs import DispatcherGroupSubs
from actors.dispatcher_handoff import DispatcherHandoff
from actors.dispatcher_metrics import DispatcherMetrics
from actors.dispatcher_mqtt import DispatcherMqtt
from actors.dispatcher_moves import DispatcherMoves
from actors.dispatcher_query import DispatcherQuery
from actors.dispatcher_common import RETRY_S, Refusal, _classify  # noqa: F401 (Refusal: imported from here too)
from actors.dispatcher_subs import DispatcherSubs, _Sub  # noqa: F401 (_Sub: imported from here too)
from actors.dispatcher_users import DispatcherUsers
from actors.supervisor import PLAN_ROOT, walk_plans
from protocol.agency import (
    AgencyReply,
    AgencyRequest,
    MembershipChange,
    Mutation,
    Precondition,
    Read,
    StatusQuery,
    StatusReply,
    Txn,
)
from protocol.frames import (
    AckRequest,
    CommitRequest,
    ErrorCode,
    FetchRequest,
    FetchResponse,
    GroupFetchRequest,
    GroupsRequest,
    Level,
    MetadataRequest,
    MetadataResponse,
    ProduceRequest,
    ProduceResponse,
    QueryRequest,
    ShardMetadata,
    SubscribeRequest,
    TopicMetadata,
)
from protocol.groups import GROUPS_ROOT
from protocol.hashing import RoundRobin
from protocol.node import (
    CAP_CLUSTER,
    CAP_HTTP,
    CAP_NODE,
    AlterTopic,
    CreateTopic,
    DeleteTopic,
    DispatcherBoot,
    NodesQuery,
    NodesReply,
    Routed,
    ShardInfo,
    TopicReply,
)
from protocol.records import Record, decode_batch, encode_batch, is_control, read_header
from protocol.shard import GROUP_CLOSED, Produce, ProduceReply, ReadShard, ReadShardReply, ShardStatusReply
from protocol.topics import TOPICS_ROOT, TopicName, TopicSpec
from protocol.users import USERS_ROOT

NODES_ROOT = "/chorus/nodes"
NAMESPACES_ROOT = "/chorus/namespaces"
POLL_S = 0.25
TICK_S = 0.05
HOPS_MAX = 3
NODE_ALIVE_S = 3.0  # a node the supervisor heard from this recently is alive
CONVENTION_MEMBERS_MAX = 1000  # convention members (and refused ones) a Dispatcher keeps
PENDING_MAX = 100_000
FETCH_WAIT_MS_MAX = 30_000
HTTP_RECORDS_MAX = 1000


class _Pending:
    """An internal request awaiting its answer."""

    __slots__ = ("req_id", "msg", "target_hint", "hops", "deadline", "on_ok", "on_fail", "retry_at", "bytes",
                 "shard", "queued")

    def __init__(self, req_id: int, msg: Any, deadline: float, on_ok: Callable, on_fail: Callable,
                 shard: str = "", nbytes: int = 0) -> None:
        self.req_id = req_id
        self.msg = msg
        self.target_hint: str | None = None
        self.hops = 0
        self.deadline = deadline
        self.on_ok = on_ok
        self.on_fail = on_fail
        self.retry_at: float | None = None
        self.bytes = nbytes
        self.shard = shard
        self.queued = False  # a write waiting for room in its shard's send window


class Dispatcher(ChorusActor, DispatcherMqtt, DispatcherUsers, DispatcherHandoff, DispatcherQuery,
                 DispatcherMetrics, DispatcherMoves, DispatcherGroups, DispatcherGroupSubs, DispatcherSubs):
    def __init__(self) -> None:
        super().__init__()
        self.boot: DispatcherBoot | None = None
        self.bridge: Any = None
        self.out: list[tuple] = []
        self.req = 0
        self.agency_req = 0
        self.pending: dict[int, _Pending] = {}
        self.agency_waiters: dict[int, Callable[[AgencyReply], None]] = {}
        self.status_waiters: list[Callable[[dict], None]] = []
        self.nodes_waiters: list[Callable[[NodesReply], None]] = []
        self.mqtt_waiters: list[Callable[[dict], None]] = []
        self.info_waiters: dict[str, list[Callable[[dict], None]]] = {}
        self.topics: dict[str, dict] = {}
        self.plans: dict[str, dict] = {}
        self._metrics_init()
        self.nodes: dict[str, dict] = {}
        self.namespaces: set[str] = set()
        self.revision = -1
        self.loaded = False
        self.after_poll: list[Callable[[], None]] = []
        self.shard_bytes: dict[str, int] = {}
        self.shard_sent: dict[str, int] = {}  # shard -> produce bytes sent to its leader, unanswered
        self.shard_wait: dict[str, deque] = {}  # shard -> writes waiting for room in the send window
        # shard -> (leader node, its start time, leader replica address),
        # learned from the sender of a good answer: requests then go straight
        # to the replica, one actor hop instead of two through the NodeActor
        self.replica_at: dict[str, tuple[str, Any, Any]] = {}
        self.plan_leaders: dict[str, str | None] = {}
        self.subs: dict[tuple[str, str, str], _Sub] = {}  # (shard, subscription, internal consumer)
        self.conn_subs: dict[int, list[_Sub]] = {}
        self.subscribe_waits: dict[tuple[int, int], dict] = {}
        self.rr = RoundRobin()
        self.gen = 0
        self.ticks = 0
        self.registered = False
        self.started = 0.0
        self.directory: dict = {"cluster_id": "", "nodes": []}
        # node id -> {"node_id", "http", "admin"}: members of this cluster's
        # Thespian convention (a potential leader hears of every member)
        self.convention: dict[str, dict] = {}
        self.convention_refused: dict[str, str] = {}  # node id -> its (other) cluster id

    # --------------------------------------------------------------- boot
    def on_DispatcherBoot(self, msg: DispatcherBoot, sender: Any) -> None:
        if self.boot is not None:
            return
        if msg.host is not None:
            self.adopt_host_config(msg.host)
        self.boot = msg
        self.client = f"dispatcher-{msg.node_id}-{self.rng.getrandbits(48):012x}"
        self.started = self.now()
        self.bridge = self.host.open_bridge(msg.listen, node_id=msg.node_id, cluster_id=msg.cluster_id)
        self.record("dispatcher.listening", node=msg.node_id, client_port=self.bridge.client_port,
                    http_port=self.bridge.http_port)
        self.send(sender, ("listening", self.bridge.client_port, self.bridge.http_port))
        self.notifyOnSystemRegistrationChanges(True)
        self._poll()
        self._arm()

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        super().receiveMessage(msg, sender)
        if self.out and self.bridge is not None:
            out, self.out = self.out, []
            self.bridge.send(out)
        if self.bridge is not None:
            return ThespianWatch([self.bridge.fileno()])
        return None

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        """The node shuts down: close the client and HTTP sockets now, so
        clients see their connections close at once and move to another
        node, instead of waiting on a node that is going away."""
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None

    def _arm(self) -> None:
        self.gen += 1
        self.set_timer(TICK_S, ("tick", self.gen))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload != ("tick", self.gen) or self.boot is None:
            return
        self.ticks += 1
        now = self.now()
        if self.ticks % max(1, int(POLL_S / TICK_S)) == 0:
            self._poll()
        self._retry_and_expire(now)
        self._keepalive(now)
        self._arm()

    # ------------------------------------------------------- bridge events
    def on_WatchMessage(self, msg: Any, sender: Any) -> None:
        if self.bridge is None:
            return
        for event in self.bridge.take():
            kind = event[0]
            try:
                if kind == "request":
                    self._request(event[1], event[2], event[3])
                elif kind == "closed":
                    self._closed(event[1])
                elif kind == "admin":
                    self._admin(event[1], event[2], event[3])
            except Refusal as r:
                if kind == "request":
                    self._error(event[1], event[2], r.code, r.message)
                elif kind == "admin":
                    self.out.append(("admin", event[1], False, (r.status, r.slug, r.message)))

    def _frame(self, conn: int, corr: int, message: Any, answers: bool = True) -> None:
        self.out.append(("frame", conn, corr, message, answers))

    def _error(self, conn: int, corr: int, code: ErrorCode, text: str) -> None:
        from protocol.frames import ErrorResponse

        self._frame(conn, corr, ErrorResponse(code=code, message=text[:1000]))

    # --------------------------------------------------------- agency view
    def _poll(self) -> None:
        self._agency(Read((TOPICS_ROOT, PLAN_ROOT, NODES_ROOT, NAMESPACES_ROOT, USERS_ROOT, GROUPS_ROOT),
                          linearizable=False), self._polled)
        if not self.registered:
            self._register()
        self._hh_poll()

    def _agency(self, op: Any, on_reply: Callable[[AgencyReply], None]) -> None:
        self._agency_call(lambda req_id: AgencyRequest(self.client, req_id, op), on_reply)

    def _agency_call(self, make: Callable[[int], Any], on_reply: Callable[[AgencyReply], None]) -> None:
        """Send ``make(req_id)`` to the local agency peer; ``on_reply`` gets
        the AgencyReply with that id."""
        self.agency_req += 1
        self.agency_waiters[self.agency_req] = on_reply
        if len(self.agency_waiters) > 1000:  # a silent agency: forget the oldest
            del self.agency_waiters[min(self.agency_waiters)]
        self.send(self.boot.agency, make(self.agency_req))

    def on_AgencyReply(self, msg: AgencyReply, sender: Any) -> None:
        cb = self.agency_waiters.pop(msg.req_id, None)
        if cb is not None:
            cb(msg)

    def _register(self) -> None:
        ep = self.boot.endpoints
        b = self.bridge
        host = self.boot.listen.host
        doc = {"client": f"{host}:{b.client_port}", "http": f"{host}:{b.http_port}" if b.http_port else "",
               "admin": ep.admin if ep else "", "version": self.boot.version, "started": self.wall()}

        def done(reply: AgencyReply) -> None:
            self.registered = reply.status == "ok"

        self._agency(Txn((Mutation(f"{NODES_ROOT}/{self.boot.node_id}", "set", doc),)), done)

    def _polled(self, reply: AgencyReply) -> None:
        if reply.status != "ok" or not isinstance(reply.result, dict):
            return
        rev = reply.result.get("revision", 0)
        if rev < self.revision:
            return
        self.revision = rev
        topics_tree, plans_tree, nodes_tree, ns_tree, users_tree, groups_tree = \
            (list(reply.result["values"]) + [None] * 6)[:6]
        self._users_polled(users_tree)
        self._groups_polled(groups_tree)
        self._gsub_view()
        self.topics = dict(_walk_topics(topics_tree or {}))
        self.plans = dict(walk_plans(plans_tree or {}))
        self.nodes = {k: v for k, v in (nodes_tree or {}).items() if isinstance(v, dict)}
        self._leaders_changed()
        self.namespaces = set(_walk_namespaces(ns_tree or {}))
        self.loaded = True
        waiting, self.after_poll = self.after_poll, []
        for cb in waiting:
            cb()

    def _leaders_changed(self) -> None:
        """After a poll: forget cached leader replicas whose shard has a new
        planned leader (a failover) or whose node restarted (its actors have
        new addresses), and send what waits on them again (see
        :meth:`_forget_replicas`)."""
        leaders = {shard: plan.get("leader") or None for shard, plan in self.plans.items()}
        stale = {shard for shard, leader in leaders.items()
                 if shard in self.plan_leaders and self.plan_leaders[shard] != leader}
        stale |= set(self.plan_leaders) - set(leaders)
        self._observe_leaders(leaders)
        self.plan_leaders = leaders
        for shard, (node, started, _addr) in self.replica_at.items():
            if self.nodes.get(node, {}).get("started") != started:
                stale.add(shard)
        if stale:
            self._forget_replicas(stale)

    def _forget_replicas(self, shards: set[str]) -> None:
        """Requests waiting on these shards' old leaders go to the planned
        leaders now instead of waiting out their timeouts on a dead or
        deposed replica.  Only reads and writes of idempotent producers (the
        new leader recognises a retry) are sent again."""
        for shard in shards:
            self.replica_at.pop(shard, None)
        now = self.now()
        for s in list(self.subs.values()):  # consumers too: their keep-alives went to the old leader
            if s.shard in shards:
                s.replica = None
                s.hint = self.plan_leaders.get(s.shard)
                self._send_subscribe(s, now)
        for p in list(self.pending.values()):
            if p.shard in shards and p.retry_at is None and not p.queued and (
                    isinstance(p.msg, ReadShard) or (isinstance(p.msg, Produce) and p.msg.producer_id)):
                p.target_hint = self.plan_leaders.get(p.shard)
                p.hops = 0
                self._send_pending(p)

    def _spec(self, topic: str, *, wait: Callable[[], None] | None = None) -> dict | None:
        """The topic's spec; None (after calling ``wait`` later) if unknown."""
        spec = self.topics.get(topic)
        if spec is None and wait is not None:
            self.after_poll.append(wait)
        return spec

    # ------------------------------------------------------------ requests
    def _request(self, conn: int, corr: int, m: Any) -> None:
        if isinstance(m, ProduceRequest):
            self._produce_frame(conn, corr, m)
        elif isinstance(m, FetchRequest):
            self._fetch_frame(conn, corr, m)
        elif isinstance(m, MetadataRequest):
            self._metadata(conn, corr, m)
        elif isinstance(m, SubscribeRequest):
            self._subscribe(conn, corr, m)
        elif isinstance(m, AckRequest):
            self._ack(conn, corr, m)
        elif isinstance(m, QueryRequest):
            self._query_frame(conn, corr, m)
        elif isinstance(m, GroupsRequest):
            self._groups_frame(conn, corr, m)
        elif isinstance(m, GroupFetchRequest):
            self._group_fetch_frame(conn, corr, m)
        elif isinstance(m, CommitRequest):
            raise Refusal(ErrorCode.INVALID_REQUEST, 400, "bad_request",
                          "CommitRequest is not supported yet: acknowledge records with AckRequest")
        else:
            raise Refusal(ErrorCode.UNKNOWN_TYPE, 400, "bad_request", f"unexpected {type(m).__name__}")

    def _shard_of(self, topic: str, index: int, defer: Callable[[], None], first: bool) -> str | None:
        """Internal shard name, or None after ``defer()`` (waiting for a
        fresher view); raises Refusal for unknown topics and shards."""
        spec = self.topics.get(topic)
        if spec is None:
            if first:
                defer()
                return None
            raise Refusal(ErrorCode.UNKNOWN_TOPIC, 404, "not_found", f"topic {topic!r} does not exist")
        if not 0 <= index < int(spec.get("shards", 1)):
            raise Refusal(ErrorCode.UNKNOWN_SHARD, 404, "not_found",
                          f"topic {topic!r} has {spec.get('shards')} shards; there is no shard {index}")
        shard = self._group_shard(topic, index)
        if shard is None:  # no group holds this node's clock yet: the supervisor is adding it
            if first:
                defer()
                return None
            raise Refusal(ErrorCode.OVERLOADED, 503, "unavailable",
                          f"topic {topic!r} has no shard group for now yet; retry")
        return shard

    def _after_poll(self, conn: int, corr: int, redo: Callable[[], None]) -> None:
        """Serve a request again once the next agency view is in (it named a
        topic this node has not seen yet); a refusal then becomes an error frame."""
        def again() -> None:
            try:
                redo()
            except Refusal as r:
                self._error(conn, corr, r.code, r.message)

        self.after_poll.append(again)

    def _produce_frame(self, conn: int, corr: int, m: ProduceRequest, first: bool = True, tries: int = 0) -> None:
        shard = self._shard_of(m.topic, m.shard, lambda: self._after_poll(
            conn, corr, lambda: self._produce_frame(conn, corr, m, False)), first)
        if shard is None:
            return

        def ok(reply: ProduceReply) -> None:
            self._frame(conn, corr, ProduceResponse(base_offset=max(0, reply.base_offset),
                                                    level_met=Level(reply.level or m.level.value),
                                                    duplicate=reply.duplicate))

        def fail(code: ErrorCode, text: str) -> None:
            if text.startswith(GROUP_CLOSED) and tries < GROUP_RETRIES_MAX:
                # the group closed (truncate-shards): write to the current one
                self.after_poll.append(lambda: self._produce_frame(conn, corr, m, False, tries + 1))
                return
            self._error(conn, corr, code, text)

        self._produce(shard, m.batch, m.level.value, m.producer_id, m.sequence, m.timeout_ms / 1000.0, ok, fail)

    def _produce(self, shard: str, batch: bytes, level: str, producer_id: int, sequence: int, timeout_s: float,
                 ok: Callable, fail: Callable) -> None:
        try:
            count = read_header(batch).record_count
        except ValueError as exc:
            raise Refusal(ErrorCode.INVALID_REQUEST, 400, "bad_request", f"bad record batch: {exc}") from None
        used = self.shard_bytes.get(shard, 0)
        if used + len(batch) > self.boot.listen.shard_inflight_bytes_max:
            raise Refusal(ErrorCode.OVERLOADED, 503, "overloaded",
                          f"shard {shard} has {used} bytes of writes in flight; retry later")
        self.shard_bytes[shard] = used + len(batch)
        req_id = self._next_req()
        msg = Produce(shard, self.client, req_id, batch, count, level, producer_id, sequence)
        timeout_s = min(max(timeout_s, 0.1), self.boot.listen.request_timeout_s * 3)
        self._start(_Pending(req_id, msg, self.now() + timeout_s, ok, fail, shard, len(batch)))

    def _fetch_frame(self, conn: int, corr: int, m: FetchRequest, first: bool = True) -> None:
        shard = self._shard_of(m.topic, m.shard, lambda: self._after_poll(
            conn, corr, lambda: self._fetch_frame(conn, corr, m, False)), first)
        if shard is None:
            return
        wait_s = min(m.max_wait_ms, FETCH_WAIT_MS_MAX) / 1000.0
        self._read(shard, m.offset, min(m.max_bytes, self.boot.listen.frame_bytes_max - 4096), wait_s,
                   lambda r: self._frame(conn, corr, FetchResponse(high_watermark=r.hw, batches=r.batches)),
                   lambda code, text: self._error(conn, corr, code, text))

    def _read(self, shard: str, offset: int, max_bytes: int, wait_s: float, ok: Callable, fail: Callable) -> None:
        req_id = self._next_req()
        now = self.now()
        deadline = now + max(wait_s, self.boot.listen.request_timeout_s)
        wait_until = now + wait_s

        def got(reply: ReadShardReply) -> None:
            if not reply.batches and self.now() < wait_until:
                p = self.pending.get(req_id) or _Pending(req_id, msg, deadline, got, fail, shard)
                p.retry_at = self.now() + 0.01
                self.pending[req_id] = p
                return
            ok(reply)

        msg = ReadShard(shard, self.client, req_id, offset, max(1, max_bytes))
        self._start(_Pending(req_id, msg, deadline, got, fail, shard))

    def _next_req(self) -> int:
        self.req += 1
        return self.req

    def _start(self, p: _Pending) -> None:
        if len(self.pending) >= PENDING_MAX:
            p.queued = True  # never sent: not in the send window
            self._release(p)
            p.on_fail(ErrorCode.OVERLOADED, "node overloaded: too many requests in flight")
            return
        self.pending[p.req_id] = p
        if p.bytes:
            sent = self.shard_sent.get(p.shard, 0)
            if sent and (sent + p.bytes > self.boot.listen.shard_send_bytes_max or p.shard in self.shard_wait):
                # the leader has a window's worth to work through: wait here,
                # in order, instead of in its mailbox (where the writes would
                # delay its state reports past the failover grace)
                p.queued = True
                self.shard_wait.setdefault(p.shard, deque()).append(p)
                return
            self.shard_sent[p.shard] = sent + p.bytes
        self._send_pending(p)

    def _send_pending(self, p: _Pending) -> None:
        p.retry_at = None
        if self._hh_routes(p.msg):
            return
        if p.target_hint is None:
            cached = self.replica_at.get(p.shard)
            if cached is not None:
                self.send(cached[2], p.msg)
                return
        msg = p.msg if p.target_hint is None else Routed(p.msg, p.target_hint)
        self.send(self.boot.node, msg)

    def _release(self, p: _Pending) -> None:
        if p.bytes:
            left = self.shard_bytes.get(p.shard, 0) - p.bytes
            if left > 0:
                self.shard_bytes[p.shard] = left
            else:
                self.shard_bytes.pop(p.shard, None)
            if not p.queued:
                sent = self.shard_sent.get(p.shard, 0) - p.bytes
                if sent > 0:
                    self.shard_sent[p.shard] = sent
                else:
                    self.shard_sent.pop(p.shard, None)
            p.bytes = 0
            self._send_waiting(p.shard)

    def _send_waiting(self, shard: str) -> None:
        """Send a shard's queued writes while its window has room (at
        least one when nothing is in flight); expired ones are skipped."""
        wait = self.shard_wait.get(shard)
        limit = self.boot.listen.shard_send_bytes_max
        while wait:
            p = wait[0]
            if self.pending.get(p.req_id) is not p or not p.bytes:
                wait.popleft()  # answered (expired) while it waited
                continue
            sent = self.shard_sent.get(shard, 0)
            if sent and sent + p.bytes > limit:
                return
            wait.popleft()
            p.queued = False
            self.shard_sent[shard] = sent + p.bytes
            self._send_pending(p)
        self.shard_wait.pop(shard, None)

    def _answer(self, req_id: int, status: str, leader: str | None, error: str, reply: Any) -> None:
        p = self.pending.get(req_id)
        if p is None:
            return
        if status == "ok":
            del self.pending[req_id]
            self._release(p)
            p.on_ok(reply)
            return
        if status == "unknown":
            # the write may or may not be in the log (leadership lost while
            # waiting): an idempotent producer's retry settles it
            del self.pending[req_id]
            self._release(p)
            p.on_fail(ErrorCode.TIMEOUT, f"outcome unknown: {error or 'leadership changed'}; retry")
            return
        code, _status, _slug = _classify(error)
        if code is ErrorCode.NOT_LEADER:
            if leader and leader != p.target_hint and p.hops < HOPS_MAX:
                p.hops += 1
                p.target_hint = leader
                self._send_pending(p)
                return
            p.target_hint = None
            p.retry_at = self.now() + RETRY_S  # no leader right now: try again shortly
            return
        del self.pending[req_id]
        self._release(p)
        p.on_fail(code, error)

    def _learn(self, shard: str, leader: str | None, ok: bool, sender: Any) -> None:
        """Remember the replica that served ``shard`` as its leader (with its
        node's start time, to notice a restart), or forget it when it refused:
        no longer the leader, or starting."""
        if ok and leader:
            self.replica_at[shard] = (leader, self.nodes.get(leader, {}).get("started"), sender)
        elif not ok:
            self.replica_at.pop(shard, None)

    def on_ProduceReply(self, msg: ProduceReply, sender: Any) -> None:
        self._learn(msg.shard, msg.leader, msg.status == "ok", sender)
        self._answer(msg.req_id, msg.status, msg.leader, msg.error, msg)

    def on_ReadShardReply(self, msg: ReadShardReply, sender: Any) -> None:
        self._learn(msg.shard, msg.leader, msg.status == "ok", sender)
        p = self.pending.get(msg.req_id)
        if p is not None and msg.status == "ok":
            # the read handler may re-arm the same pending entry (long poll)
            del self.pending[msg.req_id]
            p.on_ok(msg)
            return
        self._answer(msg.req_id, msg.status, msg.leader, msg.error, msg)

    def on_TopicReply(self, msg: TopicReply, sender: Any) -> None:
        p = self.pending.pop(msg.req_id, None)
        if p is None:
            return
        if msg.status == "ok":
            p.on_ok(msg)
        else:
            p.on_fail(None, msg.error or msg.status)

    def _retry_and_expire(self, now: float) -> None:
        for req_id in list(self.pending):
            p = self.pending.get(req_id)
            if p is None:
                continue
            if now >= p.deadline:
                del self.pending[req_id]
                self._release(p)
                p.on_fail(ErrorCode.TIMEOUT, f"no answer for {type(p.msg).__name__} on {p.shard or 'the cluster'} "
                                             "before the deadline")
            elif p.retry_at is not None and now >= p.retry_at:
                self._send_pending(p)

    # ---------------------------------------------------------- metadata
    def _metadata(self, conn: int, corr: int, m: MetadataRequest, first: bool = True) -> None:
        names = list(m.topics) or sorted(self.topics)
        if first and (not self.loaded or any(t not in self.topics for t in names)):
            self._after_poll(conn, corr, lambda: self._metadata(conn, corr, m, False))
            return
        out = []
        for t in names:
            spec = self.topics.get(t)
            if spec is None:
                out.append(TopicMetadata(topic=t, error=ErrorCode.UNKNOWN_TOPIC))
                continue
            shards = []
            for i in range(int(spec.get("shards", 1))):
                plan = self.plans.get(self._group_shard(t, i) or f"{t}#{i}") or {}  # the current group's
                leader = plan.get("leader") or ""
                host, port = _split(self.nodes.get(leader, {}).get("client", ""))
                shards.append(ShardMetadata(shard=i, leader=leader, host=host, port=port,
                                            epoch=int(plan.get("epoch", 0))))
            out.append(TopicMetadata(topic=t, shards=tuple(shards)))
        self._frame(conn, corr, MetadataResponse(topics=tuple(out)))

    # ------------------------------------------------------------- admin
    def _admin(self, token: int, kind: str, args: dict) -> None:
        def ok(result: Any) -> None:
            self.out.append(("admin", token, True, result))

        def fail(status: int, slug: str, message: str) -> None:
            self.out.append(("admin", token, False, (status, slug, message)))

        handler = getattr(self, "_admin_" + kind, None)
        if handler is None:
            fail(400, "bad_request", f"unknown operation {kind}")
            return
        if not self.loaded and kind != "directory":
            self.after_poll.append(lambda: self._admin(token, kind, args))
            return
        handler(args, ok, fail)

    def on_Directory(self, msg: Any, sender: Any) -> None:
        self.directory = msg.doc
        cluster_id = msg.doc.get("cluster_id")
        if cluster_id and self.bridge is not None and cluster_id != self.bridge.cluster_id:
            # a new node adopted the id of the cluster it joined (after we
            # started listening): handshakes and status must say so
            self.bridge.cluster_id = cluster_id

    def on_ActorSystemConventionUpdate(self, msg: Any, sender: Any) -> None:
        """A node's ActorSystem entered or left the Thespian convention.
        Members announce their node id, cluster id and HTTP endpoint as
        capabilities; a member of another cluster is not listed."""
        caps = msg.remoteCapabilities or {}
        nid, cluster, http = caps.get(CAP_NODE), caps.get(CAP_CLUSTER), caps.get(CAP_HTTP)
        if not isinstance(nid, str) or not nid or nid == (self.boot.node_id if self.boot else None):
            return
        self.convention.pop(nid, None)
        self.convention_refused.pop(nid, None)
        if not msg.remoteAdded:
            self.record("convention.left", node=nid)
            return
        if len(self.convention) + len(self.convention_refused) >= CONVENTION_MEMBERS_MAX:
            return
        mine = self.bridge.cluster_id if self.bridge is not None else ""
        if cluster != mine:
            self.convention_refused[nid] = str(cluster)
            self.record("convention.foreign", node=nid, cluster=cluster)
            return
        self.convention[nid] = {"node_id": nid, "http": http if isinstance(http, str) else "",
                                "admin": str(msg.remoteAdminAddress)}
        self.record("convention.joined", node=nid, http=http)

    def _admin_directory(self, args: dict, ok: Callable, fail: Callable) -> None:
        """The launcher's directory, plus every node that it does not list
        yet (one that joined through another seed) heard of through the
        Thespian convention or registered in the agency: those entries
        carry only endpoints, enough for a launcher to fetch that node's own
        directory.  ``convention`` lists the convention members heard of,
        ``convention_refused`` those that belong to another cluster."""
        nodes = list(self.directory.get("nodes", []))
        listed = {n.get("node_id") for n in nodes if isinstance(n, dict)}
        for nid in sorted(self.convention):
            entry = self.convention[nid]
            if nid not in listed and entry["http"]:
                nodes.append({"node_id": nid, "http": entry["http"]})
                listed.add(nid)
        for nid in sorted(self.nodes):
            reg = self.nodes[nid]
            if nid not in listed and reg.get("http"):
                nodes.append({"node_id": nid, "http": reg["http"], "client": reg.get("client", "")})
        ok({**self.directory, "nodes": nodes, "convention": sorted(self.convention),
            "convention_refused": sorted(self.convention_refused)})

    def _cluster_view(self, done: Callable[[dict, dict[str, float], tuple[str, ...]], None]) -> None:
        """The local agency peer's status, and how long ago the supervisor
        last heard from each node: ``done(agency_status, seen_ago_s, members)``."""
        state: dict = {}

        def finish() -> None:
            if "agency" in state and "seen" in state:
                done(state["agency"], state["seen"], state["members"])

        def got_status(st: dict) -> None:
            state["agency"] = st
            finish()

        def got_nodes(r: NodesReply) -> None:
            state["seen"] = dict(r.seen_ago_s)
            state["members"] = tuple(r.nodes)
            finish()

        self.status_waiters.append(got_status)
        self.nodes_waiters.append(got_nodes)
        self.send(self.boot.agency, StatusQuery())
        self.send(self.boot.supervisor, NodesQuery())

    def _own_directory_entry(self) -> dict:
        """This node's entry in the directory its launcher publishes."""
        return next((n for n in self.directory.get("nodes", ()) if n.get("node_id") == self.boot.node_id), {})

    def _admin_status(self, args: dict, ok: Callable, fail: Callable) -> None:
        def finish(st: dict, seen: dict[str, float], members: tuple[str, ...]) -> None:
            ep = self.boot.endpoints
            me = self.nodes.get(self.boot.node_id, {})
            voters, learners = set(st.get("voters", ())), set(st.get("learners", ()))
            all_nodes = sorted(set(self.nodes) | set(seen) | set(members) | voters | learners)
            nodes = []
            for n in all_nodes:
                info = self.nodes.get(n, {})
                ago = seen.get(n)
                role = "voter" if n in voters else "learner" if n in learners else ""
                nodes.append({"node_id": n, "agency": role, "alive": ago is not None and ago < NODE_ALIVE_S,
                              "client": info.get("client", ""), "http": info.get("http", ""), "last_seen_s": ago})
            ok({
                "node_id": self.boot.node_id, "cluster_id": self.bridge.cluster_id, "version": self.boot.version,
                "uptime_s": round(self.now() - self.started, 3),
                "endpoints": {"client": me.get("client", ""), "http": me.get("http", ""),
                              "mqtt": self._own_directory_entry().get("mqtt_listen", ""),
                              "admin": ep.admin if ep else ""},
                # the client, MQTT and HTTP ports speak TLS only
                "tls": bool(self.boot.listen.tls_cert_file),
                "agency": {"role": st.get("role"), "leader": st.get("leader"), "term": st.get("term"),
                           "commit_index": st.get("commit"), "voters": list(st.get("voters", ())),
                           "learners": list(st.get("learners", ()))},
                "nodes": nodes,
                "replicas": sum(1 for p in self.plans.values() if self.boot.node_id in p.get("replicas", ())),
                "handoff": self._hh_status_json(),
            })

        self._cluster_view(finish)

    def _admin_promote_node(self, args: dict, ok: Callable, fail: Callable) -> None:
        """Make an agency learner (a node that joined with ``--join``) a
        voter.  Only a learner that is alive is promoted: a voter that does
        not answer counts against the agency's quorum from the moment it is
        added."""
        nid = args["node_id"]

        def decide(st: dict, seen: dict[str, float], members: tuple[str, ...]) -> None:
            voters, learners = list(st.get("voters", ())), list(st.get("learners", ()))
            if nid in voters:
                fail(409, "conflict", f"{nid} is already an agency voter")
                return
            if nid not in learners:
                known = nid in self.nodes or nid in seen or nid in members
                fail(404 if not known else 409, "not_found" if not known else "conflict",
                     f"no such node: {nid}" if not known else f"{nid} is not an agency learner")
                return
            ago = seen.get(nid)
            if ago is None or ago >= NODE_ALIVE_S:
                fail(409, "conflict", f"{nid} is not alive; only a live learner can become a voter")
                return

            def done(reply: AgencyReply) -> None:
                if reply.status == "ok":
                    ok({"node_id": nid, "role": "voter", "voters": sorted(voters + [nid]),
                        "learners": [n for n in learners if n != nid]})
                elif reply.error in ("another membership change is in progress",
                                     "only one voter may be added or removed at a time"):
                    fail(409, "conflict", f"agency: {reply.error}")
                else:
                    fail(503, "unavailable", f"agency: {reply.error or reply.status}")

            self._agency_call(lambda req_id: MembershipChange(self.client, req_id, "add_voter", nid), done)

        self._cluster_view(decide)

    def on_StatusReply(self, msg: StatusReply, sender: Any) -> None:
        waiters, self.status_waiters = self.status_waiters, []
        for cb in waiters:
            cb(msg.status)

    def on_NodesReply(self, msg: NodesReply, sender: Any) -> None:
        waiters, self.nodes_waiters = self.nodes_waiters, []
        for cb in waiters:
            cb(msg)

    def _shard_list(self, topic: str | None) -> list[str]:
        names = [topic] if topic else sorted(self.topics)
        out = []
        for t in names:
            spec = self.topics.get(t)
            gl = self._group_list(t)
            if gl is not None:  # every shard of every group (ids unique within the topic)
                out.extend(f"{t}#{i}" for i in gl.shard_ids())
            elif spec is not None:
                out.extend(f"{t}#{i}" for i in range(int(spec.get("shards", 1))))
        return out

    def _gather_info(self, shards: list[str], done: Callable[[dict[str, dict]], None]) -> None:
        """ShardInfo from each shard's leader (with a short deadline)."""
        results: dict[str, dict] = {}
        if not shards:
            done(results)
            return
        left = {"n": len(shards), "done": False}

        def one(shard: str, status: dict) -> None:
            if left["done"] or shard in results:
                return
            results[shard] = status
            left["n"] -= 1
            if left["n"] <= 0:
                left["done"] = True
                done(results)

        for shard in shards:
            self.info_waiters.setdefault(shard, []).append(lambda st, shard=shard: one(shard, st))
            self.send(self.boot.node, ShardInfo(shard))

        def expire() -> None:
            if not left["done"]:
                left["done"] = True
                for shard in shards:
                    self.info_waiters.pop(shard, None)
                done(results)

        req_id = self._next_req()
        self.pending[req_id] = _Pending(req_id, None, self.now() + 2.0, lambda _r: None, lambda *_a: expire())

    def on_ShardStatusReply(self, msg: ShardStatusReply, sender: Any) -> None:
        status = dict(msg.status)
        if status.get("role") not in (None, "leader") and status.get("leader") and not status.get("forwarded"):
            # a non-leader answered (local replica): ask the leader it names
            self.send(self.boot.node, Routed(ShardInfo(msg.shard), status["leader"]))
            return
        for cb in self.info_waiters.pop(msg.shard, []):
            cb(status)

    def _known_topic(self, name: str, fail: Callable) -> dict | None:
        """The topic's spec, or None after a 404 through ``fail``."""
        spec = self.topics.get(name)
        if spec is None:
            fail(404, "not_found", f"topic {name!r} does not exist")
        return spec

    def _topic_info(self, topic: str | None, required: bool, fail: Callable,
                    done: Callable[[list[str], dict[str, dict]], None]) -> None:
        """``done(shards, info)`` with the status of every shard of ``topic``
        (of every topic when it is empty and not ``required``); a 404 when the
        topic does not exist."""
        if (topic or required) and self._known_topic(topic, fail) is None:
            return
        shards = self._shard_list(topic)
        self._gather_info(shards, lambda info: done(shards, info))

    def _admin_shards(self, args: dict, ok: Callable, fail: Callable) -> None:
        def done(shards: list[str], info: dict[str, dict]) -> None:
            out = []
            for shard in shards:
                t, _, idx = shard.rpartition("#")
                plan = self.plans.get(shard) or {}
                st = info.get(shard, {})
                leader = plan.get("leader") or ""
                out.append({"shard": shard, "topic": t, "index": int(idx), "leader": leader,
                            "epoch": int(plan.get("epoch", 0)), "replicas": list(plan.get("replicas", ())),
                            "learners": list(plan.get("learners", ())),
                            "in_sync": list(st.get("in_sync", ())) if st.get("role") == "leader" else [],
                            "high_watermark": st.get("hw"), "end_offset": st.get("end"),
                            "state": "ok" if leader and st.get("role") == "leader" else
                            ("fenced" if not leader else "leaderless")})
            ok(out)

        self._topic_info(args.get("topic"), False, fail, done)

    def _topic_json(self, spec: dict) -> dict:
        out = {"name": spec["name"], "shards": spec.get("shards", 1),
               "replication_factor": spec.get("replication_factor", 1),
               "retention_ms": spec.get("retention_ms"), "retention_bytes": spec.get("retention_bytes")}
        if spec.get("shard_group_ms") is not None:
            out["shard_group_ms"] = spec["shard_group_ms"]
            out["groups"] = self._groups_json(spec["name"]) or []
        return out

    def _admin_topics(self, args: dict, ok: Callable, fail: Callable) -> None:
        ok([self._topic_json(self.topics[t]) for t in sorted(self.topics)])

    def _admin_topic(self, args: dict, ok: Callable, fail: Callable) -> None:
        spec = self._known_topic(args.get("name", ""), fail)
        if spec is not None:
            ok(self._topic_json(spec))

    def _topic_call(self, msg: Any, ok: Callable, fail: Callable, after: Callable[[], Any]) -> None:
        def done(_reply: TopicReply) -> None:
            # answer once our own view shows the change, so a follow-up GET agrees
            def check(tries: int = 0) -> None:
                result = after()
                if result is not None or tries >= 20:
                    ok(result if result is not None else {})
                else:
                    self.after_poll.append(lambda: check(tries + 1))
            check()

        def failed(_code: Any, error: str) -> None:
            e = error.lower()
            if "exist" in e and ("already" in e or "precondition" in e):
                fail(409, "conflict", error)
            elif "unknown topic" in e or "does not exist" in e or "no such" in e:
                fail(404, "not_found", error)
            elif ("no active supervisor" in e or "starting" in e or "timed out" in e or "no answer" in e
                  or "not ready" in e or e.endswith("; retry")):  # (e.g. the topic's shard groups are changing)
                fail(503, "unavailable", error)
            else:
                fail(400, "bad_request", error)

        req_id = self._next_req()
        msg = type(msg)(**{**msg.__dict__, "req_id": req_id})
        self.pending[req_id] = _Pending(req_id, msg, self.now() + self.boot.listen.request_timeout_s, done,
                                        failed)
        self.send(self.boot.node, msg)

    def _admin_create_topic(self, args: dict, ok: Callable, fail: Callable) -> None:
        spec = dict(args.get("spec") or {})
        if not isinstance(spec.get("name"), str):
            fail(400, "bad_request", "a topic needs a name: tenant/product/component/topic")
            return
        live = max(1, len(self.nodes))
        spec.setdefault("shards", 1)
        spec.setdefault("replication_factor", min(3, live))
        try:
            parsed = TopicSpec.from_json({**TopicSpec(spec["name"]).to_json(), **spec})
        except (ValueError, TypeError) as exc:
            fail(400, "bad_request", str(exc))
            return
        if parsed.replication_factor > live:
            fail(400, "bad_request", f"replication_factor {parsed.replication_factor} exceeds the "
                                     f"{live} node(s) of the cluster")
            return
        name = str(parsed.name)
        if name in self.topics:
            fail(409, "conflict", f"topic {name!r} already exists")
            return
        self._topic_call(CreateTopic(self.client, 0, parsed.to_json()), ok, fail,
                         lambda: self._topic_json(self.topics[name]) if name in self.topics else None)

    def _admin_alter_topic(self, args: dict, ok: Callable, fail: Callable) -> None:
        name, changes = args.get("name", ""), dict(args.get("changes") or {})
        spec = self._known_topic(name, fail)
        if spec is None:
            return
        try:
            wanted = TopicSpec.from_json(spec).alter(**changes)
        except (ValueError, TypeError) as exc:
            fail(400, "bad_request", str(exc))
            return
        target = wanted.to_json()

        def applied() -> dict | None:
            cur = self.topics.get(name)
            if cur is not None and all(cur.get(k) == v for k, v in target.items()):
                return self._topic_json(cur)
            return None

        self._topic_call(AlterTopic(self.client, 0, name, changes), ok, fail, applied)

    def _admin_delete_topic(self, args: dict, ok: Callable, fail: Callable) -> None:
        name = args.get("name", "")
        spec = self._known_topic(name, fail)
        if spec is None:
            return
        gone = self._topic_json(spec)
        self._topic_call(DeleteTopic(self.client, 0, name), ok, fail,
                         lambda: {"deleted": gone} if name not in self.topics else None)

    def _admin_lookup(self, args: dict, ok: Callable, fail: Callable) -> None:
        topic = args.get("topic", "")
        spec = self._known_topic(topic, fail)
        if spec is None:
            return
        out = []
        for i in range(int(spec.get("shards", 1))):
            shard = self._group_shard(topic, i) or f"{topic}#{i}"  # the current group's
            plan = self.plans.get(shard) or {}
            leader = plan.get("leader") or ""
            info = self.nodes.get(leader, {})
            out.append({"index": i, "shard": shard, "leader": leader, "epoch": int(plan.get("epoch", 0)),
                        "client": info.get("client", ""), "http": info.get("http", "")})
        ok(out)

    def _admin_produce(self, args: dict, ok: Callable, fail: Callable) -> None:
        topic = args.get("topic", "")
        spec = self._known_topic(topic, fail)
        if spec is None:
            return
        records = args.get("records") or []
        if not isinstance(records, list) or not 1 <= len(records) <= HTTP_RECORDS_MAX:
            fail(400, "bad_request", f"records must be a list of 1 to {HTTP_RECORDS_MAX} records")
            return
        level = args.get("level") or "quorum"
        if level not in ("any", "one", "quorum", "all"):
            fail(400, "bad_request", f"level must be any, one, quorum or all, not {level!r}")
            return
        n = int(spec.get("shards", 1))
        index = args.get("shard")
        try:
            recs = [Record(_b(r.get("key")) if r.get("key") is not None else None, _b(r.get("value", "")),
                           tuple((str(k), _b(v)) for k, v in (r.get("headers") or {}).items()),
                           int(self.wall() * 1000)) for r in records]
        except (AttributeError, TypeError, ValueError) as exc:
            fail(400, "bad_request", f"bad record: {exc}")
            return
        if index is None:
            from protocol.hashing import shard_for_key

            first_key = recs[0].key
            index = shard_for_key(first_key, n) if first_key is not None else self.rr.next(n)
        if not isinstance(index, int) or not 0 <= index < n:
            fail(404, "not_found", f"topic {topic!r} has {n} shards; there is no shard {index}")
            return
        try:
            batch = encode_batch(recs)
        except ValueError as exc:
            fail(400, "bad_request", str(exc))
            return

        def done(reply: ProduceReply) -> None:
            ok({"topic": topic, "shard": index, "base_offset": reply.base_offset, "count": len(recs),
                "level": reply.level or level})

        tries = int(args.get("_group_tries", 0))

        def failed(code: Any, text: str) -> None:
            if text.startswith(GROUP_CLOSED) and tries < GROUP_RETRIES_MAX:  # truncated: to the current group
                self.after_poll.append(lambda: self._admin_produce({**args, "_group_tries": tries + 1}, ok, fail))
                return
            _c, status, slug = _classify(text)
            fail(status, slug, text)

        shard = self._group_shard(topic, index)
        if shard is None:
            fail(503, "unavailable", f"topic {topic!r} has no shard group for now yet; retry")
            return
        try:
            self._produce(shard, batch, level, 0, 0, self.boot.listen.request_timeout_s, done, failed)
        except Refusal as r:
            fail(r.status, r.slug, r.message)

    def _admin_fetch(self, args: dict, ok: Callable, fail: Callable) -> None:
        topic, index = args.get("topic", ""), args.get("shard", 0)
        spec = self._known_topic(topic, fail)
        if spec is None:
            return
        if not isinstance(index, int) or not 0 <= index < int(spec.get("shards", 1)):
            fail(404, "not_found", f"topic {topic!r} has no shard {index}")
            return
        offset = int(args.get("offset") or 0)
        at = self._group_at(topic, index, args.get("group"), fail)  # (group id, shard name) on a grouped topic
        if at is False:
            return

        def done(reply: ReadShardReply) -> None:
            out = []
            for b in reply.batches:
                _h, recs = decode_batch(b)
                for r in recs:
                    if r.offset < offset or is_control(r):
                        continue
                    out.append(_record_json(r))
            res = {"topic": topic, "shard": index, "high_watermark": reply.hw, "records": out}
            if at is not None:
                res.update(group=at[0], shard_id=int(at[1].rpartition("#")[2]))
            ok(res)

        def failed(code: Any, text: str) -> None:
            _c, status, slug = _classify(text)
            fail(status, slug, text)

        self._read(at[1] if at is not None else f"{topic}#{index}", offset,
                   int(args.get("max_bytes") or (1 << 20)), 0.0, done, failed)

    def _admin_subscriptions(self, args: dict, ok: Callable, fail: Callable) -> None:
        def done(shards: list[str], info: dict[str, dict]) -> None:
            out = []
            for shard in shards:
                st = info.get(shard, {})
                hw = st.get("hw")
                for sub in st.get("subscriptions", ()):
                    out.append({"subscription": sub["subscription"], "mode": sub["mode"],
                                "shard": int(shard.rpartition("#")[2]), "committed": sub["committed"],
                                "high_watermark": hw,
                                "lag": max(0, hw - sub["committed"]) if isinstance(hw, int) else None,
                                "consumers": [c.split("@")[0] for c in sub["consumers"]]})
            ok(out)

        self._topic_info(args.get("topic", ""), True, fail, done)

    def _admin_namespaces(self, args: dict, ok: Callable, fail: Callable) -> None:
        tree: dict[str, dict[str, list[str]]] = {}
        paths = set(self.namespaces)
        for t in self.topics:
            tenant, product, component, _ = t.split("/")
            paths.add(f"{tenant}/{product}/{component}")
        for p in sorted(paths):
            parts = p.split("/")
            products = tree.setdefault(parts[0], {})
            if len(parts) > 1:
                comps = products.setdefault(parts[1], [])
                if len(parts) > 2 and parts[2] not in comps:
                    comps.append(parts[2])
        ok({"tenants": tree})

    def _ns_check(self, path: str) -> str | None:
        parts = path.strip("/").split("/")
        if not 1 <= len(parts) <= 3:
            return "a namespace is tenant, tenant/product or tenant/product/component"
        try:
            TopicName.parse("/".join(parts + ["x"] * (4 - len(parts))))
        except ValueError as exc:
            return str(exc)
        return None

    def _admin_create_namespace(self, args: dict, ok: Callable, fail: Callable) -> None:
        path = str(args.get("path", "")).strip("/")
        err = self._ns_check(path)
        if err:
            fail(400, "bad_request", err)
            return

        def done(reply: AgencyReply) -> None:
            if reply.status == "ok":
                self.namespaces.add(path)
                ok({"namespace": path})
            else:
                fail(503, "unavailable", f"agency: {reply.error or reply.status}")

        self._agency(Txn((Mutation(f"{NAMESPACES_ROOT}/{path}/.ns", "set", True),)), done)

    def _admin_delete_namespace(self, args: dict, ok: Callable, fail: Callable) -> None:
        path = str(args.get("path", "")).strip("/")
        err = self._ns_check(path)
        if err:
            fail(400, "bad_request", err)
            return
        inside = [t for t in self.topics if t.startswith(path + "/")]
        if inside:
            fail(409, "conflict", f"namespace {path!r} still holds {len(inside)} topic(s), e.g. {inside[0]!r}")
            return
        if path not in self.namespaces and not any(n.startswith(path + "/") for n in self.namespaces):
            fail(404, "not_found", f"namespace {path!r} does not exist")
            return

        def done(reply: AgencyReply) -> None:
            if reply.status == "ok":
                self.namespaces = {n for n in self.namespaces if n != path and not n.startswith(path + "/")}
                ok({"deleted": path})
            else:
                fail(503, "unavailable", f"agency: {reply.error or reply.status}")

        self._agency(Txn((Mutation(f"{NAMESPACES_ROOT}/{path}", "delete"),),
                         (Precondition(f"{NAMESPACES_ROOT}/{path}", "present"),)), done)


# ---------------------------------------------------------------- helpers
def _walk_topics(tree: Any, depth: int = 0) -> list[tuple[str, dict]]:
    if not isinstance(tree, dict):
        return []
    if depth == 4 or ("name" in tree and "shards" in tree):
        return [(tree["name"], tree)] if "name" in tree else []
    out = []
    for k in sorted(tree):
        out.extend(_walk_topics(tree[k], depth + 1))
    return out


def _walk_namespaces(tree: Any, parts: tuple[str, ...] = ()) -> list[str]:
    if not isinstance(tree, dict):
        return []
    out = []
    for k in sorted(tree):
        if k == ".ns":
            out.append("/".join(parts))
        else:
            out.extend(_walk_namespaces(tree[k], parts + (k,)))
    return out


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        return "", 0


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _text(data: bytes | None) -> tuple[Any, bool]:
    if data is None:
        return None, False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), True


def _record_json(r: Record) -> dict:
    key, kb64 = _text(r.key)
    value, vb64 = _text(r.payload)
    out = {"offset": r.offset, "key": key, "value": value,
           "headers": {k: _text(v)[0] for k, v in r.headers}, "timestamp_ms": r.producer_ts_ms}
    if kb64 or vb64:
        out["encoding"] = "base64"
    return out
