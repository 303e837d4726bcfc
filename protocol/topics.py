"""Topics: names, specs, shard plans, and where the agency keeps them.

Names
-----
A topic lives in the hierarchy ``tenant/product/component/topic``, e.g.
``acme/shop/orders/created``.  Each part is 1-64 characters of
``[A-Za-z0-9._-]`` and is neither ``.`` nor ``..`` (so a part can always be
used as a path segment).  See :class:`TopicName`.

Specs
-----
A :class:`TopicSpec` is what a user asks for: shard count (1..1024),
replication factor (1..7), retention by age (``retention_ms`` >= 1 000, or
``None`` = forever) and by size (``retention_bytes`` >= 1 MiB, or ``None`` =
unbounded), whether it is persistent, and the duration of its shard groups
(``shard_group_ms`` >= 1 000, or ``None``: one everlasting group; see
:mod:`protocol.groups`).  Its :attr:`TopicSpec.mode` names
the shape: ``single`` (1 shard, rf 1), ``distributed`` (shards > 1, rf 1),
``replicated`` (1 shard, rf > 1) and ``production`` (both > 1).  A spec can
be altered (:meth:`TopicSpec.alter`): the shard count only grows (shrinking
would re-hash keys into fewer shards and lose per-key order), the
replication factor and retentions may change, the name and persistence may
not.

Agency layout
-------------
The agency (see :mod:`protocol.agency`) is a tree of slash-separated paths
holding JSON values.  Topics use two subtrees::

    /chorus/topics/<tenant>/<product>/<component>/<topic>
        -> TopicSpec.to_json()     the desired state, written by admins

    /chorus/plan/shards/<tenant>/<product>/<component>/<topic>/<shard>
        -> ShardPlan.to_json()     the placement of shard <shard> (0-based,
                                   decimal), written by the supervisor

A :class:`ShardPlan` lists the shard's replicas (node ids; as placed the
leader comes first), the leader, the leader epoch (bumped on every leader
change, so stale leaders can be fenced) and the in-sync replicas (those
that may become leader without losing acknowledged writes).  During a
failover the supervisor first *fences* the shard (``epoch += 1``,
``leader = ""``: no leader) and then promotes one of the replicas, which
need not be the first.  Use :func:`topic_path` and :func:`shard_path` to
build these paths; never format them by hand.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

__all__ = [
    "TopicName", "TopicSpec", "ShardPlan",
    "topic_path", "shard_path", "topic_from_path",
    "TOPICS_ROOT", "SHARDS_ROOT",
    "MAX_SHARDS", "MAX_REPLICATION_FACTOR", "MIN_RETENTION_MS", "MIN_RETENTION_BYTES",
]

TOPICS_ROOT = "/chorus/topics"
SHARDS_ROOT = "/chorus/plan/shards"

MAX_SHARDS = 1024
MAX_SHARD_ID = 1 << 40  # shard ids are unique within a topic; each shard group takes a fresh block
MAX_REPLICATION_FACTOR = 7
MIN_RETENTION_MS = 1_000
MIN_SHARD_GROUP_MS = 1_000
MIN_RETENTION_BYTES = 1024 * 1024

_PART_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PARTS = ("tenant", "product", "component", "topic")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_part(kind: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"topic {kind} must be a string, got {type(value).__name__} {value!r}")
    if not value:
        raise ValueError(f"topic {kind} must not be empty")
    if len(value) > 64:
        raise ValueError(f"topic {kind} {value[:16]!r}... is {len(value)} characters long; at most 64 allowed")
    if _PART_RE.fullmatch(value) is None:
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        raise ValueError(f"topic {kind} {value!r} contains invalid characters {''.join(bad)!r}; "
                         "allowed are letters, digits, '.', '_' and '-'")
    if value in (".", ".."):
        raise ValueError(f"topic {kind} must not be {value!r}")


@dataclass(frozen=True, order=True)
class TopicName:
    """``tenant/product/component/topic``; each part validated on creation."""

    tenant: str
    product: str
    component: str
    topic: str

    def __post_init__(self) -> None:
        for kind in _PARTS:
            _check_part(kind, getattr(self, kind))

    @classmethod
    def parse(cls, text: str) -> "TopicName":
        """Parse ``"acme/shop/orders/created"``; ValueError if malformed."""
        if not isinstance(text, str):
            raise ValueError(f"topic name must be a string, got {type(text).__name__} {text!r}")
        parts = text.split("/")
        if len(parts) != 4:
            raise ValueError(f"topic name {text!r} must have exactly 4 parts "
                             f"tenant/product/component/topic, got {len(parts)}")
        return cls(*parts)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.tenant, self.product, self.component, self.topic)

    def __str__(self) -> str:
        return "/".join(self.parts)


def _as_name(name: "TopicName | str") -> TopicName:
    if isinstance(name, TopicName):
        return name
    return TopicName.parse(name)


def _check_optional_min(field: str, value: Any, minimum: int, what: str) -> None:
    if value is None:
        return
    if not _is_int(value):
        raise ValueError(f"{field} must be an int or None, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be at least {minimum} ({what}) or None, got {value}")


@dataclass(frozen=True)
class TopicSpec:
    """The desired shape of a topic (see the module docstring)."""

    name: TopicName
    shards: int = 1
    replication_factor: int = 1
    retention_ms: int | None = None
    retention_bytes: int | None = None
    persistent: bool = True
    shard_group_ms: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.name, str):
            object.__setattr__(self, "name", TopicName.parse(self.name))
        if not isinstance(self.name, TopicName):
            raise ValueError(f"name must be a TopicName, got {type(self.name).__name__} {self.name!r}")
        if not _is_int(self.shards) or not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"shards must be an int in 1..{MAX_SHARDS}, got {self.shards!r}")
        if not _is_int(self.replication_factor) or not 1 <= self.replication_factor <= MAX_REPLICATION_FACTOR:
            raise ValueError(f"replication_factor must be an int in 1..{MAX_REPLICATION_FACTOR}, "
                             f"got {self.replication_factor!r}")
        _check_optional_min("retention_ms", self.retention_ms, MIN_RETENTION_MS, "one second")
        _check_optional_min("retention_bytes", self.retention_bytes, MIN_RETENTION_BYTES, "1 MiB")
        _check_optional_min("shard_group_ms", self.shard_group_ms, MIN_SHARD_GROUP_MS, "one second")
        if not isinstance(self.persistent, bool):
            raise ValueError(f"persistent must be a bool, got {type(self.persistent).__name__} {self.persistent!r}")

    @property
    def mode(self) -> str:
        """``single`` | ``distributed`` | ``replicated`` | ``production``."""
        if self.shards > 1:
            return "production" if self.replication_factor > 1 else "distributed"
        return "replicated" if self.replication_factor > 1 else "single"

    def validate(self, node_count: int) -> None:
        """Check the spec can be placed on a cluster of ``node_count`` nodes."""
        if not _is_int(node_count) or node_count < 1:
            raise ValueError(f"node_count must be a positive int, got {node_count!r}")
        if self.replication_factor > node_count:
            raise ValueError(f"topic {self.name}: replication_factor {self.replication_factor} needs at least "
                             f"{self.replication_factor} nodes, but the cluster has {node_count}")

    def to_json(self) -> dict[str, Any]:
        """``shard_group_ms`` only when set: a topic without shard groups is
        stored exactly as before they existed."""
        out = {
            "name": str(self.name),
            "shards": self.shards,
            "replication_factor": self.replication_factor,
            "retention_ms": self.retention_ms,
            "retention_bytes": self.retention_bytes,
            "persistent": self.persistent,
        }
        if self.shard_group_ms is not None:
            out["shard_group_ms"] = self.shard_group_ms
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TopicSpec":
        """Inverse of :meth:`to_json`; strict: unknown keys are rejected.

        ``name`` is required; the other fields default as in the class.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"topic spec must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown topic spec field(s) {unknown}; expected only {known}")
        if "name" not in data:
            raise ValueError("topic spec is missing required field 'name'")
        if not isinstance(data["name"], str):
            raise ValueError(f"topic spec field 'name' must be a string, got {data['name']!r}")
        kwargs = dict(data)
        kwargs["name"] = TopicName.parse(data["name"])
        return cls(**kwargs)

    def alter(self, **changes: Any) -> "TopicSpec":
        """A new spec with ``changes`` applied, if allowed.

        ``shards`` may only grow; ``replication_factor``, ``retention_ms`` and
        ``retention_bytes`` may change freely (within their ranges); ``name``
        and ``persistent`` may not change.
        """
        mutable = ("shards", "replication_factor", "retention_ms", "retention_bytes", "shard_group_ms")
        for key in sorted(changes):
            if key in ("name", "persistent"):
                current: Any = getattr(self, key)
                if key == "name" and isinstance(changes[key], str):
                    current = str(current)
                if changes[key] != current:  # passing the unchanged value is allowed
                    raise ValueError(f"topic {self.name}: {key} cannot be altered "
                                     f"({current!r} -> {changes[key]!r} refused)")
            elif key not in mutable:
                raise ValueError(f"unknown topic spec field {key!r}; alterable are {list(mutable)}")
        if "shard_group_ms" in changes and (changes["shard_group_ms"] is None) != (self.shard_group_ms is None):
            raise ValueError(f"topic {self.name}: shard groups can be neither added to nor removed from an "
                             "existing topic (their duration may change)")
        if "shards" in changes and self.shard_group_ms is not None and changes["shards"] != self.shards:
            raise ValueError(f"topic {self.name}: the shard count of a topic with shard groups cannot change")
        if "shards" in changes:
            new = changes["shards"]
            if _is_int(new) and new < self.shards:
                raise ValueError(f"topic {self.name}: shards may only grow ({self.shards} -> {new} refused)")
        kwargs = self.to_json()
        kwargs["name"] = self.name
        kwargs["shard_group_ms"] = self.shard_group_ms
        kwargs.update({k: v for k, v in changes.items() if k in mutable})
        return TopicSpec(**kwargs)


