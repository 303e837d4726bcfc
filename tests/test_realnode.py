"""Real node processes: a single node end to end, bad input on every port,
clean shutdown by PID.  (Multi-node failover tests: test_realcluster.py.)"""
from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path

import pytest

from protocol.frames import (
    FRAME_TYPES,
    Auth,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Handshake,
    HandshakeOk,
    MetadataRequest,
    MetadataResponse,
    encode_frame,
)
from runtime.agency_local import free_port, process_exists
from runtime.node import NodeConfig
from runtime.realcluster import RealCluster, _zombie

pytestmark = pytest.mark.realnet

TOPIC = "acme/shop/web/orders"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = RealCluster(tmp_path_factory.mktemp("single"), n=1)
    try:
        c.start()
        c.create_topic("n1", TOPIC, shards=2)
        yield c
    finally:
        c.stop_all()


def _hello(c: RealCluster, client_id: str) -> Handshake:
    """A handshake as the cluster's admin (nodes require a user)."""
    return Handshake(client_id=client_id, auth=Auth.PASSWORD, username="admin", password=c.password or "")


def _connect(c: RealCluster) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", c.cfgs["n1"].client_port), timeout=10)
    return s


def _read_frames(s: socket.socket, want: int = 1, timeout_s: float = 10) -> tuple[list, bool]:
    """Frames received until ``want`` arrived or the peer closed: (frames, closed)."""
    dec = FrameDecoder(accept=set(FRAME_TYPES))
    frames: list = []
    s.settimeout(timeout_s)
    while len(frames) < want:
        try:
            data = s.recv(65536)
        except socket.timeout:
            return frames, False
        if not data:
            return frames, True
        frames.extend(dec.feed(data))
    return frames, False


def _closed(s: socket.socket, timeout_s: float = 10) -> bool:
    s.settimeout(timeout_s)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def _healthy(c: RealCluster) -> None:
    """A fresh client still gets served: handshake, metadata, HTTP."""
    with _connect(c) as s:
        s.sendall(encode_frame(_hello(c, "probe"), 1))
        s.sendall(encode_frame(MetadataRequest(topics=(TOPIC,)), 2))
        frames, _ = _read_frames(s, 2)
    assert isinstance(frames[0].message, HandshakeOk)
    md = frames[1].message
    assert isinstance(md, MetadataResponse) and len(md.topics[0].shards) == 2
    assert c.get("n1", "/status")["node_id"] == "n1"


def test_http_produce_fetch_and_topics(node: RealCluster) -> None:
    status, body = node.call("n1", "POST", f"/produce/{TOPIC}",
                             {"records": [{"value": "hello", "key": "k"}, {"value": "world", "key": "k"}]})
    assert status == 200 and body["count"] == 2, body
    got = node.get("n1", f"/fetch/{TOPIC}?shard={body['shard']}&offset={body['base_offset']}")
    assert [r["value"] for r in got["records"]] == ["hello", "world"]
    assert all(r["key"] == "k" for r in got["records"])
    assert got["high_watermark"] == body["base_offset"] + 2
    # topics CRUD and errors
    assert [t["name"] for t in node.get("n1", "/topics")] == [TOPIC]
    status, err = node.call("n1", "POST", "/topics", {"name": TOPIC})
    assert status == 409 and err["error"]["code"] == "conflict"
    status, err = node.call("n1", "POST", "/topics", {"name": "not-a-topic"})
    assert status == 400
    status, err = node.call("n1", "GET", "/topics/acme/shop/web/none")
    assert status == 404
    status, t = node.call("n1", "POST", "/topics", {"name": "acme/shop/web/tmp"})
    assert status == 201 and t["replication_factor"] == 1  # min(3, one node)
    status, _ = node.call("n1", "DELETE", "/topics/acme/shop/web/tmp")
    assert status == 200
    assert [t["name"] for t in node.get("n1", "/topics")] == [TOPIC]
    lookup = node.get("n1", f"/lookup/{TOPIC}")
    assert [e["leader"] for e in lookup] == ["n1", "n1"]
    assert lookup[0]["client"] == node.client("n1")
    doc = node.get("n1", "/openapi.json")
    assert doc["openapi"].startswith("3.1") and "/api/v1/produce/{name}" in doc["paths"]


