"""The MQTT benchmark's load generator: one asyncio loop, N publisher and M
subscriber connections, on the codec of ``protocol/mqtt.py``.

paho-mqtt costs tens of microseconds of Python per message and a thread
per client: it cannot offer the 60,000 msgs/s the benchmark must measure.
This client keeps the per-message work to a few byte operations:

* a publisher builds its PUBLISH packets from a prefix computed once
  (fixed header, remaining length, topic) plus packet id, timestamp and
  padding, and writes a chunk of them in one ``transport.write``; every
  message of a chunk carries the chunk's ``time.perf_counter()`` (the
  clock is system-wide, so latency is comparable across processes);
* a subscriber decodes with :class:`~protocol.mqtt.MqttDecoder`
  (``server=False``), takes one clock reading per read, and answers the
  QoS 1 messages of a read with one write of PUBACKs.

Flow control is closed-loop, so the offered load follows what the broker
delivers instead of queueing without bound: publishers stop while more
than ``window`` x publishers messages are sent and not yet received, and a
QoS 1 publisher also keeps at most ``window`` packet ids unacknowledged.
(The broker acknowledges a QoS 1 publish once it is queued for its
subscribers, not once they have it: with PUBACKs alone as the brake,
publishers outrun the subscribers' windows of ``inflight_max`` and the
session queues overflow.)

Topics: subscriber ``j`` subscribes to ``<prefix>/<j>/#``; publisher ``i``
publishes to ``<prefix>/<i mod M>/p<i>``: every message reaches one
subscriber, so messages received = messages published.

A run: connect everything, subscribe, optionally wait until a node's
``GET /api/v1/mqtt`` shows the subscribers' routes (publishers on another
node), publish for ``warmup_s`` then ``seconds`` measured, stop, and drain.
Reported: messages received within the measured window per second, the
latency percentiles of those messages, what was sent and received over
the whole run, and the client's own CPU time.

``python -m runtime.mqtt_loadgen --config JSON`` runs one in its own
process (``runtime/bench.py`` does so by default, so that the client has a
core of its own): it prints ``progress <received>`` lines and finally
``result <json>``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from protocol.mqtt import (
    Connack,
    Connect,
    MqttDecoder,
    MqttLimits,
    Puback,
    Publish,
    Suback,
    Subscribe,
    encode,
    encode_publish,
)

TS = struct.Struct(">d")
PUBACK = struct.Struct(">BBH")
PIDS = [i.to_bytes(2, "big") for i in range(65536)]
PROGRESS_EVERY_S = 0.25


@dataclass
class LoadConfig:
    pub_addrs: list[tuple[str, int]]  # publisher i connects to pub_addrs[i % len]
    sub_addrs: list[tuple[str, int]]  # subscriber j connects to sub_addrs[j % len]
    qos: int = 0
    size: int = 128  # payload bytes (at least 8: the timestamp)
    publishers: int = 4
    subscribers: int = 4
    window: int = 500  # per publisher: unacknowledged ids (QoS 1) or messages not yet received (QoS 0)
    seconds: float = 10.0  # measured
    warmup_s: float = 1.0
    drain_s: float = 5.0
    connect_timeout_s: float = 10.0
    routes_url: str | None = None  # wait until this GET /api/v1/mqtt shows the subscribers' filters
    routes_timeout_s: float = 30.0
    prefix: str = "bench"
    username: str = ""  # nodes require a user (its password goes to a child process in CHORUS_PASSWORD)
    password: str = ""

    def filters(self) -> list[str]:
        return [f"{self.prefix}/{j}/#" for j in range(self.subscribers)]

    def topic(self, i: int) -> str:
        return f"{self.prefix}/{i % self.subscribers}/p{i}"


def publish_prefix(topic: str, qos: int, size: int) -> bytes:
    """The first bytes of a PUBLISH of ``topic`` with a ``size``-byte payload
    (QoS 0 or 1, no retain, no DUP): fixed header, remaining length and
    topic.  Then come the packet id (QoS 1 only) and the payload."""
    pid = 1 if qos else None
    packet = encode_publish(topic, bytes(size), qos, packet_id=pid)
    return packet[:len(packet) - size - (2 if qos else 0)]


def publish_chunk(prefix: bytes, body: bytes, pids: list[int] | None, count: int) -> bytes:
    """``count`` PUBLISH packets of one payload ``body``: QoS 0 when ``pids``
    is None, else one per packet id in ``pids``."""
    if pids is None:
        return (prefix + body) * count
    return b"".join([prefix + PIDS[p] + body for p in pids])


def payload(ts: float, size: int) -> bytes:
    return TS.pack(ts) + b"." * (size - TS.size)


class _Client(asyncio.Protocol):
    def __init__(self, gen: "LoadGen", name: str) -> None:
        self.gen = gen
        self.name = name
        self.decoder = MqttDecoder(MqttLimits(packet_bytes_max=1 << 20), server=False)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future = gen.loop.create_future()
        self.suback: asyncio.Future = gen.loop.create_future()
        self.writable = True
        self.wake = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cfg = self.gen.cfg
        transport.write(encode(Connect(self.name, clean_session=True, keep_alive_s=0,  # type: ignore[attr-defined]
                                       username=cfg.username or None, password=cfg.password.encode() or None)))

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.decoder.feed(data)
        except Exception as e:  # a protocol error from the broker ends the run
            self.gen.fail(f"{self.name}: {e}")
            return
        self.packets(packets)

    def packets(self, packets: list) -> None:
        for p in packets:
            self.control(p)

    def control(self, p: Any) -> None:
        t = type(p)
        if t is Connack:
            if p.return_code:
                self.gen.fail(f"{self.name}: CONNACK return code {p.return_code}")
            elif not self.connack.done():
                self.connack.set_result(p)
        elif t is Suback:
            if not self.suback.done():
                self.suback.set_result(p)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gen.closing:
            self.gen.fail(f"{self.name}: connection lost ({exc or 'closed by the broker'})")

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self.wake.set()


class Subscriber(_Client):
    def packets(self, packets: list) -> None:
        gen = self.gen
        now = time.perf_counter()
        acks = []
        n = 0
        lat = gen.latencies if gen.measuring else None
        unpack = TS.unpack_from
        for p in packets:
            if type(p) is Publish:
                n += 1
                if lat is not None:
                    lat.append(now - unpack(p.payload)[0])
                if p.qos:
                    acks.append(PUBACK.pack(0x40, 2, p.packet_id))
            else:
                self.control(p)
        if acks:
            self.transport.write(b"".join(acks))  # type: ignore[union-attr]
        if n:
            gen.delivered(n)


class Publisher(_Client):
    def __init__(self, gen: "LoadGen", name: str, index: int) -> None:
        super().__init__(gen, name)
        cfg = gen.cfg
        self.prefix = publish_prefix(cfg.topic(index), cfg.qos, cfg.size)
        self.unacked: set[int] = set()
        self.next_pid = 1
        self.sent = 0

    def control(self, p: Any) -> None:
        if type(p) is Puback:
            u = self.unacked
            if p.packet_id in u:
                u.discard(p.packet_id)
                self.wake.set()
            return
        super().control(p)

    def room(self) -> int:
        cfg = self.gen.cfg
        room = self.gen.room()
        if cfg.qos:
            return min(room, cfg.window - len(self.unacked))
        return room

    def _pids(self, n: int) -> list[int]:
        out = []
        u = self.unacked
        pid = self.next_pid
        while len(out) < n:
            if pid not in u:
                out.append(pid)
                u.add(pid)
            pid = pid % 65535 + 1
        self.next_pid = pid
        return out

    async def run(self) -> None:
        gen = self.gen
        cfg = gen.cfg
        size = cfg.size
        low = max(1, cfg.window // 8)  # refill in chunks, not a packet per acknowledgement
        while not gen.stop_publishing:
            room = self.room()
            if room < low or not self.writable:
                self.wake.clear()
                await self.wake.wait()
                continue
            n = min(room, cfg.window)
            body = payload(time.perf_counter(), size)
            self.transport.write(publish_chunk(self.prefix, body, self._pids(n) if cfg.qos else None, n))  # type: ignore[union-attr]
            self.sent += n
            gen.sent += n
            await asyncio.sleep(0)  # let the acknowledgements and deliveries in


@dataclass
class LoadResult:
    messages: int = 0  # received within the measured window
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    sent: int = 0  # over the whole run
    received: int = 0
    client_cpu: float = 0.0  # cores the load generator used in the measured window
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def percentiles(samples: list[float]) -> tuple[float, float, float] | None:
    """p50, p99 and p99.9 of ``samples`` (seconds) in milliseconds."""
    if not samples:
        return None
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return round(s[min(n - 1, int(q / 100 * n))] * 1000, 2)
    return at(50), at(99), at(99.9)


class LoadGen:
    def __init__(self, cfg: LoadConfig, progress: Callable[[int], None] = lambda _n: None) -> None:
        if cfg.size < TS.size:
            raise ValueError(f"size must be at least {TS.size} bytes (the timestamp)")
        if cfg.qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        self.cfg = cfg
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        self.sent = 0
        self.received = 0
        self.measuring = False
        self.latencies: list[float] = []
        self.stop_publishing = False
        self.closing = False
        self.error: str | None = None
        self.failed = self.loop.create_future()
        self.publishers: list[Publisher] = []
        self.subscribers: list[Subscriber] = []

    def fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        if not self.failed.done():
            self.failed.set_result(why)

    def room(self) -> int:
        """Messages the publishers may send before more are received."""
        return self.cfg.window * self.cfg.publishers - (self.sent - self.received)

    def delivered(self, n: int) -> None:
        self.received += n
        for p in self.publishers:
            p.wake.set()

    async def _open(self, proto: _Client, addr: tuple[str, int]) -> None:
        await self.loop.create_connection(lambda: proto, addr[0], addr[1])
        await self._guard(proto.connack, f"{proto.name}: no CONNACK")

    async def _guard(self, fut: Any, what: str) -> Any:
        done, _ = await asyncio.wait([fut, self.failed], timeout=self.cfg.connect_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.failed.done():
            raise RuntimeError(self.error)
        if fut not in done:
            raise RuntimeError(f"{what} within {self.cfg.connect_timeout_s} s")
        return fut.result()

    async def _wait_routes(self) -> None:
        want = set(self.cfg.filters())
        deadline = time.monotonic() + self.cfg.routes_timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            try:
                body = await self.loop.run_in_executor(None, _get_json, self.cfg.routes_url, self.cfg.username,
                                                       self.cfg.password)
                seen = {f for flts in (body.get("route_sample") or {}).values() for f in flts}
                if want <= seen:
                    return
            except (OSError, ValueError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"routes {sorted(want - seen)} did not reach {self.cfg.routes_url} "
                           f"within {self.cfg.routes_timeout_s} s")

    async def run(self) -> LoadResult:
        cfg = self.cfg
        tag = f"lg{os.getpid()}"
        try:
            self.subscribers = [Subscriber(self, f"{tag}-sub{j}") for j in range(cfg.subscribers)]
            await asyncio.gather(*(self._open(s, cfg.sub_addrs[j % len(cfg.sub_addrs)])
                                   for j, s in enumerate(self.subscribers)))
            for s, flt in zip(self.subscribers, cfg.filters()):
                s.transport.write(encode(Subscribe(1, ((flt, cfg.qos),))))  # type: ignore[union-attr]
            for s in self.subscribers:
                await self._guard(s.suback, f"{s.name}: no SUBACK")
            if cfg.routes_url:
                await self._wait_routes()
            self.publishers = [Publisher(self, f"{tag}-pub{i}", i) for i in range(cfg.publishers)]
            await asyncio.gather(*(self._open(p, cfg.pub_addrs[i % len(cfg.pub_addrs)])
                                   for i, p in enumerate(self.publishers)))
            return await self._measure()
        except RuntimeError as e:
            return LoadResult(sent=self.sent, received=self.received, error=str(e))
        finally:
            self.closing = True
            for c in [*self.publishers, *self.subscribers]:
                if c.transport is not None:
                    c.transport.close()

    async def _measure(self) -> LoadResult:
        cfg = self.cfg
        tasks = [asyncio.ensure_future(p.run()) for p in self.publishers]
        try:
            if await self._sleep_unless_failed(cfg.warmup_s):
                raise RuntimeError(self.error)
            t0, r0, cpu0 = time.perf_counter(), self.received, time.process_time()
            self.measuring = True
            end = t0 + cfg.seconds
            while (left := end - time.perf_counter()) > 0:
                if await self._sleep_unless_failed(min(PROGRESS_EVERY_S, left)):
                    raise RuntimeError(self.error)
                self.progress(self.received - r0)
            self.measuring = False
            t1, r1, cpu1 = time.perf_counter(), self.received, time.process_time()
            self.stop_publishing = True
            for p in self.publishers:
                p.wake.set()
            drain_end = time.monotonic() + cfg.drain_s
            while self.received < self.sent and time.monotonic() < drain_end and self.error is None:
                await asyncio.sleep(0.05)
        finally:
            self.stop_publishing = True
            for p in self.publishers:
                p.wake.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        pct = percentiles(self.latencies)
        res = LoadResult(messages=r1 - r0, seconds=round(t1 - t0, 3), msgs_per_s=round((r1 - r0) / (t1 - t0)),
                         sent=self.sent, received=self.received, client_cpu=round((cpu1 - cpu0) / (t1 - t0), 2),
                         error=self.error)
        if pct:
            res.p50_ms, res.p99_ms, res.p999_ms = pct
        return res

    async def _sleep_unless_failed(self, seconds: float) -> bool:
        """Sleep; True if the run failed meanwhile."""
        await asyncio.wait([self.failed], timeout=seconds)
        return self.failed.done()


def _get_json(url: str, username: str = "", password: str = "") -> dict:
    import base64

    headers = {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()} \
        if username else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return json.loads(r.read())


def run_load(cfg: LoadConfig, progress: Callable[[int], None] = lambda _n: None) -> LoadResult:
    """One run in this process (its own event loop), bounded in time."""
    limit = cfg.connect_timeout_s * 3 + cfg.routes_timeout_s + cfg.warmup_s + cfg.seconds + cfg.drain_s + 10

    async def main() -> LoadResult:
        gen = LoadGen(cfg, progress)
        try:
            return await asyncio.wait_for(gen.run(), limit)
        except asyncio.TimeoutError:
            return LoadResult(sent=gen.sent, received=gen.received, error=f"the run took more than {limit:.0f} s")

    return asyncio.run(main())


def run_load_process(cfg: LoadConfig, progress: Callable[[int], None] = lambda _n: None) -> LoadResult:
    """One run in a child process (``python -m runtime.mqtt_loadgen``), bounded in time."""
    import subprocess

    limit = cfg.connect_timeout_s * 3 + cfg.routes_timeout_s + cfg.warmup_s + cfg.seconds + cfg.drain_s + 20
    cmd = [sys.executable, "-m", "runtime.mqtt_loadgen", "--config", json.dumps(dict(asdict(cfg), password=""))]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CHORUS_PASSWORD=cfg.password) if cfg.password else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env)
    deadline = time.monotonic() + limit
    result: LoadResult | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("progress "):
                progress(int(line.split()[1]))
            elif line.startswith("result "):
                result = LoadResult(**json.loads(line[7:]))
            if time.monotonic() > deadline:
                break
        proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None:
        err = (proc.stderr.read() if proc.stderr else "")[-2000:]
        return LoadResult(error=f"the load generator gave no result (exit {proc.returncode}): {err}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="LoadConfig as JSON")
    args = ap.parse_args(argv)
    raw = json.loads(args.config)
    raw["pub_addrs"] = [tuple(a) for a in raw["pub_addrs"]]
    raw["sub_addrs"] = [tuple(a) for a in raw["sub_addrs"]]
    cfg = LoadConfig(**raw)
    cfg.password = cfg.password or os.environ.get("CHORUS_PASSWORD", "")

    def progress(n: int) -> None:
        print(f"progress {n}", flush=True)

    res = run_load(cfg, progress)
    print("result " + json.dumps(asdict(res)), flush=True)
    return 0 if res.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
