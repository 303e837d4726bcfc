"""The Python client library (runtime/client.py) against an in-process fake node.

:class:`FakeNode` speaks the client protocol (protocol/frames.py) on
127.0.0.1 with an in-memory log per (topic, shard), and implements the
node-side semantics the client relies on: idempotent produce with the last
batch remembered per (producer id, shard), OUT_OF_ORDER_SEQUENCE for gaps,
fetch, durable subscriptions with Delivery pushes paced by a window of
unacknowledged records, ack and nack.  Fault knobs inject errors, dropped
connections and delays.  It is kept self-contained so other tests can reuse
it.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, Mapping

import pytest

from protocol import frames as fr
from protocol.consume import Mode
from protocol.frames import ErrorCode, Level, Limits
from protocol.hashing import shard_for_key
from protocol.records import CONTROL_HEADER, CorruptBatch, Record, decode_batch, encode_batch, read_header, rebase
from runtime.client import (
    AsyncClient, AsyncConsumer, AsyncProducer, ChorusConnectionError, ChorusError, Client, Consumer, Message,
    Producer, RecordMetadata,
)

TOPIC = "acme/shop/web/orders"


# =============================================================================
# FakeNode: an in-process stand-in for a node's client port
# =============================================================================


@dataclass
class _ProducerSeq:
    """Idempotence state of one (producer id, topic, shard)."""

    next_sequence: int
    last_sequence: int
    last_base_offset: int
    last_count: int


@dataclass(eq=False)
class _FakeConn:
    writer: asyncio.StreamWriter
    node: "FakeNode"
    closed: bool = False
    in_flight: int = 0  # requests received and not yet answered

    def send(self, msg: fr.Message, corr: int) -> None:
        if self.closed:
            return
        version = fr.BASE_VERSION if isinstance(msg, (fr.HandshakeOk, fr.ErrorResponse)) else 1
        self.writer.write(fr.encode_frame(msg, corr, version=version))

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()


@dataclass(eq=False)
class _Attached:
    consumer_id: str
    conn: _FakeConn
    corr: int  # correlation id of the latest SubscribeRequest
    last_seen: float


@dataclass(eq=False)
class _FakeSub:
    topic: str
    name: str
    mode: Mode
    consumers: dict[str, _Attached] = field(default_factory=dict)  # attach order: first is active
    next_offset: Counter = field(default_factory=Counter)  # shard -> next never-delivered offset
    unacked: dict[tuple[int, int], str] = field(default_factory=dict)  # (shard, offset) -> consumer
    redeliver: deque = field(default_factory=deque)  # (shard, offset) to deliver again
    delivered: set = field(default_factory=set)  # (shard, offset) delivered at least once
    acked: set = field(default_factory=set)
    next_shard: int = 0
    next_consumer: int = 0


class FakeClusterState:
    """What the nodes of one fake cluster share: topics, logs, producer
    sequences, subscriptions and counters.  Two :class:`FakeNode` objects with
    the same state behave like two nodes of one cluster (routing is node-side)."""

    def __init__(self, topics: Mapping[str, int], window: int, consumer_timeout_s: float) -> None:
        self.topics = dict(topics)
        self.window = window
        self.consumer_timeout_s = consumer_timeout_s
        self.batches: dict[tuple[str, int], list[bytes]] = {}
        self.records: dict[tuple[str, int], list[Record]] = {}
        self.producers: dict[tuple[int, str, int], _ProducerSeq] = {}
        self.subs: dict[tuple[str, str], _FakeSub] = {}
        self.produce_requests: list[fr.ProduceRequest] = []  # every produce received, in order
        self.produce_answers: list[fr.Message] = []  # every answer sent to a produce, in order
        self.ack_requests: list[fr.AckRequest] = []
        self.subscribe_requests: list[fr.SubscribeRequest] = []
        self.metadata_requests = 0
        self.heartbeats = 0
        self.duplicates = 0
        self.in_flight: Counter = Counter()  # (topic, shard) -> produces being processed
        self.max_in_flight: Counter = Counter()
        self.max_in_flight_total = 0
        self.max_connection_in_flight = 0  # most requests outstanding on one connection
        self.largest_frame = 0  # bytes of the largest frame received
        self.appended = asyncio.Event()

    # -- the log

    def values(self, topic: str, shard: int) -> list[bytes]:
        return [r.payload for r in self.records.get((topic, shard), [])]

    def apply_produce(self, req: fr.ProduceRequest) -> fr.Message:
        """Append (or recognise a retry of) a produce; the answer to send."""
        n = self.topics.get(req.topic)
        if n is None:
            return fr.ErrorResponse(code=ErrorCode.UNKNOWN_TOPIC, message=f"no topic {req.topic}")
        if req.shard >= n:
            return fr.ErrorResponse(code=ErrorCode.UNKNOWN_SHARD, message=f"{req.topic} has {n} shards")
        try:
            header, recs = decode_batch(req.batch)
        except CorruptBatch as e:
            return fr.ErrorResponse(code=ErrorCode.INVALID_REQUEST, message=f"bad batch: {e}")
        if header.producer_id != req.producer_id or header.base_sequence != req.sequence:
            return fr.ErrorResponse(code=ErrorCode.INVALID_REQUEST, message="batch header disagrees with request")
        key = (req.topic, req.shard)
        log = self.records.setdefault(key, [])
        pkey = (req.producer_id, req.topic, req.shard)
        seq = self.producers.get(pkey) if req.producer_id else None
        if req.producer_id:
            if seq is not None and req.sequence == seq.last_sequence and len(recs) == seq.last_count:
                self.duplicates += 1
                return fr.ProduceResponse(base_offset=seq.last_base_offset, level_met=req.level, duplicate=True)
            expected = seq.next_sequence if seq is not None else 0
            if req.sequence != expected:
                code = (ErrorCode.DUPLICATE_SEQUENCE if seq is not None and req.sequence < seq.last_sequence
                        else ErrorCode.OUT_OF_ORDER_SEQUENCE)
                return fr.ErrorResponse(code=code, message=f"expected sequence {expected}, got {req.sequence}")
        base = len(log)
        stored = rebase(req.batch, base, 1, int(time.time() * 1000))
        self.batches.setdefault(key, []).append(stored)
        log.extend(decode_batch(stored)[1])
        if req.producer_id:
            self.producers[pkey] = _ProducerSeq(req.sequence + len(recs), req.sequence, base, len(recs))
        self.appended.set()
        self.appended = asyncio.Event()
        for sub in list(self.subs.values()):
            if sub.topic == req.topic:
                self.pump(sub)
        return fr.ProduceResponse(base_offset=base, level_met=req.level)

    def append_control(self, topic: str, shard: int) -> int:
        """Append a control record (one the broker writes itself); its offset."""
        batch = encode_batch([Record(None, b"", ((CONTROL_HEADER, b"epoch-start"),))])
        return self.apply_produce(fr.ProduceRequest(topic=topic, shard=shard, batch=batch)).base_offset

    # -- subscriptions

    def pump(self, sub: _FakeSub) -> None:
        """Deliver what the window allows."""
        consumers = [c for c in sub.consumers.values() if not c.conn.closed]
        if not consumers:
            return
        targets = consumers if sub.mode is Mode.SHARED else consumers[:1]
        shards = self.topics[sub.topic]
        out: dict[tuple[int, int], tuple[_Attached, list[fr.DeliveredRecord]]] = {}
        while len(sub.unacked) < self.window:
            item = None
            while sub.redeliver and item is None:
                candidate = sub.redeliver.popleft()
                if candidate not in sub.acked and candidate not in sub.unacked:
                    item = candidate
            if item is None:
                for i in range(shards):
                    shard = (sub.next_shard + i) % shards
                    if sub.next_offset[shard] < len(self.records.get((sub.topic, shard), [])):
                        item = (shard, sub.next_offset[shard])
                        sub.next_offset[shard] += 1
                        sub.next_shard = shard + 1
                        break
            if item is None:
                break
            target = targets[sub.next_consumer % len(targets)]
            sub.next_consumer += 1
            shard, offset = item
            record = fr.DeliveredRecord(offset=offset, redelivery=item in sub.delivered,
                                        payload=self.records[(sub.topic, shard)][offset].payload)
            sub.delivered.add(item)
            sub.unacked[item] = target.consumer_id
            out.setdefault((id(target), shard), (target, []))[1].append(record)
        for (_, shard), (target, recs) in out.items():
            target.conn.send(fr.Delivery(topic=sub.topic, shard=shard, subscription=sub.name, records=recs),
                             target.corr)

    def detach(self, sub: _FakeSub, consumer_id: str) -> None:
        """Forget a consumer: what it holds unacknowledged is delivered again."""
        sub.consumers.pop(consumer_id, None)
        held = sorted(item for item, cid in sub.unacked.items() if cid == consumer_id)
        for item in held:
            del sub.unacked[item]
        sub.redeliver.extendleft(reversed(held))
        self.pump(sub)

    def subscribe(self, conn: _FakeConn, corr: int, req: fr.SubscribeRequest) -> fr.Message:
        self.subscribe_requests.append(req)
        if req.topic not in self.topics:
            return fr.ErrorResponse(code=ErrorCode.UNKNOWN_TOPIC, message=f"no topic {req.topic}")
        sub = self.subs.get((req.topic, req.subscription))
        if sub is None:
            sub = self.subs[(req.topic, req.subscription)] = _FakeSub(req.topic, req.subscription, req.mode)
        if sub.mode is Mode.EXCLUSIVE and any(cid != req.consumer_id for cid in sub.consumers):
            return fr.ErrorResponse(code=ErrorCode.SUBSCRIPTION_BUSY,
                                    message=f"subscription {req.subscription} already has a consumer")
        now = time.monotonic()
        att = sub.consumers.get(req.consumer_id)
        if att is None:
            sub.consumers[req.consumer_id] = _Attached(req.consumer_id, conn, corr, now)
        else:
            if att.conn is not conn:  # re-attached on a new connection: a new session
                held = sorted(item for item, cid in sub.unacked.items() if cid == req.consumer_id)
                for item in held:
                    del sub.unacked[item]
                sub.redeliver.extendleft(reversed(held))
            att.conn, att.corr, att.last_seen = conn, corr, now
        active = sub.mode is not Mode.FAILOVER or next(iter(sub.consumers)) == req.consumer_id
        return fr.SubscribeResponse(active=active)

    def ack(self, req: fr.AckRequest) -> fr.Message:
        self.ack_requests.append(req)
        sub = self.subs.get((req.topic, req.subscription))
        if sub is None:
            return fr.ErrorResponse(code=ErrorCode.INVALID_REQUEST, message="no such subscription")
        for offset in req.offsets:
            item = (req.shard, offset)
            if sub.unacked.get(item) != req.consumer_id:
                continue
            del sub.unacked[item]
            if req.nack:
                sub.redeliver.append(item)
            else:
                sub.acked.add(item)
        return fr.AckResponse()

    def acked(self, topic: str, subscription: str) -> set[tuple[int, int]]:
        sub = self.subs.get((topic, subscription))
        return set(sub.acked) if sub is not None else set()

    def expire_consumers(self) -> None:
        now = time.monotonic()
        for sub in list(self.subs.values()):
            for cid, att in list(sub.consumers.items()):
                if att.conn.closed or now - att.last_seen > self.consumer_timeout_s:
                    self.detach(sub, cid)


class FakeNode:
    """An in-process fake of a Chorus node's client port, for client tests.

    ``FakeNode({topic: shards}, window=64)``; ``await node.start()`` (or
    ``async with``) listens on 127.0.0.1 on a free port, ``node.address`` is
    ``"127.0.0.1:<port>"``.  For blocking clients, ``with node.in_thread():``
    runs it on its own event loop thread.  ``node.peer()`` is a second node
    of the same fake cluster (same logs and subscriptions).

    Fault knobs (consumed by the produce requests that follow, in order):
    ``fail_produces(k, code, apply=False)`` answers ``code`` (after
    appending, with ``apply``); ``drop_produces(k, apply=True, after=0)``
    lets ``after`` produces through, then closes the connection on the next
    ``k`` without answering (appending first with ``apply``);
    ``delay_s`` delays every answer; ``forget_producers()`` loses the
    idempotence state; ``drop_connections()`` closes every client
    connection now; ``password`` requires that password.
    """

    def __init__(self, topics: Mapping[str, int] | None = None, *, window: int = 64, limits: Limits | None = None,
                 node_id: str = "fake-1", cluster_id: str = "fake-cluster", consumer_timeout_s: float = 3.0,
                 state: FakeClusterState | None = None) -> None:
        self.state = state or FakeClusterState(topics or {TOPIC: 1}, window, consumer_timeout_s)
        self.limits = limits or Limits()
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.delay_s = 0.0
        self.password: str | None = None
        self.connections_accepted = 0
        self.handshakes: list[fr.Handshake] = []
        self._plan: deque = deque()
        self._conns: set[_FakeConn] = set()
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self._housekeeping: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- shortcuts into the shared state

    def __getattr__(self, name: str) -> Any:
        if name == "state":
            raise AttributeError(name)
        return getattr(self.state, name)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def peer(self, node_id: str = "fake-2") -> "FakeNode":
        return FakeNode(state=self.state, limits=self.limits, node_id=node_id, cluster_id=self.cluster_id)

    # -- fault knobs

    def fail_produces(self, count: int, code: ErrorCode, *, apply: bool = False) -> None:
        self._plan.extend([("error", code, apply)] * count)

    def drop_produces(self, count: int = 1, *, apply: bool = True, after: int = 0) -> None:
        self._plan.extend([None] * after)
        self._plan.extend([("drop", None, apply)] * count)

    def clear_faults(self) -> None:
        self._plan.clear()

    def forget_producers(self) -> None:
        self.state.producers.clear()

    def drop_connections(self) -> None:
        for conn in list(self._conns):
            conn.abort()

    # -- lifecycle

    async def start(self) -> "FakeNode":
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._housekeeping = asyncio.create_task(self._expire_loop())
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        tasks = list(self._tasks) + ([self._housekeeping] if self._housekeeping else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "FakeNode":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator["FakeNode"]:
        """Run the node on an event loop in a thread named ``fake-node``."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-node", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start_in_loop(), loop).result(5)
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()

    async def _start_in_loop(self) -> None:
        self.state.appended = asyncio.Event()  # bind to this loop
        await self.start()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the node's loop (from another thread) and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.state.expire_consumers()

    # -- serving one connection

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        conn = _FakeConn(writer, self)
        self._conns.add(conn)
        decoder = fr.FrameDecoder(self.limits.frame_bytes_max, accept=fr.REQUEST_TYPES)
        handshaken = False
        session_s = self.limits.session_timeout_ms / 1000 or None
        try:
            while not conn.closed:
                try:
                    async with asyncio.timeout(session_s):
                        data = await reader.read(1 << 16)
                except TimeoutError:
                    break  # session timeout: no frame for too long
                if not data:
                    break
                try:
                    frames = decoder.feed(data)
                except fr.ProtocolError as e:
                    writer.write(e.response())
                    break
                for frame in frames:
                    self.state.largest_frame = max(self.state.largest_frame,
                                                   len(fr.encode_frame(frame.message, frame.correlation_id)))
                    if not handshaken:
                        if not self._handshake(conn, frame):
                            return
                        handshaken = True
                        continue
                    conn.in_flight += 1
                    self.state.max_connection_in_flight = max(self.state.max_connection_in_flight, conn.in_flight)
                    self._spawn(self._handle(conn, frame.correlation_id, frame.message))
        except (ConnectionError, OSError):
            pass
        finally:
            conn.closed = True
            self._conns.discard(conn)
            writer.close()
            for sub in list(self.state.subs.values()):
                for cid, att in list(sub.consumers.items()):
                    if att.conn is conn:
                        self.state.detach(sub, cid)

    def _handshake(self, conn: _FakeConn, frame: fr.Frame) -> bool:
        msg = frame.message
        if not isinstance(msg, fr.Handshake):
            conn.send(fr.ErrorResponse(code=ErrorCode.HANDSHAKE_REQUIRED, message="handshake first"),
                      frame.correlation_id)
            return False
        self.handshakes.append(msg)
        if self.password is not None and msg.password != self.password:
            conn.send(fr.ErrorResponse(code=ErrorCode.AUTH_FAILED, message="bad credentials"), frame.correlation_id)
            return False
        try:
            version = fr.negotiate_version(msg.versions)
        except fr.ProtocolError as e:
            conn.writer.write(e.response())
            return False
        conn.send(fr.HandshakeOk(node_id=self.node_id, cluster_id=self.cluster_id, version=version,
                                 limits=self.limits), frame.correlation_id)
        return True

    async def _handle(self, conn: _FakeConn, corr: int, msg: fr.Message) -> None:
        try:
            await self._answer(conn, corr, msg)
        finally:
            conn.in_flight -= 1

    async def _answer(self, conn: _FakeConn, corr: int, msg: fr.Message) -> None:
        st = self.state
        if isinstance(msg, fr.ProduceRequest):
            await self._produce(conn, corr, msg)
            return
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if isinstance(msg, fr.Heartbeat):
            st.heartbeats += 1
            conn.send(fr.HeartbeatResponse(), corr)
        elif isinstance(msg, fr.MetadataRequest):
            st.metadata_requests += 1
            names = msg.topics or tuple(st.topics)
            out = []
            for name in names:
                n = st.topics.get(name)
                if n is None:
                    out.append(fr.TopicMetadata(topic=name, error=ErrorCode.UNKNOWN_TOPIC))
                else:
                    out.append(fr.TopicMetadata(topic=name, shards=tuple(
                        fr.ShardMetadata(shard=i, leader=self.node_id, host="127.0.0.1", port=self.port, epoch=1)
                        for i in range(n))))
            conn.send(fr.MetadataResponse(topics=tuple(out)), corr)
        elif isinstance(msg, fr.FetchRequest):
            conn.send(await self._fetch(msg), corr)
        elif isinstance(msg, fr.SubscribeRequest):
            answer = st.subscribe(conn, corr, msg)
            conn.send(answer, corr)  # the answer goes out before any delivery
            sub = st.subs.get((msg.topic, msg.subscription))
            if sub is not None and isinstance(answer, fr.SubscribeResponse):
                st.pump(sub)
        elif isinstance(msg, fr.AckRequest):
            conn.send(st.ack(msg), corr)
            sub = st.subs.get((msg.topic, msg.subscription))
            if sub is not None:
                st.pump(sub)
        elif isinstance(msg, fr.CommitRequest):
            conn.send(fr.CommitResponse(), corr)
        else:
            conn.send(fr.ErrorResponse(code=ErrorCode.INVALID_REQUEST, message="not supported by the fake"), corr)

    async def _produce(self, conn: _FakeConn, corr: int, req: fr.ProduceRequest) -> None:
        st = self.state
        st.produce_requests.append(req)
        action = self._plan.popleft() if self._plan else None
        key = (req.topic, req.shard)
        st.in_flight[key] += 1
        st.max_in_flight[key] = max(st.max_in_flight[key], st.in_flight[key])
        st.max_in_flight_total = max(st.max_in_flight_total, sum(st.in_flight.values()))
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if len(req.batch) > self.limits.batch_bytes_max:
                answer: fr.Message = fr.ErrorResponse(code=ErrorCode.INVALID_REQUEST,
                                                      message=f"batch over {self.limits.batch_bytes_max} bytes")
            elif action is None:
                answer = st.apply_produce(req)
            else:
                kind, code, apply = action
                if apply:
                    st.apply_produce(req)
                if kind == "drop":
                    conn.abort()
                    return
                answer = fr.ErrorResponse(code=code, message="injected fault")
        finally:
            st.in_flight[key] -= 1
        st.produce_answers.append(answer)
        conn.send(answer, corr)

    async def _fetch(self, req: fr.FetchRequest) -> fr.Message:
        st = self.state
        n = st.topics.get(req.topic)
        if n is None:
            return fr.ErrorResponse(code=ErrorCode.UNKNOWN_TOPIC, message=f"no topic {req.topic}")
        if req.shard >= n:
            return fr.ErrorResponse(code=ErrorCode.UNKNOWN_SHARD, message=f"{req.topic} has {n} shards")
        key = (req.topic, req.shard)
        hw = len(st.records.get(key, []))
        if req.offset > hw:
            return fr.ErrorResponse(code=ErrorCode.INVALID_REQUEST, message=f"offset {req.offset} > {hw}")
        if req.offset == hw and req.max_wait_ms:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(req.max_wait_ms / 1000):
                    await st.appended.wait()
            hw = len(st.records.get(key, []))
        out: list[bytes] = []
        size = 0
        for batch in st.batches.get(key, []):
            header = read_header(batch, check_body=False)
            if header.end_offset <= req.offset:
                continue
            if out and size + len(batch) > req.max_bytes:
                break
            out.append(batch)
            size += len(batch)
        return fr.FetchResponse(high_watermark=hw, batches=tuple(out))


