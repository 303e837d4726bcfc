"""History queries from the Python client (``AsyncClient.query``,
``Client.query`` and their ``query_iter`` helpers): one ``QueryRequest``
frame per page.  See docs/ARCHITECTURE.md, "History queries"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import frames as fr

LIMIT_DEFAULT = 1000


@dataclass(frozen=True)
class QueriedRecord:
    """One record of a history query's answer."""

    shard: int
    offset: int
    timestamp_ms: int  # the producer's timestamp: the one the range is about
    broker_timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class QueryResult:
    """One page: ``records`` in (timestamp, shard, offset) order;
    ``next_token`` continues the query (``after=``), None when it is done."""

    topic: str
    records: list[QueriedRecord]
    next_token: str | None


def request(topic: str, from_ts: int, to_ts: int, key: bytes | str | None, limit: int,
            after: str | None) -> fr.QueryRequest:
    for name, v in (("from_ts", from_ts), ("to_ts", to_ts), ("limit", limit)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an integer (ms since the epoch for times), not {v!r}")
    if from_ts < 0 or to_ts < 0:
        raise ValueError("from_ts and to_ts are ms since the epoch, >= 0")
    if from_ts > to_ts:
        raise ValueError(f"from_ts ({from_ts}) is after to_ts ({to_ts})")
    if not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be in [1, 10000], not {limit}")
    k = key.encode() if isinstance(key, str) else key
    return fr.QueryRequest(topic=topic, from_ms=from_ts, to_ms=to_ts, has_key=k is not None, key=k or b"",
                           limit=limit, after=after or "")


def result(topic: str, resp: Any) -> QueryResult:
    from runtime.client import ChorusError

    if not isinstance(resp, fr.QueryResponse):
        raise ChorusError(None, f"unexpected answer {type(resp).__name__} to a QueryRequest")
    recs = [QueriedRecord(r.shard, r.offset, r.timestamp_ms, r.broker_timestamp_ms, r.key if r.has_key else None,
                          r.value, tuple((h.name, h.value) for h in r.headers)) for r in resp.records]
    return QueryResult(topic, recs, resp.next_token or None)
