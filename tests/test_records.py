"""Tests for record batches (protocol/records.py)."""
from __future__ import annotations

import random
import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.records as records_mod
from protocol.records import (
    BATCH_BYTES_MAX,
    CODEC_NONE,
    CODEC_ZSTD,
    HEADER_BYTES,
    RECORDS_PER_BATCH_MAX,
    BatchHeader,
    CorruptBatch,
    Record,
    decode_batch,
    encode_batch,
    read_header,
    rebase,
)

headers_st = st.lists(
    st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3
).map(tuple)
records_st = st.builds(
    Record,
    key=st.none() | st.binary(max_size=40),
    payload=st.binary(max_size=300),
    headers=headers_st,
    producer_ts_ms=st.integers(0, 2**63 - 1),
)


def content(r: Record) -> tuple:
    """The fields of a record the producer sets."""
    return r.key, r.payload, r.headers, r.producer_ts_ms


def sample_batch(n: int = 50, *, compressible: bool = True, **kw: int) -> bytes:
    rng = random.Random(n)
    recs = []
    for i in range(n):
        payload = (b"event-%d " % i) * 10 if compressible else rng.randbytes(100)
        recs.append(Record(b"key-%d" % (i % 7), payload, (("h", b"v%d" % i),) if i % 3 == 0 else (),
                           1_700_000_000_000 + i))
    return encode_batch(recs, **kw)


def forge_header(**fields: int) -> bytes:
    """A header-only byte string with a correct header crc and the given fields."""
    values = dict(base_offset=0, record_count=1, leader_epoch=0, producer_id=0, base_sequence=0,
                  broker_ts_ms=0, body_bytes=0, codec=0, body_crc=crc32c.crc32c(b""))
    values.update(fields)
    body = struct.pack(">QIIQIQIBI", *values.values())
    return bytes((0xCB, 1)) + crc32c.crc32c(body).to_bytes(4, "big") + body


# -- round trips ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    recs=st.lists(records_st, min_size=1, max_size=30),
    base=st.integers(0, 2**40),
    epoch=st.integers(0, 2**32 - 1),
    pid=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**32 - 1),
    ts=st.integers(0, 2**64 - 1),
    compress=st.booleans(),
)
def test_round_trip(recs, base, epoch, pid, seq, ts, compress) -> None:
    data = encode_batch(recs, base_offset=base, epoch=epoch, producer_id=pid,
                        base_sequence=seq, broker_ts_ms=ts, compress=compress)
    header, out = decode_batch(data)
    assert (header.base_offset, header.record_count, header.leader_epoch) == (base, len(recs), epoch)
    assert (header.producer_id, header.base_sequence, header.broker_ts_ms) == (pid, seq, ts)
    assert header.batch_bytes == len(data)
    assert [content(r) for r in out] == [content(r) for r in recs]
    assert [r.offset for r in out] == list(range(base, base + len(recs)))
    assert all(r.broker_ts_ms == ts for r in out)
    assert read_header(data) == header
    if not compress:
        assert header.codec == CODEC_NONE


def test_decoded_records_are_ordinary_records() -> None:
    recs = [Record(b"k", b"v", (("a", b"1"),), 5), Record(None, b"")]
    _, out = decode_batch(encode_batch(recs, base_offset=10, broker_ts_ms=9))
    assert out == [Record(b"k", b"v", (("a", b"1"),), 5, 9, 10), Record(None, b"", (), 0, 9, 11)]
    assert hash(out[0]) == hash(Record(b"k", b"v", (("a", b"1"),), 5, 9, 10))
    with pytest.raises(AttributeError):
        out[0].offset = 3  # type: ignore[misc]


def test_accepts_bytearray_and_memoryview() -> None:
    data = sample_batch(20)
    expected = decode_batch(data)
    assert decode_batch(bytearray(data)) == expected
    assert decode_batch(memoryview(data)) == expected
    assert read_header(memoryview(data)) == expected[0]


def test_compression_used_for_compressible_data() -> None:
    data = sample_batch(200)
    h = read_header(data)
    assert h.codec == CODEC_ZSTD
    raw = sample_batch(200, compress=False)
    assert read_header(raw).codec == CODEC_NONE
    assert len(data) * 5 < len(raw)
    assert decode_batch(data)[1] == decode_batch(raw)[1]


