"""Append/read throughput of the storage engines.

Appends 100-byte records in write batches of 500, with a ``sync()`` after each
batch (as a log store does before acknowledging), for about ``--seconds``,
then reads everything back with one ``scan``.  Runs RocksStore (in a temp
directory) and MemoryStore.

Usage: python bench/storage_bench.py [--seconds N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.base import Store, WriteBatch  # noqa: E402
from storage.keys import prefix_end, prefixed  # noqa: E402
from storage.memory import MemoryDisk  # noqa: E402
from storage.rocks import RocksStore  # noqa: E402

RECORD_BYTES = 100
BATCH_RECORDS = 500
PREFIX = b"log/"


def append_for(store: Store, seconds: float) -> tuple[int, float]:
    """Append synced batches for ``seconds``; returns (records, elapsed_s)."""
    record = b"r" * RECORD_BYTES
    seq = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = WriteBatch()
        for _ in range(BATCH_RECORDS):
            batch.put(prefixed(PREFIX, seq), record)
            seq += 1
        store.write(batch)
        store.sync()
    return seq, time.perf_counter() - t0


def read_all(store: Store, expected: int) -> tuple[int, float]:
    """Scan every record back; returns (records, elapsed_s)."""
    t0 = time.perf_counter()
    n = 0
    for _key, value in store.scan(PREFIX, prefix_end(PREFIX)):
        n += 1
    elapsed = time.perf_counter() - t0
    if n != expected:
        raise RuntimeError(f"read {n} records, wrote {expected}")
    return n, elapsed


def report(engine: str, phase: str, records: int, elapsed_s: float) -> None:
    rate = records / elapsed_s
    mb_per_s = rate * RECORD_BYTES / 1e6
    print(f"{engine:8} {phase:6} {records:>10,} records in {elapsed_s:6.2f} s  "
          f"{rate:>12,.0f} records/s  {mb_per_s:8.1f} MB/s")


def run(engine: str, open_store: Callable[[], Store], seconds: float) -> None:
    store = open_store()
    try:
        written, w_s = append_for(store, seconds)
        report(engine, "append", written, w_s)
        read, r_s = read_all(store, written)
        report(engine, "scan", read, r_s)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="append phase length per engine")
    args = parser.parse_args(argv)
    print(f"{RECORD_BYTES}-byte records, batches of {BATCH_RECORDS}, sync after each batch")
    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as tmp:
        run("rocksdb", lambda: RocksStore(str(Path(tmp) / "db")), args.seconds)
    run("memory", lambda: MemoryDisk().open("bench"), args.seconds)


if __name__ == "__main__":
    main()