# =============================================================================
# helpers
# =============================================================================


def run(coro: Awaitable[Any], timeout_s: float = 15.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout_s):
            return await coro
    return asyncio.run(bounded())


def refused_address() -> str:
    """A 127.0.0.1 address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("chorus-")]


def assert_exactly_once(node: FakeNode, sent: Mapping[int, list[bytes]]) -> None:
    """Every shard's log is exactly the values sent to it, in order."""
    for shard, values in sent.items():
        assert node.values(TOPIC, shard) == values, f"shard {shard}"


def assert_retries_identical(node: FakeNode) -> None:
    """A (producer id, shard, sequence) was always sent with the same bytes."""
    seen: dict[tuple[int, int, int], bytes] = {}
    for req in node.produce_requests:
        k = (req.producer_id, req.shard, req.sequence)
        assert seen.setdefault(k, req.batch) == req.batch


# =============================================================================
# producer
# =============================================================================


def test_many_sends_become_few_batches_with_consecutive_sequences() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncProducer(node.address, linger_ms=30, batch_records_max=100) as p:
                futs = [p.send_nowait(TOPIC, b"v%d" % i) for i in range(500)]
                mds = await asyncio.gather(*futs)
            assert [m.offset for m in mds] == list(range(500))
            assert all(m.shard == 0 and m.topic == TOPIC and m.level is Level.QUORUM for m in mds)
            assert len(node.produce_requests) == 5
            assert [r.sequence for r in node.produce_requests] == [0, 100, 200, 300, 400]
            assert len({r.producer_id for r in node.produce_requests}) == 1
            assert node.produce_requests[0].producer_id != 0
            assert node.values(TOPIC, 0) == [b"v%d" % i for i in range(500)]
    run(body())