@dataclass(frozen=True)
class ShardPlan:
    """Placement of one shard: ``replicas``, ``leader``, leader ``epoch``
    and the ``in_sync`` replicas.

    Invariants: replicas non-empty, distinct, non-empty strings; ``leader``
    is one of the replicas, or ``""`` while the shard is fenced (no leader);
    ``in_sync`` distinct and a subset of the replicas; ``epoch >= 0``.
    :meth:`initial` builds a new shard's plan from a placement (leader
    first, everyone in sync).
    """

    replicas: tuple[str, ...]
    leader: str
    epoch: int
    in_sync: tuple[str, ...]

    def __post_init__(self) -> None:
        for attr in ("replicas", "in_sync"):
            v = getattr(self, attr)
            if isinstance(v, list):
                object.__setattr__(self, attr, tuple(v))
            elif not isinstance(v, tuple):
                raise ValueError(f"shard plan {attr} must be a tuple of node ids, got {type(v).__name__} {v!r}")
            if not all(isinstance(n, str) and n for n in getattr(self, attr)):
                raise ValueError(f"shard plan {attr} must hold non-empty node id strings, got {v!r}")
            if len(set(getattr(self, attr))) != len(getattr(self, attr)):
                raise ValueError(f"shard plan {attr} has duplicate node ids: {v!r}")
        if not self.replicas:
            raise ValueError("shard plan needs at least one replica")
        if not isinstance(self.leader, str) or (self.leader and self.leader not in self.replicas):
            raise ValueError(f"shard plan leader {self.leader!r} must be one of the replicas {self.replicas!r} "
                             "or '' (fenced, no leader)")
        if not _is_int(self.epoch) or self.epoch < 0:
            raise ValueError(f"shard plan epoch must be an int >= 0, got {self.epoch!r}")
        stray = [n for n in self.in_sync if n not in self.replicas]
        if stray:
            raise ValueError(f"shard plan in_sync {stray!r} are not replicas {self.replicas!r}")

    @classmethod
    def initial(cls, replicas: tuple[str, ...] | list[str], epoch: int = 0) -> "ShardPlan":
        """The plan of a freshly placed shard: ``replicas[0]`` leads, all in sync."""
        replicas = tuple(replicas)
        if not replicas:
            raise ValueError("shard plan needs at least one replica")
        return cls(replicas=replicas, leader=replicas[0], epoch=epoch, in_sync=replicas)

    @property
    def fenced(self) -> bool:
        """True while the shard has no leader (mid-failover)."""
        return self.leader == ""

    @property
    def followers(self) -> tuple[str, ...]:
        """The replicas other than the leader, in plan order."""
        return tuple(n for n in self.replicas if n != self.leader)

    def to_json(self) -> dict[str, Any]:
        return {"replicas": list(self.replicas), "leader": self.leader, "epoch": self.epoch,
                "in_sync": list(self.in_sync)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ShardPlan":
        """Inverse of :meth:`to_json`; strict: unknown keys are rejected and
        ``replicas``, ``leader`` and ``epoch`` are required.  A missing
        ``in_sync`` means all replicas are in sync (the state of a new plan;
        writers that do not track the in-sync set omit it)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"shard plan must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown shard plan field(s) {unknown}; expected only {known}")
        missing = [k for k in ("replicas", "leader", "epoch") if k not in data]
        if missing:
            raise ValueError(f"shard plan is missing field(s) {missing}")
        in_sync = data.get("in_sync", data["replicas"])
        for attr, v in (("replicas", data["replicas"]), ("in_sync", in_sync)):
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"shard plan {attr} must be a list, got {v!r}")
        return cls(replicas=tuple(data["replicas"]), leader=data["leader"], epoch=data["epoch"],
                   in_sync=tuple(in_sync))


def topic_path(name: TopicName | str) -> str:
    """``/chorus/topics/<tenant>/<product>/<component>/<topic>``."""
    return f"{TOPICS_ROOT}/{_as_name(name)}"


def shard_path(name: TopicName | str, shard: int) -> str:
    """``/chorus/plan/shards/<tenant>/<product>/<component>/<topic>/<shard>``."""
    if not _is_int(shard) or not 0 <= shard < MAX_SHARD_ID:
        raise ValueError(f"shard must be an int in 0..{MAX_SHARD_ID - 1}, got {shard!r}")
    return f"{SHARDS_ROOT}/{_as_name(name)}/{shard}"


def topic_from_path(path: str) -> TopicName:
    """Inverse of :func:`topic_path`."""
    prefix = TOPICS_ROOT + "/"
    if not isinstance(path, str) or not path.startswith(prefix):
        raise ValueError(f"{path!r} is not a topic path (expected {prefix}<tenant>/<product>/<component>/<topic>)")
    return TopicName.parse(path[len(prefix):])
