"""The Chorus client library: produce to and consume from a Chorus cluster.

A client talks to one node at a time over the binary client protocol
(``docs/PROTOCOL.md``, codec in ``protocol/frames.py``).  Routing is done by
the nodes: any node accepts any request and forwards it to the shard's
leader, so a client only needs one reachable address.  ``bootstrap`` lists a
few (``"host:port"``, a comma-separated string or a list); when the
connection is refused or lost the client moves on to the next address
(round-robin) and reconnects with backoff.

The core is asyncio (:class:`AsyncProducer`, :class:`AsyncConsumer`,
:class:`AsyncClient`).  The blocking classes (:class:`Producer`,
:class:`Consumer`, :class:`Client`) each run one event loop in a daemon
background thread and call into it; closing them stops that thread.

Producing::

    from runtime.client import AsyncProducer, Producer, RecordMetadata

    async with AsyncProducer("127.0.0.1:7171", level="quorum", linger_ms=5) as p:
        md: RecordMetadata = await p.send("acme/shop/web/orders", b"value", key=b"k",
                                          headers={"h": b"v"})
        print(md.shard, md.offset)
        fut = p.send_nowait("acme/shop/web/orders", b"more")   # asyncio.Future[RecordMetadata]
        await p.flush()

    with Producer("127.0.0.1:7171", level="quorum") as p:
        f = p.send("acme/shop/web/orders", b"v", key=b"k")     # RecordFuture (thread-safe)
        p.flush()
        print(f.result().offset)

Records with a key go to shard ``shard_for_key(key, shards)``
(``protocol/hashing.py``, the same function in every Chorus client);
records without one are spread round-robin.  Per shard and consistency
level, records are batched until ``batch_records_max`` records or
``batch_bytes_max`` bytes are waiting or ``linger_ms`` has passed, then
sent as one zstd-compressed batch.  Different shards are sent concurrently;
within a shard at most one batch is in flight, so records of one shard are
stored in the order they were sent.

The producer is idempotent: it draws a random producer id and numbers its
records per shard.  A batch that fails with a retriable error (``NOT_LEADER``,
``TIMEOUT``, ``OVERLOADED``, ``UNKNOWN_SHARD``, a lost connection) is
retried with the same sequence number and the same bytes until it succeeds
or ``delivery_timeout_s`` expires; the node recognises a retry of a batch it
already appended and answers with the original offset, so retries never
duplicate records.  When a batch fails for good, its records and every
record queued behind it on that shard fail with the same
:class:`ChorusError`, and the shard continues under a fresh producer id.

``buffer_bytes_max`` bounds the memory held by records not yet delivered:
:meth:`AsyncProducer.send` waits for room, :meth:`AsyncProducer.send_nowait`
raises ``ChorusError("buffer full ...")`` instead, :meth:`Producer.send`
blocks (at most ``max_block_s``).

Consuming::

    from runtime.client import AsyncConsumer, Consumer

    async with AsyncConsumer("127.0.0.1:7171", "acme/shop/web/orders", "billing",
                             mode="exclusive") as c:
        async for msg in c:          # Message(topic, shard, offset, value, redelivery)
            handle(msg.value)
            msg.ack()                # or msg.nack() to have it redelivered; or c.ack(msg)

    with Consumer("127.0.0.1:7171", "acme/shop/web/orders", "billing") as c:
        for msg in c:
            msg.ack()
        msg = c.poll(timeout_s=1.0)  # Message, or None after the timeout

Delivery is at least once.  The node pushes records while the
subscription's window of unacknowledged records has room, so a consumer
that stops acknowledging stops receiving.  Acknowledgements are collected
and sent in batches every ``ack_interval_ms`` (20 ms); ``msg.ack()`` returns a
future that completes when the node has them (awaiting it is optional;
:meth:`AsyncConsumer.flush_acks` waits for all of them).  The consumer
re-sends its ``SubscribeRequest`` every ``keepalive_s`` as a keep-alive and
re-attaches after a reconnect; records that were delivered but not
acknowledged are delivered again, flagged ``redelivery``.

Reading a shard back in order::

    from runtime.client import Client

    with Client("127.0.0.1:7171") as c:
        shards = len(c.metadata("acme/shop/web/orders").shards)
        result = c.fetch("acme/shop/web/orders", 0, offset=0)   # FetchResult
        every_record = c.fetch_all("acme/shop/web/orders", 0)

TLS: a node configured with a certificate speaks TLS only on its client
port.  Every client class takes ``tls=True`` (verify the node against the
system's CAs), ``ca_file="path/cert.pem"`` (verify against that file: the
node's self-signed certificate or the cluster's CA; implies TLS) or
``tls=ssl_context`` (an :class:`ssl.SSLContext` of your own)::

    with Producer("127.0.0.1:7171", ca_file="data/tls/cert.pem") as p: ...

The host name (or IP address) in the bootstrap address is checked against
the certificate; an untrusted certificate fails at once with
:class:`ChorusConnectionError`.

Errors are :class:`ChorusError` with ``code`` (an :class:`ErrorCode` from
the node, or ``None`` for errors found by the client itself) and a message
for people; :class:`ChorusConnectionError` (code ``None``) means no node
could be reached or the connection was lost.

Users: nodes require a user name and password by default.  Every client
class takes ``username=`` and ``password=``; left empty they come from the
environment variables ``CHORUS_USER`` and ``CHORUS_PASSWORD``.  Wrong ones
raise :class:`ChorusAuthError` (``AUTH_FAILED``) at once; a request the user
may not make (another tenant's topic) raises :class:`ChorusPermissionError`
(``PERMISSION_DENIED``, the message names the role needed) and the
connection stays usable::

    with Producer("127.0.0.1:7171", username="alice", password="...") as p: ...
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence

from protocol import frames as fr
from protocol.frames import ErrorCode, Level, Mode
from protocol.records import Record
from runtime.client_conn import (
    AsyncClient, ChorusAuthError, ChorusConnectionError, ChorusError, ChorusPermissionError, DEFAULT_PORT,
    FetchResult, METADATA_MAX_AGE_S, Message, RecordMetadata, T,
)
from runtime.client_consumer import AsyncConsumer
from runtime.client_producer import AsyncProducer, _Batch

if TYPE_CHECKING:
    from runtime.client_query import QueriedRecord, QueryResult

__all__ = [
    "ChorusError", "ChorusConnectionError", "ChorusAuthError", "ChorusPermissionError", "RecordMetadata", "RecordFuture", "Message", "FetchResult",
    "AsyncClient", "AsyncProducer", "AsyncConsumer", "Client", "Producer", "Consumer",
    "ErrorCode", "Level", "Mode", "Record", "DEFAULT_PORT",
]


class _LoopThread:
    """An event loop running in a daemon thread; ``run`` calls into it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking Chorus client call was made from its own event loop thread")
        if not self._thread.is_alive():
            coro.close()
            raise ChorusError(None, "the client is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ChorusError(ErrorCode.TIMEOUT, f"no result within {timeout_s:g} s") from None
        except BaseException:
            fut.cancel()
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            raise ChorusError(None, "the client is closed") from None

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass
            self._thread.join(10.0)


class _Blocking:
    """What the blocking wrappers share: a loop thread running the async
    object they wrap, started (and its thread stopped again on failure) by
    :meth:`_open`; ``with`` closes it."""

    _closed: bool
    _thread: _LoopThread

    def _open(self, thread_name: str, make: Callable[[], Any]) -> Any:
        self._thread = _LoopThread(thread_name)
        self._closed = False

        async def create() -> Any:
            return await make().__aenter__()
        try:
            return self._thread.run(create())
        except BaseException:
            self._thread.stop()
            raise

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def _shut(self, closing: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Close once: run the wrapped object's ``closing()`` on the loop,
        then stop the loop thread (even if closing failed)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.run(closing())
        finally:
            self._thread.stop()


class Client(_Blocking):
    """Blocking :class:`AsyncClient` (same arguments); connects on creation."""

    def __init__(self, bootstrap: str | Sequence[str] = f"127.0.0.1:{DEFAULT_PORT}", **options: Any) -> None:
        self._client: AsyncClient = self._open("chorus-client-loop", lambda: AsyncClient(bootstrap, **options))

    def close(self) -> None:
        self._shut(self._client.close)

    def metadata(self, topic: str, *, refresh: bool = False) -> fr.TopicMetadata:
        """See :meth:`AsyncClient.metadata`."""
        return self._thread.run(self._client.metadata(topic, refresh=refresh))

    def fetch(self, topic: str, shard: int, offset: int = 0, *, max_bytes: int = 1 << 20,
              max_wait_ms: int = 0, include_control: bool = False, group: int | None = None) -> FetchResult:
        """See :meth:`AsyncClient.fetch`."""
        return self._thread.run(self._client.fetch(topic, shard, offset, max_bytes=max_bytes,
                                                   max_wait_ms=max_wait_ms, include_control=include_control,
                                                   group=group))

    def fetch_all(self, topic: str, shard: int, start: int = 0, *, group: int | None = None) -> list[Record]:
        """See :meth:`AsyncClient.fetch_all`."""
        return self._thread.run(self._client.fetch_all(topic, shard, start, group=group))

    def groups(self, topic: str) -> tuple[Any, ...]:
        """See :meth:`AsyncClient.groups`."""
        return self._thread.run(self._client.groups(topic))

    def query(self, topic: str, from_ts: int, to_ts: int, *, key: bytes | str | None = None, limit: int = 1000,
              after: str | None = None) -> "QueryResult":
        """See :meth:`AsyncClient.query`."""
        return self._thread.run(self._client.query(topic, from_ts, to_ts, key=key, limit=limit, after=after))

    def query_iter(self, topic: str, from_ts: int, to_ts: int, *, key: bytes | str | None = None,
                   page: int = 1000) -> Iterator["QueriedRecord"]:
        """Every record of the query, fetched a page at a time."""
        after = None
        while True:
            res = self.query(topic, from_ts, to_ts, key=key, limit=page, after=after)
            yield from res.records
            if res.next_token is None:
                return
            after = res.next_token


class RecordFuture:
    """The future of one record sent by :meth:`Producer.send`: thread-safe,
    with the part of ``concurrent.futures.Future`` a producer needs
    (``result``, ``exception``, ``done``, ``add_done_callback``).

    It is a view of the record's batch, so sending allocates no lock or
    condition per record; the result is built when asked for."""

    __slots__ = ("_batch", "_index", "_cond")

    def __init__(self, batch: _Batch, index: int, cond: threading.Condition) -> None:
        self._batch = batch
        self._index = index
        self._cond = cond

    def done(self) -> bool:
        return self._batch.settled

    def running(self) -> bool:
        return not self._batch.settled

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        """Records cannot be withdrawn once sent: always False."""
        return False

    def _wait(self, timeout: float | None) -> _Batch:
        batch = self._batch
        if not batch.settled:
            with self._cond:
                if not self._cond.wait_for(lambda: batch.settled, timeout):
                    raise TimeoutError(f"the record was not settled within {timeout:g} s")
        return batch

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Where the record was stored; waits at most ``timeout`` seconds
        (``TimeoutError``).  Raises the :class:`ChorusError` it failed with."""
        batch = self._wait(timeout)
        if batch.error is not None:
            raise batch.error
        return batch.metadata(self._index)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._wait(timeout).error

    def add_done_callback(self, fn: Callable[["RecordFuture"], Any]) -> None:
        """Call ``fn(self)`` once the record is settled: at once if it is,
        else in the producer's background thread."""
        batch = self._batch
        with self._cond:
            if not batch.settled:
                if batch.callbacks is None:
                    batch.callbacks = []
                batch.callbacks.append((fn, self))
                return
        fn(self)

    def __repr__(self) -> str:
        state = "pending" if not self._batch.settled else "failed" if self._batch.error else "done"
        return f"<RecordFuture {self._batch.shard_state.topic}#{self._batch.shard_state.shard} {state}>"


class Producer(_Blocking):
    """Blocking :class:`AsyncProducer` (same options, plus ``max_block_s``:
    how long :meth:`send` may block while the buffer is full or the topic's
    metadata is first fetched).  Connects on creation; ``close`` (or leaving
    ``with``) delivers what is pending and stops the background thread.

    :meth:`send` adds the record to its shard's batch from the calling
    thread, so sending costs a few microseconds; the background thread
    only sends whole batches."""

    def __init__(self, bootstrap: str | Sequence[str] = f"127.0.0.1:{DEFAULT_PORT}", *, max_block_s: float = 60.0,
                 **options: Any) -> None:
        self.max_block_s = max_block_s
        self._producer: AsyncProducer = self._open("chorus-client-producer",
                                                   lambda: AsyncProducer(bootstrap, **options))

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None = None,
             level: Level | str | None = None) -> RecordFuture:
        """Accept one record and return a :class:`RecordFuture` of its
        :class:`RecordMetadata`.

        Blocks only while the buffer is full or the topic's metadata is
        fetched for the first time (at most ``max_block_s`` each, then
        ``ChorusError``).  Errors with the arguments, and an unknown topic,
        raise at once."""
        if self._closed:
            raise ChorusError(None, "the producer is closed")
        ap = self._producer
        record, lvl, size = ap._prepare(topic, value, key, headers, level)
        ts = ap._topics.get(topic)
        if ts is None or ts.shards is None:
            ts = self._thread.run(ap._topic(topic, self.max_block_s))
        elif time.monotonic() - ts.refreshed_at > METADATA_MAX_AGE_S and (ts.resolver is None or ts.resolver.done()):
            self._thread.call_soon(ap._resolve, ts)
        room = ap._settled
        with room:
            if ap._buffered + size > ap.buffer_bytes_max:
                if not room.wait_for(lambda: ap._buffered + size <= ap.buffer_bytes_max or ap._closing,
                                     self.max_block_s):
                    raise ChorusError(None, f"buffer full: no room for the record within {self.max_block_s:g} s")
            if ap._closing:
                raise ChorusError(None, "the producer is closed")
            st, batch, index, kick = ap._append(ts, record, lvl, size, None)
        if kick:
            self._thread.call_soon(ap._kick, st)
        return RecordFuture(batch, index, room)

    def flush(self, timeout_s: float | None = None) -> None:
        """See :meth:`AsyncProducer.flush`."""
        self._thread.run(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 30.0) -> None:
        """See :meth:`AsyncProducer.close`; also stops the background thread."""
        self._shut(lambda: self._producer.close(timeout_s))

    @property
    def buffered_bytes(self) -> int:
        return self._producer.buffered_bytes


class Consumer(_Blocking):
    """Blocking :class:`AsyncConsumer` (same arguments).  ``for msg in c``
    iterates until the consumer is closed; ``msg.ack()`` may be called from
    any thread and returns a ``concurrent.futures.Future`` (shared by the
    acknowledgements sent together).  Messages are handed over in batches,
    so polling does not wait on the background thread."""

    def __init__(self, bootstrap: str | Sequence[str], topic: str, subscription: str, **options: Any) -> None:
        def make() -> AsyncConsumer:
            c = AsyncConsumer(bootstrap, topic, subscription, **options)
            c._blocking = True
            return c
        self._consumer: AsyncConsumer = self._open("chorus-client-consumer", make)

    @property
    def consumer_id(self) -> str:
        return self._consumer.consumer_id

    @property
    def active(self) -> bool:
        return self._consumer.active

    @property
    def resets(self) -> list[Any]:
        """``SubscriptionReset`` notices received (the last 100): records
        this subscription skipped because retention dropped their shard group."""
        with self._consumer._lock:
            return list(self._consumer.resets)

    def poll(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None after ``timeout_s`` or once closed."""
        c = self._consumer
        with c._arrived:
            if not c._arrived.wait_for(lambda: c._messages or c._ended, timeout_s):
                return None
            return c._take()

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.poll()
            if msg is None:
                return
            yield msg

    def ack(self, msg: Message) -> "concurrent.futures.Future[None]":
        return self._consumer._settle(msg, False)

    def nack(self, msg: Message) -> "concurrent.futures.Future[None]":
        return self._consumer._settle(msg, True)

    def flush_acks(self, timeout_s: float | None = None) -> None:
        """See :meth:`AsyncConsumer.flush_acks`."""
        self._thread.run(self._consumer.flush_acks(timeout_s))

    def close(self, timeout_s: float = 5.0) -> None:
        """See :meth:`AsyncConsumer.close`; also stops the background thread."""
        self._shut(lambda: self._consumer.close(timeout_s))