def test_linger_collects_records_sent_within_it() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncProducer(node.address, linger_ms=200) as p:
                await p.send(TOPIC, b"warm-up")  # metadata now cached
                start = time.monotonic()
                first = p.send_nowait(TOPIC, b"a")
                await asyncio.sleep(0.05)
                second = p.send_nowait(TOPIC, b"b")
                await asyncio.gather(first, second)
                elapsed = time.monotonic() - start
            assert 0.18 <= elapsed < 1.0
            assert len(node.produce_requests) == 2  # warm-up, then a and b together
            async with AsyncProducer(node.address, linger_ms=0) as p:
                start = time.monotonic()
                await p.send(TOPIC, b"c")
                await p.send(TOPIC, b"d")
                assert time.monotonic() - start < 0.35  # two sends lingering 200 ms would take 0.4 s
            assert node.values(TOPIC, 0) == [b"warm-up", b"a", b"b", b"c", b"d"]
    run(body())


def test_keys_route_by_shard_for_key_and_keyless_round_robin() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 4}) as node:
            async with AsyncProducer(node.address, linger_ms=1) as p:
                keyed = await asyncio.gather(*(p.send(TOPIC, b"k%d" % i, key=b"key-%d" % i) for i in range(40)))
                keyless = await asyncio.gather(*(p.send(TOPIC, b"n%d" % i) for i in range(8)))
            for i, md in enumerate(keyed):
                assert md.shard == shard_for_key(b"key-%d" % i, 4)
                assert node.records[(TOPIC, md.shard)][md.offset].key == b"key-%d" % i
            assert Counter(md.shard for md in keyless) == {0: 2, 1: 2, 2: 2, 3: 2}
            assert [md.shard for md in keyless[:4]] == [(keyless[0].shard + i) % 4 for i in range(4)]
    run(body())


