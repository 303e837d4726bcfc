"""The Dispatcher's durable subscriptions for binary-protocol clients (a mixin).

A ``SubscribeRequest`` attaches the connection's consumer to the
subscription on every shard of the topic: one ``_Sub`` per shard index,
each a ``Subscribe`` to the shard's leader (through the local NodeActor,
redirected by ``NOT_LEADER`` hints), kept alive every ``KEEPALIVE_S``
while the connection lives.  The leaders' ``Delivery`` messages become
``Delivery`` frames; ``AckRequest`` becomes ``AckRecords`` to the replica
that delivered.  Topics with shard groups walk their groups
(actors/dispatcher_gsubs.py).  At most ``SUBSCRIPTIONS_PER_CONN_MAX``
shard subscriptions per connection.
"""
from __future__ import annotations

from typing import Any

from actors.dispatcher_common import RETRY_S, Refusal, _classify
from protocol.consume import AckRecords, Delivery, Subscribe, SubscribeReply, Unsubscribe
from protocol.frames import AckRequest, AckResponse, DeliveredRecord, ErrorCode, SubscribeRequest, SubscribeResponse
from protocol.frames import Delivery as DeliveryFrame
from protocol.node import Routed

KEEPALIVE_S = 0.5
SUBSCRIPTIONS_PER_CONN_MAX = 256


class _Sub:
    """One client subscription on one shard."""

    __slots__ = ("conn", "corr", "topic", "index", "shard", "subscription", "mode", "consumer", "replica",
                 "answered", "hint", "last_sent")

    def __init__(self, conn: int, corr: int, topic: str, index: int, subscription: str, mode: str,
                 consumer: str) -> None:
        self.conn, self.corr, self.topic, self.index = conn, corr, topic, index
        self.shard = f"{topic}#{index}"
        self.subscription, self.mode, self.consumer = subscription, mode, consumer
        self.replica: Any = None
        self.answered = False
        self.hint: str | None = None
        self.last_sent = -1e9


