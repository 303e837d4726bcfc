"""Records and record batches: the unit of the data path.

Producers send, shard replicas store and replicate, and consumers fetch
*batches*; the broker moves a batch around as opaque bytes and only ever
touches its fixed-size header (to assign offsets, epoch and broker time with
:func:`rebase`, and to index it).  Only producers and consumers encode and
decode the records inside (:func:`encode_batch`, :func:`decode_batch`).

Batch layout (version 1, all integers big-endian)::

    offset size field
    0      1    magic          0xCB
    1      1    version        1
    2      4    crc            crc32c of bytes [6, 51): the header fields below
    6      8    base_offset    offset of the first record
    14     4    record_count   >= 1; last offset = base_offset + record_count - 1
    18     4    leader_epoch   epoch of the leader that appended the batch
    22     8    producer_id    for idempotent producers (0: none)
    30     4    base_sequence  sequence number of the first record
    34     8    broker_ts_ms   broker append time (max over the records)
    42     4    body_bytes     length of the stored body that follows
    46     1    codec          0: raw body, 1: zstandard frame
    47     4    body_crc       crc32c of the stored (possibly compressed) body
    51     ...  body

The header crc covers every header byte after it, including ``body_crc``, so
one crc check over 45 bytes plus one over the body detects any corruption,
and :func:`rebase` rewrites the header without reading, decompressing or
re-hashing the body.  ``storage/shardlog.py`` parses ``base_offset``,
``record_count`` and ``leader_epoch`` from these same offsets (storage may
not import protocol); ``tests/test_shardlog.py`` keeps the two in agreement.

The (uncompressed) body is columnar, so encoding and decoding do their
integer work in C (``struct``) instead of per-record Python varint loops::

    producer_ts_base  i64       producer timestamp of the first record
    column key_lens   n ints    -1 for a ``None`` key
    column payload_lens n ints
    column ts_deltas  n ints    producer_ts_ms - producer_ts_base
    column header_counts n ints
    column name_lens  h ints    only when h = sum(header_counts) > 0
    column value_lens h ints    only when h > 0
    keys | payloads | header names (utf-8) | header values   (concatenated)

A column is one width byte ``w`` in {0, 1, 2, 4, 8} followed by ``count * w``
bytes of signed big-endian integers; ``w = 0`` means every value is zero and
nothing follows.  Each column uses the smallest width its values fit.

Limits: an encoded batch is at most ``BATCH_BYTES_MAX`` bytes, its
uncompressed body at most ``BODY_BYTES_MAX`` and it holds 1 to
``RECORDS_PER_BATCH_MAX`` records; :func:`encode_batch` raises
``ValueError`` beyond them and the decoding functions raise
:class:`CorruptBatch`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import accumulate

import crc32c
import zstandard

MAGIC = 0xCB
VERSION = 1

CODEC_NONE = 0
CODEC_ZSTD = 1
CODECS = (CODEC_NONE, CODEC_ZSTD)

BATCH_BYTES_MAX = 8 << 20
BODY_BYTES_MAX = 8 << 20
RECORDS_PER_BATCH_MAX = 1 << 16

# Bodies up to this size are stored raw: compressing them rarely pays.
COMPRESS_MIN_BYTES = 256
# ... and a compressed body is kept only if it saves at least 1/16 of the
# raw size; otherwise consumers would pay for decompression for nothing.
COMPRESS_GAIN_MIN_SHIFT = 4
ZSTD_LEVEL = 1

# magic, version, crc, base_offset, record_count, leader_epoch, producer_id,
# base_sequence, broker_ts_ms, body_bytes, codec, body_crc
_HEADER = struct.Struct(">BBIQIIQIQIBI")
HEADER_BYTES = _HEADER.size  # 51
CRC_OFFSET = 2
CRC_COVERS_FROM = 6  # the header crc covers bytes [CRC_COVERS_FROM, HEADER_BYTES)
_FIELDS = struct.Struct(">QIIQIQIBI")  # the header after the crc field

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1

_I64 = struct.Struct(">q")
_WIDTH_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


class CorruptBatch(ValueError):
    """The bytes are not a valid record batch (bad magic, crc, length, ...)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One message.  ``offset`` and ``broker_ts_ms`` are set by the broker."""

    key: bytes | None
    payload: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    producer_ts_ms: int = 0
    broker_ts_ms: int = 0
    offset: int = -1


CONTROL_HEADER = "chorus.control"  # header of records the broker writes itself (e.g. a leader's epoch start)


def is_control(record: Record) -> bool:
    """True for a record written by the broker, not a producer: readers skip it."""
    return any(k == CONTROL_HEADER for k, _ in record.headers)


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The decoded fixed header of a batch (see the module docstring)."""

    base_offset: int
    record_count: int
    leader_epoch: int
    producer_id: int
    base_sequence: int
    broker_ts_ms: int
    body_bytes: int
    codec: int
    body_crc: int
    version: int = VERSION

    @property
    def last_offset(self) -> int:
        """Offset of the batch's last record."""
        return self.base_offset + self.record_count - 1

    @property
    def end_offset(self) -> int:
        """Offset right after the batch's last record."""
        return self.base_offset + self.record_count

    @property
    def batch_bytes(self) -> int:
        """Total encoded size: header plus stored body."""
        return HEADER_BYTES + self.body_bytes


