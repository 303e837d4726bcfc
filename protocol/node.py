"""Messages between node actors, supervisors and clients of the data plane."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.brief import Brief

# ActorSystem capabilities of a node: the Thespian convention's potential
# leaders (admin host:port, in priority order), and what every member
# announces of itself to them -- read by the Dispatchers, which watch the
# convention (ActorSystemConventionUpdate)
CONVENTION_CAPABILITY = "Convention Address.IPv4"
CAP_NODE = "Chorus Node"
CAP_CLUSTER = "Chorus Cluster"
CAP_HTTP = "Chorus HTTP"


@dataclass(frozen=True)
class NodeBoot:
    """First message to a node's NodeActor (again after each restart)."""

    node_id: str
    agency: Any  # the local RaftPeer
    nodes: tuple[tuple[str, Any], ...]  # every node's NodeActor address
    supervisors: tuple[Any, ...]  # every node's Supervisor address
    supervisor: Any = None  # this node's Supervisor
    tuning: Any = None  # ShardTuning for the replicas it creates
    host: Any = None  # HostConfig in production
    poll_s: float = 0.25


@dataclass(frozen=True)
class ReplicaAddress:
    """Where the replica of ``shard`` on ``node`` lives (sent when a node
    creates one, to every node and supervisor)."""

    shard: str
    node: str
    address: Any


@dataclass(frozen=True)
class NodeHello:
    """Sent by a node at boot to every node; answered (reply=True) with the
    answering node's replica addresses."""

    node: str
    replicas: tuple[tuple[str, Any], ...]
    reply: bool = False


@dataclass(frozen=True)
class NodeHeartbeat:
    node: str
    seq: int


@dataclass(frozen=True)
class CreateTopic:
    """Create a topic (``spec`` as TopicSpec.to_json()) -- any node takes it."""

    client: str
    req_id: int
    spec: dict
    reply_to: Any = None


@dataclass(frozen=True)
class TopicReply:
    client: str
    req_id: int
    status: str  # ok | fail | unknown
    shards: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class AlterTopic:
    """Change a topic: ``changes`` may grow ``shards`` and set
    ``retention_ms``/``retention_bytes`` (see TopicSpec.alter)."""

    client: str
    req_id: int
    name: str
    changes: dict
    reply_to: Any = None


@dataclass(frozen=True)
class TruncateShards:
    """Close the topic's current shard group at once; the next writes open
    a new group placed on the current nodes (topics with shard groups only)."""

    client: str
    req_id: int
    name: str
    reply_to: Any = None


@dataclass(frozen=True)
class DeleteTopic:
    client: str
    req_id: int
    name: str
    reply_to: Any = None


@dataclass(frozen=True)
class ListenConfig:
    """Where and how a node's Dispatcher serves clients (units in the names).

    ``http_port`` -1 disables the HTTP API; port 0 picks a free port."""

    host: str = "127.0.0.1"
    client_port: int = 7171
    http_port: int = 7181
    frame_bytes_max: int = 16 << 20
    max_in_flight: int = 64  # requests outstanding per connection; reading pauses beyond
    conn_out_bytes_max: int = 32 << 20  # unsent bytes per connection before a slow client is dropped
    connections_max: int = 1024
    session_timeout_ms: int = 30_000
    shard_inflight_bytes_max: int = 64 << 20  # produce bytes waiting on one shard before OVERLOADED
    shard_send_bytes_max: int = 4 << 20  # of those, sent to the shard's leader at once; the rest wait in order
    request_timeout_s: float = 10.0  # an internal request unanswered this long fails with TIMEOUT
    # request bytes read from one connection and not yet answered; reading pauses beyond
    inflight_bytes_max: int = 64 << 20
    http_connections_max: int = 256  # beyond: 503 with the API's JSON error
    http_body_bytes_max: int = 1 << 20  # larger request bodies: 413
    # TLS (PEM files; runtime/tls.py): when set, the client and HTTP ports speak TLS only
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # users and permissions (runtime/authn.py): off here, on for every real node unless configured off
    auth: bool = False
    user_requests_per_s_max: float = 10_000.0  # per user on this node (binary requests and HTTP calls); 0: no limit
    # GET /metrics needs a user (when auth is on); label sets per kind of series (runtime/metrics.py)
    metrics_auth: bool = True
    metrics_series_max: int = 200


