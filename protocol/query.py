"""Messages of history queries (a coordinator's read of one shard by time).

``QueryShard`` asks one replica of one shard (the leader or an in-sync
follower) for the records whose *producer* timestamp is in
``[from_ms, to_ms)`` (and whose key is ``key`` when one is given), ordered by
(timestamp, offset), strictly after the position ``(after_ts_ms,
after_offset)`` (``after_offset == -1``: from the start), at most
``max_records`` records and about ``max_bytes`` bytes.  Only records below
``min(the replica's high watermark, hw_max)`` are read: acknowledged data,
never an uncommitted suffix.  ``hw_max == -1`` pins nothing (the first page
of a query pins the watermark it got for the next pages).

The reply carries the records, the watermark it
read below (``hw``) and ``more``: True when records after the last one
returned may exist (the reply was cut by ``max_records`` or ``max_bytes``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.records import Record
from protocol.brief import Brief


@dataclass(frozen=True)
class QueryShard:
    shard: str
    client: str
    req_id: int
    from_ms: int
    to_ms: int
    key: bytes | None
    after_ts_ms: int
    after_offset: int
    hw_max: int
    max_records: int
    max_bytes: int
    reply_to: Any = None


@dataclass(frozen=True)
class QueryShardReply(Brief):
    shard: str
    client: str
    req_id: int
    status: str
    records: tuple[Record, ...] = ()
    hw: int = 0
    more: bool = False
    node: str = ""
    leader: str | None = None  # the leader the replica knows (itself when it leads)
    error: str = ""
