"""The cluster port (runtime/cluster_auth.py): signed frames, the allow-list
unpickler, the secret's life cycle, and attacks on a real node's ports."""
from __future__ import annotations

import os
import pickle
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.agency import AgencyRequest, Mutation, Txn
from protocol.mqtt_cluster import Fwd, MqttForward
from runtime import cluster_auth
from runtime.cluster_auth import (
    REPLAY_WINDOW_S,
    ForbiddenClass,
    FrameRejected,
    SignedSerializer,
    node_secret,
    restricted_loads,
)


class _RunsCode:
    """A pickle that calls ``os.system`` when it is loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


class _EvalsCode:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return eval, (f"open({str(self.path)!r}, 'w')",)


# --------------------------------------------------------------- frames
def test_a_signed_frame_round_trips_protocol_messages():
    s = SignedSerializer("k" * 64)
    msg = (None, MqttForward("n1", 1, 7, (Fwd("a/b", b"\x00payload", 1, "n1.1.1"),), 2))
    assert s.loads(s.dumps(msg)) == msg
    req = AgencyRequest("c", 1, Txn((Mutation("/x", "set", {"a": [1, 2.5, None]}),)))
    assert s.loads(s.dumps(req)) == req


def test_thespian_acknowledgements_pass_unsigned():
    s = SignedSerializer("k" * 64)
    assert s.loads(pickle.dumps("ACK")) == "ACK"
    assert s.loads(pickle.dumps("ACK+DATAERR")) == "ACK+DATAERR"


@pytest.mark.parametrize("frame,why", [
    (pickle.dumps(("x", "y")), "unsigned"),
    (b"CHR1" + b"\x00" * 40 + pickle.dumps(1), "wrong signature"),
    (b"", "unsigned"),
])
def test_unsigned_and_forged_frames_are_rejected(frame, why):
    s = SignedSerializer("k" * 64)
    with pytest.raises(FrameRejected, match=why):
        s._loads(frame)


def test_a_frame_signed_with_another_clusters_secret_is_rejected():
    ours, theirs = SignedSerializer("a" * 64), SignedSerializer("b" * 64)
    with pytest.raises(FrameRejected, match="wrong signature"):
        ours._loads(theirs.dumps("hello"))


def test_a_flipped_byte_anywhere_breaks_the_signature():
    s = SignedSerializer("k" * 64)
    frame = s.dumps(("x", Fwd("t", b"p", 0, "m")))
    for i in range(4, len(frame), max(1, len(frame) // 25)):
        bad = bytearray(frame)
        bad[i] ^= 0x01
        with pytest.raises(FrameRejected):
            s._loads(bytes(bad))


def test_an_old_frame_is_rejected_as_a_replay(monkeypatch):
    s = SignedSerializer("k" * 64)
    frame = s.dumps("hello")
    assert s._loads(frame) == "hello"
    later = time.time() + REPLAY_WINDOW_S + 5
    monkeypatch.setattr(cluster_auth.time, "time", lambda: later)
    with pytest.raises(FrameRejected, match="replay"):
        s._loads(frame)


def test_a_signed_frame_that_would_run_code_runs_nothing(tmp_path):
    """A peer with the secret still cannot make a node run code: the
    allow-list refuses functions and foreign classes."""
    s = SignedSerializer("k" * 64)
    for payload in (_RunsCode(tmp_path / "ran"), _EvalsCode(tmp_path / "evaluated")):
        with pytest.raises(FrameRejected):
            s.loads(s.dumps((None, payload)))
    assert list(tmp_path.iterdir()) == []
    assert s.rejected == 2


# --------------------------------------------------------------- allow-list
@pytest.mark.parametrize("module,name", [
    ("os", "system"), ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"),
    ("builtins", "__import__"), ("subprocess", "Popen"), ("protocol.topics", "topic_path"),
    ("thespian.actors", "ActorSystem"), ("runtime.node", "Node"), ("protocol.topics", "os.system"),
])
def test_the_allow_list_refuses(module, name):
    with pytest.raises(ForbiddenClass):
        restricted_loads(_calls(module, name))


def _calls(module: str, name: str) -> bytes:
    """A pickle that looks up ``module.name`` and calls it with no arguments."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n)R."


def test_the_simulator_refuses_a_message_class_a_real_node_would_refuse():
    from sim.world import _loads

    with pytest.raises(ForbiddenClass, match="evil.messages.Foreign"):
        _loads(_calls("evil.messages", "Foreign"))
    assert _loads(pickle.dumps(Fwd("t", b"p", 1, "m"), 5)) == Fwd("t", b"p", 1, "m")


