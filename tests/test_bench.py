"""The benchmark's fixed-rate pacing (runtime.bench.Pacer), on a fake clock."""
from __future__ import annotations

import pytest

from runtime.bench import Pacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_pacer_holds_the_rate_and_sleeps_in_chunks_not_per_message():
    t = FakeTime()
    p = Pacer(10_000, sleep_min_s=0.002, clock=t.clock, sleep=t.sleep)
    for i in range(50_000):
        p.wait(i)
        due = p.start + i / 10_000
        assert t.now >= due - 0.002  # never ahead of schedule by the chunk or more
        t.now += 0.00001  # the send itself: 10 us, far faster than the rate
    elapsed = t.now - p.start
    assert 4.99 <= elapsed <= 5.01  # 50,000 messages at 10,000/s
    assert len(t.sleeps) <= 50_000 * 0.0001 / 0.002 + 1  # about one sleep per 2 ms, not one per message
    assert all(s >= 0.002 for s in t.sleeps)


def test_pacer_never_sleeps_when_behind():
    t = FakeTime()
    p = Pacer(1_000, clock=t.clock, sleep=t.sleep)
    for i in range(100):
        p.wait(i)
        t.now += 0.005  # each send takes 5 ms: slower than the rate
    assert t.sleeps == []


def test_pacer_refuses_a_rate_of_zero():
    with pytest.raises(ValueError):
        Pacer(0)


# -- the MQTT load generator's client pieces (runtime/mqtt_loadgen.py) --------

def test_loadgen_publish_chunks_decode_as_the_packets_they_stand_for():
    from protocol.mqtt import Connack, MqttDecoder, Publish, encode
    from runtime.mqtt_loadgen import TS, payload, publish_chunk, publish_prefix

    for qos, size in ((0, 8), (0, 128), (1, 128), (1, 4000)):
        body = payload(1234.5, size)
        assert len(body) == size and TS.unpack_from(body)[0] == 1234.5
        prefix = publish_prefix("bench/1/p5", qos, size)
        pids = [1, 2, 65535] if qos else None
        data = publish_chunk(prefix, body, pids, 3)
        dec = MqttDecoder(server=False)
        assert dec.feed(encode(Connack(False, 0))) == [Connack(False, 0)]
        got = dec.feed(data)
        assert got == [Publish("bench/1/p5", body, qos, False, False, pid) for pid in (pids or [None] * 3)]


def test_loadgen_topics_give_every_subscriber_its_own_publishers():
    from runtime.mqtt_loadgen import LoadConfig
    from actors.mqtt_trie import TopicTrie

    cfg = LoadConfig([("h", 1)], [("h", 2)], publishers=6, subscribers=4)
    trie = TopicTrie()
    for j, flt in enumerate(cfg.filters()):
        trie.add(flt, j)
    for i in range(cfg.publishers):
        assert [v for _f, v in trie.match(cfg.topic(i))] == [i % 4]  # exactly one subscriber per message


class _FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_loadgen_subscriber_acks_qos1_in_one_write_and_publisher_keeps_its_window():
    import asyncio

    from protocol.mqtt import Connack, Connect, MqttDecoder, Puback, encode
    from runtime.mqtt_loadgen import LoadConfig, LoadGen, Publisher, Subscriber, payload, publish_chunk, \
        publish_prefix

    async def main() -> None:
        cfg = LoadConfig([("h", 1)], [("h", 2)], qos=1, publishers=1, subscribers=1, window=10, size=16)
        gen = LoadGen(cfg)
        sub = Subscriber(gen, "s")
        sub.transport = _FakeTransport()
        gen.measuring = True
        sub.data_received(encode(Connack(False, 0)))
        assert sub.connack.done()
        sub.data_received(publish_chunk(publish_prefix(cfg.topic(0), 1, 16), payload(0.0, 16), [7, 8, 9], 3))
        assert gen.received == 3 and len(gen.latencies) == 3
        assert len(sub.transport.written) == 1  # the three PUBACKs in one write
        dec = MqttDecoder()
        dec.feed(encode(Connect("x")))
        assert dec.feed(sub.transport.written[0]) == [Puback(7), Puback(8), Puback(9)]

        pub = Publisher(gen, "p", 0)
        pub.transport = _FakeTransport()
        gen.sent = 3
        assert pub.room() == 10  # 3 sent, 3 received, none unacknowledged
        assert pub._pids(4) == [1, 2, 3, 4] and pub.room() == 6
        pub.data_received(encode(Connack(False, 0)))
        pub.data_received(encode(Puback(2)) + encode(Puback(2)))  # a duplicate ack frees one id only
        assert pub.unacked == {1, 3, 4} and pub.room() == 7

    asyncio.run(main())
