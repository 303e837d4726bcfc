"""The Dispatcher's per-shard send window (``ListenConfig.shard_send_bytes_max``):
at most a window's bytes of a shard's writes are sent to its leader at a
time, the rest wait in the Dispatcher in order; an answer or an expiry
makes room; nothing waits forever and nothing overtakes."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from actors.dispatcher import Dispatcher
from protocol.node import ListenConfig
from protocol.records import Record, encode_batch
from protocol.shard import Produce, ProduceReply

SHARD = "t/p/c/w#0"
MIB = 1 << 20


class Harness(Dispatcher):
    def __init__(self, window: int) -> None:
        super().__init__()
        self.boot = SimpleNamespace(node="node-actor", node_id="n1",
                                    listen=ListenConfig(shard_send_bytes_max=window))
        self.clock = 0.0
        self.sent: list[Any] = []
        self.client = "dispatcher-n1"

    def now(self) -> float:
        return self.clock

    def send(self, to: Any, msg: Any) -> None:
        self.sent.append(msg)


def batch(nbytes: int) -> bytes:
    return encode_batch([Record(None, os.urandom(nbytes))])


def produce(d: Harness, nbytes: int, results: list, timeout_s: float = 10.0) -> None:
    n = len(results)
    results.append(None)

    def ok(reply: Any) -> None:
        results[n] = "ok"

    def fail(code: Any, text: str) -> None:
        results[n] = f"fail: {text}"

    d._produce(SHARD, batch(nbytes), "quorum", 0, 0, timeout_s, ok, fail)


def produces(d: Harness) -> list[Produce]:
    return [m for m in d.sent if isinstance(m, Produce)]


def answer(d: Harness, p: Produce) -> None:
    d.on_ProduceReply(ProduceReply(p.shard, p.client, p.req_id, "ok", 0, "quorum", "n1", 1), "leader")


def test_writes_beyond_the_window_wait_in_order_and_go_out_as_answers_make_room() -> None:
    d = Harness(window=4 * MIB)
    results: list = []
    for size in (1_500_000, 1_500_000, 1_500_000, 200, 1_500_000):
        produce(d, size, results)
    sent = produces(d)
    # 1.5 + 1.5 MB fit; the third would pass 4 MiB, and the small fourth
    # must not overtake it (an idempotent producer's sequence would break)
    assert len(sent) == 2
    answer(d, sent[0])
    sent = produces(d)
    assert len(sent) == 4 and results[0] == "ok"  # the third and the small fourth went out
    assert [p.req_id for p in sent] == sorted(p.req_id for p in sent)
    for p in sent[1:]:
        answer(d, p)
    sent = produces(d)
    assert len(sent) == 5
    answer(d, sent[4])
    assert results == ["ok"] * 5
    assert not d.shard_sent and not d.shard_wait and not d.shard_bytes


def test_a_write_larger_than_the_window_goes_alone_and_an_expired_waiting_write_is_never_sent() -> None:
    d = Harness(window=1 * MIB)
    results: list = []
    produce(d, 2 * MIB, results)  # nothing in flight: sent although larger than the window
    produce(d, 100, results, timeout_s=1.0)
    produce(d, 100, results, timeout_s=30.0)
    assert len(produces(d)) == 1
    d.clock = 2.0
    d._retry_and_expire(d.clock)  # the second expires while it waits
    assert results[1].startswith("fail: no answer")
    answer(d, produces(d)[0])
    sent = produces(d)
    assert len(sent) == 2 and len(sent[1].batch) < 1000  # the third, never the expired second
    answer(d, sent[1])
    assert results == ["ok", results[1], "ok"]
    assert not d.shard_sent and not d.shard_wait and not d.shard_bytes
