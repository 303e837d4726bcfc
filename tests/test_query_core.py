"""The sans-IO part of history queries: scan, merge and the continuation token."""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from actors.query import (
    LIMIT_MAX,
    Cursor,
    QueryError,
    ShardPage,
    check_params,
    merge,
    query_id,
    scan,
)
from protocol.records import CONTROL_HEADER, Record, encode_batch


def _batches(recs: list[tuple], per_batch: int = 3) -> list[bytes]:
    out = []
    for base in range(0, len(recs), per_batch):
        chunk = [Record(k, b"v" * (x[2] if len(x) > 2 else 1), (), x[0])
                 for i, x in enumerate(recs[base:base + per_batch]) for k in [x[1]]]
        out.append(encode_batch(chunk, base_offset=base))
    return out


def _run(shards: list[list[tuple[int, bytes | None]]], hws: list[int], from_ms: int, to_ms: int,
         key: bytes | None, limit: int, replica_records: int, page_bytes: int) -> list[tuple[int, int]]:
    """Page through a whole query; (shard, offset) pairs in the order returned."""
    logs = [_batches(s) for s in shards]
    qid = query_id("t/p/c/x", check_params(from_ms, to_ms, key, limit))
    token = None
    got: list[tuple[int, int]] = []
    for _ in range(10_000):
        cursor = Cursor(qid) if token is None else Cursor.decode(token, qid)
        pages = {}
        for i, log in enumerate(logs):
            c = cursor.shards.get(i)
            if c is not None and c.done:
                continue
            hw = hws[i] if c is None or c.hw < 0 else c.hw
            recs, more = scan(log, hw, from_ms, to_ms, key, c.after if c else None,
                              min(limit, replica_records), page_bytes)
            pages[i] = ShardPage(tuple(recs), hw, more)
        out = merge(cursor, pages, limit, page_bytes)
        assert len(out) <= limit
        got.extend((i, r.offset) for i, r in out)
        if cursor.finished:
            return got
        assert out or any(p.more for p in pages.values()), "no progress"
        token = cursor.encode()
    raise AssertionError("too many pages")


shard_st = st.lists(st.tuples(st.integers(0, 6), st.sampled_from([None, b"a", b"b"]), st.integers(0, 60)),
                    max_size=25)


@settings(max_examples=500, deadline=None)
@given(shards=st.lists(shard_st, min_size=1, max_size=4), data=st.data())
@example(shards=[[(1, None, 1), (2, None, 1), (3, None, 1)], [(2, None, 1), (3, None, 1), (4, None, 1)]],
         data=None)
def test_paging_returns_the_sorted_result_exactly_once(shards, data):
    if data is None:  # a shard whose page was cut must hold the merge back
        _check(shards, [3, 3], 0, 9, None, 5, 1, 1 << 20)
        return
    hws = [data.draw(st.integers(0, len(s)), label="hw") for s in shards]
    from_ms = data.draw(st.integers(0, 7), label="from")
    to_ms = data.draw(st.integers(from_ms, 8), label="to")
    key = data.draw(st.sampled_from([None, b"a"]), label="key")
    limit = data.draw(st.integers(1, 12), label="limit")
    replica_records = data.draw(st.integers(1, 4), label="replica_records")
    page_bytes = data.draw(st.sampled_from([1, 100, 250, 1 << 20]), label="page_bytes")
    _check(shards, hws, from_ms, to_ms, key, limit, replica_records, page_bytes)


def _check(shards, hws, from_ms, to_ms, key, limit, replica_records, page_bytes):
    expected = sorted(
        (ts, i, off) for i, s in enumerate(shards) for off, (ts, k, _n) in enumerate(s)
        if off < hws[i] and from_ms <= ts < to_ms and (key is None or k == key))
    got = _run(shards, hws, from_ms, to_ms, key, limit, replica_records, page_bytes)
    assert got == [(i, off) for _ts, i, off in expected]


def test_records_past_the_watermark_and_control_records_never_come_back():
    recs = [Record(None, b"x", (), 5), Record(None, b"c", ((CONTROL_HEADER, b"1"),), 5), Record(None, b"y", (), 5)]
    batches = [encode_batch(recs, base_offset=0)]
    got, more = scan(batches, 2, 0, 10, None, None, 10, 1 << 20)
    assert [r.payload for r in got] == [b"x"] and not more


def test_ties_are_broken_by_shard_then_offset():
    a = [Record(None, b"a%d" % i, (), 7) for i in range(2)]
    b = [Record(None, b"b%d" % i, (), 7) for i in range(2)]
    cursor = Cursor("q")
    out = merge(cursor, {1: ShardPage(tuple(scan([encode_batch(b)], 9, 0, 9, None, None, 9, 1 << 20)[0]), 2, False),
                         0: ShardPage(tuple(scan([encode_batch(a)], 9, 0, 9, None, None, 9, 1 << 20)[0]), 2, False)},
                10)
    assert [r.payload for _i, r in out] == [b"a0", b"a1", b"b0", b"b1"]
    assert cursor.finished


@pytest.mark.parametrize("args, message", [
    ((5, 4), "after 'to'"),
    (("x", 4), "must be an integer"),
    ((1.5, 4), "must be an integer"),
    ((None, 4), "required"),
    ((-1, 4), "must be in"),
    ((1, 4, None, 0), "'limit'"),
    ((1, 4, None, LIMIT_MAX + 1), "'limit'"),
    ((True, 4), "must be an integer"),
])
def test_bad_parameters_get_clear_errors(args, message):
    with pytest.raises(QueryError, match=message):
        check_params(*args)


def test_a_token_of_another_query_or_garbage_is_refused():
    cursor = Cursor(query_id("t/p/c/x", check_params(0, 10)))
    cursor.shards[0] = cursor.shards.get(0) or __import__("actors.query").query.ShardCursor(5, 3, 2)
    token = cursor.encode()
    assert Cursor.decode(token, cursor.query).shards[0].offset == 2
    other = query_id("t/p/c/x", check_params(0, 11))
    for bad, q in ((token, other), ("!!", cursor.query), ("e30", cursor.query), ("x" * 70000, cursor.query)):
        with pytest.raises(QueryError, match="continuation token"):
            Cursor.decode(bad, q)


def test_strings_from_a_url_are_accepted():
    p = check_params("100", "200", "k", "5")
    assert (p.from_ms, p.to_ms, p.key, p.limit) == (100, 200, b"k", 5)
