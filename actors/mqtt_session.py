"""One MQTT session's delivery state (sans-IO): subscriptions, the window of
unacknowledged QoS 1/2 messages, the queue behind it, QoS 2 packet ids in
both directions, and the durable form of a persistent session.

A session outlives its connection when the client connected with
``clean_session=0`` (MQTT-3.1.2-4): its subscriptions and its QoS 1/2
messages are kept, queued while it is offline, and sent again (DUP set for
those already sent) when it reconnects (MQTT-4.4.0-1).  QoS 0 messages are
not queued for an offline session.  Each queued message of a persistent
session is also a key in the node's store (``q`` + client id + number),
removed when the client acknowledges it, so the session survives a restart
of its node.

Outgoing flow (broker -> subscriber): QoS 1 PUBLISH -> PUBACK; QoS 2
PUBLISH -> PUBREC, PUBREL -> PUBCOMP.  At most ``inflight_max`` messages are
unacknowledged; the rest wait in the queue, at most ``session_queue_max``
(the oldest is dropped beyond, and counted).
"""
from __future__ import annotations

import base64
import collections
import json
from typing import Any, NamedTuple

from protocol.mqtt import Publish, Pubrel, Will

PID_MAX = 65535


class Msg(NamedTuple):
    """A message on its way to a session; ``n`` numbers it in the session's store."""

    topic: str
    payload: bytes
    qos: int
    mid: str
    retain: bool = False
    n: int = 0


def session_key(client_id: str) -> bytes:
    return b"s\x00" + client_id.encode()


def queue_prefix(client_id: str) -> bytes:
    return b"q\x00" + client_id.encode() + b"\x00"


def encode_msg(m: Msg, pid: int = 0, stage: int = 0) -> bytes:
    """A queued message in the store; ``pid``/``stage`` once it was sent
    (MQTT-4.4.0-1: after a restart it is sent again under the same id)."""
    return json.dumps([m.topic, base64.b64encode(m.payload).decode(), m.qos, m.mid, m.retain, pid, stage]).encode()


def decode_msg(data: bytes, n: int) -> tuple[Msg, int, int]:
    topic, payload, qos, mid, retain, *sent = json.loads(data)
    pid, stage = sent if len(sent) == 2 else (0, 0)
    return Msg(topic, base64.b64decode(payload), qos, mid, retain, n), pid, stage


_last_qos0: list = [None]


def _qos0_publish(m: Msg) -> Publish:
    """The QoS 0 PUBLISH of ``m``: the same (immutable) object for every
    session offered the same message in a row, so that the listener encodes
    it once for all of them."""
    p = _last_qos0[0]
    if p is None or p.payload is not m.payload or p.topic != m.topic or p.retain != m.retain:
        # as the decoder builds them: the frozen __init__'s object.__setattr__ calls cost as much again
        p = object.__new__(Publish)
        p.__dict__.update(topic=m.topic, payload=m.payload, qos=0, retain=m.retain, dup=False, packet_id=None)
        _last_qos0[0] = p
    return p


