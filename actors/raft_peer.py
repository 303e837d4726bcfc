"""RaftPeer: the actor shell around RaftCore and the agency state machine.

The shell routes messages to the core and carries out its Ready in order:
persist (one write batch) and sync, send, restore/apply, serve reads, record.
It also owns the client side of the agency: proposals waiting for their
entry to be applied, ReadIndex reads waiting for the state machine, request
forwarding to the leader, watches, and membership changes.

Storage layout (one store named ``raft``):
  ``H``            term and vote
  ``S``            snapshot metadata (JSON) and ``D`` its state-machine data
  ``L`` + u64(i)   log entry i: u64 term, one byte kind, payload
"""
from __future__ import annotations

import json
from typing import Any

from actors.agency_sm import AgencyState, matches, normalize
from actors.base import ChorusActor
from actors.raft_core import LEADER, RaftCore, Ready, entry_digest
from protocol.agency import (
    FAIL,
    OK,
    UNKNOWN,
    AgencyReply,
    AgencyRequest,
    MembershipChange,
    Read,
    StatusQuery,
    StatusReply,
    Txn,
    Unwatch,
    Watch,
    WatchEvents,
    decode_txn,
    encode_txn,
)
from protocol.raft import (
    ENTRY_COMMAND,
    ClusterConfig,
    Entry,
    Hello,
    RaftBoot,
    SnapshotMeta,
)
from storage.base import WriteBatch

MAX_HOPS = 2
PENDING_MAX = 10_000
WATCHERS_MAX = 1_000
WATCH_BATCH_MAX = 1_000


def _log_key(index: int) -> bytes:
    return b"L" + index.to_bytes(8, "big")


def _encode_entry(e: Entry) -> bytes:
    return e.term.to_bytes(8, "big") + bytes([e.kind]) + e.data


def _decode_entry(index: int, raw: bytes) -> Entry:
    return Entry(int.from_bytes(raw[:8], "big"), index, raw[8], raw[9:])


def _encode_meta(meta: SnapshotMeta) -> bytes:
    return json.dumps(
        {"i": meta.index, "t": meta.term, "v": list(meta.config.voters), "l": list(meta.config.learners)}
    ).encode()


def _decode_meta(raw: bytes) -> SnapshotMeta:
    d = json.loads(raw)
    return SnapshotMeta(d["i"], d["t"], ClusterConfig(tuple(d["v"]), tuple(d["l"])))


