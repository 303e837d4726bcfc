"""Shard hashing: which shard of a topic a message goes to.

The shard of a keyed message is a pure function of its key bytes::

    shard_for_key(key, shards) == murmur3_32(key, seed=0) % shards

where :func:`murmur3_32` is MurmurHash3_x86_32 exactly as Austin Appleby's
reference implementation (SMHasher's ``MurmurHash3.cpp``) computes it:
4-byte blocks read little-endian, 1-3 tail bytes, the length mixed in, and
the ``fmix32`` finaliser, all in unsigned 32-bit arithmetic, result as an
unsigned int in ``[0, 2**32)``.

This is *the* stable, cross-language shard hash of Chorus: a producer in
Java (Guava's ``murmur3_32_fixed``), Go, C or Rust that hashes the same key
bytes with the same seed gets the same shard, and so does every Chorus
version, host and process.  Never use Python's built-in ``hash()`` for
placement: it is salted per process (``PYTHONHASHSEED``) and differs between
interpreters.  Changing this function re-shards every keyed topic, so don't.

Keyless messages have no affinity; a producer spreads them with a
:class:`RoundRobin` counter of its own.
"""
from __future__ import annotations

__all__ = ["murmur3_32", "shard_for_key", "RoundRobin"]

_MASK = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 of ``data`` with ``seed`` (taken modulo 2**32).

    Bit-for-bit the reference algorithm; returns an unsigned 32-bit int.
    ``murmur3_32(b"hello") == 0x248BFA47``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"murmur3_32 hashes bytes, not {type(data).__name__}; encode strings first (UTF-8)")
    data = bytes(data)
    length = len(data)
    h = seed & _MASK
    nblocks = length // 4

    for i in range(0, nblocks * 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _C1) & _MASK
        k = _rotl32(k, 15)
        k = (k * _C2) & _MASK
        h ^= k
        h = _rotl32(h, 13)
        h = (h * 5 + 0xE6546B64) & _MASK

    tail = data[nblocks * 4:]
    if tail:
        k = int.from_bytes(tail, "little")  # tail[0] | tail[1] << 8 | tail[2] << 16
        k = (k * _C1) & _MASK
        k = _rotl32(k, 15)
        k = (k * _C2) & _MASK
        h ^= k

    h ^= length & _MASK
    return _fmix32(h)


def shard_for_key(key: bytes, shards: int) -> int:
    """The shard (``0 <= shard < shards``) of a message with ``key``.

    Defined as ``murmur3_32(key, 0) % shards``; stable across processes,
    versions and languages (see the module docstring).  Note that changing
    ``shards`` moves most keys: a topic's shard count only grows, and
    per-key order holds only within one shard count.
    """
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    return murmur3_32(key, 0) % shards


class RoundRobin:
    """Spreads keyless messages over shards; one instance per producer.

    ``next(shards)`` returns ``counter % shards`` and advances the counter,
    so consecutive keyless messages on 2 shards go 0, 1, 0, 1, ...  The
    counter starts at ``start`` (a producer may pass a random start, drawn
    from its own RNG, so that many producers do not all begin on shard 0).
    """

    __slots__ = ("_counter",)

    def __init__(self, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        self._counter = start

    def next(self, shards: int) -> int:
        if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
            raise ValueError(f"shards must be a positive int, got {shards!r}")
        shard = self._counter % shards
        self._counter += 1
        return shard

    def __repr__(self) -> str:
        return f"RoundRobin(counter={self._counter})"
