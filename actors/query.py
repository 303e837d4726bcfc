"""History queries by time: the sans-IO part (scan, merge, continuation).

A query asks for the records of a topic whose **producer timestamp**
(``Record.producer_ts_ms``, ms since the epoch) is in ``[from_ms, to_ms)``,
optionally only those with one key, in one order over the whole topic:

    (timestamp, shard index, offset)

ties on the timestamp are broken by the shard's index, then by the offset
in the shard -- total, stable and the same on every replica.

Why the producer timestamp: it is the time the application gave its
record (event time), it travels inside the batch, so every replica and
every retry of an idempotent producer carry the same value, and it is the
timestamp clients already see on fetch.  The broker timestamp is the
leader's clock at append: it says when Chorus stored a record, not when it
happened, and changes meaning across a failover to a node with another
clock.

Pieces, each pure:

* :func:`scan` -- one replica's part: the matching records of a shard
  strictly after a position, smallest first, bounded by a record count
  and a byte budget (a bounded heap: memory is O(max_records)).
* :func:`merge` -- the coordinator's part: a k-way merge of one reply per
  shard that stops at ``limit`` records, at ``max_bytes``, or where a
  shard whose reply was cut could have more (never past what it knows).
* :class:`Cursor` -- the continuation token: per shard the watermark
  pinned by the first page and the position of the last record returned
  from it (or "done").  The next page continues exactly after it: no
  duplicates, no gaps, and records appended after the first page are not
  mixed in (the pinned watermark), so paging sees one consistent snapshot.
  The token is opaque to clients (url-safe base64 of JSON, versioned) and
  names the query it belongs to; a token used with another query is refused.
* :func:`check_params` -- validation with clear messages.

Fan-out is "for each shard whose data may overlap the range"
(:func:`shards_for_range`): every shard of a topic without shard groups;
for a topic with shard groups the shards of each group whose span meets
the range (actors/dispatcher_groups.py).
"""
from __future__ import annotations

import base64
import hashlib
import heapq
import json
from dataclasses import dataclass, field
from typing import Iterable

from protocol.records import Record, decode_batch, is_control

LIMIT_MAX = 10_000          # records per page
LIMIT_DEFAULT = 1000
PAGE_BYTES_MAX = 4 << 20    # key + payload + headers bytes per page (at least one record)
TS_MAX_MS = (1 << 63) - 1
TOKEN_CHARS_MAX = 64 << 10  # a continuation token longer than this is refused
TOKEN_VERSION = 1


class QueryError(ValueError):
    """Bad query input; the message says what and why."""


