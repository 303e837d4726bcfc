"""MQTT with real clients against real node processes: paho-mqtt and the
mosquitto command-line clients, on one node and on a three-node cluster."""
from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import time

import pytest

from protocol.mqtt import Connack, Connect, MqttDecoder, encode
from runtime.realcluster import RealCluster

mqtt = pytest.importorskip("paho.mqtt.client")

pytestmark = pytest.mark.realnet

WAIT_S = 15.0
LOGINS: dict[int, tuple[str, str]] = {}  # MQTT port -> the admin's (user, password) of its cluster


def _logins(c: RealCluster) -> RealCluster:
    """Remember the cluster's admin login for every node's MQTT port (nodes require a user)."""
    for nid in c.cfgs:
        LOGINS[c.mqtt(nid)[1]] = ("admin", c.password or "")
    return c


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    c = RealCluster(tmp_path_factory.mktemp("mqtt1"), n=1)
    try:
        c.start()
        yield _logins(c)
    finally:
        assert c.stop_all() == []


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    c = RealCluster(tmp_path_factory.mktemp("mqtt3"), n=3)
    try:
        c.start()
        c.wait_all_alive()
        yield _logins(c)
    finally:
        assert c.stop_all() == []


class Client:
    """A paho client that queues what it receives."""

    def __init__(self, addr: tuple[str, int], cid: str, clean: bool = True, will: tuple | None = None,
                 keepalive: int = 30) -> None:
        self.msgs: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        self.c.on_message = lambda _c, _u, m: self.msgs.put((m.topic, m.payload, m.qos, m.retain))
        self.c.on_connect = lambda _c, _u, flags, rc, _p: self.connacks.put((flags.session_present, rc.value))
        self.c.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.put(rc)
        if will:
            self.c.will_set(*will)
        if addr[1] in LOGINS:
            self.c.username_pw_set(*LOGINS[addr[1]])
        deadline = time.monotonic() + WAIT_S
        while True:
            self.c.connect(*addr, keepalive=keepalive)
            self.c.loop_start()
            self.session_present, rc = self.connacks.get(timeout=WAIT_S)
            # 3, "server unavailable": the node cannot settle the session yet (its agency
            # peer is still catching up after a restart); a client tries again, so do we
            if rc != 3 or time.monotonic() > deadline:
                break
            self.c.loop_stop()
            time.sleep(0.5)
        assert rc == 0

    def sub(self, *filters: tuple[str, int]) -> None:
        done: queue.Queue = queue.Queue()
        self.c.on_subscribe = lambda _c, _u, mid, codes, _p: done.put([c.value for c in codes])
        self.c.subscribe(list(filters))
        assert done.get(timeout=WAIT_S) == [q for _, q in filters]

    def pub(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos, retain)
        if qos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()

    def get(self, n: int = 1, timeout_s: float = WAIT_S) -> list[tuple]:
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            out.append(self.msgs.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def nothing(self, within_s: float = 0.5) -> bool:
        try:
            self.msgs.get(timeout=within_s)
            return False
        except queue.Empty:
            return True

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self) -> None:
        """An abrupt end: the socket closes without a DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().close()


def _wait_route(c: RealCluster, at: str, of: str, flt: str) -> None:
    """Until node ``at`` knows node ``of``'s route for ``flt`` (routes
    reach the other nodes through the agency, a moment after SUBACK)."""
    _eventually(f"{at} to learn {of}'s route {flt}",
                lambda: flt in c.get(at, "/mqtt")["route_sample"].get(of, ()))


def _eventually(what: str, check, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------- one node
def test_wildcards_and_qos_0_1_2(one: RealCluster) -> None:
    host, port = one.mqtt("n1")
    assert one.get("n1", "/status")["endpoints"]["mqtt"] == f"{host}:{port}"
    s = Client(one.mqtt("n1"), "wild-sub")
    s.sub(("home/+/temp", 2), ("home/#", 0))
    p = Client(one.mqtt("n1"), "wild-pub")
    for qos in (0, 1, 2):
        p.pub("home/kitchen/temp", b"q%d" % qos, qos)
    got = s.get(3)
    # once per message, at the highest QoS of the matching subscriptions
    assert [(t, m, q) for t, m, q, _ in got] == [("home/kitchen/temp", b"q0", 0), ("home/kitchen/temp", b"q1", 1),
                                                  ("home/kitchen/temp", b"q2", 2)]
    p.pub("home/door", b"open", 1)
    assert s.get(1)[0][:3] == ("home/door", b"open", 0)
    p.pub("garden/temp", b"x", 1)
    assert s.nothing()
    s.close()
    p.close()


def test_retained_delivered_on_subscribe_and_cleared_by_an_empty_payload(one: RealCluster) -> None:
    p = Client(one.mqtt("n1"), "ret-pub")
    p.pub("status/pump", b"running", 1, retain=True)
    s = Client(one.mqtt("n1"), "ret-sub")
    s.sub(("status/#", 1))
    assert s.get(1)[0] == ("status/pump", b"running", 1, True)
    p.pub("status/pump", b"stopped", 1, retain=True)
    assert s.get(1)[0] == ("status/pump", b"stopped", 1, False)  # live delivery: retain flag 0
    p.pub("status/pump", b"", 1, retain=True)
    s.get(1)
    s2 = Client(one.mqtt("n1"), "ret-sub2")
    s2.sub(("status/#", 1))
    assert s2.nothing(1.0)
    for c in (p, s, s2):
        c.close()


def test_will_on_abrupt_close_not_on_disconnect(one: RealCluster) -> None:
    s = Client(one.mqtt("n1"), "will-sub")
    s.sub(("wills/#", 1))
    a = Client(one.mqtt("n1"), "will-a", will=("wills/a", b"a is gone", 1, False))
    a.drop()
    assert s.get(1)[0][:2] == ("wills/a", b"a is gone")
    b = Client(one.mqtt("n1"), "will-b", will=("wills/b", b"b is gone", 1, False))
    b.close()
    assert s.nothing(1.0)
    s.close()


def test_will_after_keepalive_timeout(one: RealCluster) -> None:
    s = Client(one.mqtt("n1"), "ka-sub")
    s.sub(("ka/#", 0))
    raw = socket.create_connection(one.mqtt("n1"), timeout=10)
    raw.sendall(encode(Connect("ka-raw", True, 1, will=__import__("protocol.mqtt", fromlist=["Will"]).Will(
        "ka/raw", b"silent"), username="admin", password=(one.password or "").encode())))
    t0 = time.monotonic()
    assert s.get(1, timeout_s=10)[0][:2] == ("ka/raw", b"silent")
    assert time.monotonic() - t0 >= 1.0  # 1.5 x the keep-alive of 1 s, not at once
    raw.close()
    s.close()


def test_persistent_session_keeps_subscriptions_and_queues_qos1(one: RealCluster) -> None:
    s = Client(one.mqtt("n1"), "persist", clean=False)
    s.sub(("jobs/#", 1))
    s.close()
    p = Client(one.mqtt("n1"), "persist-pub")
    for i in range(20):
        p.pub("jobs/build", b"%d" % i, 1)
    p.pub("jobs/build", b"qos0", 0)  # not queued for an offline session
    # a QoS 0 PUBLISH is not acknowledged: the PUBACK of a QoS 1 one sent
    # after it on the same connection says the broker handled it while the
    # session was still offline (else it may meet the reconnected session)
    p.pub("elsewhere/marker", b"m", 1)
    s = Client(one.mqtt("n1"), "persist", clean=False)
    assert s.session_present
    assert [m for _, m, _, _ in s.get(20)] == [b"%d" % i for i in range(20)]
    assert s.nothing()
    s.close()
    Client(one.mqtt("n1"), "persist", clean=True).close()  # and a clean session ends it
    p.close()


def test_second_connect_with_the_same_client_id_takes_over(one: RealCluster) -> None:
    first = Client(one.mqtt("n1"), "twin")
    second = Client(one.mqtt("n1"), "twin")
    first.disconnects.get(timeout=WAIT_S)
    second.sub(("twin/t", 0))
    second.pub("twin/t", b"me", 0)
    assert second.get(1)[0][:2] == ("twin/t", b"me")
    second.close()


def _raw_answer(addr: tuple[str, int], data: bytes) -> tuple[list, bool]:
    with socket.create_connection(addr, timeout=10) as raw:
        raw.sendall(data)
        dec = MqttDecoder(server=False)
        packets: list = []
        try:
            while True:
                chunk = raw.recv(4096)
                if not chunk:
                    return packets, True
                packets += dec.feed(chunk)
        except socket.timeout:
            return packets, False


def test_bad_packets_close_the_connection_and_the_node_keeps_serving(one: RealCluster) -> None:
    addr = one.mqtt("n1")
    assert _raw_answer(addr, b"\x00\x00garbage") == ([], True)  # not a CONNECT
    level5 = bytearray(encode(Connect("lvl")))
    level5[8] = 5  # protocol level 5 is not 3.1.1
    assert _raw_answer(addr, bytes(level5)) == ([Connack(False, 1)], True)
    assert _raw_answer(addr, b"\x10\xff\xff\xff\xff\x7f") == ([], True)  # malformed remaining length
    with socket.create_connection(addr, timeout=10) as raw:
        raw.sendall(encode(Connect("ok-then-bad", username="admin", password=(one.password or "").encode())))
        dec = MqttDecoder(server=False)
        assert dec.feed(raw.recv(4096)) == [Connack(False, 0)]
        raw.sendall(b"\x30\x05\x00\x03a/#x")  # a wildcard in a topic name
        assert raw.recv(4096) == b""  # closed
    c = Client(addr, "still-served")
    c.sub(("x", 0))
    c.close()


def test_bridge_in_stores_mqtt_publishes_in_a_topic_before_the_puback(one: RealCluster) -> None:
    topic = "acme/iot/sensors/readings"
    one.create_topic("n1", topic, shards=2)
    spec = {"direction": "in", "filter": "sensors/#", "topic": topic, "level": "quorum"}
    assert one.call("n1", "PUT", "/mqtt/bridges/sensors", spec) == (200, {"name": "sensors", **spec})
    bad = [({**spec, "topic": "acme/iot/sensors/nope"}, 404), ({**spec, "filter": "a/#/b"}, 400),
           ({**spec, "direction": "sideways"}, 400), ({**spec, "level": "some"}, 400),
           ({**spec, "filter": "$share/g/x"}, 400), ({**spec, "colour": "red"}, 400)]
    for body, status in bad:
        code, doc = one.call("n1", "PUT", "/mqtt/bridges/other", body)
        assert code == status and doc["error"]["message"], (body, code, doc)
    _eventually("the node to load the bridge", lambda: one.get("n1", "/mqtt")["bridges"].get("sensors"))
    p = Client(one.mqtt("n1"), "bridge-pub")
    for i in range(20):
        p.pub("sensors/a/temp", b"a%d" % i, 1)  # the PUBACK means: stored at quorum
    for i in range(5):
        p.pub("sensors/b/temp", b"b%d" % i, 2)
    p.pub("other/x", b"not bridged", 1)
    p.close()
    stored: dict[str, list[str]] = {}
    for shard in (0, 1):
        for r in one.get("n1", f"/fetch/{topic}?shard={shard}")["records"]:
            stored.setdefault(r["key"], []).append(r["value"])
    assert stored == {"sensors/a/temp": [f"a{i}" for i in range(20)], "sensors/b/temp": [f"b{i}" for i in range(5)]}
    assert one.get("n1", "/mqtt")["appended"] == 25
    assert one.call("n1", "DELETE", "/mqtt/bridges/sensors")[0] == 200
    assert one.call("n1", "DELETE", "/mqtt/bridges/sensors")[0] == 404


def test_bridge_out_publishes_a_topic_over_mqtt(one: RealCluster) -> None:
    topic = "acme/shop/web/orders"
    one.create_topic("n1", topic, shards=1)
    s = Client(one.mqtt("n1"), "orders-sub")
    s.sub(("chorus/orders/#", 1))
    spec = {"direction": "out", "topic": topic, "prefix": "chorus/orders"}
    assert one.call("n1", "PUT", "/mqtt/bridges/orders", spec)[0] == 200
    _eventually("the bridge's subscription to attach",
                lambda: any(x.get("subscription") == "mqtt-bridge-orders"
                            for x in one.get("n1", f"/subscriptions/{topic}")))
    code, _ = one.call("n1", "POST", f"/produce/{topic}", {"records": [{"value": f"order {i}"} for i in range(10)]})
    assert code == 200
    got = s.get(10)
    assert [(t, m) for t, m, _, _ in got] == [("chorus/orders/0", b"order %d" % i) for i in range(10)]
    s.close()
    assert one.call("n1", "DELETE", "/mqtt/bridges/orders")[0] == 200


def _mosquitto() -> None:
    if shutil.which("mosquitto_sub") is None and shutil.which("apt-get") and hasattr(__import__("os"), "geteuid") \
            and __import__("os").geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "mosquitto-clients"], capture_output=True, timeout=300)
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto_sub/mosquitto_pub not found: apt-get install mosquitto-clients")


def test_mosquitto_command_line_clients(one: RealCluster) -> None:
    _mosquitto()
    host, port = one.mqtt("n1")
    login = ["-u", "admin", "-P", one.password or ""]
    sub = subprocess.Popen(["mosquitto_sub", "-h", host, "-p", str(port), *login, "-t", "cli/#", "-q", "1", "-C", "3",
                            "-v", "-W", "20"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        for i in range(3):
            subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), *login, "-t", f"cli/{i}", "-m", f"hello {i}",
                            "-q", "1"], check=True, timeout=20)
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
    assert out.splitlines() == [f"cli/{i} hello {i}" for i in range(3)]


# ----------------------------------------------------------- three nodes
def test_cross_node_delivery_in_order_only_to_nodes_with_routes(three: RealCluster) -> None:
    s = Client(three.mqtt("n1"), "x-sub")
    s.sub(("plant/+/rpm", 1))
    p = Client(three.mqtt("n3"), "x-pub")
    _wait_route(three, "n3", "n1", "plant/+/rpm")
    for i in range(200):
        p.pub("plant/m1/rpm", b"%d" % i, 1)
    assert [m for _, m, _, _ in s.get(200)] == [b"%d" % i for i in range(200)]
    st = {n: three.get(n, "/mqtt") for n in ("n1", "n2", "n3")}
    assert st["n3"]["forwarded"] >= 200
    assert "n2" not in st["n3"]["forward_queued"]  # nothing was sent to a node without a route
    s.close()
    p.close()


def test_takeover_across_nodes_hands_the_persistent_session_over(three: RealCluster) -> None:
    a = Client(three.mqtt("n1"), "roamer", clean=False)
    a.sub(("roam/#", 1))
    a.drop()
    p = Client(three.mqtt("n3"), "roam-pub")
    _wait_route(three, "n3", "n1", "roam/#")
    for i in range(5):
        p.pub("roam/x", b"%d" % i, 1)
    b = Client(three.mqtt("n2"), "roamer", clean=False)
    assert b.session_present
    assert [m for _, m, _, _ in b.get(5)] == [b"%d" % i for i in range(5)]
    p.pub("roam/x", b"after", 1)
    assert b.get(1)[0][1] == b"after"
    b.close()
    p.close()


def test_persistent_session_survives_its_node_restart(three: RealCluster) -> None:
    s = Client(three.mqtt("n2"), "durable", clean=False)
    s.sub(("fleet/#", 1))
    p = Client(three.mqtt("n1"), "durable-pub")
    _wait_route(three, "n1", "n2", "fleet/#")
    p.pub("fleet/a", b"before", 1)
    assert s.get(1)[0][1] == b"before"
    s.close()
    assert three.stop("n2") == 0
    three.start("n2")
    s = Client(three.mqtt("n2"), "durable", clean=False)
    assert s.session_present
    p.pub("fleet/a", b"after restart", 1)
    assert s.get(1)[0][1] == b"after restart"
    s.close()
    p.close()


def test_a_taken_mqtt_port_is_a_clear_error(tmp_path) -> None:
    from runtime.agency_local import free_port
    from runtime.local_cluster import spawn_node
    from runtime.node import NodeConfig

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = NodeConfig(node_id="n1", data_dir=str(tmp_path / "n1"), client_port=free_port(),
                         http_port=free_port(), admin_port=free_port(), mqtt_port=port)
        proc = spawn_node(cfg, tmp_path / "out.txt")
        assert proc.wait(90) != 0
    out = (tmp_path / "out.txt").read_text()
    assert f"cannot serve MQTT on 127.0.0.1:{port}" in out and "--mqtt-port" in out, out
    assert "Traceback" not in out
