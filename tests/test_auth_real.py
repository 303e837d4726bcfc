"""Users and per-tenant permissions against a real node process, on every
interface: the Python client (binary protocol), paho-mqtt, HTTP, and the
``brokerctl users`` commands.  Tenant A's user reading tenant B is refused
everywhere with a clear error; a wrong password is refused at the door."""
from __future__ import annotations

import base64
import json
import os
import queue
import socket
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocol.frames import (
    FRAME_TYPES,
    Auth,
    ErrorCode,
    ErrorResponse,
    FetchRequest,
    FrameDecoder,
    Handshake,
    HandshakeOk,
    MetadataRequest,
    MetadataResponse,
    encode_frame,
)
from runtime.authn import ADMIN_PASSWORD_FILE
from runtime.client import ChorusAuthError, ChorusPermissionError, Client, Producer
from runtime.realcluster import RealCluster

mqtt = pytest.importorskip("paho.mqtt.client")
pytestmark = pytest.mark.realnet

A, B = "acme/shop/web/orders", "globex/shop/web/orders"
USERS = {"alice": ("alice-pass-1", ["produce:acme", "consume:acme"]),  # tenant A
         "bob": ("bob-pass-12", ["produce:globex", "consume:globex"]),  # tenant B
         "mgr": ("mgr-pass-123", ["manage:acme"]),  # topic admin of A, nothing over MQTT
         "flood": ("flood-pass-1", ["consume:acme", "produce:acme"])}
WAIT_S = 15.0
RATE = 150  # user_requests_per_s_max of this node (small, for the rate test)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = RealCluster(tmp_path_factory.mktemp("auth"), n=1, user_requests_per_s_max=float(RATE),
                    user_mqtt_publishes_per_s_max=200.0)
    try:
        c.start()
        c.create_topic("n1", A, shards=1)
        c.create_topic("n1", B, shards=1)
        for name, (pw, roles) in USERS.items():
            status, body = c.call("n1", "POST", "/users", {"name": name, "password": pw, "roles": roles})
            assert status == 201, body
        yield c
    finally:
        assert c.stop_all() == []


def _client(c: RealCluster, user: str, **kw) -> Client:
    return Client(c.client("n1"), username=user, password=USERS[user][0], connect_timeout_s=5, **kw)


# ------------------------------------------------------------ bootstrap
def test_the_first_start_made_one_admin_whose_password_only_its_file_holds(node: RealCluster) -> None:
    path = Path(node.cfgs["n1"].data_dir) / ADMIN_PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == node.password and len(node.password) >= 20
    assert node.password not in node.output("n1")  # not a terminal: the log names the file only
    assert str(path) in node.output("n1")
    assert node.get("n1", "/whoami") == {"name": "admin", "roles": ["admin"], "admin": True, "auth": True}


# ------------------------------------------------------- binary protocol
def test_python_client_wrong_or_missing_password_fails_at_once(node: RealCluster) -> None:
    with pytest.raises(ChorusAuthError, match="not accepted.*alice"):
        Client(node.client("n1"), username="alice", password="wrong", connect_timeout_s=5).__enter__()
    env = {k: os.environ.pop(k) for k in ("CHORUS_USER", "CHORUS_PASSWORD") if k in os.environ}
    try:
        with pytest.raises(ChorusAuthError, match="requires a user name and password"):
            Client(node.client("n1"), connect_timeout_s=5).__enter__()
    finally:
        os.environ.update(env)


def test_python_client_takes_its_user_from_the_environment(node: RealCluster, monkeypatch) -> None:
    monkeypatch.setenv("CHORUS_USER", "alice")
    monkeypatch.setenv("CHORUS_PASSWORD", USERS["alice"][0])
    with Client(node.client("n1"), connect_timeout_s=5) as cl:
        assert cl.metadata(A).topic == A


