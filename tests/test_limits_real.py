"""Every listener's limits, exceeded against a real node with small limits:
each gives a clear error (or pauses the connection) and the node keeps
serving the other clients."""
from __future__ import annotations

import json
import socket
import struct
import urllib.error
import urllib.request

import pytest

from protocol.frames import (
    ErrorCode,
    ErrorResponse,
    FetchRequest,
    FetchResponse,
    HandshakeOk,
    Heartbeat,
    HeartbeatResponse,
    MetadataRequest,
    MetadataResponse,
    encode_frame,
)
from protocol.mqtt import Connack, MqttDecoder, Pingreq, Puback, Publish, Subscribe, encode
from runtime.realcluster import RealCluster
from test_realnode import TOPIC, _closed, _connect, _healthy, _read_frames, _wait_for

pytestmark = pytest.mark.realnet

LIMITS = dict(client_connections_max=4, client_frame_bytes_max=4096, client_inflight_bytes_max=4096,
              mqtt_connections_max=3, mqtt_packet_bytes_max=1024, mqtt_inflight_bytes_max=1024,
              http_connections_max=4, http_body_bytes_max=2048)
# a topic with a long name, so that a handful of fetches for it fill client_inflight_bytes_max
LONG_TOPIC = "/".join(c * 40 for c in "abcd")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = RealCluster(tmp_path_factory.mktemp("limits"), n=1, **LIMITS)
    try:
        c.start()
        c.create_topic("n1", TOPIC, shards=2)
        c.create_topic("n1", LONG_TOPIC, shards=1)
        yield c
    finally:
        assert c.stop_all() == []


def _handshaken(c: RealCluster) -> tuple[socket.socket, list]:
    s = _connect(c)
    s.sendall(encode_frame(c.hello("limits"), 1))
    frames, _ = _read_frames(s, 1)
    return s, frames


# ------------------------------------------------------------ client port
def test_client_connections_beyond_the_limit_get_overloaded(node: RealCluster) -> None:
    held = []
    try:
        refused = None
        for _ in range(LIMITS["client_connections_max"] + 2):
            s, frames = _handshaken(node)
            held.append(s)
            if isinstance(frames[0].message, ErrorResponse):
                refused = frames[0].message
                assert _closed(s)
                break
            assert isinstance(frames[0].message, HandshakeOk)
        assert refused is not None and refused.code == ErrorCode.OVERLOADED
        assert "client_connections_max" in refused.message and "too many connections" in refused.message
        assert len(held) <= LIMITS["client_connections_max"] + 1
        # the connections that got in are still served
        held[0].sendall(encode_frame(MetadataRequest(topics=(TOPIC,)), 2))
        frames, _ = _read_frames(held[0], 1)
        assert isinstance(frames[0].message, MetadataResponse)
    finally:
        for s in held:
            s.close()

    def served() -> bool:  # the slots are free again once the node has seen the closes
        s, frames = _handshaken(node)
        s.close()
        return isinstance(frames[0].message, HandshakeOk)

    _wait_for("a new connection is served", served)
    _healthy(node)


def test_frames_over_the_configured_frame_size_are_refused(node: RealCluster) -> None:
    s, frames = _handshaken(node)
    with s:
        assert frames[0].message.limits.frame_bytes_max == 4096  # announced to clients
        s.sendall(b"\xc4\x05\x01\x05\x00" + struct.pack(">II", 9, 4097 - 13))  # a 4097-byte MetadataRequest
        frames, _ = _read_frames(s, 1)
        assert frames[0].message.code == ErrorCode.FRAME_TOO_LARGE
        assert "frame_bytes_max=4096" in frames[0].message.message
        assert _closed(s)
    _healthy(node)