_NEW = object.__new__
_SET_FIELDS = tuple(
    getattr(Record, name).__set__
    for name in ("key", "payload", "headers", "producer_ts_ms", "broker_ts_ms", "offset")
)


def _new_record(
    key: bytes | None, payload: bytes, headers: tuple[tuple[str, bytes], ...],
    producer_ts_ms: int, broker_ts_ms: int, offset: int,
) -> Record:
    """``Record(...)`` about 3x faster: sets the slots directly.

    The dataclass's frozen ``__init__`` goes through ``object.__setattr__``
    once per field; decoding builds hundreds of records per batch.
    """
    r = _NEW(Record)
    sk, sp, sh, st, sb, so = _SET_FIELDS
    sk(r, key)
    sp(r, payload)
    sh(r, headers)
    st(r, producer_ts_ms)
    sb(r, broker_ts_ms)
    so(r, offset)
    return r


# -- zstandard contexts -----------------------------------------------------
# Creating a context costs about as much as compressing a small batch, so
# contexts are pooled.  A context must not be used by two threads at once:
# each call pops one from the pool (list.pop/append are atomic) and returns it.

_COMPRESSORS: list[zstandard.ZstdCompressor] = []
_DECOMPRESSORS: list[zstandard.ZstdDecompressor] = []


def _compress(body: bytes) -> bytes:
    try:
        cctx = _COMPRESSORS.pop()
    except IndexError:
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    try:
        return cctx.compress(body)
    finally:
        _COMPRESSORS.append(cctx)


def _decompress(stored: bytes | memoryview) -> bytes:
    try:
        size = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as e:
        raise CorruptBatch(f"zstd body has no valid frame header: {e}") from None
    if size < 0:
        raise CorruptBatch("zstd body does not record its decompressed size")
    if size > BODY_BYTES_MAX:
        raise CorruptBatch(f"decompressed body of {size} bytes exceeds {BODY_BYTES_MAX}")
    try:
        dctx = _DECOMPRESSORS.pop()
    except IndexError:
        dctx = zstandard.ZstdDecompressor()
    try:
        body = dctx.decompress(stored, max_output_size=BODY_BYTES_MAX)
    except zstandard.ZstdError as e:
        raise CorruptBatch(f"zstd body does not decompress: {e}") from None
    finally:
        _DECOMPRESSORS.append(dctx)
    if len(body) != size:
        raise CorruptBatch(f"zstd body decompressed to {len(body)} bytes, frame says {size}")
    return body


# -- columns ----------------------------------------------------------------


def _width(values: list[int]) -> int:
    """The smallest column width (bytes) holding every value; 0 if all zero."""
    if not values:
        return 0
    lo, hi = min(values), max(values)
    if lo == 0 and hi == 0:
        return 0
    if -0x80 <= lo and hi < 0x80:
        return 1
    if -0x8000 <= lo and hi < 0x8000:
        return 2
    if -0x8000_0000 <= lo and hi < 0x8000_0000:
        return 4
    return 8


def _pack_column(values: list[int], parts: list[bytes]) -> None:
    """Append the column encoding of ``values`` to ``parts``."""
    width = _width(values)
    parts.append(bytes((width,)))
    if width:
        parts.append(struct.pack(f">{len(values)}{_WIDTH_CODES[width]}", *values))