@dataclass(frozen=True)
class NodeEndpoints:
    """A node's public endpoints and Thespian addresses of its actors."""

    node_id: str
    client: str = ""  # host:port of the binary protocol
    http: str = ""  # host:port of the HTTP API
    admin: str = ""  # host:port of the node's Thespian admin (cluster port)
    raft: Any = None
    supervisor: Any = None
    node: Any = None
    dispatcher: Any = None
    mqtt: Any = None  # the MqttFront


@dataclass(frozen=True)
class DispatcherBoot:
    """First message to a node's Dispatcher."""

    node_id: str
    cluster_id: str
    node: Any  # the local NodeActor
    agency: Any  # the local RaftPeer
    supervisor: Any  # the local Supervisor
    listen: ListenConfig = ListenConfig()
    endpoints: NodeEndpoints | None = None
    host: Any = None  # HostConfig
    version: str = ""


@dataclass(frozen=True)
class PeersAre(Brief):
    """The directory of the cluster as a node's launcher sees it: every
    node's endpoints.  Sent (again whenever it changes) to the local
    NodeActor, which updates its address book and passes it on to the
    local Supervisor and replicas."""

    nodes: tuple[NodeEndpoints, ...]


@dataclass(frozen=True)
class ShardInfo:
    """Ask the leader of ``shard`` for its status (answered with
    ``protocol.shard.ShardStatusReply``); any node forwards it."""

    shard: str
    reply_to: Any = None


@dataclass(frozen=True)
class Routed(Brief):
    """A shard request (``Produce``, ``ReadShard``, ``Subscribe``,
    ``ShardInfo``) for a NodeActor to forward to ``leader``'s replica, named
    by a replica that is not the leader (its ``leader`` hint)."""

    inner: Any
    leader: str


@dataclass(frozen=True)
class NodesQuery:
    """Ask a Supervisor when it last heard from each node."""


@dataclass(frozen=True)
class FailoverStatsQuery:
    """Ask a Supervisor for the failovers it ran (actors/failover_watch.py);
    ``active_only``: a supervisor that is not the active one passes the
    question on to the active one (the agency leader's), which answers
    ``reply_to``."""

    req_id: int = 0
    active_only: bool = False
    reply_to: Any = None


@dataclass(frozen=True)
class FailoverStatsReply:
    node: str
    active: bool  # this supervisor is the active one (its node leads the agency)
    stats: Any  # FailoverWatch.stats(): counters, duration histogram, recent failovers (JSON-able)
    req_id: int = 0


@dataclass(frozen=True)
class NodesReply:
    seen_ago_s: tuple[tuple[str, float], ...]  # (node, seconds since its last heartbeat)
    nodes: tuple[str, ...] = ()  # the cluster's nodes as the supervisor knows them


@dataclass(frozen=True)
class Directory(Brief):
    """The directory document a node's Dispatcher serves at
    ``/api/v1/cluster/directory`` (JSON-able; addresses as host:port)."""

    doc: dict


@dataclass(frozen=True)
class HandoffQuery:
    """Ask a NodeActor for its hinted-handoff queue (sizes, counters)."""

    reply_to: Any = None


@dataclass(frozen=True)
class HandoffReply:
    node: str
    status: dict


@dataclass(frozen=True)
class RequestMove:
    """Move ``shard``'s replica from node ``frm`` to node ``to`` (see
    actors/moves.py); to any supervisor, which passes it to the active one.
    Answered with ``MoveReply`` once the request is in the agency."""

    client: str
    req_id: int
    shard: str
    frm: str
    to: str
    reply_to: Any = None


@dataclass(frozen=True)
class RequestDrain:
    """Set a node's drain state: ``draining`` (move everything off it),
    ``removed`` (drained and out of the cluster) or ``""`` (cancel)."""

    client: str
    req_id: int
    node: str
    state: str = "draining"
    reply_to: Any = None


@dataclass(frozen=True)
class MoveReply:
    client: str
    req_id: int
    status: str  # ok | fail | unknown
    error: str = ""
    move: Any = None  # the move record written (a dict)


@dataclass(frozen=True)
class SpawnReplica:
    """NodeActor -> its ReplicaSpawner (production): create the replica of
    ``boot.shard`` and send it ``boot`` (its own address added)."""

    boot: Any  # ShardBoot


@dataclass(frozen=True)
class ReplicaSpawned:
    """ReplicaSpawner -> NodeActor: the replica of ``shard`` lives at ``address``."""

    shard: str
    address: Any


@dataclass(frozen=True)
class ReplicaExited:
    """ReplicaSpawner -> NodeActor: the replica at ``address`` has exited."""

    address: Any
