"""``brokerctl bench``: throughput, latency and failover of real node processes.

Each case starts its own nodes (``runtime.realcluster.RealCluster``: real
processes on 127.0.0.1, data in a temporary directory, stopped by PID at
the end), runs the Python client against them and reports:

* ``single``  -- one node, persistent, level ``one``: acknowledged msgs/s,
  MB/s and acknowledgement latency p50/p99/p999;
* ``quorum``  -- three nodes, replication factor 3, level ``quorum``;
* ``e2e``     -- three nodes, replication factor 3, level ``quorum``, a
  producer at a fixed rate and a subscription consumer on another node:
  produce-to-delivery latency p50/p99/p999;
* ``e2e1``    -- the same on one node, level ``one``;
* ``failover``-- three nodes under quorum writes; kill -9 of the node that
  leads the shard; the time until writes are acknowledged again;
* ``mqtt-qos0``, ``mqtt-qos1`` -- MQTT on one node: publishers and
  subscribers (``runtime/mqtt_loadgen.py``, by default in a process of its
  own) at QoS 0 or 1, closed-loop; messages/s received by the subscribers
  and publish-to-receipt latency p50/p99/p999;
* ``mqtt-cross`` -- the same at QoS 1 on three nodes, publishers on n1 and
  subscribers on n2 and n3 (every message crosses nodes).

Targets (100-byte messages, 2 cores): single >= 100,000 msgs/s, quorum >=
50,000 msgs/s, e2e p99 <= 20 ms at 10,000 msgs/s, failover <= 3 s; MQTT
(128-byte payloads): QoS 0 >= 60,000 msgs/s and QoS 1 >= 12,000 msgs/s on
one node, QoS 1 across nodes >= 10,000 msgs/s.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.progress import ProgressColumn, Task
from rich.text import Text

from sim.runner import percentile

CASES = ("single", "quorum", "any", "e2e", "e2e1", "failover", "rolling-restart", "mqtt-qos0", "mqtt-qos1",
         "mqtt-cross")
FAILOVER = "failover after kill -9"
ROLLING = "rolling restart"
# MQTT cases: (nodes, QoS, target msgs/s)
MQTT_CASES = {"mqtt-qos0": (1, 0, 60_000), "mqtt-qos1": (1, 1, 12_000), "mqtt-cross": (3, 1, 10_000)}
MQTT_SIZE = 128
MQTT = "mqtt"  # Result.extra["kind"] of the MQTT cases
# An MQTT case connects, subscribes (waits for the routes across nodes) and
# warms up for about 2 s before its measured seconds, and drains after.
MQTT_OVERHEAD_S = 3.0
# Throughput cases time every record but take the acknowledgement latency of
# one in this many (a callback per record would cost the producer more
# than the sending itself).
LATENCY_SAMPLE_EVERY = 16
# The fixed-rate producer sleeps only once it is this far ahead of its
# schedule, as Kafka's ThroughputThrottler does (MIN_SLEEP_NS, 2 ms): a
# sleep per message (10,000 a second) costs the machine more CPU in timer
# wake-ups than the sending itself, and on two cores that CPU is the nodes'.
PACE_SLEEP_MIN_S = 0.002
# How long the timed cases run once their nodes are up, for the progress
# display: e2e lets the subscription attach (1 s), sends for ``--seconds``
# and drains (well under 1 s); failover writes for 2 s, kills the leader,
# waits for the new one (1-3 s) and writes 3 s more.
E2E_OVERHEAD_S = 2.0
FAILOVER_EXPECTED_S = 8.0


class Pacer:
    """Holds a loop to ``rate`` iterations a second on average: ``wait(i)``
    before iteration ``i`` sleeps until it is due, but only when that is at
    least ``sleep_min_s`` away -- so the loop runs in short bursts, never
    ahead of schedule by ``sleep_min_s`` or more."""

    def __init__(self, rate: float, sleep_min_s: float = PACE_SLEEP_MIN_S,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.sleep_min_s = sleep_min_s
        self.clock = clock
        self.sleep = sleep
        self.start = clock()

    def wait(self, i: int) -> None:
        ahead = self.start + i / self.rate - self.clock()
        if ahead >= self.sleep_min_s:
            self.sleep(ahead)


@dataclass
class Result:
    case: str
    messages: int = 0
    seconds: float = 0.0
    bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        out = {"case": self.case, "messages": self.messages, "seconds": round(self.seconds, 2),
               "msgs_per_s": round(self.rate), "mb_per_s": round(self.bytes / self.seconds / 1e6, 2)
               if self.seconds else 0.0}
        if lat:
            out.update({"p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                        "p999_ms": round(percentile(lat, 99.9), 2)})
        out.update(self.extra)
        return out


def _produce(bootstrap: str, topic: str, n: int, size: int, level: str, progress: Callable[[int], None],
             **producer_opts: Any) -> Result:
    from runtime.client import Producer

    values = _payloads(size)
    mask = len(values) - 1
    lat: list[float] = []
    sampled = [0]

    def on_done(t0: float) -> Callable[[Any], None]:
        def cb(_f: Any) -> None:  # runs in the producer's thread, one at a time
            lat.append((time.perf_counter() - t0) * 1000)
            sampled[0] += 1
        return cb

    with Producer(bootstrap, level=level, **producer_opts) as p:
        send = p.send
        t_start = time.perf_counter()
        futures = []
        for i in range(n):
            if i % LATENCY_SAMPLE_EVERY == 0:
                t0 = time.perf_counter()
                f = send(topic, values[i & mask])
                f.add_done_callback(on_done(t0))
                if i % 8192 == 0:
                    progress(min(n, sampled[0] * LATENCY_SAMPLE_EVERY))
            else:
                f = send(topic, values[i & mask])
            futures.append(f)
        p.flush()
        elapsed = time.perf_counter() - t_start
        failed = [e for e in (f.exception() for f in futures) if e is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} of {n} records failed, the first with: {failed[0]}")
    progress(n)
    return Result("", n, elapsed, n * size, lat)


def _payloads(size: int, count: int = 4096) -> list[bytes]:
    """``count`` (a power of two) distinct messages of ``size`` bytes: random
    hex text, which zstd compresses to about half, like typical text
    payloads (a run of one repeated byte would compress a hundredfold and
    flatter the figures)."""
    return [os.urandom((size + 1) // 2).hex().encode()[:size] for _ in range(count)]


def run_throughput(base: Path, nodes: int, level: str, n: int, size: int,
                   progress: Callable[[int], None]) -> Result:
    """``nodes`` nodes, a topic of ``max(2, nodes)`` shards with replication factor ``nodes``."""
    from runtime.realcluster import RealCluster

    c = RealCluster(base / f"throughput-{nodes}-{level}", n=nodes)
    topic = f"bench/n{nodes}/{level}/t"
    try:
        c.start()
        c.create_topic("n1", topic, shards=max(2, nodes), rf=nodes)
        r = _produce(c.client("n1"), topic, n, size, level, progress, linger_ms=5, batch_records_max=2000, **c.auth)
        r.case = f"{nodes} node{'s' if nodes > 1 else ''}, R={nodes}, {level}"
        return r
    finally:
        c.stop_all()


def run_any(base: Path, n: int, size: int, progress: Callable[[int], None]) -> Result:
    """Level ``any`` with one node down: 3 nodes, a topic of 3 shards with
    one replica each, n3 killed with SIGKILL, ``n`` records through n1 --
    the shards whose leader is gone take them as hints (hinted handoff).
    Then n3 starts again and the time until n1's queue is empty is taken."""
    from runtime.realcluster import RealCluster

    c = RealCluster(base / "any", n=3)
    topic = "bench/n3/any/t"
    try:
        c.start()
        c.create_topic("n1", topic, shards=3, rf=1)
        c.kill9("n3")
        r = _produce(c.client("n1"), topic, n, size, "any", progress, linger_ms=5, batch_records_max=2000, **c.auth)
        r.case = "3 nodes, R=1, any, n3 down"
        hh = (c.get("n1", "/status") or {}).get("handoff") or {}
        t0 = time.monotonic()
        c.start("n3")
        drain_s = None
        while time.monotonic() - t0 < 120:
            hh = (c.get("n1", "/status") or {}).get("handoff") or {}
            if hh.get("hints") == 0:
                drain_s = round(time.monotonic() - t0, 1)
                break
            time.sleep(0.2)
        r.extra = {"hinted_batches": hh.get("stored", 0), "drained_after_restart_s": drain_s}
        return r
    finally:
        c.stop_all()


