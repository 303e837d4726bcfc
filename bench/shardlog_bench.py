"""Throughput of the shard log (storage/shardlog.py) over RocksDB.

Producers' batches of 500 records of 100 bytes are encoded up front (a pool
of distinct batches); the append phase then does what a shard leader does
per batch -- ``rebase`` (assign offsets, epoch, broker time; header only),
``ShardLog.append`` and ``sync`` -- either syncing after every batch or every
10 batches (group commit), for about ``--seconds``.  The read phase reopens
the log (cold cache: everything comes from RocksDB) and reads it all back
with ``read(offset, 1 MiB)``, counting records from the batch headers.
Finally it reports the per-batch cost of encode/decode/rebase/read_header.

Target: >= 500,000 records/s appended and read back.

Usage: python bench/shardlog_bench.py [--seconds N] [--payload text|random|zeros]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.records import Record, decode_batch, encode_batch, read_header, rebase  # noqa: E402
from storage.rocks import RocksStore  # noqa: E402
from storage.shardlog import ShardLog, batch_info  # noqa: E402

RECORD_BYTES = 100
BATCH_RECORDS = 500
POOL_BATCHES = 32
READ_BYTES_MAX = 1 << 20


def make_payload(rng: random.Random, kind: str) -> bytes:
    """One 100-byte record payload of the given kind."""
    if kind == "random":
        return rng.randbytes(RECORD_BYTES)
    if kind == "zeros":
        return bytes(RECORD_BYTES)
    # JSON-ish telemetry: compresses about 2-3x, like typical messages
    text = (f'{{"dev":"sensor-{rng.randrange(10_000):04d}","t":{rng.random() * 100:.3f},'
            f'"ok":{str(rng.random() < 0.9).lower()},"seq":{rng.randrange(1 << 30)},"pad":"')
    return (text + "x" * RECORD_BYTES)[: RECORD_BYTES - 2].encode() + b'"}'


def make_records(rng: random.Random, kind: str) -> list[Record]:
    return [Record(None, make_payload(rng, kind), producer_ts_ms=1_700_000_000_000 + i)
            for i in range(BATCH_RECORDS)]


def append_for(log: ShardLog, pool: list[bytes], seconds: float, sync_every: int) -> tuple[int, float]:
    """Rebase+append pool batches for ``seconds``, syncing every ``sync_every``
    batches (0: only once at the end, to show the CPU cost); (records, s)."""
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    step = sync_every or 100
    while True:
        for _ in range(step):
            batch = rebase(pool[n % len(pool)], log.end_offset, 1, 1_700_000_000_000 + n)
            log.append(batch)
            n += 1
        if sync_every:
            log.sync()
        if time.perf_counter() >= deadline:
            break
    log.sync()
    return n * BATCH_RECORDS, time.perf_counter() - t0


def read_all(log: ShardLog, *, decode: bool = False, from_offset: int | None = None) -> tuple[int, int, float]:
    """Read the log in 1 MiB steps, counting records from the headers (or
    decoding every batch, as a consumer would); (records, bytes, s)."""
    records = total_bytes = 0
    offset = log.start_offset if from_offset is None else from_offset
    t0 = time.perf_counter()
    while offset < log.end_offset:
        batches = log.read(offset, READ_BYTES_MAX)
        for batch in batches:
            base, count, _ = batch_info(batch)
            if decode:
                count = len(decode_batch(batch)[1])
            records += count
            total_bytes += len(batch)
        offset = base + count
    return records, total_bytes, time.perf_counter() - t0


def report(phase: str, records: int, elapsed_s: float, stored_bytes: int | None = None) -> None:
    rate = records / elapsed_s
    extra = f"  {stored_bytes / elapsed_s / 1e6:7.1f} MB/s stored" if stored_bytes is not None else ""
    print(f"  {phase:22} {records:>11,} records {elapsed_s:6.2f} s {rate:>11,.0f} records/s "
          f"{rate * RECORD_BYTES / 1e6:7.1f} MB/s payload{extra}")


def per_call_us(fn: Callable[[], object], min_s: float = 0.3) -> float:
    """Mean microseconds per call of ``fn`` over at least ``min_s``."""
    n = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_s or n < 5:
        fn()
        n += 1
    return elapsed / n * 1e6


def codec_costs(records: list[Record], batch: bytes) -> None:
    print(f"per batch of {BATCH_RECORDS} records:")
    for name, fn in [
        ("encode_batch", lambda: encode_batch(records)),
        ("encode_batch (no zstd)", lambda: encode_batch(records, compress=False)),
        ("decode_batch", lambda: decode_batch(batch)),
        ("rebase", lambda: rebase(batch, 12345, 2, 3)),
        ("read_header (+body crc)", lambda: read_header(batch)),
    ]:
        us = per_call_us(fn)
        print(f"  {name:24} {us:9.1f} us  ({BATCH_RECORDS / us * 1e6:>12,.0f} records/s)")


def run(tmp: Path, pool: list[bytes], seconds: float, sync_every: int) -> None:
    path = tmp / f"sync{sync_every}"
    print(f"sync every {sync_every} batch(es):" if sync_every else "no sync until the end (CPU cost only):")
    store = RocksStore(path)
    try:
        log = ShardLog(store)
        n, s = append_for(log, pool, seconds, sync_every)
        report("append+sync", n, s, log.stats.appended_bytes)
        print(f"  {'':22} {log.stats.syncs} syncs, {s / max(1, log.stats.syncs) * 1e3:.2f} ms per sync interval")
        tail_batches = log.stats.cache_batches
        n_hot, _, s_hot = read_all(log, from_offset=log.end_offset - tail_batches * BATCH_RECORDS)
        report("read (tail cache)", n_hot, s_hot)
        log = ShardLog(store)  # reopened: cold cache, every read goes to RocksDB
        n2, b2, s2 = read_all(log)
        assert n2 == n, (n2, n)
        report("read (cold, RocksDB)", n2, s2, b2)
        print(f"  {'':22} {log.stats.cache_misses} reads, {log.stats.batches_from_store} batches from store")
        if sync_every == 1:
            log = ShardLog(store)
            n4, b4, s4 = read_all(log, decode=True)
            report("read + decode_batch", n4, s4, b4)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="append phase length per variant")
    parser.add_argument("--payload", choices=["text", "random", "zeros"], default="text")
    args = parser.parse_args(argv)
    rng = random.Random(1)
    pool_records = [make_records(rng, args.payload) for _ in range(POOL_BATCHES)]
    pool = [encode_batch(recs) for recs in pool_records]
    raw = BATCH_RECORDS * RECORD_BYTES
    print(f"{RECORD_BYTES}-byte {args.payload} records, {BATCH_RECORDS} per batch; "
          f"encoded batch {len(pool[0]):,} bytes for {raw:,} payload bytes "
          f"(codec {read_header(pool[0]).codec})")
    with tempfile.TemporaryDirectory(prefix="chorus-shardlog-bench-") as tmp:
        for sync_every in (1, 10, 0):
            run(Path(tmp), pool, args.seconds, sync_every)
    codec_costs(pool_records[0], pool[0])


if __name__ == "__main__":
    main()