def _unpack_column(body: bytes, pos: int, count: int) -> tuple[list[int] | None, int]:
    """The column at ``pos`` (``None`` when all zero) and the position after it."""
    if pos >= len(body):
        raise CorruptBatch(f"body ends at {len(body)} bytes where a column starts")
    width = body[pos]
    pos += 1
    if width == 0:
        return None, pos
    code = _WIDTH_CODES.get(width)
    if code is None:
        raise CorruptBatch(f"bad column width {width} at body byte {pos - 1}")
    end = pos + count * width
    if end > len(body):
        raise CorruptBatch(f"column of {count} x {width} bytes overruns the body")
    return list(struct.unpack_from(f">{count}{code}", body, pos)), end


# -- encoding ---------------------------------------------------------------


def _check_uint(name: str, value: int, most: int) -> None:
    if type(value) is bool or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= most:
        raise ValueError(f"{name} out of range [0, {most}]: {value}")


def _encode_body(records: list[Record]) -> bytes:
    """The uncompressed columnar body of ``records``."""
    key_lens = [-1 if r.key is None else len(r.key) for r in records]
    payloads = [r.payload for r in records]
    payload_lens = [len(p) for p in payloads]
    stamps = [r.producer_ts_ms for r in records]
    if min(stamps) < 0 or max(stamps) > I64_MAX:
        raise ValueError(f"producer_ts_ms out of range [0, {I64_MAX}]")
    ts_base = stamps[0]
    parts = [_I64.pack(ts_base)]
    _pack_column(key_lens, parts)
    _pack_column(payload_lens, parts)
    _pack_column([t - ts_base for t in stamps], parts)
    header_counts = [len(r.headers) for r in records]
    _pack_column(header_counts, parts)
    names: list[bytes] = []
    values: list[bytes] = []
    if max(header_counts):
        for r in records:
            for name, value in r.headers:
                names.append(name.encode("utf-8"))
                values.append(value)
        _pack_column([len(n) for n in names], parts)
        _pack_column([len(v) for v in values], parts)
    parts.append(b"".join([r.key for r in records if r.key is not None]))
    parts.append(b"".join(payloads))
    parts.append(b"".join(names))
    parts.append(b"".join(values))
    return b"".join(parts)


def _header(
    base_offset: int,
    record_count: int,
    epoch: int,
    producer_id: int,
    base_sequence: int,
    broker_ts_ms: int,
    body_bytes: int,
    codec: int,
    body_crc: int,
) -> bytes:
    """The 51 header bytes, with the header crc filled in."""
    fields = _FIELDS.pack(
        base_offset, record_count, epoch, producer_id, base_sequence,
        broker_ts_ms, body_bytes, codec, body_crc,
    )
    return bytes((MAGIC, VERSION)) + crc32c.crc32c(fields).to_bytes(4, "big") + fields


def encode_batch(
    records: list[Record] | tuple[Record, ...],
    *,
    base_offset: int = 0,
    epoch: int = 0,
    producer_id: int = 0,
    base_sequence: int = 0,
    broker_ts_ms: int = 0,
    compress: bool = True,
) -> bytes:
    """Encode ``records`` (1 to ``RECORDS_PER_BATCH_MAX``) as one batch.

    Each record's ``offset`` and ``broker_ts_ms`` are ignored: a decoded
    record gets ``base_offset + i`` and the batch's ``broker_ts_ms``.  The
    body is zstd-compressed when ``compress`` is set, it is larger than
    ``COMPRESS_MIN_BYTES`` and compression saves at least 1/16 of it.
    """
    records = list(records)
    if not records:
        raise ValueError("a batch needs at least one record")
    if len(records) > RECORDS_PER_BATCH_MAX:
        raise ValueError(f"{len(records)} records exceed RECORDS_PER_BATCH_MAX={RECORDS_PER_BATCH_MAX}")
    _check_uint("base_offset", base_offset, U64_MAX - len(records))
    _check_uint("epoch", epoch, U32_MAX)
    _check_uint("producer_id", producer_id, U64_MAX)
    _check_uint("base_sequence", base_sequence, U32_MAX)
    _check_uint("broker_ts_ms", broker_ts_ms, U64_MAX)
    body = _encode_body(records)
    if len(body) > BODY_BYTES_MAX:
        raise ValueError(f"batch body of {len(body)} bytes exceeds BODY_BYTES_MAX={BODY_BYTES_MAX}")
    codec = CODEC_NONE
    if compress and len(body) > COMPRESS_MIN_BYTES:
        packed = _compress(body)
        if len(packed) <= len(body) - (len(body) >> COMPRESS_GAIN_MIN_SHIFT):
            body, codec = packed, CODEC_ZSTD
    if HEADER_BYTES + len(body) > BATCH_BYTES_MAX:
        raise ValueError(
            f"encoded batch of {HEADER_BYTES + len(body)} bytes exceeds BATCH_BYTES_MAX={BATCH_BYTES_MAX}"
        )
    header = _header(
        base_offset, len(records), epoch, producer_id, base_sequence,
        broker_ts_ms, len(body), codec, crc32c.crc32c(body),
    )
    return header + body


