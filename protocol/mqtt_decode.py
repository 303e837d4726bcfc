"""The MQTT 3.1.1 decoder (sans-IO): a byte stream in, packets out.

Part of the codec in ``protocol/mqtt.py`` (which re-exports
:class:`MqttDecoder`; read its docstring for the rules): a server-side
decoder accepts only what clients send, CONNECT first and once; a
client-side one only what servers send, CONNACK first.  Every malformed
length, flag or field raises :class:`~protocol.mqtt.MqttProtocolError`,
after which the decoder refuses further input.

This module imports nothing of actors/, storage/, sim/ or runtime/.
"""
from __future__ import annotations

from typing import Any

from protocol.mqtt import (
    _DEFAULT_LIMITS,
    _EMPTY,
    _ID_ONLY,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    REFUSED_IDENTIFIER,
    REFUSED_NOT_AUTHORIZED,
    REFUSED_PROTOCOL_VERSION,
    SUBACK,
    SUBACK_FAILURE,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Connack,
    Connect,
    MqttLimits,
    MqttProtocolError,
    PacketType,
    Publish,
    Suback,
    Subscribe,
    Unsubscribe,
    Will,
    validate_topic_filter,
    validate_topic_name,
)


def _first_byte_errors(server: bool) -> tuple[str | None, ...]:
    """For each first byte of a fixed header: None if acceptable, else why not."""
    accept = ({CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT}
              if server else {CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP})
    out: list[str | None] = []
    for b in range(256):
        kind, flags = b >> 4, b & 0x0F
        if kind in (0, 15):
            out.append(f"reserved packet type {kind} (first byte 0x{b:02x}, 2.2.1)")
        elif kind not in accept:
            out.append(f"{PacketType(kind).name} is not sent to {'servers' if server else 'clients'} "
                       f"(first byte 0x{b:02x})")
        elif kind == PUBLISH:
            out.append("PUBLISH with QoS 3 (MQTT-3.3.1-4)" if flags & 0x06 == 0x06 else
                       "PUBLISH with QoS 0 and the DUP flag (MQTT-3.3.1-2)" if flags & 0x0E == 0x08 else None)
        else:  # MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1, and 0 for the others (MQTT-2.2.2-2)
            want = 0x02 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
            out.append(None if flags == want else f"{PacketType(kind).name} with reserved flags 0b{flags:04b}, "
                                                  f"must be 0b{want:04b} (MQTT-2.2.2-2)")
    return tuple(out)


_SERVER_FIRST_BYTE = _first_byte_errors(True)
_CLIENT_FIRST_BYTE = _first_byte_errors(False)
_PUBLISH_OK = tuple(b >> 4 == PUBLISH and _SERVER_FIRST_BYTE[b] is None for b in range(256))
_NOTHING_OK = (False,) * 256
_TWO_BYTES = {CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK}
_PROTOCOLS = {b"MQTT": 4, b"MQIsdp": 3}
_new = object.__new__


def _bad(message: str, connack_code: int | None = None) -> MqttProtocolError:
    return MqttProtocolError(message, connack_code)