def run_e2e(base: Path, rate: int, seconds: float, size: int, progress: Callable[[int], None],
            nodes: int = 3) -> Result:
    """Produce through n1 at ``rate``; consume through n2 (n1 on one node).
    With several nodes: replication factor ``nodes``, level quorum; on one
    node level one."""
    from runtime.client import Consumer, Producer
    from runtime.realcluster import RealCluster

    c = RealCluster(base / f"e2e-{nodes}", n=nodes)
    topic = f"bench/n{nodes}/e2e/t"
    level = "quorum" if nodes > 1 else "one"
    consumer_node = "n2" if nodes > 1 else "n1"
    try:
        c.start()
        c.create_topic("n1", topic, shards=1, rf=nodes)
        progress(0)
        lat: list[float] = []
        total = int(rate * seconds)
        got = [0]
        stop = threading.Event()

        def consume() -> None:
            with Consumer(c.client(consumer_node), topic, "e2e", mode="exclusive", **c.auth) as cons:
                while not stop.is_set() and got[0] < total:
                    m = cons.poll(timeout_s=0.5)
                    if m is None:
                        continue
                    if not m.redelivery:
                        (t0,) = struct.unpack_from(">d", m.value)
                        lat.append((time.perf_counter() - t0) * 1000)
                        got[0] += 1
                    m.ack()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        time.sleep(1.0)  # let the subscription attach
        pad = b"." * max(0, size - 8)
        with Producer(c.client("n1"), level=level, linger_ms=1, **c.auth) as p:
            pacer = Pacer(rate)
            t_start = pacer.start
            for i in range(total):
                pacer.wait(i)
                p.send(topic, struct.pack(">d", time.perf_counter()) + pad)
                if i % 1000 == 0:
                    progress(got[0])
            p.flush()
        deadline = time.monotonic() + 30
        while got[0] < total and time.monotonic() < deadline:
            time.sleep(0.1)
            progress(got[0])
        stop.set()
        t.join(5)
        elapsed = time.perf_counter() - t_start
        progress(total)
        where = f"{nodes} nodes, R={nodes}, quorum" if nodes > 1 else "1 node, level one"
        return Result(f"end to end, {where}", got[0], elapsed, got[0] * size, lat,
                      {"delivered": f"{got[0]}/{total}"})
    finally:
        c.stop_all()