# -- decoding ---------------------------------------------------------------


def read_header(data: bytes | bytearray | memoryview, *, check_body: bool = True) -> BatchHeader:
    """The header of the batch ``data``, validated, without decompressing.

    Checks magic, version, header crc, record count, codec and that ``data``
    is exactly one batch of at most ``BATCH_BYTES_MAX`` bytes; with
    ``check_body`` also the body crc (one hardware crc pass, no
    decompression).  Raises :class:`CorruptBatch` on any failure.
    """
    size = len(data)
    if size < HEADER_BYTES:
        raise CorruptBatch(f"truncated batch: {size} bytes, the header alone is {HEADER_BYTES}")
    if data[0] != MAGIC:
        raise CorruptBatch(f"bad magic 0x{data[0]:02x} (expected 0x{MAGIC:02x})")
    if data[1] != VERSION:
        raise CorruptBatch(f"unsupported batch version {data[1]} (this code reads {VERSION})")
    (_, _, crc, base_offset, count, epoch, producer_id, base_sequence,
     broker_ts_ms, body_bytes, codec, body_crc) = _HEADER.unpack_from(data)
    view = memoryview(data)
    actual = crc32c.crc32c(view[CRC_COVERS_FROM:HEADER_BYTES])
    if actual != crc:
        raise CorruptBatch(f"header crc mismatch: stored 0x{crc:08x}, computed 0x{actual:08x}")
    if not 1 <= count <= RECORDS_PER_BATCH_MAX:
        raise CorruptBatch(f"impossible record count {count} (1..{RECORDS_PER_BATCH_MAX})")
    if base_offset > U64_MAX - count:
        raise CorruptBatch(f"base offset {base_offset} + {count} records overflows u64")
    if codec not in CODECS:
        raise CorruptBatch(f"unknown codec {codec}")
    if HEADER_BYTES + body_bytes > BATCH_BYTES_MAX:
        raise CorruptBatch(f"batch of {HEADER_BYTES + body_bytes} bytes exceeds BATCH_BYTES_MAX={BATCH_BYTES_MAX}")
    if size != HEADER_BYTES + body_bytes:
        what = "truncated batch" if size < HEADER_BYTES + body_bytes else "trailing bytes after batch"
        raise CorruptBatch(f"{what}: {size} bytes, header says {HEADER_BYTES + body_bytes}")
    if check_body:
        actual = crc32c.crc32c(view[HEADER_BYTES:])
        if actual != body_crc:
            raise CorruptBatch(f"body crc mismatch: stored 0x{body_crc:08x}, computed 0x{actual:08x}")
    return BatchHeader(
        base_offset, count, epoch, producer_id, base_sequence,
        broker_ts_ms, body_bytes, codec, body_crc,
    )


def decode_batch(data: bytes | bytearray | memoryview) -> tuple[BatchHeader, list[Record]]:
    """The header and the records of batch ``data`` (record i has offset base_offset + i).

    Raises :class:`CorruptBatch` if anything about the batch is wrong.
    """
    header = read_header(data, check_body=True)
    stored = memoryview(data)[HEADER_BYTES:]
    body = _decompress(stored) if header.codec == CODEC_ZSTD else bytes(stored)
    try:
        records = _decode_body(body, header)
    except (struct.error, UnicodeDecodeError, IndexError, OverflowError) as e:
        raise CorruptBatch(f"malformed batch body: {e}") from None
    return header, records


