"""Sans-IO replication core of one shard replica.

Leadership is not elected here: the supervisor assigns a leader per
**epoch** through an agency transaction (``Assign``) after **fencing** the
replicas (``Fence``: adopt the new epoch with no leader, report the log
position).  Within an epoch exactly one leader appends, so a batch is
identified by its (base offset, epoch): two replicas holding a batch with
the same base offset and epoch hold the same batch (log matching).

Replication is a push from the leader with windowed flow control: each
``Push`` names the end offset and epoch the follower's log must end with
(``prev_end``/``prev_epoch``); a follower that does not match rejects with
a hint and the leader backs up one batch at a time; a follower that holds a
different batch at an offset truncates its log there (a returning old
leader's divergent suffix) before appending.  Followers sync before they
acknowledge; the leader syncs before it pushes.

The **high watermark** (what consumers may read, and what ``quorum``
writes wait for) is the end offset synced by a majority of the replicas --
but it only advances by counting replicas for batches of the leader's own
epoch.  A new leader therefore starts its epoch with a control batch; once
that reaches a majority, everything before it is committed too.  (Counting
replicas for an older epoch's batches loses data in the shard-log analogue
of Figure 8 of the Raft paper.)

Write consistency levels (InfluxDB's names):

* ``any``   -- accepted and durable somewhere; until hinted handoff exists
  this is the same as ``one``;
* ``one``   -- synced on the leader;
* ``quorum``-- synced on a majority (the high watermark passed it);
* ``all``   -- synced on every in-sync replica *and* on a majority, so it
  is never weaker than quorum when the in-sync set shrinks.

Idempotent producers: batches carry (producer id, base sequence); each
replica keeps, per producer, the next expected sequence and the last batch
(rebuilt from batch headers after a restart or a failover), so a retried
batch is answered with its original offset instead of being appended again.

The core uses the injected ``log`` (storage.shardlog.ShardLog) as its
storage and calls ``log.sync()`` itself at the end of any input that
appended, before returning effects that claim the data.  Everything else --
time, messages -- comes in as arguments and goes out in the ``ShardReady``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol.records import CONTROL_HEADER, Record, decode_batch, encode_batch, is_control, read_header, rebase
from protocol.shard import (
    Assign,
    Fence,
    Handover,
    HandoverReady,
    Position,
    Produce,
    ProduceReply,
    Push,
    PushAck,
    ShardTuning,
)

LEADER = "leader"
FOLLOWER = "follower"
FENCED = "fenced"



@dataclass
class ShardReady:
    persist_epoch: int | None = None
    persist_handover: tuple[int, str] | None = None  # (epoch, target); (0, "") clears it
    flush_after_s: float | None = None  # group commit: call flush() after this delay
    messages: list[Any] = field(default_factory=list)  # replica-to-replica (have .to)
    replies: list[tuple[Any, Any]] = field(default_factory=list)  # (reply_to, message)
    records: list[tuple[str, dict]] = field(default_factory=list)


@dataclass
class _Follower:
    next: int = 0
    acked: int = 0
    inflight: int = 0
    last_ack_s: float = 0.0
    last_progress_s: float = 0.0  # acked advanced, or the follower was caught up
    last_probe_s: float = 0.0


@dataclass
class _Waiter:
    end: int
    level: str
    reply_to: Any
    client: str
    req_id: int
    base: int
    deadline_s: float
    duplicate: bool = False


CURSOR = b"cursor"  # the control header value of a subscription cursor record
CURSOR_PENDING_MAX = 1_000  # batches without a producer id noted before their cursors are read


def read_cursors(batches: Iterable[bytes]) -> dict[str, tuple[str, int]]:
    """Latest (mode, cursor) of every subscription recorded in the batches
    (cursor records are in the leader's own batches, producer id 0: a
    producer's batches are skipped undecoded)."""
    out: dict[str, tuple[str, int]] = {}
    for b in batches:
        if read_header(b, check_body=False).producer_id:
            continue
        _h, recs = decode_batch(b)
        for r in recs:
            h = dict(r.headers)
            if h.get(CONTROL_HEADER) == CURSOR:
                out[h["subscription"].decode()] = (h["mode"].decode(), int(h["offset"]))
    return out


def control_batch(epoch: int, node: str, base_offset: int, now_ms: int) -> bytes:
    rec = Record(key=None, payload=b"", headers=((CONTROL_HEADER, f"epoch-start {epoch} {node}".encode()),))
    return encode_batch([rec], base_offset=base_offset, epoch=epoch, broker_ts_ms=now_ms)


class ShardCore:
    def __init__(
        self,
        shard: str,
        node_id: str,
        log: Any,
        tuning: ShardTuning | None = None,
        *,
        epoch: int = 0,
        replicas: tuple[str, ...] = (),
        handover: tuple[int, str] | None = None,
    ) -> None:
        self.shard = shard
        self.id = node_id
        self.log = log
        self.tuning = tuning or ShardTuning()
        self.bugs = self.tuning.bugs
        self.epoch = epoch
        self.replicas = tuple(replicas)
        self.learners: tuple[str, ...] = ()  # copy the log, never counted (a move's target)
        # a leader frozen for a move hands its epoch to this node (persisted:
        # a restart must not let it append in the epoch again)
        self.handing_over = handover[1] if handover and handover[0] == epoch else ""
        self.handover_reply_to: Any = None
        self.move_tokens = 0.0  # bytes a learner may be pushed now (refilled at move_bytes_per_s)
        self.move_refill_s: float | None = None
        self.role = FENCED
        self.leader: str | None = None
        self.hw = 0
        self.epoch_start = 0
        self.followers: dict[str, _Follower] = {}
        self.in_sync: tuple[str, ...] = ()
        self.waiters: list[_Waiter] = []
        self.flush_armed = False
        # producer id -> (next sequence, base offset of last batch, count of last batch, its base sequence)
        self.producers: dict[int, tuple[int, int, int, int]] = {}
        # subscription -> (mode, cursor) of the latest cursor record in the
        # log, folded in from ``cursor_pending`` (offsets of batches without
        # a producer id, where cursor records are) when asked for or when
        # that list is full, so a new leader need not read its whole log
        self.cursor_table: dict[str, tuple[str, int]] = {}
        self.cursor_pending: list[int] = []
        self._ready = ShardReady()
        self._rebuild_producers()

    # ------------------------------------------------------------- helpers
    def _take(self) -> ShardReady:
        rd, self._ready = self._ready, ShardReady()
        return rd

    def _record(self, kind: str, **fields: Any) -> None:
        self._ready.records.append((kind, fields))

    def _send(self, msg: Any) -> None:
        self._ready.messages.append(msg)

    def _reply(self, to: Any, msg: Any) -> None:
        if to is not None:
            self._ready.replies.append((to, msg))

    def majority(self) -> int:
        return len(self.replicas) // 2 + 1

    def _adopt_epoch(self, epoch: int) -> None:
        if epoch > self.epoch:
            self.epoch = epoch
            self._ready.persist_epoch = epoch
            if self.handing_over:
                self._end_handover()

    def _end_handover(self) -> None:
        self.handing_over = ""
        self.handover_reply_to = None
        self._ready.persist_handover = (0, "")

    def _rebuild_producers(self) -> None:
        """The producer and cursor tables from the whole log (at boot and
        after a truncation); appends keep them current otherwise, on
        followers too."""
        self.producers = {}
        self.cursor_table = {}
        self.cursor_pending = []
        for batch in self.iter_batches():
            h = read_header(batch, check_body=False)
            if h.producer_id:
                self._note_producer(h)
            else:
                self.cursor_table.update(read_cursors((batch,)))

    def cursors(self) -> dict[str, tuple[str, int]]:
        """Latest (mode, cursor) of every subscription recorded in the log."""
        self._fold_cursors()
        return dict(self.cursor_table)

    def _fold_cursors(self) -> None:
        pending, self.cursor_pending = self.cursor_pending, []
        for off in pending:
            if off < self.log.start_offset or off >= self.log.end_offset:
                continue
            got = self.log.read(off, 1)
            if got and read_header(got[0], check_body=False).base_offset == off:
                self.cursor_table.update(read_cursors(got[:1]))

    def all_batches(self) -> list[bytes]:
        """Every batch of the log, in order."""
        return list(self.iter_batches())

    def iter_batches(self) -> Any:
        """Every batch of the log, in order, read in chunks of 16 MiB (a
        scan of a big log never holds it all)."""
        pos = self.log.start_offset
        while pos < self.log.end_offset:
            chunk = self.log.read(pos, 1 << 24)
            if not chunk:
                break
            yield from chunk
            h = read_header(chunk[-1], check_body=False)
            pos = h.base_offset + h.record_count

    def _note_producer(self, h: Any) -> None:
        """An appended batch: a producer's updates the producer table; one
        without a producer id may hold cursor records (``cursor_pending``)."""
        if not h.producer_id:
            self.cursor_pending.append(h.base_offset)
            if len(self.cursor_pending) >= CURSOR_PENDING_MAX:
                self._fold_cursors()
            return
        self.producers[h.producer_id] = (h.base_sequence + h.record_count, h.base_offset, h.record_count, h.base_sequence)
        if len(self.producers) > self.tuning.producers_max:
            oldest = min(self.producers, key=lambda p: (self.producers[p][1], p))
            del self.producers[oldest]

    def _batch_start_at_or_below(self, offset: int) -> int:
        """Base offset of the batch containing ``offset`` (or the log start)."""
        if offset <= self.log.start_offset:
            return self.log.start_offset
        if offset >= self.log.end_offset:
            return self.log.end_offset
        chunk = self.log.read(offset, 1)
        return read_header(chunk[0]).base_offset if chunk else offset

    def _epoch_before(self, end: int) -> int:
        if end <= self.log.start_offset:
            return 0
        e = self.log.epoch_at(end - 1)
        return 0 if e is None else e

    # ------------------------------------------------------ role changes
    def fence(self, m: Fence) -> ShardReady:
        """Adopt the fence's epoch with no leader; report our position."""
        if m.epoch > self.epoch or (m.epoch == self.epoch and self.role == FENCED):
            if m.epoch > self.epoch:
                self._step_down("fenced by the supervisor")
                self._adopt_epoch(m.epoch)
                self.role = FENCED
                self.leader = None
        self._reply(m.reply_to, Position(self.shard, self.id, self.epoch, self.log.last_epoch, self.log.end_offset))
        return self._take()

    def assign(self, m: Assign, now_s: float) -> ShardReady:
        if m.epoch < self.epoch:
            return self._take()
        if m.epoch == self.epoch and self.role != FENCED and self.leader == m.leader:
            return self._take()  # duplicate
        self._adopt_epoch(m.epoch)
        self.replicas = tuple(m.replicas)
        self.learners = tuple(n for n in m.learners if n not in self.replicas)
        self.leader = m.leader
        if m.leader == self.id:
            self._become_leader(now_s)
        else:
            self._step_down("new leader assigned")
            self.role = FOLLOWER
        self._record("shard.role", shard=self.shard, node=self.id, epoch=self.epoch, role=self.role,
                     leader=self.leader)
        return self._take()

    def resume(self, epoch: int, leader: str | None, replicas: tuple[str, ...], now_s: float,
               learners: tuple[str, ...] = ()) -> ShardReady:
        """After a restart: take up the role the boot plan gives, if it is
        for the epoch we hold (a newer epoch we persisted wins).  The plan's
        learners come along: a leader restarted during a move's copy goes
        on copying to the target (nothing else would tell it: its epoch and
        role match the plan, so the supervisor sends no Assign)."""
        if replicas:
            self.replicas = tuple(replicas)
        if epoch > self.epoch:
            self._adopt_epoch(epoch)
        if epoch == self.epoch and leader is not None:
            return self.assign(Assign(self.shard, epoch, leader, self.replicas, tuple(learners)), now_s)
        return self._take()

    def _become_leader(self, now_s: float) -> None:
        self.role = LEADER
        self.leader = self.id
        if self.log.last_epoch != self.epoch:
            base = self.log.end_offset
            self.log.append(control_batch(self.epoch, self.id, base, int(now_s * 1000)))
            self.log.sync()
            self.epoch_start = base
        else:
            self.epoch_start = self.log.end_of_epoch(self.epoch - 1)
        self.followers = {
            n: _Follower(next=self.epoch_start, last_ack_s=now_s, last_progress_s=now_s)
            for n in self.replicas + self.learners if n != self.id
        }
        self.in_sync = tuple(sorted(self.replicas))
        self._record("shard.leader", shard=self.shard, node=self.id, epoch=self.epoch,
                     epoch_start=self.epoch_start, end=self.log.end_offset)
        for n in sorted(self.followers):
            self._push(n)
        self._advance_hw()

    def _step_down(self, why: str) -> None:
        if self.role == LEADER:
            for w in self.waiters:
                self._reply(w.reply_to, ProduceReply(self.shard, w.client, w.req_id, "unknown", w.base, w.level,
                                                     None, self.epoch, f"leadership lost: {why}"))
            self.waiters = []
            self.followers = {}
            self._record("shard.step_down", shard=self.shard, node=self.id, epoch=self.epoch, why=why)
        self.role = FOLLOWER if self.role == LEADER else self.role

    # ------------------------------------------------------------ produce
    def produce(self, m: Produce, now_s: float) -> ShardReady:
        if self.role != LEADER:
            self._reply(m.reply_to, ProduceReply(self.shard, m.client, m.req_id, "fail", leader=self.leader,
                                                 epoch=self.epoch, error="not the leader"))
            return self._take()
        if self.handing_over:
            self._reply(m.reply_to, ProduceReply(self.shard, m.client, m.req_id, "fail", leader=None,
                                                 epoch=self.epoch,
                                                 error=f"leadership moving to {self.handing_over}; retry"))
            return self._take()
        if len(self.waiters) >= self.tuning.pending_max:
            self._reply(m.reply_to, ProduceReply(self.shard, m.client, m.req_id, "fail", leader=self.id,
                                                 epoch=self.epoch, error="overloaded: too many writes waiting"))
            return self._take()
        deadline = now_s + self.tuning.request_timeout_s
        if m.producer_id:
            state = self.producers.get(m.producer_id)
            if state is not None:
                next_seq, last_base, last_count, last_seq = state
                if m.sequence == last_seq:
                    w = _Waiter(last_base + last_count, m.level, m.reply_to, m.client, m.req_id, last_base,
                                deadline, duplicate=True)
                    self.waiters.append(w)
                    self._resolve_waiters(now_s)
                    return self._take()
                if m.sequence < last_seq:
                    self._reply(m.reply_to, ProduceReply(self.shard, m.client, m.req_id, "ok", -1, m.level,
                                                         self.id, self.epoch, "older duplicate", duplicate=True))
                    return self._take()
                if m.sequence != next_seq:
                    self._reply(m.reply_to, ProduceReply(
                        self.shard, m.client, m.req_id, "fail", leader=self.id, epoch=self.epoch,
                        error=f"out-of-order sequence {m.sequence}, expected {next_seq}"))
                    return self._take()
        base = self.log.end_offset
        try:
            batch = rebase(m.batch, base, self.epoch, int(now_s * 1000))
            h = read_header(batch)
        except ValueError as exc:
            self._reply(m.reply_to, ProduceReply(self.shard, m.client, m.req_id, "fail", leader=self.id,
                                                 epoch=self.epoch, error=f"bad batch: {exc}"))
            return self._take()
        self.log.append(batch)
        self._note_producer(h)
        self._record("shard.append", shard=self.shard, node=self.id, epoch=self.epoch, base=base, count=h.record_count,
                     client=m.client, req_id=m.req_id)
        self.waiters.append(_Waiter(base + h.record_count, m.level, m.reply_to, m.client, m.req_id, base, deadline))
        if self.tuning.group_commit_ms > 0:
            # Group commit: the first unsynced append arms the flush; every
            # batch appended until then shares its one sync.
            if not self.flush_armed:
                self.flush_armed = True
                self._ready.flush_after_s = self.tuning.group_commit_ms / 1000.0
            return self._take()
        return self.flush(now_s)

    def flush(self, now_s: float) -> ShardReady:
        """Sync what was appended, then replicate it and answer whom it
        satisfies -- nothing leaves before the sync."""
        self._flush(now_s)
        return self._take()

    def _flush(self, now_s: float) -> None:
        self.flush_armed = False
        if self.log.synced_offset < self.log.end_offset:
            self.log.sync()
        if self.role == LEADER:
            for n in sorted(self.followers):
                self._push(n)
            self._advance_hw()
            self._resolve_waiters(now_s)

    def _resolve_waiters(self, now_s: float) -> None:
        keep = []
        for w in self.waiters:
            met = self._level_met(w)
            if met:
                self._reply(w.reply_to, ProduceReply(self.shard, w.client, w.req_id, "ok", w.base, w.level,
                                                     self.id, self.epoch, duplicate=w.duplicate))
            elif w.deadline_s <= now_s:
                self._reply(w.reply_to, ProduceReply(self.shard, w.client, w.req_id, "unknown", w.base, w.level,
                                                     self.id, self.epoch, f"{w.level} not reached in time"))
            else:
                keep.append(w)
        self.waiters = keep

    def _level_met(self, w: _Waiter) -> bool:
        if w.level in ("any", "one"):
            return self.log.synced_offset >= w.end
        if w.level == "quorum":
            return self.hw >= w.end
        # all: every in-sync replica, and never weaker than quorum
        if self.hw < w.end:
            return False
        return all(self.followers[n].acked >= w.end for n in self.in_sync
                   if n in self.followers and n in self.replicas)

    # -------------------------------------------------------- replication
    def _push(self, node: str) -> None:
        f = self.followers[node]
        synced = self.log.synced_offset
        if f.inflight >= self.tuning.inflight_max or f.next >= synced:
            return
        start = self._batch_start_at_or_below(f.next)
        batches = self.log.read(start, self.tuning.push_bytes_max, max_offset=synced - 1)[
            : self.tuning.push_batches_max]
        if node in self.learners:
            # a move's copy is rate-limited: at most move_bytes_per_s (a
            # first push may overdraw; the budget goes negative and waits)
            if self.move_tokens <= 0:
                return
            self.move_tokens -= sum(len(b) for b in batches)
        if not batches:
            return
        last = read_header(batches[-1])
        self._send(Push(self.shard, self.id, node, self.epoch, start, self._epoch_before(start), tuple(batches),
                        self.hw))
        f.next = last.base_offset + last.record_count
        f.inflight += 1

    def _probe(self, node: str, now_s: float) -> None:
        """Re-send from the acknowledged point (lost pushes, rejections)."""
        f = self.followers[node]
        f.next = self._batch_start_at_or_below(f.acked)
        f.inflight = 0
        f.last_probe_s = now_s  # not progress: the in-sync timeout keeps running
        if f.next >= self.log.end_offset:
            self._send(Push(self.shard, self.id, node, self.epoch, f.next, self._epoch_before(f.next), (), self.hw))
        else:
            self._push(node)

    def on_push(self, m: Push, now_s: float) -> ShardReady:
        if m.epoch < self.epoch and not self.bugs.accept_stale_epoch:
            self._send(PushAck(self.shard, self.id, m.frm, self.epoch, False, self.log.end_offset, m.prev_end))
            return self._take()
        if m.epoch > self.epoch or self.role != FOLLOWER or self.leader != m.frm:
            if self.role == LEADER and m.epoch == self.epoch:
                self._record("shard.conflict", shard=self.shard, node=self.id, epoch=m.epoch, other=m.frm)
                return self._take()
            if m.epoch >= self.epoch:
                self._step_down(f"push from {m.frm} in epoch {m.epoch}")
                self._adopt_epoch(m.epoch)
                self.role = FOLLOWER
                self.leader = m.frm
        log = self.log
        if m.prev_end > log.end_offset:
            self._send(PushAck(self.shard, self.id, m.frm, self.epoch, False, log.end_offset, m.prev_end))
            return self._take()
        if m.prev_end > log.start_offset and self._epoch_before(m.prev_end) != m.prev_epoch:
            hint = self._batch_start_at_or_below(m.prev_end - 1)
            self._send(PushAck(self.shard, self.id, m.frm, self.epoch, False, hint, m.prev_end))
            return self._take()
        appended = False
        pos = m.prev_end
        for batch in m.batches:
            h = read_header(batch)
            end = h.base_offset + h.record_count
            if h.base_offset < log.end_offset:
                same = log.epoch_at(h.base_offset) == h.leader_epoch and self._batch_start_at_or_below(h.base_offset) == h.base_offset
                if same or self.bugs.no_truncation:
                    pos = end
                    continue
                log.truncate_after(h.base_offset - 1)
                self._record("shard.truncate", shard=self.shard, node=self.id, epoch=self.epoch, to=h.base_offset)
                self._rebuild_producers()
                appended = True  # the truncation must be durable before we acknowledge
            if h.base_offset != log.end_offset:
                break  # a gap: the leader will back up
            log.append(batch)
            self._note_producer(h)
            appended = True
            pos = end
        if appended:
            log.sync()
        matched = min(pos, log.end_offset)
        self.hw = max(self.hw, min(m.hw, matched))
        self._send(PushAck(self.shard, self.id, m.frm, self.epoch, True, matched, m.prev_end))
        return self._take()

    def on_ack(self, m: PushAck, now_s: float) -> ShardReady:
        if m.epoch > self.epoch:
            self._step_down(f"{m.frm} holds newer epoch {m.epoch}")
            self._adopt_epoch(m.epoch)
            self.role = FENCED
            self.leader = None
            return self._take()
        if self.role != LEADER or m.epoch != self.epoch or m.frm not in self.followers:
            return self._take()
        f = self.followers[m.frm]
        f.last_ack_s = now_s
        if m.success:
            f.inflight = max(0, f.inflight - 1)
            if m.end > f.acked or m.end >= self.log.end_offset:
                f.acked = max(f.acked, m.end)
                f.last_progress_s = now_s
            if f.next < f.acked:
                f.next = f.acked
            if m.frm not in self.in_sync and m.frm in self.replicas and f.acked >= self.log.end_offset:
                self.in_sync = tuple(sorted(self.in_sync + (m.frm,)))
                self._record("shard.isr", shard=self.shard, node=self.id, epoch=self.epoch, in_sync=self.in_sync)
            self._advance_hw()
            self._resolve_waiters(now_s)
            self._push(m.frm)
            if self.handing_over == m.frm:
                self._handover_check()
        else:
            if m.prev_end <= f.acked:
                return self._take()  # stale: the follower matched beyond that push since
            # Back up to the follower's hint (its end, or the start of the
            # batch before the mismatch) -- at least one batch.
            nxt = self._batch_start_at_or_below(min(m.end, self.log.end_offset))
            if nxt >= m.prev_end:
                nxt = self._batch_start_at_or_below(max(0, m.prev_end - 1))
            f.next = nxt
            f.inflight = 0
            f.last_progress_s = now_s
            if f.next < self.log.end_offset:
                self._push(m.frm)
            else:
                self._send(Push(self.shard, self.id, m.frm, self.epoch, f.next, self._epoch_before(f.next), (),
                                self.hw))
        return self._take()

    def _advance_hw(self) -> None:
        if self.role != LEADER:
            return
        if self.bugs.hw_before_quorum:
            self.hw = max(self.hw, self.log.synced_offset)
            return
        ends = sorted([self.log.synced_offset] + [f.acked for n, f in self.followers.items() if n in self.replicas],
                      reverse=True)
        cand = ends[self.majority() - 1] if len(ends) >= self.majority() else 0
        if cand > self.epoch_start and cand > self.hw:
            self.hw = cand
            self._record("shard.hw", shard=self.shard, node=self.id, epoch=self.epoch, hw=self.hw)

    # ---------------------------------------------------------------- tick
    def tick(self, now_s: float) -> ShardReady:
        if self.flush_armed:
            self._flush(now_s)  # safety net: a lost flush timer never strands writes
        if self.role == LEADER:
            self._refill_move_tokens(now_s)
            timeout = self.tuning.isr_timeout_s
            for n in sorted(self.followers):
                f = self.followers[n]
                behind = f.acked < self.log.end_offset
                if behind and now_s - max(f.last_progress_s, f.last_probe_s) >= timeout / 2:
                    self._probe(n, now_s)
                elif not behind and now_s - f.last_ack_s >= timeout / 2:
                    # keep the follower's high watermark fresh; also a liveness probe
                    self._send(Push(self.shard, self.id, n, self.epoch, self.log.end_offset,
                                    self._epoch_before(self.log.end_offset), (), self.hw))
                    f.last_ack_s = now_s - timeout / 4
                if n in self.learners and behind and f.inflight == 0:
                    self._push(n)  # a rate-limited copy resumes once the budget refilled
                if n in self.in_sync and behind and now_s - f.last_progress_s >= timeout:
                    self.in_sync = tuple(x for x in self.in_sync if x != n)
                    self._record("shard.isr", shard=self.shard, node=self.id, epoch=self.epoch,
                                 in_sync=self.in_sync)
            self._resolve_waiters(now_s)
        return self._take()

    def append_control(self, records: list[Record], now_s: float) -> ShardReady:
        """Leader only: append control records (e.g. subscription cursors),
        replicated like data, acknowledged to nobody."""
        if self.role != LEADER or not records or self.handing_over:
            return self._take()
        base = self.log.end_offset
        self.log.append(encode_batch(records, base_offset=base, epoch=self.epoch, broker_ts_ms=int(now_s * 1000)))
        self.cursor_pending.append(base)
        self.log.sync()
        for n in sorted(self.followers):
            self._push(n)
        self._advance_hw()
        return self._take()

    # ------------------------------------------------------------ moves
    def _refill_move_tokens(self, now_s: float) -> None:
        rate = self.tuning.move_bytes_per_s
        last = self.move_refill_s if self.move_refill_s is not None else now_s
        self.move_refill_s = now_s
        cap = max(rate * 0.25, float(self.tuning.push_bytes_max))
        self.move_tokens = min(cap, self.move_tokens + rate * max(0.0, now_s - last))

    def handover(self, m: Handover) -> ShardReady:
        """Freeze for a leader move (see ``protocol.shard.Handover``)."""
        if self.role != LEADER or m.epoch != self.epoch or m.to not in self.followers:
            return self._take()
        if self.handing_over != m.to:
            self.handing_over = m.to
            self._ready.persist_handover = (self.epoch, m.to)
            self._record("shard.handover", shard=self.shard, node=self.id, epoch=self.epoch, to=m.to,
                         end=self.log.end_offset)
        self.handover_reply_to = m.reply_to
        self._handover_check()
        return self._take()

    def _handover_check(self) -> None:
        f = self.followers.get(self.handing_over)
        if f is not None and f.acked >= self.log.end_offset and self.log.synced_offset >= self.log.end_offset:
            self._reply(self.handover_reply_to, HandoverReady(self.shard, self.id, self.epoch, self.handing_over,
                                                              self.log.end_offset))

    def committed_records(self, from_offset: int, max_records: int) -> list[Any]:
        """Payloads of committed records from ``from_offset`` (control records
        as None), at most ``max_records``, contiguous."""
        if from_offset >= self.hw or from_offset < self.log.start_offset:
            return []
        out: list[Any] = []
        for batch in self.log.read(from_offset, 1 << 20, max_offset=self.hw - 1):
            _h, recs = decode_batch(batch)
            for r in recs:
                if r.offset < from_offset:
                    continue
                out.append(None if is_control(r) else r.payload)
                if len(out) >= max_records:
                    return out
        return out

    # ---------------------------------------------------------------- reads
    def read(self, from_offset: int, max_bytes: int) -> list[bytes]:
        """Committed batches (below the high watermark) from an offset."""
        if from_offset >= self.hw:
            return []
        return self.log.read(from_offset, max_bytes, max_offset=self.hw - 1)

    def status(self) -> dict:
        return {
            "shard": self.shard, "node": self.id, "role": self.role, "epoch": self.epoch, "leader": self.leader,
            "end": self.log.end_offset, "hw": self.hw, "last_epoch": self.log.last_epoch,
            "in_sync": list(self.in_sync), "replicas": list(self.replicas), "learners": list(self.learners),
            "handing_over": self.handing_over,
        }
