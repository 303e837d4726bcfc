"""Tests for the storage engines (storage/memory.py, storage/rocks.py) and key helpers."""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import storage.memory as memory_mod
import storage.rocks as rocks_mod
from storage.base import StoreClosed, WriteBatch
from storage.keys import U64_MAX, from_u64, prefix_end, prefixed, u64
from storage.memory import MemoryDisk, MemoryStore
from storage.rocks import RocksStore

REPO_ROOT = Path(__file__).resolve().parents[1]

# A small key space with the edge bytes, so operations collide and bounds
# land on, between and around stored keys (b"" and 0xff included).
keys_st = st.lists(st.sampled_from([0x00, 0x01, 0x7F, 0xFF]), max_size=3).map(bytes)
values_st = st.binary(max_size=6)
bounds_st = st.none() | keys_st
limits_st = st.none() | st.integers(0, 8)


def model_scan(
    model: dict[bytes, bytes],
    start: bytes | None,
    end: bytes | None,
    reverse: bool = False,
    limit: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """What ``scan`` must return, computed the obvious way."""
    ks = sorted(k for k in model if (start is None or k >= start) and (end is None or k < end))
    if reverse:
        ks.reverse()
    if limit is not None:
        ks = ks[:limit]
    return [(k, model[k]) for k in ks]


def small_chunks(first: int = 2, most: int = 4) -> dict[object, tuple[int, int]]:
    """Make both engines scan in tiny chunks; returns what to restore."""
    saved = {}
    for mod in (memory_mod, rocks_mod):
        saved[mod] = (mod.SCAN_CHUNK_FIRST, mod.SCAN_CHUNK_MAX)
        mod.SCAN_CHUNK_FIRST, mod.SCAN_CHUNK_MAX = first, most
    return saved


def restore_chunks(saved: dict[object, tuple[int, int]]) -> None:
    for mod, (first, most) in saved.items():
        mod.SCAN_CHUNK_FIRST, mod.SCAN_CHUNK_MAX = first, most  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Model-based test: the memory engine, RocksDB and a dict agree.


class StoreMachine(RuleBasedStateMachine):
    """Random operations against both engines, each checked against its model.

    Crash models differ per engine:

    * memory: ``disk.crash()`` reverts to the last synced state *exactly*, so
      ``mem_model`` becomes a copy of ``mem_synced``;
    * RocksDB: inside one process a "crash" can only be ``close()`` + reopen.
      A real crash must keep at least every synced write, but ``close()``
      syncs the WAL and flushes the memtable, so after the reopen *everything*
      written is there and ``rocks_model`` is unchanged.  (What an actual
      process kill keeps is tested separately, with SIGKILL.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.saved_chunks = small_chunks()  # exercise chunk resumption in scans
        self.tmp = tempfile.mkdtemp(prefix="chorus-storage-")
        self.rocks_path = os.path.join(self.tmp, "db")
        self.disk = MemoryDisk()
        self.mem = self.disk.open("m")
        self.rocks = RocksStore(self.rocks_path)
        self.mem_model: dict[bytes, bytes] = {}
        self.mem_synced: dict[bytes, bytes] = {}
        self.rocks_model: dict[bytes, bytes] = {}

    def teardown(self) -> None:
        self.rocks.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        restore_chunks(self.saved_chunks)

    def pairs(self) -> Iterator[tuple[object, dict[bytes, bytes]]]:
        yield self.mem, self.mem_model
        yield self.rocks, self.rocks_model

    @rule(key=keys_st, value=values_st)
    def put(self, key: bytes, value: bytes) -> None:
        for store, model in self.pairs():
            store.put(key, value)
            model[key] = value

    @rule(key=keys_st)
    def delete(self, key: bytes) -> None:
        for store, model in self.pairs():
            store.delete(key)
            model.pop(key, None)

    @rule(ops=st.lists(st.tuples(keys_st, st.none() | values_st), max_size=6))
    def write_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        for store, model in self.pairs():
            batch = WriteBatch()
            for key, value in ops:
                if value is None:
                    batch.delete(key)
                    model.pop(key, None)
                else:
                    batch.put(key, value)
                    model[key] = value
            store.write(batch)

    @rule(key=keys_st)
    def get(self, key: bytes) -> None:
        for store, model in self.pairs():
            assert store.get(key) == model.get(key)

    @rule(start=bounds_st, end=bounds_st, reverse=st.booleans(), limit=limits_st)
    def scan(self, start: bytes | None, end: bytes | None, reverse: bool, limit: int | None) -> None:
        for store, model in self.pairs():
            got = list(store.scan(start, end, reverse=reverse, limit=limit))
            assert got == model_scan(model, start, end, reverse, limit)

    @rule()
    def sync(self) -> None:
        self.mem.sync()
        self.rocks.sync()
        self.mem_synced = dict(self.mem_model)

    @rule()
    def crash_and_reopen(self) -> None:
        old_mem, old_rocks = self.mem, self.rocks
        self.disk.crash()
        self.rocks.close()
        with pytest.raises(StoreClosed):
            old_mem.get(b"")
        with pytest.raises(StoreClosed):
            old_rocks.get(b"")
        self.mem = self.disk.open("m")
        self.rocks = RocksStore(self.rocks_path)
        self.mem_model = dict(self.mem_synced)

    @invariant()
    def contents_match(self) -> None:
        for store, model in self.pairs():
            assert list(store.scan()) == model_scan(model, None, None)

    @invariant()
    def bytes_used_is_synced_size(self) -> None:
        size = sum(len(k) + len(v) for k, v in self.mem_synced.items())
        assert self.disk.bytes_used() == size


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------
# Real crashes of RocksDB: SIGKILL a writer process.

CRASH_WRITER = r"""
import sys
from storage.base import WriteBatch
from storage.keys import prefixed
from storage.rocks import RocksStore

path, synced_n, batch_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = RocksStore(path)
for i in range(synced_n):
    if i % 2:
        store.put(prefixed(b"s", i), b"v%d" % i)
    else:
        store.write(WriteBatch().put(prefixed(b"s", i), b"v%d" % i))
store.delete(prefixed(b"s", 0))
store.sync()
print("synced", flush=True)
for b in range(10_000_000):
    batch = WriteBatch()
    for j in range(batch_n):
        batch.put(prefixed(b"u", b * batch_n + j), b"u" * 100)
    store.write(batch)
    if b == 20:
        print("writing", flush=True)
"""


class LineReader:
    """Lines from a pipe, each waited for with a timeout (no stdio buffering)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next_line(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no output from the writer within {timeout_s}s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise AssertionError(f"writer closed its output; got {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def test_rocks_sigkill_keeps_synced_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    synced_n, batch_n = 300, 10
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, path, str(synced_n), str(batch_n)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    lines = LineReader(proc.stdout.fileno())
    try:
        assert lines.next_line(30) == "synced"
        assert lines.next_line(30) == "writing"  # unsynced batches are in flight
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()

    with RocksStore(path, create=False) as store:
        assert store.get(prefixed(b"s", 0)) is None  # the synced delete holds
        for i in range(1, synced_n):
            assert store.get(prefixed(b"s", i)) == b"v%d" % i
        unsynced = [from_u64(k[1:]) for k, _ in store.scan(b"u", prefix_end(b"u"))]
    # A killed process loses nothing the kernel already has (every write went
    # to the WAL with write(2)); recovery keeps a prefix of the writes in
    # order, and each batch whole.
    assert len(unsynced) >= 21 * batch_n
    assert unsynced == list(range(len(unsynced)))
    assert len(unsynced) % batch_n == 0


SYNC_TRACED = r"""
import os
from storage.rocks import RocksStore
store = RocksStore(os.environ["DB_PATH"])
os.write(2, b"@@PUT\n")
store.put(b"k", b"v" * 100)
os.write(2, b"@@SYNC\n")
store.sync()
os.write(2, b"@@DONE\n")
store.close()
"""


def trace_section(lines: list[str], begin: str, end: str) -> list[str]:
    """The strace lines strictly between the two marker writes."""
    i = next(n for n, line in enumerate(lines) if begin in line)
    j = next(n for n, line in enumerate(lines) if end in line and n > i)
    return lines[i + 1 : j]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_rocks_sync_fdatasyncs_the_wal(tmp_path: Path) -> None:
    """``put`` write(2)s the WAL, ``sync()`` fdatasyncs it (a kill cannot show that)."""
    trace = tmp_path / "sync.trace"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), DB_PATH=str(tmp_path / "db"))
    cmd = ["strace", "-f", "-qq", "-e", "trace=openat,write,fsync,fdatasync", "-o", str(trace)]
    proc = subprocess.run(
        [*cmd, sys.executable, "-c", SYNC_TRACED], env=env, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0 and not trace.exists():
        pytest.skip(f"strace cannot run here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    lines = trace.read_text().splitlines()
    wal_fds = {
        m.group(1)
        for line in lines
        if (m := re.search(r'openat\(.*/\d+\.log", .*\) = (\d+)', line))
    }
    assert wal_fds, "no WAL file opened"
    fd = "(" + "|".join(wal_fds) + ")"
    put = trace_section(lines, "@@PUT", "@@SYNC")
    sync = trace_section(lines, "@@SYNC", "@@DONE")
    assert any(re.search(rf"\bwrite\({fd},", line) for line in put), put
    assert not any(re.search(rf"\bf(data)?sync\({fd}\)", line) for line in put), put
    assert any(re.search(rf"\bf(data)?sync\({fd}\) += 0", line) for line in sync), sync


# ---------------------------------------------------------------------------
# Unit tests on both engines.


@pytest.fixture(params=["memory", "rocks"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    if request.param == "memory":
        s: object = MemoryDisk().open("t")
    else:
        s = RocksStore(str(tmp_path / "db"))
    yield s
    s.close()  # type: ignore[attr-defined]


@pytest.fixture
def tiny_chunks() -> Iterator[None]:
    saved = small_chunks(first=1, most=3)
    yield
    restore_chunks(saved)


EDGE_KEYS = [b"", b"\x00", b"\x00\x00", b"\x01", b"a", b"ab", b"b", b"b\x00", b"\xfe\xff", b"\xff", b"\xff\xff"]


def fill(store: object, keys: list[bytes]) -> dict[bytes, bytes]:
    model = {}
    for k in keys:
        store.put(k, b"v" + k)  # type: ignore[attr-defined]
        model[k] = b"v" + k
    return model


@pytest.mark.usefixtures("tiny_chunks")
def test_scan_edge_cases(store: object) -> None:
    model = fill(store, EDGE_KEYS)
    points = [None, *EDGE_KEYS, b"\x00\x01", b"aa", b"c", b"\xff\xff\xff"]
    for start in points:
        for end in points:
            for reverse in (False, True):
                for limit in (None, 0, 1, 2, 3, 4, 100):
                    got = list(store.scan(start, end, reverse=reverse, limit=limit))  # type: ignore[attr-defined]
                    assert got == model_scan(model, start, end, reverse, limit), (start, end, reverse, limit)


def test_scan_empty_store_and_empty_ranges(store: object) -> None:
    assert list(store.scan()) == []  # type: ignore[attr-defined]
    assert list(store.scan(reverse=True, limit=5)) == []  # type: ignore[attr-defined]
    store.put(b"k", b"v")  # type: ignore[attr-defined]
    assert list(store.scan(b"k", b"k")) == []  # type: ignore[attr-defined]
    assert list(store.scan(b"z", b"a")) == []  # type: ignore[attr-defined]
    assert list(store.scan(b"k", b"k\x00")) == [(b"k", b"v")]  # type: ignore[attr-defined]
    assert list(store.scan(b"", limit=0)) == []  # type: ignore[attr-defined]


def test_scan_large_range_in_chunks(store: object) -> None:
    n = 5000  # more than the largest default chunk
    batch = WriteBatch()
    for i in range(n):
        batch.put(u64(i), b"%d" % i)
    store.write(batch)  # type: ignore[attr-defined]
    assert [from_u64(k) for k, _ in store.scan()] == list(range(n))  # type: ignore[attr-defined]
    back = [from_u64(k) for k, _ in store.scan(u64(100), u64(4900), reverse=True, limit=4500)]  # type: ignore[attr-defined]
    assert back == list(range(4899, 399, -1))


@pytest.mark.usefixtures("tiny_chunks")
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_while_writing_is_weakly_consistent(store: object, reverse: bool) -> None:
    """Writes during a scan: order, bounds, untouched keys and seen values all hold."""
    history: dict[bytes, set[bytes]] = {}

    def put(k: bytes, v: bytes) -> None:
        store.put(k, v)  # type: ignore[attr-defined]
        history.setdefault(k, set()).add(v)

    for i in range(0, 60, 2):
        put(u64(i), b"a")
    touched: set[bytes] = set()
    seen: list[tuple[bytes, bytes]] = []
    it = store.scan(u64(4), u64(50), reverse=reverse)  # type: ignore[attr-defined]
    for n, (k, v) in enumerate(it):
        seen.append((k, v))
        i = from_u64(k)
        step = -1 if reverse else 1
        for j in (i + step, i + 2 * step, i + 3 * step):  # ahead of the cursor
            if 0 <= j < 60:
                touched.add(u64(j))
                if n % 3 == 0:
                    store.delete(u64(j))  # type: ignore[attr-defined]
                else:
                    put(u64(j), b"b%d" % n)
        for j in (i - 5 * step, i - 6 * step):  # behind the cursor: never seen
            if 0 <= j < 60:
                touched.add(u64(j))
                put(u64(j), b"behind")
    got = [k for k, _ in seen]
    assert got == sorted(got, reverse=reverse) and len(set(got)) == len(got)
    assert all(u64(4) <= k < u64(50) for k in got)
    for k, v in seen:
        assert v in history[k]
        assert v != b"behind"
    untouched = {u64(i) for i in range(4, 50, 2)} - touched
    assert untouched <= set(got)


def test_type_errors(store: object) -> None:
    s = store
    for bad in ("k", 1, None, [b"k"]):
        with pytest.raises(TypeError):
            s.get(bad)  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            s.put(bad, b"v")  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            s.delete(bad)  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            WriteBatch().put(bad, b"v")  # type: ignore[arg-type]
    for bad in ("v", 1, None):
        with pytest.raises(TypeError):
            s.put(b"k", bad)  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            WriteBatch().put(b"k", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.scan("a")  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        s.scan(None, 5)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        s.scan(limit=1.5)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        s.scan(limit=True)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        s.scan(limit=-1)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        s.write([(b"k", b"v")])  # type: ignore[attr-defined]
    assert list(s.scan()) == []  # type: ignore[attr-defined]


def test_bytes_like_accepted(store: object) -> None:
    store.put(bytearray(b"k1"), memoryview(b"v1"))  # type: ignore[attr-defined]
    store.write(WriteBatch().put(bytearray(b"k2"), bytearray(b"v2")))  # type: ignore[attr-defined]
    assert store.get(memoryview(b"k1")) == b"v1"  # type: ignore[attr-defined]
    got = list(store.scan(bytearray(b"k"), memoryview(b"l")))  # type: ignore[attr-defined]
    assert got == [(b"k1", b"v1"), (b"k2", b"v2")]
    assert all(type(k) is bytes and type(v) is bytes for k, v in got)


def test_bad_batch_applies_nothing(store: object) -> None:
    batch = WriteBatch().put(b"a", b"1").put(b"b", b"2")
    batch.ops.append(("c", b"3"))  # type: ignore[arg-type]  # bypasses WriteBatch checks
    with pytest.raises(TypeError):
        store.write(batch)  # type: ignore[attr-defined]
    assert list(store.scan()) == []  # type: ignore[attr-defined]


def test_batch_ops_apply_in_order(store: object) -> None:
    store.put(b"x", b"old")  # type: ignore[attr-defined]
    batch = WriteBatch().put(b"a", b"1").delete(b"a").put(b"x", b"new").delete(b"x").put(b"x", b"last")
    store.write(batch)  # type: ignore[attr-defined]
    assert list(store.scan()) == [(b"x", b"last")]  # type: ignore[attr-defined]
    store.write(WriteBatch())  # type: ignore[attr-defined]  # empty batch is fine


def test_write_batch_limit() -> None:
    batch = WriteBatch(ops_max=2).put(b"a", b"1").delete(b"b")
    with pytest.raises(ValueError):
        batch.put(b"c", b"3")
    assert len(batch) == 2


def test_closed_store_raises(store: object) -> None:
    store.put(b"k", b"v")  # type: ignore[attr-defined]
    it = store.scan()  # type: ignore[attr-defined]
    store.close()  # type: ignore[attr-defined]
    calls = [
        lambda: store.get(b"k"),
        lambda: store.put(b"k", b"v"),
        lambda: store.delete(b"k"),
        lambda: store.write(WriteBatch().put(b"k", b"v")),
        lambda: store.scan(),
        lambda: store.sync(),
        lambda: next(it),
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()
    store.close()  # type: ignore[attr-defined]  # idempotent


# ---------------------------------------------------------------------------
# Memory engine: crash semantics.


def test_memory_crash_reverts_to_last_sync_and_invalidates_handles() -> None:
    disk = MemoryDisk()
    s = disk.open("log")
    s.put(b"a", b"1")
    s.put(b"b", b"1")
    s.sync()
    s.put(b"a", b"2")
    s.delete(b"b")
    s.put(b"c", b"2")
    s.delete(b"c")
    s.put(b"d", b"2")
    other = disk.open("log")  # a second handle on the same table
    assert other.get(b"a") == b"2"  # shares the unsynced view
    it = s.scan()
    assert next(it) == (b"a", b"2")
    disk.crash()
    for handle in (s, other):
        for call in (lambda: handle.get(b"a"), lambda: handle.put(b"a", b"x"), handle.sync,
                     lambda: handle.write(WriteBatch()), lambda: handle.scan(),
                     lambda: handle.delete(b"a")):
            with pytest.raises(StoreClosed):
                call()
    with pytest.raises(StoreClosed):
        next(it)
    after = disk.open("log")
    assert list(after.scan()) == [(b"a", b"1"), (b"b", b"1")]
    disk.crash()  # nothing unsynced: nothing changes
    assert list(disk.open("log").scan()) == [(b"a", b"1"), (b"b", b"1")]


def test_memory_batch_is_atomic_across_crash() -> None:
    disk = MemoryDisk()
    s = disk.open("t")
    s.put(b"keep", b"0")
    s.sync()
    s.write(WriteBatch().put(b"x", b"1").put(b"y", b"1").delete(b"keep"))
    assert s.get(b"x") == b"1" and s.get(b"keep") is None
    disk.crash()
    s = disk.open("t")
    assert list(s.scan()) == [(b"keep", b"0")]  # none of the batch
    s.write(WriteBatch().put(b"x", b"1").put(b"y", b"1").delete(b"keep"))
    s.sync()
    s.put(b"z", b"unsynced")
    disk.crash()
    assert list(disk.open("t").scan()) == [(b"x", b"1"), (b"y", b"1")]  # all of it


def test_memory_sync_is_per_store() -> None:
    disk = MemoryDisk()
    a, b = disk.open("a"), disk.open("b")
    a.put(b"k", b"a")
    b.put(b"k", b"b")
    a.sync()
    disk.crash()
    assert disk.open("a").get(b"k") == b"a"
    assert disk.open("b").get(b"k") is None
    assert disk.names() == ["a", "b"]


def test_memory_close_only_closes_that_handle() -> None:
    disk = MemoryDisk()
    s1, s2 = disk.open("t"), disk.open("t")
    s1.put(b"k", b"v")
    with s1:
        pass
    with pytest.raises(StoreClosed):
        s1.get(b"k")
    assert s2.get(b"k") == b"v"


def test_memory_bytes_used_counts_synced_data_only() -> None:
    disk = MemoryDisk()
    assert disk.bytes_used() == 0 and disk.names() == []
    s = disk.open("t")
    s.put(b"ab", b"cde")
    assert disk.bytes_used() == 0
    s.sync()
    assert disk.bytes_used() == 5
    s.put(b"ab", b"c")  # unsynced overwrite
    s.put(b"x", b"yy")
    assert disk.bytes_used() == 5
    s.sync()
    assert disk.bytes_used() == 3 + 3
    s.delete(b"ab")
    assert disk.bytes_used() == 6
    disk.crash()
    assert disk.bytes_used() == 6


def test_memory_store_standalone() -> None:
    s = MemoryStore()
    s.put(b"k", b"v")
    s.sync()
    assert list(s.scan()) == [(b"k", b"v")]


def test_memory_open_rejects_non_str_name() -> None:
    with pytest.raises(TypeError):
        MemoryDisk().open(b"t")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# RocksDB engine specifics.


def test_rocks_reopen_sees_everything_and_context_manager_closes(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with RocksStore(path) as s:
        s.put(b"a", b"1")
        s.write(WriteBatch().put(b"b", b"2").delete(b"a"))
    with pytest.raises(StoreClosed):
        s.get(b"b")
    with RocksStore(path, create=False) as s2:
        assert list(s2.scan()) == [(b"b", b"2")]


def test_rocks_close_with_abandoned_scan_releases_the_db(tmp_path: Path) -> None:
    """A half-read scan must not keep RocksDB (and its LOCK) open after close()."""
    path = str(tmp_path / "db")
    s = RocksStore(path)
    for i in range(200):
        s.put(u64(i), b"v")
    it = s.scan()
    next(it)
    s.close()
    with RocksStore(path) as s2:  # fails with a LOCK error if an iterator survived
        assert len(list(s2.scan())) == 200
    del it


def test_rocks_create_false_on_missing_db(tmp_path: Path) -> None:
    path = tmp_path / "nothere" / "db"
    with pytest.raises(FileNotFoundError):
        RocksStore(str(path), create=False)
    assert not path.parent.exists()


def test_rocks_two_handles_on_one_path_conflict(tmp_path: Path) -> None:
    with RocksStore(str(tmp_path / "db")):
        with pytest.raises(Exception):
            RocksStore(str(tmp_path / "db"))


# ---------------------------------------------------------------------------
# Key helpers.


def test_u64_round_trip_and_order() -> None:
    for n in (0, 1, 255, 256, 2**32, U64_MAX):
        assert len(u64(n)) == 8
        assert from_u64(u64(n)) == n
    assert u64(1) == b"\x00" * 7 + b"\x01"
    assert u64(255) < u64(256) < u64(2**40)
    assert prefixed(b"log/", 3) == b"log/" + u64(3)


def test_u64_errors() -> None:
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            u64(bad)
    for bad_type in (1.0, "1", True, None):
        with pytest.raises(TypeError):
            u64(bad_type)  # type: ignore[arg-type]
    for short in (b"", b"\x00" * 7, b"\x00" * 9):
        with pytest.raises(ValueError):
            from_u64(short)
    with pytest.raises(TypeError):
        from_u64("12345678")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        prefixed("p", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        prefixed(b"p", -1)


def test_prefix_end_examples() -> None:
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"log/") == b"log0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None
    with pytest.raises(TypeError):
        prefix_end("a")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(prefix=st.binary(max_size=4), key=st.binary(max_size=6))
def test_prefix_end_bounds_exactly_the_prefix(prefix: bytes, key: bytes) -> None:
    end = prefix_end(prefix)
    in_range = key >= prefix and (end is None or key < end)
    assert in_range == key.startswith(prefix)


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, U64_MAX), b=st.integers(0, U64_MAX))
def test_u64_order_matches_int_order(a: int, b: int) -> None:
    assert (u64(a) < u64(b)) == (a < b)


def test_prefix_scan_over_store() -> None:
    s = MemoryStore()
    for p in (b"a", b"a\xff", b"b"):
        for i in (0, 1, U64_MAX):
            s.put(prefixed(p, i), p)
    want = sorted(k for k, _ in s.scan() if k.startswith(b"a\xff"))
    assert len(want) == 4  # includes prefixed(b"a", U64_MAX) == b"a" + 8 * b"\xff"
    assert [k for k, _ in s.scan(b"a\xff", prefix_end(b"a\xff"))] == want


def test_rocks_bytes_estimate_counts_the_data_not_the_memtable_arena(tmp_path) -> None:
    """Retention by size reads it: 300 KiB of records must not count as the
    1 MiB arena block their memtable allocated, nor ten records as 1 MiB."""
    import random

    from storage.rocks import RocksStore

    rng = random.Random(3)
    s = RocksStore(tmp_path / "few")
    for i in range(10):
        s.put(b"k%06d" % i, rng.randbytes(2048))
    assert 20 * 1024 <= s.bytes_estimate() <= 40 * 1024, s.bytes_estimate()
    s.close()
    s = RocksStore(tmp_path / "more")
    for i in range(150):
        s.put(b"k%06d" % i, rng.randbytes(2048))
    data = 150 * 2048
    assert data <= s.bytes_estimate() <= data * 1.2, s.bytes_estimate()
    s.close()
    s = RocksStore(tmp_path / "more")  # reopened: the memtable was flushed to an SST file
    assert data <= s.bytes_estimate() <= data * 1.2, s.bytes_estimate()
    s.close()
