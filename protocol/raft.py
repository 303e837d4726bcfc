"""Messages exchanged between Raft peers of the agency.

Every message is a small frozen dataclass carrying the sender and receiver
node ids (peers are identified by node id, never by ActorAddress) and the
sender's term.  They may be lost, duplicated, delayed or reordered; the
core tolerates all of it.

Versioning: ``RAFT_WIRE_VERSION`` is bumped whenever a field changes
meaning; peers include it in ``RequestVote`` so mixed-version clusters are
detectable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.brief import Brief

RAFT_WIRE_VERSION = 1

# Entry kinds.
ENTRY_NOOP = 0
ENTRY_COMMAND = 1
ENTRY_CONFIG = 2


@dataclass(frozen=True)
class Entry:
    term: int
    index: int
    kind: int
    data: bytes = b""


@dataclass(frozen=True)
class ClusterConfig:
    """Voting members and learners, by node id (sorted tuples)."""

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()

    def members(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.voters) | set(self.learners)))


@dataclass(frozen=True)
class RaftBugs:
    """Deliberate safety bugs, for proving the simulator catches them."""

    double_vote: bool = False  # grant a vote to every candidate of a term
    commit_old_terms: bool = False  # count replicas for entries of earlier terms
    ack_before_sync: bool = False  # (host side) acknowledge appends without syncing

    def any(self) -> bool:
        return self.double_vote or self.commit_old_terms or self.ack_before_sync


@dataclass(frozen=True)
class RaftTuning:
    """Timing and limits, in ticks and counts.  Defaults: tick 50 ms,
    heartbeat every 100 ms, election timeout 500-1000 ms."""

    tick_ms: int = 50
    heartbeat_ticks: int = 2
    election_ticks: int = 10
    pre_vote: bool = True
    check_quorum: bool = True
    max_batch_entries: int = 256
    max_batch_bytes: int = 1 << 20
    max_inflight: int = 4
    snapshot_threshold_entries: int = 2000
    snapshot_keep_entries: int = 200
    bugs: RaftBugs = field(default_factory=RaftBugs)

    def __post_init__(self) -> None:
        if self.tick_ms <= 0:
            raise ValueError("tick_ms must be positive")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if self.max_batch_entries <= 0 or self.max_inflight <= 0 or self.max_batch_bytes <= 0:
            raise ValueError("batch and inflight limits must be positive")


@dataclass(frozen=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    config: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass(frozen=True)
class RequestVote:
    frm: str
    to: str
    term: int
    last_index: int
    last_term: int
    pre: bool = False
    version: int = RAFT_WIRE_VERSION


@dataclass(frozen=True)
class RequestVoteResp:
    frm: str
    to: str
    term: int
    granted: bool
    pre: bool = False


@dataclass(frozen=True)
class AppendEntries(Brief):
    frm: str
    to: str
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True)
class AppendResp:
    frm: str
    to: str
    term: int
    success: bool
    # On success: the highest index known to match the leader.
    # On reject: the prev_index that was rejected (to ignore stale rejects).
    index: int
    # On reject: the follower's hint for where the logs may agree.
    hint: int = 0


@dataclass(frozen=True)
class Heartbeat:
    frm: str
    to: str
    term: int
    commit: int
    ctx: int  # read-index round, echoed back


@dataclass(frozen=True)
class HeartbeatResp:
    frm: str
    to: str
    term: int
    ctx: int
    last_index: int


@dataclass(frozen=True)
class InstallSnapshot(Brief):
    frm: str
    to: str
    term: int
    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True)
class InstallSnapshotResp:
    frm: str
    to: str
    term: int
    index: int


RaftMessage = (
    RequestVote
    | RequestVoteResp
    | AppendEntries
    | AppendResp
    | Heartbeat
    | HeartbeatResp
    | InstallSnapshot
    | InstallSnapshotResp
)


@dataclass(frozen=True)
class RaftBoot:
    """First message to a RaftPeer (and again after every restart).

    ``peers`` is the address book (node id, ActorAddress) of the other peers
    known at boot; ``voters``/``learners`` the initial configuration used
    only when the peer has no stored state (a brand-new cluster).  A peer
    joining an existing cluster boots with empty voters and is added by a
    MembershipChange on the leader."""

    node_id: str
    peers: tuple[tuple[str, Any], ...]
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    tuning: RaftTuning = field(default_factory=RaftTuning)
    host: Any = None  # protocol.host.HostConfig in production
    request_timeout_s: float = 5.0


@dataclass(frozen=True)
class Hello:
    """Sent by a peer at boot to every address it knows, so that others
    learn (or re-learn, after a restart) its address."""

    frm: str
