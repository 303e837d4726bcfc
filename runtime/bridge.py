"""The socket bridge: client sockets in an asyncio I/O thread, logic in the Dispatcher actor.

A Dispatcher actor (``actors/dispatcher.py``) may not open sockets or
threads; its production host gives it an :class:`IOBridge` instead.  The
bridge runs one asyncio event loop in a daemon thread of the actor's
process, with

* the binary-protocol server (``docs/PROTOCOL.md``): it decodes frames with
  :class:`protocol.frames.FrameDecoder`, answers ``Handshake`` and
  ``Heartbeat`` itself, and hands every other request to the actor;
* the HTTP API (``runtime/http_api.py``) over a :class:`BridgeGateway`,
  whose calls become admin requests to the actor.

Thread crossing.  The I/O thread appends events to a deque and, when the
deque was idle, writes one byte to a ``socketpair``; the actor watches the
other end with ``ThespianWatch`` and on each ``WatchMessage`` calls
:meth:`IOBridge.take`.  Answers go the other way with
``loop.call_soon_threadsafe`` (:meth:`IOBridge.send`, one call per batch).

Events the actor receives from :meth:`take`::

    ("request", conn_id, correlation_id, message)   # a decoded request frame
    ("closed", conn_id)                             # the connection is gone
    ("admin", token, kind, args)                    # a Gateway call

Limits (``protocol.node.ListenConfig``): frame size; requests and request
bytes in flight per connection (reading pauses at either bound, and frames
already read wait, so a client that pipelines too much is slowed, not
buffered); bytes queued for sending per connection (a consumer that does
not read is disconnected at ``conn_out_bytes_max``); connections per node
(``OVERLOADED``) on the client port, and connections (503) and body size
(413) on the HTTP port; idle connections are closed after the session
timeout.  With ``tls_cert_file`` both ports speak TLS only
(``runtime/tls.py``: each connection's handshake is done before its
protocol object exists).  A protocol error is answered with an ``ErrorResponse`` and the
connection closed; an exception while serving one connection closes that
connection with ``INTERNAL_ERROR`` and the node keeps serving the others.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
import threading
import time
from typing import Any

from protocol.frames import (
    BASE_VERSION,
    Auth,
    Delivery,
    REQUEST_TYPES,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Handshake,
    HandshakeOk,
    Heartbeat,
    HeartbeatResponse,
    Limits,
    MetadataResponse,
    ProtocolError,
    encode_frame,
    negotiate_version,
)
from protocol.node import ListenConfig
from protocol.users import denial
from runtime.authn import Authenticator, Busy, filter_metadata, frame_needs
from runtime.gateway import GatewayError, timed_out
from runtime.latency import PENDING_MAX, LatencyHistogram

log = logging.getLogger("chorus.bridge")
_VISIBLE_TO = (MetadataResponse, Delivery)  # answers and pushes filtered by the user's roles

ADMIN_TIMEOUT_S = 15.0


class _Conn(asyncio.Protocol):
    def __init__(self, bridge: "IOBridge", conn_id: int) -> None:
        self.bridge = bridge
        self.id = conn_id
        cfg = bridge.cfg
        self.decoder = FrameDecoder(cfg.frame_bytes_max, accept=REQUEST_TYPES)
        self.transport: asyncio.Transport | None = None
        self.version = 0  # 0 until the handshake
        self.in_flight = 0
        self.in_flight_bytes = 0  # bytes of the requests posted and not yet answered
        self._sizes: dict[int, list[int]] = {}  # correlation id -> sizes of its requests not yet answered
        self._started: dict[int, list[float]] = {}  # correlation id -> when its requests were read (latency)
        self._held: collections.deque = collections.deque()  # frames read while paused, served on resume
        self.paused = False
        self.closed = False
        self.refused = False  # over connections_max: answered OVERLOADED, closed after the client's first bytes
        self.last_rx = time.monotonic()
        self.user: str | None = None  # who authenticated (runtime/authn.py); None while the node does not ask

    # ------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cfg = self.bridge.cfg
        self.transport.set_write_buffer_limits(high=cfg.conn_out_bytes_max)  # type: ignore[union-attr]
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.bridge._conn_made(self)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            self._close()  # what it sent is read: the close is a FIN, and the error frame arrives
            return
        self.last_rx = time.monotonic()
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as err:
            self._serve(err.frames)
            self._fail(err.code, err.message, err.correlation_id)
            return
        self._serve(frames)

    def _serve(self, frames: Any) -> None:
        """Serve ``frames`` in order; once paused, hold the rest until resumed."""
        if self._held or self.paused:
            self._held.extend(frames)
            return
        try:
            for i, f in enumerate(frames):
                if self.closed:
                    return
                if self.paused:
                    self._held.extend(frames[i:])
                    return
                self._frame(f)
        except Exception:  # a bug while serving this connection: close it, keep the node
            log.exception("connection %s: internal error", self.id)
            self._fail(ErrorCode.INTERNAL_ERROR, "internal error", 0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
        self.bridge._conn_gone(self)

    def pause_writing(self) -> None:
        # The client does not read what we send (a slow consumer): buffered
        # bytes reached conn_out_bytes_max.  Dropping the connection bounds
        # memory; its unacknowledged deliveries go to other consumers.
        log.warning("connection %s: %d bytes unsent, closing slow client", self.id,
                    self.transport.get_write_buffer_size() if self.transport else -1)
        self._close()

    # ------------------------------------------------------------- frames
    def _frame(self, f: Any) -> None:
        msg = f.message
        if self.version == 0:
            if not isinstance(msg, Handshake):
                self._fail(ErrorCode.HANDSHAKE_REQUIRED, "the first frame must be a Handshake", f.correlation_id)
                return
            try:
                version = negotiate_version(msg.versions)
            except ProtocolError as err:
                self._fail(err.code, err.message, f.correlation_id)
                return
            if self.bridge.auth.enabled:
                self._authenticate(msg, version, f.correlation_id)
                return
            self._accepted(version, f.correlation_id)
            return
        if isinstance(msg, Handshake):
            self._fail(ErrorCode.INVALID_REQUEST, "handshake already done", f.correlation_id)
            return
        if isinstance(msg, Heartbeat):
            self._write(HeartbeatResponse(), f.correlation_id)
            return
        if self.user is not None:
            refusal = self._refusal(msg)
            if refusal is not None:  # answered here; the connection stays usable
                self._write(ErrorResponse(code=refusal[0], message=refusal[1]), f.correlation_id)
                return
        self.in_flight += 1
        self.in_flight_bytes += f.size
        self._sizes.setdefault(f.correlation_id, []).append(f.size)
        if len(self._started) < PENDING_MAX:
            self._started.setdefault(f.correlation_id, []).append(time.monotonic())
        if self._over() and not self.paused and self.transport:
            # Stop reading (and serving what was read): a client that
            # pipelines more than the bounds is slowed down, not buffered.
            self.paused = True
            self.transport.pause_reading()
        self.bridge._post(("request", self.id, f.correlation_id, msg))

    def _accepted(self, version: int, correlation_id: int) -> None:
        self.version = version
        b = self.bridge
        self._write(HandshakeOk(node_id=b.node_id, cluster_id=b.cluster_id, version=version, limits=b.limits),
                    correlation_id, BASE_VERSION)

    def _authenticate(self, hello: Handshake, version: int, correlation_id: int) -> None:
        """Check the handshake's user and password: from the cache at once,
        else with scrypt in the authenticator's pool while this connection's
        later frames wait (reading pauses).  Before the node has read its
        users from the agency the answer is OVERLOADED, which clients retry
        (as CONNACK 3 on the MQTT port), not AUTH_FAILED."""
        if hello.auth != Auth.PASSWORD or not hello.username:
            self._fail(ErrorCode.AUTH_FAILED, "this node requires a user name and password: give username= and "
                                              "password= (or CHORUS_USER / CHORUS_PASSWORD)", correlation_id)
            return
        if not self.bridge.auth.loaded:  # a node just started: retriable, unlike a wrong password
            self._fail(ErrorCode.OVERLOADED, "this node has not loaded its users yet (it is starting); try again "
                                             "in a moment", correlation_id)
            return
        known = self.bridge.auth.check_cached(hello.username, hello.password)
        if known is not None:
            self._authenticated(hello.username, known, version, correlation_id)
            return
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.bridge.loop.create_task(self._verify(hello.username, hello.password, version, correlation_id))

    async def _verify(self, user: str, password: str, version: int, correlation_id: int) -> None:
        try:
            ok = await self.bridge.auth.verify(user, password)
        except Busy as exc:
            self._fail(ErrorCode.OVERLOADED, f"{exc} (this node verifies passwords one connection at a time)",
                       correlation_id)
            return
        self._authenticated(user, ok, version, correlation_id)
        if ok and not self.closed and self.transport is not None:
            self.paused = False
            held, self._held = list(self._held), collections.deque()
            self._serve(held)
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def _authenticated(self, user: str, ok: bool, version: int, correlation_id: int) -> None:
        if not ok:
            log.info("connection %s: authentication failed for user %r", self.id, user)
            self._fail(ErrorCode.AUTH_FAILED, f"user name or password not accepted (user {user!r})", correlation_id)
            return
        self.user = user
        self._accepted(version, correlation_id)

    def _refusal(self, msg: Any) -> tuple[ErrorCode, str] | None:
        """Why this user may not make this request now, if it may not."""
        auth = self.bridge.auth
        grants = auth.grants(self.user or "")
        if grants is None:
            return ErrorCode.PERMISSION_DENIED, f"user {self.user!r} no longer exists"
        wait = auth.throttle(grants.name)
        if wait:
            return ErrorCode.OVERLOADED, (f"user {grants.name!r} is over its request rate on this node "
                                          f"({auth.limiter.rate:g} requests/s); retry in {wait:.2f} s")
        for action, tenant in frame_needs(msg):
            if not grants.allows(action, tenant):
                auth.stats["denied"] += 1
                return ErrorCode.PERMISSION_DENIED, denial(grants, action, tenant)
        return None

    def _over(self) -> bool:
        cfg = self.bridge.cfg
        return self.in_flight >= cfg.max_in_flight or self.in_flight_bytes >= cfg.inflight_bytes_max

    def answered(self, correlation_id: int) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        started = self._started.get(correlation_id)
        if started:
            self.bridge.latency.observe(time.monotonic() - started.pop())
            if not started:
                del self._started[correlation_id]
        sizes = self._sizes.get(correlation_id)
        if sizes:
            self.in_flight_bytes -= sizes.pop()
            if not sizes:
                del self._sizes[correlation_id]
        if self.paused and not self._over() and self.transport and not self.closed:
            self.paused = False
            self.last_rx = time.monotonic()
            held, self._held = list(self._held), collections.deque()
            self._serve(held)
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def _write(self, message: Any, correlation_id: int, version: int | None = None) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(encode_frame(message, correlation_id, version=version or self.version or BASE_VERSION))

    def _fail(self, code: ErrorCode, message: str, correlation_id: int) -> None:
        if self.closed or self.transport is None:
            return
        text = message.encode()[:1024].decode(errors="ignore")
        self.transport.write(encode_frame(ErrorResponse(code=code, message=text), correlation_id,
                                          version=BASE_VERSION))
        self._close()

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


class LoopThread:
    """An asyncio loop in a daemon thread of the actor's process: ``start``
    runs ``_listen()`` in it (and raises what that raised), then the loop
    runs until ``stop``, which runs ``_shutdown()`` in it first."""

    _what = "I/O thread"

    def _init_loop(self, thread_name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> Any:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"{self._what} did not start")
        if self._error is not None:
            raise RuntimeError(f"{self._what}: cannot listen: {self._error}") from self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._started()
        self.loop.run_forever()

    async def _listen(self) -> None:
        raise NotImplementedError

    def _started(self) -> None:
        """Runs in the loop's thread once ``_listen`` is done."""

    async def _shutdown(self) -> None:
        """Close servers and connections (in the loop's thread)."""

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


