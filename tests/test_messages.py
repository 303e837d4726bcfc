"""Actor messages that carry data print briefly: Thespian formats every message it sends."""
from __future__ import annotations

import pickle

from protocol.consume import Delivery
from protocol.node import Routed
from protocol.shard import Produce, Push, ReadShardReply


def test_data_messages_have_a_short_str_and_a_full_repr() -> None:
    batch = b"x" * 200_000
    msgs = [Produce("t#0", "c", 1, batch, 2000), Routed(Produce("t#0", "c", 1, batch, 2000), "n2"),
            Push("t#0", "n1", "n2", 1, 0, 0, (batch,), 0), ReadShardReply("t#0", "c", 1, "ok", (batch,)),
            Delivery("t#0", "s", "c", tuple((i, b"p" * 100, False) for i in range(1000)))]
    for m in msgs:
        assert len(str(m)) < 40, str(m)
        assert len(repr(m)) > 100_000
        assert pickle.loads(pickle.dumps(m)) == m
