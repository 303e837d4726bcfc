"""Actor messages of the MQTT front end: boot, cross-node forwarding,
client-id takeover, and the simulator's stand-in for sockets.

The route table and the retained messages live in the agency under
``MQTT_ROOT`` (see ``actors/mqtt_core.py``); these messages carry what does
not: batches of publishes forwarded to the nodes that have subscribers, and
the hand-over of a session when its client id connects on another node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.brief import Brief

MQTT_ROOT = "/chorus/mqtt"
ROUTES_ROOT = MQTT_ROOT + "/routes"  # /routes/<node>/<escaped filter> = 1
RETAINED_ROOT = MQTT_ROOT + "/retained"  # /retained/<escaped topic> = {"p": base64, "q": qos}
SESSIONS_ROOT = MQTT_ROOT + "/sessions"  # /sessions/<escaped client id> = "<node>:<epoch>" (persistent sessions)
BRIDGES_ROOT = MQTT_ROOT + "/bridges"  # /bridges/<name> = spec (actors/mqtt_bridge.py)


@dataclass(frozen=True)
class MqttTuning:
    """Bounds and timings of one node's MQTT front end (units in the names)."""

    inflight_max: int = 32  # unacknowledged QoS 1/2 messages per session (outgoing window)
    session_queue_max: int = 10_000  # messages queued per session beyond the window (oldest dropped)
    sessions_max: int = 100_000  # sessions (connected and persistent) per node
    subscriptions_per_session_max: int = 1_000
    retained_max: int = 10_000  # retained topics in the cluster
    retained_payload_bytes_max: int = 64 << 10  # larger retained payloads are delivered, not retained
    forward_batch_max: int = 2_000  # publishes per forward message
    forward_window: int = 8  # forward batches in flight per destination node
    forward_queue_max: int = 100_000  # publishes waiting per destination node (oldest dropped)
    forward_retry_s: float = 1.0  # resend unacknowledged forward batches after this long
    ack_wait_max_s: float = 5.0  # a publisher's PUBACK waits this long at most for remote nodes
    takeover_wait_s: float = 0.5  # how long a CONNECT waits for the session's owner to answer a fetch (then asks again)
    # how long a CONNECT tries to fetch and claim (or release) its session before CONNACK 3;
    # also how long a retained write is tried before its publish is left unacknowledged
    claim_wait_s: float = 5.0
    moved_grace_s: float = 10.0  # publishes for a session handed over are passed on this long
    recent_mids_max: int = 1024  # message ids a session remembers to drop duplicates
    route_dead_after_s: float = 30.0  # a node unheard of this long loses its routes
    # a persistent session offline this long ends (its queue, subscriptions and registry entry go)
    session_expiry_s: float = 7200.0
    session_expiry_scan_s: float = 10.0  # how often offline sessions are looked at (the expiry's precision)
    keepalive_factor: float = 1.5  # MQTT-3.1.2-24
    tick_s: float = 0.1