def _read_bin(data: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    if end - pos < 2:
        raise _bad(f"truncated {what}: its length needs 2 bytes, {end - pos} left")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise _bad(f"truncated {what}: {stop - pos - 2} bytes announced, {end - pos - 2} left")
    return data[pos + 2:stop], stop


def _read_str(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    raw, stop = _read_bin(data, pos, end, what)
    try:
        text = raw.decode("utf-8")  # strict: no U+D800..U+DFFF, no overlong forms (MQTT-1.5.3-1)
    except UnicodeDecodeError as e:
        raise _bad(f"{what} is not well-formed UTF-8: {e.reason} at byte {e.start} (MQTT-1.5.3-1)") from None
    if "\x00" in text:
        raise _bad(f"{what} contains U+0000 (MQTT-1.5.3-2)")
    return text, stop


def _read_pid(data: bytes, pos: int, end: int, what: str) -> int:
    if end - pos < 2:
        raise _bad(f"truncated {what}: the packet identifier needs 2 bytes, {end - pos} left")
    pid = (data[pos] << 8) | data[pos + 1]
    if not pid:
        raise _bad(f"{what} with packet identifier 0 (MQTT-2.3.1-1)")
    return pid


class MqttDecoder:
    """Sans-IO streaming decoder: feed it bytes as they arrive, get packets.

    ``feed`` accepts chunks split at any byte boundary and returns the
    packets they complete, in order.  Packets complete within a chunk are
    decoded straight from it; only the incomplete packet at its end is
    buffered, in a bytearray that later chunks extend (so many small chunks
    cost linear time).  After a :class:`MqttProtocolError` every ``feed``
    raises again.
    """

    def __init__(self, limits: MqttLimits = _DEFAULT_LIMITS, *, server: bool = True) -> None:
        if not isinstance(limits, MqttLimits):
            raise TypeError(f"limits must be MqttLimits, not {type(limits).__name__}")
        self.limits = limits
        self.server = server
        self._first_byte = _SERVER_FIRST_BYTE if server else _CLIENT_FIRST_BYTE
        self._opening = CONNECT if server else CONNACK  # the first packet, and only once
        self._opened = False
        self._fast = _NOTHING_OK  # per first byte: may the PUBLISH fast path take it
        self._packet_bytes_max = limits.packet_bytes_max
        self._topic_bytes_max = limits.topic_bytes_max
        self._topic_slashes_max = limits.topic_levels_max - 1
        self._topics: dict[bytes, str] = {}  # recently decoded valid topic names
        self._buf = bytearray()  # the incomplete packet at the end of the stream
        self._need = 0  # its total size once its fixed header is complete, else 0
        self._kind = self._flags = self._body = 0  # type, flags, body offset of the last fixed header
        self._error: MqttProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete packet."""
        return len(self._buf)

    @property
    def failed(self) -> MqttProtocolError | None:
        """The error that stopped this decoder, if any."""
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list:
        """The packets completed by ``data`` (possibly none)."""
        if self._error is not None:
            raise MqttProtocolError(self._error.message, self._error.connack_code)
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"feed() takes bytes, not {type(data).__name__}")
            data = bytes(data)
        out: list = []
        try:
            pos = 0
            if self._buf:
                data, pos = self._resume(data, out)
                if data is None:
                    return out
            self._run(data, pos, out)
        except MqttProtocolError as e:
            e.packets = out
            self._error = e
            self._buf = bytearray()
            raise
        return out

    def _resume(self, data: bytes, out: list) -> tuple[bytes | None, int]:
        """Extend the buffered packet; once complete, decode it and return
        the stream to go on with (None while still incomplete)."""
        buf = self._buf
        need = self._need
        if need:
            missing = need - len(buf)
            if len(data) < missing:
                buf += data
                return None, 0
            buf += memoryview(data)[:missing]
            packet, pos = bytes(buf), missing
        else:  # the fixed header was split (its first byte is checked already)
            buf += data
            packet = bytes(buf)
            need = self._header(packet, 0, len(packet)) or 0
            if not need or len(packet) < need:
                self._need = need
                return None, 0
            data, pos = packet, need
        self._buf = bytearray()
        self._need = 0
        out.append(self._decode(self._kind, self._flags, packet, self._body, need))
        return data, pos

    def _header(self, data: bytes, pos: int, n: int) -> int | None:
        """Total size of the packet whose (checked) first byte is at ``pos``,
        None if its remaining length is incomplete; sets _kind, _flags, _body.
        A longer-than-needed varint (``80 00``) is accepted: 3.1.1 does not
        forbid it (only MQTT 5 does, MQTT-1.5.5-1)."""
        i = pos + 1
        length = shift = 0
        while True:
            if i >= n:
                return None
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift == 28:
                raise _bad("malformed remaining length: continues past 4 bytes (2.2.3)")
        total = i - pos + length
        self._kind, self._flags, self._body = data[pos] >> 4, data[pos] & 0x0F, i - pos
        if total > self._packet_bytes_max:
            raise _bad(f"{PacketType(self._kind).name} packet of {total} bytes exceeds "
                       f"packet_bytes_max={self._packet_bytes_max}")
        return total

    def _check_first(self, b0: int) -> None:
        why = self._first_byte[b0]
        if why is not None:
            raise _bad(why)
        kind = b0 >> 4
        if not self._opened:
            if kind != self._opening:
                raise _bad(f"first packet is {PacketType(kind).name}, must be {self._opening.name} "
                           f"({'MQTT-3.1.0-1' if self.server else 'MQTT-3.2.0-1'})")
            self._opened = True
            self._fast = _PUBLISH_OK
        elif kind == self._opening:
            raise _bad(f"second {self._opening.name} on one connection{' (MQTT-3.1.0-2)' if self.server else ''}")

    def _run(self, data: bytes, pos: int, out: list) -> None:
        n = len(data)
        first_byte = self._first_byte
        fast = self._fast
        limit = self._packet_bytes_max
        publish = self._publish
        append = out.append
        while pos < n:
            b0 = data[pos]
            if fast[b0] and pos + 3 <= n:  # a PUBLISH on an open connection with a 1- or 2-byte length
                body = pos + 2
                length = data[pos + 1]
                if length > 0x7F:
                    if data[body] > 0x7F:
                        body = 0
                    else:
                        length = (length & 0x7F) | (data[body] << 7)
                        body += 1
                end = body + length
                if body and end <= n and end - pos <= limit:
                    append(publish(b0 & 0x0F, data, body, end))
                    pos = end
                    continue
            if first_byte[b0] is not None or not self._opened or b0 >> 4 == self._opening:
                self._check_first(b0)
                fast = self._fast
            total = self._header(data, pos, n)  # checks the size before any of the body is buffered
            if total is None or pos + total > n:
                self._buf = bytearray(memoryview(data)[pos:])
                self._need = total or 0
                return
            append(self._decode(b0 >> 4, b0 & 0x0F, data, pos + self._body, pos + total))
            pos += total

    def _topic_name(self, raw: bytes) -> str:
        if not raw:
            raise _bad("PUBLISH with an empty topic name (MQTT-4.7.3-1)")
        if b"+" in raw or b"#" in raw:  # UTF-8 never hides an ASCII byte inside a multi-byte character
            raise _bad(f"wildcard in PUBLISH topic name {raw[:64]!r} (MQTT-3.3.2-2)")
        if len(raw) > self._topic_bytes_max:
            raise _bad(f"topic name of {len(raw)} bytes exceeds topic_bytes_max={self._topic_bytes_max}")
        if raw.count(b"/") > self._topic_slashes_max:
            raise _bad(f"topic name of {raw.count(b'/') + 1} levels exceeds "
                       f"topic_levels_max={self._topic_slashes_max + 1}")
        try:
            topic = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad(f"topic name is not well-formed UTF-8: {e.reason} (MQTT-1.5.3-1)") from None
        if "\x00" in topic:
            raise _bad("topic name contains U+0000 (MQTT-1.5.3-2, MQTT-4.7.3-2)")
        if len(self._topics) >= 64:
            self._topics.clear()
        self._topics[raw] = topic
        return topic

    def _publish(self, flags: int, data: bytes, pos: int, end: int) -> Publish:
        if end - pos < 2:
            raise _bad("truncated PUBLISH: no topic name length")
        tend = pos + 2 + ((data[pos] << 8) | data[pos + 1])
        qos = (flags >> 1) & 3
        if qos:
            if tend + 2 > end:
                raise _bad("truncated PUBLISH: topic name and packet identifier overrun the packet")
            pid = (data[tend] << 8) | data[tend + 1]
            if not pid:
                raise _bad("PUBLISH (QoS > 0) with packet identifier 0 (MQTT-2.3.1-1)")
            body = tend + 2
        else:
            if tend > end:
                raise _bad("truncated PUBLISH: the topic name overruns the packet")
            pid = None
            body = tend
        raw = data[pos + 2:tend]
        topic = self._topics.get(raw) or self._topic_name(raw)
        packet = _new(Publish)  # skips the frozen __init__'s six object.__setattr__ calls: half the cost
        packet.__dict__.update(topic=topic, payload=data[body:end], qos=qos, retain=flags & 1 == 1,
                               dup=flags & 8 == 8, packet_id=pid)
        return packet

    def _decode(self, kind: int, flags: int, data: bytes, pos: int, end: int) -> Any:
        if kind == PUBLISH:
            return self._publish(flags, data, pos, end)
        size = end - pos
        if kind in _TWO_BYTES:
            if size != 2:
                raise _bad(f"{PacketType(kind).name} with remaining length {size}, must be 2")
            if kind == CONNACK:
                return self._connack(data[pos], data[pos + 1])
            return _ID_ONLY[kind](_read_pid(data, pos, end, PacketType(kind).name))
        if kind in _EMPTY:
            if size:
                raise _bad(f"{PacketType(kind).name} with remaining length {size}, must be 0")
            return _EMPTY[kind]
        if kind == CONNECT:
            return self._connect(data, pos, end)
        if kind == SUBACK:
            return self._suback(data, pos, end)
        pid = _read_pid(data, pos, end, PacketType(kind).name)
        if kind == SUBSCRIBE:
            return Subscribe(pid, tuple(self._filters(data, pos + 2, end, "SUBSCRIBE", True)))
        return Unsubscribe(pid, tuple(self._filters(data, pos + 2, end, "UNSUBSCRIBE", False)))

    def _connect(self, data: bytes, pos: int, end: int) -> Connect:
        name, pos = _read_bin(data, pos, end, "CONNECT protocol name")
        level = _PROTOCOLS.get(name)
        if level is None:
            raise _bad(f"CONNECT protocol name {name[:16]!r} is neither 'MQTT' nor 'MQIsdp' (MQTT-3.1.2-1)")
        if end - pos < 4:
            raise _bad("truncated CONNECT: no protocol level, connect flags or keep alive")
        if data[pos] != level:  # judged before the rest, whose layout may differ in other versions
            raise _bad(f"CONNECT protocol level {data[pos]} is not supported with protocol name "
                       f"{name.decode()!r} (MQTT-3.1.2-2)", REFUSED_PROTOCOL_VERSION)
        flags = data[pos + 1]
        keep_alive_s = (data[pos + 2] << 8) | data[pos + 3]
        pos += 4
        if flags & 0x01:
            raise _bad("CONNECT reserved flag bit 0 is set (MQTT-3.1.2-3)")
        will_flag, will_qos, will_retain = flags & 0x04, (flags >> 3) & 3, flags & 0x20
        if will_qos == 3:
            raise _bad("CONNECT will QoS 3 (MQTT-3.1.2-14)")
        if not will_flag and (will_qos or will_retain):
            raise _bad("CONNECT will QoS or will retain without the will flag (MQTT-3.1.2-13, MQTT-3.1.2-15)")
        if flags & 0x40 and not flags & 0x80:
            raise _bad("CONNECT password flag without the username flag (MQTT-3.1.2-22)")
        client_id, pos = _read_str(data, pos, end, "client identifier")  # MQTT-3.1.3-4
        will = username = password = None
        if will_flag:
            will_topic, pos = _read_str(data, pos, end, "will topic")  # MQTT-3.1.3-10
            validate_topic_name(will_topic, self.limits)
            will_payload, pos = _read_bin(data, pos, end, "will payload")
            will = Will(will_topic, will_payload, will_qos, will_retain != 0)
        if flags & 0x80:
            username, pos = _read_str(data, pos, end, "username")  # MQTT-3.1.3-11
        if flags & 0x40:
            password, pos = _read_bin(data, pos, end, "password")
        if pos != end:
            raise _bad(f"CONNECT has {end - pos} bytes after its last field")
        # The identifier is judged once the packet is known to be well-formed.
        clean = flags & 0x02 != 0
        if not client_id and (not clean or level == 3):
            raise _bad("empty client identifier without clean session (MQTT-3.1.3-8), or from an MQTT 3.1 "
                       "client", REFUSED_IDENTIFIER)
        size = len(client_id) if client_id.isascii() else len(client_id.encode("utf-8"))
        if size > self.limits.client_id_bytes_max:
            raise _bad(f"client identifier of {size} bytes exceeds client_id_bytes_max="
                       f"{self.limits.client_id_bytes_max} (MQTT-3.1.3-9)", REFUSED_IDENTIFIER)
        return Connect(client_id, clean, keep_alive_s, will, username, password, level)

    @staticmethod
    def _connack(flags: int, code: int) -> Connack:
        if flags > 1:
            raise _bad(f"CONNACK reserved acknowledge flags 0x{flags:02x} (3.2.2.1)")
        if code > REFUSED_NOT_AUTHORIZED:
            raise _bad(f"CONNACK reserved return code {code} (3.2.2.3)")
        if flags and code:
            raise _bad(f"CONNACK with session present and return code {code} (MQTT-3.2.2-4)")
        return Connack(flags == 1, code)

    def _filters(self, data: bytes, pos: int, end: int, what: str, with_qos: bool) -> list:
        out: list = []
        cap = self.limits.subscribe_filters_max
        while pos < end:
            if len(out) == cap:
                raise _bad(f"{what} with more than subscribe_filters_max={cap} topic filters")
            flt, pos = _read_str(data, pos, end, "topic filter")  # MQTT-3.8.3-1, MQTT-3.10.3-1
            validate_topic_filter(flt, self.limits)
            if with_qos:
                if pos == end:
                    raise _bad(f"truncated {what}: topic filter {flt[:64]!r} has no requested QoS")
                qos = data[pos]
                pos += 1
                if qos > 2:  # a reserved bit set, or QoS 3
                    raise _bad(f"{what} requested QoS byte 0x{qos:02x} is not 0, 1 or 2 (MQTT-3-8.3-4)")
                out.append((flt, qos))
            else:
                out.append(flt)
        if not out:
            raise _bad(f"{what} without topic filters ({'MQTT-3.8.3-3' if with_qos else 'MQTT-3.10.3-2'})")
        return out

    @staticmethod
    def _suback(data: bytes, pos: int, end: int) -> Suback:
        pid = _read_pid(data, pos, end, "SUBACK")
        codes = tuple(data[pos + 2:end])
        if not codes:
            raise _bad("SUBACK without return codes")
        for c in codes:
            if c > 2 and c != SUBACK_FAILURE:
                raise _bad(f"SUBACK return code 0x{c:02x} is reserved (MQTT-3.9.3-2)")
        return Suback(pid, codes)
