"""Tests for the MQTT 3.1.1 codec (protocol/mqtt.py)."""
from __future__ import annotations

import dataclasses
import pickle
import socket
import struct
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import mqtt
from protocol.mqtt import (
    REFUSED_IDENTIFIER,
    REFUSED_PROTOCOL_VERSION,
    REMAINING_LENGTH_MAX,
    SUBACK_FAILURE,
    Connack,
    Connect,
    Disconnect,
    MqttDecoder,
    MqttLimits,
    MqttProtocolError,
    PacketType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_publish,
    parse_shared,
    validate_topic_filter,
    validate_topic_name,
)

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])

HELLO = encode(Connect("c"))  # every server-side stream starts with a CONNECT
WELCOME = encode(Connack(False, 0))  # and every client-side one with a CONNACK


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return u16(len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    """A packet with a hand-made fixed header (body under 16 KiB)."""
    n = len(body)
    return bytes([first]) + (bytes([n]) if n < 128 else bytes([n & 0x7F | 0x80, n >> 7])) + body


def connect_bytes(flags: int = 0x02, payload: bytes = s("c"), name: bytes = b"MQTT", level: int = 4,
                  keep_alive: int = 60) -> bytes:
    return packet(0x10, s(name) + bytes([level, flags]) + u16(keep_alive) + payload)


def server(*chunks: bytes, limits: MqttLimits = MqttLimits()) -> list:
    """Decode ``chunks`` after a valid CONNECT on a server-side decoder."""
    d = MqttDecoder(limits)
    assert d.feed(HELLO) == [Connect("c")]
    return [p for c in chunks for p in d.feed(c)]


def client(*chunks: bytes) -> list:
    d = MqttDecoder(server=False)
    assert d.feed(WELCOME) == [Connack(False, 0)]
    return [p for c in chunks for p in d.feed(c)]


def rejects(fn, *args, connack_code: int | None = None, match: str | None = None, **kw) -> MqttProtocolError:
    with pytest.raises(MqttProtocolError, match=match) as info:
        fn(*args, **kw)
    assert info.value.connack_code == connack_code
    return info.value


# -- strategies ------------------------------------------------------------------

level_text = st.text(st.characters(blacklist_characters="+#/\x00", blacklist_categories=("Cs",)), max_size=6)
topic_names = st.lists(level_text, min_size=1, max_size=6).map("/".join).filter(bool)
topic_filters = st.builds(
    lambda levels, tail: "/".join(levels + tail) or "#",
    st.lists(st.one_of(level_text, st.just("+")), min_size=0, max_size=5),
    st.sampled_from([[], ["#"]]),
).filter(bool)
utf8 = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
pids = st.integers(1, 0xFFFF)
qos = st.integers(0, 2)


@st.composite
def publishes(draw) -> Publish:
    q = draw(qos)
    return Publish(draw(topic_names), draw(st.binary(max_size=300)), q, draw(st.booleans()),
                   draw(st.booleans()) if q else False, draw(pids) if q else None)


@st.composite
def connects(draw) -> Connect:
    level = draw(st.sampled_from([4, 4, 3]))
    clean = draw(st.booleans())
    client_id = draw(utf8.filter(lambda c: len(c.encode()) <= 256))
    if not client_id and (not clean or level == 3):
        client_id = "x"
    will = draw(st.none() | st.builds(Will, topic_names, st.binary(max_size=40), qos, st.booleans()))
    username = draw(st.none() | utf8)
    password = draw(st.none() | st.binary(max_size=40)) if username is not None else None
    return Connect(client_id, clean, draw(st.integers(0, 0xFFFF)), will, username, password, level)


to_server = st.one_of(
    publishes(), st.builds(Puback, pids), st.builds(Pubrec, pids), st.builds(Pubrel, pids),
    st.builds(Pubcomp, pids),
    st.builds(Subscribe, pids, st.lists(st.tuples(topic_filters, qos), min_size=1, max_size=5).map(tuple)),
    st.builds(Unsubscribe, pids, st.lists(topic_filters, min_size=1, max_size=5).map(tuple)),
    st.just(Pingreq()), st.just(Disconnect()),
)
to_client = st.one_of(
    publishes(), st.builds(Puback, pids), st.builds(Pubrec, pids), st.builds(Pubrel, pids),
    st.builds(Pubcomp, pids),
    st.builds(Suback, pids, st.lists(st.sampled_from([0, 1, 2, SUBACK_FAILURE]), min_size=1, max_size=8).map(tuple)),
    st.builds(Unsuback, pids), st.just(Pingresp()),
)
connacks = st.one_of(st.builds(Connack, st.booleans(), st.just(0)), st.builds(Connack, st.just(False), st.integers(1, 5)))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# -- round trips -----------------------------------------------------------------


@FAST
@given(first=connects(), rest=st.lists(to_server, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_client_packets_round_trip_at_any_split(first, rest, cuts) -> None:
    packets = [first, *rest]
    stream = b"".join(map(encode, packets))
    assert MqttDecoder().feed(stream) == packets
    d = MqttDecoder()
    assert [p for chunk in split(stream, cuts) for p in d.feed(chunk)] == packets
    assert d.buffered == 0


@FAST
@given(first=connacks, rest=st.lists(to_client, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_server_packets_round_trip_at_any_split(first, rest, cuts) -> None:
    packets = [first, *rest]
    stream = b"".join(map(encode, packets))
    d = MqttDecoder(server=False)
    assert [p for chunk in split(stream, cuts) for p in d.feed(chunk)] == packets


@FAST
@given(p=publishes())
def test_encode_publish_is_encode_of_publish(p: Publish) -> None:
    assert encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id) == encode(p)


def test_byte_at_a_time_and_large_packets() -> None:
    big = Publish("big/one", bytes(range(256)) * 80, 1, packet_id=9)  # 3-byte remaining length
    packets = [Connect("c"), Publish("a", b"x"), big, Pingreq(), big]
    stream = b"".join(map(encode, packets))
    d = MqttDecoder()
    out = [p for i in range(len(stream)) for p in d.feed(stream[i:i + 1])]
    assert out == packets
    d = MqttDecoder()
    out = [p for i in range(0, len(stream), 1000) for p in d.feed(memoryview(stream)[i:i + 1000])]
    assert out == packets


@settings(FAST, max_examples=30)
@given(packets=st.lists(st.one_of(connects(), connacks, to_server, to_client), min_size=1, max_size=6))
def test_packets_pickle(packets: list) -> None:
    assert pickle.loads(pickle.dumps(packets)) == packets


def test_decoded_publish_is_an_ordinary_frozen_packet() -> None:
    [p] = server(encode(Publish("a/b", b"x", 1, True, True, 7)))
    q = Publish("a/b", b"x", 1, True, True, 7)
    assert p == q and hash(p) == hash(q) and repr(p) == repr(q) and type(p) is Publish
    assert pickle.loads(pickle.dumps(p)) == q
    assert dataclasses.replace(p, qos=2) == Publish("a/b", b"x", 2, True, True, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.qos = 0  # type: ignore[misc]


def test_error_pickles_with_its_connack_code() -> None:
    e = pickle.loads(pickle.dumps(MqttProtocolError("bad id", REFUSED_IDENTIFIER)))
    assert (e.message, e.connack_code) == ("bad id", REFUSED_IDENTIFIER)


# -- byte strings laid out as in the specification ---------------------------------


def test_known_byte_strings() -> None:
    connect = bytes.fromhex("10 24 0004 4d515454 04 ce 000a 0003 636964 0003 612f77 0002 6279 0004 75736572"
                            " 0004 70617373".replace(" ", ""))
    assert MqttDecoder().feed(connect) == [Connect("cid", True, 10, Will("a/w", b"by", 1, False), "user",
                                                   b"pass")]
    publish = bytes.fromhex("32 0a 0003 612f62 000a 686921".replace(" ", ""))
    subscribe = bytes.fromhex("82 0e 000a 0003 612f62 01 0003 632f64 02".replace(" ", ""))
    unsubscribe = bytes.fromhex("a2 0c 000b 0003 612f62 0003 632f64".replace(" ", ""))
    pubrel, ping, bye = bytes.fromhex("6202000a"), bytes.fromhex("c000"), bytes.fromhex("e000")
    assert server(publish, subscribe, unsubscribe, pubrel, ping, bye) == [
        Publish("a/b", b"hi!", 1, packet_id=10), Subscribe(10, (("a/b", 1), ("c/d", 2))),
        Unsubscribe(11, ("a/b", "c/d")), Pubrel(10), Pingreq(), Disconnect()]
    for p in (Publish("a/b", b"hi!", 1, packet_id=10), Subscribe(10, (("a/b", 1), ("c/d", 2))), Pubrel(10)):
        assert encode(p) in (publish, subscribe, pubrel)
    assert client(bytes.fromhex("9005000a000280"), bytes.fromhex("b0020005"), bytes.fromhex("d000")) == [
        Suback(10, (0, 2, SUBACK_FAILURE)), Unsuback(5), Pingresp()]
    assert MqttDecoder(server=False).feed(bytes.fromhex("20020100")) == [Connack(True, 0)]
    assert MqttDecoder().feed(connect_bytes(name=b"MQIsdp", level=3)) == [Connect("c", protocol_level=3)]


@pytest.mark.parametrize("value,encoded", [
    (0, "00"), (127, "7f"), (128, "8001"), (16_383, "ff7f"), (16_384, "808001"), (2_097_151, "ffff7f"),
    (2_097_152, "80808001"), (268_435_455, "ffffff7f")])
def test_remaining_length_table(value: int, encoded: str) -> None:
    assert mqtt._varint(value) == bytes.fromhex(encoded)
    header = b"\x30" + bytes.fromhex(encoded)
    d = MqttDecoder(MqttLimits(packet_bytes_max=5 + REMAINING_LENGTH_MAX))
    assert d._header(header, 0, len(header)) == len(header) + value
    assert d._header(header[:-1], 0, len(header) - 1) is None  # incomplete


@pytest.mark.parametrize("version,level", [("MQTTv311", 4), ("MQTTv31", 3)])
def test_paho_client_interoperates(version: str, level: int) -> None:
    """A real client library talks to the codec over a loopback socket."""
    paho = pytest.importorskip("paho.mqtt.client")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(5)
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="paho-1", protocol=getattr(paho, version))
        c.username_pw_set("user", "secret")
        c.will_set("last/will", b"bye", qos=1, retain=True)
        got: list = []
        c.on_connect = lambda *a: got.append("connack")
        c.on_message = lambda _c, _u, msg: got.append((msg.topic, msg.payload, msg.qos))
        c.connect("127.0.0.1", srv.getsockname()[1], keepalive=30)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            d = MqttDecoder()

            def receive(count: int) -> list:
                out: list = []
                for _ in range(100):
                    c.loop(timeout=0.01)
                    data = conn.recv(65536)
                    out += d.feed(data)
                    if len(out) >= count or not data:
                        break
                return out

            assert receive(1) == [Connect("paho-1", True, 30, Will("last/will", b"bye", 1, True), "user",
                                          b"secret", level)]
            conn.sendall(encode(Connack(False, 0)) + encode(Publish("x/y", b"data", 1, packet_id=7)))
            for _ in range(100):
                if len(got) == 2:
                    break
                c.loop(timeout=0.01)
            assert got == ["connack", ("x/y", b"data", 1)]
            c.publish("a/b", b"hello", qos=1)
            c.subscribe([("a/+", 1), ("#", 0)])
            c.unsubscribe("a/+")
            c.disconnect()
            assert receive(5) == [Puback(7), Publish("a/b", b"hello", 1, packet_id=1),
                                  Subscribe(2, (("a/+", 1), ("#", 0))), Unsubscribe(3, ("a/+",)), Disconnect()]


# -- fuzzing ---------------------------------------------------------------------


def feed_all(d: MqttDecoder, chunks: list[bytes]) -> list:
    """Feed every chunk; only MqttProtocolError may escape, and a decoder
    that raised refuses further input.  Returns the decoded packets."""
    out: list = []
    for chunk in chunks:
        try:
            out += d.feed(chunk)
        except MqttProtocolError:
            assert d.failed is not None
            with pytest.raises(MqttProtocolError):
                d.feed(b"\xc0\x00")
            return out
    return out


def check_valid(packets: list, side: bool) -> None:
    """What a decoder yields, ``encode`` accepts, and decodes back the same."""
    for p in packets:
        d = MqttDecoder(server=side)
        if not isinstance(p, (Connect, Connack)):
            d.feed(HELLO if side else WELCOME)
        assert d.feed(encode(p)) == [p]


@FUZZ
@given(prefix=st.sampled_from([b"", HELLO, WELCOME]), data=st.binary(max_size=300),
       cuts=st.lists(st.integers(0, 300), max_size=6), side=st.booleans())
def test_random_bytes_only_raise_protocol_errors(prefix: bytes, data: bytes, cuts: list[int], side: bool) -> None:
    check_valid(feed_all(MqttDecoder(MqttLimits(packet_bytes_max=200), server=side), split(prefix + data, cuts)),
                side)


mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 4)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
)


@settings(FUZZ, max_examples=200)
@given(first=connects(), rest=st.lists(to_server, min_size=1, max_size=4), ops=st.lists(mutation, min_size=1,
       max_size=4), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_mutated_packets_only_raise_protocol_errors(first, rest, ops, cuts) -> None:
    data = bytearray(b"".join(map(encode, [first, *rest])))
    for op, at, arg in ops:
        at %= len(data) + 1
        if op == "set" and at < len(data):
            data[at] = arg
        elif op == "insert":
            data.insert(at, arg)
        elif op == "delete":
            del data[at:at + arg]
        elif op == "truncate":
            del data[at:]
        if not data:
            return
    check_valid(feed_all(MqttDecoder(), split(bytes(data), cuts)), True)


# -- validation rules --------------------------------------------------------------


def test_remaining_length_of_five_bytes_is_malformed() -> None:
    d = MqttDecoder(MqttLimits(packet_bytes_max=5 + REMAINING_LENGTH_MAX))
    d.feed(HELLO)
    assert d.feed(b"\x30\xff\xff\xff\x7f") == []  # four bytes: the maximum, accepted (body pending)
    rejects(server, b"\x30\xff\xff\xff\xff\x01", limits=MqttLimits(packet_bytes_max=5 + REMAINING_LENGTH_MAX),
            match="4 bytes")
    rejects(server, b"\x30\x80\x80\x80\x80")  # the fifth byte need not arrive to know


def test_packet_size_limit_is_checked_from_the_header() -> None:
    small = MqttLimits(packet_bytes_max=100)
    ok = encode(Publish("t", bytes(100 - 5)))
    assert len(ok) == 100 and server(ok, limits=small) == [Publish("t", bytes(95))]
    rejects(server, encode(Publish("t", bytes(96)))[:3], limits=small, match="packet_bytes_max")
    rejects(server, b"\x30\xff\xff\xff\x7f", match="packet_bytes_max")  # 256 MiB announced, nothing buffered
    rejects(MqttDecoder(small).feed, connect_bytes(payload=s("x" * 100)), match="packet_bytes_max")


@pytest.mark.parametrize("kind", list(PacketType))
def test_fixed_header_flags(kind: PacketType) -> None:
    want = 0x02 if kind in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0
    for flags in range(16):
        if kind == PacketType.PUBLISH or flags == want:
            continue
        first = bytes([kind << 4 | flags])
        for side in (True, False):  # rejected from the first byte, whichever the direction
            d = MqttDecoder(server=side)
            d.feed(HELLO if side else WELCOME)
            rejects(d.feed, first)


def test_valid_flags_are_accepted() -> None:
    assert server(b"\x62\x02\x00\x01", b"\xe0\x00") == [Pubrel(1), Disconnect()]
    rejects(server, b"\x60\x02\x00\x01", match="MQTT-2.2.2-2")
    rejects(server, b"\x80" + encode(Subscribe(1, (("a", 0),)))[1:], match="MQTT-2.2.2-2")
    rejects(server, b"\xa0" + encode(Unsubscribe(1, ("a",)))[1:], match="MQTT-2.2.2-2")
    rejects(server, b"\x42\x02\x00\x01", match="MQTT-2.2.2-2")


def test_publish_qos3_and_qos0_dup() -> None:
    body = s("a") + u16(1)
    assert server(packet(0x3A, body)) == [Publish("a", b"", 1, dup=True, packet_id=1)]
    rejects(server, packet(0x36, body), match="QoS 3")
    rejects(server, packet(0x38, s("a")), match="DUP")


@pytest.mark.parametrize("first", [0x00, 0xF0])
def test_reserved_packet_types(first: int) -> None:
    rejects(server, bytes([first, 0]), match="reserved packet type")
    rejects(client, bytes([first, 0]), match="reserved packet type")


def test_each_side_accepts_only_its_direction() -> None:
    for p in (Connack(False, 0), Suback(1, (0,)), Unsuback(1), Pingresp()):
        rejects(server, encode(p), match="not sent to servers")
    for p in (Connect("x"), Subscribe(1, (("a", 0),)), Unsubscribe(1, ("a",)), Pingreq(), Disconnect()):
        rejects(client, encode(p), match="not sent to clients")


def test_connect_first_and_only_once() -> None:
    rejects(MqttDecoder().feed, encode(Pingreq()), match="MQTT-3.1.0-1")
    rejects(MqttDecoder().feed, encode(Publish("a", b"")), match="MQTT-3.1.0-1")  # not via the fast path
    rejects(server, HELLO, match="MQTT-3.1.0-2")
    rejects(MqttDecoder(server=False).feed, encode(Pingresp()), match="MQTT-3.2.0-1")
    rejects(client, WELCOME, match="second CONNACK")


@pytest.mark.parametrize("p,size", [(b"\x40\x03\x00\x01\x00", 3), (b"\xc0\x01\x00", 1), (b"\xe0\x01\x00", 1),
                                    (b"\x62\x01\x01", 1), (b"\x70\x00", 0)])
def test_fixed_length_packets(p: bytes, size: int) -> None:
    rejects(server, p, match=f"remaining length {size}")


def test_fixed_length_packets_client_side() -> None:
    rejects(client, b"\xd0\x01\x00", match="remaining length 1")
    rejects(client, b"\xb0\x03\x00\x01\x00", match="remaining length 3")
    rejects(MqttDecoder(server=False).feed, b"\x20\x03\x00\x00\x00", match="remaining length 3")


@pytest.mark.parametrize("raw", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"a\xe2\x82"])
def test_strings_must_be_well_formed_utf8(raw: bytes) -> None:
    rejects(server, packet(0x30, s(raw)), match="UTF-8")
    rejects(server, packet(0x82, u16(1) + s(raw) + b"\x00"), match="UTF-8")
    rejects(server, packet(0xA2, u16(1) + s(raw)), match="UTF-8")
    rejects(MqttDecoder().feed, connect_bytes(payload=s(raw)), match="UTF-8")
    rejects(MqttDecoder().feed, connect_bytes(0x82, s("c") + s(raw)), match="UTF-8")
    rejects(MqttDecoder().feed, connect_bytes(0x06, s("c") + s(raw) + s("")), match="UTF-8")


def test_strings_must_not_contain_nul() -> None:
    rejects(server, packet(0x30, s("a\x00b")), match="U\\+0000")
    rejects(server, packet(0x82, u16(1) + s("a\x00") + b"\x00"), match="U\\+0000")
    rejects(server, packet(0xA2, u16(1) + s("\x00")), match="U\\+0000")
    rejects(MqttDecoder().feed, connect_bytes(payload=s("c\x00")), match="U\\+0000")
    rejects(MqttDecoder().feed, connect_bytes(0x82, s("c") + s("u\x00")), match="U\\+0000")


def test_bom_is_kept() -> None:  # MQTT-1.5.3-3
    assert server(packet(0x30, s("\ufeffa/b"))) == [Publish("\ufeffa/b")]


def test_protocol_name_and_level() -> None:
    assert MqttDecoder().feed(connect_bytes()) == [Connect("c")]
    for name, level in ((b"MQTT", 5), (b"MQTT", 3), (b"MQIsdp", 4), (b"MQTT", 0x84)):
        err = rejects(MqttDecoder().feed, connect_bytes(name=name, level=level),
                      connack_code=REFUSED_PROTOCOL_VERSION, match="MQTT-3.1.2-2")
        assert err.connack_code == 1
    # a level we do not speak is refused before the rest is parsed (an MQTT 5 CONNECT has properties)
    mqtt5 = packet(0x10, s("MQTT") + bytes([5, 0x02]) + u16(60) + b"\x00" + s("c"))
    rejects(MqttDecoder().feed, mqtt5, connack_code=REFUSED_PROTOCOL_VERSION)
    rejects(MqttDecoder().feed, connect_bytes(name=b"MQTX"), match="MQTT-3.1.2-1")


def test_connect_flags() -> None:
    will = s("w/t") + s("m")
    assert MqttDecoder().feed(connect_bytes(0x2E, s("c") + will)) == [Connect("c", will=Will("w/t", b"m", 1, True))]
    rejects(MqttDecoder().feed, connect_bytes(0x03), match="MQTT-3.1.2-3")
    rejects(MqttDecoder().feed, connect_bytes(0x0A), match="MQTT-3.1.2-13")  # will QoS, no will flag
    rejects(MqttDecoder().feed, connect_bytes(0x22), match="MQTT-3.1.2-15")  # will retain, no will flag
    rejects(MqttDecoder().feed, connect_bytes(0x1E, s("c") + will), match="MQTT-3.1.2-14")  # will QoS 3
    assert MqttDecoder().feed(connect_bytes(0xC2, s("c") + s("u") + s("p"))) == [Connect("c", username="u",
                                                                                        password=b"p")]
    rejects(MqttDecoder().feed, connect_bytes(0x42, s("c") + s("p")), match="MQTT-3.1.2-22")


def test_will_topic_is_a_topic_name() -> None:
    rejects(MqttDecoder().feed, connect_bytes(0x06, s("c") + s("w/+") + s("m")), match="wildcard")
    rejects(MqttDecoder().feed, connect_bytes(0x06, s("c") + s("") + s("m")), match="MQTT-4.7.3-1")


def test_client_identifier() -> None:
    assert MqttDecoder().feed(connect_bytes(0x02, s(""))) == [Connect("")]
    rejects(MqttDecoder().feed, connect_bytes(0x00, s("")), connack_code=REFUSED_IDENTIFIER, match="MQTT-3.1.3-8")
    rejects(MqttDecoder().feed, connect_bytes(0x02, s(""), b"MQIsdp", 3), connack_code=REFUSED_IDENTIFIER)
    assert MqttDecoder().feed(connect_bytes(0x00, s("x" * 256))) == [Connect("x" * 256, False)]
    rejects(MqttDecoder().feed, connect_bytes(0x00, s("x" * 257)), connack_code=REFUSED_IDENTIFIER,
            match="client_id_bytes_max")
    limits = MqttLimits(client_id_bytes_max=23)
    assert MqttDecoder(limits).feed(connect_bytes(0x02, s("é" * 11))) == [Connect("é" * 11)]  # 22 bytes
    rejects(MqttDecoder(limits).feed, connect_bytes(0x02, s("é" * 12)), connack_code=REFUSED_IDENTIFIER)
    # a malformed CONNECT is closed without a CONNACK, even with a bad identifier
    rejects(MqttDecoder().feed, connect_bytes(0x00, s("") + b"\x00"), match="after its last field")


def test_connect_lengths() -> None:
    rejects(MqttDecoder().feed, connect_bytes(payload=s("c") + b"\x00"), match="after its last field")
    rejects(MqttDecoder().feed, connect_bytes(0x82, s("c")), match="truncated username")
    rejects(MqttDecoder().feed, packet(0x10, s("MQTT") + b"\x04\x02"), match="truncated CONNECT")
    rejects(MqttDecoder().feed, packet(0x10, b"\x00"), match="truncated")


def test_packet_identifier_zero() -> None:
    assert server(packet(0x32, s("a") + u16(1))) == [Publish("a", b"", 1, packet_id=1)]
    rejects(server, packet(0x32, s("a") + u16(0)), match="MQTT-2.3.1-1")
    rejects(server, packet(0x34, s("a") + u16(0)), match="MQTT-2.3.1-1")
    for first in (0x40, 0x50, 0x62, 0x70):
        rejects(server, bytes([first, 2, 0, 0]), match="MQTT-2.3.1-1")
    rejects(server, packet(0x82, u16(0) + s("a") + b"\x00"), match="MQTT-2.3.1-1")
    rejects(server, packet(0xA2, u16(0) + s("a")), match="MQTT-2.3.1-1")
    rejects(client, bytes([0x90, 3, 0, 0, 0]), match="MQTT-2.3.1-1")
    rejects(client, bytes([0xB0, 2, 0, 0]), match="MQTT-2.3.1-1")
    rejects(client, bytes([0x40, 2, 0, 0]), match="MQTT-2.3.1-1")


def test_publish_topic_name_rules() -> None:
    assert server(packet(0x30, s("a//b") + b"p"), packet(0x30, s("/"))) == [Publish("a//b", b"p"), Publish("/")]
    rejects(server, packet(0x30, s("")), match="MQTT-4.7.3-1")
    rejects(server, packet(0x30, s("a/+")), match="MQTT-3.3.2-2")
    rejects(server, packet(0x30, s("a/#")), match="MQTT-3.3.2-2")
    rejects(server, packet(0x30, s("a#b")), match="MQTT-3.3.2-2")
    rejects(server, packet(0x30, b"\x00\x05ab"), match="truncated")
    rejects(server, packet(0x32, s("ab") + b"\x00"), match="truncated")
    rejects(server, packet(0x30, b"\x00"), match="truncated")


def test_publish_topic_limits() -> None:
    limits = MqttLimits(topic_bytes_max=8, topic_levels_max=3)
    assert server(packet(0x30, s("abcd/e/f")), limits=limits) == [Publish("abcd/e/f")]
    rejects(server, packet(0x30, s("abcde/fg/")), limits=limits, match="topic_bytes_max")
    rejects(server, packet(0x30, s("a/b/c/d")), limits=limits, match="topic_levels_max")


def test_subscribe_rules() -> None:
    assert server(packet(0x82, u16(1) + s("a/+/#") + b"\x02")) == [Subscribe(1, (("a/+/#", 2),))]
    rejects(server, packet(0x82, u16(1)), match="MQTT-3.8.3-3")
    for q in (3, 0x04, 0x80, 0x81, 0xFF):
        rejects(server, packet(0x82, u16(1) + s("a") + bytes([q])), match="MQTT-3-8.3-4")
    rejects(server, packet(0x82, u16(1) + s("a")), match="no requested QoS")
    rejects(server, packet(0x82, b"\x00"), match="truncated")
    for bad in ("a/#/b", "a#", "#a", "a/b#", "a/+b", "+a/b", "", "a/++"):
        rejects(server, packet(0x82, u16(1) + s(bad) + b"\x00"), match="MQTT-4.7")
        rejects(server, packet(0xA2, u16(1) + s(bad)), match="MQTT-4.7")


def test_unsubscribe_rules() -> None:
    assert server(packet(0xA2, u16(2) + s("#") + s("+/x"))) == [Unsubscribe(2, ("#", "+/x"))]
    rejects(server, packet(0xA2, u16(1)), match="MQTT-3.10.3-2")
    rejects(server, packet(0xA2, u16(1) + b"\x00\x09a"), match="truncated")


def test_filters_per_packet_limit() -> None:
    limits = MqttLimits(subscribe_filters_max=3)
    three, four = b"".join(s(f"t{i}") + b"\x01" for i in range(3)), b"".join(s(f"t{i}") + b"\x01" for i in range(4))
    assert len(server(packet(0x82, u16(1) + three), limits=limits)[0].topics) == 3
    rejects(server, packet(0x82, u16(1) + four), limits=limits, match="subscribe_filters_max")
    rejects(server, packet(0xA2, u16(1) + b"".join(s(f"t{i}") for i in range(4))), limits=limits,
            match="subscribe_filters_max")


def test_filter_length_and_levels_limits() -> None:
    limits = MqttLimits(topic_bytes_max=8, topic_levels_max=3)
    assert server(packet(0x82, u16(1) + s("+/+/#") + b"\x00"), limits=limits)
    rejects(server, packet(0x82, u16(1) + s("+/+/+/#") + b"\x00"), limits=limits, match="topic_levels_max")
    rejects(server, packet(0xA2, u16(1) + s("abcdefghi")), limits=limits, match="topic_bytes_max")


def test_client_side_rules() -> None:
    rejects(MqttDecoder(server=False).feed, b"\x20\x02\x02\x00", match="acknowledge flags")
    rejects(MqttDecoder(server=False).feed, b"\x20\x02\x00\x06", match="return code 6")
    rejects(MqttDecoder(server=False).feed, b"\x20\x02\x01\x05", match="MQTT-3.2.2-4")
    assert MqttDecoder(server=False).feed(b"\x20\x02\x00\x05") == [Connack(False, 5)]
    rejects(client, bytes([0x90, 5, 0, 1, 0, 3, 1]), match="MQTT-3.9.3-2")
    rejects(client, bytes([0x90, 5, 0, 1, 0, 0x81, 1]), match="MQTT-3.9.3-2")
    rejects(client, bytes([0x90, 2, 0, 1]), match="without return codes")


def test_decoder_refuses_input_after_an_error_and_keeps_earlier_packets() -> None:
    d = MqttDecoder()
    with pytest.raises(MqttProtocolError) as info:
        d.feed(HELLO + encode(Pingreq()) + b"\x30\x02\x00\x00")
    assert info.value.packets == [Connect("c"), Pingreq()] and d.failed is info.value
    with pytest.raises(MqttProtocolError, match="empty topic name"):
        d.feed(encode(Pingreq()))
    with pytest.raises(TypeError):
        MqttDecoder().feed("text")  # type: ignore[arg-type]


# -- encoding errors and limits ------------------------------------------------------


@pytest.mark.parametrize("p", [
    Publish("a", qos=1), Publish("a", packet_id=1), Publish("a", dup=True), Publish("a", qos=3, packet_id=1),
    Publish("a", qos=1, packet_id=0), Publish("a", qos=1, packet_id=65536), Publish("a\x00"),
    Publish("x" * 65536), Publish("\ud800"), Publish("a", payload="text"),  # type: ignore[arg-type]
    Publish("a", qos=True, packet_id=1),  # type: ignore[arg-type]
    Connect("c", password=b"p"), Connect("c", protocol_level=5), Connect("c", keep_alive_s=65536),
    Connect("c", will=Will("w", b"", 3)), Connack(True, 1), Connack(False, 6), Subscribe(1, ()),
    Subscribe(1, (("a", 3),)), Suback(1, (3,)), Suback(1, ()), Unsubscribe(1, ()), Puback(0), Unsuback(70000),
    "not a packet",
])
def test_encode_rejects_what_a_peer_would_refuse(p) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode(p)


def test_encode_rejects_oversized_bodies() -> None:
    with pytest.raises(ValueError, match="remaining-length"):
        mqtt._varint(REMAINING_LENGTH_MAX + 1)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="client_id_bytes_max"):
        MqttLimits(client_id_bytes_max=22)  # the spec requires 1..23 to be accepted (MQTT-3.1.3-5)
    with pytest.raises(ValueError, match="packet_bytes_max"):
        MqttLimits(packet_bytes_max=1)
    with pytest.raises(TypeError):
        MqttDecoder(limits=None)  # type: ignore[arg-type]


# -- topics ----------------------------------------------------------------------


def test_validate_topic_name() -> None:
    for ok in ("a", "/", "a//b", "$SYS/x", "é/ü", " "):
        validate_topic_name(ok)
    for bad in ("", "a/+", "#", "a\x00", "\ud800", 5):
        rejects(validate_topic_name, bad)
    rejects(validate_topic_name, "x" * 1025, match="topic_bytes_max")
    rejects(validate_topic_name, "é" * 513, match="topic_bytes_max")
    validate_topic_name("é" * 512)
    rejects(validate_topic_name, "/".join("a" * 33), match="topic_levels_max")
    validate_topic_name("/".join("a" * 32))


def test_validate_topic_filter() -> None:
    for ok in ("#", "+", "a/#", "+/+", "/+", "a//#", "$share/g/a/+", "+/#", "a/+/b"):
        validate_topic_filter(ok)
    for bad in ("", "a/#/b", "##", "a#", "#/", "+a", "a/b+", "a\x00"):
        rejects(validate_topic_filter, bad, match="MQTT-4.7")
    rejects(validate_topic_filter, "/".join("+" * 33), match="topic_levels_max")


def test_parse_shared() -> None:
    assert parse_shared("$share/g/a/+") == ("g", "a/+")
    assert parse_shared("$share/g/#") == ("g", "#")
    assert parse_shared("$share/g//") == ("g", "/")
    assert parse_shared("a/#") == (None, "a/#")
    assert parse_shared("$shared/x") == (None, "$shared/x")
    assert parse_shared("$SYS/#") == (None, "$SYS/#")
    for bad in ("$share", "$share/", "$share//a", "$share/g", "$share/g/", "$share/+/a", "$share/g#/a"):
        rejects(parse_shared, bad)