class DispatcherSubs:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    def _subscribe(self, conn: int, corr: int, m: SubscribeRequest, first: bool = True) -> None:
        spec = self.topics.get(m.topic)
        if spec is None:
            if first:
                self._after_poll(conn, corr, lambda: self._subscribe(conn, corr, m, False))
                return
            raise Refusal(ErrorCode.UNKNOWN_TOPIC, 404, "not_found", f"topic {m.topic!r} does not exist")
        if not m.subscription or not m.consumer_id:
            raise Refusal(ErrorCode.INVALID_REQUEST, 400, "bad_request", "subscription and consumer_id are required")
        mine = self.conn_subs.setdefault(conn, [])
        if len(mine) >= SUBSCRIPTIONS_PER_CONN_MAX:
            raise Refusal(ErrorCode.OVERLOADED, 503, "overloaded", "too many subscriptions on this connection")
        consumer = f"{m.consumer_id}@{self.boot.node_id}.{conn}"
        if self._gsub_subscribe(conn, corr, m, consumer, spec, first):  # a topic with shard groups
            return
        n = int(spec.get("shards", 1))
        fresh = [i for i in range(n) if (f"{m.topic}#{i}", m.subscription, consumer) not in self.subs]
        if not fresh:
            # a keep-alive of a subscription this connection holds: the
            # Dispatcher keeps the leaders' side alive itself
            self._frame(conn, corr, SubscribeResponse(active=True))
            return
        wait = {"left": len(fresh), "deadline": self.now() + self.boot.listen.request_timeout_s}
        self.subscribe_waits[(conn, corr)] = wait
        for i in fresh:
            s = _Sub(conn, corr, m.topic, i, m.subscription, str(m.mode), consumer)
            self.subs[(s.shard, s.subscription, s.consumer)] = s
            mine.append(s)
            self._send_subscribe(s, self.now())

    def _send_subscribe(self, s: _Sub, now: float) -> None:
        s.last_sent = now
        msg = Subscribe(s.shard, s.subscription, s.mode, s.consumer)
        self.send(self.boot.node, msg if s.hint is None else Routed(msg, s.hint))

    def on_SubscribeReply(self, msg: SubscribeReply, sender: Any) -> None:
        s = self.subs.get((msg.shard, msg.subscription, msg.consumer))
        if s is None:
            return
        if msg.status == "ok":
            s.replica = sender
            s.hint = None
            if not s.answered:
                s.answered = True
                self._subscribe_progress(s, None)
            if msg.drained:
                self._gsub_drained(s)
            return
        code, _st, _slug = _classify(msg.error)
        if code is ErrorCode.NOT_LEADER:
            s.hint = msg.leader if msg.leader and msg.leader != s.hint else None
            if s.hint:
                self._send_subscribe(s, self.now())
            return
        self._subscribe_progress(s, (code, msg.error))

    def _subscribe_progress(self, s: _Sub, failure: tuple | None) -> None:
        wait = self.subscribe_waits.get((s.conn, s.corr))
        if wait is None:
            return
        if failure is not None:
            del self.subscribe_waits[(s.conn, s.corr)]
            self._drop_subscription(s.conn, s.corr)
            self._error(s.conn, s.corr, failure[0], failure[1])
            return
        wait["left"] -= 1
        if wait["left"] <= 0:
            del self.subscribe_waits[(s.conn, s.corr)]
            self._frame(s.conn, s.corr, SubscribeResponse(active=True))

    def _drop_subscription(self, conn: int, corr: int) -> None:
        self._gsub_forget(conn, corr)
        keep = []
        for s in self.conn_subs.get(conn, []):
            if s.corr == corr:
                self.subs.pop((s.shard, s.subscription, s.consumer), None)
                if s.replica is not None:
                    self.send(s.replica, Unsubscribe(s.shard, s.subscription, s.consumer))
            else:
                keep.append(s)
        self.conn_subs[conn] = keep

    def _keepalive(self, now: float) -> None:
        for s in list(self.subs.values()):
            if now - s.last_sent >= (KEEPALIVE_S if s.answered else RETRY_S * 3):
                if s.replica is not None and s.hint is None:
                    self.send(s.replica, Subscribe(s.shard, s.subscription, s.mode, s.consumer))
                    s.last_sent = now
                else:
                    self._send_subscribe(s, now)
        for key, wait in list(self.subscribe_waits.items()):
            if now >= wait["deadline"]:
                del self.subscribe_waits[key]
                self._drop_subscription(*key)
                self._error(key[0], key[1], ErrorCode.TIMEOUT, "no leader answered the subscription in time")

    def on_Delivery(self, msg: Delivery, sender: Any) -> None:
        s = self.subs.get((msg.shard, msg.subscription, msg.consumer))
        if s is None:
            # nobody here any more: hand the records back at once
            self.send(sender, AckRecords(msg.shard, msg.subscription, msg.consumer,
                                         tuple(o for o, _p, _r in msg.records), negative=True))
            return
        s.replica = sender
        self._gsub_delivered(s, [o for o, _p, _r in msg.records])
        recs = tuple(DeliveredRecord(offset=o, redelivery=bool(r), payload=bytes(p)) for o, p, r in msg.records)
        self._frame(s.conn, s.corr, DeliveryFrame(topic=s.topic, shard=s.index, subscription=s.subscription,
                                                  records=recs, shard_id=int(msg.shard.rpartition("#")[2])),
                    answers=False)

    def _ack(self, conn: int, corr: int, m: AckRequest) -> None:
        shard = f"{m.topic}#{m.shard}"
        consumer = f"{m.consumer_id}@{self.boot.node_id}.{conn}"
        offsets = tuple(m.offsets)
        walked = self._gsub_ack_target(conn, m, consumer)  # a topic with shard groups
        s = self.subs.get((shard, m.subscription, consumer)) if walked is None else walked[0]
        if walked is not None:
            shard, offsets = s.shard, walked[1]
        if s is None:
            raise Refusal(ErrorCode.INVALID_REQUEST, 400, "bad_request",
                          f"consumer {m.consumer_id!r} is not subscribed to {m.subscription!r} on {shard} "
                          "on this connection")
        if s.replica is not None and offsets:
            self.send(s.replica, AckRecords(shard, m.subscription, consumer, offsets, negative=m.nack))
        self._frame(conn, corr, AckResponse())

    def _closed(self, conn: int) -> None:
        self._gsub_forget(conn)
        for s in self.conn_subs.pop(conn, []):
            self.subs.pop((s.shard, s.subscription, s.consumer), None)
            if s.replica is not None:
                self.send(s.replica, Unsubscribe(s.shard, s.subscription, s.consumer))
        for key in [k for k in self.subscribe_waits if k[0] == conn]:
            del self.subscribe_waits[key]
