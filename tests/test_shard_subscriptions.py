"""The shard leader's side of durable subscriptions (actors/shard_subscriptions.py):
a consumer that comes back over another connection takes over its own place."""
from __future__ import annotations

from actors.shard_subscriptions import ShardSubscriptions
from protocol.consume import Delivery, Subscribe, SubscribeReply

PAYLOADS = [b"r%d" % i for i in range(5)]


def _read(offset: int, n: int) -> list[bytes]:
    return PAYLOADS[offset:offset + n]


def _subscribe(subs: ShardSubscriptions, consumer: str, now_s: float) -> list:
    subs.subscribe(Subscribe("t#0", "s", "exclusive", consumer), consumer, now_s, _read)
    return subs.take()


def _replies(out: list) -> list[SubscribeReply]:
    return [m for _to, m in out if isinstance(m, SubscribeReply)]


def _delivered(out: list, to: str) -> list[tuple[int, bool]]:
    return [(o, bool(r)) for addr, m in out if isinstance(m, Delivery) and addr == to for o, _p, r in m.records]


def test_a_consumer_back_over_another_connection_takes_its_exclusive_place_at_once() -> None:
    subs = ShardSubscriptions("t#0", consumer_timeout_s=2.0)
    first = _subscribe(subs, "c1@n1.5", 0.0)
    assert [r.status for r in _replies(first)] == ["ok"]
    assert _delivered(first, "c1@n1.5") == [(i, False) for i in range(5)]  # in flight, unacknowledged

    # another consumer is refused while c1 is attached ...
    other = _subscribe(subs, "c2@n2.8", 0.5)
    assert [r.status for r in _replies(other)] == ["fail"] and "exclusive" in _replies(other)[0].error

    # ... but c1 over a new connection (its node restarted) is not, long before the timeout
    again = _subscribe(subs, "c1@n2.7", 0.5)
    assert [r.status for r in _replies(again)] == ["ok"]
    assert _delivered(again, "c1@n2.7") == [(i, True) for i in range(5)]  # everything unacknowledged, again
    assert sorted(c for _s, c in subs.consumers) == ["c1@n2.7"]


def test_consumers_without_a_connection_suffix_are_left_alone() -> None:
    subs = ShardSubscriptions("t#0")
    assert [r.status for r in _replies(_subscribe(subs, "c1", 0.0))] == ["ok"]
    assert [r.status for r in _replies(_subscribe(subs, "c1b", 0.1))] == ["fail"]
    assert sorted(c for _s, c in subs.consumers) == ["c1"]
