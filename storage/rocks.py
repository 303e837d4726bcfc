"""RocksDB storage engine (via ``rocksdict``), used by production hosts.

The database is opened in rocksdict's raw mode, so keys and values are plain
``bytes`` ordered bytewise, and the files are ordinary RocksDB files.

Durability, as verified with ``strace`` on rocksdict 0.3.29:

* ``put``/``delete``/``write`` go to the write-ahead log (WAL) with one
  ``write(2)`` each before they return, but are not fsynced.  They therefore
  survive the *process* dying (SIGKILL, crash, ``os._exit``) -- the data is
  in the OS page cache -- but may be lost if the *machine* loses power or the
  kernel crashes.
* ``sync()`` calls ``flush_wal(sync=True)``, i.e. RocksDB ``FlushWAL(true)``,
  which ``fdatasync``\\s the live WAL file(s) (and the directory the first
  time).  Every write issued before ``sync()`` returns survives a power loss
  (assuming the disk honours flushes).
* ``write(batch)`` is one WAL record: after any crash it is there entirely
  or not at all.  Recovery uses RocksDB's default point-in-time mode, so what
  survives a crash is always a prefix of the writes in issue order.
* ``close()`` syncs the WAL and flushes the memtable to fsynced SST files,
  so everything written before ``close()`` is durable.
"""
from __future__ import annotations

import os
from typing import Iterator

from rocksdict import DbClosedError, Options, Rdict
from rocksdict import WriteBatch as RWriteBatch

from storage.base import (
    StoreClosed,
    WriteBatch,
    _as_bytes,
    _batch_ops,
    _scan_args,
    _scan_is_empty,
)

# A scan reads this many items per RocksDB iterator, doubling up to the
# maximum.  No iterator outlives a chunk: a live rocksdict iterator keeps the
# database (and its LOCK file) open even after ``Rdict.close()``.
SCAN_CHUNK_FIRST = 64
SCAN_CHUNK_MAX = 4096


class RocksStore:
    """A :class:`storage.base.Store` over a RocksDB database at ``path``.

    With ``create=False`` a missing database raises ``FileNotFoundError``.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = os.fspath(path)
        if not create and not os.path.exists(os.path.join(self.path, "CURRENT")):
            raise FileNotFoundError(f"no RocksDB database at {self.path}")
        if create:
            os.makedirs(self.path, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(create)
        self._db: Rdict | None = Rdict(self.path, options)

    def _live(self) -> Rdict:
        db = self._db
        if db is None:
            raise StoreClosed(f"RocksDB store {self.path} is closed")
        return db

    def get(self, key: bytes) -> bytes | None:
        db = self._live()
        return db.get(_as_bytes(key, "key"))

    def put(self, key: bytes, value: bytes) -> None:
        db = self._live()
        db.put(_as_bytes(key, "key"), _as_bytes(value, "value"))

    def delete(self, key: bytes) -> None:
        db = self._live()
        db.delete(_as_bytes(key, "key"))

    def write(self, batch: WriteBatch) -> None:
        db = self._live()
        ops = _batch_ops(batch)  # checks everything before building the batch
        if not ops:
            return
        rbatch = RWriteBatch(raw_mode=True)
        for key, value in ops:
            if value is None:
                rbatch.delete(key)
            else:
                rbatch.put(key, value)
        db.write(rbatch)

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        self._live()
        start, end, limit = _scan_args(start, end, limit)
        if _scan_is_empty(start, end, limit):
            return iter(())
        return self._scan(start, end, bool(reverse), limit)

    def _scan(
        self, start: bytes | None, end: bytes | None, reverse: bool, limit: int | None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield chunk by chunk, each read by a fresh iterator from the last key on."""
        lo, hi = start, end  # the rest of the range: [lo, hi)
        chunk = SCAN_CHUNK_FIRST
        left = limit
        while True:
            n = chunk if left is None else min(chunk, left)
            if reverse:
                items = self._read_back(lo, hi, n)
            else:
                items = self._read_forward(lo, hi, n)
            yield from items
            if len(items) < n:
                return
            if left is not None:
                left -= n
                if left == 0:
                    return
            if reverse:
                hi = items[-1][0]
            else:
                lo = items[-1][0] + b"\x00"  # the smallest key after the last one
            chunk = min(chunk * 2, SCAN_CHUNK_MAX)

    # rocksdict's ReadOptions.set_iterate_{lower,upper}_bound do not honour raw
    # mode (the bounds get rocksdict's type-tag encoding and cut the range in
    # the wrong places), so bounds are enforced here with seek and compares.

    def _read_forward(self, lo: bytes | None, hi: bytes | None, n: int) -> list[tuple[bytes, bytes]]:
        """Up to ``n`` items of ``[lo, hi)`` in increasing key order."""
        it = self._iter()
        try:
            if lo is None:
                it.seek_to_first()
            else:
                it.seek(lo)
            items: list[tuple[bytes, bytes]] = []
            while len(items) < n and it.valid():
                key = it.key()
                if hi is not None and key >= hi:
                    break
                items.append((key, it.value()))
                it.next()
            it.status()
            return items
        finally:
            del it

    def _read_back(self, lo: bytes | None, hi: bytes | None, n: int) -> list[tuple[bytes, bytes]]:
        """Up to ``n`` items of ``[lo, hi)`` in decreasing key order."""
        it = self._iter()
        try:
            if hi is None:
                it.seek_to_last()
            else:
                it.seek_for_prev(hi)  # the last key <= hi; hi itself is excluded
                if it.valid() and it.key() == hi:
                    it.prev()
            items: list[tuple[bytes, bytes]] = []
            while len(items) < n and it.valid():
                key = it.key()
                if lo is not None and key < lo:
                    break
                items.append((key, it.value()))
                it.prev()
            it.status()
            return items
        finally:
            del it

    def _iter(self):  # -> rocksdict.RdictIter
        try:
            return self._live().iter()
        except DbClosedError as e:
            raise StoreClosed(str(e)) from e

    def bytes_estimate(self) -> int:
        """About how many bytes the database holds: its SST files plus the
        data in its memtables (cheap: RocksDB's counters and a listing of
        the database's directory).

        RocksDB's memtable figure (``cur-size-all-mem-tables``) counts the
        arena blocks the memtables allocated, 1 MiB at a time, not the data
        in them: 300 KiB of records count as 1 MiB, ten records as 1 MiB,
        which made retention by size drop groups far under their limit.  The
        data not yet flushed is also in the write-ahead log, byte for byte
        (plus small record headers), so the smaller of the two is taken.
        """
        db = self._live()
        sst = db.property_int_value("rocksdb.total-sst-files-size") or 0
        mem = db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        wal = 0
        try:
            with os.scandir(self.path) as entries:
                for e in entries:
                    if e.name.endswith(".log") and e.is_file():
                        wal += e.stat().st_size
        except OSError:  # (a listing that fails: fall back to RocksDB's own figure)
            wal = mem
        return sst + min(mem, wal)

    def sync(self) -> None:
        """Make every write issued so far durable (fdatasync of the WAL)."""
        self._live().flush_wal(True)

    def close(self) -> None:
        """Sync, flush and close the database; later calls raise ``StoreClosed``."""
        db = self._db
        if db is None:
            return
        self._db = None
        try:
            db.flush_wal(True)
        finally:
            db.close()

    def __enter__(self) -> "RocksStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else "open"
        return f"<RocksStore {self.path} {state}>"
