"""Sans-IO Raft core for the agency.

``RaftCore`` is a plain class.  Input is a message (``step``), a clock tick
(``tick``) or a local request (``propose``, ``read_index``,
``propose_config``, ``compact``); every call returns a :class:`Ready`
describing, in order, what the host must do:

1. persist ``hard_state`` (term, vote), ``snapshot`` and the log suffix
   starting at ``entries_from`` (deleting any stored entries after
   ``last_index``), and **sync** -- before anything else;
2. send ``messages``;
3. apply ``committed`` entries to the state machine (and restore
   ``restore`` snapshot data first, when set);
4. serve ``read_states`` once the state machine has applied their index;
5. record ``records`` for checkers and logs.

The core never looks at a clock: time is ``tick()`` calls, and safety never
depends on them.  Randomness (election timeouts) comes from an injected RNG.

Features (after the Raft dissertation and etcd's raft):

* leader election with **PreVote** (a partitioned peer does not inflate
  terms) and **CheckQuorum** (a leader that has not heard from a quorum for
  an election timeout steps down; followers that heard from a leader within
  the minimum election timeout ignore vote requests -- the leader lease that
  keeps a returning minority from disrupting the majority);
* log replication with batching (``max_batch_entries``, ``max_batch_bytes``)
  and flow control (probe / replicate states, ``max_inflight`` windows);
* commit only of entries of the current term by counting replicas (earlier
  terms commit indirectly) -- Figure 8 of the Raft paper;
* log compaction with snapshots and InstallSnapshot for lagging peers;
* single-server membership changes: add/remove voter, add learner; the new
  configuration takes effect when appended, only one may be uncommitted,
  and only after the leader committed an entry of its own term;
* linearizable reads by ReadIndex: the leader confirms its leadership with
  a heartbeat round acknowledged by a quorum (no clock assumption).

``RaftBugs`` switches on deliberately broken behaviour so that tests can
prove the simulator finds it.  Never enable them outside tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.raft import (
    ENTRY_COMMAND,
    ENTRY_CONFIG,
    ENTRY_NOOP,
    AppendEntries,
    AppendResp,
    ClusterConfig,
    Entry,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    RequestVote,
    RaftTuning,
    RequestVoteResp,
    SnapshotMeta,
)

FOLLOWER = "follower"
PRECANDIDATE = "precandidate"
CANDIDATE = "candidate"
LEADER = "leader"

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"


@dataclass
class Ready:
    """Effects of one input, to be carried out by the host in field order."""

    hard_state: tuple[int, str | None] | None = None
    snapshot: tuple[SnapshotMeta, bytes] | None = None
    entries_from: int | None = None  # persist log[entries_from..last_index]
    entries: list[Entry] = field(default_factory=list)
    last_index: int = 0  # stored entries after this index must be deleted
    compacted_to: int | None = None  # stored entries <= this may be deleted
    messages: list[Any] = field(default_factory=list)
    restore: tuple[SnapshotMeta, bytes] | None = None
    committed: list[Entry] = field(default_factory=list)
    read_states: list[tuple[Any, int]] = field(default_factory=list)
    records: list[tuple[str, dict]] = field(default_factory=list)
    lost_leadership: bool = False

    def needs_persist(self) -> bool:
        return (
            self.hard_state is not None
            or self.snapshot is not None
            or self.entries_from is not None
            or self.compacted_to is not None
        )

    def empty(self) -> bool:
        return not (
            self.needs_persist()
            or self.messages
            or self.restore
            or self.committed
            or self.read_states
            or self.records
            or self.lost_leadership
        )


@dataclass
class Progress:
    match: int = 0
    next: int = 1
    state: str = PROBE
    probe_sent: bool = False
    inflight: list[int] = field(default_factory=list)  # last index of each batch in flight
    recent_active: bool = False
    pending_snapshot: int = 0
    hb_match: int = -1  # match seen at the previous heartbeat response


@dataclass
class _ReadRequest:
    ctx: Any
    index: int
    round: int
    acks: set[str]


def entry_digest(entry: Entry) -> int:
    """A short, stable fingerprint of an entry (for checkers)."""
    import zlib

    return zlib.crc32(bytes([entry.kind]) + entry.data)


class RaftCore:
    """One Raft peer's protocol state machine.  See the module docstring."""

    def __init__(
        self,
        node_id: str,
        rng: Any,
        tuning: RaftTuning | None = None,
        *,
        term: int = 0,
        vote: str | None = None,
        snapshot: SnapshotMeta | None = None,
        snapshot_data: bytes = b"",
        entries: list[Entry] | None = None,
    ) -> None:
        self.id = node_id
        self.rng = rng
        self.tuning = tuning or RaftTuning()
        self.bugs = self.tuning.bugs
        # persistent
        self.term = term
        self.vote = vote
        self.snap = snapshot or SnapshotMeta()
        self.snap_data = snapshot_data
        self.log: list[Entry] = list(entries or [])
        # volatile
        self.commit = self.snap.index
        self.applied = self.snap.index
        self.role = FOLLOWER
        self.leader: str | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._draw_timeout()
        self.votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self.read_round = 0
        self.pending_reads: list[_ReadRequest] = []
        self.config = self._config_from_log()
        self._ready = Ready()
        self._hs_dirty = False
        self._unstable_from: int | None = None
        self._restore_pending = False
        if self.log and self.log[0].index != self.snap.index + 1:
            raise ValueError("log does not start right after the snapshot")

    # ------------------------------------------------------------------ log
    @property
    def last_index(self) -> int:
        return self.log[-1].index if self.log else self.snap.index

    @property
    def last_term(self) -> int:
        return self.log[-1].term if self.log else self.snap.term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at index; None if unknown (compacted or beyond)."""
        if index == self.snap.index:
            return self.snap.term
        off = index - self.snap.index - 1
        if 0 <= off < len(self.log):
            return self.log[off].term
        return None

    def entry(self, index: int) -> Entry:
        return self.log[index - self.snap.index - 1]

    def entries_between(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index <= hi (all present)."""
        base = self.snap.index + 1
        return self.log[lo - base : hi - base + 1]

    def _config_from_log(self) -> ClusterConfig:
        for e in reversed(self.log):
            if e.kind == ENTRY_CONFIG:
                return decode_config(e.data)
        return self.snap.config

    def _config_at(self, index: int) -> ClusterConfig:
        for e in reversed(self.log):
            if e.index <= index and e.kind == ENTRY_CONFIG:
                return decode_config(e.data)
        return self.snap.config

    def _mark_unstable(self, index: int) -> None:
        if self._unstable_from is None or index < self._unstable_from:
            self._unstable_from = index

    def _append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self._mark_unstable(entries[0].index)
        self.log.extend(entries)
        if any(e.kind == ENTRY_CONFIG for e in entries):
            self._set_config(self._config_from_log())

    def _truncate_after(self, index: int) -> None:
        if index < self.commit:
            raise AssertionError(
                f"{self.id}: refusing to truncate committed entries (after {index}, commit {self.commit})"
            )
        keep = index - self.snap.index
        removed = self.log[keep:]
        del self.log[keep:]
        self._mark_unstable(index + 1)
        if any(e.kind == ENTRY_CONFIG for e in removed):
            self._set_config(self._config_from_log())

    # ------------------------------------------------------------- helpers
    def _draw_timeout(self) -> int:
        et = self.tuning.election_ticks
        return et + self.rng.randrange(et)

    def quorum(self) -> int:
        return len(self.config.voters) // 2 + 1

    def is_voter(self) -> bool:
        return self.id in self.config.voters

    def _send(self, msg: Any) -> None:
        self._ready.messages.append(msg)

    def _record(self, kind: str, **fields: Any) -> None:
        self._ready.records.append((kind, fields))

    def _set_term(self, term: int, vote: str | None) -> None:
        if term != self.term or vote != self.vote:
            self.term = term
            self.vote = vote
            self._hs_dirty = True

    def _set_config(self, config: ClusterConfig) -> None:
        self.config = config
        if self.role == LEADER:
            for peer in config.members():
                if peer != self.id and peer not in self.progress:
                    self.progress[peer] = Progress(next=self.last_index + 1)
            for peer in list(self.progress):
                if peer not in config.members():
                    del self.progress[peer]

    def _reset(self, term: int) -> None:
        if term != self.term:
            self._set_term(term, None)
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._draw_timeout()
        self.votes = {}
        self.progress = {}
        self._fail_reads()

    def _fail_reads(self) -> None:
        if self.pending_reads:
            self.pending_reads = []

    def _become_follower(self, term: int, leader: str | None) -> None:
        was_leader = self.role == LEADER
        self._reset(term)
        self.role = FOLLOWER
        self.leader = leader
        if was_leader:
            self._ready.lost_leadership = True
        self._record("raft.role", peer=self.id, term=self.term, role=FOLLOWER, leader=leader)

    def _become_precandidate(self) -> None:
        # PreVote: do not touch term or vote.
        self.role = PRECANDIDATE
        self.votes = {}
        self.leader = None
        self.election_elapsed = 0
        self.randomized_timeout = self._draw_timeout()
        self._record("raft.role", peer=self.id, term=self.term, role=PRECANDIDATE, leader=None)

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self._set_term(self.term, self.id)
        self.role = CANDIDATE
        self._record("raft.role", peer=self.id, term=self.term, role=CANDIDATE, leader=None)

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = LEADER
        self.leader = self.id
        last = self.last_index
        for peer in self.config.members():
            if peer != self.id:
                self.progress[peer] = Progress(next=last + 1)
        self._append([Entry(self.term, last + 1, ENTRY_NOOP)])
        self._record(
            "raft.leader",
            peer=self.id,
            term=self.term,
            snapshot_index=self.snap.index,
            snapshot_term=self.snap.term,
            log=tuple((e.index, e.term, entry_digest(e)) for e in self.log),
        )
        self._record("raft.role", peer=self.id, term=self.term, role=LEADER, leader=self.id)
        self._broadcast_append()
        self._maybe_commit()

    # ------------------------------------------------------------ elections
    def _campaign(self, pre: bool) -> None:
        if pre:
            self._become_precandidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally() >= self.quorum():
            self._won(pre)
            return
        for peer in self.config.voters:
            if peer != self.id:
                self._send(RequestVote(self.id, peer, term, self.last_index, self.last_term, pre))

    def _tally(self) -> int:
        return sum(1 for p, v in self.votes.items() if v and p in self.config.voters)

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False)
        else:
            self._become_leader()

    def _log_up_to_date(self, last_index: int, last_term: int) -> bool:
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def _in_lease(self) -> bool:
        return (
            self.tuning.check_quorum
            and self.leader is not None
            and self.election_elapsed < self.tuning.election_ticks
        )

    # ------------------------------------------------------------------ tick
    def tick(self) -> Ready:
        if self.role == LEADER:
            self._tick_leader()
        else:
            self._tick_election()
        return self._take_ready()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self.is_voter():
            self.election_elapsed = 0
            self._campaign(pre=self.tuning.pre_vote)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.tuning.election_ticks:
            self.election_elapsed = 0
            if self.tuning.check_quorum and not self._quorum_active():
                self._record("raft.step_down", peer=self.id, term=self.term, reason="check_quorum")
                self._become_follower(self.term, None)
                return
        if self.heartbeat_elapsed >= self.tuning.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self.read_round)

    def _quorum_active(self) -> bool:
        active = 1 if self.is_voter() else 0
        for peer, pr in self.progress.items():
            if pr.recent_active and peer in self.config.voters:
                active += 1
            pr.recent_active = False
        return active >= self.quorum()

    # ------------------------------------------------------------------ step
    def step(self, m: Any) -> Ready:
        if m.to != self.id:
            return self._take_ready()
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if self._in_lease():
                    return self._take_ready()  # leader lease: ignore disruptive candidates
                if m.pre:
                    self._handle_vote(m)
                    return self._take_ready()
                self._become_follower(m.term, None)
            elif isinstance(m, RequestVoteResp) and m.pre and m.granted:
                pass  # a pre-vote grant carries the future term; keep ours
            else:
                leader = m.frm if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)) else None
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            if isinstance(m, (AppendEntries, Heartbeat)) or (isinstance(m, RequestVote) and m.pre):
                # Tell a stale leader or pre-candidate about the newer term.
                if isinstance(m, RequestVote):
                    self._send(RequestVoteResp(self.id, m.frm, self.term, False, True))
                else:
                    self._send(AppendResp(self.id, m.frm, self.term, False, 0, 0))
            return self._take_ready()

        handler = _HANDLERS.get(type(m))
        if handler is not None:
            handler(self, m)
        return self._take_ready()

    def _handle_vote(self, m: RequestVote) -> None:
        up_to_date = self._log_up_to_date(m.last_index, m.last_term)
        if m.pre:
            grant = up_to_date and m.term > self.term and not self._in_lease()
            self._send(RequestVoteResp(self.id, m.frm, m.term if grant else self.term, grant, True))
            return
        can_vote = self.vote is None or self.vote == m.frm or self.bugs.double_vote
        if can_vote and up_to_date and self.role != LEADER:
            self._set_term(self.term, m.frm)
            self.election_elapsed = 0
            self._send(RequestVoteResp(self.id, m.frm, self.term, True, False))
        else:
            self._send(RequestVoteResp(self.id, m.frm, self.term, False, False))

    def _on_vote_resp(self, m: RequestVoteResp) -> None:
        if m.pre and self.role != PRECANDIDATE:
            return
        if not m.pre and self.role != CANDIDATE:
            return
        if m.pre and m.term != self.term + 1 and m.granted:
            return
        self.votes[m.frm] = m.granted
        granted = self._tally()
        rejected = sum(1 for p, v in self.votes.items() if not v and p in self.config.voters)
        if granted >= self.quorum():
            self._won(m.pre)
        elif rejected >= self.quorum():
            self._become_follower(self.term, None)

    # --------------------------------------------------------- replication
    def _on_append(self, m: AppendEntries) -> None:
        if self.role != FOLLOWER:
            self._become_follower(m.term, m.frm)
        self.leader = m.frm
        self.election_elapsed = 0
        if m.prev_index < self.commit:
            # Everything up to commit matches; the leader will resend the rest.
            self._send(AppendResp(self.id, m.frm, self.term, True, self.commit))
            return
        prev_term = self.term_at(m.prev_index)
        if prev_term is None or prev_term != m.prev_term:
            self._send(AppendResp(self.id, m.frm, self.term, False, m.prev_index, self._hint(m.prev_index)))
            return
        new: list[Entry] = []
        for i, e in enumerate(m.entries):
            t = self.term_at(e.index)
            if t is None:
                new = list(m.entries[i:])
                break
            if t != e.term:
                self._truncate_after(e.index - 1)
                new = list(m.entries[i:])
                break
        self._append(new)
        last_new = m.prev_index + len(m.entries)
        self._advance_commit_to(min(m.commit, last_new))
        self._send(AppendResp(self.id, m.frm, self.term, True, last_new))

    def _hint(self, prev_index: int) -> int:
        """Where the leader should probe next after a rejected append."""
        if prev_index > self.last_index:
            return self.last_index
        t = self.term_at(prev_index)
        i = prev_index
        # skip back over the whole conflicting term
        while i > self.snap.index and self.term_at(i - 1) == t:
            i -= 1
        return max(i - 1, self.commit)

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if self.role != FOLLOWER:
            self._become_follower(m.term, m.frm)
        self.leader = m.frm
        self.election_elapsed = 0
        self._advance_commit_to(min(m.commit, self.last_index))
        self._send(HeartbeatResp(self.id, m.frm, self.term, m.ctx, self.last_index))

    def _on_snapshot(self, m: InstallSnapshot) -> None:
        if self.role != FOLLOWER:
            self._become_follower(m.term, m.frm)
        self.leader = m.frm
        self.election_elapsed = 0
        meta = m.meta
        if meta.index <= self.commit:
            self._send(InstallSnapshotResp(self.id, m.frm, self.term, self.commit))
            return
        if self.term_at(meta.index) == meta.term:
            # We hold the snapshot's last entry: just commit up to it.
            self._advance_commit_to(meta.index)
            self._send(InstallSnapshotResp(self.id, m.frm, self.term, meta.index))
            return
        self.snap = meta
        self.snap_data = m.data
        self.log = []
        self.commit = meta.index
        self.applied = meta.index
        self._set_config(self._config_from_log())
        self._ready.snapshot = (meta, m.data)
        self._ready.restore = (meta, m.data)
        self._unstable_from = None
        self._ready.last_index = meta.index
        self._ready.compacted_to = meta.index
        self._record("raft.snapshot_install", peer=self.id, index=meta.index, term=meta.term)
        self._send(InstallSnapshotResp(self.id, m.frm, self.term, meta.index))

    def _on_append_resp(self, m: AppendResp) -> None:
        if self.role != LEADER:
            return
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if m.success:
            if m.index < pr.match:
                return  # stale
            if m.index > pr.match:
                pr.match = m.index
                pr.next = max(pr.next, m.index + 1)
                pr.inflight = [i for i in pr.inflight if i > m.index]
                self._maybe_commit()
                self._serve_reads()
                if self.role != LEADER:
                    return
            if pr.state == PROBE:
                pr.state = REPLICATE
                pr.next = pr.match + 1
                pr.inflight = []
            pr.probe_sent = False
            if pr.next <= self.last_index:
                self._send_append(m.frm)
        else:
            # Ignore stale rejections: in replicate state a reject at or below
            # the match index; in probe state any reject but the one probed.
            if pr.state == SNAPSHOT or m.index <= pr.match:
                return
            if pr.state == PROBE and m.index != pr.next - 1:
                return
            pr.state = PROBE
            pr.inflight = []
            pr.probe_sent = False
            pr.next = max(pr.match + 1, min(m.index, m.hint + 1))
            self._send_append(m.frm)

    def _on_snapshot_resp(self, m: InstallSnapshotResp) -> None:
        if self.role != LEADER:
            return
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.match = max(pr.match, m.index)
        pr.next = pr.match + 1
        pr.state = PROBE
        pr.probe_sent = False
        pr.inflight = []
        self._maybe_commit()
        self._send_append(m.frm)

    def _on_heartbeat_resp(self, m: HeartbeatResp) -> None:
        if self.role != LEADER:
            return
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if pr.match < self.last_index:
            stalled = pr.match == pr.hb_match
            if pr.state == REPLICATE and (stalled or len(pr.inflight) >= self.tuning.max_inflight):
                # No progress over a whole heartbeat round (or a window that
                # never drains) means a lost batch: re-probe from the match.
                pr.state = PROBE
                pr.next = pr.match + 1
                pr.inflight = []
            pr.probe_sent = False
            if pr.state == SNAPSHOT:
                pr.state = PROBE
                pr.next = pr.match + 1
            self._send_append(m.frm)
        pr.hb_match = pr.match
        if m.frm in self.config.voters:
            for rr in self.pending_reads:
                if m.ctx >= rr.round:
                    rr.acks.add(m.frm)
            self._serve_reads()

    def _broadcast_append(self) -> None:
        for peer in list(self.progress):
            self._send_append(peer)

    def _broadcast_heartbeat(self, ctx: int) -> None:
        for peer, pr in self.progress.items():
            self._send(Heartbeat(self.id, peer, self.term, min(pr.match, self.commit), ctx))

    def _send_append(self, peer: str) -> None:
        pr = self.progress[peer]
        if pr.state == PROBE and pr.probe_sent:
            return
        if pr.state == REPLICATE and len(pr.inflight) >= self.tuning.max_inflight:
            return
        if pr.state == SNAPSHOT:
            return
        prev = pr.next - 1
        prev_term = self.term_at(prev)
        if prev_term is None or prev < self.snap.index:
            self._send_snapshot(peer, pr)
            return
        entries = self._batch(pr.next)
        if not entries and pr.state == REPLICATE:
            return
        self._send(AppendEntries(self.id, peer, self.term, prev, prev_term, tuple(entries), self.commit))
        if pr.state == PROBE:
            pr.probe_sent = True
        elif entries:
            last = entries[-1].index
            pr.next = last + 1
            pr.inflight.append(last)
            if len(pr.inflight) < self.tuning.max_inflight and pr.next <= self.last_index:
                self._send_append(peer)

    def _batch(self, start: int) -> list[Entry]:
        if start > self.last_index:
            return []
        hi = min(self.last_index, start + self.tuning.max_batch_entries - 1)
        out = self.entries_between(start, hi)
        size = 0
        for n, e in enumerate(out):
            size += len(e.data) + 32
            if size > self.tuning.max_batch_bytes and n > 0:
                return out[:n]
        return out

    def _send_snapshot(self, peer: str, pr: Progress) -> None:
        pr.state = SNAPSHOT
        pr.pending_snapshot = self.snap.index
        self._send(InstallSnapshot(self.id, peer, self.term, self.snap, self.snap_data))

    def _maybe_commit(self) -> None:
        if self.role != LEADER:
            return
        matches = sorted(
            [pr.match for p, pr in self.progress.items() if p in self.config.voters]
            + ([self.last_index] if self.is_voter() else []),
            reverse=True,
        )
        q = self.quorum()
        if len(matches) < q:
            return
        candidate = matches[q - 1]
        if candidate <= self.commit:
            return
        if self.term_at(candidate) != self.term and not self.bugs.commit_old_terms:
            return  # Figure 8: only entries of the current term commit by counting
        self._advance_commit_to(candidate)
        self._serve_reads()
        if self.role == LEADER and not self.is_voter() and self._config_committed():
            self._record("raft.step_down", peer=self.id, term=self.term, reason="removed")
            self._become_follower(self.term, None)

    def _config_committed(self) -> bool:
        return all(e.kind != ENTRY_CONFIG for e in self.entries_between(self.commit + 1, self.last_index))

    def _advance_commit_to(self, index: int) -> None:
        if index <= self.commit:
            return
        old = self.commit
        self.commit = index
        for e in self.entries_between(old + 1, index):
            self._record(
                "raft.commit",
                peer=self.id,
                index=e.index,
                term=e.term,
                digest=entry_digest(e),
                current_term=self.term,
            )

    # --------------------------------------------------------- local input
    def propose(self, data: bytes) -> tuple[int, int] | None:
        """Append a command; returns (index, term) or None if not leader."""
        if self.role != LEADER:
            return None
        e = Entry(self.term, self.last_index + 1, ENTRY_COMMAND, data)
        self._append([e])
        self._broadcast_append()
        self._maybe_commit()
        return e.index, e.term

    def propose_config(self, config: ClusterConfig) -> tuple[int, int] | str:
        """Propose a single-server membership change; returns (index, term)
        or an error string."""
        if self.role != LEADER:
            return "not leader"
        if self.term_at(self.commit) != self.term:
            return "leader has not committed an entry of its term yet"
        if not self._config_committed():
            return "another membership change is in progress"
        old = self.config
        changed = (set(old.voters) ^ set(config.voters)) | (set(old.learners) ^ set(config.learners))
        if len(set(old.voters) ^ set(config.voters)) > 1:
            return "only one voter may be added or removed at a time"
        if not changed:
            return "configuration unchanged"
        if not config.voters:
            return "a configuration needs at least one voter"
        e = Entry(self.term, self.last_index + 1, ENTRY_CONFIG, encode_config(config))
        self._append([e])
        self._broadcast_append()
        self._maybe_commit()
        return e.index, e.term

    def read_index(self, ctx: Any) -> bool:
        """Start a linearizable read; the result appears in a later Ready's
        read_states as (ctx, index).  False if this peer cannot serve it."""
        if self.role != LEADER or self.term_at(self.commit) != self.term:
            return False
        self.read_round += 1
        rr = _ReadRequest(ctx, self.commit, self.read_round, {self.id} if self.is_voter() else set())
        self.pending_reads.append(rr)
        if len(rr.acks) >= self.quorum():
            self._serve_reads()
        else:
            self._broadcast_heartbeat(self.read_round)
        return True

    def _serve_reads(self) -> None:
        q = self.quorum()
        keep = []
        for rr in self.pending_reads:
            if len(rr.acks & set(self.config.voters)) >= q:
                self._ready.read_states.append((rr.ctx, rr.index))
            else:
                keep.append(rr)
        self.pending_reads = keep

    def compact(self, index: int, data: bytes) -> Ready:
        """The host took a state-machine snapshot covering entries <= index."""
        if index <= self.snap.index or index > self.applied:
            return self._take_ready()
        term = self.term_at(index)
        assert term is not None
        meta = SnapshotMeta(index, term, self._config_at(index))
        self.log = self.log[index - self.snap.index :]
        self.snap = meta
        self.snap_data = data
        self._ready.snapshot = (meta, data)
        self._ready.compacted_to = index
        self._record("raft.compact", peer=self.id, index=index, term=term)
        return self._take_ready()

    def ready(self) -> Ready:
        """Effects accumulated by local calls (propose, read_index, ...)."""
        return self._take_ready()

    # --------------------------------------------------------------- ready
    def _take_ready(self) -> Ready:
        rd = self._ready
        self._ready = Ready()
        if self._hs_dirty:
            rd.hard_state = (self.term, self.vote)
            self._hs_dirty = False
        if self._unstable_from is not None:
            rd.entries_from = self._unstable_from
            rd.entries = self.entries_between(max(self._unstable_from, self.snap.index + 1), self.last_index)
            self._unstable_from = None
        rd.last_index = self.last_index
        if self.applied < self.commit:
            rd.committed = self.entries_between(self.applied + 1, self.commit)
            self.applied = self.commit
        return rd

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "term": self.term,
            "leader": self.leader,
            "commit": self.commit,
            "applied": self.applied,
            "last_index": self.last_index,
            "snapshot_index": self.snap.index,
            "voters": list(self.config.voters),
            "learners": list(self.config.learners),
        }


def encode_config(config: ClusterConfig) -> bytes:
    return ("v=" + ",".join(sorted(config.voters)) + ";l=" + ",".join(sorted(config.learners))).encode()


def decode_config(data: bytes) -> ClusterConfig:
    text = data.decode()
    parts = dict(p.split("=", 1) for p in text.split(";"))
    voters = tuple(x for x in parts.get("v", "").split(",") if x)
    learners = tuple(x for x in parts.get("l", "").split(",") if x)
    return ClusterConfig(voters, learners)


_HANDLERS = {
    RequestVote: RaftCore._handle_vote,
    RequestVoteResp: RaftCore._on_vote_resp,
    AppendEntries: RaftCore._on_append,
    AppendResp: RaftCore._on_append_resp,
    Heartbeat: RaftCore._on_heartbeat,
    HeartbeatResp: RaftCore._on_heartbeat_resp,
    InstallSnapshot: RaftCore._on_snapshot,
    InstallSnapshotResp: RaftCore._on_snapshot_resp,
}
