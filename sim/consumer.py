"""Simulated consumers of durable subscriptions.

A consumer attaches to one subscription on every shard of a topic by
sending ``Subscribe`` to the shard's leader (re-sent every ``heartbeat_s``
as a heartbeat; a refusal naming another leader redirects it; silence
makes it try the next replica).  It records every delivery and
acknowledges it -- or, with probability ``nack_ratio``, negatively
acknowledges it to have it redelivered.

History: ``consume.deliver`` {consumer, subscription, mode, shard, offset,
payload, redelivery, epoch}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import ChorusActor
from protocol.consume import AckRecords, Delivery, Subscribe, SubscribeReply


@dataclass(frozen=True)
class ConsumerBoot:
    consumer: str
    subscription: str
    mode: str
    shards: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    heartbeat_s: float = 0.3
    nack_ratio: float = 0.0
    stop_after_s: float = 1e9  # then it goes quiet (no heartbeats, no acks)


class ShardConsumer(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.boot: ConsumerBoot | None = None
        self.leader: dict[str, str] = {}
        self.heard: dict[str, float] = {}
        self.tries: dict[str, int] = {}

    def on_ConsumerBoot(self, msg: ConsumerBoot, sender: Any) -> None:
        if self.boot is not None:
            return
        self.boot = msg
        self.routes = {s: dict(r) for s, r in msg.shards}
        now = self.now()
        self.started = now
        for s in self.routes:
            self.heard[s] = now
            self.tries[s] = 0
        self._heartbeat()

    def _stopped(self) -> bool:
        return self.now() - self.started >= self.boot.stop_after_s

    def _heartbeat(self) -> None:
        now = self.now()
        if self._stopped():
            return
        for shard in sorted(self.routes):
            nodes = sorted(self.routes[shard])
            if now - self.heard[shard] > 3 * self.boot.heartbeat_s:
                self.leader.pop(shard, None)  # silent: try another replica
                self.tries[shard] += 1
                self.heard[shard] = now
            target = self.leader.get(shard) or nodes[self.tries[shard] % len(nodes)]
            self.send(self.routes[shard][target], Subscribe(shard, self.boot.subscription, self.boot.mode,
                                                            self.boot.consumer))
        self.set_timer(self.boot.heartbeat_s, "heartbeat")

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload == "heartbeat" and self.boot is not None:
            self._heartbeat()

    def on_SubscribeReply(self, msg: SubscribeReply, sender: Any) -> None:
        if msg.status == "ok":
            self.heard[msg.shard] = self.now()
            return
        if msg.leader and msg.leader in self.routes.get(msg.shard, {}):
            self.leader[msg.shard] = msg.leader
        else:
            self.leader.pop(msg.shard, None)
            self.tries[msg.shard] = self.tries.get(msg.shard, 0) + 1

    def on_Delivery(self, msg: Delivery, sender: Any) -> None:
        b = self.boot
        if self._stopped():
            return
        self.heard[msg.shard] = self.now()
        acks, nacks = [], []
        for offset, payload, redelivery in msg.records:
            self.record("consume.deliver", consumer=b.consumer, subscription=b.subscription, mode=b.mode,
                        shard=msg.shard, offset=offset, payload=payload, redelivery=redelivery, epoch=msg.epoch)
            if b.nack_ratio and self.rng.random() < b.nack_ratio:
                nacks.append(offset)
            else:
                acks.append(offset)
        if acks:
            self.send(sender, AckRecords(msg.shard, b.subscription, b.consumer, tuple(acks)))
        if nacks:
            self.send(sender, AckRecords(msg.shard, b.subscription, b.consumer, tuple(nacks), negative=True))
