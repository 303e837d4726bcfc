"""Frames of the client protocol: the wire format of the data path (sans-IO).

Clients talk to Chorus nodes over TCP in *frames*.  This module is only the
codec: it turns messages into bytes (:func:`encode_frame`) and a byte stream
back into messages (:class:`FrameDecoder`).  It opens no sockets and keeps
no clocks; ``docs/PROTOCOL.md`` is the specification, this docstring the
summary.

Frame layout (all integers big-endian, ``HEADER_BYTES`` = 13)::

    offset size field
    0      2    magic           0xC4 0x05
    2      1    version         protocol version the body is encoded in
    3      1    type            frame type (FRAME_TYPES)
    4      1    flags           reserved: 0 in version 1
    5      4    correlation_id  chosen by the client, echoed by the response
    9      4    body_length     bytes of body that follow
    13     ...  body            the message's fields, in declaration order

A frame (header + body) is at most ``frame_bytes_max`` bytes (default
``FRAME_BYTES_MAX`` = 16 MiB); a larger one is rejected from its header,
before any of its body is read.

Field encodings: ``u8``/``u16``/``u32``/``u64`` unsigned integers;
``bool`` one byte 0 or 1; enums one byte (error codes two); ``str`` a u16
byte length then strict UTF-8; ``bytes`` a u32 length then the bytes;
``list[T]`` a u32 count then the elements; nested structures are their
fields in order.  Decoding checks every read against the body's end, every
list count against the bytes left, every enum value and every string's
UTF-8, and that the fields use the body exactly.

Message classes are frozen, keyword-only dataclasses; their constructors
validate every field (``TypeError``/``ValueError``), so a message that
exists can be encoded.  ``Message.encode()`` gives the body,
``Cls.decode(body)`` and :func:`decode_message` (registry-based, by frame
type) read one.  Record batches (``protocol/records.py``) travel inside
produce and fetch frames as opaque ``bytes``; the codec never looks inside.

Anything wrong with received bytes raises :class:`ProtocolError` carrying an
:class:`ErrorCode`; the server answers with ``err.response()`` (an
``ErrorResponse`` frame) and closes the connection.

This module imports nothing of actors/, storage/, sim/ or runtime/.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Callable, ClassVar, Iterable

from protocol.consume import Mode
from protocol.records import BATCH_BYTES_MAX

__all__ = [
    "MAGIC", "NO_SHARD_ID", "PROTOCOL_VERSION", "BASE_VERSION", "SUPPORTED_VERSIONS", "HEADER_BYTES", "FRAME_BYTES_MAX",
    "ERROR_MESSAGE_BYTES_MAX",
    "ErrorCode", "Level", "Auth", "Mode", "ProtocolError",
    "Message", "Frame", "Limits", "ShardMetadata", "TopicMetadata",
    "Handshake", "HandshakeOk", "MetadataRequest", "MetadataResponse", "ProduceRequest", "ProduceResponse",
    "FetchRequest", "FetchResponse", "SubscribeRequest", "SubscribeResponse", "AckRequest", "AckResponse",
    "CommitRequest", "CommitResponse", "Heartbeat", "HeartbeatResponse", "ErrorResponse",
    "QueryRequest", "QueryResponse", "QueriedRecord", "QueryHeader",
    "DeliveredRecord", "Delivery", "SubscriptionReset",
    "GroupMetadata", "GroupsRequest", "GroupsResponse", "GroupFetchRequest", "GroupFetchResponse",
    "FRAME_TYPES", "REQUEST_TYPES", "RESPONSE_TYPES",
    "encode_frame", "decode_message", "decode_frame", "negotiate_version", "FrameDecoder",
]

MAGIC = b"\xc4\x05"
NO_SHARD_ID = 0xFFFF_FFFF  # AckRequest/Delivery.shard_id not given (and SubscriptionReset: no next shard)
PROTOCOL_VERSION = 2  # the newest version this code speaks
BASE_VERSION = 1  # Handshake, HandshakeOk and ErrorResponse are framed with this version, forever
# 2: Delivery and AckRequest carry ``shard_id`` (which shard group's shard a
# delivered record came from, and which one an acknowledgement is meant for)
SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2)

_HEADER = struct.Struct(">2sBBBII")  # magic, version, type, flags, correlation id, body length
HEADER_BYTES = _HEADER.size  # 13
FRAME_BYTES_MAX = 16 << 20  # default bound of one frame, header included
ERROR_MESSAGE_BYTES_MAX = 1024  # ProtocolError.response() truncates its message to this

U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class ErrorCode(IntEnum):
    """Error codes on the wire (u16).  The numbers are stable: never renumber."""

    NONE = 0
    UNKNOWN_TYPE = 1  # frame type not defined (or not accepted from this peer)
    MALFORMED = 2  # bad magic, flags, truncated/garbled body, trailing bytes, invalid enum or UTF-8
    FRAME_TOO_LARGE = 3  # header announces a frame over frame_bytes_max
    UNSUPPORTED_VERSION = 4  # header version, or no common version in the handshake
    AUTH_FAILED = 5
    NOT_LEADER = 6  # this node does not lead the shard: refresh metadata
    UNKNOWN_TOPIC = 7
    TIMEOUT = 8
    OVERLOADED = 9  # back off and retry
    INVALID_REQUEST = 10  # well-formed but not acceptable (e.g. offset out of range)
    DUPLICATE_SEQUENCE = 11
    OUT_OF_ORDER_SEQUENCE = 12
    UNKNOWN_SHARD = 13
    SUBSCRIPTION_BUSY = 14  # an exclusive subscription already has a consumer
    HANDSHAKE_REQUIRED = 15  # first frame of a connection was not a Handshake
    INTERNAL_ERROR = 16  # a bug on the server; the connection is closed, the node keeps running
    PERMISSION_DENIED = 17  # authenticated, but this user may not do this (e.g. another tenant's topic)


class Level(StrEnum):
    """Consistency level of a produce (as in ``protocol/shard.py``)."""

    ANY = "any"
    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"


class Auth(StrEnum):
    """Authentication mechanism of a handshake."""

    NONE = "none"
    PASSWORD = "password"


class ProtocolError(Exception):
    """The peer sent bytes that are not valid frames.

    ``code`` is the :class:`ErrorCode` to answer with, ``message`` says
    precisely what is wrong, ``correlation_id`` is the offending frame's when
    its header could be read (else 0), and ``frames`` holds the frames the
    same :meth:`FrameDecoder.feed` call decoded before the bad one.
    """

    def __init__(self, code: ErrorCode, message: str, correlation_id: int = 0) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = ErrorCode(code)
        self.message = message
        self.correlation_id = correlation_id
        self.frames: list[Frame] = []

    def response(self) -> bytes:
        """The ``ErrorResponse`` frame to send before closing the connection."""
        text = self.message.encode("utf-8")[:ERROR_MESSAGE_BYTES_MAX].decode("utf-8", "ignore")
        return encode_frame(ErrorResponse(code=self.code, message=text), self.correlation_id,
                            version=BASE_VERSION)


class _Bad(Exception):
    """Internal: a body does not decode; ``path`` names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


