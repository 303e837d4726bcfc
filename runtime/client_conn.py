"""The client's connections to nodes: errors and results, one connection
(:class:`_Connection`), the cluster view (:class:`_Cluster`) and
:class:`AsyncClient`.  The public names are re-exported by
:mod:`runtime.client`, which documents the library."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Mapping, Self, Sequence, TypeVar

from protocol import frames as fr
from protocol.frames import ErrorCode, Level
from protocol.records import CorruptBatch, Record, decode_batch, is_control
from runtime.tls import client_ssl

if TYPE_CHECKING:
    from runtime.client_query import QueriedRecord, QueryResult

log = logging.getLogger("runtime.client")  # one logger for the whole client library

T = TypeVar("T")

DEFAULT_PORT = 7171
METADATA_MAX_AGE_S = 30.0  # cached topic metadata is refreshed after this long
BACKOFF_MIN_S = 0.05  # first retry delay; doubles up to BACKOFF_MAX_S, with jitter
BACKOFF_MAX_S = 1.0
CONNECT_ATTEMPT_MAX_S = 5.0  # one address gets at most this long to connect and handshake
RESPONSE_GRACE_S = 2.0  # a produce waits this much longer than the timeout_ms it gave the node

_RECEIVE_FRAME_BYTES_MAX = 64 << 20  # largest frame the client accepts from a node
_READ_BYTES = 1 << 16
# The protocol versions new connections offer in their handshake (the node
# picks the highest it speaks too); tests narrow it to play an older client.
OFFERED_VERSIONS: tuple[int, ...] = fr.SUPPORTED_VERSIONS
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
    # the shard the record came from (on a topic with shard groups: the
    # index's shard in the group being read); acknowledgements name it
    shard_id: int = fr.NO_SHARD_ID
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
        hello = fr.Handshake(client_id=client_id, versions=OFFERED_VERSIONS, auth=auth,
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
        if first.version not in OFFERED_VERSIONS:
            raise ChorusError(ErrorCode.UNSUPPORTED_VERSION,
                              f"{self.address} chose protocol version {first.version}, this client speaks "
                              f"{list(OFFERED_VERSIONS)}")
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
        if isinstance(msg, (fr.Delivery, fr.SubscriptionReset)):  # pushes
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

    async def groups(self, topic: str) -> tuple[fr.GroupMetadata, ...]:
        """The live shard groups of a topic with shard groups, oldest first
        (empty for a topic without); ``ChorusError(UNKNOWN_TOPIC)``."""
        resp = await self._cluster.call(fr.GroupsRequest(topic=topic))
        if not isinstance(resp, fr.GroupsResponse):
            raise ChorusError(None, f"unexpected answer {type(resp).__name__} to a GroupsRequest")
        return resp.groups

    async def fetch(self, topic: str, shard: int, offset: int = 0, *, max_bytes: int = 1 << 20,
                    max_wait_ms: int = 0, include_control: bool = False, group: int | None = None) -> FetchResult:
        """Records of ``topic``'s shard ``shard`` from ``offset`` on (about
        ``max_bytes`` of batches; waits up to ``max_wait_ms`` for records when
        there are none yet).  Control records, which the broker writes itself
        (``records.is_control``), are left out unless ``include_control``;
        :attr:`FetchResult.next_offset` steps over them either way.  On a
        topic with shard groups the current group's shard is read, or group
        ``group``'s (an id from :meth:`groups`)."""
        if group is None:
            req: Any = fr.FetchRequest(topic=topic, shard=shard, offset=offset, max_bytes=max_bytes,
                                       max_wait_ms=max_wait_ms)
        else:
            req = fr.GroupFetchRequest(topic=topic, group=group, shard=shard, offset=offset, max_bytes=max_bytes,
                                       max_wait_ms=max_wait_ms)
        resp = await self._cluster.call(req, timeout_s=self._cluster.request_timeout_s + max_wait_ms / 1000)
        if not isinstance(resp, (fr.FetchResponse, fr.GroupFetchResponse)):
            raise ChorusError(None, f"unexpected answer {type(resp).__name__} to a {type(req).__name__}")
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

    async def fetch_all(self, topic: str, shard: int, start: int = 0, *, max_bytes: int = 1 << 20,
                        group: int | None = None) -> list[Record]:
        """Every record of the shard from ``start`` up to its high watermark, in
        order (control records left out)."""
        out: list[Record] = []
        offset = start
        while True:
            result = await self.fetch(topic, shard, offset, max_bytes=max_bytes, group=group)
            out.extend(result.records)
            if result.next_offset <= offset or result.next_offset >= result.high_watermark:
                return out
            offset = result.next_offset


# -- AsyncProducer ------------------------------------------------------------------
