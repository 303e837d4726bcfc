"""MQTT 3.1.1 packets (sans-IO): bytes in, packets out, and back.

The codec of the MQTT front end.  It opens no sockets and keeps no clocks:
:class:`MqttDecoder` turns a byte stream into packets, :func:`encode` (and
its fast path :func:`encode_publish`) turns packets into bytes.  The
specification is OASIS MQTT Version 3.1.1 (2014); comments cite its
conformance statements as ``MQTT-x.y.z-n`` (or a section number).

Fixed header: one byte ``type << 4 | flags``, then the *remaining length*
(the bytes that follow) as a base-128 varint of 1 to 4 bytes, at most
268,435,455.  Strings are a u16 byte length then strict UTF-8 without
U+0000; binary fields a u16 length then the bytes.

A server-side decoder (``server=True``) accepts only what clients send and
requires CONNECT first and only once (MQTT-3.1.0-1, MQTT-3.1.0-2); a
client-side decoder accepts only what servers send, CONNACK first
(MQTT-3.2.0-1).  Anything else -- and every malformed length, flag or field
the specification says a receiver must check -- raises
:class:`MqttProtocolError`, after which the decoder refuses further input:
the connection is to be closed.  ``err.connack_code`` is set for the two
CONNECT problems the server answers with a CONNACK before closing: an
unacceptable protocol level (MQTT-3.1.2-2) and a rejected client identifier
(MQTT-3.1.3-8, MQTT-3.1.3-9).  MQTT 3.1 clients (protocol name "MQIsdp",
level 3) are accepted too.

:class:`MqttLimits` bounds what a decoder accepts (units in the names).  A
fixed header announcing a packet over ``packet_bytes_max`` is rejected
before its body arrives, so a decoder buffers at most one packet.

Packets are frozen dataclasses.  ``encode`` checks their fields (raising
``ValueError``/``TypeError``) so that a conforming peer accepts what it
writes -- except the syntax of topic names and filters, which the broker
validated on the way in (:func:`validate_topic_name`,
:func:`validate_topic_filter`).

This module imports nothing of actors/, storage/, sim/ or runtime/.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

__all__ = [
    "PacketType", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE",
    "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT",
    "ACCEPTED", "REFUSED_PROTOCOL_VERSION", "REFUSED_IDENTIFIER", "REFUSED_SERVER_UNAVAILABLE",
    "REFUSED_BAD_CREDENTIALS", "REFUSED_NOT_AUTHORIZED", "SUBACK_FAILURE", "REMAINING_LENGTH_MAX",
    "Will", "Connect", "Connack", "Publish", "Puback", "Pubrec", "Pubrel", "Pubcomp", "Subscribe", "Suback",
    "Unsubscribe", "Unsuback", "Pingreq", "Pingresp", "Disconnect", "Packet",
    "MqttLimits", "MqttProtocolError", "MqttDecoder", "encode", "encode_publish",
    "validate_topic_name", "validate_topic_filter", "parse_shared",
]


class PacketType(IntEnum):
    """Control packet types: the high nibble of a fixed header's first byte."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


(CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
 PINGREQ, PINGRESP, DISCONNECT) = PacketType

# CONNACK return codes (3.2.2.3)
ACCEPTED = 0
REFUSED_PROTOCOL_VERSION = 1
REFUSED_IDENTIFIER = 2
REFUSED_SERVER_UNAVAILABLE = 3
REFUSED_BAD_CREDENTIALS = 4
REFUSED_NOT_AUTHORIZED = 5
SUBACK_FAILURE = 0x80

REMAINING_LENGTH_MAX = 268_435_455  # four varint bytes (2.2.3)
_U16 = struct.Struct(">H")
_U16_MAX = 0xFFFF
_BYTE = [bytes((b,)) for b in range(256)]


# -- packets --------------------------------------------------------------------


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class Connect:
    client_id: str
    clean_session: bool = True
    keep_alive_s: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_level: int = 4  # 4: MQTT 3.1.1 (name "MQTT"); 3: MQTT 3.1 (name "MQIsdp")


@dataclass(frozen=True)
class Connack:
    session_present: bool
    return_code: int


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # None exactly when qos == 0


@dataclass(frozen=True)
class Puback:
    packet_id: int


@dataclass(frozen=True)
class Pubrec:
    packet_id: int


