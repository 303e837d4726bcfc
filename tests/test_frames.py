"""Tests for the client protocol's frame codec (protocol/frames.py)."""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import replace
import re
import struct
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.consume import Mode
from protocol.frames import (
    BASE_VERSION,
    ERROR_MESSAGE_BYTES_MAX,
    FRAME_BYTES_MAX,
    FRAME_TYPES,
    HEADER_BYTES,
    MAGIC,
    NO_SHARD_ID,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    SUPPORTED_VERSIONS,
    AckRequest,
    AckResponse,
    Auth,
    CommitRequest,
    CommitResponse,
    DeliveredRecord,
    Delivery,
    SubscriptionReset,
    GroupMetadata,
    GroupsRequest,
    GroupsResponse,
    GroupFetchRequest,
    GroupFetchResponse,
    QueriedRecord,
    QueryHeader,
    QueryRequest,
    QueryResponse,
    ErrorCode,
    ErrorResponse,
    FetchRequest,
    FetchResponse,
    Frame,
    FrameDecoder,
    Handshake,
    HandshakeOk,
    Heartbeat,
    HeartbeatResponse,
    Level,
    Limits,
    Message,
    MetadataRequest,
    MetadataResponse,
    ProduceRequest,
    ProduceResponse,
    ProtocolError,
    ShardMetadata,
    SubscribeRequest,
    SubscribeResponse,
    TopicMetadata,
    decode_frame,
    decode_message,
    encode_frame,
    negotiate_version,
)
from protocol.records import Record, decode_batch, encode_batch

ROOT = Path(__file__).resolve().parents[1]
HEADER = struct.Struct(">2sBBBII")

# -- strategies ------------------------------------------------------------------

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=12)  # any code point but surrogates: multi-byte UTF-8 included
blobs = st.binary(max_size=64)


def tuples(elements, max_size: int = 4):
    return st.lists(elements, max_size=max_size).map(tuple)


limits_st = st.builds(Limits, frame_bytes_max=u32, batch_bytes_max=u32, max_in_flight=u32,
                      session_timeout_ms=u32)
shard_md_st = st.builds(ShardMetadata, shard=u32, leader=text, host=text, port=u16, epoch=u32)
topic_md_st = st.builds(TopicMetadata, topic=text, error=st.sampled_from(ErrorCode),
                        shards=tuples(shard_md_st))

MESSAGES = {
    Handshake: st.builds(Handshake, client_id=text, versions=tuples(u8), auth=st.sampled_from(Auth),
                         username=text, password=text),
    HandshakeOk: st.builds(HandshakeOk, node_id=text, cluster_id=text, version=u8, limits=limits_st),
    MetadataRequest: st.builds(MetadataRequest, topics=tuples(text)),
    MetadataResponse: st.builds(MetadataResponse, topics=tuples(topic_md_st, 3)),
    ProduceRequest: st.builds(ProduceRequest, topic=text, shard=u32, level=st.sampled_from(Level),
                              producer_id=u64, sequence=u32, timeout_ms=u32, batch=blobs),
    ProduceResponse: st.builds(ProduceResponse, base_offset=u64, level_met=st.sampled_from(Level),
                               duplicate=st.booleans()),
    FetchRequest: st.builds(FetchRequest, topic=text, shard=u32, offset=u64, max_bytes=u32, max_wait_ms=u32),
    FetchResponse: st.builds(FetchResponse, high_watermark=u64, batches=tuples(blobs)),
    SubscribeRequest: st.builds(SubscribeRequest, topic=text, subscription=text, mode=st.sampled_from(Mode),
                                consumer_id=text),
    SubscribeResponse: st.builds(SubscribeResponse, active=st.booleans()),
    AckRequest: st.builds(AckRequest, topic=text, shard=u32, subscription=text, consumer_id=text,
                          offsets=tuples(u64, 8), nack=st.booleans(), shard_id=u32),
    AckResponse: st.just(AckResponse()),
    CommitRequest: st.builds(CommitRequest, topic=text, shard=u32, subscription=text, offset=u64),
    CommitResponse: st.just(CommitResponse()),
    Heartbeat: st.just(Heartbeat()),
    HeartbeatResponse: st.just(HeartbeatResponse()),
    ErrorResponse: st.builds(ErrorResponse, code=st.sampled_from(ErrorCode), message=text),
    Delivery: st.builds(Delivery, topic=text, shard=u32, subscription=text,
                        records=tuples(st.builds(DeliveredRecord, offset=u64, redelivery=st.booleans(),
                                                 payload=blobs), 4), shard_id=u32),
    GroupsRequest: st.builds(GroupsRequest, topic=text),
    GroupsResponse: st.builds(GroupsResponse, topic=text, groups=tuples(st.builds(
        GroupMetadata, group=u32, start_ms=u64, end_ms=u64, shard_ids=tuples(u32, 3),
        shards=tuples(st.builds(ShardMetadata, shard=u32, leader=text, host=text, port=st.integers(0, 0xFFFF),
                                epoch=u32), 2)), 2)),
    GroupFetchRequest: st.builds(GroupFetchRequest, topic=text, group=u32, shard=u32, offset=u64, max_bytes=u32,
                                 max_wait_ms=u32),
    GroupFetchResponse: st.builds(GroupFetchResponse, high_watermark=u64, shard_id=u32, batches=tuples(blobs, 3)),
    SubscriptionReset: st.builds(SubscriptionReset, topic=text, shard=u32, subscription=text,
                                 dropped_shard_id=u32, next_shard_id=u32, reason=text),
    QueryRequest: st.builds(QueryRequest, topic=text, from_ms=u64, to_ms=u64, has_key=st.booleans(), key=blobs,
                            limit=u32, after=text),
    QueryResponse: st.builds(QueryResponse, next_token=text, records=tuples(st.builds(
        QueriedRecord, shard=u32, offset=u64, timestamp_ms=u64, broker_timestamp_ms=u64, has_key=st.booleans(),
        key=blobs, value=blobs, headers=tuples(st.builds(QueryHeader, name=text, value=blobs), 2)), 3)),
}
any_message = st.one_of(*MESSAGES.values())
framed = st.tuples(any_message, u32)  # (message, correlation id)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# "never hangs": a few hundred bytes must decode in well under this, even on a loaded machine
FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])