class RaftPeer(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.core: RaftCore | None = None
        self.node_id = ""
        self.addrs: dict[str, Any] = {}
        self.gen = 0
        self.pending: dict[int, tuple[int, Any, str, int, float]] = {}
        self.reads: dict[int, tuple[Any, str, int, Read]] = {}
        self.waiting_reads: list[tuple[int, int]] = []  # (index, ctx)
        self.read_seq = 0
        self.watchers: dict[str, tuple[str, Any]] = {}
        self.forwarded: dict[tuple[str, int], tuple[Any, str | None, float]] = {}
        self.watch_from: dict[str, int] = {}  # watch id -> its from_revision
        self.stored_first = 1
        self.stored_last = 0

    # ---------------------------------------------------------------- boot
    def on_RaftBoot(self, msg: RaftBoot, sender: Any) -> None:
        for nid, addr in msg.peers:
            if nid != msg.node_id:
                self.addrs[nid] = addr
        if self.core is not None:
            return
        if msg.host is not None:
            self.adopt_host_config(msg.host)
        self.node_id = msg.node_id
        self.boot = msg
        self.store = self.open_store("raft")
        term, vote, meta, data, entries = self._load()
        if meta is None:
            meta = SnapshotMeta(0, 0, ClusterConfig(tuple(sorted(msg.voters)), tuple(sorted(msg.learners))))
            data = b""
            b = WriteBatch().put(b"S", _encode_meta(meta)).put(b"D", data)
            self.store.write(b)
            self.store.sync()
        self.sm = AgencyState.restore(data)
        self.core = RaftCore(
            self.node_id, self.rng, msg.tuning,
            term=term, vote=vote, snapshot=meta, snapshot_data=data, entries=entries,
        )
        self.stored_first = meta.index + 1
        self.stored_last = self.core.last_index
        self.record("raft.boot", peer=self.node_id, term=term, snapshot_index=meta.index,
                    last_index=self.core.last_index)
        for nid in sorted(self.addrs):
            self.send(self.addrs[nid], Hello(self.node_id))
        self._arm_tick()

    def _load(self) -> tuple[int, str | None, SnapshotMeta | None, bytes, list[Entry]]:
        term, vote = 0, None
        hs = self.store.get(b"H")
        if hs is not None:
            t, v = hs.decode().split(":", 1)
            term, vote = int(t), (v or None)
        raw_meta = self.store.get(b"S")
        meta = _decode_meta(raw_meta) if raw_meta is not None else None
        data = self.store.get(b"D") or b""
        entries = []
        first = (meta.index if meta else 0) + 1
        for k, v in self.store.scan(_log_key(first), b"M"):
            idx = int.from_bytes(k[1:], "big")
            if entries and idx != entries[-1].index + 1:
                break
            if not entries and idx != first:
                break
            entries.append(_decode_entry(idx, v))
        return term, vote, meta, data, entries

    def _arm_tick(self) -> None:
        self.gen += 1
        self.set_timer(self.core.tuning.tick_ms / 1000.0, ("tick", self.gen))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        payload = msg.payload
        if not (isinstance(payload, tuple) and payload[0] == "tick" and payload[1] == self.gen):
            return
        self._handle(self.core.tick())
        self._expire_pending()
        self._check_forwarded()
        self._arm_tick()

    def on_Hello(self, msg: Hello, sender: Any) -> None:
        self.addrs[msg.frm] = sender

    # ------------------------------------------------------- raft messages
    def _on_raft(self, msg: Any, sender: Any) -> None:
        if self.core is None:
            return
        if msg.frm not in self.addrs:
            self.addrs[msg.frm] = sender
        self._handle(self.core.step(msg))

    on_RequestVote = on_RequestVoteResp = on_AppendEntries = on_AppendResp = _on_raft
    on_Heartbeat = on_HeartbeatResp = on_InstallSnapshot = on_InstallSnapshotResp = _on_raft

    # ---------------------------------------------------------- the Ready
    def _handle(self, rd: Ready) -> None:
        if rd.needs_persist():
            self._persist(rd)
        for m in rd.messages:
            addr = self.addrs.get(m.to)
            if addr is not None:
                self.send(addr, m)
        if rd.restore is not None:
            covered = rd.restore[0].index
            for index in [i for i in self.pending if i <= covered]:
                self._answer_pending(self.pending.pop(index), UNKNOWN,
                                     "outcome covered by an installed snapshot")
            before = self.sm.revision
            self.sm = AgencyState.restore(rd.restore[1])
            if self.watchers:
                self._catch_up_watchers(before)
        if rd.committed:
            self._apply(rd.committed)
        if rd.read_states:
            for ctx, index in rd.read_states:
                self.waiting_reads.append((index, ctx))
        if self.waiting_reads:
            self._serve_reads()
        for kind, fields in rd.records:
            self.record(kind, **fields)
        if rd.lost_leadership:
            for ctx in list(self.reads):
                self._reply_read(ctx, FAIL, None, "leadership lost before the read was confirmed")
            self.waiting_reads = []
        self._maybe_compact()

    def _persist(self, rd: Ready) -> None:
        b = WriteBatch()
        if rd.hard_state is not None:
            term, vote = rd.hard_state
            b.put(b"H", f"{term}:{vote or ''}".encode())
        if rd.snapshot is not None:
            meta, data = rd.snapshot
            b.put(b"S", _encode_meta(meta)).put(b"D", data)
        if rd.compacted_to is not None:
            for i in range(self.stored_first, min(rd.compacted_to, self.stored_last) + 1):
                b.delete(_log_key(i))
            self.stored_first = max(self.stored_first, rd.compacted_to + 1)
        if rd.entries_from is not None:
            for i in range(max(rd.entries_from, self.stored_first), self.stored_last + 1):
                b.delete(_log_key(i))
            for e in rd.entries:
                b.put(_log_key(e.index), _encode_entry(e))
        if rd.entries_from is not None or rd.snapshot is not None:
            for i in range(max(rd.last_index + 1, self.stored_first), self.stored_last + 1):
                b.delete(_log_key(i))
            self.stored_last = rd.last_index
            if self.stored_last < self.stored_first - 1:
                self.stored_first = self.stored_last + 1
        self.store.write(b)
        bugs = self.core.tuning.bugs
        if bugs.ack_before_sync and rd.hard_state is None and rd.snapshot is None:
            return  # deliberate bug: appended entries acknowledged unsynced
        self.store.sync()

    def _apply(self, entries: list[Entry]) -> None:
        changed: list[tuple[int, str, Any]] = []
        for e in entries:
            result: Any = None
            if e.kind == ENTRY_COMMAND:
                try:
                    client, req_id, txn = decode_txn(e.data)
                    result, events = self.sm.apply_txn(txn, client, req_id)
                    changed.extend(events)
                except (ValueError, KeyError) as exc:
                    result = {"ok": False, "error": f"bad command: {exc}"}
            self.sm.applied_index = e.index
            self.record("raft.apply", peer=self.node_id, index=e.index, term=e.term, digest=entry_digest(e))
            waiting = self.pending.pop(e.index, None)
            if waiting is not None:
                term, reply_to, client, req_id, _deadline = waiting
                if term == e.term:
                    self.send(reply_to, AgencyReply(client, req_id, OK, result, self.core.leader))
                else:
                    self.send(reply_to, AgencyReply(client, req_id, FAIL, None, self.core.leader,
                                                    "entry was overwritten by a newer leader"))
        if changed and self.watchers:
            self._notify_watchers(changed)

    def _maybe_compact(self) -> None:
        core = self.core
        if core.applied - core.snap.index >= core.tuning.snapshot_threshold_entries:
            self._handle(core.compact(self.sm.applied_index, self.sm.snapshot()))

    # ------------------------------------------------------------ clients
    def on_AgencyRequest(self, msg: AgencyRequest, sender: Any) -> None:
        reply_to = msg.reply_to if msg.reply_to is not None else sender
        core = self.core
        if core is None:
            self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, None, "peer is starting"))
            return
        op = msg.op
        if isinstance(op, Read) and not op.linearizable:
            self.send(reply_to, AgencyReply(msg.client, msg.req_id, OK, self.sm.read(op), core.leader))
            return
        if core.role != LEADER:
            self._forward(msg, reply_to)
            return
        if isinstance(op, Txn):
            if len(self.pending) >= PENDING_MAX:
                self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, core.leader, "overloaded"))
                return
            try:
                data = encode_txn(msg.client, msg.req_id, op)
            except (TypeError, ValueError) as exc:
                self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, core.leader, f"bad txn: {exc}"))
                return
            idx_term = core.propose(data)
            assert idx_term is not None
            index, term = idx_term
            self._add_pending(index, term, reply_to, msg.client, msg.req_id)
            self._handle(core.ready())
        elif isinstance(op, Read):
            self.read_seq += 1
            ctx = self.read_seq
            if not core.read_index(ctx):
                self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, core.leader,
                                                "leader not ready for reads yet"))
                return
            self.reads[ctx] = (reply_to, msg.client, msg.req_id, op)
            self._handle(core.ready())
        else:
            self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, core.leader,
                                            f"unknown operation {type(op).__name__}"))

    def _add_pending(self, index: int, term: int, reply_to: Any, client: str, req_id: int) -> None:
        old = self.pending.get(index)
        if old is not None:  # index reused after our old entry was overwritten
            self._answer_pending(old, UNKNOWN, "log position reused by a later term")
        self.pending[index] = (term, reply_to, client, req_id, self.now() + self.boot.request_timeout_s)

    def _answer_pending(self, p: tuple, status: str, error: str) -> None:
        _term, reply_to, client, req_id, _deadline = p
        self.send(reply_to, AgencyReply(client, req_id, status, None, self.core.leader, error))

    def _forward(self, msg: AgencyRequest, reply_to: Any) -> None:
        leader = self.core.leader
        addr = self.addrs.get(leader) if leader else None
        if addr is None or msg.hops >= MAX_HOPS:
            self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, leader, "no leader known"))
            return
        self.send(addr, AgencyRequest(msg.client, msg.req_id, msg.op, reply_to, msg.hops + 1))
        if isinstance(msg.op, Txn):
            # Remember where it went: if that peer stops being the leader
            # before we can know the outcome, the client hears "unknown"
            # from us rather than nothing.
            if len(self.forwarded) >= PENDING_MAX:
                self.forwarded.pop(next(iter(self.forwarded)))
            self.forwarded[(msg.client, msg.req_id)] = (
                reply_to, leader, self.now() + 2 * self.boot.request_timeout_s)

    def _check_forwarded(self) -> None:
        """Answer "unknown" for writes forwarded to a peer that is no longer
        the leader; forget entries past their deadline (answered by then)."""
        if not self.forwarded:
            return
        now, leader = self.now(), self.core.leader
        for key in list(self.forwarded):
            reply_to, target, deadline = self.forwarded[key]
            if target != leader:
                del self.forwarded[key]
                self.send(reply_to, AgencyReply(key[0], key[1], UNKNOWN, None, leader,
                                                f"forwarded to {target}, which stopped leading; retry"))
            elif deadline <= now:
                del self.forwarded[key]

    def _serve_reads(self) -> None:
        keep = []
        for index, ctx in self.waiting_reads:
            if self.sm.applied_index >= index:
                entry = self.reads.get(ctx)
                if entry is not None:
                    self._reply_read(ctx, OK, self.sm.read(entry[3]), "")
            else:
                keep.append((index, ctx))
        self.waiting_reads = keep

    def _reply_read(self, ctx: int, status: str, result: Any, error: str) -> None:
        entry = self.reads.pop(ctx, None)
        if entry is None:
            return
        reply_to, client, req_id, _op = entry
        self.send(reply_to, AgencyReply(client, req_id, status, result, self.core.leader, error))

    def _expire_pending(self) -> None:
        if not self.pending:
            return
        now = self.now()
        for index in [i for i, p in self.pending.items() if p[4] <= now]:
            self._answer_pending(self.pending.pop(index), UNKNOWN, "not committed within the request timeout")

    # -------------------------------------------------------- membership
    def on_MembershipChange(self, msg: MembershipChange, sender: Any) -> None:
        core = self.core
        reply_to = msg.reply_to if msg.reply_to is not None else sender
        if core is None or core.role != LEADER:
            # like any agency write: a follower passes it on to the leader
            leader = core.leader if core else None
            addr = self.addrs.get(leader) if leader else None
            if addr is None or msg.hops >= MAX_HOPS:
                self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, leader, "not the leader"))
                return
            self.send(addr, MembershipChange(msg.client, msg.req_id, msg.op, msg.node_id, msg.address,
                                             reply_to, msg.hops + 1))
            return
        cfg = core.config
        voters, learners = set(cfg.voters), set(cfg.learners)
        if msg.op == "add_voter":
            voters.add(msg.node_id)
            learners.discard(msg.node_id)
        elif msg.op == "remove_voter":
            voters.discard(msg.node_id)
            learners.discard(msg.node_id)
        elif msg.op == "add_learner":
            if msg.node_id not in voters:  # a voter re-joining after a restart stays a voter
                learners.add(msg.node_id)
        else:
            self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, core.leader,
                                            f"unknown membership op {msg.op!r}"))
            return
        if msg.address is not None:
            self.addrs[msg.node_id] = msg.address
        res = core.propose_config(ClusterConfig(tuple(sorted(voters)), tuple(sorted(learners))))
        if isinstance(res, str):
            self.send(reply_to, AgencyReply(msg.client, msg.req_id, FAIL, None, core.leader, res))
            return
        index, term = res
        self._add_pending(index, term, reply_to, msg.client, msg.req_id)
        self._handle(core.ready())

    # ------------------------------------------------------------ watches
    def on_Watch(self, msg: Watch, sender: Any) -> None:
        reply_to = msg.reply_to if msg.reply_to is not None else sender
        if self.core is None:
            return
        if len(self.watchers) >= WATCHERS_MAX and msg.watch_id not in self.watchers:
            self.send(reply_to, WatchEvents(msg.watch_id, (), self.sm.revision, compacted=False))
            return
        prefix = normalize(msg.prefix)
        self.watchers[msg.watch_id] = (prefix, reply_to)
        self.watch_from[msg.watch_id] = msg.from_revision
        events, compacted = self.sm.changes_since(prefix, msg.from_revision)
        for i in range(0, max(len(events), 1), WATCH_BATCH_MAX):
            chunk = tuple(events[i : i + WATCH_BATCH_MAX])
            self.send(reply_to, WatchEvents(msg.watch_id, chunk, self.sm.revision, compacted))

    def _catch_up_watchers(self, revision: int) -> None:
        """After a snapshot install: the changes it covers, from the
        snapshot's history (or compacted), so that watchers skip nothing."""
        for wid, (prefix, addr) in self.watchers.items():
            events, compacted = self.sm.changes_since(prefix, max(revision, self.watch_from.get(wid, 0)))
            if not events and not compacted:
                continue
            for i in range(0, max(len(events), 1), WATCH_BATCH_MAX):
                chunk = tuple(events[i : i + WATCH_BATCH_MAX])
                self.send(addr, WatchEvents(wid, chunk, self.sm.revision, compacted))

    def on_Unwatch(self, msg: Unwatch, sender: Any) -> None:
        self.watchers.pop(msg.watch_id, None)
        self.watch_from.pop(msg.watch_id, None)

    def _notify_watchers(self, changed: list[tuple[int, str, Any]]) -> None:
        for wid, (prefix, addr) in self.watchers.items():
            # a peer behind the watcher's from_revision must not repeat what it saw
            floor = self.watch_from.get(wid, 0)
            mine = tuple(ev for ev in changed if ev[0] > floor and matches(prefix, ev[1]))
            if mine:
                self.send(addr, WatchEvents(wid, mine, self.sm.revision))

    # ------------------------------------------------------------- status
    def on_StatusQuery(self, msg: StatusQuery, sender: Any) -> None:
        status = self.core.status() if self.core else {"id": self.node_id, "role": "starting"}
        if self.core:
            status["revision"] = self.sm.revision
        pid = getattr(self.host, "pid", None) if self.core is not None else None
        self.send(sender, StatusReply(self.node_id, status, pid))

    # ------------------------------------------------------- inspection
    def final_log(self) -> tuple[int, int, list[tuple[int, int, int]]]:
        """(snapshot index, snapshot term, [(index, term, digest)]) for checkers."""
        c = self.core
        return c.snap.index, c.snap.term, [(e.index, e.term, entry_digest(e)) for e in c.log]