class Session:
    """See the module docstring.  ``store`` is None for clean sessions."""

    __slots__ = ("client_id", "clean", "conn", "subs", "inflight", "queue", "in_qos2", "next_pid", "n",
                 "will", "keepalive_s", "dropped", "store", "recent", "epoch", "_inflight_max", "_queue_max",
                 "_older", "_recent_half")

    def __init__(self, client_id: str, clean: bool, store: Any, inflight_max: int, queue_max: int,
                 recent_max: int = 1024) -> None:
        self.client_id = client_id
        self.clean = clean
        self.conn: Any = None
        self.subs: dict[str, int] = {}  # filter as subscribed (with any $share/ prefix) -> granted qos
        self.inflight: dict[int, list] = {}  # packet id -> [Msg, stage]; stage 1: PUBLISH sent, 2: PUBREL sent
        self.queue: collections.deque[Msg] = collections.deque()
        self.in_qos2: set[int] = set()  # QoS 2 ids received and delivered, PUBREL not yet seen
        self.next_pid = 1
        self.n = 0
        self.will: Will | None = None
        self.keepalive_s = 0
        self.dropped = 0
        self.epoch = 0  # a persistent session's owner epoch (actors/mqtt_owners.py); 0 for clean ones
        self.store = None if clean else store
        self._inflight_max = inflight_max
        self._queue_max = queue_max
        # ids of the latest messages offered: one that reaches the session twice
        # (straight and through the node it moved from) is delivered once.  Two
        # generations of recent_max / 2 each: dropping the oldest id one at a
        # time from the front of a dict made every offer slower (profiled)
        self.recent: dict[str, None] = {}
        self._older: dict[str, None] = {}
        self._recent_half = max(1, recent_max // 2)

    # ------------------------------------------------------------ durability
    def save_subs(self) -> None:
        if self.store is not None:
            self.store.put(session_key(self.client_id), json.dumps({"subs": self.subs, "epoch": self.epoch}).encode())

    def forget(self) -> None:
        """Delete the durable form (a clean session, or one taken over elsewhere)."""
        if self.store is None:
            return
        prefix = queue_prefix(self.client_id)
        for key, _ in list(self.store.scan(prefix, prefix + b"\xff")):
            self.store.delete(key)
        self.store.delete(session_key(self.client_id))

    def restore_queue(self) -> None:
        prefix = queue_prefix(self.client_id)
        for key, value in self.store.scan(prefix, prefix + b"\xff"):
            n = int.from_bytes(key[len(prefix):], "big")
            m, pid, stage = decode_msg(value, n)
            self.remember(m.mid)  # a copy still on its way here (passed on, resent) is not a new message
            if pid and pid not in self.inflight:
                self.inflight[pid] = [m, stage]  # sent before the restart: again under its id
                self.next_pid = pid % PID_MAX + 1
            else:
                self.queue.append(m)
            self.n = max(self.n, n)

    def _unstore(self, m: Msg) -> None:
        if self.store is not None and m.n:
            self.store.delete(queue_prefix(self.client_id) + m.n.to_bytes(8, "big"))

    # -------------------------------------------------------------- delivery
    def remember(self, mid: str) -> bool:
        """A message this session has had (the latest ``recent_max / 2`` to
        ``recent_max`` of them are kept); False if it had it already."""
        if mid in self.recent or mid in self._older:
            return False
        self.recent[mid] = None
        if len(self.recent) >= self._recent_half:
            self._older, self.recent = self.recent, {}
        return True

    def recent_mids(self) -> list[str]:
        """The ids remembered, oldest first (handed over with the session)."""
        return list(self._older) + list(self.recent)

    def offer(self, m: Msg, out: list) -> None:
        """A message for this session at its effective QoS; ``out`` collects
        packets for the connection."""
        if not self.remember(m.mid):
            return
        if m.qos == 0:
            if self.conn is not None:
                out.append(_qos0_publish(m))
            return
        if self.store is not None:
            self.n += 1
            m = m._replace(n=self.n)
            self.store.put(queue_prefix(self.client_id) + self.n.to_bytes(8, "big"), encode_msg(m))
        if self.conn is not None and len(self.inflight) < self._inflight_max and not self.queue:
            self._send_new(m, out)
            return
        self.queue.append(m)
        if len(self.queue) > self._queue_max:
            self._unstore(self.queue.popleft())
            self.dropped += 1

    def adopt(self, pid: int, m: Msg, stage: int) -> None:
        """An unacknowledged message handed over with its packet id (sent
        again on ``resume``: PUBLISH with DUP, or PUBREL at stage 2)."""
        self.remember(m.mid)
        if self.store is not None:
            self.n += 1
            m = m._replace(n=self.n)
            self.store.put(queue_prefix(self.client_id) + self.n.to_bytes(8, "big"), encode_msg(m, pid, stage))
        self.inflight[pid] = [m, stage]

    def _send_new(self, m: Msg, out: list) -> None:
        pid = self._pid()
        self.inflight[pid] = [m, 1]
        self._mark(m, pid, 1)
        out.append(Publish(m.topic, m.payload, m.qos, m.retain, False, pid))

    def _mark(self, m: Msg, pid: int, stage: int) -> None:
        """Record under which packet id (and at which stage) a stored message went out."""
        if self.store is not None and m.n:
            self.store.put(queue_prefix(self.client_id) + m.n.to_bytes(8, "big"), encode_msg(m, pid, stage))

    def _pid(self) -> int:
        while True:
            pid = self.next_pid
            self.next_pid = pid % PID_MAX + 1
            if pid not in self.inflight:
                return pid

    def pump(self, out: list) -> None:
        """Send queued messages while the window has room."""
        if self.conn is None:
            return
        while self.queue and len(self.inflight) < self._inflight_max:
            self._send_new(self.queue.popleft(), out)

    def resume(self, out: list) -> None:
        """After a reconnect: everything unacknowledged again, DUP set on
        PUBLISH (MQTT-4.4.0-1), then the queue."""
        for pid, (m, stage) in self.inflight.items():
            out.append(Publish(m.topic, m.payload, m.qos, m.retain, True, pid) if stage == 1 else Pubrel(pid))
        self.pump(out)

    def acked(self, pid: int, out: list) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2)."""
        entry = self.inflight.pop(pid, None)
        if entry is not None:
            self._unstore(entry[0])
            self.pump(out)

    def received(self, pid: int, out: list) -> None:
        """PUBREC: the subscriber has the QoS 2 message; release it."""
        entry = self.inflight.get(pid)
        if entry is not None:
            if entry[1] != 2:
                entry[1] = 2
                self._mark(entry[0], pid, 2)
            out.append(Pubrel(pid))
