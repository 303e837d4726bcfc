"""The MQTT listener: client sockets in an asyncio I/O thread, the broker
logic in the MqttFront actor (``actors/mqtt_front.py``).

Like the Dispatcher's bridge (``runtime/bridge.py``): the I/O thread decodes
packets with :class:`protocol.mqtt.MqttDecoder` and queues them as events,
one event per read (many packets); a byte on a socketpair wakes the actor,
which takes every queued event at once.  The actor's answers come back in
one ``call_soon_threadsafe`` per batch, as packets per connection, encoded
here.

Events the actor takes::

    ("packets", conn_id, [packet, ...])
    ("closed", conn_id)              # the connection is gone (abrupt unless a DISCONNECT came first)

Malformed input closes the connection (after a CONNACK with a return code
where the spec has one: MQTT-3.1.2-2, 3.1.3-9); the node and the other
connections carry on.  Bounds: connections (CONNACK 3 beyond), packet size, unsent bytes per
connection (a client that does not read is dropped), QoS 1/2 PUBLISH bytes
not yet acknowledged per connection (that connection's reading pauses
until the PUBACK/PUBREC the actor sends make room), and queued packets and
bytes (reading pauses on every connection while the actor is behind).
With ``tls_cert_file`` the port speaks TLS only (``runtime/tls.py``).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from typing import Any

from protocol.mqtt import (
    REFUSED_BAD_CREDENTIALS,
    REFUSED_NOT_AUTHORIZED,
    REFUSED_SERVER_UNAVAILABLE,
    Connack,
    MqttDecoder,
    MqttLimits,
    MqttProtocolError,
    Puback,
    Publish,
    Pubrec,
    encode,
    encode_publish,
)
from protocol.mqtt_cluster import MqttListenConfig
from protocol.users import mqtt_allows
from runtime.authn import Authenticator, Busy
from runtime.bridge import Inbox, LoopThread
from runtime.latency import LatencyHistogram

log = logging.getLogger("chorus.mqtt")

INBOX_PACKETS_MAX = 50_000  # packets queued for the actor before reading pauses
INBOX_BYTES_MAX = 64 << 20  # ... or bytes (of those packets, as read)
PUBLISH_OVERHEAD_BYTES = 8  # a PUBLISH's fixed header, topic length and packet id, counted with topic and payload
REFUSE_WAIT_S = 5.0  # a refused connection gets its CONNACK 3 on its CONNECT, or after this long


class _Conn(asyncio.Protocol):
    def __init__(self, listener: "MqttListener", conn_id: int) -> None:
        self.listener = listener
        self.id = conn_id
        self.decoder = MqttDecoder(MqttLimits(packet_bytes_max=listener.cfg.packet_bytes_max), server=True)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.refused = False  # over connections_max: CONNACK 3 on its CONNECT, then closed
        # QoS 1/2 PUBLISHes received and not yet acknowledged (PUBACK / PUBREC
        # sent): packet id -> bytes; reading pauses at inflight_bytes_max
        self.unacked: dict[int, int] = {}
        self.unacked_t: dict[int, float] = {}  # packet id -> when it was read (latency; bounded like unacked)
        self.in_flight_bytes = 0
        self.held = False  # paused for in-flight bytes (not for the listener's inbox)
        self._waiting: list = []  # packets read and not yet posted while held
        self.user: str | None = None  # who logged in (when the listener authenticates)
        self.verifying = False  # the CONNECT's password is being checked; what follows waits here
        self._connecting: list = []
        self.throttled = False  # paused: its user is over user_publishes_per_s_max

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=self.listener.cfg.conn_out_bytes_max)  # type: ignore[union-attr]
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if not self.listener._conn_made(self):
            return
        if self.listener.paused:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.refused:
            self.listener._refuse(self)
            return
        try:
            packets = self.decoder.feed(data)
        except MqttProtocolError as err:
            log.info("mqtt connection %s: %s", self.id, err.message)
            if err.packets and (self.user is not None or not self.listener.auth.enabled):
                # what came before the bad packet counts (a PUBLISH, a DISCONNECT)
                self.listener._post(("packets", self.id, list(err.packets)), len(err.packets), len(data))
            if err.connack_code is not None and self.transport is not None:
                self.transport.write(encode(Connack(False, err.connack_code)))
            self.close()
            return
        if packets:
            if self.user is None and self.listener.auth.enabled:
                self._login(packets, len(data))
                return
            self._take_in(packets, len(data))

    # ------------------------------------------------------------ login
    def _login(self, packets: list, nbytes: int) -> None:
        """The CONNECT (the decoder lets nothing come first) needs a user
        and its password: from the cache at once, else with scrypt in the
        authenticator's pool while reading pauses.  CONNACK 4 for wrong or
        missing credentials, 5 for a user with no MQTT-usable role (or a
        will it may not publish), 3 while the users are not loaded yet."""
        if self.verifying:
            self._connecting.extend(packets)
            return
        auth = self.listener.auth
        connect = packets[0]
        user, password = connect.username or "", (connect.password or b"").decode("utf-8", "replace")
        if not auth.loaded:
            self._refuse_login(REFUSED_SERVER_UNAVAILABLE, user, "users not loaded yet")
            return
        if not user or not password:
            self._refuse_login(REFUSED_BAD_CREDENTIALS, user, "no user name or password")
            return
        known = auth.check_cached(user, password)
        if known is not None:
            self._logged_in(user, known, packets, nbytes)
            return
        self.verifying = True
        self._connecting = list(packets)
        if self.transport is not None:
            self.transport.pause_reading()
        self.listener.loop.create_task(self._verify(user, password, nbytes))

    async def _verify(self, user: str, password: str, nbytes: int) -> None:
        try:
            ok = await self.listener.auth.verify(user, password)
        except Busy:
            self._refuse_login(REFUSED_SERVER_UNAVAILABLE, user, "too many logins being verified")
            return
        self.verifying = False
        packets, self._connecting = self._connecting, []
        self._logged_in(user, ok, packets, nbytes)
        self._resume_if_free()

    def _logged_in(self, user: str, ok: bool, packets: list, nbytes: int) -> None:
        if self.closed:
            return
        if not ok:
            self._refuse_login(REFUSED_BAD_CREDENTIALS, user, "wrong user name or password")
            return
        grants = self.listener.auth.grants(user)
        will = packets[0].will
        if grants is None or not grants.mqtt_usable:
            self._refuse_login(REFUSED_NOT_AUTHORIZED, user, "no produce or consume role")
            return
        if will is not None and not mqtt_allows(grants, "produce", will.topic):
            self._refuse_login(REFUSED_NOT_AUTHORIZED, user, f"may not publish its will to {will.topic!r}")
            return
        self.user = user
        self._take_in(packets, nbytes)

    def _refuse_login(self, code: int, user: str, why: str) -> None:
        log.info("mqtt connection %s: CONNECT of user %r refused with %d: %s", self.id, user, code, why)
        if self.transport is not None and not self.closed:
            self.transport.write(encode(Connack(False, code)))
        self.close()

    def _throttle(self, wait_s: float) -> None:
        """Its user is over its publish rate: stop reading this connection
        until the user's bucket is out of debt (no message is lost)."""
        if self.throttled or self.transport is None or self.closed:
            return
        self.throttled = True
        self.listener.auth.stats["throttled"] += 1
        self.transport.pause_reading()
        self.listener.loop.call_later(wait_s, self._unthrottle)

    def _unthrottle(self) -> None:
        self.throttled = False
        self._resume_if_free()

    def _resume_if_free(self) -> None:
        if not (self.held or self.throttled or self.verifying or self.closed or self.listener.paused) \
                and self.transport is not None:
            self.transport.resume_reading()

    def _take_in(self, packets: list, nbytes: int) -> None:
        """Post ``packets`` to the actor, up to the one that takes the
        connection's unacknowledged PUBLISH bytes to the bound; hold the
        rest (and stop reading) until acknowledgements make room."""
        if self._waiting or self.held:
            self._waiting.extend(packets)
            return
        cap = self.listener.cfg.inflight_bytes_max
        publishes = 0
        for i, p in enumerate(packets):
            if type(p) is Publish:
                publishes += 1
            if type(p) is Publish and p.qos:
                size = len(p.topic) + len(p.payload) + PUBLISH_OVERHEAD_BYTES
                self.in_flight_bytes += size - self.unacked.get(p.packet_id, 0)  # a resend replaces
                self.unacked[p.packet_id] = size
                self.unacked_t.setdefault(p.packet_id, time.monotonic())
                if self.in_flight_bytes >= cap and i + 1 < len(packets):
                    self._waiting = packets[i + 1:]
                    packets = packets[:i + 1]
                    break
        self.listener._post(("packets", self.id, packets), len(packets), nbytes)
        if publishes and self.user is not None:
            wait_s = self.listener.auth.limiter.debit(self.user, publishes)
            if wait_s > 0:
                self._throttle(wait_s)
        if self.in_flight_bytes >= cap and not self.held and self.transport is not None:
            self.held = True
            self.transport.pause_reading()

    def acked(self, packet_id: int) -> None:
        """The broker answered the client's PUBLISH ``packet_id``."""
        self.in_flight_bytes -= self.unacked.pop(packet_id, 0)
        t0 = self.unacked_t.pop(packet_id, None)
        if t0 is not None:
            self.listener.latency.observe(time.monotonic() - t0)

    def maybe_resume(self) -> None:
        if not self.held or self.closed or self.in_flight_bytes >= self.listener.cfg.inflight_bytes_max:
            return
        self.held = False
        waiting, self._waiting = self._waiting, []
        if waiting:
            self._take_in(waiting, 0)
        if not self.held and not self.listener.paused and not self.throttled and self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener._gone(self)

    def pause_writing(self) -> None:
        log.warning("mqtt connection %s: %d bytes unsent, closing slow client", self.id,
                    self.transport.get_write_buffer_size() if self.transport else -1)
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