def run_failover(base: Path, size: int, progress: Callable[[int], None]) -> Result:
    """Quorum writes at about 1,000 msgs/s through a node that does not lead
    the shard; kill -9 of the leader's node.  ``outage_s`` is the time from
    the kill until the first record sent after it is acknowledged (writes
    resumed on the promoted follower); ``leader_seen_s`` when the HTTP shard
    map first shows the new leader."""
    from runtime.client import Producer
    from runtime.realcluster import RealCluster

    c = RealCluster(base / "failover", n=3)
    topic = "bench/three/failover/t"
    try:
        c.start()
        c.create_topic("n1", topic, shards=1, rf=3)
        progress(0)
        first = c.wait_leaders("n1", topic)[0]["leader"]
        via = next(n for n in sorted(c.cfgs) if n != first)
        sent: list[tuple[float, Any]] = []
        acked: dict[int, float] = {}
        stop = threading.Event()

        def produce() -> None:
            bootstrap = [c.client(via)] + [c.client(n) for n in sorted(c.cfgs) if n != via]
            with Producer(bootstrap, level="quorum", linger_ms=1, delivery_timeout_s=60, **c.auth) as p:
                while not stop.is_set():
                    i = len(sent)
                    f = p.send(topic, b"f" * size)
                    sent.append((time.perf_counter(), f))
                    f.add_done_callback(lambda _f, i=i: acked.__setitem__(i, time.perf_counter()))
                    time.sleep(0.001)
                p.flush()

        t = threading.Thread(target=produce)
        t.start()
        time.sleep(2.0)
        progress(1)
        leader = c.wait_leaders(via, topic)[0]["leader"]  # as it is now, just before the kill
        c.kill9(leader)
        t_kill = time.perf_counter()  # every process of the node has been sent SIGKILL
        new = c.wait_leaders(via, topic, exclude=leader, timeout_s=30)[0]["leader"]
        t_leader = time.perf_counter()
        time.sleep(3.0)
        stop.set()
        t.join(60)
        failed = sum(1 for _t, f in sent if f.exception() is not None)
        after = [i for i, (ts, _f) in enumerate(sent) if ts > t_kill]
        resumed = min((acked[i] for i in after if i in acked), default=float("nan"))
        progress(2)
        return Result(FAILOVER, len(sent), 0.0, 0, [],
                      {"killed": leader, "new_leader": new, "outage_s": round(resumed - t_kill, 2),
                       "leader_seen_s": round(t_leader - t_kill, 2), "failed": failed})
    finally:
        c.stop_all()


