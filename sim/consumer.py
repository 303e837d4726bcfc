"""Simulated consumers of durable subscriptions.

A consumer attaches to one subscription on every shard of a topic by
sending ``Subscribe`` to the shard's leader (re-sent every ``heartbeat_s``
as a heartbeat; a refusal naming another leader redirects it; silence
makes it try the next replica).  It records every delivery and
acknowledges it -- or, with probability ``nack_ratio``, negatively
acknowledges it to have it redelivered.

A consumer of a topic with shard groups (``topic`` set) reads the group
list like a client refreshing its metadata (sim/groupview.py, every
``view_every_s``) and walks from group to group with the same core as the
Dispatcher (actors/group_walk.py): one shard per shard index at a time,
the next group's once the leader reports the shard drained, the oldest
remaining group's (reported) when its shard was dropped.

History: ``consume.deliver`` {consumer, subscription, mode, shard, offset,
payload, redelivery, epoch}; ``consume.reset`` {consumer, subscription,
index, dropped, to} (a reported skip over a dropped shard).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import ChorusActor
from actors.group_walk import Attach, Detach, GroupWalk, Refresh, Reset
from protocol.consume import AckRecords, Delivery, Subscribe, SubscribeReply, Unsubscribe
from sim.groupview import GroupView


@dataclass(frozen=True)
class ConsumerBoot:
    consumer: str
    subscription: str
    mode: str
    shards: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    heartbeat_s: float = 0.3
    nack_ratio: float = 0.0
    stop_after_s: float = 1e9  # then it goes quiet (no heartbeats, no acks)
    topic: str = ""  # a topic with shard groups: walk its groups (``shards`` is then empty)
    indices: int = 0  # the topic's shard count
    agency: tuple[Any, ...] = ()  # agency peer addresses, to read the group list
    nodes: tuple[tuple[str, Any], ...] = ()  # (node, NodeActor address): any node routes any shard
    view_every_s: float = 0.5
    walk_bug: str = ""  # a deliberately broken walk (actors/group_walk.py WALK_BUGS)
    pause_s: tuple[float, ...] = ()  # (from, to): quiet in between, like a stalled process


class ShardConsumer(GroupView, ChorusActor):
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
        self.walk = GroupWalk(msg.indices, msg.walk_bug) if msg.topic else None
        if self.walk is not None:
            self._view()
        self._heartbeat()

    # ------------------------------------------------------------ groups
    def _view(self) -> None:
        if self.now() - self.started < self.boot.stop_after_s:
            self.set_timer(self.boot.view_every_s, ("view", 0, None))
        if not self._stopped():
            self._gv_refresh(self._viewed)

    def _viewed(self) -> None:
        if not self._stopped():
            self._walked(self.walk.view(self.view))

    def _walked(self, effects: list[Any]) -> None:
        b = self.boot
        for e in effects:
            if isinstance(e, Reset):
                self.record("consume.reset", consumer=b.consumer, subscription=b.subscription, index=e.index,
                            dropped=f"{b.topic}#{e.dropped}", to=f"{b.topic}#{e.to}")
            elif isinstance(e, Detach):
                shard = f"{b.topic}#{e.shard}"
                leader = self.leader.get(shard)
                if leader is not None:
                    self.send(self.routes[shard][leader], Unsubscribe(shard, b.subscription, b.consumer))
                for d in (self.routes, self.heard, self.tries, self.leader):
                    d.pop(shard, None)
            elif isinstance(e, Attach):
                shard = f"{b.topic}#{e.shard}"
                self.routes[shard] = dict(b.nodes)
                self.heard[shard] = self.now()
                self.tries[shard] = 0
                self._subscribe(shard)
            elif isinstance(e, Refresh):
                self._gv_refresh(self._viewed)

    def _stopped(self) -> bool:
        t = self.now() - self.started
        p = self.boot.pause_s
        return t >= self.boot.stop_after_s or (bool(p) and p[0] <= t < p[1])

    def _heartbeat(self) -> None:
        now = self.now()
        if self._stopped():
            if now - self.started < self.boot.stop_after_s:
                self.set_timer(self.boot.heartbeat_s, "heartbeat")  # paused: come back later
            return
        for shard in sorted(self.routes):
            if now - self.heard[shard] > 3 * self.boot.heartbeat_s:
                self.leader.pop(shard, None)  # silent: try another replica
                self.tries[shard] += 1
                self.heard[shard] = now
            self._subscribe(shard)
        self.set_timer(self.boot.heartbeat_s, "heartbeat")

    def _subscribe(self, shard: str) -> None:
        nodes = sorted(self.routes[shard])
        target = self.leader.get(shard) or nodes[self.tries[shard] % len(nodes)]
        self.send(self.routes[shard][target], Subscribe(shard, self.boot.subscription, self.boot.mode,
                                                        self.boot.consumer))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if self.boot is None:
            return
        if msg.payload == "heartbeat":
            self._heartbeat()
        elif isinstance(msg.payload, tuple) and msg.payload[0] == "gv_timeout":
            self._gv_timeout(msg.payload[1])
        elif isinstance(msg.payload, tuple) and msg.payload[0] == "view":
            self._view()

    def on_SubscribeReply(self, msg: SubscribeReply, sender: Any) -> None:
        if msg.shard not in self.routes:
            return
        if msg.status == "ok":
            self.heard[msg.shard] = self.now()
            if msg.drained and self.walk is not None and not self._stopped():
                self._walked(self.walk.drained(int(msg.shard.rpartition("#")[2])))
            return
        if msg.leader and msg.leader in self.routes.get(msg.shard, {}):
            self.leader[msg.shard] = msg.leader
        else:
            self.leader.pop(msg.shard, None)
            self.tries[msg.shard] = self.tries.get(msg.shard, 0) + 1

    def on_Delivery(self, msg: Delivery, sender: Any) -> None:
        b = self.boot
        if self._stopped() or msg.shard not in self.routes:
            return  # (a shard this consumer left: nothing of it is left to deliver, or it is gone)
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
