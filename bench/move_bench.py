"""Shard move benchmark on real node processes (actors/moves.py).

Four nodes; a topic with one shard replicated on three of them.  The shard
is filled with ``--mib`` MiB of random (incompressible: batches are zstd
compressed, so repeated bytes would measure nothing) records at quorum, then a producer writes at quorum
for ``--seconds`` without a move (the baseline), and again while the
shard's leader replica moves to the fourth node.  Prints the time the move
took, the copy rate, the extrapolated time for 1 GiB, and the write
throughput with and without the move.  Bounded: every phase has a deadline
and the nodes are stopped by PID at the end.

    python bench/move_bench.py --mib 128 --seconds 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.client import Producer  # noqa: E402
from runtime.realcluster import RealCluster  # noqa: E402

TOPIC = "acme/bench/ops/move"


def _produce(c: RealCluster, via: str, seconds: float, size: int, stop: threading.Event | None = None) -> float:
    """Records per second acknowledged at quorum for ``seconds`` (or until ``stop``)."""
    pool = [os.urandom(size) for _ in range(4096)]  # no repeats inside one batch
    n = 0
    t0 = time.monotonic()
    with Producer(c.client(via), level="quorum", linger_ms=5, delivery_timeout_s=120, **c.auth) as p:
        futures = []
        while time.monotonic() - t0 < seconds and not (stop is not None and stop.is_set()):
            futures.append(p.send(TOPIC, pool[n % len(pool)]))
            n += 1
            if len(futures) >= 2000:
                for f in futures:
                    f.result(timeout=120)
                futures = []
        p.flush()
        for f in futures:
            f.result(timeout=120)
    return n / (time.monotonic() - t0)


def _fill(c: RealCluster, via: str, mib: int, size: int = 64 << 10) -> None:
    with Producer(c.client(via), level="quorum", linger_ms=5, delivery_timeout_s=600, max_block_s=600,
                  **c.auth) as p:
        futures = [p.send(TOPIC, os.urandom(size)) for _ in range((mib << 20) // size)]
        p.flush()
        for f in futures:
            f.result(timeout=300)


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=128, help="MiB in the shard before the move")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each throughput measurement")
    ap.add_argument("--record-bytes", type=int, default=512, help="size of the measured records")
    ap.add_argument("--move-mib-per-s", type=float, default=32.0, help="the nodes' move_bytes_per_s, in MiB/s")
    ap.add_argument("--dir", default="", help="where the nodes keep their data (default: a temporary directory)")
    a = ap.parse_args()
    base = Path(a.dir or tempfile.mkdtemp(prefix="chorus-move-bench-"))
    c = RealCluster(base, n=4, move_bytes_per_s=a.move_mib_per_s * (1 << 20))
    try:
        c.start()
        status, body = c.call("n1", "POST", "/topics", {"name": TOPIC, "shards": 1, "replication_factor": 3})
        assert status == 201, body
        s = c.wait_leaders("n1", TOPIC)[0]
        spare = next(n for n in ("n1", "n2", "n3", "n4") if n not in s["replicas"])
        via = spare  # the producers go through the node that holds nothing yet
        t = time.monotonic()
        _fill(c, via, a.mib)
        fill_s = time.monotonic() - t
        base_rate = _produce(c, via, a.seconds, a.record_bytes)
        # the move, with the producer running
        stop = threading.Event()
        rates: list[float] = []
        th = threading.Thread(target=lambda: rates.append(_produce(c, via, 3600, a.record_bytes, stop)))
        th.start()
        time.sleep(1.0)
        spare_before = _disk_bytes(c.base_dir / spare)
        t_move = time.monotonic()
        status, body = c.call(via, "POST", "/shards/move", {"topic": TOPIC, "shard": 0, "from": s["leader"],
                                                            "to": spare})
        assert status == 202, body
        deadline = t_move + 3600
        mv = None
        while time.monotonic() < deadline:
            mv = next((m for m in c.get(via, "/moves")["moves"] if m["shard"] == f"{TOPIC}#0"), None)
            if mv and mv["phase"] in ("done", "rolled_back"):
                break
            time.sleep(0.2)
        move_s = time.monotonic() - t_move
        stop.set()
        th.join(300)
        # what landed on the target's disk (its RocksDB, before compaction)
        size_mib = (_disk_bytes(c.base_dir / spare) - spare_before) / (1 << 20)
        out = {
            "copied_mib_on_disk": round(size_mib, 1), "fill_s": round(fill_s, 1), "move_phase": mv and mv["phase"],
            "move_s": round(move_s, 2), "copy_mib_per_s": round(size_mib / move_s, 1),
            "move_1gib_s_extrapolated": round(1024 / (size_mib / move_s), 1),
            "writes_per_s_without_move": round(base_rate), "writes_per_s_during_move": round(rates[0]) if rates else None,
            "record_bytes": a.record_bytes, "move_mib_per_s_limit": a.move_mib_per_s,
        }
        print(json.dumps(out, indent=2))
    finally:
        c.stop_all()


if __name__ == "__main__":
    main()
