"""Unit tests of the data-plane checkers on hand-made histories and logs."""
from __future__ import annotations

from protocol.records import Record, encode_batch
from sim.datachecks import check_data
from sim.history import Record as H

SHARD = "t/p/c/x#0"


def ack(producer: str, seq: int, base: int, level: str = "quorum", count: int = 1) -> H:
    return H(1.0, producer, "producer", "produce.done", {
        "producer": producer, "shard": SHARD, "seq": seq, "count": count, "level": level, "status": "ok",
        "base_offset": base, "duplicate": False, "leader": "n1", "error": ""})


def log_of(*payloads: str) -> list[bytes]:
    return [encode_batch([Record(None, p.encode())], base_offset=i, epoch=1) for i, p in enumerate(payloads)]


def test_clean_history_passes():
    logs = {SHARD: {"n1": log_of("p1|t/p/c/x#0|0", "p1|t/p/c/x#0|1"),
                    "n2": log_of("p1|t/p/c/x#0|0", "p1|t/p/c/x#0|1")}}
    out, stats = check_data([ack("p1", 0, 0), ack("p1", 1, 1)], logs, {SHARD: ("n1", 2)})
    assert not any(out.values()) and stats["acked_records"] == 2


def test_lost_quorum_write_and_divergent_replica_are_reported():
    logs = {SHARD: {"n1": log_of("p1|t/p/c/x#0|0"), "n2": log_of("p1|t/p/c/x#0|0", "junk")}}
    out, _ = check_data([ack("p1", 0, 0), ack("p1", 1, 1)], logs, {SHARD: ("n1", 1)})
    assert out["acked_writes_durable"] and out["replicas_identical"]


def test_loss_at_one_is_counted_not_failed_and_frees_the_offset():
    # p2's record acknowledged at one at offset 1 died with its leader; the next
    # leader gave offset 1 to p1's quorum write.
    logs = {SHARD: {"n1": log_of("p1|t/p/c/x#0|0", "p1|t/p/c/x#0|1")}}
    hist = [ack("p1", 0, 0), ack("p2", 0, 1, level="one"), ack("p1", 1, 1)]
    out, stats = check_data(hist, logs, {SHARD: ("n1", 2)})
    assert not any(out.values()), out
    assert stats["loss_at_one"] == 1


def test_two_durable_acks_for_one_offset_are_reported():
    logs = {SHARD: {"n1": log_of("p1|t/p/c/x#0|0", "p2|t/p/c/x#0|0")}}
    hist = [ack("p1", 0, 0), ack("p2", 0, 0)]
    out, _ = check_data(hist, logs, {SHARD: ("n1", 2)})
    assert out["offsets_unique"]


def test_duplicates_and_reordering_are_reported():
    logs = {SHARD: {"n1": log_of("p1|t/p/c/x#0|1", "p1|t/p/c/x#0|0", "p1|t/p/c/x#0|0")}}
    out, _ = check_data([], logs, {SHARD: ("n1", 3)})
    assert out["no_duplicates"] and out["shard_order"]
