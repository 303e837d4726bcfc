"""Requests to the agency (the Raft metadata store) and its answers.

Paths are slash-separated (``/chorus/topics/acme/web/api/orders``); values
are JSON values.  A write is a :class:`Txn`: mutations applied atomically
if every precondition holds (compare-and-set as ArangoDB's Agency).

Every request gets a definite answer or an explicit unknown outcome:

* ``ok``       -- done; ``result`` holds the outcome (for a Txn whose
  preconditions failed this is still ``ok`` with ``result["ok"] == False``);
* ``fail``     -- definitely not applied (``error`` says why: no leader,
  rejected, overloaded ...);
* ``unknown``  -- the outcome is not known (leadership lost or the request
  timed out after it was proposed); it may or may not take effect.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protocol.brief import Brief

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"

PRECONDITIONS = ("equals", "absent", "present", "version")
MUTATIONS = ("set", "delete", "incr")


@dataclass(frozen=True)
class Precondition:
    path: str
    kind: str  # equals | absent | present | version
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in PRECONDITIONS:
            raise ValueError(f"unknown precondition {self.kind!r}; expected one of {PRECONDITIONS}")


@dataclass(frozen=True)
class Mutation:
    path: str
    kind: str  # set | delete | incr
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in MUTATIONS:
            raise ValueError(f"unknown mutation {self.kind!r}; expected one of {MUTATIONS}")


@dataclass(frozen=True)
class Txn:
    mutations: tuple[Mutation, ...]
    preconditions: tuple[Precondition, ...] = ()


@dataclass(frozen=True)
class Read:
    paths: tuple[str, ...]
    linearizable: bool = True


@dataclass(frozen=True)
class AgencyRequest(Brief):
    client: str
    req_id: int
    op: Txn | Read
    reply_to: Any = None  # ActorAddress of the client when forwarded
    hops: int = 0


@dataclass(frozen=True)
class AgencyReply(Brief):
    client: str
    req_id: int
    status: str
    result: Any = None
    leader: str | None = None
    error: str = ""


@dataclass(frozen=True)
class MembershipChange:
    client: str
    req_id: int
    op: str  # add_voter | remove_voter | add_learner
    node_id: str
    address: Any = None
    reply_to: Any = None  # ActorAddress of the client when forwarded
    hops: int = 0


@dataclass(frozen=True)
class Watch:
    watch_id: str
    prefix: str
    from_revision: int = 0  # deliver changes with revision > from_revision
    reply_to: Any = None


@dataclass(frozen=True)
class Unwatch:
    watch_id: str


@dataclass(frozen=True)
class WatchEvents:
    watch_id: str
    events: tuple[tuple[int, str, Any], ...]  # (revision, path, value or None if deleted)
    revision: int
    compacted: bool = False  # from_revision is older than the retained history


@dataclass(frozen=True)
class StatusQuery:
    pass


@dataclass(frozen=True)
class StatusReply:
    node_id: str
    status: dict
    pid: int | None = None


def encode_txn(client: str, req_id: int, txn: Txn) -> bytes:
    """Deterministic JSON encoding of a transaction for the Raft log."""
    doc = {
        "c": client,
        "r": req_id,
        "m": [[m.path, m.kind, m.value] for m in txn.mutations],
        "p": [[p.path, p.kind, p.value] for p in txn.preconditions],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_txn(data: bytes) -> tuple[str, int, Txn]:
    doc = json.loads(data)
    txn = Txn(
        tuple(Mutation(p, k, v) for p, k, v in doc["m"]),
        tuple(Precondition(p, k, v) for p, k, v in doc["p"]),
    )
    return doc["c"], doc["r"], txn