# -- field codecs ---------------------------------------------------------------


class _Reader:
    """Bounds-checked reads from one frame body."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> memoryview:
        if self.end - self.pos < n:
            raise _Bad(f"truncated: needs {n} bytes at body offset {self.pos}, only {self.end - self.pos} left")
        start = self.pos
        self.pos = start + n
        return self.buf[start:self.pos]

    def unpack(self, s: struct.Struct) -> int:
        if self.end - self.pos < s.size:
            raise _Bad(f"truncated: needs {s.size} bytes at body offset {self.pos}, "
                       f"only {self.end - self.pos} left")
        (value,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return value


class _Wire:
    """How one field travels.  ``check`` validates (and normalizes) a value
    at construction, ``put`` appends its encoding to a list of byte strings,
    ``get`` reads it back (raising :class:`_Bad`)."""

    name: str = ""  # as written in docs/PROTOCOL.md
    min_size: int = 0  # fewest bytes an encoding takes (bounds list counts)

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def put(self, value: Any, out: list[bytes]) -> None:
        raise NotImplementedError

    def get(self, r: _Reader) -> Any:
        raise NotImplementedError


def _same_kind(e: Exception, message: str) -> Exception:
    """A TypeError or ValueError like ``e`` (UnicodeEncodeError included) with ``message``."""
    return TypeError(message) if isinstance(e, TypeError) else ValueError(message)


def _check_int(value: Any, most: int) -> int:
    if type(value) is bool or not isinstance(value, int):
        raise TypeError(f"must be an int, not {type(value).__name__}")
    if not 0 <= value <= most:
        raise ValueError(f"out of range [0, {most}]: {value}")
    return int(value)


class _UInt(_Wire):
    def __init__(self, size: int) -> None:
        self.struct = struct.Struct(">" + {1: "B", 2: "H", 4: "I", 8: "Q"}[size])
        self.most = (1 << (8 * size)) - 1
        self.name = f"u{8 * size}"
        self.min_size = size

    def check(self, value: Any) -> int:
        return _check_int(value, self.most)

    def put(self, value: int, out: list[bytes]) -> None:
        out.append(self.struct.pack(value))

    def get(self, r: _Reader) -> int:
        return r.unpack(self.struct)


class _Bool(_Wire):
    name = "bool"
    min_size = 1

    def check(self, value: Any) -> bool:
        if type(value) is not bool:
            raise TypeError(f"must be a bool, not {type(value).__name__}")
        return value

    def put(self, value: bool, out: list[bytes]) -> None:
        out.append(b"\x01" if value else b"\x00")

    def get(self, r: _Reader) -> bool:
        v = r.take(1)[0]
        if v > 1:
            raise _Bad(f"invalid bool value {v} (must be 0 or 1)")
        return v == 1


class _Enum(_Wire):
    """An enum as a u8 (or u16) with an explicit, stable value -> number table."""

    def __init__(self, label: str, what: str, table: dict[Any, int], size: int = 1) -> None:
        self.what = what
        self.table = table
        self.back = {n: member for member, n in table.items()}
        self.int = _UInt(size)
        self.name = f"{label} ({self.int.name})"
        self.min_size = size
        self.valid = ", ".join(f"{n}={m.value if isinstance(m, StrEnum) else m.name}"
                               for n, m in sorted(self.back.items()))

    def check(self, value: Any) -> Any:
        if type(value) is bool or not isinstance(value, (str, int)) or value not in self.table:
            raise ValueError(f"invalid {self.what} {value!r} (valid: {self.valid})")
        return self.back[self.table[value]]

    def put(self, value: Any, out: list[bytes]) -> None:
        self.int.put(self.table[value], out)

    def get(self, r: _Reader) -> Any:
        n = self.int.get(r)
        member = self.back.get(n)
        if member is None:
            raise _Bad(f"invalid {self.what} {n} (valid: {self.valid})")
        return member


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class _Str(_Wire):
    name = "str"
    min_size = 2

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"must be a str, not {type(value).__name__}")
        size = len(value.encode("utf-8"))  # UnicodeEncodeError (a ValueError) on lone surrogates
        if size > U16_MAX:
            raise ValueError(f"string of {size} UTF-8 bytes exceeds {U16_MAX}")
        return str(value)

    def put(self, value: str, out: list[bytes]) -> None:
        data = value.encode("utf-8")
        out.append(_U16.pack(len(data)))
        out.append(data)

    def get(self, r: _Reader) -> str:
        n = r.unpack(_U16)
        raw = r.take(n)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise _Bad(f"invalid UTF-8 in a string of {n} bytes: {e.reason} at string byte {e.start}") from None


class _Bytes(_Wire):
    name = "bytes"
    min_size = 4

    def check(self, value: Any) -> bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"must be bytes, not {type(value).__name__}")
        value = bytes(value)
        if len(value) > U32_MAX:
            raise ValueError(f"{len(value)} bytes exceed {U32_MAX}")
        return value

    def put(self, value: bytes, out: list[bytes]) -> None:
        out.append(_U32.pack(len(value)))
        out.append(value)

    def get(self, r: _Reader) -> bytes:
        return bytes(r.take(r.unpack(_U32)))


class _List(_Wire):
    def __init__(self, item: _Wire) -> None:
        assert item.min_size >= 1, "list items must take at least one byte (bounds the count)"
        self.item = item
        self.name = f"list[{item.name}]"
        self.min_size = 4

    def check(self, value: Any) -> tuple:
        if isinstance(value, (str, bytes, bytearray, memoryview)) or not isinstance(value, Iterable):
            raise TypeError(f"must be a sequence, not {type(value).__name__}")
        items = tuple(value)
        if len(items) > U32_MAX:
            raise ValueError(f"{len(items)} items exceed {U32_MAX}")
        out = []
        for i, v in enumerate(items):
            try:
                out.append(self.item.check(v))
            except (TypeError, ValueError) as e:
                raise _same_kind(e, f"[{i}]: {e}") from None
        return tuple(out)

    def put(self, value: tuple, out: list[bytes]) -> None:
        out.append(_U32.pack(len(value)))
        put = self.item.put
        for v in value:
            put(v, out)

    def get(self, r: _Reader) -> tuple:
        count = r.unpack(_U32)
        if count * self.item.min_size > r.left():
            raise _Bad(f"list count {count} cannot fit: {count} items of at least {self.item.min_size} "
                       f"bytes, only {r.left()} bytes left")
        get = self.item.get
        out = []
        for i in range(count):
            try:
                out.append(get(r))
            except _Bad as e:
                e.path.append(f"[{i}]")
                raise
        return tuple(out)


class _Nested(_Wire):
    def __init__(self, cls: type["_Struct"]) -> None:
        assert not getattr(cls, "_versioned", False), f"nested {cls.__name__} has fields of later versions"
        self.cls = cls
        self.name = cls.__name__
        self.min_size = sum(w.min_size for _, w in cls._wire)

    def check(self, value: Any) -> Any:
        if not isinstance(value, self.cls):
            raise TypeError(f"must be a {self.cls.__name__}, not {type(value).__name__}")
        return value

    def put(self, value: "_Struct", out: list[bytes]) -> None:
        value._put(out)

    def get(self, r: _Reader) -> Any:
        return self.cls._get(r)


U8, U16, U32, U64 = _UInt(1), _UInt(2), _UInt(4), _UInt(8)
BOOL = _Bool()
STR = _Str()
BYTES = _Bytes()
LEVEL = _Enum("Level", "consistency level", {Level.ANY: 0, Level.ONE: 1, Level.QUORUM: 2, Level.ALL: 3})
MODE = _Enum("Mode", "subscription mode", {Mode.EXCLUSIVE: 0, Mode.SHARED: 1, Mode.FAILOVER: 2})
AUTH = _Enum("Auth", "auth mechanism", {Auth.NONE: 0, Auth.PASSWORD: 1})
ERROR_CODE = _Enum("ErrorCode", "error code", {c: c.value for c in ErrorCode}, size=2)

_NO_DEFAULT: Any = dataclasses.MISSING


def wire(kind: _Wire, default: Any = _NO_DEFAULT, *, repr: bool = True, since: int = 1) -> Any:  # noqa: A002
    """A dataclass field that travels as ``kind`` -- in frames of protocol
    version ``since`` and later; frames of older versions leave it out and
    decode it as ``default`` (only frame messages, not nested structures,
    may have such fields)."""
    assert since == 1 or default is not _NO_DEFAULT, "a field added by a later version needs a default"
    return dataclasses.field(default=default, repr=repr, metadata={"wire": kind, "since": since})


# -- structures and messages ------------------------------------------------


class _Struct:
    """Base of every encoded structure: fields in declaration order."""

    _wire: ClassVar[tuple[tuple[str, _Wire], ...]] = ()
    # per protocol version: the fields that travel in it (frame messages only)
    _wire_of: ClassVar[dict[int, tuple[tuple[str, _Wire], ...]]] = {}

    def __post_init__(self) -> None:
        for name, kind in self._wire:
            value = getattr(self, name)
            try:
                checked = kind.check(value)
            except (TypeError, ValueError) as e:
                raise _same_kind(e, f"{type(self).__name__}.{name}: {e}") from None
            if checked is not value:
                object.__setattr__(self, name, checked)

    def _put(self, out: list[bytes], version: int = PROTOCOL_VERSION) -> None:
        for name, kind in self._wire_of.get(version, self._wire):
            kind.put(getattr(self, name), out)

    @classmethod
    def _get(cls, r: _Reader, version: int = PROTOCOL_VERSION) -> Any:
        # Decoded values are valid by construction: skip __init__'s checks.
        obj = object.__new__(cls)
        setattr_ = object.__setattr__
        wires = cls._wire_of.get(version, cls._wire)
        if wires is not cls._wire:  # fields of later versions: their defaults
            for f in dataclasses.fields(cls):
                if f.metadata.get("since", 1) > version:
                    setattr_(obj, f.name, f.default)
        for name, kind in wires:
            try:
                setattr_(obj, name, kind.get(r))
            except _Bad as e:
                e.path.append(f".{name}")
                raise
        return obj


def _structure(cls: type) -> type:
    """Make ``cls`` a frozen keyword-only dataclass whose fields all travel."""
    cls = dataclass(frozen=True, kw_only=True)(cls)
    spec = []
    for f in dataclasses.fields(cls):
        kind = f.metadata.get("wire")
        assert isinstance(kind, _Wire), f"{cls.__name__}.{f.name} has no wire type"
        spec.append((f.name, kind, f.metadata.get("since", 1)))
    cls._wire = tuple((name, kind) for name, kind, _ in spec)
    cls._wire_of = {v: tuple((name, kind) for name, kind, since in spec if since <= v) for v in SUPPORTED_VERSIONS}
    if any(since > 1 for _, _, since in spec):  # only frame messages (not nested structures) are versioned
        cls._versioned = True
    return cls


class Message(_Struct):
    """A frame body.  Subclasses set ``TYPE`` (the frame type byte)."""

    TYPE: ClassVar[int]

    def encode(self, version: int = PROTOCOL_VERSION) -> bytes:
        """The body bytes (no header) in protocol ``version``."""
        out: list[bytes] = []
        self._put(out, version)
        return b"".join(out)

    @classmethod
    def decode(cls, body: bytes | bytearray | memoryview, version: int = PROTOCOL_VERSION) -> Any:
        """The message encoded in ``body`` (exactly); :class:`ProtocolError` if it is not one."""
        if version not in SUPPORTED_VERSIONS:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"unsupported protocol version {version}")
        view = memoryview(body)
        r = _Reader(view)
        try:
            msg = cls._get(r, version)
        except _Bad as e:
            where = "".join(reversed(e.path)).lstrip(".")
            raise ProtocolError(ErrorCode.MALFORMED,
                                f"{cls.__name__} body: field {where}: {e.message}") from None
        if r.pos != r.end:
            raise ProtocolError(ErrorCode.MALFORMED,
                                f"{cls.__name__} body: {r.end - r.pos} trailing bytes after the last field "
                                f"(body is {r.end} bytes, fields end at {r.pos})")
        return msg


FRAME_TYPES: dict[int, type[Message]] = {}


def _frame(type_code: int) -> Callable[[type], type]:
    def register(cls: type) -> type:
        cls = _structure(cls)
        assert type_code not in FRAME_TYPES, f"frame type 0x{type_code:02x} registered twice"
        assert 1 <= type_code <= U8_MAX
        cls.TYPE = type_code
        FRAME_TYPES[type_code] = cls
        return cls
    return register


@_structure
class Limits(_Struct):
    """Limits a node announces in its HandshakeOk; clients must stay within them."""

    frame_bytes_max: int = wire(U32, FRAME_BYTES_MAX)  # largest frame the node accepts, header included
    batch_bytes_max: int = wire(U32, BATCH_BYTES_MAX)  # largest record batch in a produce
    max_in_flight: int = wire(U32, 64)  # requests a client may have outstanding on one connection
    session_timeout_ms: int = wire(U32, 30_000)  # idle connections (no frame at all) are closed after this


@_structure
class ShardMetadata(_Struct):
    shard: int = wire(U32)  # index within the topic
    leader: str = wire(STR)  # node id of the leader; "" while the shard has none (failover)
    host: str = wire(STR)  # the leader's client endpoint ("" without a leader)
    port: int = wire(U16)
    epoch: int = wire(U32)  # leader epoch


@_structure
class TopicMetadata(_Struct):
    topic: str = wire(STR)
    error: ErrorCode = wire(ERROR_CODE, ErrorCode.NONE)  # UNKNOWN_TOPIC: shards is empty
    shards: tuple[ShardMetadata, ...] = wire(_List(_Nested(ShardMetadata)), ())


# Frame types: requests are odd, the response to request t is t + 1.


@_frame(0x01)
class Handshake(Message):
    """First frame of every connection (framed with BASE_VERSION)."""

    client_id: str = wire(STR)
    versions: tuple[int, ...] = wire(_List(U8), SUPPORTED_VERSIONS)  # protocol versions the client speaks
    auth: Auth = wire(AUTH, Auth.NONE)
    username: str = wire(STR, "")
    password: str = wire(STR, "", repr=False)


@_frame(0x02)
class HandshakeOk(Message):
    node_id: str = wire(STR)
    cluster_id: str = wire(STR)
    version: int = wire(U8)  # negotiated: every later frame on the connection uses it
    limits: Limits = wire(_Nested(Limits), Limits())


@_frame(0x03)
class MetadataRequest(Message):
    topics: tuple[str, ...] = wire(_List(STR), ())  # empty: every topic


@_frame(0x04)
class MetadataResponse(Message):
    topics: tuple[TopicMetadata, ...] = wire(_List(_Nested(TopicMetadata)), ())


@_frame(0x05)
class ProduceRequest(Message):
    topic: str = wire(STR)
    shard: int = wire(U32)
    level: Level = wire(LEVEL, Level.QUORUM)
    producer_id: int = wire(U64, 0)  # 0: not idempotent
    sequence: int = wire(U32, 0)  # sequence number of the batch's first record
    timeout_ms: int = wire(U32, 30_000)
    batch: bytes = wire(BYTES)  # one encoded record batch (protocol/records.py), opaque here


@_frame(0x06)
class ProduceResponse(Message):
    base_offset: int = wire(U64)
    level_met: Level = wire(LEVEL)
    duplicate: bool = wire(BOOL, False)  # the batch was a retry of one already appended


@_frame(0x07)
class FetchRequest(Message):
    topic: str = wire(STR)
    shard: int = wire(U32)
    offset: int = wire(U64)
    max_bytes: int = wire(U32, 1 << 20)
    max_wait_ms: int = wire(U32, 0)


@_frame(0x08)
class FetchResponse(Message):
    high_watermark: int = wire(U64)
    batches: tuple[bytes, ...] = wire(_List(BYTES), ())  # encoded record batches, in offset order


@_frame(0x09)
class SubscribeRequest(Message):
    topic: str = wire(STR)
    subscription: str = wire(STR)
    mode: Mode = wire(MODE, Mode.EXCLUSIVE)
    consumer_id: str = wire(STR)


@_frame(0x0A)
class SubscribeResponse(Message):
    active: bool = wire(BOOL, True)  # False: attached as a failover standby


@_frame(0x0B)
class AckRequest(Message):
    topic: str = wire(STR)
    shard: int = wire(U32)
    subscription: str = wire(STR)
    consumer_id: str = wire(STR)
    offsets: tuple[int, ...] = wire(_List(U64))
    nack: bool = wire(BOOL, False)  # True: negative acknowledgement, redeliver these offsets
    # (version 2) the shard id the acknowledged records were delivered from
    # (Delivery.shard_id); NO_SHARD_ID: not said (version 1), the shard the
    # index reads now.  An ack naming a shard the index no longer reads (its
    # group was dropped by retention) is discarded, not applied to the next.
    shard_id: int = wire(U32, NO_SHARD_ID, since=2)


@_frame(0x0C)
class AckResponse(Message):
    pass


@_frame(0x0D)
class CommitRequest(Message):
    topic: str = wire(STR)
    shard: int = wire(U32)
    subscription: str = wire(STR)
    offset: int = wire(U64)  # every offset below it is consumed


@_frame(0x0E)
class CommitResponse(Message):
    pass


@_frame(0x0F)
class Heartbeat(Message):
    pass


@_frame(0x10)
class HeartbeatResponse(Message):
    pass


@_frame(0x11)
class QueryRequest(Message):
    """One page of a history query: records of every shard of ``topic``
    whose producer timestamp is in [``from_ms``, ``to_ms``), in (timestamp,
    shard, offset) order (docs/ARCHITECTURE.md, history queries)."""

    topic: str = wire(STR)
    from_ms: int = wire(U64)
    to_ms: int = wire(U64)
    has_key: bool = wire(BOOL, False)
    key: bytes = wire(BYTES, b"")  # only records with this key, when has_key
    limit: int = wire(U32, 1000)  # 1..10000 records per page
    after: str = wire(STR, "")  # the previous page's next_token ("": first page)


@_structure
class QueryHeader(_Struct):
    name: str = wire(STR)
    value: bytes = wire(BYTES)


@_structure
class QueriedRecord(_Struct):
    shard: int = wire(U32)
    offset: int = wire(U64)
    timestamp_ms: int = wire(U64)  # the producer's timestamp (the one queried)
    broker_timestamp_ms: int = wire(U64)
    has_key: bool = wire(BOOL, False)
    key: bytes = wire(BYTES, b"")
    value: bytes = wire(BYTES)
    headers: tuple[QueryHeader, ...] = wire(_List(_Nested(QueryHeader)), ())


@_frame(0x12)
class QueryResponse(Message):
    records: tuple[QueriedRecord, ...] = wire(_List(_Nested(QueriedRecord)), ())
    next_token: str = wire(STR, "")  # "": the query is complete


@_structure
class GroupMetadata(_Struct):
    """One live shard group of a topic with shard groups."""

    group: int = wire(U32)  # the group's id
    start_ms: int = wire(U64)  # wall clock span [start_ms, end_ms) of the writes it took
    end_ms: int = wire(U64)
    shard_ids: tuple[int, ...] = wire(_List(U32), ())  # shard_ids[i]: the group's shard of index i
    shards: tuple[ShardMetadata, ...] = wire(_List(_Nested(ShardMetadata)), ())  # by index, with their leaders


@_frame(0x13)
class GroupsRequest(Message):
    """The live shard groups of a topic (oldest first)."""

    topic: str = wire(STR)


@_frame(0x14)
class GroupsResponse(Message):
    topic: str = wire(STR)
    groups: tuple[GroupMetadata, ...] = wire(_List(_Nested(GroupMetadata)), ())  # empty: the topic has no groups


@_frame(0x15)
class GroupFetchRequest(Message):
    """A FetchRequest of shard index ``shard`` in group ``group`` of a topic
    with shard groups (FetchRequest reads the current group)."""

    topic: str = wire(STR)
    group: int = wire(U32)
    shard: int = wire(U32)  # shard index
    offset: int = wire(U64)
    max_bytes: int = wire(U32, 1 << 20)
    max_wait_ms: int = wire(U32, 0)


@_frame(0x16)
class GroupFetchResponse(Message):
    high_watermark: int = wire(U64)
    shard_id: int = wire(U32)  # the group's shard of the index
    batches: tuple[bytes, ...] = wire(_List(BYTES), ())


@_structure
class DeliveredRecord(_Struct):
    offset: int = wire(U64)  # position in the shard's log
    redelivery: bool = wire(BOOL, False)  # delivered before and not acknowledged
    payload: bytes = wire(BYTES)  # the record's value


@_frame(0x20)
class Delivery(Message):
    """Server push: records of a subscription, framed with the correlation
    id of the SubscribeRequest that attached the consumer.  Not a response:
    a client must never send it."""

    topic: str = wire(STR)
    shard: int = wire(U32)
    subscription: str = wire(STR)
    records: tuple[DeliveredRecord, ...] = wire(_List(_Nested(DeliveredRecord)), ())
    # (version 2) the shard the records are from: the shard id of index
    # ``shard`` in the shard group being read (= ``shard`` on a topic without
    # groups); acknowledgements name it back (AckRequest.shard_id)
    shard_id: int = wire(U32, NO_SHARD_ID, since=2)


@_frame(0x22)
class SubscriptionReset(Message):
    """Server push, framed with the correlation id of the SubscribeRequest
    that attached the consumer: records of shard index ``shard`` were
    skipped.  The consumer's position was in a shard group that retention
    dropped before every record of it was acknowledged; the subscription
    continues at the oldest remaining record of that index -- the start of
    shard ``next_shard_id`` (like Kafka's reset to the earliest offset when
    a committed offset is out of range).  Not a response."""

    topic: str = wire(STR)
    shard: int = wire(U32)  # shard index within the topic
    subscription: str = wire(STR)
    dropped_shard_id: int = wire(U32)  # the group's shard the consumer was reading (now dropped)
    next_shard_id: int = wire(U32)  # where it continues (U32_MAX: no live group has the index)
    reason: str = wire(STR, "")


@_frame(0xFE)
class ErrorResponse(Message):
    """Answers any request that failed (framed with BASE_VERSION when it ends a connection)."""

    code: ErrorCode = wire(ERROR_CODE)
    message: str = wire(STR, "")


REQUEST_TYPES: frozenset[int] = frozenset(t for t in FRAME_TYPES if t % 2 == 1)
RESPONSE_TYPES: frozenset[int] = frozenset(t for t in FRAME_TYPES if t % 2 == 0)


def decode_message(frame_type: int, body: bytes | bytearray | memoryview,
                   version: int = PROTOCOL_VERSION) -> Message:
    """The message of frame type ``frame_type`` encoded in ``body`` (registry-based)."""
    cls = FRAME_TYPES.get(frame_type)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type 0x{frame_type:02x}")
    return cls.decode(body, version)


def negotiate_version(client_versions: Iterable[int], server_versions: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """The highest version both sides speak; ``ProtocolError(UNSUPPORTED_VERSION)`` if none."""
    common = set(client_versions) & set(server_versions)
    if not common:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"no common protocol version: client speaks {sorted(set(client_versions))}, "
                            f"server speaks {sorted(set(server_versions))}")
    return max(common)


# -- frames -------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One decoded frame: the message and the header fields that matter."""

    correlation_id: int
    message: Message
    version: int = PROTOCOL_VERSION
    size: int = dataclasses.field(default=0, compare=False)  # bytes on the wire, header included (decoded frames)

    @property
    def type(self) -> int:
        return self.message.TYPE


