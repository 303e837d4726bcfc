"""The append-only log of one shard replica, over any :class:`Store`.

The log is a sequence of record batches with contiguous offsets: a batch
holding ``n`` records with base offset ``b`` covers offsets ``b .. b+n-1``
and the next batch starts at ``b+n``.  Batches are opaque bytes here; the
log only reads three fields of their fixed header (see "Batch header").

Store layout (one store per shard replica):

* ``b"b" + u64(base_offset)`` -> the batch bytes, exactly as appended;
* ``b"e" + u64(start_offset)`` -> ``u32(epoch)``: the leader-epoch index, one
  entry per epoch change (the first offset written in that epoch), written
  in the same atomic store write as the batch that starts the epoch;
* ``b"m/start"`` -> ``u64(start_offset)``: the log start, written whenever
  batches are removed from the front (so an emptied log keeps its offsets).

Reopening a log therefore costs two seeks (first and last batch) plus a scan
of the small epoch index, not a scan of the data.  Should the index not
match the batches (e.g. a store written by an older version), it is rebuilt
by scanning every batch header.

Durability: ``append``/``append_many``/``truncate_*`` write to the store
without syncing; :meth:`ShardLog.sync` makes all of them durable (group
commit: append batches from many producers, sync once, then acknowledge).
``synced_offset`` is the end offset as of the last sync.  After a crash the
store keeps a prefix of the writes in issue order (RocksDB) or exactly the
synced state (MemoryStore), and reopening recovers a consistent log.  The
log found when a ``ShardLog`` is opened is synced before use.

Reads are served from a bounded in-memory cache of the most recent batches
(the tail, which followers and live consumers read) and otherwise from the
store; results are identical either way.

Truncation is at batch granularity: ``truncate_after(o)`` keeps only whole
batches ending at or before ``o``; ``truncate_before(o)`` removes only whole
batches ending before ``o``.
"""
from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable, Iterator

import crc32c

from storage.base import Store, WriteBatch

# -- Batch header ------------------------------------------------------------
# The layout is defined by protocol/records.py, which storage may not import;
# these few lines duplicate what the log needs, and tests/test_shardlog.py
# checks that they agree with protocol.records.read_header.
#
#   offset size field
#   0      1    magic 0xCB
#   1      1    version 1
#   2      4    crc32c of bytes [6, 51)
#   6      8    base_offset   u64
#   14     4    record_count  u32
#   18     4    leader_epoch  u32
#   ...         producer_id, base_sequence, broker_ts_ms
#   42     4    body_bytes    u32 (the batch is 51 + body_bytes bytes)
#   46..50      codec, body crc

BATCH_MAGIC = 0xCB
BATCH_VERSION = 1
BATCH_HEADER_BYTES = 51
_CRC_COVERS_FROM = 6
_BODY_BYTES_AT = 42
_HEAD = struct.Struct(">BBIQII")  # magic, version, crc, base_offset, record_count, leader_epoch
_BASE_COUNT_EPOCH = struct.Struct(">QII")  # at offset 6
_U32 = struct.Struct(">I")

_BATCH_PREFIX = b"b"
_BATCH_END = b"c"
_EPOCH_PREFIX = b"e"
_EPOCH_END = b"f"
_META_START = b"m/start"


class BadBatch(ValueError):
    """Bytes given to the log are not a well-formed batch header."""


class OffsetOutOfRange(ValueError):
    """A read asked for an offset outside ``[start_offset, end_offset]``."""