def _decode_body(body: bytes, header: BatchHeader) -> list[Record]:
    """The records of an uncompressed body (see the module docstring)."""
    n = header.record_count
    if len(body) < 8:
        raise CorruptBatch(f"body of {len(body)} bytes is too short")
    (ts_base,) = _I64.unpack_from(body, 0)
    key_lens, pos = _unpack_column(body, 8, n)
    payload_lens, pos = _unpack_column(body, pos, n)
    ts_deltas, pos = _unpack_column(body, pos, n)
    header_counts, pos = _unpack_column(body, pos, n)
    zeros = [0] * n
    key_lens = key_lens or zeros
    payload_lens = payload_lens or zeros
    ts_deltas = ts_deltas or zeros
    header_counts = header_counts or zeros
    if min(key_lens) < -1 or min(payload_lens) < 0 or min(header_counts) < 0:
        raise CorruptBatch("negative length in batch body")
    header_total = sum(header_counts)
    name_lens: list[int] = []
    value_lens: list[int] = []
    if header_total:
        if header_total > BODY_BYTES_MAX:
            raise CorruptBatch(f"impossible header count {header_total}")
        name_lens, pos = _unpack_column(body, pos, header_total)
        value_lens, pos = _unpack_column(body, pos, header_total)
        name_lens = name_lens or [0] * header_total
        value_lens = value_lens or [0] * header_total
        if min(name_lens) < 0 or min(value_lens) < 0:
            raise CorruptBatch("negative header length in batch body")
    keys_bytes = sum(key_lens) + key_lens.count(-1)
    expected = pos + keys_bytes + sum(payload_lens) + sum(name_lens) + sum(value_lens)
    if expected != len(body):
        raise CorruptBatch(f"batch body is {len(body)} bytes, its lengths add up to {expected}")
    keys = _slices(body, pos, [0 if k < 0 else k for k in key_lens])
    pos += keys_bytes
    payloads = _slices(body, pos, payload_lens)
    pos += sum(payload_lens)
    headers = _headers(body, pos, header_counts, name_lens, value_lens) if header_total else None
    if key_lens.count(-1):
        keys = [None if k < 0 else key for k, key in zip(key_lens, keys)]
    stamps = [ts_base + d for d in ts_deltas] if ts_base or any(ts_deltas) else zeros
    base = header.base_offset
    return list(map(
        _new_record, keys, payloads, headers or [()] * n, stamps,
        [header.broker_ts_ms] * n, range(base, base + n),
    ))


def _slices(body: bytes, pos: int, lengths: list[int]) -> list[bytes]:
    """Consecutive slices of ``body`` starting at ``pos`` with these lengths."""
    ends = list(accumulate(lengths, initial=pos))
    return [body[a:b] for a, b in zip(ends, ends[1:])]


def _headers(
    body: bytes, pos: int, counts: list[int], name_lens: list[int], value_lens: list[int]
) -> list[tuple[tuple[str, bytes], ...]]:
    """Per record, its header tuple."""
    names = [n.decode("utf-8") for n in _slices(body, pos, name_lens)]
    values = _slices(body, pos + sum(name_lens), value_lens)
    pairs = list(zip(names, values))
    out = []
    at = 0
    for count in counts:
        out.append(tuple(pairs[at:at + count]))
        at += count
    return out


# -- rebase -----------------------------------------------------------------


def rebase(data: bytes | bytearray | memoryview, base_offset: int, epoch: int, broker_ts_ms: int) -> bytes:
    """``data`` with a new base offset, leader epoch and broker timestamp.

    Only the header is rewritten (and its crc recomputed); the body is
    copied as is, neither decompressed nor re-hashed, so the cost does not
    depend on the number of records.  The header is validated first
    (:class:`CorruptBatch`); a corrupt body stays detectable by its crc.
    """
    h = read_header(data, check_body=False)
    _check_uint("base_offset", base_offset, U64_MAX - h.record_count)
    _check_uint("epoch", epoch, U32_MAX)
    _check_uint("broker_ts_ms", broker_ts_ms, U64_MAX)
    header = _header(
        base_offset, h.record_count, epoch, h.producer_id, h.base_sequence,
        broker_ts_ms, h.body_bytes, h.codec, h.body_crc,
    )
    return b"".join((header, memoryview(data)[HEADER_BYTES:]))
