"""Three real node processes: 100,000 messages at quorum through a node that
leads nothing, kill -9 of a shard leader under load, a full restart.

The tests share one cluster and run in file order (each builds on the
state the previous one left).  Every process is started here and stopped
here, by PID."""
from __future__ import annotations

import threading
import time

import pytest

from runtime.realcluster import RealCluster
from runtime.client import Client, Consumer, Producer

pytestmark = pytest.mark.realnet

BULK = "acme/load/web/bulk"
FAIL = "acme/load/web/failover"
N_BULK = 100_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from RealCluster.running(tmp_path_factory.mktemp("three"), n=3)


def _read_all(c: RealCluster, via: str, topic: str, shards: int) -> dict[int, list[bytes]]:
    out = {}
    with Client(c.client(via), **c.auth) as cl:
        for s in range(shards):
            out[s] = [r.payload for r in cl.fetch_all(topic, s)]
    return out


def test_exactly_one_node_of_a_new_cluster_made_the_first_admin(cluster: RealCluster) -> None:
    from pathlib import Path

    made = [nid for nid, cfg in cluster.cfgs.items() if (Path(cfg.data_dir) / "admin.password").exists()]
    assert len(made) == 1, made
    assert not [p for cfg in cluster.cfgs.values() for p in Path(cfg.data_dir).glob("admin.password*")
                if p.name != "admin.password"]
    for nid in cluster.cfgs:  # and every node knows it
        assert cluster.get(nid, "/whoami")["name"] == "admin"


def test_100k_messages_at_quorum_through_a_node_that_leads_no_shard(cluster: RealCluster) -> None:
    cluster.create_topic("n1", BULK, shards=2, rf=3)
    shards = cluster.wait_leaders("n1", BULK)
    leaders = {s["leader"] for s in shards}
    via = next(n for n in sorted(cluster.cfgs) if n not in leaders)
    values = [b"%06d" % i + b"." * 94 for i in range(N_BULK)]  # 100-byte messages
    with Producer(cluster.client(via), level="quorum", linger_ms=5, **cluster.auth) as p:
        futures = [p.send(BULK, v) for v in values]
        p.flush()
        metas = [f.result(timeout=60) for f in futures]
    assert all(m.level == "quorum" for m in metas)
    by_shard: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
    for m, v in zip(metas, values):
        by_shard[m.shard].append((m.offset, v))
    for s, rows in by_shard.items():
        offsets = [o for o, _ in rows]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)  # send order = shard order
    # read back through the same node, shard by shard, in offset order
    back = _read_all(cluster, via, BULK, 2)
    for s in (0, 1):
        assert back[s] == [v for _, v in by_shard[s]]
    # and a durable subscription through that node delivers every record, each shard in offset order
    first_seen: dict[int, list[int]] = {0: [], 1: []}
    got: dict[int, bytes] = {}
    with Consumer(cluster.client(via), BULK, "audit", mode="exclusive", **cluster.auth) as cons:
        deadline = time.monotonic() + 120
        while len(got) < N_BULK and time.monotonic() < deadline:
            msg = cons.poll(timeout_s=5)
            if msg is None:
                continue
            if not msg.redelivery:
                first_seen[msg.shard].append(msg.offset)
            got[msg.offset * 2 + msg.shard] = msg.value
            msg.ack()
        cons.flush_acks(10)
    assert len(got) == N_BULK
    for s in (0, 1):
        assert first_seen[s] == [o for o, _ in by_shard[s]]  # each shard in order, nothing missing
    assert sorted(got.values()) == values
    subs = cluster.get(via, f"/subscriptions/{BULK}")
    assert {(x["subscription"], x["shard"]) for x in subs} == {("audit", 0), ("audit", 1)}


def test_kill9_of_a_shard_leader_under_quorum_writes_loses_and_duplicates_nothing(cluster: RealCluster) -> None:
    cluster.create_topic("n1", FAIL, shards=1, rf=3)
    leader = cluster.wait_leaders("n1", FAIL)[0]["leader"]
    via = next(n for n in sorted(cluster.cfgs) if n != leader)
    sent: list[bytes] = []
    errors: list[BaseException] = []
    futures = []
    stop = threading.Event()

    def produce() -> None:
        with Producer(cluster.client(via), level="quorum", linger_ms=2, delivery_timeout_s=60, **cluster.auth) as p:
            i = 0
            while not stop.is_set():
                v = b"m%07d" % i
                sent.append(v)
                futures.append(p.send(FAIL, v))
                i += 1
                if i % 200 == 0:
                    time.sleep(0.01)
            p.flush()

    t = threading.Thread(target=produce)
    t.start()
    try:
        time.sleep(2.0)
        before = len(sent)
        killed = cluster.kill9(leader)
        assert killed
        t_kill = time.monotonic()
        new = cluster.wait_leaders(via, FAIL, exclude=leader, timeout_s=30)[0]
        failover_s = time.monotonic() - t_kill
        assert new["leader"] != leader
        time.sleep(2.0)
    finally:
        stop.set()
        t.join(120)
    assert not t.is_alive()
    for f in futures:
        try:
            f.result(timeout=60)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)
    assert errors == []
    assert len(sent) > before  # writes went on after the kill
    log = _read_all(cluster, via, FAIL, 1)[0]
    assert log == sent  # every acknowledged message, once, in order
    print(f"failover after kill -9 of {leader}: new leader {new['leader']} seen after {failover_s:.2f} s")
    # the killed node restarts from its data directory, rejoins and catches up
    cluster.start(leader)
    deadline = time.monotonic() + 60
    shard = None
    while time.monotonic() < deadline:
        shard = cluster.get(via, f"/shards?topic={FAIL}")[0]
        if leader in shard["in_sync"] and shard["end_offset"] == shard["high_watermark"]:
            break
        time.sleep(0.5)
    assert leader in shard["in_sync"], shard
    with Client(cluster.client(leader), **cluster.auth) as cl:
        assert [r.payload for r in cl.fetch_all(FAIL, 0)] == sent


def test_full_restart_keeps_every_acknowledged_message(cluster: RealCluster) -> None:
    before = {BULK: _read_all(cluster, "n1", BULK, 2), FAIL: _read_all(cluster, "n1", FAIL, 1)}
    assert sum(len(v) for v in before[BULK].values()) == N_BULK
    assert cluster.stop_all() == []
    cluster.start()
    for topic, shards in ((BULK, 2), (FAIL, 1)):
        cluster.wait_leaders("n2", topic)
        # a new leader's high watermark covers the old log once a quorum holds its epoch's first batch
        deadline = time.monotonic() + 30
        while (after := _read_all(cluster, "n2", topic, shards)) != before[topic] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert after == before[topic]
