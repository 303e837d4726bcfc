"""The asyncio producer (:class:`AsyncProducer`): batching per shard,
idempotent retries, flow control.  Documented in :mod:`runtime.client`."""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from protocol import frames as fr
from protocol.frames import ErrorCode, Level
from protocol.hashing import RoundRobin, shard_for_key
from protocol.records import (
    BATCH_BYTES_MAX, HEADER_BYTES as BATCH_HEADER_BYTES, RECORDS_PER_BATCH_MAX, Record, encode_batch,
)
from runtime.client_conn import (
    BACKOFF_MAX_S, BACKOFF_MIN_S, ChorusError, DEFAULT_PORT, METADATA_MAX_AGE_S, RESPONSE_GRACE_S,
    RecordMetadata, _AsyncContext, _BATCH_OVERHEAD, _Cluster, _FRAME_OVERHEAD, _HEADER_OVERHEAD,
    _RECORD_OVERHEAD, _U32_MAX, _backoff, _check_bytes, _new_producer_id, _normalize_headers, _retrieve,
)
from runtime.tls import client_ssl

log = logging.getLogger("runtime.client")


class _Batch:
    """Records bound for one shard at one consistency level, sent (and
    retried) as one encoded batch with one sequence number.

    Records are appended by whichever thread sends them, under the
    producer's lock; the batch is settled once, in the loop thread, and a
    record's result is then derived from the batch's (``base_offset + i``),
    so the hot path allocates nothing per record but the record itself."""

    __slots__ = ("shard_state", "level", "records", "futures", "bytes", "created", "data", "producer_id",
                 "sequence", "settled", "base_offset", "level_met", "error", "callbacks")

    def __init__(self, shard_state: "_ShardState", level: Level, created: float) -> None:
        self.shard_state = shard_state
        self.level = level
        self.records: list[Record] = []
        self.futures: list[asyncio.Future[RecordMetadata] | None] = []  # per record (AsyncProducer only)
        self.bytes = 0  # buffer bytes charged for the records
        self.created = created  # time.monotonic() of the first record: linger and delivery timeout count from it
        self.data: bytes | None = None  # the encoded batch, fixed at the first attempt so retries are identical
        self.producer_id = 0
        self.sequence = 0
        self.settled = False
        self.base_offset = -1
        self.level_met = level
        self.error: ChorusError | None = None
        self.callbacks: list[tuple[Callable[[Any], Any], Any]] | None = None

    def metadata(self, index: int) -> RecordMetadata:
        st = self.shard_state
        return RecordMetadata(st.topic, st.shard, self.base_offset + index, self.level_met,
                              self.records[index].producer_ts_ms)


@dataclass(eq=False)
class _ShardState:
    topic: str
    shard: int
    producer_id: int
    next_sequence: int = 0
    queue: deque[_Batch] = field(default_factory=deque)  # the last batch is open for appends
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sleeping: bool = True  # the sender waits for a kick (no task yet, an empty queue, or lingering)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _TopicState:
    topic: str
    shards: int | None = None
    refreshed_at: float = 0.0
    # records sent before the first metadata arrived: (record, level, bytes, future, accepted at)
    unrouted: deque[tuple[Record, Level, int, "asyncio.Future[RecordMetadata]", float]] = field(
        default_factory=deque)
    resolver: asyncio.Task[None] | None = None