def test_headers_and_levels_travel_and_levels_batch_separately() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncProducer(node.address, linger_ms=20, level="one") as p:
                futs = [p.send_nowait(TOPIC, b"a", headers={"h": b"1"}),
                        p.send_nowait(TOPIC, b"b"),
                        p.send_nowait(TOPIC, b"c", level="all"),
                        p.send_nowait(TOPIC, b"d", level=Level.ALL)]
                mds = await asyncio.gather(*futs)
            assert [m.level for m in mds] == [Level.ONE, Level.ONE, Level.ALL, Level.ALL]
            assert [(r.level, r.sequence) for r in node.produce_requests] == [(Level.ONE, 0), (Level.ALL, 2)]
            assert node.records[(TOPIC, 0)][0].headers == (("h", b"1"),)
    run(body())


def test_not_leader_is_retried_without_loss_or_duplicates() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 2}) as node:
            node.fail_produces(3, ErrorCode.NOT_LEADER)
            async with AsyncProducer(node.address, linger_ms=2, batch_records_max=10) as p:
                sent: dict[int, list[bytes]] = {0: [], 1: []}
                futs = []
                for i in range(100):
                    key = b"user-%d" % (i % 7)
                    sent[shard_for_key(key, 2)].append(b"v%d" % i)
                    futs.append(p.send_nowait(TOPIC, b"v%d" % i, key=key))
                mds = await asyncio.gather(*futs)
            assert_exactly_once(node, sent)
            assert_retries_identical(node)
            for md in mds:
                assert node.records[(TOPIC, md.shard)][md.offset].payload in sent[md.shard]
            assert sum(isinstance(a, fr.ErrorResponse) for a in node.produce_answers) == 3
    run(body())