def header(ftype: int, body_length: int, corr: int = 1, *, version: int = PROTOCOL_VERSION, flags: int = 0,
           magic: bytes = MAGIC) -> bytes:
    return HEADER.pack(magic, version, ftype, flags, corr, body_length)


def raw_frame(ftype: int, body: bytes, corr: int = 1, **kw) -> bytes:
    """A frame with a consistent header around an arbitrary body."""
    return header(ftype, len(body), corr, **kw) + body


def feed_all(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[Frame]:
    frames: list[Frame] = []
    bounds = [0, *sorted(cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        frames += decoder.feed(stream[a:b])
        assert decoder.buffered <= decoder.frame_bytes_max
    return frames


def expect_error(data: bytes, code: ErrorCode, match: str, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(**kw).feed(data)
    err = info.value
    assert err.code is code, err
    assert re.search(match, err.message), err.message
    return err


# -- registry and round trips --------------------------------------------------------


def test_every_frame_type_is_registered_and_tested() -> None:
    assert set(MESSAGES) == set(FRAME_TYPES.values())
    assert all(FRAME_TYPES[cls.TYPE] is cls for cls in MESSAGES)
    # requests are odd, the response to request t is t + 1
    for t in REQUEST_TYPES:
        assert t % 2 == 1 and t + 1 in RESPONSE_TYPES
    assert REQUEST_TYPES | RESPONSE_TYPES == set(FRAME_TYPES)
    assert ErrorResponse.TYPE in RESPONSE_TYPES


def test_error_codes_are_stable() -> None:
    expected = ["NONE", "UNKNOWN_TYPE", "MALFORMED", "FRAME_TOO_LARGE", "UNSUPPORTED_VERSION", "AUTH_FAILED",
                "NOT_LEADER", "UNKNOWN_TOPIC", "TIMEOUT", "OVERLOADED", "INVALID_REQUEST", "DUPLICATE_SEQUENCE",
                "OUT_OF_ORDER_SEQUENCE", "UNKNOWN_SHARD", "SUBSCRIPTION_BUSY", "HANDSHAKE_REQUIRED",
                "INTERNAL_ERROR", "PERMISSION_DENIED"]
    assert [(c.name, c.value) for c in ErrorCode] == [(n, i) for i, n in enumerate(expected)]


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[cls])
    corr = data.draw(u32)
    body = msg.encode()
    assert cls.decode(body) == msg
    assert decode_message(cls.TYPE, body) == msg
    frame = encode_frame(msg, corr)
    assert frame == HEADER.pack(MAGIC, PROTOCOL_VERSION, cls.TYPE, 0, corr, len(body)) + body
    decoded = decode_frame(frame)
    assert decoded == Frame(corr, msg, PROTOCOL_VERSION)
    assert decoded.type == cls.TYPE
    # enums come back as enum members, nested structures as their classes
    for f in dataclasses.fields(msg):
        assert type(getattr(decoded.message, f.name)) is type(getattr(msg, f.name))


def test_enum_fields_accept_plain_values() -> None:
    a = ProduceRequest(topic="t", shard=0, level="all", batch=b"")
    assert a.level is Level.ALL and a == ProduceRequest(topic="t", shard=0, level=Level.ALL, batch=b"")
    assert SubscribeRequest(topic="t", subscription="s", mode="shared", consumer_id="c").mode is Mode.SHARED
    assert ErrorResponse(code=6).code is ErrorCode.NOT_LEADER
    assert MetadataRequest(topics=["a", "b"]).topics == ("a", "b")  # lists become tuples (hashable, equal)


def test_golden_bytes() -> None:
    """The layout in docs/PROTOCOL.md, byte for byte."""
    assert encode_frame(Heartbeat(), 7, version=1) == bytes.fromhex("c405 01 0f 00 00000007 00000000")
    produce = ProduceRequest(topic="t", shard=2, level=Level.QUORUM, producer_id=5, sequence=9, timeout_ms=1000,
                             batch=b"ab")
    assert encode_frame(produce, 0x01020304, version=1) == bytes.fromhex(
        "c405 01 05 00 01020304 0000001e"  # header: 30-byte body
        "0001 74"  # topic
        "00000002"  # shard
        "02"  # level quorum
        "0000000000000005"  # producer id
        "00000009"  # sequence
        "000003e8"  # timeout ms
        "00000002 6162"  # batch
    )
    assert encode_frame(ErrorResponse(code=ErrorCode.NOT_LEADER, message="é"), 9, version=1) == bytes.fromhex(
        "c405 01 fe 00 00000009 00000006 0006 0002 c3a9")
    assert MetadataRequest(topics=("a", "bc")).encode() == bytes.fromhex("00000002 0001 61 0002 6263")


def test_record_batches_travel_opaque() -> None:
    recs = [Record(b"k%d" % i, b"payload %d" % i, (("h", b"v"),), 1_700_000_000_000 + i) for i in range(20)]
    batches = [encode_batch(recs, base_offset=100 * n, epoch=3, producer_id=42, base_sequence=7)
               for n in range(3)]
    produce = decode_frame(encode_frame(ProduceRequest(topic="a/b/c/d", shard=1, producer_id=42, sequence=7,
                                                       batch=batches[0]), 5)).message
    assert produce.batch == batches[0]
    assert [r.payload for r in decode_batch(produce.batch)[1]] == [r.payload for r in recs]
    fetch = decode_frame(encode_frame(FetchResponse(high_watermark=300, batches=batches), 6)).message
    assert fetch.batches == tuple(batches)
    assert [decode_batch(b)[0].base_offset for b in fetch.batches] == [0, 100, 200]


def test_password_is_not_in_repr() -> None:
    h = Handshake(client_id="c", auth=Auth.PASSWORD, username="alice", password="hunter2")
    assert "hunter2" not in repr(h) and "alice" in repr(h)
    assert Handshake.decode(h.encode()).password == "hunter2"


def test_version_2_adds_shard_id_to_delivery_and_ack_and_version_1_leaves_it_out() -> None:
    """Version 2 appends ``shard_id`` to Delivery and AckRequest; a version 1
    peer neither sends nor receives it (decoded as NO_SHARD_ID), so old
    clients keep working unchanged."""
    ack = AckRequest(topic="t", shard=1, subscription="s", consumer_id="c", offsets=(5,), shard_id=7)
    v1 = bytes.fromhex("0001 74 00000001 0001 73 0001 63 00000001 0000000000000005 00")
    assert ack.encode(version=1) == v1
    assert ack.encode(version=2) == v1 + bytes.fromhex("00000007")
    assert encode_frame(ack, 3, version=1) == bytes.fromhex("c405 01 0b 00 00000003") + len(v1).to_bytes(4, "big") + v1
    assert AckRequest.decode(v1, 1) == replace(ack, shard_id=NO_SHARD_ID)
    assert decode_frame(encode_frame(ack, 3, version=2)).message == ack
    assert decode_frame(encode_frame(ack, 3, version=1)).message.shard_id == NO_SHARD_ID
    with pytest.raises(ProtocolError, match="trailing bytes"):  # a version 2 body in a version 1 frame
        AckRequest.decode(ack.encode(version=2), 1)
    with pytest.raises(ProtocolError, match="field shard_id"):  # a version 1 body in a version 2 frame
        AckRequest.decode(v1, 2)
    d = Delivery(topic="t", shard=0, subscription="s", records=(DeliveredRecord(offset=1, payload=b"x"),),
                 shard_id=4)
    assert Delivery.decode(d.encode(version=1), 1) == replace(d, shard_id=NO_SHARD_ID)
    assert Delivery.decode(d.encode(version=2), 2) == d
    assert d.encode(version=2) == d.encode(version=1) + bytes.fromhex("00000004")
    # a version 2 client and a version 1 server (or the reverse) agree on version 1
    assert negotiate_version(SUPPORTED_VERSIONS, (1,)) == 1 and negotiate_version((1,)) == 1
    assert negotiate_version(SUPPORTED_VERSIONS) == 2


def test_negotiate_version() -> None:
    assert negotiate_version([1, 7, 9]) == 1
    assert negotiate_version([1, 2, 3], [1, 2]) == 2
    with pytest.raises(ProtocolError) as info:
        negotiate_version([3, 4])
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION and "no common protocol version" in info.value.message
    with pytest.raises(ProtocolError):
        negotiate_version([])


# -- correlation ids ----------------------------------------------------------------


def test_correlation_ids_preserved() -> None:
    ids = [0, 1, 2**32 - 1, 12345, 1, 0]  # any order, repeats allowed: the codec does not interpret them
    stream = b"".join(encode_frame(FetchRequest(topic="t", shard=i, offset=i), cid) for i, cid in enumerate(ids))
    frames = FrameDecoder().feed(stream)
    assert [f.correlation_id for f in frames] == ids
    assert [f.message.shard for f in frames] == list(range(len(ids)))


@pytest.mark.parametrize("bad", [-1, 2**32, True, "1", 1.0])
def test_correlation_id_out_of_range_is_refused(bad) -> None:
    with pytest.raises((TypeError, ValueError), match="correlation_id"):
        encode_frame(Heartbeat(), bad)


# -- streaming ---------------------------------------------------------------------


@FAST
@given(items=st.lists(framed, min_size=1, max_size=8), data=st.data())
def test_random_split_points(items, data) -> None:
    stream = b"".join(encode_frame(m, c) for m, c in items)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    decoder = FrameDecoder()
    frames = feed_all(decoder, stream, cuts)
    assert frames == [Frame(c, m) for m, c in items]
    assert decoder.buffered == 0


@FAST
@given(items=st.lists(framed, min_size=1, max_size=3))
def test_one_byte_at_a_time(items) -> None:
    stream = b"".join(encode_frame(m, c) for m, c in items)
    decoder = FrameDecoder()
    frames = feed_all(decoder, stream, list(range(1, len(stream))))
    assert frames == [Frame(c, m) for m, c in items]


def test_many_frames_in_one_chunk() -> None:
    items = [(ProduceRequest(topic="t", shard=i % 7, batch=bytes([i % 256]) * (i % 50)), i) for i in range(1000)]
    items += [(Heartbeat(), 5000 + i) for i in range(100)]
    stream = b"".join(encode_frame(m, c) for m, c in items)
    decoder = FrameDecoder()
    assert decoder.feed(stream) == [Frame(c, m) for m, c in items]
    # whole frames plus a partial one, then the rest
    cut = len(stream) - 10
    decoder = FrameDecoder()
    first = decoder.feed(stream[:cut])
    assert first == [Frame(c, m) for m, c in items[:-1]] and decoder.buffered == 3
    assert decoder.feed(stream[cut:]) == [Frame(items[-1][1], items[-1][0])]
    assert decoder.feed(b"") == [] and decoder.buffered == 0


def test_buffer_never_exceeds_one_frame() -> None:
    limit = 4096
    big = ProduceRequest(topic="t", shard=0, batch=b"x" * (limit - HEADER_BYTES - 28))
    frame = encode_frame(big, 1, frame_bytes_max=limit)
    assert len(frame) == limit  # exactly at the limit: accepted
    stream = frame * 5 + encode_frame(Heartbeat(), 2)
    decoder = FrameDecoder(limit)
    frames = feed_all(decoder, stream, list(range(0, len(stream), 1000)))
    assert [f.correlation_id for f in frames] == [1] * 5 + [2]
    # one byte over the limit is rejected from the header alone
    over = encode_frame(ProduceRequest(topic="t", shard=0, batch=b"x" * (limit - HEADER_BYTES - 27)), 3)
    assert len(over) == limit + 1
    err = expect_error(over[:HEADER_BYTES], ErrorCode.FRAME_TOO_LARGE, r"frame of 4097 bytes .* exceeds "
                       r"frame_bytes_max=4096", frame_bytes_max=limit)
    assert err.correlation_id == 3
    with pytest.raises(ValueError, match="exceeds frame_bytes_max"):
        encode_frame(over_msg := ProduceRequest(topic="t", shard=0, batch=b"x" * limit), 1, frame_bytes_max=limit)
    assert len(encode_frame(over_msg, 1)) > limit  # fine under the default limit


# -- errors ----------------------------------------------------------------------


def test_oversize_rejected_from_header_alone() -> None:
    decoder = FrameDecoder()
    huge = header(ProduceRequest.TYPE, 2**32 - 1, corr=77)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(huge)  # no body byte fed
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE and info.value.correlation_id == 77
    assert f"exceeds frame_bytes_max={FRAME_BYTES_MAX}" in info.value.message
    assert decoder.buffered == 0
    # split header: rejected as soon as its last byte arrives
    decoder = FrameDecoder()
    just = header(FetchResponse.TYPE, FRAME_BYTES_MAX - HEADER_BYTES + 1)
    assert decoder.feed(just[:-1]) == []
    with pytest.raises(ProtocolError, match="FRAME_TOO_LARGE"):
        decoder.feed(just[-1:])
    # the largest frame is accepted from its header (and waits for its body)
    decoder = FrameDecoder()
    assert decoder.feed(header(FetchResponse.TYPE, FRAME_BYTES_MAX - HEADER_BYTES)) == []
    assert decoder.buffered == HEADER_BYTES


@pytest.mark.parametrize("data", [b"G", b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00", b"\xc4\x06",
                                  b"\xcb\x01" + b"\x00" * 49])
def test_bad_magic(data: bytes) -> None:
    err = expect_error(data, ErrorCode.MALFORMED, r"bad magic.*not a Chorus frame")
    assert err.correlation_id == 0


def test_bad_magic_detected_on_first_wrong_byte() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(MAGIC[:1]) == []
    with pytest.raises(ProtocolError, match="bad magic byte 0x00 at offset 1"):
        decoder.feed(b"\x00")


@pytest.mark.parametrize("version", [0, 3, 255])
def test_unsupported_version(version: int) -> None:
    err = expect_error(raw_frame(Heartbeat.TYPE, b"", 42, version=version), ErrorCode.UNSUPPORTED_VERSION,
                       rf"unsupported protocol version {version} \(accepted: 1, 2\)")
    assert err.correlation_id == 42


@pytest.mark.parametrize("ftype", [0x00, 0x17, 0x7F, 0xFD, 0xFF])
def test_unknown_type(ftype: int) -> None:
    err = expect_error(raw_frame(ftype, b"", 9), ErrorCode.UNKNOWN_TYPE, rf"unknown frame type 0x{ftype:02x}")
    assert err.correlation_id == 9


def test_type_not_accepted_from_this_peer() -> None:
    ok = encode_frame(HandshakeOk(node_id="n", cluster_id="c", version=1), 3)
    expect_error(ok, ErrorCode.UNKNOWN_TYPE, r"0x02 \(HandshakeOk\) is not accepted", accept=REQUEST_TYPES)
    assert FrameDecoder(accept=RESPONSE_TYPES).feed(ok)[0].message.node_id == "n"


@pytest.mark.parametrize("flags", [0x01, 0x80])
def test_reserved_flags(flags: int) -> None:
    expect_error(raw_frame(Heartbeat.TYPE, b"", flags=flags), ErrorCode.MALFORMED,
                 rf"reserved flag bits 0x{flags:02x} set in a Heartbeat frame")


# one instance per frame type with a non-empty body
SAMPLES = [
    Handshake(client_id="c", versions=(1,), auth=Auth.PASSWORD, username="u", password="p"),
    HandshakeOk(node_id="n1", cluster_id="c", version=1),
    MetadataRequest(topics=("a/b/c/d",)),
    MetadataResponse(topics=(TopicMetadata(topic="t", shards=(ShardMetadata(shard=0, leader="n1", host="h",
                                                                            port=9092, epoch=3),)),)),
    ProduceRequest(topic="t", shard=1, batch=b"batch"),
    ProduceResponse(base_offset=10, level_met=Level.ONE, duplicate=True),
    FetchRequest(topic="t", shard=0, offset=5),
    FetchResponse(high_watermark=9, batches=(b"b1", b"b2")),
    SubscribeRequest(topic="t", subscription="s", mode=Mode.FAILOVER, consumer_id="c"),
    SubscribeResponse(active=False),
    AckRequest(topic="t", shard=0, subscription="s", consumer_id="c", offsets=(1, 2), nack=True),
    CommitRequest(topic="t", shard=0, subscription="s", offset=3),
    ErrorResponse(code=ErrorCode.TIMEOUT, message="slow"),
    Delivery(topic="t", shard=2, subscription="s",
             records=(DeliveredRecord(offset=7, payload=b"x"), DeliveredRecord(offset=8, redelivery=True, payload=b""))),
    SubscriptionReset(topic="t", shard=1, subscription="s", dropped_shard_id=3, next_shard_id=5, reason="dropped"),
    GroupsRequest(topic="t"),
    GroupsResponse(topic="t", groups=(GroupMetadata(group=2, start_ms=5, end_ms=9, shard_ids=(4, 5), shards=(
        ShardMetadata(shard=0, leader="n1", host="h", port=1, epoch=2),)),)),
    GroupFetchRequest(topic="t", group=2, shard=1, offset=3, max_wait_ms=5),
    GroupFetchResponse(high_watermark=9, shard_id=5, batches=(b"b",)),
    QueryRequest(topic="t", from_ms=1, to_ms=9, has_key=True, key=b"k", limit=5, after="tok"),
    QueryResponse(records=(QueriedRecord(shard=1, offset=2, timestamp_ms=3, broker_timestamp_ms=4, value=b"v",
                                         headers=(QueryHeader(name="h", value=b"x"),)),), next_token="n"),
]


def test_samples_cover_every_non_empty_body() -> None:
    assert {type(m) for m in SAMPLES} == {c for c in FRAME_TYPES.values() if dataclasses.fields(c)}


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_body(msg: Message) -> None:
    body = msg.encode()
    for cut in range(len(body)):  # the header's length matches: the *fields* run out
        err = expect_error(raw_frame(msg.TYPE, body[:cut], 31), ErrorCode.MALFORMED,
                           rf"^{type(msg).__name__} body: field \w+.*: (truncated: needs \d+ bytes at body offset \d+, "
                           rf"only \d+ left|list count \d+ cannot fit)")
        assert err.correlation_id == 31


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
def test_trailing_bytes_in_body(cls: type[Message]) -> None:
    msg = {type(m): m for m in SAMPLES}.get(cls) or cls()
    body = msg.encode() + b"\x00\x00"
    expect_error(raw_frame(cls.TYPE, body), ErrorCode.MALFORMED,
                 rf"^{cls.__name__} body: 2 trailing bytes after the last field \(body is {len(body)} bytes")


def _patch(body: bytes, at: int, value: bytes) -> bytes:
    return body[:at] + value + body[at + len(value):]


@pytest.mark.parametrize("body_type,body,match", [
    # ProduceRequest: topic "t" (3 bytes), shard (4), then the level byte at offset 7
    (ProduceRequest.TYPE, _patch(ProduceRequest(topic="t", shard=1, batch=b"").encode(), 7, b"\x04"),
     r"field level: invalid consistency level 4 \(valid: 0=any, 1=one, 2=quorum, 3=all\)"),
    (ProduceResponse.TYPE, _patch(ProduceResponse(base_offset=1, level_met=Level.ANY).encode(), 8, b"\xff"),
     r"field level_met: invalid consistency level 255"),
    (ProduceResponse.TYPE, _patch(ProduceResponse(base_offset=1, level_met=Level.ANY).encode(), 9, b"\x02"),
     r"field duplicate: invalid bool value 2"),
    (SubscribeRequest.TYPE, _patch(SubscribeRequest(topic="t", subscription="s", consumer_id="c").encode(), 6,
                                   b"\x03"),
     r"field mode: invalid subscription mode 3 \(valid: 0=exclusive, 1=shared, 2=failover\)"),
    (Handshake.TYPE, _patch(Handshake(client_id="c", versions=()).encode(), 7, b"\x02"),
     r"field auth: invalid auth mechanism 2"),
    (ErrorResponse.TYPE, _patch(ErrorResponse(code=ErrorCode.NONE).encode(), 0, b"\x03\xe7"),
     r"field code: invalid error code 999"),
    (MetadataResponse.TYPE, _patch(MetadataResponse(topics=(TopicMetadata(topic="t"),)).encode(), 7, b"\x00\x63"),
     r"field topics\[0\].error: invalid error code 99"),
    (AckRequest.TYPE, _patch(AckRequest(topic="t", shard=0, subscription="s", consumer_id="c", offsets=()).encode(),
                             17, b"\x07"),
     r"field nack: invalid bool value 7"),
])
def test_invalid_enum_values(body_type: int, body: bytes, match: str) -> None:
    expect_error(raw_frame(body_type, body), ErrorCode.MALFORMED, match)


def test_invalid_utf8() -> None:
    body = b"\x00\x00\x00\x01" + b"\x00\x02\xc3\x28"
    expect_error(raw_frame(MetadataRequest.TYPE, body), ErrorCode.MALFORMED,
                 r"MetadataRequest body: field topics\[0\]: invalid UTF-8 in a string of 2 bytes")


def test_absurd_list_count_is_refused_without_allocating() -> None:
    body = b"\xff\xff\xff\xff" + b"\x00" * 10
    expect_error(raw_frame(MetadataRequest.TYPE, body), ErrorCode.MALFORMED,
                 r"field topics: list count 4294967295 cannot fit: .* at least 2 bytes, only 10 bytes left")
    body = FetchResponse(high_watermark=0).encode()[:8] + b"\x7f\xff\xff\xff"
    expect_error(raw_frame(FetchResponse.TYPE, body), ErrorCode.MALFORMED, r"field batches: list count")


def test_decoder_stays_failed_and_keeps_earlier_frames() -> None:
    good = encode_frame(Heartbeat(), 1) + encode_frame(HeartbeatResponse(), 2)
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(good + b"garbage")
    assert [f.correlation_id for f in info.value.frames] == [1, 2]
    assert decoder.failed is info.value and decoder.buffered == 0
    with pytest.raises(ProtocolError) as again:
        decoder.feed(encode_frame(Heartbeat(), 3))
    assert again.value.code is ErrorCode.MALFORMED and again.value.message == info.value.message
    assert again.value.frames == []


def test_error_response_frame() -> None:
    err = expect_error(raw_frame(0x42, b"", 1234), ErrorCode.UNKNOWN_TYPE, "unknown frame type 0x42")
    frame = decode_frame(err.response())
    assert frame == Frame(1234, ErrorResponse(code=ErrorCode.UNKNOWN_TYPE, message=err.message), BASE_VERSION)
    long = ProtocolError(ErrorCode.MALFORMED, "é" * 5000)
    msg = decode_frame(long.response()).message
    assert len(msg.message.encode()) <= ERROR_MESSAGE_BYTES_MAX and msg.message == "é" * 512


def test_decode_frame_wants_exactly_one_frame() -> None:
    one = encode_frame(Heartbeat(), 1)
    with pytest.raises(ProtocolError, match="truncated frame"):
        decode_frame(one[:-1] if len(one) > HEADER_BYTES else one[:5])
    with pytest.raises(ProtocolError, match="exactly one frame, got 2"):
        decode_frame(one + one)


def test_decode_message_unknown_type() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(0x99, b"")
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


# -- construction validates ------------------------------------------------------------


@pytest.mark.parametrize("make,exc,match", [
    (lambda: ProduceRequest(topic="t", shard=-1, batch=b""), ValueError, r"ProduceRequest\.shard: out of range"),
    (lambda: ProduceRequest(topic="t", shard=2**32, batch=b""), ValueError, "shard"),
    (lambda: ProduceRequest(topic="t", shard=True, batch=b""), TypeError, "must be an int"),
    (lambda: ProduceRequest(topic="t", shard="1", batch=b""), TypeError, "must be an int"),
    (lambda: ProduceRequest(topic="t", shard=0, batch="text"), TypeError, "must be bytes"),
    (lambda: ProduceRequest(topic="t", shard=0, batch=b"", level="strong"), ValueError, "invalid consistency level"),
    (lambda: ProduceRequest(topic="t" * 65536, shard=0, batch=b""), ValueError, "exceeds 65535"),
    (lambda: ProduceRequest(topic="\ud800", shard=0, batch=b""), ValueError, "topic"),
    (lambda: ProduceRequest(topic=None, shard=0, batch=b""), TypeError, "must be a str"),
    (lambda: ProduceResponse(base_offset=2**64, level_met="any"), ValueError, "base_offset"),
    (lambda: ProduceResponse(base_offset=0, level_met="any", duplicate=1), TypeError, "must be a bool"),
    (lambda: Handshake(client_id="c", versions=(1, 256)), ValueError, r"versions: \[1\]: out of range"),
    (lambda: Handshake(client_id="c", auth="kerberos"), ValueError, "invalid auth mechanism"),
    (lambda: ErrorResponse(code=999), ValueError, "invalid error code"),
    (lambda: ErrorResponse(code=True), ValueError, "invalid error code"),
    (lambda: MetadataRequest(topics="abc"), TypeError, "must be a sequence"),
    (lambda: MetadataResponse(topics=({"topic": "t"},)), TypeError, r"\[0\]: must be a TopicMetadata"),
    (lambda: ShardMetadata(shard=0, leader="n", host="h", port=65536, epoch=0), ValueError, "port"),
    (lambda: ProduceRequest(shard=0, batch=b""), TypeError, "topic"),
    (lambda: ProduceRequest("t", 0, b""), TypeError, "positional"),
])
def test_construction_validates(make, exc, match) -> None:
    with pytest.raises(exc, match=match):
        make()


def test_frame_decoder_arguments() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(HEADER_BYTES - 1)
    with pytest.raises(ValueError):
        FrameDecoder(versions=(3,))
    with pytest.raises(TypeError):
        FrameDecoder().feed("text")
    assert FrameDecoder(HEADER_BYTES).feed(encode_frame(Heartbeat(), 1))[0].message == Heartbeat()


# -- fuzz ------------------------------------------------------------------------------


def check_frames(frames: list[Frame]) -> None:
    """Whatever decodes is a valid message that encodes back to a frame."""
    for f in frames:
        assert isinstance(f.message, Message)
        assert decode_frame(encode_frame(f.message, f.correlation_id)) == f


@FUZZ
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6),
       limit=st.sampled_from([HEADER_BYTES, 64, 1024, FRAME_BYTES_MAX]))
def test_fuzz_random_bytes(data: bytes, cuts: list[int], limit: int) -> None:
    decoder = FrameDecoder(limit)
    try:
        check_frames(feed_all(decoder, data, [c for c in cuts if c <= len(data)]))
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode) and e.message
    assert decoder.buffered <= limit


