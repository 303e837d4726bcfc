"""In-memory storage engine with crash semantics, for the deterministic simulator.

A :class:`MemoryDisk` is the disk of one simulated node: it outlives crashes.
``disk.open(name)`` gives a :class:`MemoryStore` over the named table.  Each
table keeps its current contents in a ``SortedDict`` plus an undo log holding,
for every key written since the table's last ``sync()``, the value it had at
that sync (or "absent").  ``sync()`` drops the undo log; ``disk.crash()``
restores every undo-logged key, which reverts each table to exactly its last
synced state, and invalidates every handle opened before it.

Guarantees (one simulated node, single-threaded):

* reads see all writes made so far, synced or not (read-your-writes);
* after ``crash()`` a table holds exactly what it held at its last ``sync()``;
  ``sync()`` is per table (name), not per disk;
* a ``write(batch)`` is validated before any of it is applied, and is undone
  or kept as a whole, so it is atomic across crashes.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterator

from sortedcontainers import SortedDict

from storage.base import (
    StoreClosed,
    WriteBatch,
    _as_bytes,
    _batch_ops,
    _scan_args,
    _scan_is_empty,
)

_ABSENT = object()  # undo-log marker: the key did not exist at the last sync

# A scan reads this many items per step, doubling up to the maximum, so short
# scans stay cheap and long ones do not copy the whole range up front.
SCAN_CHUNK_FIRST = 32
SCAN_CHUNK_MAX = 1024


class _Table:
    """The contents of one named store plus its undo log since the last sync."""

    __slots__ = ("data", "undo", "dead")

    def __init__(self, data: SortedDict | None = None) -> None:
        self.data: SortedDict = SortedDict() if data is None else data
        self.undo: dict[bytes, object] = {}
        self.dead = False

    def revert(self) -> None:
        """Undo every write since the last sync."""
        data = self.data
        for key, prev in self.undo.items():
            if prev is _ABSENT:
                data.pop(key, None)
            else:
                data[key] = prev
        self.undo = {}

    def durable_bytes(self) -> int:
        """Total key+value length of the table as of its last sync."""
        data = self.data
        total = sum(len(k) + len(v) for k, v in data.items())
        for key, prev in self.undo.items():
            cur = data.get(key)
            if cur is not None:
                total -= len(key) + len(cur)
            if prev is not _ABSENT:
                total += len(key) + len(prev)  # type: ignore[arg-type]
        return total


_CLOSED = _Table()
_CLOSED.dead = True


class MemoryStore:
    """A :class:`storage.base.Store` kept in memory; see the module docstring.

    ``MemoryStore()`` alone is a private table on no disk (it never crashes);
    simulated nodes get theirs from :meth:`MemoryDisk.open`.
    """

    __slots__ = ("name", "_t")

    def __init__(self, name: str = "", _table: _Table | None = None) -> None:
        self.name = name
        self._t = _Table() if _table is None else _table

    def _live(self) -> _Table:
        t = self._t
        if t.dead:
            raise StoreClosed(f"memory store {self.name!r} is closed")
        return t

    def get(self, key: bytes) -> bytes | None:
        t = self._t
        if t.dead:
            raise StoreClosed(f"memory store {self.name!r} is closed")
        if type(key) is not bytes:
            key = _as_bytes(key, "key")
        return t.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        t = self._t
        if t.dead:
            raise StoreClosed(f"memory store {self.name!r} is closed")
        if type(key) is not bytes:
            key = _as_bytes(key, "key")
        if type(value) is not bytes:
            value = _as_bytes(value, "value")
        data, undo = t.data, t.undo
        if key not in undo:
            undo[key] = data.get(key, _ABSENT)
        data[key] = value

    def delete(self, key: bytes) -> None:
        t = self._t
        if t.dead:
            raise StoreClosed(f"memory store {self.name!r} is closed")
        if type(key) is not bytes:
            key = _as_bytes(key, "key")
        data = t.data
        if key in data:
            undo = t.undo
            if key not in undo:
                undo[key] = data[key]
            del data[key]

    def write(self, batch: WriteBatch) -> None:
        t = self._live()
        ops = _batch_ops(batch)  # checks everything before applying anything
        data, undo = t.data, t.undo
        for key, value in ops:
            if key not in undo:
                undo[key] = data.get(key, _ABSENT)
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

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
        self, lo: bytes | None, hi: bytes | None, reverse: bool, limit: int | None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield in chunks, resuming after the last key: safe under writes."""
        lo_incl = True
        chunk = SCAN_CHUNK_FIRST
        left = limit
        while True:
            t = self._live()
            data = t.data
            n = chunk if left is None else min(chunk, left)
            keys = data.irange(lo, hi, (lo_incl, False), reverse)
            items = [(k, data[k]) for k in islice(keys, n)]
            for item in items:
                if t.dead:
                    raise StoreClosed(f"memory store {self.name!r} is closed")
                yield item
            if len(items) < n:
                return
            if left is not None:
                left -= n
                if left == 0:
                    return
            if reverse:
                hi = items[-1][0]
            else:
                lo, lo_incl = items[-1][0], False
            chunk = min(chunk * 2, SCAN_CHUNK_MAX)

    def bytes_estimate(self) -> int:
        """Key+value bytes held (what RocksStore.bytes_estimate approximates)."""
        return sum(len(k) + len(v) for k, v in self._live().data.items())

    def sync(self) -> None:
        t = self._live()
        if t.undo:
            t.undo = {}

    def close(self) -> None:
        """Invalidate this handle (other handles and the data are unaffected)."""
        self._t = _CLOSED

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._t.dead else f"{len(self._t.data)} keys"
        return f"<MemoryStore {self.name!r} {state}>"


class MemoryDisk:
    """The disk of one simulated node: named tables that survive crashes."""

    def __init__(self) -> None:
        self._tables: dict[str, _Table] = {}

    def open(self, name: str) -> MemoryStore:
        """A handle on table ``name`` (created empty on first use)."""
        if not isinstance(name, str):
            raise TypeError(f"store name must be a str, not {type(name).__name__}")
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = _Table()
        return MemoryStore(name, table)

    def crash(self) -> None:
        """Lose every unsynced write and invalidate every open handle."""
        fresh: dict[str, _Table] = {}
        for name, table in self._tables.items():
            table.revert()
            fresh[name] = _Table(table.data)
            table.dead = True
            table.data = SortedDict()  # old handles must not reach the live data
        self._tables = fresh

    def remove(self, name: str) -> None:
        """Delete table ``name`` (a dropped shard's data); open handles die."""
        table = self._tables.pop(name, None)
        if table is not None:
            table.dead = True
            table.data = SortedDict()

    def names(self) -> list[str]:
        """Names of every table ever opened on this disk, sorted."""
        return sorted(self._tables)

    def bytes_used(self) -> int:
        """Total key+value length of the durable (synced) data, without overhead."""
        return sum(t.durable_bytes() for t in self._tables.values())

    def __repr__(self) -> str:
        return f"<MemoryDisk {len(self._tables)} stores>"