def test_tenant_a_may_not_touch_tenant_b_and_its_connection_stays_usable(node: RealCluster) -> None:
    with _client(node, "alice") as cl:
        with pytest.raises(ChorusPermissionError) as e:
            cl.fetch(B, 0)
        assert e.value.code is ErrorCode.PERMISSION_DENIED
        assert "user 'alice' may not consume on tenant 'globex' (needs role consume:globex)" in str(e.value)
        with pytest.raises(ChorusPermissionError, match="user 'alice' has no role on tenant 'globex'"):
            cl.metadata(B)
        assert cl.fetch(A, 0).high_watermark >= 0  # the same connection goes on
    with Producer(node.client("n1"), username="alice", password=USERS["alice"][0], linger_ms=0) as p:
        with pytest.raises(ChorusPermissionError, match="user 'alice' has no role on tenant 'globex'"):
            p.send(B, b"not yours").result(WAIT_S)
        assert p.send(A, b"mine").result(WAIT_S).offset >= 1
    with Producer(node.client("n1"), username="mgr", password=USERS["mgr"][0], linger_ms=0) as p:
        with pytest.raises(ChorusPermissionError, match="user 'mgr' may not produce on tenant 'acme'"):
            p.send(A, b"a topic admin is no producer").result(WAIT_S)
    with _client(node, "bob") as cl:
        with pytest.raises(ChorusPermissionError):
            cl.fetch(A, 0)


def _frames(s: socket.socket, want: int) -> list:
    dec, out = FrameDecoder(accept=set(FRAME_TYPES)), []
    s.settimeout(WAIT_S)
    while len(out) < want:
        data = s.recv(65536)
        if not data:
            break
        out.extend(dec.feed(data))
    return out


def _hello(user: str, password: str) -> bytes:
    return encode_frame(Handshake(client_id="raw", auth=Auth.PASSWORD, username=user, password=password), 1)


def test_metadata_of_every_topic_shows_only_the_users_tenants(node: RealCluster) -> None:
    with socket.create_connection(("127.0.0.1", node.cfgs["n1"].client_port), timeout=WAIT_S) as s:
        s.sendall(_hello("alice", USERS["alice"][0]) + encode_frame(MetadataRequest(), 2))
        ok, md = [f.message for f in _frames(s, 2)]
    assert isinstance(ok, HandshakeOk) and isinstance(md, MetadataResponse)
    assert [t.topic for t in md.topics] == [A]


def test_a_user_over_its_request_rate_is_told_to_slow_down_and_the_node_serves_on(node: RealCluster) -> None:
    n = RATE * 3
    with socket.create_connection(("127.0.0.1", node.cfgs["n1"].client_port), timeout=WAIT_S) as s:
        s.sendall(_hello("flood", USERS["flood"][0]))
        assert isinstance(_frames(s, 1)[0].message, HandshakeOk)
        s.sendall(b"".join(encode_frame(FetchRequest(topic=A, shard=0, offset=0, max_wait_ms=0), k)
                           for k in range(2, 2 + n)))
        answers = [f.message for f in _frames(s, n)]
    assert len(answers) == n
    slow = [m for m in answers if isinstance(m, ErrorResponse)]
    assert slow and all(m.code is ErrorCode.OVERLOADED and "over its request rate" in m.message for m in slow)
    assert len(slow) < n  # the burst was served
    with _client(node, "alice") as cl:  # another user is not slowed down
        assert cl.fetch(A, 0).high_watermark >= 0


