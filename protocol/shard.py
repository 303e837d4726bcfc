"""Messages of the shard data plane: produce, replicate, fence, assign.

Shards are named ``"<tenant>/<product>/<component>/<topic>#<n>"``.  Every
replication message carries the leader epoch; replicas never accept data
from an epoch older than the newest they have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.brief import Brief

LEVELS = ("any", "one", "quorum", "all")


@dataclass(frozen=True)
class ShardBoot:
    """First message to a ShardReplica (and again after each restart)."""

    shard: str
    node_id: str
    replicas: tuple[str, ...]
    addresses: tuple[tuple[str, Any], ...]  # node id -> ShardReplica address of that shard
    epoch: int = 1
    leader: str | None = None
    tuning: Any = None  # ShardTuning
    host: Any = None  # HostConfig in production
    supervisors: tuple[Any, ...] = ()  # where to report state (every node's Supervisor)
    until_ms: int = -1  # the shard's group closes then (wall clock ms; -1: never)
    learners: tuple[str, ...] = ()  # a move's target copying the log (the plan's learners)


@dataclass(frozen=True)
class Produce(Brief):
    shard: str
    client: str
    req_id: int
    batch: bytes  # encoded record batch (protocol.records)
    count: int
    level: str = "quorum"
    producer_id: int = 0  # 0 = not idempotent
    sequence: int = 0  # sequence number of the batch's first record
    reply_to: Any = None


@dataclass(frozen=True)
class ProduceReply:
    shard: str
    client: str
    req_id: int
    status: str  # ok | fail | unknown
    base_offset: int = -1
    level: str = ""
    leader: str | None = None
    epoch: int = 0
    error: str = ""
    duplicate: bool = False


@dataclass(frozen=True)
class Push(Brief):
    """Leader -> follower: batches starting at ``prev_end`` (the follower's
    log must end there with a batch of epoch ``prev_epoch``)."""

    shard: str
    frm: str
    to: str
    epoch: int
    prev_end: int
    prev_epoch: int
    batches: tuple[bytes, ...]
    hw: int


@dataclass(frozen=True)
class PushAck:
    shard: str
    frm: str
    to: str
    epoch: int
    success: bool
    end: int  # on success: synced end offset matching the leader; on reject: hint
    prev_end: int = 0  # the push this answers (to ignore stale rejects)


@dataclass(frozen=True)
class Fence:
    """Supervisor -> replica: adopt ``epoch`` with no leader; stop accepting
    older epochs; report the log position."""

    shard: str
    epoch: int
    reply_to: Any = None


@dataclass(frozen=True)
class Position:
    shard: str
    node: str
    epoch: int  # the epoch the replica now holds (>= the fence's)
    last_epoch: int  # epoch of its last batch
    end: int


GROUP_CLOSED = "shard group closed"  # how a ProduceReply's error starts when the shard's group is closed


@dataclass(frozen=True)
class GroupClose:
    """Node -> its replica: the shard's group closes at ``until_ms`` (wall
    clock ms; truncate-shards closes it early).  The leader refuses writes
    from then on."""

    shard: str
    until_ms: int


@dataclass(frozen=True)
class Assign:
    """Supervisor -> replica: for ``epoch`` the leader is ``leader``.  Sent
    only after the agency committed it."""

    shard: str
    epoch: int
    leader: str
    replicas: tuple[str, ...]
    learners: tuple[str, ...] = ()  # replicas that copy the log but do not count (a move's target)


@dataclass(frozen=True)
class Handover:
    """Supervisor -> leader of ``epoch``: a move takes your leadership to
    ``to``.  Stop appending (persisted: a restart does not lift it), and
    answer ``HandoverReady`` once ``to`` holds your whole log.  Lifted only
    by a newer epoch (the handover, or the supervisor calling it off with
    an epoch bump that keeps this leader)."""

    shard: str
    epoch: int
    to: str
    reply_to: Any = None


@dataclass(frozen=True)
class HandoverReady:
    shard: str
    node: str
    epoch: int
    to: str
    end: int  # the leader's (frozen) end offset, all of it on ``to``


@dataclass(frozen=True)
class ReadShard:
    shard: str
    client: str
    req_id: int
    from_offset: int
    max_bytes: int = 1 << 20
    reply_to: Any = None


@dataclass(frozen=True)
class ReadShardReply(Brief):
    shard: str
    client: str
    req_id: int
    status: str
    batches: tuple[bytes, ...] = ()
    hw: int = 0
    leader: str | None = None
    error: str = ""


@dataclass(frozen=True)
class ShardStatus:
    pass


@dataclass(frozen=True)
class ShardStatusReply:
    shard: str
    node: str
    status: dict


@dataclass(frozen=True)
class ShardBugs:
    """Deliberately broken replication, for proving the simulator catches it."""

    hw_before_quorum: bool = False  # advance the high watermark on the leader's own sync
    accept_stale_epoch: bool = False  # a follower takes pushes from an older epoch
    no_truncation: bool = False  # a follower keeps a divergent suffix
    promote_without_precondition: bool = False  # the supervisor promotes without the epoch check
    hh_ack_before_sync: bool = False  # hinted handoff acknowledges a hint without syncing it
    hh_drain_newest_first: bool = False  # hinted handoff drains a shard's queue from its newest hint
    hh_forget_sequence: bool = False  # hinted handoff drains without the producer id and sequence
    query_drops_ties: bool = False  # a history query's next page skips records tied with the last one's timestamp
    move_remove_before_sync: bool = False  # a move swaps the source for the target before the target caught up
    move_same_epoch: bool = False  # a leader move changes the leader within the epoch (no new epoch, no handover)
    drop_group_early: bool = False  # the supervisor drops a shard group half its retention early
    write_closed_group: bool = False  # a shard's leader takes writes after its shard group closed
    skip_next_group: bool = False  # a consumer done with a group's shard skips the next group (actors/group_walk.py)
    reset_to_newest: bool = False  # a consumer whose shard was dropped moves to the newest group, not the oldest left

    def any(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class ShardTuning:
    """Limits and timing of shard replication (units in the names)."""

    tick_ms: int = 50
    push_batches_max: int = 64
    push_bytes_max: int = 1 << 20
    inflight_max: int = 4
    isr_timeout_s: float = 1.0
    request_timeout_s: float = 5.0
    producers_max: int = 10_000
    pending_max: int = 10_000
    group_commit_ms: float = 0.0  # 0: sync each produce at once; >0: one sync for all appends in this window
    state_interval_ms: int = 150  # each replica reports its state to every supervisor this often
    # hinted handoff on the coordinating node (level any; actors/hinted_handoff.py)
    hh_bytes_max: int = 64 << 20  # queued batch bytes per node; the oldest hints are dropped beyond
    hh_age_max_s: float = 3600.0  # hints older than this are dropped
    hh_drain_bytes_per_s: float = 8 << 20  # drain rate per node
    hh_direct_timeout_s: float = 1.0  # a write the leader has not answered this long becomes a hint
    move_bytes_per_s: float = 32 << 20  # a leader copies its log to a move's target (a learner) at most this fast
    bugs: ShardBugs = ShardBugs()


@dataclass(frozen=True)
class ReplicaState:
    shard: str
    node: str
    epoch: int
    role: str
    leader: str | None
    last_epoch: int
    end: int
    hw: int
    epoch_start: int = 0  # a leader: where its epoch began (hw above it: it committed in this epoch)
    handing_over: str = ""  # a leader frozen for a move: the target
    log_bytes: int = -1  # about how many bytes the log takes on disk (-1: not measured)


@dataclass(frozen=True)
class SupervisorsAre:
    """Tells a replica where to report its state (``replace``: these are
    all of them, forget the others -- e.g. a restarted node's old ones)."""

    addresses: tuple[Any, ...]
    replace: bool = False


@dataclass(frozen=True)
class SupervisorBoot:
    """Boots a node's Supervisor (actors/supervisor.py)."""

    node_id: str
    agency: Any  # address of the local RaftPeer
    supervisors: tuple[tuple[str, Any], ...] = ()  # every node's supervisor
    nodes: tuple[str, ...] = ()  # every node of the cluster
    grace_s: float = 0.6
    replace_after_s: float = 5.0
    bugs: ShardBugs = ShardBugs()
    host: Any = None
