"""Shard groups by time on a real three-node cluster: truncate-shards opens
a second group, a history query spans both and a consumer subscribed
before the truncate reads both groups in order; retention drops a whole
group from every replica and the agency and gives its disk space back."""
from __future__ import annotations

import random
import time
import urllib.parse
from pathlib import Path

import pytest

from protocol.frames import NO_SHARD_ID
from runtime import client_conn
from runtime.client import Client, Consumer, Producer
from runtime.realcluster import RealCluster

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from RealCluster.running(tmp_path_factory.mktemp("groups"), n=3)


def _wait(what: str, check, timeout_s: float = 60.0):
    """``check()``'s first true answer, polled until ``timeout_s``."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline and not (last := check()):
        time.sleep(0.2)
    if last:
        return last
    raise TimeoutError(f"{what} not seen in {timeout_s}s (last: {last!r})")


def _groups(c: RealCluster, nid: str, topic: str) -> list[dict]:
    status, body = c.call(nid, "GET", f"/topics/{topic}")
    assert status == 200, body
    return body["groups"]


def _shard_dirs(c: RealCluster, topic: str, shard_id: int) -> list[Path]:
    name = f"shard_{topic.replace('/', '_')}#{shard_id}"
    return [p for nid in sorted(c.cfgs) for p in Path(c.cfgs[nid].data_dir).glob(name + "*")]


def _bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def test_truncate_shards_then_a_query_across_two_groups(cluster: RealCluster) -> None:
    topic = "grp/p/c/events"
    status, body = cluster.call("n1", "POST", "/topics", {"name": topic, "shards": 2, "replication_factor": 3,
                                                           "shard_group_ms": HOUR_MS})
    assert status == 201, body
    assert body["shard_group_ms"] == HOUR_MS
    cluster.wait_leaders("n1", topic)
    first = _wait("the first group", lambda: _groups(cluster, "n1", topic))
    assert [g["shards"] for g in first] == [[0, 1]]

    consumer = Consumer(cluster.client("n2"), topic, "audit", consumer_id="audit-1", **cluster.auth)
    with Producer(cluster.client("n1"), level="quorum", linger_ms=2, **cluster.auth) as p:
        futs = [p.send(topic, b"a%04d" % i, key=b"k%d" % (i % 5)) for i in range(200)]
        p.flush()
        assert all(f.result(30) for f in futs)
    t_mid = int(time.time() * 1000)

    status, body = cluster.call("n2", "POST", f"/topics/{topic}/truncate-shards")
    assert status == 200, body
    def two_groups():
        g = _groups(cluster, "n1", topic)
        return g if len(g) == 2 else None

    groups = _wait("a second group", two_groups)
    assert groups[0]["end_ms"] == groups[1]["start_ms"] and groups[1]["shards"] == [2, 3], groups
    cluster.wait_leaders("n1", topic)
    # every node's view has the second group before the next writes
    for nid in sorted(cluster.cfgs):
        _wait(f"{nid} sees the second group", lambda nid=nid: len(_groups(cluster, nid, topic)) == 2)

    with Producer(cluster.client("n3"), level="quorum", linger_ms=2, **cluster.auth) as p:
        futs = [p.send(topic, b"b%04d" % i, key=b"k%d" % (i % 5)) for i in range(200)]
        p.flush()
        assert all(f.result(30) for f in futs)

    # the consumer subscribed before the truncate reads the first group's
    # shard of each index to its end, then the second group's: every
    # record, in order per shard index (a key's records stay in order)
    got: dict[int, list[bytes]] = {}
    deadline = time.monotonic() + 90
    try:
        while sum(len(v) for v in got.values()) < 400 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None:
                if not msg.redelivery or msg.value not in got.get(msg.shard, []):
                    got.setdefault(msg.shard, []).append(msg.value)
                msg.ack()
    finally:
        consumer.close()
    values = [v for vs in got.values() for v in vs]
    assert sorted(values) == sorted([b"a%04d" % i for i in range(200)] + [b"b%04d" % i for i in range(200)]), (
        len(values), sorted(set(values))[-3:])
    for index, vs in got.items():
        assert vs == sorted(vs), (index, vs)  # the a-records (first group) before the b-records, each in order
    assert consumer.resets == []

    now = int(time.time() * 1000) + 1
    with Client(cluster.client("n2"), **cluster.auth) as cl:
        got = list(cl.query_iter(topic, 0, now, page=64))
        # the binary protocol lists both groups and reads the older one's shards
        gms = cl.groups(topic)
        assert [(g.group, list(g.shard_ids)) for g in gms] == [(groups[0]["id"], [0, 1]), (groups[1]["id"], [2, 3])]
        assert all(s.leader for g in gms for s in g.shards), gms
        old = [r.payload for i in range(2) for r in cl.fetch_all(topic, i, group=gms[0].group)]
        assert sorted(old) == [b"a%04d" % i for i in range(200)]
        assert {r.payload[:1] for r in cl.fetch(topic, 0).records} <= {b"b"}  # no group: the current one
    # ... and so does the HTTP API
    status, body = cluster.call("n1", "GET", f"/fetch/{topic}?shard=1&group={groups[0]['id']}")
    assert status == 200 and body["shard_id"] == 1 and body["records"], body
    assert all(r["value"].startswith("a") for r in body["records"]), body["records"][:3]
    status, body = cluster.call("n1", "GET", f"/fetch/{topic}?shard=1&group=999")
    assert status == 404 and "no live shard group 999" in body["error"]["message"], body
    assert sorted(r.value for r in got) == sorted([b"a%04d" % i for i in range(200)] +
                                                  [b"b%04d" % i for i in range(200)])
    assert [(r.timestamp_ms, r.shard, r.offset) for r in got] == sorted((r.timestamp_ms, r.shard, r.offset)
                                                                          for r in got)
    assert {r.shard for r in got if r.value.startswith(b"a")} <= {0, 1}
    assert {r.shard for r in got if r.value.startswith(b"b")} <= {2, 3}
    # a range within the first group only asks ... and finds only its records
    status, body = cluster.call("n3", "GET", f"/query/{topic}?" + urllib.parse.urlencode(
        {"from": 0, "to": t_mid, "limit": 1000}))
    assert status == 200, body
    assert sorted(r["value"] for r in body["records"]) == sorted("a%04d" % i for i in range(200))
    # a topic without shard groups refuses truncate-shards with a clear error
    cluster.create_topic("n1", "grp/p/c/plain", shards=1, rf=3)
    status, body = cluster.call("n1", "POST", "/topics/grp/p/c/plain/truncate-shards")
    assert status == 400 and "no shard groups" in body["error"]["message"], body


def test_retention_drops_a_whole_group_and_gives_its_disk_space_back(cluster: RealCluster) -> None:
    topic = "grp/p/c/metrics"
    status, body = cluster.call("n1", "POST", "/topics", {"name": topic, "shards": 1, "replication_factor": 3,
                                                           "shard_group_ms": 10_000, "retention_ms": 1000})
    assert status == 201, body
    cluster.wait_leaders("n1", topic)

    def roomy_group():  # the current group, if it has at least 2 s to go
        now = int(time.time() * 1000)
        return next((g for g in _groups(cluster, "n1", topic) if g["start_ms"] <= now and g["end_ms"] - now >= 2000),
                    None)

    g0 = _wait("a current group with time to write", roomy_group, timeout_s=90)
    cluster.wait_leaders("n1", topic)
    # a consumer that receives but never acknowledges: retention drops the
    # group under its cursor, and it is told (like Kafka's offset reset)
    stuck = Consumer(cluster.client("n1"), topic, "stuck", consumer_id="stuck-1", **cluster.auth)
    rng = random.Random(7)
    value_bytes = 2048  # random: RocksDB cannot compress them away
    with Producer(cluster.client("n1"), level="quorum", linger_ms=5, **cluster.auth) as p:
        futs = []
        while int(time.time() * 1000) < g0["end_ms"] - 500 and len(futs) < 3000:
            futs += [p.send(topic, rng.randbytes(value_bytes)) for _ in range(100)]
            p.flush()
        assert all(f.result(30) for f in futs)
    written = len(futs)
    assert written >= 300, written
    dirs = _shard_dirs(cluster, topic, g0["shards"][0])
    assert len(dirs) == 6, dirs  # the log and the metadata store on each of the 3 nodes
    before = _bytes(dirs)
    assert before >= 3 * written * value_bytes // 2, before
    # dropped once end + retention + slack have passed: from the agency...
    _wait("the first group to be dropped",
          lambda: all(g["id"] != g0["id"] for g in _groups(cluster, "n1", topic)), timeout_s=60)
    status, shards = cluster.call("n1", "GET", f"/shards?topic={topic}")
    assert status == 200 and all(s["index"] not in g0["shards"] for s in shards), shards
    # ... and from every replica's disk
    _wait("the dropped group's databases to be deleted", lambda: not any(p.exists() for p in dirs), timeout_s=60)
    try:
        reset = _wait("the stuck consumer's reset notice", lambda: stuck.resets, timeout_s=30)[0]
    finally:
        stuck.close()
    assert reset.shard == 0 and reset.dropped_shard_id <= g0["shards"][0] < reset.next_shard_id, reset
    assert "dropped by retention" in reset.reason, reset

    def resets_counted() -> float:
        n = 0.0
        for nid in sorted(cluster.cfgs):
            status, _h, body = cluster.http_raw(nid, "/metrics")
            assert status == 200, body[:300]
            n += sum(float(line.split()[-1]) for line in body.decode().splitlines()
                     if line.startswith("chorus_subscription_resets_total"))
        return n

    assert _wait("the reset counted in /metrics", resets_counted, timeout_s=30) >= 1

    def reset_logged() -> list[str]:
        return [line for nid in sorted(cluster.cfgs)
                for line in (Path(cluster.cfgs[nid].data_dir) / "logs" / "actors.log").read_text().splitlines()
                if "subscription reset" in line and "subscription=stuck" in line]

    assert "level=warning" in _wait("the reset in a node's log", reset_logged, timeout_s=30)[0]
    after = _bytes(dirs)
    print(f"\nretention: group {g0['id']} ({written} records of {value_bytes} B) held {before} bytes on 3 nodes; "
          f"after the drop {after} bytes")
    assert after == 0


def _truncate(c: RealCluster, topic: str, newest: int) -> list[dict]:
    """truncate-shards, then wait until every node sees the new group (and it has leaders)."""
    def truncated():  # 503 while the supervisor changes the topic's groups (a drop for size): try again
        status, body = c.call("n1", "POST", f"/topics/{topic}/truncate-shards")
        assert status in (200, 503), (status, body)
        return status == 200

    _wait("truncate-shards to be accepted", truncated, timeout_s=60)
    for nid in sorted(c.cfgs):  # (retention may drop older groups meanwhile: look at the newest id)
        _wait(f"{nid} sees a group after {newest}",
              lambda nid=nid: _groups(c, nid, topic)[-1]["id"] > newest, timeout_s=60)
    c.wait_leaders("n1", topic)
    return _groups(c, "n1", topic)


def test_retention_by_size_drops_the_oldest_groups_and_keeps_the_rest_exactly(cluster: RealCluster,
                                                                            monkeypatch) -> None:
    """A topic limited to 1 MiB per shard index: two closed groups of about
    900 KiB, two of about 150 KiB and an open one.  The supervisor drops the
    oldest closed groups until at most 1 MiB is left: g0 and g1 (with g1
    still there the index holds ~1.2 MiB; without it ~0.3 MiB -- so the
    outcome does not hang on how exactly RocksDB counts its bytes), from
    the agency and from every node's disk; g2, g3 and the open group stay,
    and reads return exactly their records.  A consumer that never
    acknowledges gets its SubscriptionReset, and so does -- when it comes
    back -- a subscription that had no consumer attached when its group
    was dropped.  The consumer that comes back speaks client protocol
    version 1 (no shard ids in deliveries and acks): it still walks the
    groups, acknowledging as it goes.
    """
    topic = "grp/p/c/sized"
    limit = 1 << 20
    status, body = cluster.call("n1", "POST", "/topics", {"name": topic, "shards": 1, "replication_factor": 3,
                                                           "shard_group_ms": HOUR_MS, "retention_bytes": limit})
    assert status == 201, body
    assert body["retention_bytes"] == limit, body
    cluster.wait_leaders("n1", topic)
    _wait("the first group", lambda: _groups(cluster, "n1", topic))
    stuck = Consumer(cluster.client("n2"), topic, "sized-stuck", consumer_id="sized-stuck-1", **cluster.auth)
    # a consumer that reads a little of g0 and leaves: its group is dropped
    # while no consumer of its subscription is attached
    away = Consumer(cluster.client("n3"), topic, "sized-away", consumer_id="sized-away-1", **cluster.auth)
    rng = random.Random(11)
    value_bytes, counts = 2048, [450, 450, 75, 75, 10]  # random values: RocksDB cannot compress them
    written: dict[int, list[bytes]] = {}  # group id -> its values
    dirs: dict[int, list[Path]] = {}  # group id -> its shard's directories on the 3 nodes
    shard_of: dict[int, int] = {}  # group id -> its shard's id
    groups = _groups(cluster, "n1", topic)
    try:
        for k, count in enumerate(counts):
            gid = groups[-1]["id"]
            values = [b"%d:%04d:" % (k, i) + rng.randbytes(value_bytes) for i in range(count)]
            with Producer(cluster.client("n%d" % (k % 3 + 1)), level="quorum", linger_ms=5, **cluster.auth) as p:
                futs = [p.send(topic, v) for v in values]
                p.flush()
                assert all(f.result(30) for f in futs)
            written[gid] = values
            if k == 0:
                first = _wait("a delivery to the consumer that leaves", lambda: away.poll(1.0), timeout_s=60)
                assert first.shard_id == groups[-1]["shards"][0], first  # the delivery names its shard
                away.close()
            shard_of[gid] = groups[-1]["shards"][0]
            dirs[gid] = _shard_dirs(cluster, topic, shard_of[gid])
            if k < len(counts) - 1:
                groups = _truncate(cluster, topic, gid)
        ids = sorted(written)
        assert ids == list(range(ids[0], ids[0] + len(counts))), ids
        dropped, kept = ids[:2], ids[2:]
        assert {g: len(d) for g, d in dirs.items()} == {g: 6 for g in ids}, dirs  # log + metadata on each node
        # the oldest two go (from the agency), the newer ones stay
        _wait("the two oldest groups to be dropped for size",
              lambda: [g["id"] for g in _groups(cluster, "n1", topic)][0] == kept[0], timeout_s=120)
        status, shards = cluster.call("n1", "GET", f"/shards?topic={topic}")
        assert status == 200 and {s["index"] for s in shards} >= {shard_of[g] for g in kept}, shards
        assert not {s["index"] for s in shards} & {shard_of[g] for g in dropped}, shards
        # ... and from every node's disk
        _wait("the dropped groups' databases to be deleted",
              lambda: not any(p.exists() for g in dropped for p in dirs[g]), timeout_s=60)
        # the consumer sitting in g0 (it never acknowledges) is told
        reset = _wait("the stuck consumer's reset notice", lambda: stuck.resets, timeout_s=60)[0]
        assert reset.shard == 0 and reset.dropped_shard_id in {shard_of[g] for g in dropped}, reset
        assert reset.next_shard_id > reset.dropped_shard_id, reset
        # nothing within the limit is dropped: the kept groups are whole, on every replica
        assert [g["id"] for g in _groups(cluster, "n1", topic)] == kept
        assert all(p.exists() for g in kept[:2] for p in dirs[g]), dirs
        with Client(cluster.client("n3"), **cluster.auth) as cl:
            for gid in kept:
                got = [r.payload for r in cl.fetch_all(topic, 0, group=gid)]
                assert got == written[gid], (gid, len(got), len(written[gid]))
            queried = [r.value for r in cl.query_iter(topic, 0, int(time.time() * 1000) + 1, page=256)]
        assert sorted(queried) == sorted(v for g in kept for v in written[g]), (len(queried),)
        # the subscription whose group went while it had no consumer: the
        # next consumer is told, then reads exactly the kept records, in order
        # -- as a client of protocol version 1 (older clients keep working)
        monkeypatch.setattr(client_conn, "OFFERED_VERSIONS", (1,))
        back = Consumer(cluster.client("n1"), topic, "sized-away", consumer_id="sized-away-2", **cluster.auth)
        try:
            got: list[bytes] = []
            want = [v for g in kept for v in written[g]]
            deadline = time.monotonic() + 120
            while len(got) < len(want) and time.monotonic() < deadline:
                msg = back.poll(1.0)
                if msg is not None:
                    assert msg.shard_id == NO_SHARD_ID, msg  # version 1: deliveries name no shard
                    if not got or msg.value not in got:
                        got.append(msg.value)
                    msg.ack()
            [late] = back.resets
        finally:
            back.close()
        assert (late.shard, late.dropped_shard_id, late.next_shard_id) == (0, shard_of[ids[0]], shard_of[kept[0]]), late
        assert got == want, (len(got), len(want), [v[:8] for v in got[:3]])
        sizes = {g: _bytes(dirs[g]) for g in kept[:2]}
        print(f"\nretention by size: limit {limit} B; groups {dropped} dropped, {kept} kept; "
              f"kept closed groups on disk (3 nodes): {sizes}")
    finally:
        stuck.close()