# ------------------------------------------------------------------ MQTT
class Paho:
    def __init__(self, c: RealCluster, user: str | None, password: str | None, cid: str) -> None:
        self.msgs: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311,
                             reconnect_on_failure=False)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_message = lambda _c, _u, m: self.msgs.put((m.topic, m.payload))
        self.c.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.put(rc.value)
        self.c.connect(*c.mqtt("n1"), keepalive=30)
        self.c.loop_start()
        self.rc = self.connacks.get(timeout=WAIT_S)

    def sub(self, *filters: tuple[str, int]) -> list[int]:
        done: queue.Queue = queue.Queue()
        self.c.on_subscribe = lambda _c, _u, mid, codes, _p: done.put([c.value for c in codes])
        self.c.subscribe(list(filters))
        return done.get(timeout=WAIT_S)

    def pub(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.c.publish(topic, payload, qos)
        info.wait_for_publish(WAIT_S)
        assert info.is_published()  # acknowledged, allowed or not

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# paho's v3.1.1 CONNACK return codes, as its reason codes
BAD_CREDENTIALS, NOT_AUTHORIZED = 134, 135


def test_mqtt_connect_needs_a_user_with_an_mqtt_role(node: RealCluster) -> None:
    for user, password, rc in ((None, None, BAD_CREDENTIALS), ("alice", "wrong", BAD_CREDENTIALS),
                               ("nobody", "whatever", BAD_CREDENTIALS), ("mgr", USERS["mgr"][0], NOT_AUTHORIZED)):
        p = Paho(node, user, password, f"c-{user}")
        try:
            assert p.rc == rc, (user, p.rc)
        finally:
            p.c.loop_stop()


def test_mqtt_tenant_a_may_not_subscribe_to_or_publish_into_tenant_b(node: RealCluster) -> None:
    alice = Paho(node, "alice", USERS["alice"][0], "alice-1")
    bob = Paho(node, "bob", USERS["bob"][0], "bob-1")
    try:
        assert alice.rc == bob.rc == 0
        assert alice.sub(("acme/#", 1), ("globex/#", 1), ("#", 0), ("+/shop", 1), ("$SYS/#", 0)) == \
            [1, 0x80, 0x80, 0x80, 0x80]
        assert bob.sub(("globex/#", 1)) == [1]
        denied0 = node.get("n1", "/mqtt")["denied"]
        alice.pub("globex/prices", b"from alice")  # acknowledged and dropped (MQTT-3.3.5-2)
        bob.pub("globex/prices", b"from bob")
        alice.pub("acme/prices", b"from alice")
        assert bob.msgs.get(timeout=WAIT_S) == ("globex/prices", b"from bob")  # bob's own, not alice's
        assert alice.msgs.get(timeout=WAIT_S) == ("acme/prices", b"from alice")
        assert node.get("n1", "/mqtt")["denied"] >= denied0 + 1
        with pytest.raises(queue.Empty):
            bob.msgs.get(timeout=0.5)
    finally:
        alice.close()
        bob.close()


def test_mqtt_publishes_over_the_users_rate_are_slowed_down_not_lost(node: RealCluster) -> None:
    sub = Paho(node, "alice", USERS["alice"][0], "rate-sub")
    pub = Paho(node, "flood", USERS["flood"][0], "rate-pub")
    try:
        assert sub.sub(("acme/rate/#", 1)) == [1]
        n = 600  # three seconds' worth at 200/s for this node
        for i in range(n):
            pub.c.publish(f"acme/rate/{i}", b"x", 1)
        got = {sub.msgs.get(timeout=WAIT_S)[0] for _ in range(n)}
        assert got == {f"acme/rate/{i}" for i in range(n)}
        assert node.get("n1", "/mqtt")["auth"]["throttled"] >= 1
    finally:
        sub.close()
        pub.close()


# ------------------------------------------------------------------ HTTP
def _http(c: RealCluster, method: str, path: str, auth: tuple[str, str] | None, body=None) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(c.url("n1", path), method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def test_http_401_without_or_with_wrong_credentials_403_for_another_tenant(node: RealCluster) -> None:
    alice = ("alice", USERS["alice"][0])
    st, body, headers = _http(node, "GET", f"/fetch/{A}?shard=0", None)
    assert st == 401 and body["error"]["code"] == "unauthorized" and "Basic" in headers["WWW-Authenticate"]
    st, body, _ = _http(node, "GET", f"/fetch/{A}?shard=0", ("alice", "wrong"))
    assert st == 401 and "not accepted" in body["error"]["message"]
    assert _http(node, "GET", f"/fetch/{A}?shard=0", alice)[0] == 200
    st, body, _ = _http(node, "GET", f"/fetch/{B}?shard=0", alice)
    assert st == 403 and body["error"] == {"code": "forbidden", "message": "permission denied: user 'alice' may not "
                                           "consume on tenant 'globex' (needs role consume:globex)"}
    assert _http(node, "POST", f"/produce/{B}", alice, {"records": [{"value": "x"}]})[0] == 403
    assert [t["name"] for t in _http(node, "GET", "/topics", alice)[1]] == [A]
    # deleting topics: manage on their tenant
    assert _http(node, "DELETE", f"/topics/{B}", ("mgr", USERS["mgr"][0]))[0] == 403
    assert _http(node, "DELETE", f"/topics/{A}", alice)[0] == 403
    assert _http(node, "GET", "/nodes", alice)[0] == 403
    # what nodes read from each other stays open
    assert _http(node, "GET", "/cluster/directory", None)[0] == 200
    assert _http(node, "GET", "/status", None)[0] == 200


# ----------------------------------------------------------- users CLI
def _cli(c: RealCluster, *args: str) -> tuple[int, str]:
    from runtime.cli import app

    r = CliRunner().invoke(app, [*args, "--url", f"http://127.0.0.1:{c.cfgs['n1'].http_port}",
                                 "--data-dir", str(c.base_dir)], env={"COLUMNS": "200"})
    return r.exit_code, r.output


def test_users_cli_add_grant_use_revoke_delete(node: RealCluster) -> None:
    code, out = _cli(node, "users", "add", "carol", "--new-password", "carol-pass-1", "--role", "consume:acme")
    assert code == 0, out
    assert "carol" in _cli(node, "users", "list")[1]
    with Client(node.client("n1"), username="carol", password="carol-pass-1", connect_timeout_s=5) as cl:
        assert cl.fetch(A, 0).high_watermark >= 0
        with pytest.raises(ChorusPermissionError):
            cl.fetch(B, 0)
    assert _cli(node, "users", "grant", "carol", "consume:globex")[0] == 0
    with Client(node.client("n1"), username="carol", password="carol-pass-1", connect_timeout_s=5) as cl:
        assert cl.fetch(B, 0).high_watermark >= 0
    assert _cli(node, "users", "revoke", "carol", "consume:globex")[0] == 0
    with Client(node.client("n1"), username="carol", password="carol-pass-1", connect_timeout_s=5) as cl:
        with pytest.raises(ChorusPermissionError):
            cl.fetch(B, 0)
    code, out = _cli(node, "users", "token", "carol")
    assert code == 0, out
    token = out.strip().splitlines()[-1]
    req = urllib.request.Request(node.url("n1", "/whoami"), headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=WAIT_S) as r:
        assert json.loads(r.read())["name"] == "carol"
    assert _cli(node, "users", "passwd", "carol", "--new-password", "carol-pass-2")[0] == 0
    with pytest.raises(ChorusAuthError):
        Client(node.client("n1"), username="carol", password="carol-pass-1", connect_timeout_s=5).__enter__()
    assert _cli(node, "users", "delete", "carol")[0] == 0
    with pytest.raises(ChorusAuthError):
        Client(node.client("n1"), username="carol", password="carol-pass-2", connect_timeout_s=5).__enter__()
    assert "carol" not in _cli(node, "users", "list")[1]


@pytest.mark.parametrize("args, needle", [
    (("users", "grant", "alice", "read:acme"), "expected 'admin' or ACTION:TENANT"),
    (("users", "grant", "nobody", "consume:acme"), "no user 'nobody'"),
    (("users", "delete", "nobody"), "no user 'nobody'"),
    (("users", "delete", "admin"), "last admin"),
    (("users", "revoke", "admin", "admin"), "last admin"),
    (("users", "add", "alice", "--new-password", "another-one"), "already exists"),
    (("users", "add", "dave", "--new-password", "short"), "8 to 1024 characters"),
])
def test_users_cli_bad_input_is_a_clear_error(node: RealCluster, args, needle) -> None:
    code, out = _cli(node, *args)
    assert code == 1 and needle in " ".join(out.split()), out


def test_admin_commands_log_in_with_the_data_dirs_password_or_the_given_user(node: RealCluster) -> None:
    code, out = _cli(node, "topics", "list")
    assert code == 0 and A in out and B in out
    code, out = _cli(node, "topics", "list", "--user", "alice", "--password", USERS["alice"][0])
    assert code == 0 and A in out and B not in out
    code, out = _cli(node, "users", "list", "--user", "alice", "--password", USERS["alice"][0])
    assert code == 1 and "forbidden" in out
    code, out = _cli(node, "topics", "list", "--user", "alice", "--password", "wrong")
    assert code == 1 and "unauthorized" in out and "--user/--password" in " ".join(out.split())
