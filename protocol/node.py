"""Messages between node actors, supervisors and clients of the data plane."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
class DeleteTopic:
    client: str
    req_id: int
    name: str
    reply_to: Any = None