# --------------------------------------------------------------- the secret
def test_the_secret_is_made_once_kept_and_copied(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    secret, how = node_secret(a)
    assert how == "created" and len(secret) == 64
    assert (a / "cluster.secret").stat().st_mode & 0o777 == 0o600
    assert node_secret(a) == (secret, "kept")
    b = tmp_path / "b"
    b.mkdir()
    assert node_secret(b, str(a / "cluster.secret"), new_cluster=False) == (secret, "copied")
    c = tmp_path / "c"
    c.mkdir()
    with pytest.raises(SystemExit, match="--cluster-secret-file"):
        node_secret(c, new_cluster=False)
    other = tmp_path / "other.secret"
    other.write_text("z" * 64)
    with pytest.raises(SystemExit, match="not the cluster secret"):
        node_secret(a, str(other))
    short = tmp_path / "short.secret"
    short.write_text("abc")
    with pytest.raises(SystemExit, match="too short"):
        node_secret(c, str(short))


def test_the_attack_pickles_would_run_code_under_plain_pickle(tmp_path):
    """The payloads above are real attacks: plain pickle runs them."""
    assert pickle.loads(_calls("os", "getcwd")) == os.getcwd()
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


# --------------------------------------------------------------- a real node
@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from runtime.realcluster import RealCluster

    c = RealCluster(tmp_path_factory.mktemp("cluster-auth"), n=1)
    try:
        c.start()
        yield c
    finally:
        c.stop_all()


def _thespian_ports(c) -> dict[str, int]:
    """The node's cluster ports: the admin's and every actor's."""
    ports = {"admin": c.cfgs["n1"].admin_port}
    directory = c.get("n1", "/cluster/directory")
    entry = next(e for e in directory["nodes"] if e["node_id"] == "n1")
    for name in ("raft", "dispatcher", "mqtt"):
        ports[name] = int(entry[name].rsplit(":", 1)[1])
    return ports


def _send_frame(port: int, payload: bytes) -> bytes:
    """One Thespian frame (``<length>>`` + bytes), as any process could send it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"%d>" % len(payload) + payload)
        s.settimeout(5)
        try:
            return s.recv(1024)
        except (socket.timeout, ConnectionError):
            return b""


def _log(c) -> str:
    try:
        return (Path(c.cfgs["n1"].data_dir) / "logs" / "thespian.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""  # nothing logged yet


def _serving(c) -> bool:
    st = c.get("n1", "/status")
    return isinstance(st, dict) and bool(st.get("agency", {}).get("leader"))


@pytest.mark.realnet
def test_cluster_ports_listen_on_loopback_only(node):
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":
                addr, port = local.rsplit(":", 1)
                listening.add((addr, int(port, 16)))
    for name, port in _thespian_ports(node).items():
        addrs = {a for a, p in listening if p == port}
        assert addrs == {"0100007F"}, (name, port, addrs)  # 127.0.0.1, and no 0.0.0.0 / [::]


@pytest.mark.realnet
def test_a_pickle_that_runs_code_reaches_no_cluster_port(node, tmp_path):
    """Sent by a process without the secret, to the admin port and to actor
    processes' ports: nothing runs, each is logged, the node keeps serving."""
    before = _log(node).count("dropped an unsigned frame")
    ports = _thespian_ports(node)
    for name, port in ports.items():
        target = tmp_path / f"pwned-{name}"
        answer = _send_frame(port, pickle.dumps((None, _RunsCode(target))))
        assert answer == b"" or b"ACK+DATAERR" in answer  # refused, or the connection closed
    deadline = time.monotonic() + 10
    while _log(node).count("dropped an unsigned frame") < before + len(ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _log(node).count("dropped an unsigned frame") >= before + len(ports)
    assert list(tmp_path.iterdir()) == []
    assert _serving(node)


@pytest.mark.realnet
def test_a_valid_thespian_frame_without_the_secret_is_dropped(node):
    """A well-formed Thespian envelope asking the admin to exit, from a
    process that speaks Thespian but lacks the secret (or signs with another
    cluster's): dropped and logged; the node keeps serving."""
    from thespian.actors import ActorAddress, ActorExitRequest
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    port = node.cfgs["n1"].admin_port
    sender = ActorAddress(TCPv4ActorAddress("127.0.0.1", 1))
    envelope = (sender, ActorExitRequest())
    before = _log(node)
    _send_frame(port, pickle.dumps(envelope))
    _send_frame(port, SignedSerializer("another cluster " * 4).dumps(envelope))
    _send_frame(port, b"")  # an empty frame
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a huge announced length
        s.sendall(b"99999999999>" + b"x" * 1000)
        s.settimeout(5)
        try:
            s.recv(10)
        except (socket.timeout, ConnectionError):
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _log(node).count("wrong signature") <= before.count("wrong signature"):
        time.sleep(0.2)
    after = _log(node)
    assert after.count("dropped an unsigned frame") > before.count("dropped an unsigned frame")
    assert after.count("wrong signature") > before.count("wrong signature")
    assert _serving(node)
    time.sleep(1)  # an ActorExitRequest that got through would be taking the admin down now
    assert _serving(node)
    assert node.procs["n1"].poll() is None


def test_plain_values_and_exceptions_pass_the_allow_list():
    import datetime

    value = {"a": [1, 2.5, None, True], "b": {1, 2}, "c": frozenset({"x"}), "d": (b"\x00", bytearray(b"y")),
             "e": datetime.timedelta(seconds=3), "f": ValueError("bad", 3), "g": complex(1, 2)}
    got = restricted_loads(pickle.dumps(value, 5))
    assert {k: v for k, v in got.items() if k != "f"} == {k: v for k, v in value.items() if k != "f"}
    assert type(got["f"]) is ValueError and got["f"].args == ("bad", 3)


@pytest.mark.realnet
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=2000),  # anything, no framing
    st.binary(max_size=2000).map(lambda b: b"%d>" % len(b) + b),  # framed garbage
    st.tuples(st.binary(max_size=64), st.integers(0, 200)).map(  # a signed frame of another cluster, mutated
        lambda t: _mutate(SignedSerializer("x" * 64).dumps(("probe", t[0])), t[1])),
))
def test_bad_bytes_on_the_cluster_port_harm_nothing(node, data):
    port = node.cfgs["n1"].admin_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        try:
            s.recv(100)
        except (socket.timeout, ConnectionError):
            pass
    assert node.procs["n1"].poll() is None


def _mutate(frame: bytes, at: int) -> bytes:
    body = bytearray(frame)
    body[at % len(body)] ^= 0x5A
    return b"%d>" % len(body) + bytes(body)


@pytest.mark.realnet
def test_the_node_serves_after_the_fuzzing(node):
    """Runs after the fuzz test above (file order): everything still works."""
    assert _serving(node)
    assert node.create_topic("n1", "acme/fuzz/after/ok", shards=1)