@dataclass(frozen=True)
class Pubrel:
    packet_id: int


@dataclass(frozen=True)
class Pubcomp:
    packet_id: int


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]  # (filter, requested qos)


@dataclass(frozen=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]  # granted qos 0, 1, 2 or SUBACK_FAILURE


@dataclass(frozen=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True)
class Pingreq:
    """Client keep-alive probe."""


@dataclass(frozen=True)
class Pingresp:
    """Answer to a Pingreq."""


@dataclass(frozen=True)
class Disconnect:
    """Clean end of a client's connection (its will is discarded)."""


Packet = (Connect | Connack | Publish | Puback | Pubrec | Pubrel | Pubcomp | Subscribe | Suback | Unsubscribe
          | Unsuback | Pingreq | Pingresp | Disconnect)
_ID_ONLY: dict[int, type] = {PUBACK: Puback, PUBREC: Pubrec, PUBREL: Pubrel, PUBCOMP: Pubcomp, UNSUBACK: Unsuback}
_EMPTY: dict[int, Any] = {PINGREQ: Pingreq(), PINGRESP: Pingresp(), DISCONNECT: Disconnect()}


@dataclass(frozen=True)
class MqttLimits:
    """What one decoder accepts: a server's policy within the specification."""

    packet_bytes_max: int = 1 << 20  # whole packet incl. fixed header
    client_id_bytes_max: int = 256  # spec: servers MUST accept 1..23, MAY accept more (MQTT-3.1.3-5)
    topic_bytes_max: int = 1024  # topic names and filters (the spec allows 65,535)
    topic_levels_max: int = 32
    subscribe_filters_max: int = 64  # filters in one SUBSCRIBE/UNSUBSCRIBE

    def __post_init__(self) -> None:
        for name, low, high in (("packet_bytes_max", 2, 5 + REMAINING_LENGTH_MAX),
                                ("client_id_bytes_max", 23, _U16_MAX), ("topic_bytes_max", 1, _U16_MAX),
                                ("topic_levels_max", 1, _U16_MAX), ("subscribe_filters_max", 1, _U16_MAX)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"MqttLimits.{name} must be an int in [{low}, {high}], got {value!r}")


class MqttProtocolError(Exception):
    """Received bytes break MQTT 3.1.1: close the connection.

    ``connack_code``, when set, is the CONNACK return code to answer with
    before closing (REFUSED_PROTOCOL_VERSION or REFUSED_IDENTIFIER).
    ``packets`` holds what the failing ``feed`` call decoded before the bad
    packet.
    """

    def __init__(self, message: str, connack_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.connack_code = connack_code
        self.packets: list = []

    def __reduce__(self) -> tuple:
        return type(self), (self.message, self.connack_code)


_DEFAULT_LIMITS = MqttLimits()


# -- topics ---------------------------------------------------------------------


def _check_topic(text: Any, what: str, limits: MqttLimits) -> None:
    if type(text) is not str:
        raise MqttProtocolError(f"{what} must be a str, not {type(text).__name__}")
    if not text:
        raise MqttProtocolError(f"empty {what} (MQTT-4.7.3-1)")
    if "\x00" in text:
        raise MqttProtocolError(f"{what} contains U+0000 (MQTT-4.7.3-2)")
    size = len(text)
    if not text.isascii():
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise MqttProtocolError(f"{what} is not encodable as UTF-8 (a lone surrogate)") from None
    if size > limits.topic_bytes_max:
        raise MqttProtocolError(f"{what} of {size} bytes exceeds topic_bytes_max={limits.topic_bytes_max}")
    if text.count("/") >= limits.topic_levels_max:
        raise MqttProtocolError(f"{what} of {text.count('/') + 1} levels exceeds "
                                f"topic_levels_max={limits.topic_levels_max}")


def validate_topic_name(topic: str, limits: MqttLimits = _DEFAULT_LIMITS) -> None:
    """Raise :class:`MqttProtocolError` unless ``topic`` may name a published topic."""
    _check_topic(topic, "topic name", limits)
    if "+" in topic or "#" in topic:
        raise MqttProtocolError(f"wildcard in topic name {topic[:64]!r} (MQTT-3.3.2-2, MQTT-4.7.1-1)")


def validate_topic_filter(flt: str, limits: MqttLimits = _DEFAULT_LIMITS) -> None:
    """Raise :class:`MqttProtocolError` unless ``flt`` is a valid topic filter.

    Plain MQTT 3.1.1 syntax: ``$share/...`` is judged as any other filter
    here; :func:`parse_shared` judges its shared-subscription form."""
    _check_topic(flt, "topic filter", limits)
    if "+" in flt or "#" in flt:
        levels = flt.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != last):
                raise MqttProtocolError(f"'#' must be alone in the last level of topic filter {flt[:64]!r} "
                                        f"(MQTT-4.7.1-2)")
            if "+" in level and level != "+":
                raise MqttProtocolError(f"'+' must be alone in its level of topic filter {flt[:64]!r} "
                                        f"(MQTT-4.7.1-3)")