def test_garbage_oversized_and_half_open_inputs_leave_the_node_serving(node: RealCluster) -> None:
    # garbage bytes on the client port: an error frame, then the connection closes
    with _connect(node) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
        frames, closed = _read_frames(s, 1)
        assert frames and isinstance(frames[0].message, ErrorResponse)
        assert frames[0].message.code == ErrorCode.MALFORMED
        assert closed or _closed(s)
    # a header announcing a 2 GiB frame: refused from the header alone
    with _connect(node) as s:
        s.sendall(encode_frame(_hello(node, "x"), 1))
        _read_frames(s, 1)
        s.sendall(b"\xc4\x05\x01\x05\x00" + struct.pack(">II", 7, 2 << 30))
        frames, _ = _read_frames(s, 1)
        assert frames[0].message.code == ErrorCode.FRAME_TOO_LARGE
        assert _closed(s)
    # a request before the handshake
    with _connect(node) as s:
        s.sendall(encode_frame(MetadataRequest(), 3))
        frames, _ = _read_frames(s, 1)
        assert frames[0].message.code == ErrorCode.HANDSHAKE_REQUIRED
    # half-open connections: one silent, one with half a frame, on both ports
    silent = [_connect(node) for _ in range(5)]
    half = _connect(node)
    half.sendall(encode_frame(_hello(node, "half"), 1)[:7])
    http_half = socket.create_connection(("127.0.0.1", node.cfgs["n1"].http_port), timeout=10)
    http_half.sendall(b"POST /api/v1/topics HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    http_garbage = socket.create_connection(("127.0.0.1", node.cfgs["n1"].http_port), timeout=10)
    http_garbage.sendall(bytes(range(256)) * 4)
    # and the admin (cluster) port gets garbage too
    admin = socket.create_connection(("127.0.0.1", node.cfgs["n1"].admin_port), timeout=10)
    admin.sendall(b"\x00garbage\xff" * 100)
    try:
        _healthy(node)
        status, body = node.call("n1", "POST", f"/produce/{TOPIC}", {"records": [{"value": "still here"}]})
        assert status == 200, body
    finally:
        for s in silent + [half, http_half, http_garbage, admin]:
            s.close()
    _healthy(node)


def test_http_errors_are_json(node: RealCluster) -> None:
    status, body = node.call("n1", "POST", f"/produce/{TOPIC}", {"records": []})
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = node.call("n1", "POST", f"/produce/{TOPIC}", {"records": [{"value": "x"}], "level": "most"})
    assert status == 400
    status, body = node.call("n1", "GET", "/nope")
    assert status == 404 and "error" in body


def test_sigterm_stops_every_process_and_restart_keeps_data(tmp_path) -> None:
    c = RealCluster(tmp_path, n=1)
    try:
        c.start()
        c.create_topic("n1", "t/p/c/keep", shards=1)
        status, body = c.call("n1", "POST", "/produce/t/p/c/keep",
                              {"records": [{"value": f"v{i}"} for i in range(50)], "level": "one"})
        assert status == 200, body
        pids = c.node_pids("n1")
        assert len(pids) >= 6  # launcher, admin, logger, agency peer, supervisor, node, dispatcher, replica
        assert c.stop("n1") == 0
        deadline = time.monotonic() + 10
        while any(process_exists(p) and not _zombie(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in pids if process_exists(p) and not _zombie(p)] == []
        c.start("n1")
        c.wait_leaders("n1", "t/p/c/keep")
        got = c.get("n1", "/fetch/t/p/c/keep?shard=0")
        assert [r["value"] for r in got["records"]] == [f"v{i}" for i in range(50)]
        ident = json.loads((tmp_path / "n1" / "identity.json").read_text())
        assert ident["cluster_id"] == "c-test"
    finally:
        assert c.stop_all() == []


def test_refuses_data_dir_of_another_cluster(tmp_path) -> None:
    c = RealCluster(tmp_path, n=1)
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / "identity.json").write_text(json.dumps({"node_id": "n1", "cluster_id": "c-other"}))
    from runtime.local_cluster import spawn_node

    proc = spawn_node(c.cfgs["n1"], tmp_path / "out.txt")
    assert proc.wait(60) != 0
    assert "belongs to cluster 'c-other'" in (tmp_path / "out.txt").read_text()


def test_a_new_node_joins_a_running_cluster_and_takes_replicas(tmp_path) -> None:
    from runtime.client import Client, Producer

    c = RealCluster(tmp_path, n=1)
    try:
        c.start()
        c.create_topic("n1", "t/p/c/before", shards=1)
        c.add_node("n2", join="n1")  # no cluster id, no initial nodes: like --join HOST:PORT
        c.start("n2")
        status = c.get("n2", "/status")
        assert status["cluster_id"] == c.get("n1", "/status")["cluster_id"]
        assert status["agency"]["leader"] == "n1"
        assert status["agency"]["voters"] == ["n1"] and status["agency"]["learners"] == ["n2"]
        assert {n["node_id"] for n in c.get("n1", "/nodes") if n["alive"]} == {"n1", "n2"}
        assert [t["name"] for t in c.get("n2", "/topics")] == ["t/p/c/before"]  # the metadata replicated
        c.create_topic("n1", "t/p/c/after", shards=2, rf=2)
        shards = c.wait_leaders("n2", "t/p/c/after")
        assert all(set(s["replicas"]) == {"n1", "n2"} for s in shards)
        with Producer(c.client("n2"), level="all", **c.auth) as p:
            futures = [p.send("t/p/c/after", b"v%d" % i) for i in range(100)]
            p.flush()
            assert all(f.exception() is None for f in futures)
        with Client(c.client("n1"), **c.auth) as cl:
            values = {r.payload for s in (0, 1) for r in cl.fetch_all("t/p/c/after", s)}
        assert values == {b"v%d" % i for i in range(100)}
        # a restart of the joined node keeps its membership
        assert c.stop("n2") == 0
        c.start("n2")
        assert c.get("n2", "/status")["agency"]["learners"] == ["n2"]
        assert {n["node_id"]: n["agency"] for n in c.get("n1", "/nodes")} == {"n1": "voter", "n2": "learner"}
        # promote it (asked through the learner itself: its agency peer
        # passes the change on to the leader); a voter cannot be promoted again
        status, body = c.call("n2", "POST", "/nodes/n2/promote")
        assert status == 200 and body == {"node_id": "n2", "role": "voter", "voters": ["n1", "n2"],
                                          "learners": []}, body
        status, body = c.call("n1", "POST", "/nodes/n2/promote")
        assert status == 409 and "already an agency voter" in body["error"]["message"], body
        assert c.call("n1", "POST", "/nodes/n7/promote")[0] == 404
        for nid in ("n1", "n2"):
            agency = c.get(nid, "/status")["agency"]
            assert (agency["voters"], agency["learners"]) == (["n1", "n2"], []), (nid, agency)
        c.create_topic("n2", "t/p/c/voters", shards=1, rf=2)  # an agency write needs both voters now
        # a restarted voter re-joins as what it is: a voter
        assert c.stop("n2") == 0
        c.start("n2")
        agency = c.get("n2", "/status")["agency"]
        assert (agency["voters"], agency["learners"]) == (["n1", "n2"], [])
        assert "t/p/c/voters" in [t["name"] for t in c.get("n1", "/topics")]
    finally:
        assert c.stop_all() == []


def _wait_for(what, probe, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_nodes_find_each_other_through_a_convention_with_several_leaders(tmp_path) -> None:
    from runtime.local_cluster import spawn_node

    c = RealCluster(tmp_path, n=3)
    try:
        c.start()
        leaders = [f"127.0.0.1:{c.cfgs[n].admin_port}" for n in ("n1", "n2", "n3")]
        for nid in ("n1", "n2", "n3"):  # every voter is a potential leader and hears of the others
            d = _wait_for(f"{nid}'s convention", lambda nid=nid: (
                lambda d: d if len(d["convention"]) == 2 else None)(c.get(nid, "/cluster/directory")))
            assert d["convention_leaders"] == leaders
            assert d["convention"] == sorted({"n1", "n2", "n3"} - {nid})
        # the first leader dies; a new node joins through n3 and the other
        # leaders still hear of it, and it of them: no single point of failure
        c.kill9("n1")
        c.add_node("n4", join="n3")
        c.start("n4")
        for nid in ("n2", "n3"):
            _wait_for(f"n4 in {nid}'s convention", lambda nid=nid: "n4" in c.get(nid, "/cluster/directory")["convention"])
        d4 = _wait_for("n4's convention", lambda: (
            lambda d: d if {"n2", "n3"} <= set(d["convention"]) else None)(c.get("n4", "/cluster/directory")))
        assert d4["convention_leaders"] == leaders and "n1" not in d4["convention"]
        # a node without the cluster's secret is never heard of: its frames are dropped
        x2 = NodeConfig(node_id="x2", data_dir=str(tmp_path / "x2"), client_port=free_port(),
                        http_port=free_port(), admin_port=free_port(), mqtt_port=free_port(),
                        convention_leaders=[leaders[1]])
        c.cfgs["x2"] = x2
        c.procs["x2"] = spawn_node(x2, tmp_path / "x2.out")
        n2_log = Path(c.cfgs["n2"].data_dir) / "logs" / "thespian.log"
        _wait_for("x2's frames dropped by n2", lambda: n2_log.exists() and "wrong signature" in n2_log.read_text())
        d2 = c.get("n2", "/cluster/directory")
        assert "x2" not in d2["convention"] and "x2" not in d2["convention_refused"]
        # a node of another cluster (given this cluster's secret by mistake) that registers with our
        # convention is refused by its cluster id, and not listed
        x1 = NodeConfig(node_id="x1", cluster_id="c-other", data_dir=str(tmp_path / "x1"), client_port=free_port(),
                        http_port=free_port(), admin_port=free_port(), mqtt_port=free_port(),
                        convention_leaders=[leaders[1]], cluster_secret_file=c.secret_file)
        c.cfgs["x1"] = x1
        c.procs["x1"] = spawn_node(x1, tmp_path / "x1.out")
        _wait_for("x1 refused", lambda: "x1" in c.get("n2", "/cluster/directory")["convention_refused"])
        d2 = c.get("n2", "/cluster/directory")
        assert "x1" not in d2["convention"] and "x1" not in {n["node_id"] for n in d2["nodes"]}
        # and x1 refuses n2: it hears of its leader through its own convention update, a moment later
        _wait_for("n2 refused by x1", lambda: "n2" in c.get("x1", "/cluster/directory")["convention_refused"])
    finally:
        assert c.stop_all() == []


def test_a_new_node_with_no_reachable_seed_does_not_start_a_cluster_of_its_own(tmp_path) -> None:
    from runtime.local_cluster import shared_secret_file, spawn_node

    cfg = NodeConfig(node_id="n9", data_dir=str(tmp_path / "n9"), client_port=free_port(), http_port=free_port(),
                     admin_port=free_port(), mqtt_port=free_port(), peers=[f"127.0.0.1:{free_port()}"], boot_timeout_s=2,
                     cluster_secret_file=shared_secret_file(tmp_path))
    proc = spawn_node(cfg, tmp_path / "out.txt")
    assert proc.wait(60) != 0
    assert "not starting a cluster of its own" in (tmp_path / "out.txt").read_text()
    from runtime.agency_local import pid_listening_on

    assert pid_listening_on(cfg.admin_port) is None  # its Thespian admin went with it (it once lived on)


def test_a_node_that_joins_without_the_cluster_secret_is_told_where_to_get_it(tmp_path) -> None:
    from runtime.local_cluster import spawn_node

    cfg = NodeConfig(node_id="n9", data_dir=str(tmp_path / "n9"), client_port=free_port(), http_port=free_port(),
                     admin_port=free_port(), mqtt_port=free_port(), peers=[f"127.0.0.1:{free_port()}"])
    proc = spawn_node(cfg, tmp_path / "out.txt")
    assert proc.wait(60) != 0
    out = (tmp_path / "out.txt").read_text()
    assert "needs the cluster's secret" in out and "--cluster-secret-file" in out