def test_no_compression_when_small_or_useless() -> None:
    small = encode_batch([Record(None, b"a" * 100)])
    assert read_header(small).codec == CODEC_NONE  # body below COMPRESS_MIN_BYTES
    rng = random.Random(3)
    noise = encode_batch([Record(None, rng.randbytes(100)) for _ in range(50)])
    assert read_header(noise).codec == CODEC_NONE  # zstd would save ~2%: not worth it
    noise = encode_batch([Record(None, rng.randbytes(1000))])
    assert read_header(noise).codec == CODEC_NONE  # zstd would not make it smaller


def test_header_properties() -> None:
    h = read_header(sample_batch(10, base_offset=100))
    assert isinstance(h, BatchHeader)
    assert (h.last_offset, h.end_offset) == (109, 110)


# -- rebase --------------------------------------------------------------------


def test_rebase_changes_offsets_keeps_records() -> None:
    data = sample_batch(100, epoch=1, producer_id=7, base_sequence=3, broker_ts_ms=5)
    moved = rebase(data, 1000, 4, 99)
    assert moved[HEADER_BYTES:] == data[HEADER_BYTES:]  # body untouched
    h0, before = decode_batch(data)
    h1, after = decode_batch(moved)
    assert (h1.base_offset, h1.leader_epoch, h1.broker_ts_ms) == (1000, 4, 99)
    assert (h1.producer_id, h1.base_sequence, h1.record_count, h1.codec) == (7, 3, 100, h0.codec)
    assert [content(r) for r in after] == [content(r) for r in before]
    assert [r.offset for r in after] == list(range(1000, 1100))
    assert {r.broker_ts_ms for r in after} == {99}


def test_rebase_does_not_touch_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample_batch(100)
    monkeypatch.setattr(records_mod, "_decompress", None)  # would fail if called
    monkeypatch.setattr(records_mod, "_decode_body", None)
    assert read_header(rebase(data, 5, 6, 7)).base_offset == 5


def test_rebase_keeps_body_corruption_detectable() -> None:
    data = bytearray(sample_batch(100))
    data[-3] ^= 0x10
    moved = rebase(bytes(data), 5, 6, 7)  # header is fine; the body crc still mismatches
    with pytest.raises(CorruptBatch, match="body crc"):
        decode_batch(moved)


def test_rebase_rejects_bad_input() -> None:
    data = sample_batch(10)
    with pytest.raises(CorruptBatch):
        rebase(data[:-1], 0, 0, 0)
    with pytest.raises(ValueError):
        rebase(data, -1, 0, 0)
    with pytest.raises(ValueError):
        rebase(data, 0, 2**32, 0)


# -- corruption ----------------------------------------------------------------


@pytest.mark.parametrize("compressible", [True, False])
def test_every_single_byte_corruption_is_detected(compressible: bool) -> None:
    data = sample_batch(60, compressible=compressible)
    rng = random.Random(1)
    positions = list(range(HEADER_BYTES + 8)) + rng.sample(range(HEADER_BYTES, len(data)), 200)
    positions.append(len(data) - 1)
    for pos in positions:
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[pos] ^= flip
            with pytest.raises(CorruptBatch):
                decode_batch(bytes(bad))
            if pos < HEADER_BYTES:
                with pytest.raises(CorruptBatch):
                    read_header(bytes(bad), check_body=False)


def test_truncation_and_trailing_bytes_detected() -> None:
    data = sample_batch(30)
    for n in list(range(0, HEADER_BYTES + 2)) + list(range(len(data) - 5, len(data))):
        with pytest.raises(CorruptBatch, match="truncated"):
            decode_batch(data[:n])
    with pytest.raises(CorruptBatch, match="trailing"):
        read_header(data + b"\0")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(record_count=0), "record count"),
        (dict(record_count=RECORDS_PER_BATCH_MAX + 1), "record count"),
        (dict(codec=7), "codec"),
        (dict(body_bytes=BATCH_BYTES_MAX), "BATCH_BYTES_MAX"),
        (dict(base_offset=2**64 - 1, record_count=2), "overflows"),
    ],
)
def test_impossible_header_fields(fields: dict, message: str) -> None:
    with pytest.raises(CorruptBatch, match=message):
        read_header(forge_header(**fields))