@dataclass(frozen=True)
class MqttBugs:
    """Deliberately broken forwarding, for proving the simulator catches it."""

    no_forward_retry: bool = False  # an unacknowledged forward batch is never sent again
    no_forward_dedup: bool = False  # the receiver delivers a batch again when it is sent again, as new

    def any(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class MqttListenConfig:
    """Where a node's MQTT listener binds (port 0: a free port; -1: no listener)."""

    host: str = "127.0.0.1"
    port: int = 1883
    connections_max: int = 10_000
    conn_out_bytes_max: int = 8 << 20  # unsent bytes before a client that does not read is dropped
    packet_bytes_max: int = 1 << 20
    # QoS 1/2 PUBLISH bytes from one connection not yet acknowledged; reading pauses beyond
    inflight_bytes_max: int = 8 << 20
    # TLS (PEM files; runtime/tls.py): when set, the MQTT port speaks TLS only
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # users and permissions (runtime/authn.py): CONNECT needs a user's password; off for the simulator
    auth: bool = False
    user_publishes_per_s_max: float = 100_000.0  # PUBLISH packets per user on this node; 0: no limit


@dataclass(frozen=True)
class MqttBoot:
    """First message to a node's MqttFront (again to update its peers)."""

    node_id: str
    agency: Any  # the local RaftPeer
    supervisor: Any = None  # the local Supervisor (node liveness for route clean-up)
    peers: tuple[tuple[str, Any], ...] = ()  # (node id, MqttFront address) of every node
    listen: MqttListenConfig | None = None  # None: no sockets (the simulator)
    tuning: MqttTuning = MqttTuning()
    host: Any = None  # HostConfig in production
    bugs: MqttBugs = MqttBugs()  # the simulator's deliberately broken variants
    node: Any = None  # the local NodeActor (log -> MQTT bridges subscribe through it)
    dispatcher: Any = None  # the local Dispatcher (MQTT -> log bridges append through it)


@dataclass(frozen=True)
class MqttPeers:
    """Every node's MqttFront address, from the launcher's directory."""

    peers: tuple[tuple[str, Any], ...]


PASS_HOPS_MAX = 3  # a session moved twice before a forward caught up with it still gets it


@dataclass(frozen=True)
class Fwd:
    """One publish forwarded to a node: ``groups`` are the shared
    subscriptions (group, filter) for which this node was chosen."""

    topic: str
    payload: bytes
    qos: int
    mid: str  # origin-unique message id (for tracing and the checker)
    groups: tuple[tuple[str, str], ...] = ()
    #: times passed on after a session moved; at ``PASS_HOPS_MAX`` not passed on again (two sessions
    #: that moved in opposite directions would otherwise send it round between their old nodes)
    hops: int = 0


@dataclass(frozen=True)
class MqttForward(Brief):
    """A batch of publishes for the subscribers on the receiving node.

    Batches from one origin incarnation (``epoch``) to one receiver
    incarnation (``dest_epoch``) are numbered from 1; the receiver delivers
    them in order, once, and acknowledges cumulatively.  A batch addressed
    to another incarnation of the receiver (0: not known yet) is not
    delivered; the answer names the receiver's epoch, and the origin numbers
    what it has not had acknowledged afresh for it."""

    origin: str
    epoch: int
    seq: int
    items: tuple[Fwd, ...]
    dest_epoch: int = 0


@dataclass(frozen=True)
class MqttForwardAck:
    node: str
    epoch: int  # the origin's
    seq: int  # every batch up to this one was delivered
    dest_epoch: int = 0  # the receiver's


@dataclass(frozen=True)
class MqttTakeover:
    """Client ``client_id`` connects on ``node``.  ``fetch``: hand over the
    state of the session at ``epoch`` (answered with ``MqttTakeoverReply``;
    the copy here stays until the new owner's claim commits).  Otherwise
    the claim has committed: drop the connection and any copy here."""

    client_id: str
    node: str
    req: int
    clean: bool
    fetch: bool = False
    epoch: int = 0


@dataclass(frozen=True)
class MqttTakeoverReply(Brief):
    client_id: str
    node: str
    req: int
    session: dict | None = None  # {"subs": {filter: qos}, "queue": [[topic, payload, qos, mid], ...]}


@dataclass(frozen=True)
class MqttIn(Brief):
    """Packets from a simulated client's connection ``conn`` (the
    simulator's socket); ``closed``: the connection dropped."""

    conn: str
    packets: tuple = ()
    closed: bool = False


@dataclass(frozen=True)
class MqttOut(Brief):
    """Packets to a simulated client's connection; ``close``: the server
    closed it after them."""

    conn: str
    packets: tuple = ()
    close: bool = False


@dataclass(frozen=True)
class LogAppend(Brief):
    """Append records to a Chorus topic (an MQTT -> log bridge); the
    Dispatcher places each record by its key and answers ``LogAppendReply``."""

    req: int
    topic: str
    level: str
    records: tuple[tuple[bytes, bytes], ...]  # (key, value)


@dataclass(frozen=True)
class LogAppendReply:
    req: int
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class MqttStatusQuery:
    pass


@dataclass(frozen=True)
class MqttStatusReply:
    node_id: str
    status: dict
