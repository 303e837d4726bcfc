"""The one storage interface every engine implements.

A store is an ordered map from ``bytes`` keys to ``bytes`` values:

* ``get``/``put``/``delete`` on single keys,
* ``scan(start, end)`` over the half-open key range ``[start, end)`` in
  key order (or reverse order), optionally limited,
* ``write(batch)`` applies a :class:`WriteBatch` atomically: after a crash
  either all of its operations are there or none,
* ``sync()`` makes every write issued before it durable. Writes that were
  not followed by a ``sync()`` may be lost by a crash (the in-memory engine
  always loses them; RocksDB loses them only if the OS did not flush them).

Callers follow "persist before you acknowledge": write, ``sync()``, and only
then send any message that claims the write.

Keys and values are ``bytes`` (``bytearray``/``memoryview`` are accepted and
copied); anything else raises ``TypeError``.  Keys are ordered bytewise.

``scan`` is weakly consistent when the caller writes to the store while
iterating: items come in strictly increasing (decreasing if ``reverse``) key
order, all within ``[start, end)``, each pair is a value the key held at some
moment during the scan, and every key not written during the scan is
returned; writes to keys the scan has not reached yet may or may not be seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol


class StoreClosed(Exception):
    """Raised when a store is used after ``close()`` or after its host crashed."""


@dataclass
class WriteBatch:
    """An ordered list of puts and deletes applied atomically by ``Store.write``."""

    ops: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    ops_max: int = 1_000_000

    def put(self, key: bytes, value: bytes) -> "WriteBatch":
        key = self._check(key)
        self.ops.append((key, _as_bytes(value, "value")))
        return self

    def delete(self, key: bytes) -> "WriteBatch":
        self.ops.append((self._check(key), None))
        return self

    def _check(self, key: bytes) -> bytes:
        key = _as_bytes(key, "key")
        if len(self.ops) >= self.ops_max:
            raise ValueError(f"write batch is full ({self.ops_max} operations)")
        return key

    def __len__(self) -> int:
        return len(self.ops)


_BYTES_LIKE = (bytes, bytearray, memoryview)


def _as_bytes(x: object, what: str) -> bytes:
    """``x`` as ``bytes``; ``TypeError`` unless it is bytes-like."""
    if type(x) is bytes:
        return x
    if isinstance(x, _BYTES_LIKE):
        return bytes(x)
    raise TypeError(f"{what} must be bytes, not {type(x).__name__}")


def _batch_ops(batch: WriteBatch) -> list[tuple[bytes, bytes | None]]:
    """The checked operations of ``batch`` (engines call this before applying any)."""
    if not isinstance(batch, WriteBatch):
        raise TypeError(f"batch must be a WriteBatch, not {type(batch).__name__}")
    ops = batch.ops
    for key, value in ops:
        if type(key) is not bytes or not (value is None or type(value) is bytes):
            break
    else:
        return ops
    return [
        (_as_bytes(k, "key"), None if v is None else _as_bytes(v, "value")) for k, v in ops
    ]


def _scan_args(
    start: object, end: object, limit: object
) -> tuple[bytes | None, bytes | None, int | None]:
    """Checked ``scan`` arguments; ``TypeError``/``ValueError`` on bad ones."""
    start_b = None if start is None else _as_bytes(start, "start")
    end_b = None if end is None else _as_bytes(end, "end")
    if limit is not None:
        if type(limit) is bool or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
    return start_b, end_b, limit


def _scan_is_empty(start: bytes | None, end: bytes | None, limit: int | None) -> bool:
    """True when a scan with these (checked) arguments cannot return anything."""
    return limit == 0 or (start is not None and end is not None and start >= end)


class Store(Protocol):
    """What actors get from ``host.open_store(name)``."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]: ...

    def write(self, batch: WriteBatch) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...
