"""Hinted handoff on three real node processes: the only replica of a
shard is killed with SIGKILL, writes at level ``any`` through another node
are kept there as hints, and once the node is back they are in the shard's
log in the order they were sent, each exactly once.  Every process is
started here and stopped here, by PID."""
from __future__ import annotations

import time

import pytest

from runtime.client import Client, Producer
from runtime.realcluster import RealCluster

pytestmark = pytest.mark.realnet

TOPIC = "acme/load/web/handoff"


def _log(c: RealCluster, via: str) -> list[bytes]:
    try:
        with Client(c.client(via), **c.auth) as cl:
            return [r.payload for r in cl.fetch_all(TOPIC, 0)]
    except Exception:  # the leader is not serving yet
        return []


def _handoff(c: RealCluster, via: str, until, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        hh = (c.get(via, "/status") or {}).get("handoff") or {}
        if (hh and until(hh)) or time.monotonic() > deadline:
            return hh
        time.sleep(0.2)


def test_writes_at_any_while_the_leader_is_down_arrive_once_and_in_order(tmp_path) -> None:
    c = RealCluster(tmp_path, n=3)
    try:
        c.start()
        # one replica: nothing can take over from its node, so writes must wait as hints
        c.create_topic("n1", TOPIC, shards=1, rf=1)
        leader = c.wait_leaders("n1", TOPIC)[0]["leader"]
        via = next(n for n in sorted(c.cfgs) if n != leader)
        before = [b"before-%03d" % i for i in range(20)]
        hinted = [b"hinted-%04d" % i for i in range(300)]
        with Producer(c.client(via), level="any", linger_ms=2, **c.auth) as p:
            for f in [p.send(TOPIC, v) for v in before]:
                f.result(timeout=30)
            c.kill9(leader)
            futures = [p.send(TOPIC, v) for v in hinted]
            p.flush()
            metas = [f.result(timeout=60) for f in futures]
        assert {str(getattr(m.level, "value", m.level)) for m in metas} == {"any"}  # every one kept as a hint
        hh = _handoff(c, via, lambda h: h["hints"] > 0)  # status reads the queue once per poll
        assert hh["stored"] > 0 and hh["bytes"] > 0 and f"{TOPIC}#0" in hh["queues"], str(hh)
        c.start(leader)
        deadline = time.monotonic() + 60
        back: list[bytes] = []
        while time.monotonic() < deadline:
            back = _log(c, via)
            if len(back) >= len(before) + len(hinted):
                break
            time.sleep(0.5)
        assert back == before + hinted
        time.sleep(1.0)
        assert _log(c, via) == before + hinted  # nothing arrives twice later
        hh = _handoff(c, via, lambda h: h["hints"] == 0)
        assert hh["hints"] == 0 and hh["drained"] >= 1 and hh["dropped_bytes"] == 0, hh
    finally:
        leftovers = c.stop_all()
        assert leftovers == [], f"processes outlived SIGTERM: {leftovers}"