class MqttListener(LoopThread):
    """See the module docstring."""

    _what = "MQTT listener"

    def __init__(self, cfg: MqttListenConfig) -> None:
        self.cfg = cfg
        self._inbox = Inbox()
        self._queued = 0
        self._queued_bytes = 0
        self.paused = False
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        self._init_loop("chorus-mqtt")
        self._server: Any = None
        self._tls: Any = None  # runtime.tls.TlsAcceptor when TLS is on
        self.port = 0
        self.auth = Authenticator(enabled=cfg.auth, requests_per_s=cfg.user_publishes_per_s_max)
        self.latency = LatencyHistogram()  # QoS 1/2 PUBLISH read to PUBACK/PUBREC written

    # ------------------------------------------------------------ lifecycle
    async def _listen(self) -> None:
        accept: Any = self._accept
        if self.cfg.tls_cert_file:
            from runtime.tls import TlsAcceptor, server_context

            self._tls = TlsAcceptor(server_context(self.cfg.tls_cert_file, self.cfg.tls_key_file),
                                    what="MQTT port", handshakes_max=min(self.cfg.connections_max, 1024))
            accept = self._tls.wrap(self._accept)
        self._server = await self.loop.create_server(accept, self.cfg.host, self.cfg.port,
                                                     reuse_address=True, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> _Conn:
        return _Conn(self, next(self._ids))

    def _conn_made(self, conn: _Conn) -> bool:
        """Register ``conn``, or refuse it when the listener is full: MQTT
        has no "busy" packet, so its CONNECT is answered with CONNACK 3
        (server unavailable) and the connection closed."""
        if len(self._conns) >= self.cfg.connections_max:
            log.info("mqtt: %d connections (mqtt_connections_max), refusing one", len(self._conns))
            conn.refused = True
            self.loop.call_later(REFUSE_WAIT_S, self._refuse, conn)
            return False
        self._conns[conn.id] = conn
        return True

    def _refuse(self, conn: _Conn) -> None:
        if conn.transport is not None and not conn.closed:
            conn.transport.write(encode(Connack(False, 3)))
            conn.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._tls is not None:
            self._tls.close()
        for c in list(self._conns.values()):
            c.close()
        self.auth.close()

    def set_users(self, tree: Any) -> None:
        """The users the MqttFront read from the agency (called from its thread)."""
        self.auth.set_users(tree)

    # ------------------------------------------------------- actor <- I/O
    def _post(self, event: tuple, count: int = 1, nbytes: int = 0) -> None:
        self._queued += count
        self._queued_bytes += nbytes
        if (self._queued > INBOX_PACKETS_MAX or self._queued_bytes > INBOX_BYTES_MAX) and not self.paused:
            self.paused = True  # the actor is behind: stop reading until it catches up
            for c in self._conns.values():
                if c.transport is not None and not c.closed:
                    c.transport.pause_reading()
        self._inbox.post(event)

    def _gone(self, conn: _Conn) -> None:
        if self._conns.pop(conn.id, None) is not None:
            self._post(("closed", conn.id), 0)

    def fileno(self) -> int:
        return self._inbox.fileno()

    def take(self) -> list[tuple]:
        """Every event posted since the last call (called by the actor)."""
        out = self._inbox.take()
        self._queued = 0
        self._queued_bytes = 0
        if self.paused:
            self.loop.call_soon_threadsafe(self._resume)
        return out

    def _resume(self) -> None:
        if self.paused and self._queued <= INBOX_PACKETS_MAX // 2 and self._queued_bytes <= INBOX_BYTES_MAX // 2:
            self.paused = False
            for c in self._conns.values():
                if c.transport is not None and not c.closed and not c.held and not c.throttled \
                        and not c.verifying:
                    c.transport.resume_reading()

    # ------------------------------------------------------- actor -> I/O
    def send(self, out: dict[Any, list], closing: set) -> None:
        """Packets per connection, then close those in ``closing``."""
        self.loop.call_soon_threadsafe(self._deliver, out, closing)

    def _deliver(self, out: dict[Any, list], closing: set) -> None:
        # A QoS 0 message for several subscribers is one Publish object in
        # their lists (``Session.offer``): encoded once, its bytes shared.
        # (Keyed by id: every packet is alive in ``out`` for the whole call.)
        shared: dict[int, bytes] = {}
        for conn_id, packets in out.items():
            conn = self._conns.get(conn_id)
            if conn is None or conn.closed or conn.transport is None:
                continue
            chunks = []
            append = chunks.append
            for p in packets:
                if type(p) is Publish:
                    if p.qos:
                        append(encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id))
                    else:
                        data = shared.get(id(p))
                        if data is None:
                            data = shared[id(p)] = encode_publish(p.topic, p.payload, 0, p.retain)
                        append(data)
                else:
                    if type(p) is Puback or type(p) is Pubrec:
                        conn.acked(p.packet_id)
                    append(encode(p))
            conn.transport.write(b"".join(chunks))
            if conn.held:
                conn.maybe_resume()
        for conn_id in closing:
            conn = self._conns.get(conn_id)
            if conn is not None:
                conn.close()