def test_connection_drop_after_append_is_retried_as_duplicate() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            node.drop_produces(2, apply=True, after=1)
            async with AsyncProducer(node.address, linger_ms=1, batch_records_max=5) as p:
                futs = [p.send_nowait(TOPIC, b"v%d" % i) for i in range(20)]
                mds = await asyncio.gather(*futs)
            assert node.connections_accepted >= 3
            assert node.duplicates >= 1
            assert_exactly_once(node, {0: [b"v%d" % i for i in range(20)]})
            assert [m.offset for m in mds] == list(range(20))
            assert_retries_identical(node)
    run(body())


def test_timeout_after_append_answers_duplicate_as_success() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            node.fail_produces(1, ErrorCode.TIMEOUT, apply=True)
            async with AsyncProducer(node.address) as p:
                md = await p.send(TOPIC, b"once")
                md2 = await p.send(TOPIC, b"twice")
            assert (md.offset, md2.offset) == (0, 1)
            assert node.values(TOPIC, 0) == [b"once", b"twice"]
            dup = [a for a in node.produce_answers if isinstance(a, fr.ProduceResponse) and a.duplicate]
            assert len(dup) == 1 and dup[0].base_offset == 0
    run(body())


def test_out_of_order_sequence_fails_and_producer_recovers() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncProducer(node.address, linger_ms=0) as p:
                await p.send(TOPIC, b"first")
                node.forget_producers()  # the node now expects sequence 0 from this producer id
                with pytest.raises(ChorusError) as err:
                    await p.send(TOPIC, b"second")
                assert err.value.code is ErrorCode.OUT_OF_ORDER_SEQUENCE
                assert not err.value.retriable
                await p.send(TOPIC, b"third")
            first, second, third = node.produce_requests
            assert (first.sequence, second.sequence, third.sequence) == (0, 1, 0)
            assert third.producer_id != first.producer_id
            assert node.values(TOPIC, 0) == [b"first", b"third"]
    run(body())


def test_delivery_timeout_fails_the_batch_and_everything_queued_behind_it() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            node.fail_produces(1000, ErrorCode.NOT_LEADER)
            async with AsyncProducer(node.address, linger_ms=0, batch_records_max=1, delivery_timeout_s=0.4) as p:
                futs = [p.send_nowait(TOPIC, b"v%d" % i) for i in range(3)]
                results = await asyncio.gather(*futs, return_exceptions=True)
                assert all(isinstance(r, ChorusError) for r in results)
                assert results[0].code is ErrorCode.NOT_LEADER and "delivery timeout" in results[0].message
                assert {r.sequence for r in node.produce_requests} == {0}  # only the first batch was ever sent
                node.clear_faults()
                md = await p.send(TOPIC, b"later")
            assert md.offset == 0
            last = node.produce_requests[-1]
            assert last.sequence == 0 and last.producer_id != node.produce_requests[0].producer_id
            assert p.buffered_bytes == 0
    run(body())


