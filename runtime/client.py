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
import logging
import os
import random
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Self, Sequence,
                    TypeVar)

from protocol import frames as fr
from protocol.frames import ErrorCode, Level, Mode
from protocol.hashing import RoundRobin, shard_for_key
from protocol.records import (
    BATCH_BYTES_MAX, HEADER_BYTES as BATCH_HEADER_BYTES, RECORDS_PER_BATCH_MAX, CorruptBatch, Record,
    decode_batch, encode_batch, is_control,
)
from runtime.tls import client_ssl

if TYPE_CHECKING:
    from runtime.client_query import QueriedRecord, QueryResult

__all__ = [
    "ChorusError", "ChorusConnectionError", "ChorusAuthError", "ChorusPermissionError", "RecordMetadata", "RecordFuture", "Message", "FetchResult",
    "AsyncClient", "AsyncProducer", "AsyncConsumer", "Client", "Producer", "Consumer",
    "ErrorCode", "Level", "Mode", "Record", "DEFAULT_PORT",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 7171
METADATA_MAX_AGE_S = 30.0  # cached topic metadata is refreshed after this long
BACKOFF_MIN_S = 0.05  # first retry delay; doubles up to BACKOFF_MAX_S, with jitter
BACKOFF_MAX_S = 1.0
CONNECT_ATTEMPT_MAX_S = 5.0  # one address gets at most this long to connect and handshake
RESPONSE_GRACE_S = 2.0  # a produce waits this much longer than the timeout_ms it gave the node

_RECEIVE_FRAME_BYTES_MAX = 64 << 20  # largest frame the client accepts from a node
_READ_BYTES = 1 << 16
_U32_MAX = 0xFFFF_FFFF
# Bytes a record may add to a batch body besides its key, value and headers
# (one entry in each of the four per-record columns, at their widest), and
# per header (its two length entries).  Used to keep batches under limits.
_RECORD_OVERHEAD = 24
_HEADER_OVERHEAD = 16
_BATCH_OVERHEAD = 64  # the body's timestamp base and column width bytes
_FRAME_OVERHEAD = 1024  # produce frame header and fields around the batch
# The node closes the connection after sending one of these.
_CLOSING_CODES = frozenset({
    ErrorCode.UNKNOWN_TYPE, ErrorCode.MALFORMED, ErrorCode.FRAME_TOO_LARGE, ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.AUTH_FAILED, ErrorCode.HANDSHAKE_REQUIRED, ErrorCode.INTERNAL_ERROR,
})
_RETRIABLE_CODES = frozenset({ErrorCode.NOT_LEADER, ErrorCode.TIMEOUT, ErrorCode.OVERLOADED, ErrorCode.UNKNOWN_SHARD})


# -- errors and results ---------------------------------------------------------


class ChorusError(Exception):
    """A request failed.

    ``code`` is the :class:`ErrorCode` the node answered with, or ``None``
    when the client found the problem itself (buffer full, closed, too
    large, no node reachable).  ``message`` explains it for people.
    """

    def __init__(self, code: ErrorCode | None, message: str) -> None:
        super().__init__(f"{code.name}: {message}" if code is not None else message)
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:
        """True when the same request may succeed if sent again later."""
        return self.code in _RETRIABLE_CODES

    def copy(self) -> "ChorusError":
        """A fresh exception with the same code and message (one per waiter)."""
        return error_for(self.code, self.message)


class ChorusAuthError(ChorusError):
    """The node did not accept the user name and password (``AUTH_FAILED``):
    check ``username``/``password`` (or ``CHORUS_USER``/``CHORUS_PASSWORD``)."""


class ChorusPermissionError(ChorusError):
    """The user may not do this (``PERMISSION_DENIED``), e.g. produce to
    another tenant's topic; the message names the role it would need."""


_ERROR_CLASSES: dict[ErrorCode | None, type[ChorusError]] = {
    ErrorCode.AUTH_FAILED: ChorusAuthError, ErrorCode.PERMISSION_DENIED: ChorusPermissionError}


def error_for(code: ErrorCode | None, message: str) -> ChorusError:
    """The :class:`ChorusError` (or its subclass for the code) of a node's answer."""
    return _ERROR_CLASSES.get(code, ChorusError)(code, message)


class ChorusConnectionError(ChorusError):
    """No node could be reached, or the connection to the node was lost."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)

    @property
    def retriable(self) -> bool:
        return True

    def copy(self) -> "ChorusConnectionError":
        return ChorusConnectionError(self.message)


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where a produced record was stored."""

    topic: str
    shard: int
    offset: int
    level: Level  # the consistency level the node reached
    timestamp_ms: int  # the producer's timestamp of the record


@dataclass(frozen=True, slots=True)
class Message:
    """One record delivered to a consumer.

    ``redelivery`` is True when the record was delivered before and not
    acknowledged.  :meth:`ack` and :meth:`nack` settle it with the consumer
    that received it.
    """

    topic: str
    shard: int
    offset: int
    value: bytes
    redelivery: bool = False
    subscription: str = ""
    _settle: Callable[["Message", bool], Any] | None = field(default=None, repr=False, compare=False)

    def ack(self) -> Any:
        """Acknowledge the record.  Returns a future that completes when the
        node has the acknowledgement: an ``asyncio.Future`` from an
        :class:`AsyncConsumer` (await it, or not), a
        ``concurrent.futures.Future`` from a :class:`Consumer`."""
        return self._settle_with(False)

    def nack(self) -> Any:
        """Negatively acknowledge the record: the node delivers it again
        (flagged ``redelivery``).  Returns a future like :meth:`ack`."""
        return self._settle_with(True)

    def _settle_with(self, nack: bool) -> Any:
        if self._settle is None:
            raise ChorusError(None, "this message was not delivered by a consumer; nothing to acknowledge")
        return self._settle(self, nack)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Records read from one shard by :meth:`AsyncClient.fetch`."""

    topic: str
    shard: int
    offset: int  # the offset asked for
    high_watermark: int  # end of the durable log: offsets below it can be read
    records: list[Record]  # in offset order, none below ``offset``
    next_offset: int  # the offset to fetch next (after the last record returned, control records included)


# -- helpers --------------------------------------------------------------------


def _parse_address(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``"host:port"``, ``"host"`` or ``"[v6]:port"``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"bad address {text!r}: expected 'host:port'")
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad address {text!r}: port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad address {text!r}: port {number} out of range")
    return host or "127.0.0.1", number


def _parse_bootstrap(bootstrap: str | Sequence[str]) -> list[tuple[str, int]]:
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    addresses = [_parse_address(item) for item in items if item.strip()]
    if not addresses:
        raise ValueError("bootstrap lists no address")
    return addresses


def _format(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _new_producer_id() -> int:
    while True:
        pid = int.from_bytes(os.urandom(8), "big")
        if pid:
            return pid


def _backoff(delay: float) -> float:
    """``delay`` with +-50 % jitter."""
    return delay * (0.5 + random.random())


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    """Done callback: mark a future's exception as seen (no 'never retrieved' noise)."""
    if not fut.cancelled():
        fut.exception()


def _normalize_headers(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in pairs:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"header {name!r}: values must be bytes, not {type(value).__name__}")
        out.append((name, bytes(value)))
    return tuple(out)


def _check_bytes(what: str, value: Any, optional: bool = False) -> bytes | None:
    if value is None and optional:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


# -- one connection -------------------------------------------------------------


class _Connection:
    """One handshaken TCP connection to a node: correlates responses with
    requests, bounds requests in flight, sends heartbeats and hands
    ``Delivery`` pushes to ``on_delivery``."""

    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.address = address
        self._reader = reader
        self._writer = writer
        self._decoder = fr.FrameDecoder(_RECEIVE_FRAME_BYTES_MAX, accept=fr.RESPONSE_TYPES)
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[fr.Message]] = {}
        self._next_corr = 0
        self._slots = asyncio.Semaphore(1)
        self._last_sent = self._loop.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._early: list[fr.Frame] = []
        self.node_id = ""
        self.cluster_id = ""
        self.version = fr.BASE_VERSION
        self.limits = fr.Limits()
        self.error: ChorusError | None = None  # set once the connection is unusable
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.on_delivery: Callable[[fr.Delivery], None] | None = None

    @property
    def is_open(self) -> bool:
        return self.error is None

    @classmethod
    async def open(cls, address: tuple[str, int], *, client_id: str, username: str, password: str,
                   timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> "_Connection":
        """Connect to ``address`` (with TLS when ``ssl_context`` is given) and
        handshake, within ``timeout_s``."""
        conn: _Connection | None = None
        tls: dict[str, Any] = {"ssl": ssl_context, "server_hostname": address[0]} if ssl_context else {}
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(*address, **tls)
                conn = cls(_format(address), reader, writer)
                await conn._handshake(client_id, username, password)
        except BaseException:
            if conn is not None:
                conn._fail(ChorusConnectionError(f"handshake with {conn.address} did not complete"))
            raise
        conn._tasks = [asyncio.create_task(conn._read_loop(), name=f"chorus-read-{conn.address}"),
                       asyncio.create_task(conn._heartbeat_loop(), name=f"chorus-heartbeat-{conn.address}")]
        for frame in conn._early:
            conn._dispatch(frame)
        conn._early = []
        return conn

    async def _handshake(self, client_id: str, username: str, password: str) -> None:
        auth = fr.Auth.PASSWORD if username or password else fr.Auth.NONE
        hello = fr.Handshake(client_id=client_id, versions=fr.SUPPORTED_VERSIONS, auth=auth,
                             username=username, password=password)
        self._writer.write(fr.encode_frame(hello, self._take_corr(), version=fr.BASE_VERSION))
        await self._writer.drain()
        frames: list[fr.Frame] = []
        while not frames:
            data = await self._reader.read(_READ_BYTES)
            if not data:
                raise ChorusConnectionError(f"{self.address} closed the connection during the handshake")
            try:
                frames = self._decoder.feed(data)
            except fr.ProtocolError as e:
                raise ChorusConnectionError(f"{self.address} does not speak the Chorus protocol: {e.message}") from None
        first = frames[0].message
        if isinstance(first, fr.ErrorResponse):
            raise error_for(first.code, f"{self.address} refused the handshake: {first.message or first.code.name}")
        if not isinstance(first, fr.HandshakeOk):
            raise ChorusConnectionError(f"{self.address} answered the handshake with {type(first).__name__}")
        if first.version not in fr.SUPPORTED_VERSIONS:
            raise ChorusError(ErrorCode.UNSUPPORTED_VERSION,
                              f"{self.address} chose protocol version {first.version}, this client speaks "
                              f"{list(fr.SUPPORTED_VERSIONS)}")
        self.node_id, self.cluster_id, self.version, self.limits = (
            first.node_id, first.cluster_id, first.version, first.limits)
        self._slots = asyncio.Semaphore(max(1, self.limits.max_in_flight))
        self._early = frames[1:]

    def _take_corr(self) -> int:
        corr = self._next_corr
        while corr in self._pending:
            corr = (corr + 1) & _U32_MAX
        self._next_corr = (corr + 1) & _U32_MAX
        return corr

    async def request(self, msg: fr.Message, *, timeout_s: float | None = None) -> fr.Message:
        """Send ``msg`` and return the node's answer.

        Raises ``ChorusError(code)`` for an ``ErrorResponse``,
        ``ChorusError(TIMEOUT)`` when no answer came within ``timeout_s`` and
        :class:`ChorusConnectionError` when the connection is or gets lost.
        """
        if self.error is not None:
            raise self.error.copy()
        async with self._slots:
            if self.error is not None:
                raise self.error.copy()
            corr = self._take_corr()
            try:
                data = fr.encode_frame(msg, corr, version=self.version, frame_bytes_max=self.limits.frame_bytes_max)
            except ValueError as e:
                raise ChorusError(None, f"cannot send {type(msg).__name__} to {self.address}: {e}") from None
            fut: asyncio.Future[fr.Message] = self._loop.create_future()
            self._pending[corr] = fut
            try:
                self._writer.write(data)
                self._last_sent = self._loop.time()
                await self._writer.drain()
                async with asyncio.timeout(timeout_s):
                    return await fut
            except TimeoutError:
                raise ChorusError(ErrorCode.TIMEOUT, f"no answer from {self.address} to {type(msg).__name__} "
                                                     f"within {timeout_s:g} s") from None
            except OSError as e:
                self._fail(ChorusConnectionError(f"connection to {self.address} lost: {e}"))
                raise self.error.copy() from None  # type: ignore[union-attr]
            finally:
                self._pending.pop(corr, None)

    def _dispatch(self, frame: fr.Frame) -> None:
        msg = frame.message
        if isinstance(msg, fr.Delivery):
            if self.on_delivery is not None:
                try:
                    self.on_delivery(msg)
                except Exception:
                    log.exception("delivery handler failed")
            return
        fut = self._pending.pop(frame.correlation_id, None)
        if isinstance(msg, fr.ErrorResponse):
            if fut is not None and not fut.done():
                fut.set_exception(error_for(msg.code, msg.message or msg.code.name))
            if msg.code in _CLOSING_CODES:
                self._fail(ChorusConnectionError(f"{self.address} closed the connection: {msg.code.name}: "
                                                 f"{msg.message}"))
            return
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(_READ_BYTES)
                if not data:
                    raise ChorusConnectionError(f"connection to {self.address} was closed by the node")
                try:
                    frames = self._decoder.feed(data)
                except fr.ProtocolError as e:
                    for frame in e.frames:
                        self._dispatch(frame)
                    raise ChorusConnectionError(f"{self.address} sent an invalid frame ({e.code.name}): "
                                                f"{e.message}") from None
                for frame in frames:
                    self._dispatch(frame)
                if self.error is not None:
                    return
        except ChorusError as e:
            self._fail(e)
        except OSError as e:
            self._fail(ChorusConnectionError(f"connection to {self.address} lost: {e}"))

    async def _heartbeat_loop(self) -> None:
        timeout_ms = self.limits.session_timeout_ms
        if not timeout_ms:
            return
        interval = timeout_ms / 3000
        while self.error is None:
            idle = self._loop.time() - self._last_sent
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            try:
                await self.request(fr.Heartbeat(), timeout_s=timeout_ms / 1000)
            except ChorusError as e:
                self._fail(ChorusConnectionError(f"{self.address} did not answer a heartbeat: {e}"))
                return

    def _fail(self, error: ChorusError) -> None:
        """Mark the connection dead: fail every waiter, close the socket."""
        if self.error is not None:
            return
        self.error = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error.copy())
        self._pending.clear()
        self._writer.close()
        if not self.closed.done():
            self.closed.set_result(None)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        self._fail(ChorusConnectionError(f"connection to {self.address} closed by the client"))
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        except (OSError, TimeoutError):
            pass


