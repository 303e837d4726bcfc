"""Tests for the shard replica log (storage/shardlog.py) over both engines."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.records as records
import storage.shardlog as shardlog_mod
from protocol.records import Record, encode_batch, read_header
from storage.base import Store
from storage.memory import MemoryDisk
from storage.rocks import RocksStore
from storage.shardlog import BadBatch, OffsetOutOfRange, ShardLog, batch_info


def make_batch(base: int, count: int, epoch: int = 0, payload_bytes: int = 20, seed: int = 0) -> bytes:
    """A batch of ``count`` small records at ``base``; payloads vary with ``seed``."""
    rng = random.Random(base * 7919 + seed)
    recs = [Record(None, rng.randbytes(payload_bytes)) for _ in range(count)]
    return encode_batch(recs, base_offset=base, epoch=epoch)


class Env:
    """Opens, reopens and (for the memory engine) crashes one store."""

    crashes = False

    def open(self) -> Store:
        raise NotImplementedError

    def reopen(self) -> Store:
        """A fresh handle after a clean shutdown of the current one."""
        raise NotImplementedError

    def crash(self) -> Store:
        raise NotImplementedError


class MemoryEnv(Env):
    crashes = True

    def __init__(self) -> None:
        self.disk = MemoryDisk()
        self.store = self.disk.open("shard")

    def open(self) -> Store:
        return self.store

    def reopen(self) -> Store:
        self.store.close()
        self.store = self.disk.open("shard")
        return self.store

    def crash(self) -> Store:
        self.disk.crash()
        self.store = self.disk.open("shard")
        return self.store


class RocksEnv(Env):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = RocksStore(path)

    def open(self) -> Store:
        return self.store

    def reopen(self) -> Store:
        self.store.close()
        self.store = RocksStore(self.path)
        return self.store

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=["memory", "rocks"])
def env(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "memory":
        yield MemoryEnv()
    else:
        e = RocksEnv(tmp_path / "db")
        yield e
        e.close()


@pytest.fixture
def mem() -> MemoryEnv:
    return MemoryEnv()


def fill(log: ShardLog, counts: list[int], epoch: int = 0) -> list[bytes]:
    """Append one batch per count; returns the batches."""
    out = []
    for n in counts:
        b = make_batch(log.end_offset, n, epoch)
        log.append(b)
        out.append(b)
    return out


# -- header parsing agrees with protocol/records.py ----------------------------


def test_layout_constants_agree_with_protocol() -> None:
    assert shardlog_mod.BATCH_HEADER_BYTES == records.HEADER_BYTES
    assert shardlog_mod.BATCH_MAGIC == records.MAGIC
    assert shardlog_mod.BATCH_VERSION == records.VERSION
    assert shardlog_mod._CRC_COVERS_FROM == records.CRC_COVERS_FROM


@settings(max_examples=100, deadline=None)
@given(
    base=st.integers(0, 2**63), count=st.integers(1, 40), epoch=st.integers(0, 2**32 - 1),
    pid=st.integers(0, 2**64 - 1), ts=st.integers(0, 2**64 - 1), payload=st.binary(max_size=600),
)
def test_batch_info_agrees_with_read_header(base, count, epoch, pid, ts, payload) -> None:
    data = encode_batch([Record(None, payload)] * count, base_offset=base, epoch=epoch,
                        producer_id=pid, broker_ts_ms=ts)
    h = read_header(data)
    assert batch_info(data) == (h.base_offset, h.record_count, h.leader_epoch)
    moved = records.rebase(data, base // 2, epoch // 3, 1)
    h = read_header(moved)
    assert batch_info(moved) == (h.base_offset, h.record_count, h.leader_epoch)


def test_batch_info_rejects_what_read_header_rejects() -> None:
    data = make_batch(0, 5)
    for pos in range(records.HEADER_BYTES):
        bad = bytearray(data)
        bad[pos] ^= 0x41
        with pytest.raises(records.CorruptBatch):
            read_header(bytes(bad), check_body=False)
        with pytest.raises(BadBatch):
            batch_info(bytes(bad))
    for n in (0, 10, records.HEADER_BYTES, len(data) - 1):
        with pytest.raises(BadBatch):
            batch_info(data[:n])
    with pytest.raises(BadBatch):
        batch_info(data + b"x")


# -- append, read, sync --------------------------------------------------------


def test_append_read_sync(env: Env) -> None:
    log = ShardLog(env.open())
    assert (log.start_offset, log.end_offset, log.synced_offset, log.last_epoch) == (0, 0, 0, -1)
    assert log.read(0, 1 << 20) == []
    batches = fill(log, [3, 1, 5])
    assert log.end_offset == 9 and log.synced_offset == 0
    log.sync()
    assert log.synced_offset == 9
    assert log.read(0, 1 << 20) == batches
    assert log.read(3, 1 << 20) == batches[1:]
    assert log.read(5, 1 << 20) == batches[2:]  # the batch containing offset 5
    assert log.read(8, 1 << 20) == batches[2:]
    assert log.read(9, 1 << 20) == []
    with pytest.raises(OffsetOutOfRange):
        log.read(10, 100)
    with pytest.raises(OffsetOutOfRange):
        log.read(-1, 100)


def test_append_checks(env: Env) -> None:
    log = ShardLog(env.open())
    fill(log, [2], epoch=3)
    with pytest.raises(ValueError, match="base offset"):
        log.append(make_batch(5, 1, 3))
    with pytest.raises(ValueError, match="epoch"):
        log.append(make_batch(2, 1, 2))
    bad = bytearray(make_batch(2, 1, 3))
    bad[10] ^= 1
    with pytest.raises(BadBatch):
        log.append(bytes(bad))
    assert log.end_offset == 2
    assert log.append(bytearray(make_batch(2, 1, 3))) == 3  # bytes-like accepted


def test_append_many_is_atomic(env: Env) -> None:
    log = ShardLog(env.open())
    good = [make_batch(0, 2), make_batch(2, 3, 1)]
    with pytest.raises(ValueError):
        log.append_many(good + [make_batch(9, 1, 1)])
    assert log.end_offset == 0 and log.read(0, 1 << 20) == []
    assert log.append_many(good) == 5
    assert log.append_many([]) == 5
    assert log.epoch_index() == [(0, 0), (1, 2)]
    log.sync()
    log = ShardLog(env.reopen())
    assert log.read(0, 1 << 20) == good and log.epoch_index() == [(0, 0), (1, 2)]


def test_reopen_recovers_state(env: Env) -> None:
    log = ShardLog(env.open())
    fill(log, [2, 2], epoch=1)
    fill(log, [3], epoch=4)
    fill(log, [1, 1], epoch=6)
    log.truncate_before(3)
    log.sync()
    expected = log.read(log.start_offset, 1 << 20)
    state = (log.start_offset, log.end_offset, log.last_epoch, log.epoch_index())
    log = ShardLog(env.reopen())
    assert (log.start_offset, log.end_offset, log.last_epoch, log.epoch_index()) == state
    assert log.synced_offset == log.end_offset == 9
    assert log.read(log.start_offset, 1 << 20) == expected
    assert [log.epoch_at(o) for o in range(10)] == [None, None, 1, 1, 4, 4, 4, 6, 6, None]
    fill(log, [2], epoch=6)
    assert log.end_offset == 11


def test_reopen_rebuilds_a_missing_epoch_index(env: Env) -> None:
    log = ShardLog(env.open())
    fill(log, [2], epoch=1)
    fill(log, [3, 1], epoch=2)
    fill(log, [1], epoch=5)
    index = log.epoch_index()
    store = env.open()
    for key, _ in list(store.scan(b"e", b"f")):
        store.delete(key)
    log = ShardLog(store)
    assert log.epoch_index() == index == [(1, 0), (2, 2), (5, 6)]
    assert sorted(k for k, _ in store.scan(b"e", b"f")) == [b"e" + o.to_bytes(8, "big") for o in (0, 2, 6)]


# -- crash semantics (MemoryDisk) ----------------------------------------------


def test_unsynced_batches_lost_after_crash(mem: MemoryEnv) -> None:
    log = ShardLog(mem.open())
    synced = fill(log, [2, 3])
    log.sync()
    fill(log, [4, 1], epoch=1)
    assert log.end_offset == 10 and log.synced_offset == 5
    log = ShardLog(mem.crash())
    assert (log.end_offset, log.synced_offset, log.last_epoch) == (5, 5, 0)
    assert log.epoch_index() == [(0, 0)]
    assert log.read(0, 1 << 20) == synced
    fill(log, [2], epoch=2)
    log.sync()
    log = ShardLog(mem.crash())
    assert log.end_offset == 7 and log.epoch_index() == [(0, 0), (2, 5)]


def test_group_commit_one_sync_covers_many_appends(mem: MemoryEnv) -> None:
    log = ShardLog(mem.open())
    for producer in range(20):
        log.append(make_batch(log.end_offset, 1 + producer % 3, seed=producer))
    log.sync()
    end = log.end_offset
    assert log.stats.syncs == 1 and log.synced_offset == end
    log = ShardLog(mem.crash())
    assert log.end_offset == end


def test_unsynced_truncation_is_undone_by_crash(mem: MemoryEnv) -> None:
    log = ShardLog(mem.open())
    batches = fill(log, [2, 2, 2])
    log.sync()
    assert log.truncate_after(2) == 2
    assert log.synced_offset == 2
    log = ShardLog(mem.crash())  # the truncation was not synced
    assert log.read(0, 1 << 20) == batches
    log.truncate_after(2)
    log.sync()
    log = ShardLog(mem.crash())
    assert log.end_offset == 2


# -- tail cache ----------------------------------------------------------------


def test_cache_serves_the_tail_and_store_the_rest(env: Env) -> None:
    batch_bytes = len(make_batch(0, 10))
    log = ShardLog(env.open(), cache_bytes_max=5 * batch_bytes)
    batches = fill(log, [10] * 20)
    assert log.stats.cache_batches == 5
    assert log.read(190, 1 << 20) == batches[19:]
    assert log.read(150, 1 << 20) == batches[15:]
    assert (log.stats.cache_hits, log.stats.cache_misses) == (2, 0)
    assert log.read(0, 3 * batch_bytes) == batches[:3]
    assert log.read(120, 1 << 20) == batches[12:]  # starts in the store, ends in the cache
    assert (log.stats.cache_hits, log.stats.cache_misses) == (2, 2)
    assert log.stats.batches_from_store == 3 + 3 and log.stats.batches_from_cache == 1 + 5 + 5
    uncached = ShardLog(env.open(), cache_bytes_max=0)
    for start in range(0, 200, 7):
        for max_bytes in (0, batch_bytes, 4 * batch_bytes, 1 << 20):
            for max_offset in (None, start + 5, start + 40, 199):
                got = log.read(start, max_bytes, max_offset=max_offset)
                assert got == uncached.read(start, max_bytes, max_offset=max_offset)
    assert uncached.stats.cache_hits == 0


def test_cache_bytes_bounded(env: Env) -> None:
    cache_max = 10_000
    log = ShardLog(env.open(), cache_bytes_max=cache_max)
    rng = random.Random(5)
    for _ in range(300):
        log.append(make_batch(log.end_offset, rng.randint(1, 60), payload_bytes=rng.randint(1, 200)))
        cached = log._cache_batches[log._cache_head:]
        assert log.stats.cache_bytes == sum(map(len, cached)) <= cache_max
        assert log.stats.cache_batches == len(cached)
    assert len(log._cache_bases) < 200  # evicted entries are compacted away


def test_batch_larger_than_cache_is_not_cached(env: Env) -> None:
    log = ShardLog(env.open(), cache_bytes_max=100)
    b = fill(log, [50])
    assert log.stats.cache_batches == 0
    assert log.read(0, 1) == b and log.stats.cache_misses == 1


# -- read limits ---------------------------------------------------------------


@pytest.mark.parametrize("cache_bytes_max", [0, 1 << 20])
def test_read_limits(env: Env, cache_bytes_max: int) -> None:
    log = ShardLog(env.open(), cache_bytes_max=cache_bytes_max)
    batches = fill(log, [5] * 10)
    size = len(batches[0])
    assert log.read(0, 0) == batches[:1]  # at least one batch
    assert log.read(0, size) == batches[:1]
    assert log.read(0, 3 * size) == batches[:3]
    assert log.read(0, 3 * size + 1) == batches[:3]
    assert log.read(7, 2 * size) == batches[1:3]
    assert log.read(0, 1 << 20, max_offset=24) == batches[:5]
    assert log.read(0, 1 << 20, max_offset=23) == batches[:4]  # batch 20..24 ends beyond
    assert log.read(20, 1 << 20, max_offset=23) == []
    assert log.read(20, 1 << 20, max_offset=10) == []
    assert log.read(49, 1 << 20, max_offset=49) == batches[9:]
    hits = log.stats.cache_hits
    assert (hits, log.stats.cache_misses) == ((10, 0) if cache_bytes_max else (0, 10))


# -- truncation and epochs -----------------------------------------------------


def test_truncate_after_at_batch_granularity(env: Env) -> None:
    log = ShardLog(env.open())
    batches = fill(log, [3, 3, 3])  # 0-2, 3-5, 6-8
    log.sync()
    assert log.truncate_after(8) == 9
    assert log.truncate_after(100) == 9
    assert log.truncate_after(5) == 6  # ends exactly at a batch boundary
    assert log.truncate_after(4) == 3  # the batch 3-5 straddles 4: dropped
    assert log.synced_offset == 3
    assert log.read(0, 1 << 20) == batches[:1]
    assert log.append(make_batch(3, 2, 1)) == 5
    log.sync()
    log = ShardLog(env.reopen())
    assert log.end_offset == 5 and log.epoch_index() == [(0, 0), (1, 3)]
    assert log.truncate_after(-1) == 0
    assert log.read(0, 100) == [] and log.last_epoch == -1
    log = ShardLog(env.reopen())
    assert (log.start_offset, log.end_offset, log.epoch_index()) == (0, 0, [])


def test_epochs_and_end_of_epoch(env: Env) -> None:
    log = ShardLog(env.open())
    fill(log, [2, 2], epoch=1)  # 0-3
    fill(log, [3], epoch=3)  # 4-6
    fill(log, [1, 2], epoch=4)  # 7-9
    assert log.last_epoch == 4
    assert log.epoch_index() == [(1, 0), (3, 4), (4, 7)]
    assert [log.epoch_at(o) for o in range(-1, 11)] == [None, 1, 1, 1, 1, 3, 3, 3, 4, 4, 4, None]
    assert [log.end_of_epoch(e) for e in range(6)] == [0, 4, 4, 7, 10, 10]
    # a follower that diverged at epoch 3 truncates to the leader's end of epoch 3
    assert log.truncate_after(log.end_of_epoch(3) - 1) == 7
    assert log.epoch_index() == [(1, 0), (3, 4)] and log.last_epoch == 3
    fill(log, [2], epoch=7)
    assert log.epoch_index() == [(1, 0), (3, 4), (7, 7)]
    assert log.end_of_epoch(5) == 7


def test_truncate_before_for_retention(env: Env) -> None:
    log = ShardLog(env.open())
    batches = fill(log, [3, 3], epoch=1) + fill(log, [3, 3], epoch=2)  # 0-5 e1, 6-11 e2
    assert log.truncate_before(0) == 0
    assert log.truncate_before(4) == 3  # the batch containing 4 stays
    assert log.start_offset == 3 and log.epoch_index() == [(1, 3), (2, 6)]
    with pytest.raises(OffsetOutOfRange):
        log.read(2, 100)
    assert log.read(3, 1 << 20) == batches[1:]
    assert log.truncate_before(7) == 6
    assert log.epoch_index() == [(2, 6)] and log.epoch_at(5) is None
    assert log.end_of_epoch(1) == 6
    with pytest.raises(ValueError):
        log.truncate_before(13)
    assert log.truncate_before(12) == 12  # everything: the log is empty but keeps its offsets
    assert (log.start_offset, log.end_offset, log.last_epoch) == (12, 12, 2)
    assert log.read(12, 100) == []
    log.sync()
    log = ShardLog(env.reopen())
    assert (log.start_offset, log.end_offset, log.last_epoch, log.epoch_index()) == (12, 12, 2, [(2, 12)])
    with pytest.raises(ValueError):
        log.append(make_batch(0, 1, 2))
    log.append(make_batch(12, 2, 3))
    assert log.epoch_index() == [(3, 12)]
    log = ShardLog(env.reopen())
    assert (log.start_offset, log.end_offset, log.epoch_index()) == (12, 14, [(3, 12)])


# -- a random model check ------------------------------------------------------


@dataclass
class Model:
    """The log as a plain list of (base, count, epoch, bytes)."""

    batches: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    start: int = 0
    last_epoch: int = -1

    @property
    def end(self) -> int:
        return self.batches[-1][0] + self.batches[-1][1] if self.batches else self.start

    def read(self, frm: int, max_bytes: int, max_offset: int | None) -> list[bytes]:
        out: list[bytes] = []
        total = 0
        for base, count, _, data in self.batches:
            if base + count <= frm:
                continue
            if max_offset is not None and base + count - 1 > max_offset:
                break
            if out and total + len(data) > max_bytes:
                break
            out.append(data)
            total += len(data)
        return out

    def end_of_epoch(self, epoch: int) -> int:
        return max((b + c for b, c, e, _ in self.batches if e <= epoch), default=self.start)

    def epoch_at(self, offset: int) -> int | None:
        return next((e for b, c, e, _ in self.batches if b <= offset < b + c), None)

    def snapshot(self) -> "Model":
        return Model(list(self.batches), self.start, self.last_epoch)


def run_model_check(env: Env, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    cache_max = rng.choice([0, 300, 2000, 1 << 20])
    log = ShardLog(env.open(), cache_bytes_max=cache_max)
    model = Model()
    durable = model.snapshot()
    epoch = 0
    for step in range(steps):
        op = rng.random()
        if op < 0.45:
            if rng.random() < 0.1:
                epoch += rng.randint(1, 3)
            new = [make_batch(model.end, rng.randint(1, 8), epoch, rng.randint(1, 120), seed=step)]
            if rng.random() < 0.3:
                new.append(make_batch(model.end + read_header(new[0]).record_count, 2, epoch, seed=step))
            log.append_many(new) if len(new) > 1 else log.append(new[0])
            for b in new:
                h = read_header(b)
                model.batches.append((h.base_offset, h.record_count, h.leader_epoch, b))
            model.last_epoch = epoch
        elif op < 0.55:
            log.sync()
            durable = model.snapshot()
        elif op < 0.62:
            off = rng.randint(model.start - 2, model.end + 1)
            got = log.truncate_after(off)
            if off < model.end - 1:
                model.batches = [t for t in model.batches if t[0] + t[1] - 1 <= off]
                model.last_epoch = model.batches[-1][2] if model.batches else -1
            assert got == model.end
        elif op < 0.67:
            off = rng.randint(model.start, model.end)
            kept = [t for t in model.batches if t[0] + t[1] > off]
            if off > model.start:
                model.start = kept[0][0] if kept else model.end
                model.batches = kept
            assert log.truncate_before(off) == model.start
        elif op < 0.72:
            if env.crashes and rng.random() < 0.5:
                log = ShardLog(env.crash(), cache_bytes_max=cache_max)
                model = durable.snapshot()
            else:
                log = ShardLog(env.reopen(), cache_bytes_max=cache_max)
            durable = model.snapshot()
        else:
            frm = rng.randint(model.start, model.end)
            max_bytes = rng.choice([0, 100, 500, 3000, 1 << 20])
            max_offset = rng.choice([None, rng.randint(model.start - 1, model.end + 2)])
            assert log.read(frm, max_bytes, max_offset=max_offset) == model.read(frm, max_bytes, max_offset)
        assert (log.start_offset, log.end_offset, log.last_epoch) == (model.start, model.end, model.last_epoch)
        probe = rng.randint(model.start - 1, model.end + 1)
        assert log.epoch_at(probe) == model.epoch_at(probe)
        e = rng.randint(-1, epoch + 1)
        assert log.end_of_epoch(e) == model.end_of_epoch(e)
        assert log.stats.cache_bytes <= cache_max


@pytest.mark.parametrize("seed", range(12))
def test_model_check_memory(seed: int) -> None:
    run_model_check(MemoryEnv(), seed, 300)


@pytest.mark.parametrize("seed", range(3))
def test_model_check_rocks(seed: int, tmp_path: Path) -> None:
    env = RocksEnv(tmp_path / "db")
    try:
        run_model_check(env, seed, 200)
    finally:
        env.close()
