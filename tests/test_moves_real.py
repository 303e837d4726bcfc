"""Shard moves, drain and removal on real node processes: three nodes and a
fourth that joins; the shard's leader moves to the new node while a
producer writes at quorum and a subscription consumes, then the new node is
drained and removed; a fifth node joins and ``brokerctl cluster
rebalance`` spreads replicas and leaders onto it.  No acknowledged record
is lost and the consumer reads every one; a node a replica moved away from
gives its disk space back.  Every process is started here and stopped
here, by PID."""
from __future__ import annotations

import os
import threading
import time

import pytest
from typer.testing import CliRunner

from runtime.client import Client, Consumer, Producer
from runtime.realcluster import RealCluster

pytestmark = pytest.mark.realnet

TOPIC = "acme/ops/web/moving"
SPREAD = "acme/ops/web/spread"  # 4 shards x 2 replicas, placed before the new nodes join


def _wait(what: str, fn, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def _moves(c: RealCluster, via: str) -> dict | None:
    r = c.get(via, "/moves")
    return r if isinstance(r, dict) and "moves" in r else None  # None: no answer this time (a busy node)


def _move(c: RealCluster, via: str, shard: str) -> dict | None:
    r = _moves(c, via)
    return next((m for m in r["moves"] if m["shard"] == shard), None) if r else None


def _ask(c: RealCluster, via: str, method: str, path: str, body=None) -> tuple[int, dict]:
    """``c.call``, asked again while the answer is 503 (a request that timed
    out inside a busy cluster: moves and drains are idempotent to ask for)."""
    deadline = time.monotonic() + 90
    while True:
        status, out = c.call(via, method, path, body)
        if status != 503 or time.monotonic() > deadline:
            return status, out
        time.sleep(1.0)


def _shard_dir(c: RealCluster, node: str, shard: str):
    return c.base_dir / node / f"shard_{shard.replace('/', '_')}"


def _rebalance(c: RealCluster, via: str, *args: str) -> tuple[int, str]:
    from runtime.cli import app

    r = CliRunner().invoke(app, ["cluster", "rebalance", *args, "--url", f"http://127.0.0.1:{c.cfgs[via].http_port}",
                                 "--user", "admin", "--password", c.password or "", "--wait-timeout", "300"],
                           env={"COLUMNS": "200"})
    return r.exit_code, r.output


def test_move_the_leader_to_a_joined_node_drain_and_remove_it_under_quorum_writes(tmp_path) -> None:
    c = RealCluster(tmp_path, n=3, log_level=os.environ.get("CHORUS_TEST_LOG_LEVEL", "WARNING"))
    consumed = threading.Event()
    sent: list[bytes] = []
    futures: list = []
    stop = threading.Event()
    try:
        c.start()
        # a busy machine may let the first attempt time out (503): ask again; 409 means it was made
        _wait("the topic", lambda: c.call("n1", "POST", "/topics", {"name": TOPIC, "shards": 1,
                                                                      "replication_factor": 3})[0] in (201, 409))
        c.wait_leaders("n1", TOPIC, timeout_s=120)
        _wait("the second topic", lambda: c.call("n1", "POST", "/topics", {"name": SPREAD, "shards": 4,
                                                                             "replication_factor": 2})[0] in (201, 409))
        c.wait_leaders("n1", SPREAD, timeout_s=120)
        c.add_node("n4", join="n1")
        c.start("n4")
        shard = f"{TOPIC}#0"
        leader = c.wait_leaders("n1", TOPIC)[0]["leader"]
        via = next(n for n in ("n1", "n2", "n3") if n != leader)

        def produce() -> None:
            with Producer(c.client(via), level="quorum", linger_ms=2, delivery_timeout_s=120, **c.auth) as p:
                i = 0
                while not stop.is_set():
                    v = b"m%07d" % i
                    sent.append(v)
                    futures.append(p.send(TOPIC, v))
                    i += 1
                    if i % 100 == 0:
                        time.sleep(0.02)
                p.flush()

        got: dict[int, bytes] = {}

        def consume() -> None:
            with Consumer(c.client(via), TOPIC, "audit", mode="exclusive", **c.auth) as cons:
                while not consumed.is_set():
                    msg = cons.poll(timeout_s=1)
                    if msg is None:
                        continue
                    got[msg.offset] = msg.value
                    msg.ack()
                cons.flush_acks(10)

        t = threading.Thread(target=produce)
        tc = threading.Thread(target=consume)
        t.start()
        tc.start()
        time.sleep(1.5)

        # a node that holds data refuses to be removed, and says why
        status, body = _ask(c, via, "DELETE", f"/nodes/{leader}")
        assert status == 409 and "still holds" in body["error"]["message"] and "drain" in body["error"]["message"], body
        # bad requests are refused clearly
        status, body = _ask(c, via, "POST", "/shards/move", {"topic": TOPIC, "shard": 0, "from": "n4", "to": "n1"})
        assert status == 409 and "holds no replica" in body["error"]["message"], body

        # 1. the leader's replica moves to the new node while writes go on
        status, body = _ask(c, via, "POST", "/shards/move", {"topic": TOPIC, "shard": 0, "from": leader, "to": "n4"})
        # 409: an earlier ask that timed out (503) had started it
        assert status == 202 or (status == 409 and (_move(c, via, shard) or {}).get("to") == "n4"), body
        done = _wait("the move", lambda: (lambda m: m if m and m["phase"] in ("done", "rolled_back") else None)(
            _move(c, via, shard)))
        assert done["phase"] == "done", done
        # the node asked reads the plans on its next poll: wait for it to show the move's result
        want = sorted({"n1", "n2", "n3", "n4"} - {leader})
        s = _wait("the plan after the move", lambda: (lambda x: x if x["leader"] == "n4" and sorted(x["replicas"])
                                                       == want else None)(c.wait_leaders(via, TOPIC)[0]), 30)
        assert s["leader"] == "n4" and sorted(s["replicas"]) == want, s
        n_after_move = len(sent)
        # the node the replica moved away from deletes its data; the target holds it
        _wait("the moved-away replica's data deleted", lambda: not _shard_dir(c, leader, shard).exists(), 60)
        assert _shard_dir(c, "n4", shard).is_dir()

        # 2. drain the new node: its replica (and the leadership) moves off it
        status, body = _ask(c, via, "POST", "/nodes/n4/drain")
        assert status == 202, body
        try:
            _wait("n4 drained", lambda: (_moves(c, via) or {"replicas": {"n4": -1}})["replicas"].get("n4", 0) == 0 and
                  (lambda m: m and m["phase"] == "done" and m["from"] == "n4")(_move(c, via, shard)))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; moves {_moves(c, via)}; shards {c.get(via, '/shards')}") from None
        s = _wait("the plan after the drain", lambda: (lambda x: x if "n4" not in x["replicas"] and x["leader"] != "n4"
                                                        else None)(c.wait_leaders(via, TOPIC)[0]), 30)
        assert "n4" not in s["replicas"] and s["leader"] != "n4" and len(s["replicas"]) == 3, s
        # nothing new is placed on a draining node
        status, body = _ask(c, via, "POST", "/shards/move", {"topic": TOPIC, "shard": 0,
                                                            "from": s["replicas"][0], "to": "n4"})
        assert status == 409 and "draining" in body["error"]["message"], body

        _wait("the drained node's data deleted", lambda: not _shard_dir(c, "n4", shard).exists(), 60)

        # 3. remove it: out of the agency, marked removed
        status, body = _ask(c, via, "DELETE", "/nodes/n4")
        assert status == 200 and body["removed"] and "n4" not in body["voters"] + body["learners"], body
        # the asked node's agency peer applies the removal a moment later
        _wait("n4 out of the agency as the asked node sees it", lambda: (lambda st: isinstance(st, dict) and "n4" not in
              st["agency"]["voters"] + st["agency"]["learners"])(c.get(via, "/status")), 30)

        c.stop("n4")  # a removed node is shut down for good

        # 4. a fifth node joins; rebalance spreads replicas and leaders onto it
        c.add_node("n5", join=via)
        c.start("n5")
        _wait("n5 alive", lambda: any(n["node_id"] == "n5" and n.get("alive") for n in c.get(via, "/nodes")))
        code, out = _rebalance(c, via, "--dry-run")
        assert code == 0 and "Plan:" in out and "n5" in out, out
        assert not any(_shard_dir(c, "n5", f"{SPREAD}#{i}").exists() for i in range(4))  # a dry run moves nothing
        code, out = _rebalance(c, via, "--parallel", "2")
        assert code == 0 and "moved" in out, out

        def spread() -> dict | None:
            ss = [x for x in c.get(via, "/shards") if x["replicas"]]
            reps = {n: sum(n in x["replicas"] for x in ss) for n in ("n1", "n2", "n3", "n5")}
            leads = {n: sum(x.get("leader") == n for x in ss) for n in reps}
            return {"replicas": reps, "leaders": leads} if max(reps.values()) - min(reps.values()) <= 1 else None
        load = _wait("the plan after the rebalance", spread, 30)
        assert load["replicas"]["n5"] >= 2 and load["leaders"]["n5"] >= 1, load
        code, out = _rebalance(c, via, "--dry-run")
        assert code == 0 and "balanced: nothing to move" in out, out
        time.sleep(1.0)
        stop.set()
        t.join(120)
        assert not t.is_alive()
        errors = []
        for f in futures:
            try:
                f.result(timeout=120)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)
        assert errors == []
        assert len(sent) > n_after_move  # writes went on through the move
        with Client(c.client(via), **c.auth) as cl:
            log = [r.payload for r in cl.fetch_all(TOPIC, 0)]
        assert log == sent  # every acknowledged record, once, in order
        _wait("the consumer to read everything", lambda: len(got) >= len(sent), timeout_s=120)
        consumed.set()
        tc.join(60)
        assert sorted(got.values()) == sent
    finally:
        stop.set()
        consumed.set()
        assert c.stop_all() == []
