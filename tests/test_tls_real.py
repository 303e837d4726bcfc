"""TLS on the client, MQTT and HTTP ports of real nodes.

One node is started the way an operator would, ``brokerctl run
--tls-self-signed``, and reached with the Python client, paho-mqtt, the
mosquitto clients and curl, each trusting the certificate the node made; a
plaintext client on each port is turned away and the node keeps serving.
Two nodes sharing a certificate find each other over HTTPS.  Every node is
stopped by its PID."""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from protocol.frames import Handshake, HandshakeOk, MetadataRequest, MetadataResponse, encode_frame
from protocol.mqtt import Connect, encode
from runtime.client import ChorusConnectionError, Client, Consumer, Producer
from runtime.realcluster import RealCluster
from runtime.tls import ensure_self_signed
from test_realnode import _read_frames

pytestmark = pytest.mark.realnet

TOPIC = "acme/shop/web/secure"
# brokerctl, from this checkout (the installed script may point at another)
BROKERCTL = [sys.executable, "-m", "runtime.cli"]


def start_with_cli(c: RealCluster, nid: str = "n1") -> subprocess.Popen:
    """``brokerctl run --tls-self-signed`` with the node's configured ports."""
    cfg = c.cfgs[nid]
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    out = open(Path(cfg.data_dir) / "cli.out", "wb")
    try:
        proc = subprocess.Popen([*BROKERCTL, "run", "--tls-self-signed", "--node-id", nid, "--data-dir", cfg.data_dir,
                                 "--client-port", str(cfg.client_port), "--http-port", str(cfg.http_port),
                                 "--admin-port", str(cfg.admin_port), "--mqtt-port", str(cfg.mqtt_port),
                                 "--cluster-id", cfg.cluster_id],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "COLUMNS": "400"})
    finally:
        out.close()
    c.procs[nid] = proc
    return proc


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = RealCluster(tmp_path_factory.mktemp("tls"), n=1, tls_self_signed=True)
    try:
        start_with_cli(c)
        c.output = lambda nid: (Path(c.cfgs[nid].data_dir) / "cli.out").read_text()  # type: ignore[method-assign]
        c.wait_ready("n1")
        c.create_topic("n1", TOPIC, shards=2)
        yield c
    finally:
        assert c.stop_all() == []


def ca(c: RealCluster) -> str:
    return c.trust_file("n1")


def tls_socket(c: RealCluster, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca(c))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


def healthy(c: RealCluster) -> None:
    """A well-behaved client is served on every port, over TLS."""
    with tls_socket(c, c.cfgs["n1"].client_port) as s:
        s.sendall(encode_frame(c.hello("probe"), 1) + encode_frame(MetadataRequest(topics=(TOPIC,)), 2))
        frames, _ = _read_frames(s, 2)
    assert isinstance(frames[0].message, HandshakeOk)
    assert isinstance(frames[1].message, MetadataResponse) and len(frames[1].message.topics[0].shards) == 2
    assert c.get("n1", "/status")["tls"] is True
    with tls_socket(c, c.cfgs["n1"].mqtt_port) as s:
        s.sendall(encode(c.mqtt_connect("probe-mqtt", clean_session=True, keep_alive_s=30)))
        assert s.recv(4)[:2] == b"\x20\x02"  # CONNACK


def closed_without_answer(sock: socket.socket, send: bytes) -> bool:
    """Send plaintext ``send``; True when the node closes the connection
    without answering in the protocol the client spoke."""
    sock.settimeout(15)
    try:
        sock.sendall(send)
        got = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            got += data
    except (ConnectionResetError, BrokenPipeError):
        return True
    # what comes back, if anything, is a TLS alert record (content type 21), never an answer
    return got == b"" or got[:1] == b"\x15"