def test_bad_magic_and_version() -> None:
    data = bytearray(sample_batch(5))
    data[0] = 0x00
    with pytest.raises(CorruptBatch, match="magic"):
        read_header(bytes(data))
    data[0], data[1] = 0xCB, 9
    with pytest.raises(CorruptBatch, match="version"):
        read_header(bytes(data))


def _forge_batch(body: bytes, count: int, codec: int = CODEC_NONE) -> bytes:
    return forge_header(record_count=count, body_bytes=len(body), codec=codec,
                        body_crc=crc32c.crc32c(body)) + body


@pytest.mark.parametrize(
    "body",
    [
        b"",  # too short
        b"\0" * 8,  # no columns
        b"\0" * 8 + b"\x03",  # bad width
        b"\0" * 8 + b"\x01\x05" + b"\0\0\0",  # key length 5, no bytes
        b"\0" * 8 + b"\x01\xfe" + b"\0\0\0",  # key length -2
        b"\0" * 8 + b"\0\0\0\0" + b"extra",  # lengths do not add up
        b"\0" * 8 + b"\0\0\0\x01\x01\x01\x01\x01\x01" + b"\xff",  # header name not utf-8
    ],
)
def test_malformed_body_with_valid_crc(body: bytes) -> None:
    with pytest.raises(CorruptBatch):
        decode_batch(_forge_batch(body, 1))


def test_zstd_body_that_does_not_decompress() -> None:
    with pytest.raises(CorruptBatch, match="zstd"):
        decode_batch(_forge_batch(b"not a zstd frame at all", 1, CODEC_ZSTD))


# -- limits --------------------------------------------------------------------


def test_record_count_limits_on_encode() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_batch([])
    with pytest.raises(ValueError, match="RECORDS_PER_BATCH_MAX"):
        encode_batch([Record(None, b"")] * (RECORDS_PER_BATCH_MAX + 1))
    assert read_header(encode_batch([Record(None, b"")] * RECORDS_PER_BATCH_MAX)).record_count \
        == RECORDS_PER_BATCH_MAX


def test_byte_limit_on_encode_and_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    big = [Record(None, os.urandom(1 << 20)) for _ in range(9)]  # 9 MiB, incompressible
    with pytest.raises(ValueError, match="BODY_BYTES_MAX"):
        encode_batch(big)
    data = sample_batch(200, compressible=False)
    monkeypatch.setattr(records_mod, "BATCH_BYTES_MAX", len(data) - 1)
    with pytest.raises(ValueError, match="BATCH_BYTES_MAX"):
        sample_batch(200, compressible=False)
    with pytest.raises(CorruptBatch, match="BATCH_BYTES_MAX"):
        decode_batch(data)


def test_decompressed_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample_batch(500)
    assert read_header(data).codec == CODEC_ZSTD
    monkeypatch.setattr(records_mod, "BODY_BYTES_MAX", 1000)
    with pytest.raises(CorruptBatch, match="decompressed body"):
        decode_batch(data)


def test_field_ranges_on_encode() -> None:
    r = [Record(None, b"x")]
    for kw in (dict(base_offset=-1), dict(epoch=2**32), dict(producer_id=2**64),
               dict(base_sequence=-1), dict(broker_ts_ms=2**64)):
        with pytest.raises(ValueError):
            encode_batch(r, **kw)
    with pytest.raises(ValueError, match="producer_ts_ms"):
        encode_batch([Record(None, b"x", producer_ts_ms=-1)])
    with pytest.raises(TypeError):
        encode_batch(r, epoch=1.5)  # type: ignore[arg-type]


def test_column_widths_cover_extremes() -> None:
    stamps = [0, 2**63 - 1, 1, 2**31, 2**15, 127, 128]
    recs = [Record(None, b"p" * n, producer_ts_ms=t) for n, t in zip([0, 1, 200, 70000, 3, 4, 5], stamps)]
    _, out = decode_batch(encode_batch(recs))
    assert [content(r) for r in out] == [content(r) for r in recs]