class Inbox:
    """Events from an I/O thread to an actor: a deque, and one byte on a
    socketpair (which the actor watches with ``ThespianWatch``) whenever
    the deque was idle."""

    def __init__(self) -> None:
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._events: collections.deque = collections.deque()
        self._signalled = False

    def post(self, event: tuple) -> None:
        self._events.append(event)
        if not self._signalled:
            self._signalled = True
            try:
                self._wsock.send(b"x")
            except (BlockingIOError, OSError):
                pass  # the pipe is full of wake-ups already

    def fileno(self) -> int:
        return self._rsock.fileno()

    def take(self) -> list[tuple]:
        """Every event posted since the last call (called by the actor)."""
        # Drain the wake-up bytes *before* clearing the flag: cleared first,
        # a post in between would write a byte that this drain swallows,
        # leaving the flag set with no byte pending, and no later post would
        # ever wake the actor again.
        try:
            while self._rsock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._signalled = False
        out = []
        events = self._events
        while events:
            out.append(events.popleft())
        return out


class IOBridge(LoopThread):
    """The I/O side of a Dispatcher: see the module docstring."""

    def __init__(self, cfg: ListenConfig, *, node_id: str, cluster_id: str, gateway_factory: Any = None) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.limits = Limits(frame_bytes_max=cfg.frame_bytes_max, max_in_flight=cfg.max_in_flight,
                             session_timeout_ms=cfg.session_timeout_ms)
        self._inbox = Inbox()
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._admin: dict[int, asyncio.Future] = {}
        self._gateway_factory = gateway_factory
        self._init_loop("chorus-io")
        self.client_port = 0
        self.http_port = 0
        self._servers: list[Any] = []
        self._runner: Any = None
        self._tls: list[Any] = []  # runtime.tls.TlsAcceptor of the client and HTTP ports, when TLS is on
        self.auth = Authenticator(enabled=cfg.auth, requests_per_s=cfg.user_requests_per_s_max)
        self.latency = LatencyHistogram()  # binary requests, read to answered

    def io_stats(self) -> dict:
        """Connections and request latency of this I/O thread's ports (for /metrics)."""
        http = len(self._runner.server.connections) if self._runner is not None and self._runner.server else 0
        return {"connections": {"binary": len(self._conns), "http": http},
                "latency": {"binary": self.latency.snapshot()}}

    # ------------------------------------------------------------ lifecycle
    def _started(self) -> None:
        self.loop.create_task(self._reaper())

    async def _listen(self) -> None:
        cfg = self.cfg
        accept: Any = self._accept
        if cfg.tls_cert_file:
            from runtime.tls import TlsAcceptor, server_context

            context = server_context(cfg.tls_cert_file, cfg.tls_key_file)
            self._tls = [TlsAcceptor(context, what="client port", handshakes_max=cfg.connections_max)]
            accept = self._tls[0].wrap(self._accept)
        server = await self.loop.create_server(accept, cfg.host, cfg.client_port, reuse_address=True,
                                               backlog=256)
        self._servers.append(server)
        self.client_port = server.sockets[0].getsockname()[1]
        if cfg.http_port >= 0:
            from aiohttp import web

            from runtime.http_api import http_protocol_factory, make_app

            gateway = self._gateway_factory(self) if self._gateway_factory else BridgeGateway(self)
            app = make_app(gateway, node_id=self.node_id, body_bytes_max=cfg.http_body_bytes_max,
                           auth=self.auth if cfg.auth else None, metrics_auth=cfg.metrics_auth and cfg.auth,
                           metrics_series_max=cfg.metrics_series_max, io_stats=self.io_stats)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            http = http_protocol_factory(self._runner.server, cfg.http_connections_max)
            if cfg.tls_cert_file:
                self._tls.append(TlsAcceptor(context, what="HTTP port", handshakes_max=cfg.http_connections_max))
                http = self._tls[1].wrap(http)
            server = await self.loop.create_server(http, cfg.host, cfg.http_port, reuse_address=True, backlog=128)
            self._servers.append(server)
            self.http_port = server.sockets[0].getsockname()[1]

    def _accept(self) -> _Conn:
        return _Conn(self, next(self._ids))

    def _conn_made(self, conn: _Conn) -> None:
        if len(self._conns) >= self.cfg.connections_max:
            # Refuse politely: the error frame goes out at once; the close
            # waits for the client's first bytes (its Handshake), so that it
            # is a FIN and not a reset that could discard the frame.
            log.info("client port: %d connections (connections_max), refusing one", len(self._conns))
            conn._write(ErrorResponse(code=ErrorCode.OVERLOADED,
                                      message=f"too many connections: this node serves at most "
                                              f"{self.cfg.connections_max} on its client port "
                                              f"(client_connections_max); try again later or another node"),
                        0, BASE_VERSION)
            conn.refused = True
            self.loop.call_later(2.0, conn._close)
            return
        self._conns[conn.id] = conn

    async def _reaper(self) -> None:
        timeout_s = self.cfg.session_timeout_ms / 1000.0
        while True:
            await asyncio.sleep(min(1.0, timeout_s / 4))
            now = time.monotonic()
            for conn in list(self._conns.values()):
                if now - conn.last_rx > timeout_s and conn.in_flight == 0:
                    conn._fail(ErrorCode.TIMEOUT, "session timed out (no frame received)", 0)

    def _conn_gone(self, conn: _Conn) -> None:
        if self._conns.pop(conn.id, None) is not None:
            self._post(("closed", conn.id))

    async def _shutdown(self) -> None:
        for s in self._servers:
            s.close()
        for t in self._tls:
            t.close()
        for c in list(self._conns.values()):
            c._close()
        if self._runner is not None:
            await self._runner.cleanup()
        self.auth.close()

    # ------------------------------------------------------- actor <- I/O
    def _post(self, event: tuple) -> None:
        self._inbox.post(event)

    def fileno(self) -> int:
        """The descriptor the actor watches (``ThespianWatch``)."""
        return self._inbox.fileno()

    def set_users(self, tree: Any) -> None:
        """The users the actor read from the agency (``actors/dispatcher_users.py``)."""
        self.auth.set_users(tree)

    def take(self) -> list[tuple]:
        """Every event posted since the last call (called by the actor)."""
        return self._inbox.take()

    # ------------------------------------------------------- actor -> I/O
    def send(self, items: list[tuple]) -> None:
        """Deliver the actor's answers: ``("frame", conn_id, corr, message,
        answers_request)``, ``("close", conn_id, code, text)`` and
        ``("admin", token, ok, result)``."""
        if items:
            self.loop.call_soon_threadsafe(self._deliver, items)

    def _deliver(self, items: list[tuple]) -> None:
        for item in items:
            kind = item[0]
            if kind == "frame":
                _, conn_id, corr, message, answers = item
                conn = self._conns.get(conn_id)
                if conn is None:
                    continue
                if conn.user is not None and type(message) in _VISIBLE_TO:
                    message = self._visible(conn.user, message)
                    if message is None:  # a push the user may no longer receive: dropped, redelivered elsewhere
                        continue
                try:
                    conn._write(message, corr)
                except Exception:
                    log.exception("connection %s: cannot encode %s", conn_id, type(message).__name__)
                    conn._fail(ErrorCode.INTERNAL_ERROR, "internal error", corr)
                    continue
                if answers:
                    conn.answered(corr)
            elif kind == "close":
                _, conn_id, code, text = item
                conn = self._conns.get(conn_id)
                if conn is not None:
                    conn._fail(code, text, 0)
            elif kind == "admin":
                _, token, ok, result = item
                fut = self._admin.pop(token, None)
                if fut is not None and not fut.done():
                    if ok:
                        fut.set_result(result)
                    else:
                        fut.set_exception(GatewayError(*result))

    def _visible(self, user: str, message: Any) -> Any:
        """What of ``message`` the user may see now: metadata of its tenants'
        topics only; a delivery only while it may still consume (a revoked
        role stops the pushes of a subscription made before)."""
        grants = self.auth.grants(user)
        if grants is None:
            return None
        if isinstance(message, MetadataResponse):
            return filter_metadata(grants, message)
        return message if grants.allows("consume", message.topic.split("/", 1)[0]) else None

    # ----------------------------------------------------------- gateway
    async def call(self, kind: str, args: dict, timeout_s: float = ADMIN_TIMEOUT_S) -> Any:
        token = next(self._tokens)
        fut = self.loop.create_future()
        self._admin[token] = fut
        self._post(("admin", token, kind, args))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            raise timed_out(f"{kind}: the node did not answer within {timeout_s:.0f} s") from None
        finally:
            self._admin.pop(token, None)