class AsyncProducer(_AsyncContext):
    """Sends records to topics, batched per shard and level, idempotently.

    Options: ``level`` the default consistency level (``"any"``, ``"one"``,
    ``"quorum"``, ``"all"``); ``linger_ms`` how long a shard's first waiting
    record may wait for more; ``batch_records_max`` / ``batch_bytes_max`` the
    size that sends a batch at once; ``compression`` zstd for batch bodies;
    ``delivery_timeout_s`` how long a record may take (retries included)
    before it fails; ``buffer_bytes_max`` the memory bound of undelivered
    records; ``request_timeout_ms`` the timeout each produce gives the node.
    """

    def __init__(self, bootstrap: str | Sequence[str] = f"127.0.0.1:{DEFAULT_PORT}", *,
                 level: Level | str = Level.QUORUM, linger_ms: float = 5, batch_records_max: int = 1000,
                 batch_bytes_max: int = 1 << 20, compression: bool = True, delivery_timeout_s: float = 30.0,
                 buffer_bytes_max: int = 64 << 20, request_timeout_ms: int = 10_000,
                 client_id: str | None = None, connect_timeout_s: float = 10.0, username: str = "",
                 password: str = "", tls: bool | ssl.SSLContext = False, ca_file: str | None = None) -> None:
        if linger_ms < 0 or delivery_timeout_s <= 0 or request_timeout_ms <= 0:
            raise ValueError("linger_ms must be >= 0, delivery_timeout_s and request_timeout_ms > 0")
        if not 1 <= batch_records_max <= RECORDS_PER_BATCH_MAX:
            raise ValueError(f"batch_records_max must be in [1, {RECORDS_PER_BATCH_MAX}]")
        if batch_bytes_max < 1 or buffer_bytes_max < 1:
            raise ValueError("batch_bytes_max and buffer_bytes_max must be positive")
        self.level = Level(level)
        self.linger_s = linger_ms / 1000
        self.batch_records_max = batch_records_max
        self.batch_bytes_max = batch_bytes_max
        self.compression = compression
        self.delivery_timeout_s = float(delivery_timeout_s)
        self.buffer_bytes_max = buffer_bytes_max
        self.request_timeout_s = request_timeout_ms / 1000
        self._cluster = _Cluster(bootstrap, client_id=client_id, connect_timeout_s=connect_timeout_s,
                                 request_timeout_s=min(30.0, self.delivery_timeout_s),
                                 username=username, password=password, ssl_context=client_ssl(tls, ca_file))
        self.producer_id = _new_producer_id()
        self._rr = RoundRobin(int.from_bytes(os.urandom(4), "big"))
        self._topics: dict[str, _TopicState] = {}
        self._shards: dict[tuple[str, int], _ShardState] = {}
        # The accumulator (shard queues, batches, the byte and record counts)
        # is shared with the blocking Producer's calling threads: this lock
        # guards it, and its condition is notified whenever records settle.
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._unsettled: dict[_Batch, None] = {}  # batches not yet settled, oldest first
        self._buffered = 0
        self._pending = 0
        self._progress = asyncio.Event()  # set whenever records settle (loop thread)
        self._flushing = 0
        self._closing = False
        self._closed = False

    # -- lifecycle

    async def start(self) -> "AsyncProducer":
        """Connect now (sends connect lazily otherwise)."""
        await self._cluster.connection()
        return self

    async def _close_now(self) -> None:
        await self.close(timeout_s=0)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held by records accepted and not yet settled."""
        return self._buffered

    @property
    def pending(self) -> int:
        """Number of records accepted and not yet settled."""
        return self._pending

    async def close(self, timeout_s: float = 30.0) -> None:
        """Deliver the records already accepted (waiting at most
        ``timeout_s``), fail the rest, and close the connection."""
        if self._closing:
            return
        with self._lock:
            self._closing = True
            self._settled.notify_all()
        self._progress.set()
        for st in list(self._shards.values()):
            self._kick(st)
        if timeout_s > 0:
            try:
                await self.flush(timeout_s)
            except ChorusError:
                pass
        self._closed = True
        err = ChorusError(None, "the producer was closed before the record was delivered")
        for ts in self._topics.values():
            while ts.unrouted:
                self._fail_unrouted(ts.unrouted.popleft(), err)
        with self._lock:
            left = list(self._unsettled)
        for batch in left:
            self._settle(batch, error=err)
        tasks = [st.task for st in self._shards.values() if st.task is not None]
        tasks += [ts.resolver for ts in self._topics.values() if ts.resolver is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._cluster.close()

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send every record accepted so far without lingering and wait until
        each is delivered or failed (``ChorusError(TIMEOUT)`` after ``timeout_s``)."""
        with self._lock:
            batches = list(self._unsettled)
        waiting = [e[3] for ts in self._topics.values() for e in ts.unrouted]
        if not batches and not waiting:
            return
        self._flushing += 1
        for st in list(self._shards.values()):
            if st.queue:
                self._kick(st)
        try:
            async with asyncio.timeout(timeout_s):
                i = j = 0
                while True:
                    while i < len(batches) and batches[i].settled:
                        i += 1
                    while j < len(waiting) and waiting[j].done():
                        j += 1
                    if i == len(batches) and j == len(waiting):
                        return
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            raise ChorusError(ErrorCode.TIMEOUT, f"flush did not complete within {timeout_s:g} s "
                                                 f"({self._pending} records pending)") from None
        finally:
            self._flushing -= 1

    # -- sending

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None = None,
                   level: Level | str | None = None) -> RecordMetadata:
        """Send one record and wait until it is stored; returns where.

        Waits for buffer room first when ``buffer_bytes_max`` is reached.
        Raises :class:`ChorusError` when the record cannot be delivered
        (e.g. ``UNKNOWN_TOPIC``: "topic ... does not exist"), after retries
        for up to ``delivery_timeout_s``.  Cancelling the wait does not
        withdraw the record."""
        record, lvl, size = self._prepare(topic, value, key, headers, level)
        while self._buffered + size > self.buffer_bytes_max:
            self._progress.clear()
            await self._progress.wait()
            if self._closing:
                raise ChorusError(None, "the producer is closed")
        return await asyncio.shield(self._accept(topic, record, lvl, size))

    def send_nowait(self, topic: str, value: bytes, *, key: bytes | None = None,
                    headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None = None,
                    level: Level | str | None = None) -> "asyncio.Future[RecordMetadata]":
        """Accept one record for sending and return a future of its
        :class:`RecordMetadata`.  Raises ``ChorusError("buffer full ...")``
        at once when ``buffer_bytes_max`` is reached (:meth:`send` waits
        instead).  Must be called from the producer's event loop."""
        record, lvl, size = self._prepare(topic, value, key, headers, level)
        if self._buffered + size > self.buffer_bytes_max:
            raise ChorusError(None, f"buffer full: {self._buffered} of {self.buffer_bytes_max} bytes are held by "
                                    f"records not yet delivered (use send() to wait for room)")
        return self._accept(topic, record, lvl, size)

    def _prepare(self, topic: str, value: bytes, key: bytes | None, headers: Any,
                 level: Any) -> tuple[Record, Level, int]:
        """Validate a record and size it (any thread: touches no shared state)."""
        if self._closing:
            raise ChorusError(None, "the producer is closed")
        if type(topic) is not str or not topic:
            raise TypeError("topic must be a non-empty str")
        if type(value) is not bytes:
            value = _check_bytes("value", value)  # type: ignore[assignment]
        size = len(value) + _RECORD_OVERHEAD
        if key is not None:
            if type(key) is not bytes:
                key = _check_bytes("key", key)
            size += len(key)  # type: ignore[arg-type]
        pairs = _normalize_headers(headers) if headers else ()
        for n, v in pairs:
            size += len(n.encode("utf-8")) + len(v) + _HEADER_OVERHEAD
        lvl = self.level if level is None else Level(level)
        if size > self.buffer_bytes_max:
            raise ChorusError(None, f"record of {size} bytes exceeds buffer_bytes_max={self.buffer_bytes_max}")
        limit = self._server_batch_cap()
        if size + _BATCH_OVERHEAD > limit:
            raise ChorusError(None, f"record of {size} bytes exceeds the largest batch the node accepts "
                                    f"({limit} bytes)")
        return Record(key, value, pairs, int(time.time() * 1000)), lvl, size

    def _server_batch_cap(self) -> int:
        limits = self._cluster.limits
        return min(limits.batch_bytes_max - BATCH_HEADER_BYTES, BATCH_BYTES_MAX - BATCH_HEADER_BYTES,
                   limits.frame_bytes_max - _FRAME_OVERHEAD)

    def _batch_cap(self) -> int:
        return min(self.batch_bytes_max, self._server_batch_cap())

    def _accept(self, topic: str, record: Record, level: Level, size: int) -> "asyncio.Future[RecordMetadata]":
        """Take a prepared record in (loop thread); its future."""
        if self._closing:
            raise ChorusError(None, "the producer is closed")
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        ts = self._topics.get(topic)
        if ts is None:
            ts = self._topics[topic] = _TopicState(topic)
        if ts.shards is None or ts.unrouted:
            with self._lock:
                self._buffered += size
                self._pending += 1
            ts.unrouted.append((record, level, size, fut, time.monotonic()))
            self._resolve(ts)
            return fut
        if time.monotonic() - ts.refreshed_at > METADATA_MAX_AGE_S:
            self._resolve(ts)
        with self._lock:
            st, _batch, _index, kick = self._append(ts, record, level, size, fut)
        if kick:
            self._kick(st)
        return fut

    def _append(self, ts: _TopicState, record: Record, level: Level, size: int,
                fut: "asyncio.Future[RecordMetadata] | None", charge: bool = True) -> tuple[_ShardState, _Batch, int, bool]:
        """Add a record to its shard's open batch (the lock is held; any
        thread).  Returns the shard, the batch, the record's index in it and
        whether the shard's sender must be kicked (see :meth:`_kick`)."""
        n = ts.shards
        assert n is not None
        shard = shard_for_key(record.key, n) if record.key is not None else self._rr.next(n)
        st = self._shards.get((ts.topic, shard))
        if st is None:
            st = self._shards[(ts.topic, shard)] = _ShardState(ts.topic, shard, self.producer_id)
        q = st.queue
        batch = q[-1] if q else None
        kick = False
        if (batch is None or batch.level is not level or len(batch.records) >= self.batch_records_max
                or batch.bytes + size + _BATCH_OVERHEAD > self._batch_cap()):
            batch = _Batch(st, level, time.monotonic())
            q.append(batch)
            self._unsettled[batch] = None
            kick = len(q) <= 2  # the first starts the linger; a second means the first is complete
        index = len(batch.records)
        batch.records.append(record)
        batch.futures.append(fut)
        batch.bytes += size
        if index + 1 >= self.batch_records_max:
            kick = True
        if charge:
            self._buffered += size
            self._pending += 1
        if kick and st.sleeping:
            st.sleeping = False
            return st, batch, index, True
        return st, batch, index, False

    def _kick(self, st: _ShardState) -> None:
        """Wake the shard's sender, starting it first if needed (loop thread)."""
        if self._closed:
            return
        if st.task is None:
            st.task = asyncio.create_task(self._sender(st), name=f"chorus-produce-{st.topic}#{st.shard}")
        st.wake.set()

    def _settle(self, batch: _Batch, base_offset: int = -1, level: Level | None = None,
                error: ChorusError | None = None) -> None:
        """Complete every record of ``batch`` (loop thread)."""
        with self._lock:
            if batch.settled:
                return
            batch.base_offset = base_offset
            batch.level_met = level or batch.level
            batch.error = error
            batch.settled = True
            self._unsettled.pop(batch, None)
            self._buffered -= batch.bytes
            self._pending -= len(batch.records)
            callbacks, batch.callbacks = batch.callbacks, None
            self._settled.notify_all()
        self._progress.set()
        for i, fut in enumerate(batch.futures):
            if fut is not None and not fut.done():
                if error is not None:
                    fut.set_exception(error.copy())
                else:
                    fut.set_result(batch.metadata(i))
        for fn, handle in callbacks or ():
            try:
                fn(handle)
            except Exception:
                log.exception("a producer done-callback raised")

    def _fail_unrouted(self, entry: tuple[Record, Level, int, "asyncio.Future[RecordMetadata]", float],
                       error: ChorusError) -> None:
        with self._lock:
            self._buffered -= entry[2]
            self._pending -= 1
            self._settled.notify_all()
        self._progress.set()
        if not entry[3].done():
            entry[3].set_exception(error.copy())

    # -- routing

    def _resolve(self, ts: _TopicState) -> None:
        if ts.resolver is None or ts.resolver.done():
            ts.resolver = asyncio.create_task(self._resolve_loop(ts), name=f"chorus-metadata-{ts.topic}")

    async def _resolve_loop(self, ts: _TopicState) -> None:
        delay = BACKOFF_MIN_S
        while True:
            try:
                md = await self._cluster.metadata(ts.topic, refresh=ts.shards is not None)
            except ChorusError as e:
                if ts.shards is not None and not ts.unrouted:
                    log.debug("metadata refresh of %s failed: %s", ts.topic, e)
                    ts.refreshed_at = time.monotonic()  # try again after the usual interval
                    return
                if not e.retriable or e.code is ErrorCode.UNKNOWN_TOPIC:
                    while ts.unrouted:
                        self._fail_unrouted(ts.unrouted.popleft(), e)
                    return
                expired = ChorusError(e.code, f"delivery timeout of {self.delivery_timeout_s:g} s expired: "
                                              f"{e.message}")
                now = time.monotonic()
                while ts.unrouted and ts.unrouted[0][4] + self.delivery_timeout_s <= now:
                    self._fail_unrouted(ts.unrouted.popleft(), expired)
                if not ts.unrouted:
                    return
                await asyncio.sleep(_backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._routed(ts, len(md.shards))
            return

    def _routed(self, ts: _TopicState, shards: int) -> None:
        """Metadata arrived: route the records that waited for it."""
        kicks = []
        with self._lock:
            ts.shards = shards
            ts.refreshed_at = time.monotonic()
            while ts.unrouted:
                record, level, size, fut, _accepted = ts.unrouted.popleft()
                st, _b, _i, kick = self._append(ts, record, level, size, fut, charge=False)
                if kick:
                    kicks.append(st)
        for st in kicks:
            self._kick(st)

    async def _topic(self, topic: str, timeout_s: float) -> _TopicState:
        """The topic's routing state, fetching its metadata first if needed:
        retriable failures are retried for up to ``timeout_s``; an unknown
        topic raises ``ChorusError(UNKNOWN_TOPIC)`` at once."""
        ts = self._topics.get(topic)
        if ts is None:
            ts = self._topics[topic] = _TopicState(topic)
        deadline = time.monotonic() + timeout_s
        delay = BACKOFF_MIN_S
        while ts.shards is None:
            try:
                md = await self._cluster.metadata(topic)
            except ChorusError as e:
                remaining = deadline - time.monotonic()
                if not e.retriable or e.code is ErrorCode.UNKNOWN_TOPIC or remaining <= 0 or self._closing:
                    if e.retriable and e.code is not ErrorCode.UNKNOWN_TOPIC:
                        raise ChorusError(ErrorCode.TIMEOUT, f"no metadata for topic {topic!r} within "
                                                             f"{timeout_s:g} s: {e.message}") from None
                    raise
                await asyncio.sleep(min(remaining, _backoff(delay)))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if ts.shards is None:
                self._routed(ts, len(md.shards))
        return ts

    # -- the per-shard sender

    async def _sender(self, st: _ShardState) -> None:
        """Sends the shard's batches one at a time (at most one in flight,
        so a shard stores records in the order they were sent)."""
        while True:
            st.wake.clear()
            batch: _Batch | None = None
            wait: float | None = None
            with self._lock:
                q = st.queue
                if not q:
                    st.sleeping = True
                else:
                    first = q[0]
                    if (self._flushing > 0 or self._closing or len(q) > 1
                            or len(first.records) >= self.batch_records_max):
                        wait = 0.0
                    else:
                        wait = first.created + self.linger_s - time.monotonic()
                    if wait > 0:
                        st.sleeping = True
                    else:
                        batch = q.popleft()
            if batch is None:
                try:
                    async with asyncio.timeout(wait):
                        await st.wake.wait()
                except TimeoutError:
                    pass
                with self._lock:
                    st.sleeping = False
                continue
            if batch.created + self.delivery_timeout_s <= time.monotonic():
                self._fail_shard(st, batch, ChorusError(
                    ErrorCode.TIMEOUT, f"delivery timeout of {self.delivery_timeout_s:g} s expired before "
                                       f"the records were sent to {st.topic}#{st.shard}"))
                continue
            try:
                await self._send_batch(st, batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug: fail the records rather than hang them
                log.exception("producer failed on %s#%d", st.topic, st.shard)
                self._fail_shard(st, batch, ChorusError(None, f"internal client error: {e!r}"))

    async def _send_batch(self, st: _ShardState, batch: _Batch) -> None:
        n = len(batch.records)
        if batch.data is None:
            if st.next_sequence + n > _U32_MAX:  # sequences are u32: continue under a new producer id
                st.producer_id, st.next_sequence = _new_producer_id(), 0
            batch.producer_id, batch.sequence = st.producer_id, st.next_sequence
            try:
                batch.data = encode_batch(batch.records, producer_id=batch.producer_id,
                                          base_sequence=batch.sequence, compress=self.compression)
            except ValueError as e:
                self._settle(batch, error=ChorusError(None, f"cannot encode a batch for {st.topic}#{st.shard}: {e}"))
                return
            st.next_sequence += n
        deadline = batch.created + self.delivery_timeout_s
        delay = BACKOFF_MIN_S
        topic_checked = False
        last: ChorusError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f": {last.message}" if last is not None else ""
                self._fail_shard(st, batch, ChorusError(
                    last.code if last is not None else ErrorCode.TIMEOUT,
                    f"delivery timeout of {self.delivery_timeout_s:g} s expired for {n} records to "
                    f"{st.topic}#{st.shard}{why}"))
                return
            timeout_s = min(self.request_timeout_s, remaining)
            req = fr.ProduceRequest(topic=st.topic, shard=st.shard, level=batch.level, producer_id=batch.producer_id,
                                    sequence=batch.sequence, timeout_ms=max(1, int(timeout_s * 1000)),
                                    batch=batch.data)
            try:
                async with asyncio.timeout(timeout_s + RESPONSE_GRACE_S):
                    conn = await self._cluster.connection()
                    resp = await conn.request(req)
            except TimeoutError:
                last = ChorusError(ErrorCode.TIMEOUT, f"no answer to a produce within {timeout_s:g} s")
            except ChorusError as e:
                last = e
                if self._closed:
                    return
                if e.code is ErrorCode.UNKNOWN_SHARD:
                    await self._refresh_quietly(st.topic)
                elif e.code is ErrorCode.UNKNOWN_TOPIC and not topic_checked:
                    topic_checked = True
                    try:
                        await self._cluster.metadata(st.topic, refresh=True)
                    except ChorusError as e2:
                        if not e2.retriable:
                            self._fail_shard(st, batch, e2)
                            return
                elif not e.retriable:
                    self._fail_shard(st, batch, e)
                    return
                log.debug("produce to %s#%d failed (%s); retrying sequence %d", st.topic, st.shard, e,
                          batch.sequence)
            else:
                if not isinstance(resp, fr.ProduceResponse):
                    self._fail_shard(st, batch, ChorusError(None, f"unexpected answer {type(resp).__name__} "
                                                                  f"to a ProduceRequest"))
                    return
                self._settle(batch, resp.base_offset, resp.level_met)
                return
            await asyncio.sleep(max(0.0, min(deadline - time.monotonic(), _backoff(delay))))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _refresh_quietly(self, topic: str) -> None:
        try:
            md = await self._cluster.metadata(topic, refresh=True)
        except ChorusError as e:
            log.debug("metadata refresh of %s failed: %s", topic, e)
            return
        ts = self._topics.get(topic)
        if ts is not None:
            with self._lock:
                ts.shards = len(md.shards)
                ts.refreshed_at = time.monotonic()

    def _fail_shard(self, st: _ShardState, batch: _Batch, error: ChorusError) -> None:
        """A batch failed for good: fail it and every batch queued behind it,
        and continue the shard under a fresh producer id."""
        log.warning("producing %d records to %s#%d failed: %s", len(batch.records), st.topic, st.shard, error)
        with self._lock:
            behind = list(st.queue)
            st.queue.clear()
            st.producer_id, st.next_sequence = _new_producer_id(), 0
        for b in [batch, *behind]:
            self._settle(b, error=error)


# -- AsyncConsumer ------------------------------------------------------------------