@FUZZ
@given(ftype=st.sampled_from(sorted(FRAME_TYPES)), body=st.binary(max_size=120))
def test_fuzz_random_bodies(ftype: int, body: bytes) -> None:
    """Random bodies behind valid headers reach the field decoders; the
    encoding is canonical, so whatever decodes re-encodes to the same bytes."""
    try:
        msg = decode_message(ftype, body)
    except ProtocolError as e:
        assert e.code is ErrorCode.MALFORMED
        return
    assert msg.encode() == body


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, at, arg in ops:
        if not buf:
            break
        at %= len(buf)
        if op == "flip":
            buf[at] ^= arg
        elif op == "set":
            buf[at] = arg
        elif op == "insert":
            buf[at:at] = arg
        elif op == "delete":
            del buf[at:at + arg]
        else:
            del buf[at:]
    return bytes(buf)


@FUZZ
@given(items=st.lists(framed, min_size=1, max_size=4), ops=st.lists(mutation, min_size=1, max_size=4),
       cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_fuzz_mutated_frames(items, ops, cuts) -> None:
    stream = mutate(b"".join(encode_frame(m, c) for m, c in items), ops)
    decoder = FrameDecoder(1024)
    try:
        check_frames(feed_all(decoder, stream, [c for c in cuts if c <= len(stream)]))
    except ProtocolError as e:
        assert isinstance(e.code, ErrorCode) and e.message
        assert e.response()  # the server can always answer
    assert decoder.buffered <= 1024


# -- the module and its documentation ------------------------------------------------------


def test_module_imports_only_protocol_and_stdlib() -> None:
    tree = ast.parse((ROOT / "protocol" / "frames.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"actors", "storage", "sim", "runtime", "socket", "asyncio", "time", "random",
                           "threading", "selectors", "select"}


DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()


def doc_section(title: str) -> str:
    m = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#{{2,3}} |\Z)", DOC, re.S | re.M)
    assert m, f"docs/PROTOCOL.md has no section '### {title}'"
    return m.group(1)


@pytest.mark.parametrize("cls", [*FRAME_TYPES.values(), Limits, TopicMetadata, ShardMetadata, DeliveredRecord,
                                 QueriedRecord, QueryHeader, GroupMetadata],
                         ids=lambda c: c.__name__)
def test_docs_list_every_field_in_order(cls) -> None:
    title = f"0x{cls.TYPE:02X} {cls.__name__}" if cls in FRAME_TYPES.values() else cls.__name__
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", doc_section(title), re.M)
    assert rows == [(name, kind.name) for name, kind in cls._wire]


def test_docs_list_every_error_code() -> None:
    for code in ErrorCode:
        assert re.search(rf"^\| {code.value} \| `{code.name}` \|", DOC, re.M), code
    assert f"{FRAME_BYTES_MAX}" in DOC and "0xC4 0x05" in DOC
    assert SUPPORTED_VERSIONS == (1, PROTOCOL_VERSION) == (1, 2)