def parse_shared(flt: str) -> tuple[str | None, str]:
    """``"$share/g/a/+"`` -> ``("g", "a/+")``; a plain filter -> ``(None, flt)``.

    A filter whose first level is ``$share`` must go on with a group name
    (non-empty, without ``+`` or ``#``) and a non-empty filter."""
    if not flt.startswith("$share") or (len(flt) > 6 and flt[6] != "/"):
        return None, flt
    group, sep, rest = flt[7:].partition("/")
    if not group or "+" in group or "#" in group:
        raise MqttProtocolError(f"shared subscription {flt[:64]!r} needs a group name without '+' or '#'")
    if not sep or not rest:
        raise MqttProtocolError(f"shared subscription {flt[:64]!r} has no topic filter after its group")
    return group, rest


# -- encoding -------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    if n < 0x4000:  # two bytes: every PUBLISH of 128 bytes to 16 KB
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n > REMAINING_LENGTH_MAX:
        raise ValueError(f"packet body of {n} bytes exceeds the remaining-length maximum {REMAINING_LENGTH_MAX}")
    out = bytearray()
    while n:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
    return bytes(out)


def _str(value: Any, what: str) -> bytes:
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{what} contains U+0000 (MQTT-1.5.3-2)")
    data = value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    if len(data) > _U16_MAX:
        raise ValueError(f"{what} of {len(data)} UTF-8 bytes exceeds {_U16_MAX}")
    return _U16.pack(len(data)) + data