def test_unknown_topic_is_a_clear_error() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncProducer(node.address) as p:
                with pytest.raises(ChorusError, match="topic 'acme/shop/web/nope' does not exist") as err:
                    await p.send("acme/shop/web/nope", b"x")
                assert err.value.code is ErrorCode.UNKNOWN_TOPIC
                assert p.pending == 0
            async with AsyncClient(node.address) as c:
                with pytest.raises(ChorusError, match="does not exist"):
                    await c.metadata("acme/shop/web/nope")
    run(body())


def test_unknown_shard_refreshes_metadata_and_retries() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 2}) as node:
            async with AsyncProducer(node.address) as p:
                await p.send(TOPIC, b"a", key=b"k")
                before = node.metadata_requests
                node.fail_produces(1, ErrorCode.UNKNOWN_SHARD)
                md = await p.send(TOPIC, b"b", key=b"k")
            assert node.metadata_requests > before
            assert node.values(TOPIC, md.shard) == [b"a", b"b"]
    run(body())


def test_shards_are_pipelined_with_one_batch_in_flight_each() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 4}) as node:
            node.delay_s = 0.05
            async with AsyncProducer(node.address, linger_ms=0, batch_records_max=5) as p:
                keys = [b"key-%d" % i for i in range(40)]
                start = time.monotonic()
                await asyncio.gather(*(p.send(TOPIC, b"v", key=k) for k in keys))
                elapsed = time.monotonic() - start
            assert set(node.max_in_flight.values()) == {1}
            assert node.max_in_flight_total >= 2
            assert elapsed < len(node.produce_requests) * node.delay_s
            for shard in range(4):
                seqs = [r.sequence for r in node.produce_requests if r.shard == shard]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    run(body())


def test_node_limits_are_respected() -> None:
    async def body() -> None:
        limits = Limits(frame_bytes_max=4096, batch_bytes_max=2048, max_in_flight=2)
        async with FakeNode({TOPIC: 4}, limits=limits) as node:
            node.delay_s = 0.02
            async with AsyncProducer(node.address, linger_ms=5, compression=False) as p:
                values = [bytes([i]) * 200 for i in range(60)]
                mds = await asyncio.gather(*(p.send(TOPIC, v, key=b"%d" % i) for i, v in enumerate(values)))
                with pytest.raises(ChorusError, match="exceeds the largest batch"):
                    await p.send(TOPIC, bytes(3000))
            assert node.largest_frame <= 4096
            assert max(len(r.batch) for r in node.produce_requests) <= 2048
            assert len(node.produce_requests) >= 8  # 60 x 200 bytes do not fit fewer batches
            assert node.max_connection_in_flight <= 2
            for md, value in zip(mds, values):
                assert node.records[(TOPIC, md.shard)][md.offset].payload == value
    run(body())


def test_buffer_bound_is_respected() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            node.delay_s = 0.03
            async with AsyncProducer(node.address, linger_ms=0, batch_records_max=4, buffer_bytes_max=4000) as p:
                await p.send(TOPIC, b"w")
                accepted = []
                with pytest.raises(ChorusError, match="buffer full"):
                    for _ in range(1000):
                        accepted.append(p.send_nowait(TOPIC, bytes(100)))
                assert 20 <= len(accepted) <= 40
                assert p.buffered_bytes <= 4000
                peak = 0

                async def watch() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, p.buffered_bytes)
                        await asyncio.sleep(0.001)
                watcher = asyncio.create_task(watch())
                more = await asyncio.gather(*(p.send(TOPIC, bytes(100)) for _ in range(100)))
                watcher.cancel()
                await asyncio.gather(*accepted)
                assert peak <= 4000
                assert len(more) == 100 and p.buffered_bytes == 0
            assert len(node.values(TOPIC, 0)) == 1 + len(accepted) + 100
        with pytest.raises(ChorusError, match="exceeds buffer_bytes_max"):
            async with FakeNode({TOPIC: 1}) as node:
                async with AsyncProducer(node.address, buffer_bytes_max=100) as p:
                    p.send_nowait(TOPIC, bytes(200))
    run(body())


def test_heartbeats_keep_an_idle_connection() -> None:
    async def body() -> None:
        limits = Limits(session_timeout_ms=300)
        async with FakeNode({TOPIC: 1}, limits=limits) as node:
            async with AsyncClient(node.address) as c:
                await asyncio.sleep(0.7)
                md = await c.metadata(TOPIC)
                assert c.node_id == "fake-1" and c.cluster_id == "fake-cluster"
            assert len(md.shards) == 1
            assert node.heartbeats >= 2
            assert node.connections_accepted == 1
    run(body())


def test_bootstrap_falls_back_to_the_next_address() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncProducer([refused_address(), node.address]) as p:
                md = await p.send(TOPIC, b"x")
            assert md.offset == 0 and node.connections_accepted == 1
            dead = [refused_address(), refused_address()]
            with pytest.raises(ChorusConnectionError, match="cannot connect to any of") as err:
                async with AsyncProducer(",".join(dead), connect_timeout_s=0.3):
                    pass
            assert dead[0] in err.value.message and dead[1] in err.value.message
    run(body())


def test_node_loss_moves_to_the_next_node_of_the_cluster() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 2}) as first:
            second = first.peer()
            async with second:
                async with AsyncProducer([first.address, second.address], linger_ms=1) as p:
                    sent: dict[int, list[bytes]] = {0: [], 1: []}
                    for round_ in range(2):
                        futs = []
                        for i in range(20):
                            value = b"r%d-%d" % (round_, i)
                            sent[shard_for_key(value, 2)].append(value)
                            futs.append(p.send_nowait(TOPIC, value, key=value))
                        await asyncio.gather(*futs)
                        if round_ == 0:
                            await first.stop()
                assert_exactly_once(first, sent)
                assert second.connections_accepted == 1
    run(body())