class BridgeGateway:
    """:class:`runtime.gateway.Gateway` over the bridge: each call is an
    admin request the Dispatcher actor answers."""

    def __init__(self, bridge: IOBridge) -> None:
        self.bridge = bridge

    async def status(self) -> dict:
        return await self.bridge.call("status", {})

    async def directory(self) -> dict:
        return await self.bridge.call("directory", {})

    async def metrics(self, scope: str = "node") -> dict:
        return await self.bridge.call("metrics", {"scope": scope})

    async def promote_node(self, node_id: str) -> dict:
        return await self.bridge.call("promote_node", {"node_id": node_id})

    async def mqtt(self) -> dict:
        return await self.bridge.call("mqtt", {})

    async def mqtt_bridges(self) -> list[dict]:
        return await self.bridge.call("mqtt_bridges", {})

    async def put_mqtt_bridge(self, name: str, spec: dict) -> dict:
        return await self.bridge.call("put_mqtt_bridge", {"name": name, "spec": spec})

    async def delete_mqtt_bridge(self, name: str) -> dict:
        return await self.bridge.call("delete_mqtt_bridge", {"name": name})

    async def shards(self, topic: str | None = None) -> list[dict]:
        return await self.bridge.call("shards", {"topic": topic})

    async def move_shard(self, body: dict) -> dict:
        return await self.bridge.call("move_shard", dict(body))

    async def moves(self) -> dict:
        return await self.bridge.call("moves", {})

    async def drain_node(self, node_id: str, cancel: bool = False) -> dict:
        return await self.bridge.call("drain_node", {"node_id": node_id, "cancel": cancel})

    async def remove_node(self, node_id: str) -> dict:
        return await self.bridge.call("remove_node", {"node_id": node_id})

    async def topics(self) -> list[dict]:
        return await self.bridge.call("topics", {})

    async def topic(self, name: str) -> dict:
        return await self.bridge.call("topic", {"name": name})

    async def create_topic(self, spec: dict) -> dict:
        return await self.bridge.call("create_topic", {"spec": spec})

    async def alter_topic(self, name: str, changes: dict) -> dict:
        return await self.bridge.call("alter_topic", {"name": name, "changes": changes})

    async def delete_topic(self, name: str) -> dict:
        return await self.bridge.call("delete_topic", {"name": name})

    async def truncate_shards(self, name: str) -> dict:
        return await self.bridge.call("truncate_shards", {"name": name})

    async def lookup(self, topic: str) -> list[dict]:
        return await self.bridge.call("lookup", {"topic": topic})

    async def produce(self, topic: str, records: list[dict], level: str = "quorum",
                      shard: int | None = None) -> dict:
        return await self.bridge.call("produce", {"topic": topic, "records": records, "level": level,
                                                  "shard": shard})

    async def fetch(self, topic: str, shard: int, offset: int = 0, max_bytes: int = 1 << 20,
                    group: int | None = None) -> dict:
        return await self.bridge.call("fetch", {"topic": topic, "shard": shard, "offset": offset,
                                                "max_bytes": max_bytes, "group": group})

    async def query(self, topic: str, from_ms: int, to_ms: int, key: str | None = None, limit: int = 1000,
                    after: str | None = None) -> dict:
        return await self.bridge.call("query", {"topic": topic, "from": from_ms, "to": to_ms, "key": key,
                                                "limit": limit, "after": after})

    async def subscriptions(self, topic: str) -> list[dict]:
        return await self.bridge.call("subscriptions", {"topic": topic})

    async def users(self) -> dict:
        return await self.bridge.call("users", {})

    async def change_user(self, op: str, name: str, arg: Any = None) -> dict:
        return await self.bridge.call("change_user", {"op": op, "name": name, "arg": arg})

    async def namespaces(self) -> dict:
        return await self.bridge.call("namespaces", {})

    async def create_namespace(self, path: str) -> dict:
        return await self.bridge.call("create_namespace", {"path": path})

    async def delete_namespace(self, path: str) -> dict:
        return await self.bridge.call("delete_namespace", {"path": path})
