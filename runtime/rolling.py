"""A rolling restart of a real cluster under load, measured.

:func:`run_rolling_restart` starts real node processes
(:class:`runtime.realcluster.RealCluster`), creates a replicated topic, and
keeps one producer (level ``quorum``, every node in its bootstrap list) and
one consumer (a durable subscription, acknowledging every message) running
while each node in turn is stopped with SIGTERM, started again, and waited
for until every shard has all its replicas back in sync.  Then it stops
producing, waits for the consumer to catch up, and compares:

* every record acknowledged to the producer must be in the topic's log
  (read back shard by shard) and must have reached the consumer;
* how long the producer and the consumer each went without progress
  (the longest gap between two acknowledgements, or between two received
  messages) while the nodes restarted.

It is used by ``brokerctl bench --case rolling-restart`` (the figures) and by
``tests/test_rolling_restart_real.py`` (nothing lost, every record read).
Every process it starts, it stops, by PID.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["RollingResult", "run_rolling_restart", "wait_in_sync"]

SEND_INTERVAL_S = 0.002  # the producer's pace: about 500 records a second
SETTLE_S = 2.0  # load before the first restart and between restarts
CATCH_UP_S = 120.0  # how long the consumer may take to read every acknowledged record at the end


@dataclass
class RollingResult:
    sent: int = 0
    acked: int = 0
    failed: int = 0  # sends that failed for good (delivery timeout): reported, never counted as acknowledged
    consumed: int = 0  # distinct records the consumer received
    redelivered: int = 0  # messages the consumer received more than once (at least once delivery)
    lost_in_log: list[bytes] = field(default_factory=list)  # acknowledged, not in the log
    lost_to_consumer: list[bytes] = field(default_factory=list)  # acknowledged, never received
    duplicates_in_log: int = 0
    producer_stall_s: float = 0.0
    consumer_stall_s: float = 0.0
    restarts: list[dict[str, Any]] = field(default_factory=list)  # per node: stop_s, start_s, in_sync_s
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        return {"sent": self.sent, "acked": self.acked, "failed": self.failed, "consumed": self.consumed,
                "redelivered": self.redelivered, "lost_in_log": len(self.lost_in_log),
                "lost_to_consumer": len(self.lost_to_consumer), "duplicates_in_log": self.duplicates_in_log,
                "producer_stall_s": round(self.producer_stall_s, 2),
                "consumer_stall_s": round(self.consumer_stall_s, 2), "restarts": self.restarts,
                "seconds": round(self.seconds, 1)}


def wait_in_sync(c: Any, via: str, topic: str, replicas: int, timeout_s: float = 60.0) -> None:
    """Until every shard of ``topic`` has a leader and ``replicas`` replicas in sync."""
    deadline = time.monotonic() + timeout_s
    shards: Any = None
    while time.monotonic() < deadline:
        shards = c.get(via, f"/shards?topic={topic}", timeout_s=2)
        if isinstance(shards, list) and shards and all(
                s["state"] == "ok" and len(s["in_sync"]) >= replicas for s in shards):
            return
        time.sleep(0.2)
    raise TimeoutError(f"shards of {topic} not back in sync ({replicas} replicas) in {timeout_s}s: {shards}")


def _max_gap(times: list[float], start: float, end: float) -> float:
    """The longest time without an event in [start, end]."""
    points = [start] + sorted(t for t in times if start <= t <= end) + [end]
    return max(b - a for a, b in zip(points, points[1:]))


def run_rolling_restart(base: Path, *, nodes: int = 3, shards: int = 3, size: int = 64,
                        progress: Callable[[int], None] = lambda _done: None) -> RollingResult:
    """Restart every node of a fresh ``nodes``-node cluster in turn under
    load; ``progress`` is called with the number of nodes restarted so far."""
    from runtime.client import Client, Consumer, Producer
    from runtime.realcluster import RealCluster

    topic = "bench/rolling/restart/t"
    res = RollingResult()
    c = RealCluster(base / "rolling", n=nodes)
    t0 = time.monotonic()
    try:
        c.start()
        c.create_topic("n1", topic, shards=shards, rf=nodes)
        wait_in_sync(c, "n1", topic, nodes)
        bootstrap = [c.client(n) for n in sorted(c.cfgs)]
        stop = threading.Event()
        futures: list[tuple[bytes, Any]] = []
        ack_times: list[float] = []
        got: dict[bytes, int] = {}
        got_times: list[float] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                with Producer(bootstrap, level="quorum", linger_ms=2, delivery_timeout_s=120, **c.auth) as p:
                    i = 0
                    while not stop.is_set():
                        value = b"r%07d-" % i + b"x" * max(0, size - 9)
                        f = p.send(topic, value, key=b"k%d" % (i % 64))
                        f.add_done_callback(lambda f: f.exception() is None and ack_times.append(time.monotonic()))
                        futures.append((value, f))
                        i += 1
                        time.sleep(SEND_INTERVAL_S)
                    p.flush()
            except BaseException as e:  # reported by the caller
                errors.append(e)

        def consume() -> None:
            try:
                with Consumer(bootstrap, topic, "rolling", **c.auth) as con:
                    while not consumed_enough.is_set():
                        msg = con.poll(timeout_s=0.5)
                        if msg is None:
                            continue
                        with lock:
                            got[msg.value] = got.get(msg.value, 0) + 1
                            got_times.append(time.monotonic())
                        msg.ack()
                    con.flush_acks(10)
            except BaseException as e:
                errors.append(e)

        consumed_enough = threading.Event()
        producer = threading.Thread(target=produce, name="rolling-producer", daemon=True)
        consumer = threading.Thread(target=consume, name="rolling-consumer", daemon=True)
        producer.start()
        consumer.start()
        time.sleep(SETTLE_S)
        load_start = time.monotonic()
        for k, nid in enumerate(sorted(c.cfgs)):
            via = next(n for n in sorted(c.cfgs) if n != nid)
            t_stop = time.monotonic()
            c.stop(nid)
            t_start = time.monotonic()
            c.start(nid)
            wait_in_sync(c, via, topic, nodes)
            t_sync = time.monotonic()
            progress(k + 1)
            time.sleep(SETTLE_S)
            t_end = time.monotonic()
            with lock:
                consumer_gap = _max_gap(got_times, t_stop, t_end)
            res.restarts.append({"node": nid, "stop_s": round(t_start - t_stop, 2),
                                 "start_s": round(t_sync - t_start, 2),
                                 "producer_stall_s": round(_max_gap(list(ack_times), t_stop, t_end), 2),
                                 "consumer_stall_s": round(consumer_gap, 2)})
        load_end = time.monotonic()
        stop.set()
        producer.join(180)
        acked = [v for v, f in futures if f.done() and f.exception() is None]
        deadline = time.monotonic() + CATCH_UP_S
        while time.monotonic() < deadline and not errors:
            with lock:
                if all(v in got for v in acked):
                    break
            time.sleep(0.2)
        consumed_enough.set()
        consumer.join(30)
        if errors:
            raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
        res.sent, res.acked = len(futures), len(acked)
        res.failed = sum(1 for _v, f in futures if f.done() and f.exception() is not None)
        log: list[bytes] = []
        with Client(bootstrap, **c.auth) as cl:
            for s in range(shards):
                log += [r.payload for r in cl.fetch_all(topic, s)]
        in_log = set(log)
        res.duplicates_in_log = len(log) - len(in_log)
        res.lost_in_log = [v for v in acked if v not in in_log]
        with lock:
            res.lost_to_consumer = [v for v in acked if v not in got]
            res.consumed = len(got)
            res.redelivered = sum(n - 1 for n in got.values())
            res.consumer_stall_s = _max_gap(got_times, load_start, load_end)
        res.producer_stall_s = _max_gap(list(ack_times), load_start, load_end)
        res.seconds = time.monotonic() - t0
        return res
    finally:
        leftovers = c.stop_all()
        if leftovers:
            raise RuntimeError(f"processes outlived SIGTERM and were killed: {leftovers}")