def run_rolling(base: Path, size: int, progress: Callable[[int], None]) -> Result:
    """Each node of a fresh 3-node cluster restarted in turn under load
    (runtime/rolling.py): lost records and each restart's client stalls."""
    from runtime.rolling import run_rolling_restart

    rr = run_rolling_restart(base, size=size, progress=progress)
    return Result(ROLLING, rr.acked, rr.seconds, 0, [], rr.row())


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def run_mqtt(base: Path, case: str, seconds: float, size: int, progress: Callable[[int], None],
             publishers: int = 4, subscribers: int = 4, window: int = 250, inproc: bool = False) -> Result:
    """An MQTT case of ``MQTT_CASES``: the load generator against fresh nodes.
    ``inproc``: run it in this process instead of a child process of its own."""
    from runtime.mqtt_loadgen import LoadConfig, run_load, run_load_process
    from runtime.realcluster import RealCluster

    nodes, qos, _target = MQTT_CASES[case]
    c = RealCluster(base / case, n=nodes)
    try:
        c.start()
        if nodes > 1:
            c.wait_all_alive()
        cfg = LoadConfig(pub_addrs=[c.mqtt("n1")],
                         sub_addrs=[c.mqtt(n) for n in sorted(c.cfgs) if n != "n1"] or [c.mqtt("n1")],
                         qos=qos, size=size, publishers=publishers, subscribers=subscribers, window=window,
                         seconds=seconds, routes_url=c.url("n1", "/mqtt") if nodes > 1 else None,
                         username="admin" if c.password else "", password=c.password or "")
        pids = [p for n in sorted(c.cfgs) for p in c.node_pids(n)]
        cpu0, t0 = _cpu_s(pids), time.monotonic()
        res = (run_load if inproc else run_load_process)(cfg, progress)
        node_cpu = (_cpu_s(pids) - cpu0) / (time.monotonic() - t0)
        if res.error:
            raise RuntimeError(f"{case}: {res.error}")
        where = "1 node" if nodes == 1 else f"{nodes} nodes, n1->n2/n3"
        r = Result(f"QoS {qos}, {where}, {publishers}p/{subscribers}s", res.messages, res.seconds,
                   res.messages * size, [],
                   {"kind": MQTT, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms, "p999_ms": res.p999_ms,
                    "payload_bytes": size, "delivered": f"{res.received}/{res.sent}", "client": "in process" if inproc else "own process",
                    "client_cores": res.client_cpu, "node_cores": round(node_cpu, 2)})
        return r
    finally:
        c.stop_all()