def test_the_cli_made_a_certificate_and_says_what_to_trust(node: RealCluster) -> None:
    out = node.output("n1")
    cert = Path(node.cfgs["n1"].data_dir).resolve() / "tls" / "cert.pem"
    assert cert.is_file() and (cert.parent / "key.pem").stat().st_mode & 0o077 == 0
    assert f"clients trust {cert}" in out.replace("\n", "")
    assert "TLS only" in out
    # and brokerctl status says so too (finding out it needs https with --ca-file)
    r = subprocess.run([*BROKERCTL, "status", "--url", f"http://127.0.0.1:{node.cfgs['n1'].http_port}",
                        "--ca-file", str(cert)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "TLS only on the client, MQTT and HTTP ports" in r.stdout
    r = subprocess.run([*BROKERCTL, "topics", "list", "--url", f"http://127.0.0.1:{node.cfgs['n1'].http_port}"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CHORUS_DATA_DIR": str(node.base_dir / "elsewhere")})
    assert r.returncode == 2 and "--ca-file" in r.stderr, (r.stdout, r.stderr)
    # started from the node's own directory, it finds the certificate in ./data itself
    r = subprocess.run([*BROKERCTL, "topics", "list", "--url", f"http://127.0.0.1:{node.cfgs['n1'].http_port}",
                        "--json"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CHORUS_DATA_DIR": node.cfgs["n1"].data_dir})
    assert r.returncode == 0 and [t["name"] for t in json.loads(r.stdout)] == [TOPIC], r.stderr


def test_python_client_produces_and_consumes_over_tls(node: RealCluster) -> None:
    with Producer(node.client("n1"), ca_file=ca(node), level="one", **node.auth) as p:
        futures = [p.send(TOPIC, b"secret %d" % i, key=b"k") for i in range(20)]
        p.flush()
        assert all(f.exception() is None for f in futures)
    with Consumer(node.client("n1"), TOPIC, "tls-reader", ca_file=ca(node), **node.auth) as cons:
        got = set()
        while len(got) < 20:
            msg = cons.poll(timeout_s=20)
            assert msg is not None, got
            got.add(msg.value)
            msg.ack()
    assert got == {b"secret %d" % i for i in range(20)}
    ctx = ssl.create_default_context(cafile=ca(node))
    with Client(node.client("n1"), tls=ctx, **node.auth) as c:  # an SSLContext of one's own
        assert len(c.metadata(TOPIC).shards) == 2
    with pytest.raises(ChorusConnectionError, match="not trusted"):
        with Client(node.client("n1"), tls=True, connect_timeout_s=5):  # the system's CAs do not know it
            pass
    with pytest.raises(ChorusConnectionError):
        with Client(node.client("n1"), connect_timeout_s=3):  # plaintext
            pass
    healthy(node)


def test_paho_mqtt_over_tls(node: RealCluster) -> None:
    import paho.mqtt.client as mqtt

    got: list = []
    arrived = threading.Event()
    subscribed = threading.Event()

    def on_message(_c, _u, m):
        got.append((m.topic, m.payload))
        arrived.set()

    clients = []
    for cid in ("tls-sub", "tls-pub"):
        cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
        cl.tls_set(ca_certs=ca(node))
        clients.append(node.mqtt_login(cl))
    sub, pub = clients
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    try:
        sub.connect("127.0.0.1", node.cfgs["n1"].mqtt_port)
        sub.loop_start()
        sub.subscribe("home/+/temp", qos=1)
        assert subscribed.wait(20)
        pub.connect("127.0.0.1", node.cfgs["n1"].mqtt_port)
        pub.loop_start()
        pub.publish("home/kitchen/temp", b"21.5", qos=1).wait_for_publish(20)
        assert arrived.wait(20)
        assert got == [("home/kitchen/temp", b"21.5")]
    finally:
        for cl in clients:
            cl.disconnect()
            cl.loop_stop()
    healthy(node)


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_mosquitto_clients_with_cafile(node: RealCluster) -> None:
    port = str(node.cfgs["n1"].mqtt_port)
    login = ["-u", "admin", "-P", node.password or ""]
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "--cafile", ca(node), *login, "-t", "m/#",
                            "-q", "1", "-C", "1", "-v", "-W", "30"], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        out = ""
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "--cafile", ca(node), *login, "-t", "m/x",
                            "-m", "over tls", "-q", "1"], check=True, timeout=30)
            try:
                out, _ = sub.communicate(timeout=1)
            except subprocess.TimeoutExpired:
                continue  # subscribed after this publish: send another
        assert out.strip() == "m/x over tls"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    plain = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", "m/x", "-m", "plain"],
                           capture_output=True, timeout=30)
    assert plain.returncode != 0


def test_curl_with_cacert(node: RealCluster) -> None:
    url = f"https://127.0.0.1:{node.cfgs['n1'].http_port}/api/v1/status"
    r = subprocess.run(["curl", "-sS", "--cacert", ca(node), url], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tls"] is True
    r = subprocess.run(["curl", "-sS", "--cacert", ca(node), "-u", f"admin:{node.password}", "-XPOST", "-d",
                        '{"records": [{"value": "by curl"}]}',
                        f"https://127.0.0.1:{node.cfgs['n1'].http_port}/api/v1/produce/{TOPIC}"],
                       capture_output=True, text=True, timeout=30)
    assert json.loads(r.stdout)["count"] == 1, r.stdout
    untrusted = subprocess.run(["curl", "-sS", url], capture_output=True, text=True, timeout=30)
    assert untrusted.returncode == 60  # the peer's certificate cannot be verified
    plain = subprocess.run(["curl", "-sS", url.replace("https", "http")], capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0 and not plain.stdout


def test_plaintext_on_every_tls_port_is_turned_away_and_the_node_keeps_serving(node: RealCluster) -> None:
    cfg = node.cfgs["n1"]
    hello = encode_frame(Handshake(client_id="plain"), 1)
    cases = [(cfg.client_port, hello), (cfg.client_port, b"\x00" * 64),
             (cfg.mqtt_port, encode(Connect(client_id="plain", clean_session=True, keep_alive_s=30))),
             (cfg.http_port, b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for port, _ in cases]
    try:
        for s, (_, data) in zip(socks, cases):
            assert closed_without_answer(s, data)
        # and a TLS client that does not trust the certificate is refused by itself
        bad = ssl.create_default_context()
        for port in (cfg.client_port, cfg.mqtt_port, cfg.http_port):
            with pytest.raises(ssl.SSLCertVerificationError):
                bad.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                server_hostname="127.0.0.1")
        # and one that offers only TLS 1.1 is refused by the node (TLS 1.2 at least): the
        # node closes the handshake (the client allows 1.1 at OpenSSL's security level 0)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(ca(node))
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        for port in (cfg.client_port, cfg.mqtt_port, cfg.http_port):
            with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNEXPECTED_EOF"):
                old.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                server_hostname="127.0.0.1")
        healthy(node)
    finally:
        for s in socks:
            s.close()
    healthy(node)


def test_two_nodes_with_tls_reach_each_other_over_https(tmp_path) -> None:
    """The launchers read each other's directory over HTTPS, trusting the
    shared certificate; replication then works as without TLS."""
    cert, key = ensure_self_signed(tmp_path / "shared")
    c = RealCluster(tmp_path, n=2, tls_cert_file=cert, tls_key_file=key)
    try:
        c.start()  # waits until each node sees both alive, with their client endpoints
        c.create_topic("n1", "t/p/c/both", shards=1, rf=2)
        shards = c.wait_leaders("n2", "t/p/c/both")
        assert set(shards[0]["replicas"]) == {"n1", "n2"}
        with Producer(c.client("n2"), ca_file=cert, level="all", **c.auth) as p:
            futures = [p.send("t/p/c/both", b"v%d" % i) for i in range(10)]
            p.flush()
            assert all(f.exception() is None for f in futures)
        with Client(c.client("n1"), ca_file=cert, **c.auth) as cl:
            assert [r.payload for r in cl.fetch_all("t/p/c/both", 0)] == [b"v%d" % i for i in range(10)]
        directory = c.get("n2", "/cluster/directory")
        assert {n["node_id"] for n in directory["nodes"]} == {"n1", "n2"}
    finally:
        assert c.stop_all() == []


def test_a_missing_certificate_file_is_a_clear_error(tmp_path) -> None:
    r = subprocess.run([*BROKERCTL, "run", "--data-dir", str(tmp_path / "d"), "--tls-cert-file",
                        str(tmp_path / "nope.pem"), "--tls-key-file", str(tmp_path / "nope.key")],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 2 and "no such file" in r.stdout + r.stderr