def batch_info(batch: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(base_offset, record_count, leader_epoch)`` of ``batch``, header-checked.

    Verifies magic, version, the header crc, a record count >= 1 and that the
    length matches the header; does not look at the body.  Raises
    :class:`BadBatch`.
    """
    size = len(batch)
    if size < BATCH_HEADER_BYTES:
        raise BadBatch(f"batch of {size} bytes is shorter than its {BATCH_HEADER_BYTES}-byte header")
    magic, version, crc, base, count, epoch = _HEAD.unpack_from(batch)
    if magic != BATCH_MAGIC or version != BATCH_VERSION:
        raise BadBatch(f"bad batch magic/version 0x{magic:02x}/{version}")
    actual = crc32c.crc32c(memoryview(batch)[_CRC_COVERS_FROM:BATCH_HEADER_BYTES])
    if actual != crc:
        raise BadBatch(f"batch header crc mismatch: stored 0x{crc:08x}, computed 0x{actual:08x}")
    (body_bytes,) = _U32.unpack_from(batch, _BODY_BYTES_AT)
    if size != BATCH_HEADER_BYTES + body_bytes:
        raise BadBatch(f"batch is {size} bytes, its header says {BATCH_HEADER_BYTES + body_bytes}")
    if count < 1:
        raise BadBatch("batch holds no records")
    return base, count, epoch


def _base_count_epoch(batch: bytes) -> tuple[int, int, int]:
    """The three header fields of a batch already in the log (no checks)."""
    return _BASE_COUNT_EPOCH.unpack_from(batch, _CRC_COVERS_FROM)


def _batch_key(base: int) -> bytes:
    return _BATCH_PREFIX + base.to_bytes(8, "big")


def _epoch_key(start: int) -> bytes:
    return _EPOCH_PREFIX + start.to_bytes(8, "big")


def _key_offset(key: bytes) -> int:
    return int.from_bytes(key[1:9], "big")


@dataclass
class ShardLogStats:
    """Counters of one :class:`ShardLog` (since it was opened)."""

    appended_batches: int = 0
    appended_bytes: int = 0
    syncs: int = 0
    reads: int = 0
    cache_hits: int = 0  # reads served entirely from the tail cache
    cache_misses: int = 0  # reads that went to the store
    batches_from_cache: int = 0
    batches_from_store: int = 0
    cache_batches: int = 0
    cache_bytes: int = 0


class ShardLog:
    """The append-only batch log of one shard replica; see the module docstring."""

    def __init__(self, store: Store, *, cache_bytes_max: int = 8 << 20) -> None:
        if cache_bytes_max < 0:
            raise ValueError(f"cache_bytes_max must be >= 0, not {cache_bytes_max}")
        self._store = store
        self.cache_bytes_max = cache_bytes_max
        self.stats = ShardLogStats()
        self._start = 0
        self._end = 0
        self._synced = 0
        self._epochs: list[int] = []  # strictly increasing
        self._epoch_starts: list[int] = []  # first offset of each epoch, increasing
        # Tail cache: contiguous batches ending at end_offset; entries before
        # _cache_head are evicted (lists are compacted now and then).
        self._cache_bases: list[int] = []
        self._cache_batches: list[bytes] = []
        self._cache_head = 0
        self._recover()

    # -- state ---------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        """The first offset in the log (the base offset of its first batch)."""
        return self._start

    @property
    def end_offset(self) -> int:
        """The offset the next appended batch must start at."""
        return self._end

    @property
    def synced_offset(self) -> int:
        """``end_offset`` as of the last :meth:`sync` (lowered by truncation)."""
        return self._synced

    @property
    def last_epoch(self) -> int:
        """Epoch of the last batch ever appended and not truncated away; -1 if none."""
        return self._epochs[-1] if self._epochs else -1

    def epoch_index(self) -> list[tuple[int, int]]:
        """``[(epoch, start_offset), ...]``: where each epoch's batches begin."""
        return list(zip(self._epochs, self._epoch_starts))

    def epoch_at(self, offset: int) -> int | None:
        """Epoch of the batch containing ``offset``; ``None`` outside the log."""
        if not self._start <= offset < self._end:
            return None
        return self._epochs[bisect_right(self._epoch_starts, offset) - 1]

    def end_of_epoch(self, epoch: int) -> int:
        """End offset of the last batch with an epoch <= ``epoch`` (OffsetForLeaderEpoch).

        That is the start offset of the first epoch greater than ``epoch``, or
        ``end_offset`` if there is none.  If every batch in the log has a
        greater epoch (or retention removed the older ones) this is
        ``start_offset``.
        """
        i = bisect_right(self._epochs, epoch)
        return self._epoch_starts[i] if i < len(self._epochs) else self._end

    # -- appending -----------------------------------------------------------

    def append(self, batch: bytes) -> int:
        """Append one batch (its base offset must be ``end_offset``); returns the new end.

        Not synced: call :meth:`sync` before acknowledging.  Raises
        :class:`BadBatch` for a malformed header, ``ValueError`` if the base
        offset is not ``end_offset`` or the epoch is below ``last_epoch``.
        """
        batch = bytes(batch) if type(batch) is not bytes else batch
        base, count, epoch = batch_info(batch)
        self._check_next(base, epoch, self._end, self.last_epoch)
        if self._epochs and epoch == self._epochs[-1]:
            self._store.put(_batch_key(base), batch)
        else:
            wb = WriteBatch()
            wb.put(_batch_key(base), batch)
            wb.put(_epoch_key(base), _U32.pack(epoch))
            self._store.write(wb)
        self._appended(base, count, epoch, batch)
        return self._end

    def append_many(self, batches: Iterable[bytes]) -> int:
        """Append consecutive batches in one atomic store write; returns the new end.

        Either every batch is appended or (on any error) none is.
        """
        checked = []
        end, last_epoch = self._end, self.last_epoch
        wb = WriteBatch()
        for batch in batches:
            batch = bytes(batch) if type(batch) is not bytes else batch
            base, count, epoch = batch_info(batch)
            self._check_next(base, epoch, end, last_epoch)
            wb.put(_batch_key(base), batch)
            if epoch != last_epoch:
                wb.put(_epoch_key(base), _U32.pack(epoch))
            checked.append((base, count, epoch, batch))
            end, last_epoch = base + count, epoch
        if checked:
            self._store.write(wb)
        for base, count, epoch, batch in checked:
            self._appended(base, count, epoch, batch)
        return self._end

    @staticmethod
    def _check_next(base: int, epoch: int, end: int, last_epoch: int) -> None:
        if base != end:
            raise ValueError(f"batch base offset {base} != log end offset {end}")
        if epoch < last_epoch:
            raise ValueError(f"batch epoch {epoch} < last epoch {last_epoch}")

    def _appended(self, base: int, count: int, epoch: int, batch: bytes) -> None:
        """Update the in-memory state after ``batch`` was written to the store."""
        if not self._epochs or epoch > self._epochs[-1]:
            if self._epoch_starts and self._epoch_starts[-1] == base:
                self._epochs.pop()  # that epoch covers nothing (its batches were removed)
                self._epoch_starts.pop()
            self._epochs.append(epoch)
            self._epoch_starts.append(base)
        self._end = base + count
        stats = self.stats
        stats.appended_batches += 1
        stats.appended_bytes += len(batch)
        self._cache_push(base, batch)

    def sync(self) -> None:
        """Make everything appended or truncated so far durable."""
        self._store.sync()
        self._synced = self._end
        self.stats.syncs += 1

    # -- reading -------------------------------------------------------------

    def read(self, from_offset: int, max_bytes: int, *, max_offset: int | None = None) -> list[bytes]:
        """Whole batches from the one containing ``from_offset`` on.

        Returns batches totalling at most ``max_bytes`` (but at least one if
        any qualifies), none of which ends beyond ``max_offset`` (inclusive:
        a batch whose last offset > ``max_offset`` stops the read; pass
        ``high_watermark - 1`` for an exclusive watermark).  ``[]`` when
        ``from_offset == end_offset``; :class:`OffsetOutOfRange` when it is
        below ``start_offset`` or above ``end_offset``.
        """
        if not self._start <= from_offset <= self._end:
            raise OffsetOutOfRange(
                f"offset {from_offset} outside the log [{self._start}, {self._end}]"
            )
        stats = self.stats
        stats.reads += 1
        if from_offset == self._end:
            return []
        limit_end = self._end if max_offset is None else min(self._end, max_offset + 1)
        if from_offset >= self._cache_start():
            stats.cache_hits += 1
            out = self._read_cache(from_offset, max_bytes, limit_end, [], 0)
            stats.batches_from_cache += len(out)
            return out
        stats.cache_misses += 1
        return self._read_store(from_offset, max_bytes, limit_end)

    def _read_cache(
        self, from_offset: int, max_bytes: int, limit_end: int, out: list[bytes], total: int
    ) -> list[bytes]:
        """Extend ``out`` (``total`` bytes so far) with batches from the tail cache.

        ``from_offset`` must be in the cache.
        """
        bases, batches = self._cache_bases, self._cache_batches
        i = bisect_right(bases, from_offset, self._cache_head) - 1
        n = len(bases)
        while i < n:
            batch = batches[i]
            batch_end = bases[i + 1] if i + 1 < n else self._end
            if batch_end > limit_end or (out and total + len(batch) > max_bytes):
                break
            out.append(batch)
            total += len(batch)
            i += 1
        return out

    def _read_store(self, from_offset: int, max_bytes: int, limit_end: int) -> list[bytes]:
        """Batches from the store, continuing into the cache where it begins."""
        stats = self.stats
        out: list[bytes] = []
        total = 0
        cache_start = self._cache_start()
        for base, batch in self._store_batches(from_offset, cache_start, max_bytes):
            _, count, _ = _base_count_epoch(batch)
            if base + count > limit_end or (out and total + len(batch) > max_bytes):
                stats.batches_from_store += len(out)
                return out
            out.append(batch)
            total += len(batch)
        from_store = len(out)
        stats.batches_from_store += from_store
        if cache_start < limit_end:  # the store part ended where the cache begins
            self._read_cache(cache_start, max_bytes, limit_end, out, total)
            stats.batches_from_cache += len(out) - from_store
        return out

    def _store_batches(self, from_offset: int, stop: int, max_bytes: int) -> Iterator[tuple[int, bytes]]:
        """``(base, batch)`` from the store: the batch containing ``from_offset``,
        then every later batch with base < ``stop``, read in chunks sized by
        ``max_bytes`` so a short read does not fetch far ahead."""
        store = self._store
        first = next(
            store.scan(_batch_key(self._start), _batch_key(from_offset + 1), reverse=True, limit=1),
            None,
        )
        if first is None:  # cannot happen in a consistent log
            raise RuntimeError(f"no batch contains offset {from_offset} in the store")
        key, batch = first
        base = _key_offset(key)
        yield base, batch
        chunk = max(1, max_bytes // max(1, len(batch)) + 1)
        lo = base + 1
        stop_key = _batch_key(stop)
        while True:
            got = 0
            for key, batch in store.scan(_batch_key(lo), stop_key, limit=chunk):
                got += 1
                yield _key_offset(key), batch
            if got < chunk:
                return
            lo = _key_offset(key) + 1
            chunk *= 2

    # -- truncation ----------------------------------------------------------

    def truncate_after(self, offset: int) -> int:
        """Remove every batch not entirely at or below ``offset``; returns the new end.

        Batch granularity: a batch straddling ``offset`` (base <= offset <
        last) is removed too, so the new end is the largest batch boundary
        <= ``offset + 1`` (``start_offset`` if none).  Not synced.
        """
        if offset >= self._end - 1:
            return self._end
        if offset < self._start:
            new_end = self._start
        else:
            base, count = self._locate(offset)
            new_end = base + count if base + count - 1 <= offset else base
        wb = WriteBatch(ops_max=1 << 62)
        for key, _ in self._store.scan(_batch_key(new_end), _BATCH_END):
            wb.delete(key)
        while self._epoch_starts and self._epoch_starts[-1] >= new_end:
            wb.delete(_epoch_key(self._epoch_starts.pop()))
            self._epochs.pop()
        self._store.write(wb)
        self._cache_drop_from(new_end)
        self._end = new_end
        self._synced = min(self._synced, new_end)
        return new_end

    def truncate_before(self, offset: int) -> int:
        """Remove every batch entirely below ``offset`` (retention); returns the new start.

        Batch granularity: the batch containing ``offset`` stays, so the new
        start is its base offset (``end_offset`` if ``offset`` is the end).
        ``ValueError`` if ``offset > end_offset``.  The epoch in force at the
        new start is kept in the index.  Not synced.
        """
        if offset > self._end:
            raise ValueError(f"cannot truncate before {offset}: beyond the end offset {self._end}")
        if offset <= self._start:
            return self._start
        new_start = self._end if offset == self._end else self._locate(offset)[0]
        if new_start == self._start:
            return self._start
        wb = WriteBatch(ops_max=1 << 62)
        for key, _ in self._store.scan(_batch_key(self._start), _batch_key(new_start)):
            wb.delete(key)
        self._trim_epochs(new_start, wb)
        wb.put(_META_START, new_start.to_bytes(8, "big"))
        self._store.write(wb)
        self._cache_drop_before(new_start)
        self._start = new_start
        return new_start

    def _trim_epochs(self, new_start: int, wb: WriteBatch) -> None:
        """Drop epoch entries below ``new_start``, keeping the one in force there."""
        i = bisect_right(self._epoch_starts, new_start) - 1  # entry in force at new_start
        if i <= 0 and (i < 0 or self._epoch_starts[0] == new_start):
            return
        for start in self._epoch_starts[:i + 1]:
            wb.delete(_epoch_key(start))
        wb.put(_epoch_key(new_start), _U32.pack(self._epochs[i]))
        del self._epochs[:i]
        del self._epoch_starts[:i]
        self._epoch_starts[0] = new_start

    def _locate(self, offset: int) -> tuple[int, int]:
        """``(base, count)`` of the batch containing ``offset`` (start <= offset < end)."""
        if offset >= self._cache_start():
            bases = self._cache_bases
            i = bisect_right(bases, offset, self._cache_head) - 1
            batch_end = bases[i + 1] if i + 1 < len(bases) else self._end
            return bases[i], batch_end - bases[i]
        item = next(
            self._store.scan(_batch_key(self._start), _batch_key(offset + 1), reverse=True, limit=1),
            None,
        )
        if item is None:  # cannot happen in a consistent log
            raise RuntimeError(f"no batch contains offset {offset} in the store")
        base, count, _ = _base_count_epoch(item[1])
        return base, count

    # -- tail cache ----------------------------------------------------------

    def _cache_start(self) -> int:
        """The first offset the cache holds (``end_offset`` when empty)."""
        head = self._cache_head
        return self._cache_bases[head] if head < len(self._cache_bases) else self._end

    def _cache_push(self, base: int, batch: bytes) -> None:
        self._cache_bases.append(base)
        self._cache_batches.append(batch)
        stats = self.stats
        stats.cache_batches += 1
        stats.cache_bytes += len(batch)
        while stats.cache_bytes > self.cache_bytes_max:
            self._cache_evict_head()

    def _cache_evict_head(self) -> None:
        head = self._cache_head
        stats = self.stats
        stats.cache_bytes -= len(self._cache_batches[head])
        stats.cache_batches -= 1
        self._cache_batches[head] = b""
        head += 1
        if head >= 64 and 2 * head >= len(self._cache_bases):
            del self._cache_bases[:head]
            del self._cache_batches[:head]
            head = 0
        self._cache_head = head

    def _cache_drop_before(self, offset: int) -> None:
        while self._cache_head < len(self._cache_bases) and self._cache_bases[self._cache_head] < offset:
            self._cache_evict_head()

    def _cache_drop_from(self, offset: int) -> None:
        bases, batches, stats = self._cache_bases, self._cache_batches, self.stats
        while len(bases) > self._cache_head and bases[-1] >= offset:
            bases.pop()
            stats.cache_bytes -= len(batches.pop())
            stats.cache_batches -= 1
        if len(bases) == self._cache_head:
            bases.clear()
            batches.clear()
            self._cache_head = 0

    # -- recovery ------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild the in-memory state from the store (see the module docstring)."""
        store = self._store
        meta = store.get(_META_START)
        start = 0 if meta is None else int.from_bytes(meta, "big")
        first = next(store.scan(_BATCH_PREFIX, _BATCH_END, limit=1), None)
        last = next(store.scan(_BATCH_PREFIX, _BATCH_END, reverse=True, limit=1), None)
        end = start
        last_epoch = None
        if first is not None and last is not None:
            start = _key_offset(first[0])
            base, count, last_epoch = _base_count_epoch(last[1])
            end = base + count
        for key, value in store.scan(_EPOCH_PREFIX, _EPOCH_END):
            self._epoch_starts.append(_key_offset(key))
            self._epochs.append(_U32.unpack(value)[0])
        self._start, self._end = start, end
        if not self._epochs_consistent(last_epoch):
            self._rebuild_epochs()
        store.sync()
        self._synced = end

    def _epochs_consistent(self, last_epoch: int | None) -> bool:
        """Whether the stored epoch index fits the batches found."""
        epochs, starts = self._epochs, self._epoch_starts
        if any(a >= b for a, b in zip(epochs, epochs[1:])):
            return False
        if any(a >= b for a, b in zip(starts, starts[1:])):
            return False
        if last_epoch is None:  # no batches: at most one entry, at the start
            return len(starts) <= 1 and all(s == self._start for s in starts)
        return bool(starts) and starts[0] == self._start and starts[-1] < self._end and epochs[-1] == last_epoch

    def _rebuild_epochs(self) -> None:
        """Recompute the epoch index from every batch header and store it."""
        wb = WriteBatch(ops_max=1 << 62)
        for key, _ in self._store.scan(_EPOCH_PREFIX, _EPOCH_END):
            wb.delete(key)
        self._epochs, self._epoch_starts = [], []
        for _, batch in self._store.scan(_BATCH_PREFIX, _BATCH_END):
            base, _, epoch = _base_count_epoch(batch)
            if not self._epochs or epoch != self._epochs[-1]:
                self._epochs.append(epoch)
                self._epoch_starts.append(base)
                wb.put(_epoch_key(base), _U32.pack(epoch))
        self._store.write(wb)

    def __repr__(self) -> str:
        return (
            f"<ShardLog [{self._start}, {self._end}) synced={self._synced} "
            f"epoch={self.last_epoch} cache={self.stats.cache_batches} batches>"
        )
