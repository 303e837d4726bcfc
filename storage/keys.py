"""Key helpers for log-structured stores.

Fixed-width big-endian integers sort bytewise in numeric order, so
``prefixed(b"log/", n)`` keys scan in sequence order and
``scan(prefixed(p, a), prefixed(p, b))`` is the entries ``a <= n < b``.
"""
from __future__ import annotations

U64_MAX = 2**64 - 1


def u64(n: int) -> bytes:
    """``n`` as 8 big-endian bytes; ``ValueError`` outside ``[0, 2**64)``."""
    if type(n) is bool or not isinstance(n, int):
        raise TypeError(f"u64 needs an int, not {type(n).__name__}")
    if not 0 <= n <= U64_MAX:
        raise ValueError(f"u64 out of range: {n}")
    return n.to_bytes(8, "big")


def from_u64(b: bytes) -> int:
    """The integer encoded by :func:`u64`; ``ValueError`` unless ``b`` has 8 bytes."""
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise TypeError(f"from_u64 needs bytes, not {type(b).__name__}")
    if len(b) != 8:
        raise ValueError(f"from_u64 needs 8 bytes, got {len(b)}")
    return int.from_bytes(b, "big")


def prefixed(prefix: bytes, n: int) -> bytes:
    """``prefix`` followed by ``u64(n)``."""
    if not isinstance(prefix, (bytes, bytearray, memoryview)):
        raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
    return bytes(prefix) + u64(n)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``.

    ``None`` when there is none (empty prefix or all ``0xff``): scan to the end.
    """
    if not isinstance(prefix, (bytes, bytearray, memoryview)):
        raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
    stripped = bytes(prefix).rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