def encode_frame(message: Message, correlation_id: int, *, version: int = PROTOCOL_VERSION,
                 frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """Header + body of ``message``.  ``ValueError`` if the frame would exceed
    ``frame_bytes_max`` (the peer would reject it) or an argument is out of range."""
    if not isinstance(message, Message) or type(message).TYPE not in FRAME_TYPES:
        raise TypeError(f"not a frame message: {type(message).__name__}")
    try:
        _check_int(correlation_id, U32_MAX)
    except (TypeError, ValueError) as e:
        raise _same_kind(e, f"correlation_id {e}") from None
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported protocol version {version} (supported: {SUPPORTED_VERSIONS})")
    out: list[bytes] = [b""]
    message._put(out, version)
    body_length = sum(map(len, out))
    if HEADER_BYTES + body_length > frame_bytes_max:
        raise ValueError(f"{type(message).__name__} frame of {HEADER_BYTES + body_length} bytes exceeds "
                         f"frame_bytes_max={frame_bytes_max}")
    out[0] = _HEADER.pack(MAGIC, version, message.TYPE, 0, correlation_id, body_length)
    return b"".join(out)


def decode_frame(data: bytes | bytearray | memoryview, *, frame_bytes_max: int = FRAME_BYTES_MAX) -> Frame:
    """The one complete frame that is exactly ``data``."""
    decoder = FrameDecoder(frame_bytes_max)
    frames = decoder.feed(data)
    if decoder.buffered:
        raise ProtocolError(ErrorCode.MALFORMED, f"truncated frame: {decoder.buffered} bytes of an incomplete "
                                                 f"frame at the end of the data")
    if len(frames) != 1:
        raise ProtocolError(ErrorCode.MALFORMED, f"expected exactly one frame, got {len(frames)}")
    return frames[0]


class FrameDecoder:
    """Sans-IO streaming decoder: feed it bytes as they arrive, get frames.

    ``feed`` accepts chunks split at any byte boundary and returns the frames
    they complete, in order.  It holds at most one incomplete frame: never
    more than ``frame_bytes_max`` bytes (a frame's header included), since a
    header announcing more is rejected before its body arrives.  Frames
    complete within a chunk are decoded straight from the chunk.

    On bad input it raises :class:`ProtocolError`; the frames the call
    decoded before the bad one are in ``err.frames``.  The stream is then
    out of sync, so the decoder stays failed: every later ``feed`` raises
    the same error (with no frames).

    ``versions`` are the header versions accepted (after a handshake a
    server may narrow it to the negotiated version); ``accept`` limits the
    frame types (e.g. ``REQUEST_TYPES`` on a server): another defined type
    raises ``UNKNOWN_TYPE`` too.
    """

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX, *, versions: Iterable[int] = SUPPORTED_VERSIONS,
                 accept: Iterable[int] | None = None) -> None:
        if type(frame_bytes_max) is bool or not isinstance(frame_bytes_max, int):
            raise TypeError("frame_bytes_max must be an int")
        if not HEADER_BYTES <= frame_bytes_max <= HEADER_BYTES + U32_MAX:
            raise ValueError(f"frame_bytes_max must be in [{HEADER_BYTES}, {HEADER_BYTES + U32_MAX}], "
                             f"got {frame_bytes_max}")
        self.frame_bytes_max = frame_bytes_max
        self.versions = frozenset(versions)
        unknown = self.versions - set(SUPPORTED_VERSIONS)
        if unknown or not self.versions:
            raise ValueError(f"versions must be a non-empty subset of {SUPPORTED_VERSIONS}, got {sorted(versions)}")
        self.accept = frozenset(FRAME_TYPES) if accept is None else frozenset(accept)
        self._buf = bytearray()  # the incomplete frame (or header) at the end of the stream
        self._header: tuple[int, int, int, int] | None = None  # (total, version, type, corr) of _buf's frame
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame."""
        return len(self._buf)

    @property
    def failed(self) -> ProtocolError | None:
        """The error that stopped this decoder, if any."""
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """The frames completed by ``data`` (possibly none)."""
        if self._error is not None:
            err = self._error
            raise ProtocolError(err.code, err.message, err.correlation_id)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes, not {type(data).__name__}")
        out: list[Frame] = []
        try:
            with memoryview(data) as view:
                self._feed(view.cast("B") if view.format != "B" else view, out)
        except ProtocolError as e:
            e.frames = out
            self._error = e
            self._buf = bytearray()
            self._header = None
            raise
        return out

    def _feed(self, view: memoryview, out: list[Frame]) -> None:
        n = len(view)
        pos = 0
        buf = self._buf
        while True:
            if buf:  # finish the incomplete frame first
                if self._header is None:
                    take = min(HEADER_BYTES - len(buf), n - pos)
                    buf += view[pos:pos + take]
                    pos += take
                    if len(buf) < HEADER_BYTES:
                        self._check_magic(buf)
                        return
                    self._header = self._parse_header(buf)
                total = self._header[0]
                take = min(total - len(buf), n - pos)
                buf += view[pos:pos + take]
                pos += take
                if len(buf) < total:
                    return
                # Hand the filled buffer to the decoder and start a fresh one (no
                # resize of a bytearray a memoryview may still export).
                header, whole = self._header, buf
                self._buf = buf = bytearray()
                self._header = None
                out.append(self._decode(header, memoryview(whole)[HEADER_BYTES:]))
                continue
            rest = n - pos
            if rest == 0:
                return
            if rest < HEADER_BYTES:
                self._check_magic(view[pos:])
                buf += view[pos:]
                return
            header = self._parse_header(view[pos:pos + HEADER_BYTES])
            total = header[0]
            if rest < total:
                buf += view[pos:]
                self._header = header
                return
            out.append(self._decode(header, view[pos + HEADER_BYTES:pos + total]))
            pos += total

    @staticmethod
    def _check_magic(prefix: bytes | bytearray | memoryview) -> None:
        """Reject a wrong magic as soon as its bytes arrive."""
        for i in range(min(len(prefix), len(MAGIC))):
            if prefix[i] != MAGIC[i]:
                raise ProtocolError(ErrorCode.MALFORMED,
                                    f"bad magic byte 0x{prefix[i]:02x} at offset {i} (expected "
                                    f"0x{MAGIC.hex()}): not a Chorus frame")

    def _parse_header(self, header: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
        """(frame bytes, version, type, correlation id) of a valid 13-byte header."""
        magic, version, ftype, flags, corr, body_length = _HEADER.unpack_from(header)
        if magic != MAGIC:
            raise ProtocolError(ErrorCode.MALFORMED,
                                f"bad magic 0x{magic.hex()} (expected 0x{MAGIC.hex()}): not a Chorus frame")
        if version not in self.versions:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"unsupported protocol version {version} (accepted: "
                                f"{', '.join(map(str, sorted(self.versions)))})", corr)
        cls = FRAME_TYPES.get(ftype)
        if cls is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type 0x{ftype:02x}", corr)
        if ftype not in self.accept:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE,
                                f"frame type 0x{ftype:02x} ({cls.__name__}) is not accepted from this peer", corr)
        if flags:
            raise ProtocolError(ErrorCode.MALFORMED,
                                f"reserved flag bits 0x{flags:02x} set in a {cls.__name__} frame "
                                f"(version {version} defines no flags)", corr)
        total = HEADER_BYTES + body_length
        if total > self.frame_bytes_max:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                f"{cls.__name__} frame of {total} bytes ({HEADER_BYTES}-byte header + "
                                f"{body_length}-byte body) exceeds frame_bytes_max={self.frame_bytes_max}", corr)
        return total, version, ftype, corr

    @staticmethod
    def _decode(header: tuple[int, int, int, int], body: memoryview) -> Frame:
        total, version, ftype, corr = header
        try:
            message = FRAME_TYPES[ftype].decode(body, version)
        except ProtocolError as e:
            e.correlation_id = corr
            raise
        return Frame(corr, message, version, total)