def test_a_connection_over_its_in_flight_bytes_pauses_until_answers_go_out(node: RealCluster) -> None:
    """Thirty long-poll fetches of ~200 bytes each and a heartbeat, sent at
    once: the node serves fetches until 4096 bytes are in flight and reads
    nothing more (so the heartbeat waits) until records arrive and the
    fetches are answered; then it serves the rest."""
    hw = node.get("n1", f"/fetch/{LONG_TOPIC}?shard=0")["high_watermark"]
    fetch = FetchRequest(topic=LONG_TOPIC, shard=0, offset=hw, max_wait_ms=25_000)
    size = len(encode_frame(fetch, 0))
    served_before_pause = -(-LIMITS["client_inflight_bytes_max"] // size)  # the one reaching the bound is served
    assert served_before_pause < 30
    s, _ = _handshaken(node)
    with s:
        s.sendall(b"".join(encode_frame(fetch, 100 + i) for i in range(30)) + encode_frame(Heartbeat(), 7))
        frames, closed = _read_frames(s, 1, timeout_s=1.5)
        assert frames == [] and not closed  # the fetches wait for records; the heartbeat is not read
        other, _ = _handshaken(node)  # meanwhile another client is served
        with other:
            other.sendall(encode_frame(Heartbeat(), 1))
            assert isinstance(_read_frames(other, 1)[0][0].message, HeartbeatResponse)
        status, body = node.call("n1", "POST", f"/produce/{LONG_TOPIC}", {"records": [{"value": "wake"}]})
        assert status == 200, body
        frames, _ = _read_frames(s, 31, timeout_s=30)
    kinds = [type(f.message) for f in frames]
    assert sorted(kinds, key=lambda k: k is HeartbeatResponse) == [FetchResponse] * 30 + [HeartbeatResponse]
    assert kinds.index(HeartbeatResponse) >= 1  # read only once an answer had made room
    fetched = [f for f in frames if isinstance(f.message, FetchResponse)]
    assert sorted(f.correlation_id for f in fetched) == list(range(100, 130))
    # the fetches read before the pause waited for the record; those after it found it at once
    assert all(f.message.batches for f in fetched)


# ------------------------------------------------------------------ MQTT
def _mqtt(c: RealCluster, cid: str, *, subscribe: str | None = None) -> tuple[socket.socket, MqttDecoder, list]:
    s = socket.create_connection(c.mqtt("n1"), timeout=10)
    s.sendall(encode(c.mqtt_connect(cid, clean_session=True, keep_alive_s=60)))
    dec = MqttDecoder(server=False)
    got = _mqtt_read(s, dec, 1)
    if subscribe and got and isinstance(got[0], Connack) and got[0].return_code == 0:
        s.sendall(encode(Subscribe(1, ((subscribe, 0),))))
        got += _mqtt_read(s, dec, 1)
    return s, dec, got


def _mqtt_read(s: socket.socket, dec: MqttDecoder, want: int, timeout_s: float = 10) -> list:
    out: list = []
    s.settimeout(timeout_s)
    while len(out) < want:
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        out.extend(dec.feed(data))
    return out


def test_mqtt_connections_beyond_the_limit_get_connack_3(node: RealCluster) -> None:
    held = []
    try:
        refused = None
        for i in range(LIMITS["mqtt_connections_max"] + 2):
            s, _dec, got = _mqtt(node, f"many-{i}")
            held.append(s)
            assert got and isinstance(got[0], Connack)
            if got[0].return_code != 0:
                refused = got[0]
                assert _closed(s)
                break
        assert refused is not None and refused.return_code == 3  # server unavailable
        assert len(held) <= LIMITS["mqtt_connections_max"] + 1
    finally:
        for s in held:
            s.close()
    _wait_for("a new MQTT connection is accepted",
                lambda: (lambda r: r[0].close() or r[2][0].return_code == 0)(_mqtt(node, "after")))


def test_mqtt_packets_over_the_configured_size_close_the_connection(node: RealCluster) -> None:
    big, dec, got = _mqtt(node, "big")
    sub, sdec, sgot = _mqtt(node, "watcher", subscribe="size/#")
    try:
        assert got[0].return_code == 0 and sgot[0].return_code == 0
        big.sendall(encode(Publish("size/x", b"x" * 1100, qos=1, packet_id=1)))
        assert _mqtt_read(big, dec, 1) == []  # no PUBACK: closed
        assert _closed(big)
        pub, pdec, pgot = _mqtt(node, "small")
        with pub:
            pub.sendall(encode(Publish("size/x", b"fits", qos=1, packet_id=1)))
            assert _mqtt_read(pub, pdec, 1) == [Puback(1)]
        assert [p.payload for p in _mqtt_read(sub, sdec, 1)] == [b"fits"]
    finally:
        big.close()
        sub.close()


def test_mqtt_pipelined_qos1_publishes_all_acknowledged_through_the_in_flight_bound(node: RealCluster) -> None:
    """Reading pauses at mqtt_inflight_bytes_max and resumes as PUBACKs go out."""
    pub, dec, got = _mqtt(node, "pipeliner")
    with pub:
        assert got[0].return_code == 0
        pub.sendall(b"".join(encode(Publish("flow/x", b"p" * 300, qos=1, packet_id=i)) for i in range(1, 31)))
        acks = _mqtt_read(pub, dec, 30, timeout_s=30)
    assert acks == [Puback(i) for i in range(1, 31)]


def test_mqtt_unacknowledged_publishes_stop_the_reading_at_the_bound(node: RealCluster) -> None:
    """A bridge into a topic that was deleted never acknowledges its
    publishes (the append fails): the node reads that publisher's packets
    only until its unacknowledged bytes reach mqtt_inflight_bytes_max."""
    node.create_topic("n1", "acme/iot/gone/readings", shards=1)
    status, body = node.call("n1", "PUT", "/mqtt/bridges/gone",
                             {"direction": "in", "filter": "gone/#", "topic": "acme/iot/gone/readings"})
    assert status in (200, 201), body
    assert node.call("n1", "DELETE", "/topics/acme/iot/gone/readings")[0] == 200
    sub, sdec, sgot = _mqtt(node, "gone-watcher", subscribe="gone/#")
    pub, dec, got = _mqtt(node, "gone-publisher")
    try:
        assert sgot[0].return_code == 0 and got[0].return_code == 0
        size = len("gone/x") + 300 + 8  # as the listener counts a PUBLISH
        read = -(-LIMITS["mqtt_inflight_bytes_max"] // size)
        assert read < 10
        pub.sendall(b"".join(encode(Publish("gone/x", bytes([i]) * 300, qos=1, packet_id=i)) for i in range(1, 11))
                    + encode(Pingreq()))
        delivered = _mqtt_read(sub, sdec, read, timeout_s=20)
        delivered += _mqtt_read(sub, sdec, 1, timeout_s=1.5)  # and no more
        assert [p.payload[0] for p in delivered] == list(range(1, read + 1))
        assert _mqtt_read(pub, dec, 1, timeout_s=0.5) == []  # no PUBACK, no PINGRESP: not read
        # the node serves everyone else
        other, odec, ogot = _mqtt(node, "unaffected")
        with other:
            other.sendall(encode(Publish("gone-not/x", b"ok", qos=1, packet_id=9)))
            assert _mqtt_read(other, odec, 1) == [Puback(9)]
    finally:
        pub.close()
        sub.close()
        node.call("n1", "DELETE", "/mqtt/bridges/gone")


# ------------------------------------------------------------------ HTTP
def test_http_connections_beyond_the_limit_get_503_json(node: RealCluster) -> None:
    port = node.cfgs["n1"].http_port
    held = []
    answer = b""
    try:
        for _ in range(LIMITS["http_connections_max"] + 3):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: n1\r\n\r\n")  # keep-alive: the connection stays
            answer = _http_answer(s)
            if answer.startswith(b"HTTP/1.1 503"):
                break
            assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"application/json" in head
        err = json.loads(body)["error"]
        assert err["code"] == "unavailable" and "http_connections_max" in err["message"]
        assert len(held) <= LIMITS["http_connections_max"] + 1
    finally:
        for s in held:
            s.close()
    _wait_for("a new HTTP request is served", lambda: isinstance(node.get("n1", "/status"), dict) and
                node.get("n1", "/status").get("node_id") == "n1")


def _http_answer(s: socket.socket) -> bytes:
    """One HTTP response (head and Content-Length body) read from ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_http_bodies_over_the_limit_get_413_json(node: RealCluster) -> None:
    req = urllib.request.Request(node.url("n1", f"/produce/{TOPIC}"), method="POST",
                                 data=json.dumps({"records": [{"value": "x" * 3000}]}).encode(),
                                 headers={"Content-Type": "application/json", **node.auth_headers()})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=20)
    assert info.value.code == 413
    assert json.loads(info.value.read())["error"]["code"] == "payload_too_large"
    status, body = node.call("n1", "POST", f"/produce/{TOPIC}", {"records": [{"value": "small"}]})
    assert status == 200, body