def record_bytes(r: Record) -> int:
    return len(r.payload) + len(r.key or b"") + sum(len(k) + len(v) for k, v in r.headers) + 32


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise QueryError(f"{name!r} must be an integer, not {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit():
            raise QueryError(f"{name!r} must be an integer (ms since the epoch for times), not {value!r}")
        value = int(text)
    if not isinstance(value, int):
        raise QueryError(f"{name!r} must be an integer, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise QueryError(f"{name!r} must be in [{lo}, {hi}], not {value}")
    return value


@dataclass(frozen=True)
class QueryParams:
    from_ms: int
    to_ms: int
    key: bytes | None
    limit: int


def check_params(from_ms: object, to_ms: object, key: object = None, limit: object = None) -> QueryParams:
    """Validated parameters; raises :class:`QueryError` with a clear message."""
    if from_ms is None or to_ms is None:
        raise QueryError("'from' and 'to' are required (ms since the epoch; the range is [from, to))")
    f = _int("from", from_ms, 0, TS_MAX_MS)
    t = _int("to", to_ms, 0, TS_MAX_MS)
    if f > t:
        raise QueryError(f"'from' ({f}) is after 'to' ({t})")
    n = LIMIT_DEFAULT if limit is None else _int("limit", limit, 1, LIMIT_MAX)
    if key is not None and not isinstance(key, (bytes, str)):
        raise QueryError(f"'key' must be a string, not {type(key).__name__}")
    k = key.encode() if isinstance(key, str) else key
    return QueryParams(f, t, k, n)


def shards_for_range(topic: str, spec: dict, from_ms: int, to_ms: int) -> list[tuple[int, str]]:
    """(index, internal shard name) of every shard whose data may overlap
    ``[from_ms, to_ms)`` for a topic without shard groups: all of them.  A
    topic with shard groups fans out to the shards of each group whose span
    meets the range (actors/dispatcher_groups.py); there the "index" is the
    shard's id, unique within the topic, and stays the tie-breaker."""
    return [(i, f"{topic}#{i}") for i in range(int(spec.get("shards", 1)))]


# ----------------------------------------------------------------- replica


def matches(r: Record, from_ms: int, to_ms: int, key: bytes | None) -> bool:
    return (from_ms <= r.producer_ts_ms < to_ms and (key is None or r.key == key)
            and not is_control(r))


def scan(batches: Iterable[bytes], end_offset: int, from_ms: int, to_ms: int, key: bytes | None,
         after: tuple[int, int] | None, max_records: int, max_bytes: int) -> tuple[list[Record], bool]:
    """The smallest matching records by (timestamp, offset) strictly after
    ``after`` among ``batches`` (records at or past ``end_offset`` ignored),
    at most ``max_records`` and about ``max_bytes`` (at least one).

    Returns (records in order, more): ``more`` is True when a matching
    record after the last one returned was left out."""
    heap: list[tuple[int, int, Record]] = []  # max-heap by negated key of the kept smallest
    for data in batches:
        _h, recs = decode_batch(data)
        for r in recs:
            if r.offset >= end_offset or not matches(r, from_ms, to_ms, key):
                continue
            pos = (r.producer_ts_ms, r.offset)
            if after is not None and pos <= after:
                continue
            item = (-r.producer_ts_ms, -r.offset, r)
            if len(heap) < max_records + 1:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    ordered = [r for _a, _b, r in sorted(heap, key=lambda x: (-x[0], -x[1]))]
    more = len(ordered) > max_records
    ordered = ordered[:max_records]
    total = 0
    for i, r in enumerate(ordered):
        total += record_bytes(r)
        if total > max_bytes and i > 0:
            return ordered[:i], True
    return ordered, more


# ------------------------------------------------------------- coordinator


@dataclass
class ShardCursor:
    hw: int = -1                 # pinned by the first page; -1: not yet
    ts: int = -1                 # position of the last record returned
    offset: int = -1             # -1: nothing returned yet
    done: bool = False

    @property
    def after(self) -> tuple[int, int] | None:
        return None if self.offset < 0 else (self.ts, self.offset)


@dataclass
class Cursor:
    """Where a query stands, per shard (keyed by shard index)."""

    query: str                   # digest of (topic, from, to, key)
    shards: dict[int, ShardCursor] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return bool(self.shards) and all(c.done for c in self.shards.values())

    def encode(self) -> str:
        doc = {"v": TOKEN_VERSION, "q": self.query,
               "s": {str(i): (0 if c.done else [c.hw, c.ts, c.offset]) for i, c in sorted(self.shards.items())}}
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(token: str, query: str) -> "Cursor":
        bad = QueryError("'after' is not a continuation token of this query (from, to, key and topic must "
                         "be the ones of the first page)")
        if not isinstance(token, str) or len(token) > TOKEN_CHARS_MAX:
            raise bad
        try:
            doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            if doc["v"] != TOKEN_VERSION or doc["q"] != query:
                raise bad
            shards = {}
            for k, v in doc["s"].items():
                if v == 0:
                    shards[int(k)] = ShardCursor(done=True)
                else:
                    hw, ts, off = (int(x) for x in v)
                    shards[int(k)] = ShardCursor(hw, ts, off)
        except QueryError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):
            raise bad from None
        return Cursor(query, shards)


def query_id(topic: str, p: QueryParams) -> str:
    h = hashlib.sha256(json.dumps([topic, p.from_ms, p.to_ms, None if p.key is None else p.key.hex()]).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ShardPage:
    """One shard's reply: records in (timestamp, offset) order after the
    shard's cursor, the watermark read below, and whether more may follow."""

    records: tuple[Record, ...]
    hw: int
    more: bool


def merge(cursor: Cursor, pages: dict[int, ShardPage], limit: int,
          max_bytes: int = PAGE_BYTES_MAX) -> list[tuple[int, Record]]:
    """Merge one page per not-done shard into at most ``limit`` (shard index,
    record) pairs in (timestamp, shard, offset) order, and advance
    ``cursor`` to just after the last pair returned.

    The merge stops where a shard whose page was cut (``more``) has no
    record left: its next record could sort before anything else."""
    for i, page in pages.items():
        c = cursor.shards.setdefault(i, ShardCursor())
        if c.hw < 0:
            c.hw = page.hw
    heads: list[tuple[int, int, int, int]] = []
    for i, page in pages.items():
        if page.records:
            heads.append((page.records[0].producer_ts_ms, i, page.records[0].offset, 0))
    heapq.heapify(heads)
    out: list[tuple[int, Record]] = []
    total = 0
    blocked = {i for i, page in pages.items() if not page.records and page.more}
    while heads and len(out) < limit and not blocked:
        ts, i, off, k = heads[0]
        r = pages[i].records[k]
        size = record_bytes(r)
        if out and total + size > max_bytes:
            break
        heapq.heappop(heads)
        total += size
        out.append((i, r))
        c = cursor.shards[i]
        c.ts, c.offset = ts, off
        if k + 1 < len(pages[i].records):
            nxt = pages[i].records[k + 1]
            heapq.heappush(heads, (nxt.producer_ts_ms, i, nxt.offset, k + 1))
        elif pages[i].more:
            blocked.add(i)
    # a shard is done once everything its page held is out and nothing more follows
    for i, page in pages.items():
        c = cursor.shards[i]
        if not page.more and (not page.records or c.after == (page.records[-1].producer_ts_ms,
                                                              page.records[-1].offset)):
            c.done = True
    return out
