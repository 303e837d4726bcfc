"""Bridges between MQTT and the replicated log (sans-IO): one cluster, one store.

A bridge is an agency entry ``/chorus/mqtt/bridges/<name>`` (created
through ``PUT /api/v1/mqtt/bridges/<name>``):

* ``{"direction": "in", "filter": "sensors/#", "topic": "acme/iot/sensors/readings", "level": "quorum"}``
  -- every MQTT publish whose topic matches ``filter`` is also appended to
  the Chorus topic, with the MQTT topic as the record key (so one MQTT
  topic stays in one shard, in order) and the payload as the value.  The
  publisher's PUBACK/PUBREC waits until the append is acknowledged at
  ``level``: what an MQTT client was told is stored is stored, replicated
  and replayable with the Python client.  An append that fails is retried;
  one that still fails after ``LOG_ATTEMPTS_MAX`` leaves the publisher
  without its acknowledgement (it sends again when it reconnects).
* ``{"direction": "out", "topic": "acme/shop/web/orders", "prefix": "chorus/orders", "shards": 4}``
  -- the Chorus topic's records are published over MQTT to
  ``<prefix>/<shard>`` (QoS 1).  Every node attaches to the durable
  subscription ``mqtt-bridge-<name>`` of each shard in failover mode, so
  one node at a time publishes a shard's records, in order, and another
  takes over when it dies; a record is acknowledged to the log once its
  publish settled (at least once).

The MqttFront carries out what this leaves in ``appends`` (to its node's
Dispatcher) and ``subscribes``/``acks`` (to the shards, through the
NodeActor) and hands back the answers.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from actors.mqtt_trie import TopicTrie
from protocol.consume import AckRecords, Delivery, Subscribe, SubscribeReply
from protocol.mqtt_cluster import LogAppend, LogAppendReply
from protocol.node import Routed

BRIDGES_MAX = 100
LOG_ATTEMPTS_MAX = 5
KEEPALIVE_S = 0.5
APPEND_RECORDS_MAX = 1000  # records per append message


class LogBridges:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.specs: dict[str, dict] = {}
        self.trie = TopicTrie()  # filter -> bridge name ("in" bridges)
        self.pending: dict[str, list[tuple[str, bytes, Any]]] = {}  # name -> (mqtt topic, payload, settle)
        self.appends: list[tuple[str, dict, list]] = []  # (name, spec, items) ready to send
        self.outs: dict[tuple[str, int], dict] = {}  # (name, shard index) -> subscription state
        self.stats = {"appended": 0, "append_failed": 0, "published_from_log": 0}

    # ------------------------------------------------------------ config
    def set(self, name: str, spec: Any) -> None:
        """A bridge's spec (a JSON text, one agency leaf), or None: deleted."""
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except ValueError:
                spec = None
        old = self.specs.pop(name, None)
        if old is not None and old.get("direction") == "in":
            self.trie.remove(old["filter"], name)
        for key in [k for k in self.outs if k[0] == name]:
            del self.outs[key]
        if not isinstance(spec, dict):
            return
        try:
            if spec.get("direction") == "in":
                self.trie.add(str(spec["filter"]), name)
            elif spec.get("direction") == "out":
                for i in range(int(spec.get("shards", 1))):
                    self.outs[(name, i)] = {"shard": f"{spec['topic']}#{i}", "sent": -1.0, "replica": None,
                                            "hint": None}
            else:
                return
        except (KeyError, ValueError, TypeError):
            return  # not a bridge we understand: ignored, as the admin API never writes one
        self.specs[name] = spec

    def load(self, tree: Any) -> None:
        for name in list(self.specs):
            self.set(name, None)
        for name, spec in (tree or {}).items():
            self.set(name, spec)

    # ------------------------------------------------------- MQTT -> log
    def capture(self, topic: str, payload: bytes, settle: Any) -> None:
        """A publish: queue it for every "in" bridge it matches; the
        publisher's acknowledgement waits for each append."""
        if not self.specs:
            return
        for _flt, name in self.trie.match(topic):
            if settle is not None:
                settle.add()
                settle.deadline = float("inf")  # the append decides, not ack_wait_max_s
            self.pending.setdefault(name, []).append((topic, payload, settle))

    def take_appends(self) -> list[tuple[str, dict, list]]:
        """Batches to append now: (bridge name, spec, [(topic, payload, settle)])."""
        out = []
        for name, items in self.pending.items():
            spec = self.specs.get(name)
            for i in range(0, len(items), APPEND_RECORDS_MAX):
                chunk = items[i:i + APPEND_RECORDS_MAX]
                if spec is None:  # the bridge was deleted meanwhile: nothing to wait for
                    for _t, _p, s in chunk:
                        if s is not None:
                            s.release()
                    continue
                out.append((name, spec, chunk))
        self.pending = {}
        return out

    def appended(self, items: list, ok: bool, attempt: int) -> bool:
        """An append's answer; True when it should be sent again."""
        if ok:
            self.stats["appended"] += len(items)
            for _t, _p, s in items:
                if s is not None:
                    s.release()
            return False
        if attempt < LOG_ATTEMPTS_MAX:
            return True
        self.stats["append_failed"] += len(items)
        for _t, _p, s in items:
            if s is not None:
                s.done = None  # never acknowledged: the client sends it again after a reconnect
                s.release()
        return False

    # ------------------------------------------------------- log -> MQTT
    def consumer(self) -> str:
        return f"mqtt-{self.node_id}"

    @staticmethod
    def subscription(name: str) -> str:
        return f"mqtt-bridge-{name}"

    def due(self, now: float) -> list[tuple[str, dict]]:
        """(bridge name, state) of every shard subscription to (re)attach now."""
        out = []
        for (name, _i), st in self.outs.items():
            if now - st["sent"] >= KEEPALIVE_S:
                st["sent"] = now
                out.append((name, st))
        return out

    def out_for(self, shard: str, subscription: str) -> tuple[str, int, dict] | None:
        for (name, i), st in self.outs.items():
            if st["shard"] == shard and self.subscription(name) == subscription:
                return name, i, st
        return None

    def deliver(self, shard: str, subscription: str, records: tuple, publish: Callable[..., None],
                ack: Callable[[tuple[int, ...]], None]) -> bool:
        """Records of a shard from the log: publish each over MQTT and
        acknowledge them all to the log once every publish settled.  False
        when no bridge of ours reads that shard (hand them back)."""
        found = self.out_for(shard, subscription)
        if found is None:
            return False
        name, index, _st = found
        topic = f"{self.specs[name]['prefix']}/{index}"
        offsets = tuple(o for o, _p, _r in records)
        left = [len(records)]

        def one() -> None:
            left[0] -= 1
            if left[0] == 0:
                ack(offsets)

        for _o, payload, _r in records:
            self.stats["published_from_log"] += 1
            publish(topic, bytes(payload), one)
        return True

    def status(self) -> dict:
        return {"bridges": dict(sorted(self.specs.items())), **self.stats}