def test_auth_failure_is_not_retried() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            node.password = "secret"
            start = time.monotonic()
            with pytest.raises(ChorusError) as err:
                async with AsyncClient(node.address, username="u", password="wrong"):
                    pass
            assert err.value.code is ErrorCode.AUTH_FAILED
            assert time.monotonic() - start < 1.0 and node.connections_accepted == 1
            async with AsyncClient(node.address, username="u", password="secret") as c:
                assert len((await c.metadata(TOPIC)).shards) == 1
            assert node.handshakes[-1].auth is fr.Auth.PASSWORD
    run(body())


def test_fetch_reads_a_shard_back_in_order() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncProducer(node.address, linger_ms=0, batch_records_max=3) as p:
                await asyncio.gather(*(p.send(TOPIC, b"v%d" % i) for i in range(10)))
            assert node.append_control(TOPIC, 0) == 10
            async with AsyncProducer(node.address) as p:
                await p.send(TOPIC, b"v11")
            async with AsyncClient(node.address) as c:
                result = await c.fetch(TOPIC, 0, offset=4, max_bytes=1)
                assert result.records[0].offset == 4  # the batch started at 3: skipped
                assert result.high_watermark == 12
                every = await c.fetch_all(TOPIC, 0)
                assert [r.payload for r in every] == [b"v%d" % i for i in range(10)] + [b"v11"]
                assert [r.offset for r in every] == list(range(10)) + [11]
                control = await c.fetch(TOPIC, 0, offset=10, max_bytes=1)
                assert control.records == [] and control.next_offset == 11  # stepped over
                control = await c.fetch(TOPIC, 0, offset=10, max_bytes=1, include_control=True)
                assert [r.offset for r in control.records] == [10]
                tail = await c.fetch(TOPIC, 0, offset=12)
                assert tail.records == [] and tail.next_offset == 12
    run(body())


# =============================================================================
# consumer
# =============================================================================


async def produce(node: FakeNode, values: list[bytes], shards: int = 1) -> list[RecordMetadata]:
    async with AsyncProducer(node.address, linger_ms=1) as p:
        return await asyncio.gather(*(p.send(TOPIC, v, key=v if shards > 1 else None) for v in values))


def test_consumer_iterates_and_acks() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 2}) as node:
            mds = await produce(node, [b"m%d" % i for i in range(30)], shards=2)
            got: list[Message] = []
            async with AsyncConsumer(node.address, TOPIC, "billing", consumer_id="c1") as c:
                assert c.active
                async for msg in c:
                    got.append(msg)
                    if len(got) % 2:
                        msg.ack()
                    else:
                        await c.ack(msg)
                    if len(got) == 30:
                        break
                await c.flush_acks(2)
                assert await c.poll(0.05) is None
            assert {(m.shard, m.offset) for m in got} == {(md.shard, md.offset) for md in mds}
            for shard in (0, 1):
                offsets = [m.offset for m in got if m.shard == shard]
                assert offsets == sorted(offsets)
            assert not any(m.redelivery for m in got)
            assert node.acked(TOPIC, "billing") == {(md.shard, md.offset) for md in mds}
            assert len(node.ack_requests) < 30  # acknowledgements were batched
            assert all(r.consumer_id == "c1" for r in node.ack_requests)
    run(body())


def test_window_paces_delivery_until_acks() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}, window=5) as node:
            await produce(node, [b"m%d" % i for i in range(12)])
            async with AsyncConsumer(node.address, TOPIC, "s") as c:
                first = [await c.poll(1) for _ in range(5)]
                assert await c.poll(0.2) is None  # the window is full
                for m in first:
                    m.ack()
                rest = []
                for _ in range(7):
                    rest.append(await c.poll(1))
                    rest[-1].ack()
                assert [m.offset for m in first + rest] == list(range(12))
    run(body())


def test_nack_is_redelivered_flagged() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            await produce(node, [b"a", b"b"])
            async with AsyncConsumer(node.address, TOPIC, "s") as c:
                a = await c.poll(1)
                b = await c.poll(1)
                assert (a.value, a.redelivery, b.value) == (b"a", False, b"b")
                await a.nack()
                b.ack()
                again = await c.poll(1)
                assert (again.offset, again.value, again.redelivery) == (0, b"a", True)
                again.ack()
                await c.flush_acks(1)
            assert [r.nack for r in node.ack_requests if r.offsets == (0,)][0] is True
            assert node.acked(TOPIC, "s") == {(0, 0), (0, 1)}
    run(body())


def test_exclusive_subscription_busy_raises() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            async with AsyncConsumer(node.address, TOPIC, "s", mode="exclusive", consumer_id="one"):
                with pytest.raises(ChorusError) as err:
                    async with AsyncConsumer(node.address, TOPIC, "s", consumer_id="two"):
                        pass
                assert err.value.code is ErrorCode.SUBSCRIPTION_BUSY
            async with AsyncConsumer(node.address, TOPIC, "s", consumer_id="two") as c:  # free again
                assert c.active
    run(body())


def test_failover_standby_takes_over_and_shared_consumers_split() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}) as node:
            await produce(node, [b"a", b"b", b"c", b"d"])
            first = await AsyncConsumer(node.address, TOPIC, "f", mode="failover", keepalive_s=0.1).start()
            async with AsyncConsumer(node.address, TOPIC, "f", mode="failover", keepalive_s=0.1) as standby:
                assert first.active and not standby.active
                held = await first.poll(1)
                assert held.offset == 0
                await first.close()  # without acknowledging: the standby gets it again
                got = [await standby.poll(1) for _ in range(4)]
                assert [(m.offset, m.redelivery) for m in got][:1] == [(0, True)]
                assert sorted(m.offset for m in got) == [0, 1, 2, 3]
                await asyncio.sleep(0.3)
                assert standby.active
            async with AsyncConsumer(node.address, TOPIC, "sh", mode="shared") as one, \
                    AsyncConsumer(node.address, TOPIC, "sh", mode="shared") as two:
                await produce(node, [b"e", b"f"])
                seen: dict[str, list[int]] = {}
                for c in (one, two):
                    while (m := await c.poll(0.2)) is not None:
                        seen.setdefault(c.consumer_id, []).append(m.offset)
                        m.ack()
                assert len(seen) == 2  # both consumers received records
                assert sorted(sum(seen.values(), [])) == [0, 1, 2, 3, 4, 5]
    run(body())