def render(results: list[Result], size: int) -> Any:
    """The results as rich tables: throughput and latency cases, then failover."""
    from rich.console import Group
    from rich.table import Table

    tables = []
    rows = [r.row() for r in results if r.case not in (FAILOVER, ROLLING) and r.extra.get("kind") != MQTT]
    if rows:
        t = Table(title=f"Throughput and latency ({size}-byte messages)")
        cols = [("case", "case"), ("messages", "messages"), ("seconds", "s"), ("msgs_per_s", "msgs/s"),
                ("mb_per_s", "MB/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"),
                ("delivered", "delivered"), ("hinted_batches", "hinted batches"),
                ("drained_after_restart_s", "drained s")]
        cols = [(k, h) for k, h in cols if any(k in r for r in rows)]
        for _k, h in cols:
            t.add_column(h, justify="left" if h == "case" else "right", no_wrap=True)
        for r in rows:
            t.add_row(*(str(r.get(k, "")) for k, _h in cols))
        tables.append(t)
    rows = [r.row() for r in results if r.extra.get("kind") == MQTT]
    if rows:
        sizes = "/".join(sorted({str(r["payload_bytes"]) for r in rows}))
        clients = "/".join(sorted({r["client"] for r in rows}))
        t = Table(title=f"MQTT end to end ({sizes}-byte payloads, load generator in {clients}; "
                        f"cores: CPU used)")
        cols = [("case", "case"), ("msgs_per_s", "msgs/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                ("p999_ms", "p99.9 ms"), ("delivered", "received/sent"), ("node_cores", "nodes"),
                ("client_cores", "client")]
        for _k, h in cols:
            t.add_column(h, justify="left" if h == "case" else "right", no_wrap=True)
        for r in rows:
            t.add_row(*(str(r.get(k, "")) for k, _h in cols))
        tables.append(t)
    for r in (r.row() for r in results if r.case == FAILOVER):
        t = Table(title="Failover after kill -9 of the leader's node")
        for h in ("killed", "new leader", "outage s", "leader seen s", "records", "failed"):
            t.add_column(h, justify="right", no_wrap=True)
        t.add_row(str(r["killed"]), str(r["new_leader"]), str(r["outage_s"]), str(r["leader_seen_s"]),
                  str(r["messages"]), str(r["failed"]))
        tables.append(t)
    for r in (r.row() for r in results if r.case == ROLLING):
        t = Table(title="Rolling restart of 3 nodes (SIGTERM, start, back in sync) under load: "
                        "producer at quorum, consumer acknowledging")
        for h in ("node", "stop s", "start to in sync s", "producer stall s", "consumer stall s"):
            t.add_column(h, justify="right", no_wrap=True)
        for x in r["restarts"]:
            t.add_row(x["node"], str(x["stop_s"]), str(x["start_s"]), str(x["producer_stall_s"]),
                      str(x["consumer_stall_s"]))
        t.caption = (f"{r['acked']:,} records acknowledged, {r['failed']} failed; lost: {r['lost_in_log']} "
                     f"from the log, {r['lost_to_consumer']} to the consumer; {r['redelivered']} redelivered")
        tables.append(t)
    return Group(*tables)


def _quiet_disk(path: Path) -> None:
    """Between cases: delete the finished case's data and flush what the
    kernel still holds for the disk, so that writing back one case's files
    does not stall the next case's fsyncs (seen as 100-170 ms end-to-end
    outliers when the latency cases ran right after the throughput cases)."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def _clock(seconds: float) -> str:
    m, sec = divmod(max(0, int(seconds)), 60)
    return f"{m}:{sec:02d}"


class _TimeColumn(ProgressColumn):
    """Elapsed time with an estimate: the time left for a case that counts
    records, the expected duration for a case that runs for a set time, or
    what the case is doing before its nodes are up."""

    def render(self, task: Task) -> Text:
        if not task.started:
            return Text(task.fields["state"], style="progress.remaining")
        elapsed = (task.finished_time if task.finished else task.elapsed) or 0.0
        if task.finished:
            return Text(_clock(elapsed), style="progress.elapsed")
        expect = task.fields["expect_s"]
        if expect:
            return Text(f"{_clock(elapsed)} of ~{_clock(expect)}", style="progress.elapsed")
        left = task.time_remaining
        return Text(f"{_clock(elapsed)}, {_clock(left) if left is not None else '-:--'} left",
                    style="progress.remaining")


def run(cases: list[str], messages: int, size: int, rate: int, seconds: float,
        json_path: str | None = None, mqtt: dict[str, Any] | None = None) -> list[Result]:
    """Run ``cases`` one after the other, each on fresh nodes, with a progress
    bar per case (records done of the total and the time left, or for the
    timed cases the elapsed of the expected duration); print the tables and
    write ``json_path``.  ``mqtt``: keyword arguments for :func:`run_mqtt`
    (publishers, subscribers, window, inproc, size)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console(width=max(Console().width, 110))
    results: list[Result] = []
    console.print(f"{len(cases)} case{'s' if len(cases) > 1 else ''} ({', '.join(cases)}), each on fresh nodes")
    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as tmp, Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed:>9,.0f}/{task.total:,.0f} {task.fields[unit]}"),
            _TimeColumn(), console=console) as prog:

        def case_task(description: str, total: float, unit: str, nodes: int,
                      expect_s: float | None = None) -> Callable[[int], None]:
            task = prog.add_task(description, total=total, start=False, unit=unit, expect_s=expect_s,
                                 state=f"starting {nodes} node{'s' if nodes > 1 else ''}")

            started = []

            def progress(done: int) -> None:
                if not started:  # the first call comes once the nodes are up: start the clock
                    started.append(True)
                    prog.start_task(task)
                prog.update(task, completed=done)
            return progress

        for i, case in enumerate(cases):
            base = Path(tmp) / f"{i}-{case}"
            base.mkdir()
            if case == "single":
                progress = case_task("single node, level one", messages, "records", 1)
                results.append(run_throughput(base, 1, "one", messages, size, progress))
            elif case == "quorum":
                progress = case_task("3 nodes, R=3, quorum", messages, "records", 3)
                results.append(run_throughput(base, 3, "quorum", messages, size, progress))
            elif case == "any":
                progress = case_task("3 nodes, R=1, any, one node down", messages, "records", 3)
                results.append(run_any(base, messages, size, progress))
            elif case in ("e2e", "e2e1"):
                nodes = 3 if case == "e2e" else 1
                progress = case_task(f"end to end at {rate}/s, {nodes} node{'s' if nodes > 1 else ''}",
                                     int(rate * seconds), "delivered", nodes, seconds + E2E_OVERHEAD_S)
                results.append(run_e2e(base, rate, seconds, size, progress, nodes=nodes))
            elif case == "failover":
                progress = case_task("failover after kill -9", 2, "steps", 3, FAILOVER_EXPECTED_S)
                results.append(run_failover(base, size, progress))
            elif case == "rolling-restart":
                progress = case_task("rolling restart under load", 3, "nodes", 3, 45)
                results.append(run_rolling(base, size, progress))
            elif case in MQTT_CASES:
                nodes, qos, target = MQTT_CASES[case]
                opts = dict(mqtt or {})
                msize = opts.pop("size", MQTT_SIZE)
                progress = case_task(f"MQTT QoS {qos}, {nodes} node{'s' if nodes > 1 else ''} (bar: target)",
                                     int(target * seconds), "received", nodes, seconds + MQTT_OVERHEAD_S)
                results.append(run_mqtt(base, case, seconds, msize, progress, **opts))
            _quiet_disk(base)
    console.print(render(results, size))
    if json_path:
        Path(json_path).write_text(json.dumps([r.row() for r in results], indent=2) + "\n")
        console.print(f"results written to {json_path}")
    return results
