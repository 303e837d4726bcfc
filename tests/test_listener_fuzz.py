"""Bad bytes on every listener of a real node -- the binary client port,
MQTT and HTTP, in plaintext and inside TLS -- random and mutated from
valid traffic (hypothesis).  Whatever arrives, the node stays up and then
serves a well-behaved client on every port.  The number of examples is
bounded so that each test takes seconds."""
from __future__ import annotations

import socket
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.frames import (
    FetchRequest,
    Handshake,
    Heartbeat,
    Level,
    MetadataRequest,
    ProduceRequest,
    SubscribeRequest,
    encode_frame,
)
from protocol.mqtt import Connect, Disconnect, Pingreq, Publish, Subscribe, encode
from protocol.records import Record, encode_batch
from runtime.realcluster import RealCluster
from test_realnode import TOPIC, _read_frames

pytestmark = pytest.mark.realnet

EXAMPLES = 40
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID_BINARY = b"".join(encode_frame(m, i) for i, m in enumerate([
    Handshake(client_id="fuzz"),
    MetadataRequest(topics=(TOPIC,)),
    ProduceRequest(topic=TOPIC, shard=0, level=Level.ONE,
                   batch=encode_batch([Record(key=b"k", payload=b"fuzzed value")], compress=False)),
    FetchRequest(topic=TOPIC, shard=0, offset=0),
    SubscribeRequest(topic=TOPIC, subscription="fuzz", consumer_id="fuzz-1"),
    Heartbeat(),
], 1))
VALID_MQTT = b"".join(encode(p) for p in [
    Connect(client_id="fuzz", clean_session=True, keep_alive_s=30),
    Subscribe(1, (("fuzz/#", 1),)),
    Publish("fuzz/a", b"payload", qos=1, packet_id=2),
    Publish("fuzz/b", b"retained?", qos=0, retain=False),
    Pingreq(),
    Disconnect(),
])
_HTTP_BODY = b'{"records": [{"value": "from fuzz"}]}'
VALID_HTTP = (b"POST /api/v1/produce/" + TOPIC.encode() + b" HTTP/1.1\r\nHost: n1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(_HTTP_BODY) + _HTTP_BODY +
              b"GET /api/v1/status HTTP/1.1\r\nHost: n1\r\n\r\n")


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """``valid`` with a few bytes flipped, cut, inserted or repeated."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
        else:
            del data[pos:]
    return bytes(data)


def garbage(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(min_size=1, max_size=2048), mutated(valid))


def _open(c: RealCluster, port: int, tls: bool) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        ctx = ssl.create_default_context(cafile=c.trust_file("n1"))
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    return s


def _throw(c: RealCluster, port: int, data: bytes, tls: bool) -> None:
    """Send ``data`` and read what comes back for a moment; the node may
    answer, close, or wait for more -- anything but falling over."""
    with _open(c, port, tls) as s:
        try:
            s.sendall(data)
            s.settimeout(0.1)
            while s.recv(65536):
                pass
        except (OSError, ssl.SSLError):
            pass


def _serves(c: RealCluster, tls: bool) -> None:
    """A well-behaved client on every port."""
    cfg = c.cfgs["n1"]
    assert all(p.poll() is None for p in c.procs.values())
    with _open(c, cfg.client_port, tls) as s:
        s.sendall(encode_frame(c.hello("after"), 1) + encode_frame(MetadataRequest(topics=(TOPIC,)), 2))
        frames, _ = _read_frames(s, 2)
    assert [type(f.message).__name__ for f in frames] == ["HandshakeOk", "MetadataResponse"]
    with _open(c, cfg.mqtt_port, tls) as s:
        s.sendall(encode(c.mqtt_connect("after", clean_session=True, keep_alive_s=30)))
        assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    assert c.get("n1", "/status")["node_id"] == "n1"


def _node(tmp_path_factory, name: str, **overrides) -> RealCluster:
    c = RealCluster(tmp_path_factory.mktemp(name), n=1, **overrides)
    c.start()
    c.create_topic("n1", TOPIC, shards=2)
    return c


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    c = _node(tmp_path_factory, "fuzz-plain")
    try:
        yield c
    finally:
        assert c.stop_all() == []


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    c = _node(tmp_path_factory, "fuzz-tls", tls_self_signed=True)
    try:
        yield c
    finally:
        assert c.stop_all() == []


LISTENERS = {"client": ("client_port", VALID_BINARY), "mqtt": ("mqtt_port", VALID_MQTT),
             "http": ("http_port", VALID_HTTP)}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("listener", sorted(LISTENERS))
def test_bad_bytes_on_every_listener(plain, secure, listener: str, tls: bool) -> None:
    c = secure if tls else plain
    port_name, valid = LISTENERS[listener]
    port = getattr(c.cfgs["n1"], port_name)

    @FUZZ
    @given(data=garbage(valid))
    def run(data: bytes) -> None:
        _throw(c, port, data, tls)

    run()
    _serves(c, tls)


def _client_hello() -> bytes:
    """The first flight of a TLS client: a ClientHello record."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_bad_handshakes_on_every_tls_port(secure) -> None:
    """Random bytes and mangled ClientHellos before any TLS is set up."""
    cfg = secure.cfgs["n1"]
    ports = [cfg.client_port, cfg.mqtt_port, cfg.http_port]

    @FUZZ
    @given(data=garbage(_client_hello()), port=st.sampled_from(ports))
    def run(data: bytes, port: int) -> None:
        _throw(secure, port, data, tls=False)

    run()
    _serves(secure, tls=True)