def _bin(value: Any, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > _U16_MAX:
        raise ValueError(f"{what} of {len(value)} bytes exceeds {_U16_MAX}")
    return _U16.pack(len(value)) + bytes(value)


def _pid(value: Any) -> bytes:
    if type(value) is not int or not 1 <= value <= _U16_MAX:
        raise ValueError(f"packet_id must be an int in [1, 65535] (MQTT-2.3.1-1), got {value!r}")
    return _U16.pack(value)


def _qos(value: Any, what: str = "qos") -> int:
    if type(value) is not int or not 0 <= value <= 2:
        raise ValueError(f"{what} must be 0, 1 or 2, got {value!r}")
    return value


def encode_publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False, dup: bool = False,
                   packet_id: int | None = None) -> bytes:
    """The bytes of ``Publish(topic, payload, qos, retain, dup, packet_id)``: the fast path."""
    if type(topic) is not str or "\x00" in topic:
        _str(topic, "topic")  # raises the precise error
    if type(payload) is not bytes:
        if not isinstance(payload, (bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
    t = topic.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    tlen = len(t)
    if tlen > _U16_MAX:
        raise ValueError(f"topic of {tlen} UTF-8 bytes exceeds {_U16_MAX}")
    if qos == 0 and type(qos) is int:
        if packet_id is not None or dup:
            raise ValueError("a QoS 0 PUBLISH has no packet_id (MQTT-2.3.1-5) and no DUP flag (MQTT-3.3.1-2)")
        return b"".join((b"\x31" if retain else b"\x30", _varint(2 + tlen + len(payload)), _U16.pack(tlen), t,
                         payload))
    first = 0x30 | (_qos(qos) << 1) | (0x08 if dup else 0) | (1 if retain else 0)
    return b"".join((_BYTE[first], _varint(4 + tlen + len(payload)), _U16.pack(tlen), t, _pid(packet_id),
                     payload))


def _enc_connect(p: Connect) -> tuple[int, list[bytes]]:
    level = p.protocol_level
    if level not in (3, 4) or type(level) is not int:
        raise ValueError(f"protocol_level must be 4 (MQTT 3.1.1) or 3 (MQTT 3.1), got {level!r}")
    if type(p.keep_alive_s) is not int or not 0 <= p.keep_alive_s <= _U16_MAX:
        raise ValueError(f"keep_alive_s must be an int in [0, 65535], got {p.keep_alive_s!r}")
    flags = 0x02 if p.clean_session else 0
    payload = [_str(p.client_id, "client_id")]
    if p.will is not None:
        will = p.will
        flags |= 0x04 | (_qos(will.qos, "will qos") << 3) | (0x20 if will.retain else 0)
        payload += [_str(will.topic, "will topic"), _bin(will.payload, "will payload")]
    if p.username is not None:
        flags |= 0x80
        payload.append(_str(p.username, "username"))
    if p.password is not None:
        if p.username is None:
            raise ValueError("a password needs a username (MQTT-3.1.2-22)")
        flags |= 0x40
        payload.append(_bin(p.password, "password"))
    name = b"\x00\x04MQTT" if level == 4 else b"\x00\x06MQIsdp"
    return 0x10, [name, bytes((level, flags)), _U16.pack(p.keep_alive_s), *payload]


def _enc_connack(p: Connack) -> tuple[int, list[bytes]]:
    if type(p.return_code) is not int or not 0 <= p.return_code <= REFUSED_NOT_AUTHORIZED:
        raise ValueError(f"return_code must be an int in [0, 5], got {p.return_code!r}")
    if p.session_present and p.return_code:
        raise ValueError("session_present must be False with a non-zero return code (MQTT-3.2.2-4)")
    return 0x20, [bytes((1 if p.session_present else 0, p.return_code))]


def _enc_subscribe(p: Subscribe) -> tuple[int, list[bytes]]:
    if not p.topics:
        raise ValueError("a SUBSCRIBE needs at least one topic filter (MQTT-3.8.3-3)")
    body = [_pid(p.packet_id)]
    for flt, qos in p.topics:
        body += [_str(flt, "topic filter"), _BYTE[_qos(qos, "requested qos")]]
    return 0x82, body


def _enc_suback(p: Suback) -> tuple[int, list[bytes]]:
    codes = tuple(p.return_codes)
    if not codes or any(type(c) is not int or c not in (0, 1, 2, SUBACK_FAILURE) for c in codes):
        raise ValueError(f"return_codes must be one or more of 0, 1, 2, 0x80 (MQTT-3.9.3-2), got {codes!r}")
    return 0x90, [_pid(p.packet_id), bytes(codes)]


def _enc_unsubscribe(p: Unsubscribe) -> tuple[int, list[bytes]]:
    if not p.filters:
        raise ValueError("an UNSUBSCRIBE needs at least one topic filter (MQTT-3.10.3-2)")
    return 0xA2, [_pid(p.packet_id), *(_str(f, "topic filter") for f in p.filters)]


_ENCODERS: dict[type, Callable[[Any], tuple[int, list[bytes]]]] = {
    Connect: _enc_connect, Connack: _enc_connack, Subscribe: _enc_subscribe, Suback: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    Puback: lambda p: (0x40, [_pid(p.packet_id)]), Pubrec: lambda p: (0x50, [_pid(p.packet_id)]),
    Pubrel: lambda p: (0x62, [_pid(p.packet_id)]), Pubcomp: lambda p: (0x70, [_pid(p.packet_id)]),
    Unsuback: lambda p: (0xB0, [_pid(p.packet_id)]),
    Pingreq: lambda p: (0xC0, []), Pingresp: lambda p: (0xD0, []), Disconnect: lambda p: (0xE0, []),
}


def encode(packet: Packet) -> bytes:
    """The bytes of any packet, either direction (``ValueError``/``TypeError`` on a field out of range)."""
    if type(packet) is Publish:
        return encode_publish(packet.topic, packet.payload, packet.qos, packet.retain, packet.dup,
                              packet.packet_id)
    enc = _ENCODERS.get(type(packet))
    if enc is None:
        raise TypeError(f"not an MQTT packet: {type(packet).__name__}")
    first, body = enc(packet)
    return b"".join((_BYTE[first], _varint(sum(map(len, body))), *body))


# The decoder lives in protocol/mqtt_decode.py (this module stays readable in
# one sitting); it is part of this module's interface.
from protocol.mqtt_decode import MqttDecoder  # noqa: E402
