"""Simulated MQTT clients, and the MqttFront as the simulator hosts it.

:class:`MqttClient` is an ordinary Chorus actor on its own client node that
speaks MQTT 3.1.1 to a node's ``MqttFront`` through ``MqttIn``/``MqttOut``
(the simulator's socket).  One connection at a time, named
``"<client id>#<n>"``; a connection the client gives up on is closed with
``MqttIn(conn, closed=True)`` and never read again.

* It connects with a fixed client id and ``clean_session=False`` (the
  session, its subscriptions and its queued messages outlive the
  connection), to its home node first.
* After every CONNACK it subscribes to its filters again (as most real
  clients do in their connect callback: a session the server lost comes
  back with its subscriptions), then sends again everything unacknowledged
  with its original packet id: PUBLISH with DUP set, or PUBREL for QoS 2
  messages the server already received (MQTT-4.4.0-1).
* A publisher publishes QoS 1 and 2 messages at ``rate_per_s`` (Poisson)
  while connected, at most ``inflight_max`` unacknowledged.  A message is
  *acknowledged* by PUBACK (QoS 1) or PUBREC (QoS 2: the server owns it
  from then on); PUBREL/PUBCOMP complete the QoS 2 flow.
* A subscriber acknowledges what it receives; a QoS 2 message is handed to
  the application once per packet id until its PUBREL (method B of
  MQTT 4.3.3), and the ids it holds are kept across reconnections of the
  same session and forgotten when a CONNACK says the session is new.
* Keep-alive: a PINGREQ every ``keepalive_s``.  A connection whose CONNACK,
  SUBACK or PINGRESP does not come within ``timeout_s``, or whose oldest
  unacknowledged publish waits longer than ``ack_timeout_s``, is given up:
  the client connects to the next node in its list (the node that took
  over hands the session over), round robin, so also to the same node
  after it restarted.  A connection the server closes (taken over, keep
  alive) is reopened on the same node.

History records (for ``sim/mqttchecks.py``), all with ``client``:

* ``mqttc.connect`` {conn, node}
* ``mqttc.connack`` {conn, node, present, code}
* ``mqttc.suback`` {conn, node, filters: ((filter, granted qos), ...)}
* ``mqttc.publish`` {conn, node, topic, seq, qos, retain, pid, dup}: every
  PUBLISH sent, first or again
* ``mqttc.acked`` {conn, node, topic, seq, qos}: PUBACK or PUBREC, once per
  message
* ``mqttc.deliver`` {conn, node, topic, payload, qos, dup, retain}: a
  message handed to the application
* ``mqttc.give_up`` {conn, node, why}; ``mqttc.closed`` {conn, node}

Payloads are ``"<publisher>|<topic>|<seq>"``: a checker finds publisher,
topic and sequence number in every delivery.

:class:`ObservedMqttFront` is ``MqttFront`` unchanged, plus one record,
``mqtt.routes`` {node, routes: ((node, filter), ...)}, whenever its route
table changed (the checker needs to know which routes a node knew when it
routed a publish); ``mqtt.session_gone`` {node, client, to} when it gave
a session up to another node's takeover, and ``mqtt.handover`` {node,
client, source, req} when another node's answer to a takeover of its own
carries a session (the checker follows each session from node to node).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import ChorusActor
from actors.mqtt_front import MqttFront
from protocol.agency import AgencyReply, WatchEvents
from protocol.mqtt import (
    Connack,
    Connect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
)
from protocol.mqtt_cluster import MqttIn, MqttOut, MqttTakeover, MqttTakeoverReply
from protocol.node import NodesReply

TICK_S = 0.05
PID_MAX = 65535


def payload(client: str, topic: str, seq: int) -> bytes:
    return f"{client}|{topic}|{seq}".encode()


@dataclass(frozen=True)
class Segment:
    """``MqttIn``/``MqttOut`` as the simulator carries them: numbered per
    connection and direction, so that a connection behaves as a TCP stream
    -- packets arrive in order or the connection breaks.  (The network
    drops messages across a partition and a crash and then carries the
    next ones: a bare ``MqttIn`` stream would have holes.)  A receiver
    ignores a segment it already had and resets the connection at a
    gap."""

    n: int
    msg: Any


@dataclass(frozen=True)
class MqttClientBoot:
    client_id: str
    nodes: tuple[tuple[str, Any], ...]  # (node id, MqttFront address), home node first
    filters: tuple[tuple[str, int], ...] = ()  # subscriptions: (filter, requested qos)
    topics: tuple[str, ...] = ()  # topics to publish to; empty: not a publisher
    qos: tuple[int, ...] = (1, 2)  # each publish draws its qos from these
    rate_per_s: float = 10.0
    retain_ratio: float = 0.0
    inflight_max: int = 4
    keepalive_s: int = 1
    timeout_s: float = 1.0  # CONNACK, SUBACK, PINGRESP
    ack_timeout_s: float = 4.0  # PUBACK / PUBREC / PUBCOMP
    stop_after_s: float = 1e9  # stop publishing (keeps the connection)


class MqttClient(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.boot: MqttClientBoot | None = None
        self.n = 0  # connections opened
        self.conn = ""
        self.node_i = 0
        self.up = False
        self.waits: dict[str, float] = {}  # what the connection waits for -> deadline
        self.out: dict[int, list] = {}  # pid -> [topic, seq, qos, retain, stage, sent_at]; stage 1: PUBLISH, 2: PUBREL
        self.tx_n = self.rx_n = 0  # segments sent and received on the connection
        self.rx_qos2: set[int] = set()
        self.next_pid = 1
        self.seq = 0
        self.last_ping = 0.0
        self.gen = 0

    # ------------------------------------------------------------------ boot
    def on_MqttClientBoot(self, msg: MqttClientBoot, sender: Any) -> None:
        if self.boot is not None:
            return
        self.boot = msg
        self.started = self.now()
        self._connect()
        self.set_timer(TICK_S, ("tick",))
        if msg.topics:
            self._think()

    def _node(self) -> tuple[str, Any]:
        return self.boot.nodes[self.node_i % len(self.boot.nodes)]

    def _send(self, *packets: Any) -> None:
        self._segment(MqttIn(self.conn, tuple(packets)))

    def _segment(self, msg: MqttIn) -> None:
        self.tx_n += 1
        self.send(self._node()[1], Segment(self.tx_n, msg))

    def _rec(self, kind: str, **fields: Any) -> None:
        self.record(kind, client=self.boot.client_id, conn=self.conn, node=self._node()[0], **fields)

    # ------------------------------------------------------------ connection
    def _connect(self) -> None:
        self.n += 1
        self.conn = f"{self.boot.client_id}#{self.n}"
        self.tx_n = self.rx_n = 0
        self.up = False
        self.waits = {"connack": self.now() + self.boot.timeout_s}
        self._rec("mqttc.connect")
        self._send(Connect(self.boot.client_id, False, self.boot.keepalive_s))

    def _give_up(self, why: str, next_node: bool = True) -> None:
        self._rec("mqttc.give_up", why=why)
        self._segment(MqttIn(self.conn, closed=True))
        if next_node:
            self.node_i += 1
        self._connect()

    def on_Segment(self, seg: Segment, sender: Any) -> None:
        msg = seg.msg
        if self.boot is None or not isinstance(msg, MqttOut) or msg.conn != self.conn:
            return  # a connection given up: nothing more is read from it
        if seg.n <= self.rx_n:
            return  # a copy
        if seg.n != self.rx_n + 1:
            self._give_up("the connection lost packets", next_node=False)
            return
        self.rx_n = seg.n
        self._out(msg)

    def _out(self, msg: MqttOut) -> None:
        for p in msg.packets:
            self._packet(p)
            if msg.conn != self.conn:
                return
        if msg.close:
            self._rec("mqttc.closed")
            self._connect()  # the same node (taken over, or it closed us for a reason of its own)

    def _packet(self, p: Any) -> None:
        t = type(p)
        now = self.now()
        if t is Publish:
            self._deliver(p)
        elif t is Puback:
            e = self.out.get(p.packet_id)
            if e is not None and e[2] == 1:
                del self.out[p.packet_id]
                self._rec("mqttc.acked", topic=e[0], seq=e[1], qos=1)
        elif t is Pubrec:
            e = self.out.get(p.packet_id)
            if e is not None and e[2] == 2:
                if e[4] == 1:
                    e[4] = 2
                    self._rec("mqttc.acked", topic=e[0], seq=e[1], qos=2)
                e[5] = now
                self._send(Pubrel(p.packet_id))
        elif t is Pubcomp:
            e = self.out.get(p.packet_id)
            if e is not None and e[2] == 2 and e[4] == 2:
                del self.out[p.packet_id]
        elif t is Pubrel:
            self.rx_qos2.discard(p.packet_id)
            self._send(Pubcomp(p.packet_id))
        elif t is Connack:
            self.waits.pop("connack", None)
            self._rec("mqttc.connack", present=p.session_present, code=p.return_code)
            if p.return_code != 0:
                self._give_up(f"refused {p.return_code}")
                return
            self.up = True
            self.last_ping = now
            if not p.session_present:
                self.rx_qos2.clear()  # a new session: the ids we held belong to the old one
            if self.boot.filters:
                pid = self._pid()
                self.sub_pid = pid
                self.waits["suback"] = now + self.boot.timeout_s
                self._send(Subscribe(pid, self.boot.filters))
            again = []
            for pid, e in self.out.items():  # in the order first sent (MQTT-4.6.0-1)
                topic, seq, qos, retain, stage, _ = e
                e[5] = now
                if stage == 1:
                    again.append(Publish(topic, payload(self.boot.client_id, topic, seq), qos, retain, True, pid))
                    self._rec("mqttc.publish", topic=topic, seq=seq, qos=qos, retain=retain, pid=pid, dup=True)
                else:
                    again.append(Pubrel(pid))
            if again:
                self._send(*again)
        elif t is Suback:
            if p.packet_id == getattr(self, "sub_pid", None):
                self.waits.pop("suback", None)
                self._rec("mqttc.suback", filters=tuple((f, c) for (f, _), c in zip(self.boot.filters, p.return_codes)))
        elif t is Pingresp:
            self.waits.pop("ping", None)

    def _deliver(self, p: Publish) -> None:
        if p.qos == 2:
            if p.packet_id in self.rx_qos2:
                self._send(Pubrec(p.packet_id))  # a resend of one the application has
                return
            self.rx_qos2.add(p.packet_id)
        self._rec("mqttc.deliver", topic=p.topic, payload=p.payload.decode(), qos=p.qos, dup=p.dup,
                  retain=p.retain)
        if p.qos == 1:
            self._send(Puback(p.packet_id))
        elif p.qos == 2:
            self._send(Pubrec(p.packet_id))

    # ---------------------------------------------------------------- publish
    def _pid(self) -> int:
        while True:
            pid = self.next_pid
            self.next_pid = pid % PID_MAX + 1
            if pid not in self.out:
                return pid

    def _think(self) -> None:
        self.set_timer(self.rng.expovariate(self.boot.rate_per_s), ("publish",))

    def _publish(self) -> None:
        b = self.boot
        if not self.up or len(self.out) >= b.inflight_max:
            return
        topic = self.rng.choice(b.topics)
        qos = self.rng.choice(b.qos)
        retain = self.rng.random() < b.retain_ratio
        self.seq += 1
        pid = self._pid()
        self.out[pid] = [topic, self.seq, qos, retain, 1, self.now()]
        self._rec("mqttc.publish", topic=topic, seq=self.seq, qos=qos, retain=retain, pid=pid, dup=False)
        self._send(Publish(topic, payload(b.client_id, topic, self.seq), qos, retain, False, pid))

    # ------------------------------------------------------------------ time
    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if self.boot is None:
            return
        kind = msg.payload[0]
        now = self.now()
        if kind == "publish":
            if now - self.started < self.boot.stop_after_s:
                self._publish()
                self._think()
            return
        self.set_timer(TICK_S, ("tick",))
        for what, deadline in self.waits.items():
            if now >= deadline:
                self._give_up(f"no {what.upper()}")
                return
        if self.up and self.out and now - min(e[5] for e in self.out.values()) >= self.boot.ack_timeout_s:
            self._give_up("publish not acknowledged")
            return
        if self.up and now - self.last_ping >= self.boot.keepalive_s:
            self.last_ping = now
            self.waits.setdefault("ping", now + self.boot.timeout_s)
            self._send(Pingreq())


class ObservedMqttFront(MqttFront):
    """MqttFront behind the simulator's streams (:class:`Segment`),
    recording its route table whenever it changed, and the sessions it
    gives up to and takes over from other nodes."""

    def on_Segment(self, seg: Segment, sender: Any) -> None:
        msg = seg.msg
        if not isinstance(msg, MqttIn):
            return
        streams = self.__dict__.setdefault("_rx", {})
        last = streams.get(msg.conn, 0)
        if last < 0 or seg.n <= last:
            return  # reset already, or a copy
        if seg.n != last + 1:
            streams[msg.conn] = -1
            self.on_MqttIn(MqttIn(msg.conn, closed=True), sender)
            self.send(sender, MqttOut(msg.conn, (), True))
            return
        streams[msg.conn] = seg.n
        self.on_MqttIn(msg, sender)

    def send(self, target: Any, msg: Any) -> None:
        if isinstance(msg, MqttOut):
            streams = self.__dict__.setdefault("_tx", {})
            n = streams[msg.conn] = streams.get(msg.conn, 0) + 1
            msg = Segment(n, msg)
        super().send(target, msg)

    def on_MqttTakeover(self, msg: MqttTakeover, sender: Any) -> None:
        had = self.core is not None and msg.client_id in self.core.sessions
        super().on_MqttTakeover(msg, sender)
        if had and msg.client_id not in self.core.sessions:
            self.record("mqtt.session_gone", node=self.boot.node_id, client=msg.client_id, to=msg.node)

    def on_MqttTakeoverReply(self, msg: MqttTakeoverReply, sender: Any) -> None:
        tk = self.core.takeovers.get(msg.req) if self.core is not None else None
        prev = tk["prev"] if tk is not None else None
        if tk is not None and tk["cid"] == msg.client_id and msg.session is not None and prev is not None \
                and (msg.node, msg.session.get("epoch")) == tuple(prev):  # the registered owner's: one the core uses
            self.record("mqtt.handover", node=self.boot.node_id, client=msg.client_id, source=msg.node,
                        req=msg.req)
        super().on_MqttTakeoverReply(msg, sender)

    _ROUTE_MESSAGES = (WatchEvents, AgencyReply, NodesReply)

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        out = super().receiveMessage(msg, sender)
        if self.core is not None and (isinstance(msg, self._ROUTE_MESSAGES) or not hasattr(self, "_seen_routes")):
            routes = tuple(sorted((n, f) for n, fs in self.core.routes.routes.items() for f in fs))
            if routes != getattr(self, "_seen_routes", None):
                self._seen_routes = routes
                self.record("mqtt.routes", node=self.boot.node_id, routes=routes)
        return out
