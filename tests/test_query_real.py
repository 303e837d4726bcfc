"""History queries on a real three-node cluster: HTTP and the Python client,
paging, and fail-over to another replica after a kill -9."""
from __future__ import annotations

import urllib.parse

import pytest

from runtime.client import Client, Producer
from runtime.realcluster import RealCluster

TOPIC = "hq/p/c/events"
N = 600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from RealCluster.running(tmp_path_factory.mktemp("query"), n=3)


def _http_pages(c: RealCluster, nid: str, topic: str, params: dict, limit: int,
                served: list | None = None) -> list[tuple[int, int]]:
    out, after, pages = [], None, 0
    while True:
        q = {**params, "limit": limit, **({"after": after} if after else {})}
        status, body = c.call(nid, "GET", f"/query/{topic}?{urllib.parse.urlencode(q)}", timeout_s=60)
        assert status == 200, body
        assert len(body["records"]) <= limit
        out += [(r["shard"], r["offset"]) for r in body["records"]]
        if served is not None:
            served.append(body["served_by"])
        pages += 1
        after = body["next"]
        if after is None:
            return out
        assert pages < 1000


def test_query_by_time_through_http_and_the_client_then_after_a_kill9(cluster: RealCluster) -> None:
    cluster.create_topic("n1", TOPIC, shards=3, rf=3)
    with Producer(cluster.client("n1"), level="quorum", linger_ms=2, **cluster.auth) as p:
        futs = []
        for i in range(N):  # flushed every 50 records so that timestamps spread over many milliseconds
            futs.append(p.send(TOPIC, b"v%04d" % i, key=b"k%d" % (i % 7)))
            if i % 50 == 49:
                p.flush()
        assert all(f.result(30) for f in futs)
    truth = []  # (timestamp, shard, offset, key)
    with Client(cluster.client("n2"), **cluster.auth) as cl:
        for s in range(3):
            truth += [(r.producer_ts_ms, s, r.offset, r.key) for r in cl.fetch_all(TOPIC, s)]
        truth.sort()
        assert len(truth) == N
        lo, hi = truth[100][0], truth[500][0]
        expected = [(s, o) for ts, s, o, _k in truth if lo <= ts < hi]
        keyed = [(s, o) for ts, s, o, k in truth if lo <= ts < hi and k == b"k3"]
        assert 100 <= len(expected) < N

        # the Python client: the iterator with small pages, and one page by hand
        assert [(r.shard, r.offset) for r in cl.query_iter(TOPIC, lo, hi, page=37)] == expected
        first = cl.query(TOPIC, lo, hi, limit=50)
        assert [(r.shard, r.offset) for r in first.records] == expected[:50] and first.next_token
        second = cl.query(TOPIC, lo, hi, limit=50, after=first.next_token)
        assert [(r.shard, r.offset) for r in second.records] == expected[50:100]
        assert [(r.shard, r.offset) for r in cl.query_iter(TOPIC, lo, hi, key="k3", page=10)] == keyed
        assert all(lo <= r.timestamp_ms < hi for r in first.records)
        with pytest.raises(ValueError, match="after"):
            cl.query(TOPIC, hi, lo)

    # HTTP, through another node, with paging and a key
    assert _http_pages(cluster, "n3", TOPIC, {"from": lo, "to": hi}, 64) == expected
    assert _http_pages(cluster, "n3", TOPIC, {"from": lo, "to": hi, "key": "k3"}, 5) == keyed
    for bad, what in (({"from": hi, "to": lo}, "after 'to'"), ({"from": "x", "to": 5}, "integer"),
                      ({"from": 1, "to": 5, "limit": 10_001}, "limit"), ({"to": 5}, "required")):
        status, body = cluster.call("n1", "GET", f"/query/{TOPIC}?{urllib.parse.urlencode(bad)}")
        assert status == 400 and what in body["error"]["message"], body

    # kill -9 the node leading shard 0; query through another node at once:
    # its replicas do not answer and the coordinator asks another replica
    shards = cluster.wait_leaders("n1", TOPIC)
    victim = next(s["leader"] for s in shards if s["index"] == 0)
    via = next(n for n in sorted(cluster.cfgs) if n != victim)
    cluster.kill9(victim)
    served: list = []
    got = _http_pages(cluster, via, TOPIC, {"from": lo, "to": hi}, 500, served)
    assert got == expected, (victim, served, len(got), len(expected))
    with Client(cluster.client(via), **cluster.auth) as cl:
        assert [(r.shard, r.offset) for r in cl.query_iter(TOPIC, lo, hi, page=200)] == expected