class BridgeShell:
    """The MqttFront's side of the bridges (a mixin): appends through the
    node's Dispatcher, shard subscriptions through its NodeActor."""

    def _bridges_flush(self) -> None:
        for _name, spec, items in self.core.bridges.take_appends():
            self._append(spec, items, 1)
        if self.bridge_retry:
            again, self.bridge_retry = self.bridge_retry, []
            for spec, items, attempt in again:
                self._append(spec, items, attempt)

    def _append(self, spec: dict, items: list, attempt: int) -> None:
        if self.boot.dispatcher is None:
            self.core.bridges.appended(items, False, LOG_ATTEMPTS_MAX)
            return
        self.bridge_req += 1
        self.bridge_waiting[self.bridge_req] = (spec, items, attempt)
        self.send(self.boot.dispatcher, LogAppend(self.bridge_req, spec["topic"], spec.get("level", "quorum"),
                                                  tuple((t.encode(), p) for t, p, _s in items)))

    def on_LogAppendReply(self, msg: LogAppendReply, sender: Any) -> None:
        entry = self.bridge_waiting.pop(msg.req, None)
        if entry is None or self.core is None:
            return
        spec, items, attempt = entry
        if self.core.bridges.appended(items, msg.ok, attempt):
            self.bridge_retry.append((spec, items, attempt + 1))  # sent again at the next tick

    def _bridges_tick(self, now: float) -> None:
        if self.boot.node is None:
            return
        bridges = self.core.bridges
        for name, st in bridges.due(now):
            m = Subscribe(st["shard"], bridges.subscription(name), "failover", bridges.consumer())
            if st["replica"] is not None and st["hint"] is None:
                self.send(st["replica"], m)
            else:
                self.send(self.boot.node, m if st["hint"] is None else Routed(m, st["hint"]))
        if self.bridge_retry:
            self._bridges_flush()

    def on_SubscribeReply(self, msg: SubscribeReply, sender: Any) -> None:
        found = self.core.bridges.out_for(msg.shard, msg.subscription) if self.core is not None else None
        if found is None:
            return
        st = found[2]
        if msg.status == "ok":
            st["replica"], st["hint"] = sender, None
        else:
            st["replica"] = None
            st["hint"] = msg.leader if msg.leader and msg.leader != st["hint"] else None

    def on_Delivery(self, msg: Delivery, sender: Any) -> None:
        if self.core is None:
            return
        now = self.now()

        def publish(topic: str, payload: bytes, done: Callable[[], None]) -> None:
            self.core.publish(topic, payload, 1, False, now, done)

        def ack(offsets: tuple[int, ...]) -> None:
            self.send(sender, AckRecords(msg.shard, msg.subscription, msg.consumer, offsets))

        if not self.core.bridges.deliver(msg.shard, msg.subscription, msg.records, publish, ack):
            self.send(sender, AckRecords(msg.shard, msg.subscription, msg.consumer,
                                         tuple(o for o, _p, _r in msg.records), negative=True))