def test_consumer_keeps_alive_and_reattaches_after_connection_loss() -> None:
    async def body() -> None:
        async with FakeNode({TOPIC: 1}, consumer_timeout_s=0.6) as node:
            await produce(node, [b"a", b"b", b"c"])
            async with AsyncConsumer(node.address, TOPIC, "s", keepalive_s=0.2) as c:
                first = [await c.poll(1) for _ in range(3)]
                first[0].ack()
                await c.flush_acks(1)
                await asyncio.sleep(1.0)  # longer than the consumer timeout: keep-alives hold the session
                assert await c.poll(0.05) is None
                node.drop_connections()
                again = [await c.poll(2) for _ in range(2)]
                assert [(m.offset, m.redelivery) for m in again] == [(1, True), (2, True)]
                for m in again:
                    m.ack()
            assert node.connections_accepted == 3  # the producer's, the consumer's and its reconnection
            assert node.acked(TOPIC, "s") == {(0, 0), (0, 1), (0, 2)}
    run(body())


# =============================================================================
# blocking API
# =============================================================================


def test_sync_producer_consumer_and_client_leave_no_thread() -> None:
    node = FakeNode({TOPIC: 2})
    with node.in_thread():
        with Producer(node.address, level="quorum", linger_ms=5) as p:
            futs = [p.send(TOPIC, b"v%d" % i, key=b"k%d" % (i % 3)) for i in range(50)]
            p.flush()
            mds = [f.result() for f in futs]
            assert client_threads() == ["chorus-client-producer"]
        lingering = Producer(node.address, linger_ms=10_000)
        late = lingering.send(TOPIC, b"sent on close")
        lingering.close()
        assert late.result(0).offset >= 0
        with Client(node.address) as c:
            assert len(c.metadata(TOPIC).shards) == 2
            stored = {s: [r.payload for r in c.fetch_all(TOPIC, s)] for s in (0, 1)}
        for shard in (0, 1):
            expected = [b"v%d" % i for i, md in enumerate(mds) if md.shard == shard]
            assert [v for v in stored[shard] if v != b"sent on close"] == expected
        got = []
        with Consumer(node.address, TOPIC, "sync-sub") as c:
            for msg in c:
                got.append(msg)
                msg.ack()
                if len(got) == 51:
                    break
            c.flush_acks(2)
            assert c.poll(0.05) is None
        assert len(node.call(lambda: node.acked(TOPIC, "sync-sub"))) == 51
    assert client_threads() == []


def test_sync_producer_reports_connection_errors() -> None:
    with pytest.raises(ChorusConnectionError, match="cannot connect to any of"):
        Producer(refused_address(), connect_timeout_s=0.2)
    assert client_threads() == []


def test_sync_record_futures_callbacks_and_failures() -> None:
    node = FakeNode({TOPIC: 2})
    with node.in_thread():
        with Producer(node.address, linger_ms=300, delivery_timeout_s=0.5) as p:
            with pytest.raises(ChorusError, match="does not exist") as err:
                p.send("acme/shop/web/nope", b"x")  # an unknown topic raises at once
            assert err.value.code is ErrorCode.UNKNOWN_TOPIC
            f = p.send(TOPIC, b"a", key=b"k")
            assert not f.done() and f.running() and not f.cancel()
            with pytest.raises(TimeoutError):
                f.result(0.01)  # still lingering
            seen: list[Any] = []
            f.add_done_callback(seen.append)
            assert seen == []
            md = f.result(5)  # the linger ends, the batch goes
            assert f.done() and f.exception() is None and seen == [f]
            assert (md.topic, md.shard, md.offset) == (TOPIC, shard_for_key(b"k", 2), 0)
            f.add_done_callback(seen.append)  # already settled: called at once
            assert seen == [f, f]
            node.call(lambda: node.fail_produces(1000, ErrorCode.NOT_LEADER))
            failed = [p.send(TOPIC, b"lost %d" % i, key=b"k") for i in range(3)]
            for g in failed:
                e = g.exception(5)
                assert isinstance(e, ChorusError) and e.code is ErrorCode.NOT_LEADER
                assert "delivery timeout" in e.message
                with pytest.raises(ChorusError):
                    g.result()
            assert p.buffered_bytes == 0
            node.call(node.clear_faults)
            assert p.send(TOPIC, b"b", key=b"k").result(5).offset == 1
    assert client_threads() == []


def test_sync_send_blocks_while_the_buffer_is_full() -> None:
    node = FakeNode({TOPIC: 1})
    with node.in_thread():
        node.call(lambda: node.fail_produces(1000, ErrorCode.NOT_LEADER))
        with Producer(node.address, linger_ms=0, buffer_bytes_max=1000, max_block_s=0.3,
                      delivery_timeout_s=10) as p:
            held = [p.send(TOPIC, bytes(100)) for _ in range(8)]  # 8 x 124 bytes fit
            start = time.monotonic()
            with pytest.raises(ChorusError, match="buffer full"):
                p.send(TOPIC, bytes(100))
            assert 0.25 <= time.monotonic() - start < 1.0
            assert p.buffered_bytes <= 1000
            # the node recovers: the held records are delivered and the blocked send gets room
            recovering = threading.Event()
            clear = threading.Timer(0.3, lambda: (recovering.set(), node.call(node.clear_faults)))
            clear.start()
            p.max_block_s = 5
            late = p.send(TOPIC, bytes(100))
            assert recovering.is_set()  # it returned only once the node recovered, however late that was
            assert [f.result(5).offset for f in held] == list(range(8))
            assert late.result(5).offset == 8
            clear.join()
    assert client_threads() == []