# -- the connection manager shared by producers, consumers and clients ---------


class _Cluster:
    """Holds the connection to one node of the cluster (reconnecting to the
    next bootstrap address when it is lost) and the topic metadata cache."""

    def __init__(self, bootstrap: str | Sequence[str], *, client_id: str | None, connect_timeout_s: float,
                 request_timeout_s: float, username: str = "", password: str = "",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.addresses = _parse_bootstrap(bootstrap)
        self.ssl_context = ssl_context
        self.client_id = client_id or f"chorus-python-{os.getpid()}"
        self.connect_timeout_s = float(connect_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        # empty: the environment's CHORUS_USER / CHORUS_PASSWORD (nodes require a user by default)
        self._username = username or os.environ.get("CHORUS_USER", "")
        self._password = password or os.environ.get("CHORUS_PASSWORD", "")
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._next = 0
        self._metadata: dict[str, tuple[float, fr.TopicMetadata]] = {}
        self._metadata_loads: dict[str, asyncio.Task[fr.TopicMetadata]] = {}
        self.on_delivery: Callable[[fr.Delivery], None] | None = None
        self.closed = False

    @property
    def current(self) -> _Connection | None:
        """The connection in use (it may have just been lost), if any."""
        return self._conn

    @property
    def limits(self) -> fr.Limits:
        conn = self._conn
        return conn.limits if conn is not None else fr.Limits()

    async def connection(self) -> _Connection:
        """The open connection, connecting first if there is none.

        Concurrent callers share one connection attempt (and its failure)."""
        conn = self._conn
        if conn is not None and conn.is_open:
            return conn
        if self.closed:
            raise ChorusError(None, "the client is closed")
        task = self._connecting
        if task is None or task.done():
            task = self._connecting = asyncio.create_task(self._reconnect(), name="chorus-connect")
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _reconnect(self) -> _Connection:
        old, self._conn = self._conn, None
        if old is not None:
            await old.close()
        conn = await self._connect()
        if self.closed:
            await conn.close()
            raise ChorusError(None, "the client is closed")
        conn.on_delivery = self._deliver
        self._conn = conn
        log.debug("connected to node %s (%s) of cluster %s", conn.node_id, conn.address, conn.cluster_id)
        return conn

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        failures: dict[str, str] = {}
        delay = BACKOFF_MIN_S
        n = len(self.addresses)
        while True:
            for _ in range(n):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                address = self.addresses[self._next % n]
                self._next += 1
                try:
                    return await _Connection.open(address, client_id=self.client_id, username=self._username,
                                                  password=self._password,
                                                  timeout_s=min(remaining, CONNECT_ATTEMPT_MAX_S),
                                                  ssl_context=self.ssl_context)
                except ssl.SSLCertVerificationError as e:  # retrying cannot help
                    raise ChorusConnectionError(f"{_format(address)}: the node's TLS certificate is not trusted: "
                                                f"{e.verify_message or e}; pass ca_file= (the node's certificate "
                                                f"or its CA)") from None
                except ChorusError as e:
                    if e.code in (ErrorCode.AUTH_FAILED, ErrorCode.UNSUPPORTED_VERSION):
                        raise
                    failures[_format(address)] = e.message
                except TimeoutError:
                    failures[_format(address)] = "timed out"
                except OSError as e:
                    failures[_format(address)] = e.strerror or str(e) or type(e).__name__
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ChorusConnectionError(
                    f"cannot connect to any of {', '.join(_format(a) for a in self.addresses)} within "
                    f"{self.connect_timeout_s:g} s: " + "; ".join(f"{a}: {m}" for a, m in failures.items()))
            await asyncio.sleep(min(remaining, _backoff(delay)))
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _deliver(self, delivery: fr.Delivery) -> None:
        if self.on_delivery is not None:
            self.on_delivery(delivery)

    async def call(self, msg: fr.Message, *, timeout_s: float | None = None) -> fr.Message:
        """Send ``msg``, retrying lost connections and ``NOT_LEADER``,
        ``TIMEOUT`` and ``OVERLOADED`` answers with backoff for up to
        ``timeout_s`` (default ``request_timeout_s``)."""
        loop = asyncio.get_running_loop()
        budget = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + budget
        delay = BACKOFF_MIN_S
        while True:
            try:
                conn = await self.connection()
                return await conn.request(msg, timeout_s=max(0.001, deadline - loop.time()))
            except ChorusError as e:
                remaining = deadline - loop.time()
                if self.closed or not e.retriable or e.code is ErrorCode.UNKNOWN_SHARD or remaining <= 0:
                    raise
                log.debug("%s failed (%s), retrying", type(msg).__name__, e)
            await asyncio.sleep(min(remaining, _backoff(delay)))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def metadata(self, topic: str, *, refresh: bool = False) -> fr.TopicMetadata:
        """The topic's metadata, cached for ``METADATA_MAX_AGE_S`` (``refresh`` skips the cache).

        Raises ``ChorusError(UNKNOWN_TOPIC)`` when the topic does not exist."""
        loop = asyncio.get_running_loop()
        cached = self._metadata.get(topic)
        if cached is not None and not refresh and loop.time() - cached[0] < METADATA_MAX_AGE_S:
            return cached[1]
        load = self._metadata_loads.get(topic)
        if load is None:
            load = asyncio.ensure_future(self._load_metadata(topic))
            self._metadata_loads[topic] = load

            def forget(task: asyncio.Task[fr.TopicMetadata]) -> None:
                if self._metadata_loads.get(topic) is task:
                    del self._metadata_loads[topic]
                _retrieve(task)
            load.add_done_callback(forget)
        return await asyncio.shield(load)

    async def _load_metadata(self, topic: str) -> fr.TopicMetadata:
        resp = await self.call(fr.MetadataRequest(topics=(topic,)))
        if not isinstance(resp, fr.MetadataResponse):
            raise ChorusError(None, f"unexpected answer {type(resp).__name__} to a MetadataRequest")
        for tm in resp.topics:
            if tm.topic == topic:
                break
        else:
            raise ChorusError(None, f"the metadata answer does not mention topic {topic!r}")
        if tm.error is ErrorCode.UNKNOWN_TOPIC:
            self._metadata.pop(topic, None)
            raise ChorusError(ErrorCode.UNKNOWN_TOPIC, f"topic {topic!r} does not exist")
        if tm.error is not ErrorCode.NONE:
            raise ChorusError(tm.error, f"no metadata for topic {topic!r}: {tm.error.name}")
        if not tm.shards:
            raise ChorusError(None, f"topic {topic!r} has no shards")
        self._metadata[topic] = (asyncio.get_running_loop().time(), tm)
        return tm

    async def close(self) -> None:
        self.closed = True
        tasks = list(self._metadata_loads.values())
        if self._connecting is not None:
            tasks.append(self._connecting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


# -- AsyncClient ------------------------------------------------------------------


class _AsyncContext:
    """``async with``: ``start()`` on entry (closing at once if that fails),
    ``close()`` on exit."""

    async def start(self) -> Self:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _close_now(self) -> None:
        """Close without waiting for anything still pending."""
        await self.close()

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self._close_now()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClient(_AsyncContext):
    """Metadata and plain reads (fetch) of a cluster.

    ``AsyncClient(bootstrap="127.0.0.1:7171", *, client_id=None,
    connect_timeout_s=10, request_timeout_s=30, username="", password="", tls=False, ca_file=None)``;
    use it as ``async with`` or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, bootstrap: str | Sequence[str] = f"127.0.0.1:{DEFAULT_PORT}", *,
                 client_id: str | None = None, connect_timeout_s: float = 10.0,
                 request_timeout_s: float = 30.0, username: str = "", password: str = "",
                 tls: bool | ssl.SSLContext = False, ca_file: str | None = None) -> None:
        self._cluster = _Cluster(bootstrap, client_id=client_id, connect_timeout_s=connect_timeout_s,
                                 request_timeout_s=request_timeout_s, username=username, password=password,
                                 ssl_context=client_ssl(tls, ca_file))

    @property
    def node_id(self) -> str:
        """Id of the node currently connected to ("" before connecting)."""
        conn = self._cluster.current
        return conn.node_id if conn is not None else ""

    @property
    def cluster_id(self) -> str:
        conn = self._cluster.current
        return conn.cluster_id if conn is not None else ""

    async def start(self) -> "AsyncClient":
        """Connect (``ChorusConnectionError`` if no bootstrap address answers)."""
        await self._cluster.connection()
        return self

    async def close(self) -> None:
        await self._cluster.close()

    async def metadata(self, topic: str, *, refresh: bool = False) -> fr.TopicMetadata:
        """The topic's :class:`~protocol.frames.TopicMetadata` (``len(md.shards)``
        is its shard count); ``ChorusError(UNKNOWN_TOPIC)`` if it does not exist."""
        return await self._cluster.metadata(topic, refresh=refresh)

    async def fetch(self, topic: str, shard: int, offset: int = 0, *, max_bytes: int = 1 << 20,
                    max_wait_ms: int = 0, include_control: bool = False) -> FetchResult:
        """Records of ``topic``'s shard ``shard`` from ``offset`` on (about
        ``max_bytes`` of batches; waits up to ``max_wait_ms`` for records when
        there are none yet).  Control records, which the broker writes itself
        (``records.is_control``), are left out unless ``include_control``;
        :attr:`FetchResult.next_offset` steps over them either way."""
        req = fr.FetchRequest(topic=topic, shard=shard, offset=offset, max_bytes=max_bytes, max_wait_ms=max_wait_ms)
        resp = await self._cluster.call(req, timeout_s=self._cluster.request_timeout_s + max_wait_ms / 1000)
        if not isinstance(resp, fr.FetchResponse):
            raise ChorusError(None, f"unexpected answer {type(resp).__name__} to a FetchRequest")
        records: list[Record] = []
        end = offset
        for data in resp.batches:
            try:
                header, batch = decode_batch(data)
            except CorruptBatch as e:
                raise ChorusError(None, f"corrupt batch in {topic}#{shard} at offset {offset}: {e}") from None
            records.extend(r for r in batch if r.offset >= offset and (include_control or not is_control(r)))
            end = max(end, header.end_offset)
        return FetchResult(topic, shard, offset, resp.high_watermark, records, end)

    async def query(self, topic: str, from_ts: int, to_ts: int, *, key: bytes | str | None = None,
                    limit: int = 1000, after: str | None = None) -> "QueryResult":
        """One page of a history query: the records of every shard of
        ``topic`` whose producer timestamp (ms since the epoch) is in
        ``[from_ts, to_ts)`` (only key ``key`` if given), in (timestamp,
        shard, offset) order, at most ``limit`` (1..10000).  Pass the
        result's ``next_token`` as ``after`` for the next page (None: done)."""
        from runtime import client_query

        req = client_query.request(topic, from_ts, to_ts, key, limit, after)
        return client_query.result(topic, await self._cluster.call(req))

    async def query_iter(self, topic: str, from_ts: int, to_ts: int, *, key: bytes | str | None = None,
                         page: int = 1000) -> AsyncIterator["QueriedRecord"]:
        """Every record of the query, page after page."""
        after = None
        while True:
            res = await self.query(topic, from_ts, to_ts, key=key, limit=page, after=after)
            for r in res.records:
                yield r
            if res.next_token is None:
                return
            after = res.next_token

    async def fetch_all(self, topic: str, shard: int, start: int = 0, *, max_bytes: int = 1 << 20) -> list[Record]:
        """Every record of the shard from ``start`` up to its high watermark, in
        order (control records left out)."""
        out: list[Record] = []
        offset = start
        while True:
            result = await self.fetch(topic, shard, offset, max_bytes=max_bytes)
            out.extend(result.records)
            if result.next_offset <= offset or result.next_offset >= result.high_watermark:
                return out
            offset = result.next_offset


# -- AsyncProducer ------------------------------------------------------------------


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


class AsyncConsumer(_AsyncContext):
    """A consumer attached to the durable subscription ``subscription`` of ``topic``.

    ``mode`` (``"exclusive"``, ``"shared"``, ``"failover"``) is used when the
    subscription does not exist yet.  Iterate it (``async for msg in c``) or
    call :meth:`poll`; settle each message with ``msg.ack()`` /
    ``msg.nack()``.  :attr:`active` is False while a ``failover``
    subscription holds this consumer as a standby.  Starting raises
    ``ChorusError(SUBSCRIPTION_BUSY)`` when an ``exclusive`` subscription
    already has another consumer.
    """

    def __init__(self, bootstrap: str | Sequence[str], topic: str, subscription: str, *,
                 mode: Mode | str = Mode.EXCLUSIVE, consumer_id: str | None = None, client_id: str | None = None,
                 keepalive_s: float = 1.0, ack_interval_ms: float = 20, ack_batch_max: int = 512,
                 connect_timeout_s: float = 10.0, request_timeout_s: float = 30.0, username: str = "",
                 password: str = "", tls: bool | ssl.SSLContext = False, ca_file: str | None = None) -> None:
        if not topic or not subscription:
            raise ValueError("topic and subscription must be non-empty")
        self.topic = topic
        self.subscription = subscription
        self.mode = Mode(mode)
        self.consumer_id = consumer_id or f"consumer-{os.getpid()}-{os.urandom(4).hex()}"
        self.keepalive_s = keepalive_s
        self.ack_interval_s = ack_interval_ms / 1000
        self.ack_batch_max = ack_batch_max
        self.active = False
        self._cluster = _Cluster(bootstrap, client_id=client_id, connect_timeout_s=connect_timeout_s,
                                 request_timeout_s=request_timeout_s, username=username, password=password,
                                 ssl_context=client_ssl(tls, ca_file))
        self._cluster.on_delivery = self._on_delivery
        self._request = fr.SubscribeRequest(topic=topic, subscription=subscription, mode=self.mode,
                                            consumer_id=self.consumer_id)
        # Delivered messages and acknowledgements are shared with the
        # blocking Consumer's calling threads: this lock guards them, and its
        # condition is notified when messages arrive or the consumer ends.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._messages: deque[Message] = deque()
        self._ready = asyncio.Event()  # set when messages arrive or the consumer ends (loop thread)
        self._ended = False
        self._round: _AckRound | None = None  # acknowledgements being collected
        self._rounds: dict[_AckRound, None] = {}  # rounds not yet answered, oldest first
        self._acked = asyncio.Event()  # set whenever a round is answered
        self._ack_wake = asyncio.Event()
        self._flushing = 0
        self._blocking = False  # the blocking Consumer: acknowledgement futures are concurrent ones
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._error: ChorusError | None = None
        self._closing = False
        self._closed = False

    async def start(self) -> "AsyncConsumer":
        """Attach to the subscription; deliveries start right after."""
        self._loop = asyncio.get_running_loop()
        await self._subscribe()
        self._tasks = [asyncio.create_task(self._keepalive_loop(), name="chorus-consumer-keepalive"),
                       asyncio.create_task(self._ack_loop(), name="chorus-consumer-acks")]
        return self

    async def _close_now(self) -> None:
        await self.close(timeout_s=0)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send pending acknowledgements (waiting at most ``timeout_s``) and
        detach by closing the connection; iteration then ends."""
        if self._closing:
            return
        self._closing = True
        if timeout_s > 0:
            try:
                await self.flush_acks(timeout_s)
            except ChorusError:
                pass
        with self._lock:
            self._closed = True
            left = list(self._rounds)
            self._round = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        err = ChorusError(None, "the consumer was closed before the acknowledgement was sent")
        for r in left:
            self._answer_round(r, err, quiet=True)
        await self._cluster.close()
        self._end(None, drop=True)

    def _end(self, error: ChorusError | None, drop: bool = False) -> None:
        """No more messages will arrive (loop thread): pollers get what is
        left (nothing with ``drop``), then None or ``error``."""
        with self._lock:
            if error is not None and self._error is None:
                self._error = error
            self._ended = True
            if drop:
                self._messages.clear()
            self._arrived.notify_all()
        self._ready.set()

    # -- receiving

    def __aiter__(self) -> "AsyncConsumer":
        return self

    async def __anext__(self) -> Message:
        msg = await self.poll()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def poll(self, timeout_s: float | None = None) -> Message | None:
        """The next message; None after ``timeout_s`` or once the consumer is
        closed.  Raises the error that stopped the consumer, if any."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._ready.clear()
                    msg = self._take()
                    if msg is not None or self._ended:
                        return msg
                    await self._ready.wait()
        except TimeoutError:
            return None

    def _take(self) -> Message | None:
        """The next delivered message, None if there is none (the lock may be
        held); raises the error that ended the consumer once all are taken."""
        if self._messages:
            return self._messages.popleft()
        if self._ended and self._error is not None:
            raise self._error.copy()
        return None

    def _on_delivery(self, d: fr.Delivery) -> None:
        if self._closed or d.topic != self.topic or d.subscription != self.subscription:
            return
        settle = self._settle
        msgs = [Message(d.topic, d.shard, r.offset, r.payload, r.redelivery, d.subscription, settle)
                for r in d.records]
        with self._lock:
            self._messages.extend(msgs)
            self._arrived.notify(len(msgs))
        self._ready.set()

    # -- subscription keep-alive

    async def _subscribe(self) -> None:
        resp = await self._cluster.call(self._request)
        if not isinstance(resp, fr.SubscribeResponse):
            raise ChorusError(None, f"unexpected answer {type(resp).__name__} to a SubscribeRequest")
        self.active = resp.active

    async def _keepalive_loop(self) -> None:
        while True:
            conn = self._cluster.current
            if conn is not None and conn.is_open:
                try:  # until the next keep-alive is due, or the connection is lost
                    async with asyncio.timeout(self.keepalive_s):
                        await asyncio.shield(conn.closed)
                except TimeoutError:
                    pass
            try:
                await self._subscribe()
            except ChorusError as e:
                if e.code is ErrorCode.SUBSCRIPTION_BUSY:
                    self.active = False
                    log.warning("subscription %s of %s is held by another consumer; retrying", self.subscription,
                                self.topic)
                elif not e.retriable:
                    self._end(e)
                    return
                else:
                    log.info("keep-alive of subscription %s failed: %s", self.subscription, e)
                await asyncio.sleep(min(self.keepalive_s, BACKOFF_MAX_S))

    # -- acknowledgements

    def ack(self, msg: Message) -> "asyncio.Future[None]":
        """Acknowledge ``msg`` (same as ``msg.ack()``)."""
        return self._settle(msg, False)

    def nack(self, msg: Message) -> "asyncio.Future[None]":
        """Ask for ``msg`` to be delivered again (same as ``msg.nack()``)."""
        return self._settle(msg, True)

    def _settle(self, msg: Message, nack: bool) -> Any:
        """Add an acknowledgement to the round being collected (any thread
        for the blocking Consumer); the round's future."""
        with self._lock:
            if self._closed:
                raise ChorusError(None, "the consumer is closed")
            r = self._round
            opened = r is None
            if opened:
                r = self._round = _AckRound(None if self._blocking else self._loop)
                self._rounds[r] = None
            r.groups.setdefault((msg.shard, nack), []).append(msg.offset)
            r.count += 1
            wake = opened or r.count == self.ack_batch_max
        if wake:
            if self._blocking:
                self._loop.call_soon_threadsafe(self._ack_wake.set)  # type: ignore[union-attr]
            else:
                self._ack_wake.set()
        return r.future

    async def flush_acks(self, timeout_s: float | None = None) -> None:
        """Wait until every acknowledgement made so far is confirmed or failed."""
        with self._lock:
            rounds = list(self._rounds)
        if not rounds:
            return
        self._flushing += 1
        self._ack_wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                for r in rounds:
                    while not r.done:
                        self._acked.clear()
                        await self._acked.wait()
        except TimeoutError:
            left = sum(r.count for r in rounds if not r.done)
            raise ChorusError(ErrorCode.TIMEOUT, f"{left} acknowledgements not confirmed within "
                                                 f"{timeout_s:g} s") from None
        finally:
            self._flushing -= 1

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            with self._lock:
                count = self._round.count if self._round is not None else 0
            if not count:
                continue
            if count < self.ack_batch_max and not self._closing and not self._flushing:
                await asyncio.sleep(self.ack_interval_s)
            with self._lock:
                r, self._round = self._round, None
            if r is not None:
                await self._send_round(r)

    async def _send_round(self, r: "_AckRound") -> None:
        async def send(shard: int, nack: bool, offsets: list[int]) -> None:
            req = fr.AckRequest(topic=self.topic, shard=shard, subscription=self.subscription,
                                consumer_id=self.consumer_id, offsets=tuple(offsets), nack=nack)
            resp = await self._cluster.call(req)
            if not isinstance(resp, fr.AckResponse):
                raise ChorusError(None, f"unexpected answer {type(resp).__name__} to an AckRequest")
        results = await asyncio.gather(*(send(shard, nack, offsets) for (shard, nack), offsets in r.groups.items()),
                                       return_exceptions=True)
        error = next((e for e in results if isinstance(e, BaseException)), None)
        if error is not None and not isinstance(error, ChorusError):
            error = ChorusError(None, f"acknowledgement failed: {error!r}")
        self._answer_round(r, error)

    def _answer_round(self, r: "_AckRound", error: ChorusError | None, quiet: bool = False) -> None:
        with self._lock:
            if r.done:
                return
            r.done = True
            self._rounds.pop(r, None)
        if error is not None and not quiet and not self._closed:
            log.warning("%d acknowledgements to subscription %s failed (the records will be delivered again): %s",
                        r.count, self.subscription, error)
        fut = r.future
        if not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error.copy())
                if isinstance(fut, asyncio.Future):
                    fut.exception()  # reported above: no "never retrieved" noise
        self._acked.set()


class _AckRound:
    """The acknowledgements collected during one ``ack_interval_ms``, sent
    as one ``AckRequest`` per shard and kind; every ``ack()`` of the round
    returns the round's one future."""

    __slots__ = ("groups", "count", "future", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.groups: dict[tuple[int, bool], list[int]] = {}
        self.count = 0
        self.future: Any = loop.create_future() if loop is not None else concurrent.futures.Future()
        self.done = False


# -- blocking wrappers ------------------------------------------------------------


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
              max_wait_ms: int = 0, include_control: bool = False) -> FetchResult:
        """See :meth:`AsyncClient.fetch`."""
        return self._thread.run(self._client.fetch(topic, shard, offset, max_bytes=max_bytes,
                                                   max_wait_ms=max_wait_ms, include_control=include_control))

    def fetch_all(self, topic: str, shard: int, start: int = 0) -> list[Record]:
        """See :meth:`AsyncClient.fetch_all`."""
        return self._thread.run(self._client.fetch_all(topic, shard, start))

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
