"""ShardReplica: the actor shell around ShardCore for one replica of one shard.

It opens the shard's log (``shard/<name>``) and a small metadata store
(``shard/<name>.meta``, holding the highest epoch seen), routes messages to
the core and carries out its ShardReady: persist the epoch and sync, then
send.  Every ``tuning.state_interval_ms`` (rounded to whole ticks) it
reports its state (epoch, role, log position) to the supervisors, which use
it to detect dead or leaderless shards.
"""
from __future__ import annotations

from typing import Any

from actors.base import ChorusActor
from actors.query import scan
from actors.replication import ShardCore
from actors.shard_stats import ShardStats, follower_positions
from actors.shard_subscriptions import ShardSubscriptions, cursor_record
from protocol.consume import AckRecords, Delivery, Subscribe, SubscribeReply, Unsubscribe
from protocol.groups import CLOSE_SLACK_MS
from protocol.query import QueryShard, QueryShardReply
from protocol.shard import (
    GROUP_CLOSED,
    Assign,
    Fence,
    Handover,
    GroupClose,
    Produce,
    ProduceReply,
    Push,
    PushAck,
    ReadShard,
    ReadShardReply,
    ReplicaState,
    ShardBoot,
    ShardStatus,
    ShardStatusReply,
    ShardTuning,
    SupervisorsAre,
)
from protocol.records import read_header
from storage.shardlog import ShardLog

QUERY_SCAN_BYTES_MAX = 512 << 20
SIZE_REPORT_EVERY = 20  # measure the log's size on every 20th state report  # log bytes one query page may scan on one replica


class ShardReplica(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.core: ShardCore | None = None
        self.addrs: dict[str, Any] = {}
        self.supervisors: tuple[Any, ...] = ()
        self.gen = 0
        self.ticks = 0
        self.subs = ShardSubscriptions("")
        self.leading = False
        self.lead_epoch = 0
        self.last_hw = -1
        self.stats = ShardStats()
        self.resumed: tuple[int, int] | None = None
        self.until_ms = -1  # wall clock ms from which the shard's group takes no writes (-1: never)
        self.reports = 0
        self.log_bytes = -1

    def on_ShardBoot(self, msg: ShardBoot, sender: Any) -> None:
        for node, addr in msg.addresses:
            self.addrs[node] = addr
        if self.core is not None:
            return
        if msg.host is not None:
            self.adopt_host_config(msg.host)
        tuning = msg.tuning or ShardTuning()
        self.meta = self.open_store(f"shard/{msg.shard}.meta")
        raw = self.meta.get(b"epoch")
        epoch = int(raw) if raw else 0
        ho = (self.meta.get(b"handover") or b"").decode()
        handover = (int(ho.split(":", 1)[0]), ho.split(":", 1)[1]) if ":" in ho else None
        self.log_store = self.open_store(f"shard/{msg.shard}")
        self.log = ShardLog(self.log_store)
        self.core = ShardCore(msg.shard, msg.node_id, self.log, tuning, epoch=epoch, replicas=msg.replicas,
                              handover=handover)
        self.supervisors = tuple(msg.supervisors)
        self.until_ms = msg.until_ms
        self.subs = ShardSubscriptions(msg.shard)
        self.record("shard.boot", shard=msg.shard, node=msg.node_id, epoch=epoch, end=self.log.end_offset)
        # resuming the leadership of an epoch this replica led before the
        # restart: its subscriptions may deliver again what it delivered then
        self.resumed = (epoch, self.log.end_offset) if self.log.last_epoch == epoch else None
        self._handle(self.core.resume(msg.epoch, msg.leader, msg.replicas, self.now(), msg.learners))
        self._arm()

    def on_ReplicaAddress(self, msg: Any, sender: Any) -> None:
        self.addrs[msg.node] = msg.address

    def on_SupervisorsAre(self, msg: SupervisorsAre, sender: Any) -> None:
        if msg.replace:
            self.supervisors = tuple(msg.addresses)
            return
        for addr in msg.addresses:
            if not any(addr == known for known in self.supervisors):
                self.supervisors = self.supervisors + (addr,)

    def _arm(self) -> None:
        self.gen += 1
        self.set_timer(self.core.tuning.tick_ms / 1000.0, ("tick", self.gen))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if self.core is None:
            return
        if msg.payload == "flush":
            self._handle(self.core.flush(self.now()))
            return
        if msg.payload != ("tick", self.gen):
            return
        self._handle(self.core.tick(self.now()))
        if self.leading:
            cursors = self.subs.tick(self.now(), self.core.committed_records)
            if cursors:
                self._handle(self.core.append_control(
                    [cursor_record(s, mode, off) for s, mode, off in cursors], self.now()))
            self._flush_subs()
        self.ticks += 1
        every = max(1, round(self.core.tuning.state_interval_ms / self.core.tuning.tick_ms))
        if self.ticks % every == 0:
            self._report()
        self._arm()

    def _report(self) -> None:
        c = self.core
        if self.reports % SIZE_REPORT_EVERY == 0:  # for retention by size (supervisor_groups.py)
            self.log_bytes = self.log_store.bytes_estimate()
        self.reports += 1
        st = ReplicaState(c.shard, c.id, c.epoch, c.role, c.leader, self.log.last_epoch, self.log.end_offset, c.hw,
                          c.epoch_start, c.handing_over, self.log_bytes)
        for addr in self.supervisors:
            self.send(addr, st)

    def _handle(self, rd: Any) -> None:
        self._handle_ready(rd)
        c = self.core
        leading = c.role == "leader"
        if leading and (not self.leading or c.epoch != self.lead_epoch):
            again = self.resumed[1] if self.resumed and self.resumed[0] == c.epoch else -1
            self.subs.reset(c.cursors(), c.epoch, again)
        elif not leading and self.leading:
            self.subs.reset({})
        self.leading, self.lead_epoch = leading, c.epoch
        if leading and c.hw != self.last_hw:
            self.last_hw = c.hw
            self.subs.feed(self.now(), c.committed_records)
        self._flush_subs()

    def _flush_subs(self) -> None:
        for to, m in self.subs.take():
            if type(m) is Delivery:
                self.stats.delivered(m.records)
            self.send(to, m)

    def _handle_ready(self, rd: Any) -> None:
        if rd.flush_after_s is not None:
            self.set_timer(rd.flush_after_s, "flush")
        if rd.persist_epoch is not None or rd.persist_handover is not None:
            if rd.persist_epoch is not None:
                self.meta.put(b"epoch", str(rd.persist_epoch).encode())
            if rd.persist_handover is not None:
                e, to = rd.persist_handover
                self.meta.put(b"handover", f"{e}:{to}".encode() if to else b"")
            self.meta.sync()
        for m in rd.messages:
            addr = self.addrs.get(m.to)
            if addr is not None:
                self.send(addr, m)
        for to, m in rd.replies:
            self.send(to, m)
        for kind, fields in rd.records:
            self.record(kind, **fields)

    # ------------------------------------------------------------ routing
    def on_Produce(self, msg: Produce, sender: Any) -> None:
        if self.core is None:
            self.send(msg.reply_to or sender, ProduceReply(msg.shard, msg.client, msg.req_id, "fail",
                                                           error="replica is starting"))
            return
        if msg.reply_to is None:
            msg = Produce(msg.shard, msg.client, msg.req_id, msg.batch, msg.count, msg.level, msg.producer_id,
                          msg.sequence, sender)
        if 0 <= self.until_ms <= int(self.wall() * 1000) and not self.core.tuning.bugs.write_closed_group:
            # the shard's group is closed: the writer must move to the current group
            self.send(msg.reply_to, ProduceReply(msg.shard, msg.client, msg.req_id, "fail", leader=self.core.leader,
                                                 epoch=self.core.epoch,
                                                 error=f"{GROUP_CLOSED}: shard {msg.shard} took writes until "
                                                       f"{self.until_ms} ms; write to the current group"))
            return
        if self.core.role == "leader":
            self.stats.produced(msg.count, len(msg.batch))
        self._handle(self.core.produce(msg, self.now()))

    def on_GroupClose(self, msg: GroupClose, sender: Any) -> None:
        if msg.until_ms >= 0 and (self.until_ms < 0 or msg.until_ms < self.until_ms):
            self.until_ms = msg.until_ms
            self.record("shard.group_closed", shard=msg.shard, until_ms=msg.until_ms)

    def on_Push(self, msg: Push, sender: Any) -> None:
        if self._mine(msg):
            self.addrs.setdefault(msg.frm, sender)
            self._handle(self.core.on_push(msg, self.now()))

    def on_PushAck(self, msg: PushAck, sender: Any) -> None:
        if self._mine(msg):
            self._handle(self.core.on_ack(msg, self.now()))

    def on_Fence(self, msg: Fence, sender: Any) -> None:
        if self._mine(msg):
            if msg.reply_to is None:
                msg = Fence(msg.shard, msg.epoch, sender)
            self._handle(self.core.fence(msg))

    def on_Assign(self, msg: Assign, sender: Any) -> None:
        if self._mine(msg):
            self._handle(self.core.assign(msg, self.now()))

    def _mine(self, msg: Any) -> bool:
        """A message for this shard: after a node restart its replicas may
        come back at addresses that held another shard's replica before, and
        a sender with an old address must not steer this one."""
        return self.core is not None and msg.shard == self.core.shard

    def on_Handover(self, msg: Handover, sender: Any) -> None:
        if self._mine(msg):
            if msg.reply_to is None:
                msg = Handover(msg.shard, msg.epoch, msg.to, sender)
            self._handle(self.core.handover(msg))

    def on_ReadShard(self, msg: ReadShard, sender: Any) -> None:
        to = msg.reply_to or sender
        c = self.core
        if c is None or c.role != "leader":
            self.send(to, ReadShardReply(msg.shard, msg.client, msg.req_id, "fail",
                                         leader=c.leader if c else None, error="not the leader"))
            return
        batches = c.read(msg.from_offset, msg.max_bytes)
        self.stats.fetched(batches)
        self.send(to, ReadShardReply(msg.shard, msg.client, msg.req_id, "ok", tuple(batches), c.hw, c.id))

    def on_QueryShard(self, msg: QueryShard, sender: Any) -> None:
        """A history query's read of this shard (see actors/query.py).  The
        leader and followers serve it, only below their high watermark (a
        follower's trails the leader's by at most one push); a replica whose
        watermark is below the one the query pinned on its first page
        refuses, and the coordinator asks another replica."""
        to = msg.reply_to or sender
        c = self.core
        if c is None or c.role not in ("leader", "follower") or (c.role == "leader" and c.hw <= c.epoch_start):
            # a leader that has not committed in its epoch yet (just promoted
            # or restarted) may have a watermark below acknowledged writes
            self.send(to, QueryShardReply(msg.shard, msg.client, msg.req_id, "fail", node=c.id if c else "",
                                          leader=c.leader if c else None, error="replica is not serving yet"))
            return
        if msg.hw_max > c.hw:
            self.send(to, QueryShardReply(msg.shard, msg.client, msg.req_id, "fail", node=c.id, leader=c.leader,
                                          error=f"replica behind: high watermark {c.hw} < {msg.hw_max}"))
            return
        hw = c.hw if msg.hw_max < 0 else msg.hw_max
        after = None if msg.after_offset < 0 else (msg.after_ts_ms, msg.after_offset)
        if after is not None and c.tuning.bugs.query_drops_ties:
            after = (after[0], 1 << 62)  # deliberately broken: every record tied with the last one is skipped
        try:
            recs, more = scan(self._committed_batches(hw), hw, msg.from_ms, msg.to_ms, msg.key, after,
                              msg.max_records, msg.max_bytes)
        except ValueError as exc:  # too much to scan, or a log position gone (retention)
            self.send(to, QueryShardReply(msg.shard, msg.client, msg.req_id, "fail", node=c.id, error=str(exc)))
            return
        self.send(to, QueryShardReply(msg.shard, msg.client, msg.req_id, "ok", tuple(recs), hw, more, c.id,
                                      c.leader))

    def _committed_batches(self, hw: int) -> Any:
        """The log's batches below ``hw``, read 1 MiB at a time, at most
        ``QUERY_SCAN_BYTES_MAX`` (there is no time index yet: a query scans
        the shard; time-bucketed shard groups will bound that)."""
        pos, scanned = self.log.start_offset, 0
        while pos < hw:
            batches = self.log.read(pos, 1 << 20, max_offset=hw - 1)
            if not batches:
                return
            for b in batches:
                scanned += len(b)
                if scanned > QUERY_SCAN_BYTES_MAX:
                    raise ValueError(f"the query would scan more than {QUERY_SCAN_BYTES_MAX} bytes of "
                                     f"shard {self.core.shard}; narrow it")
                yield b
            pos = read_header(batches[-1], check_body=False).end_offset

    # ------------------------------------------------------- subscriptions
    def on_Subscribe(self, msg: Subscribe, sender: Any) -> None:
        to = msg.reply_to or sender
        c = self.core
        if c is None or c.role != "leader":
            self.send(to, SubscribeReply(msg.shard, msg.subscription, msg.consumer, "fail",
                                         c.leader if c else None, "not the leader"))
            return
        self.subs.subscribe(msg, to, self.now(), c.committed_records, closed=self._group_final())
        self._flush_subs()

    def _group_final(self) -> bool:
        """The shard's group is closed for good: past ``until_ms`` by
        ``CLOSE_SLACK_MS`` (a replica that learns of an early close late
        may take writes until then, protocol/groups.py) and every record
        in the log is committed."""
        c = self.core
        return (0 <= self.until_ms and self.until_ms + CLOSE_SLACK_MS <= int(self.wall() * 1000)
                and c.hw >= self.log.end_offset)

    def on_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        if self.leading:
            self.subs.unsubscribe(msg.subscription, msg.consumer, self.now(), self.core.committed_records)
            self._flush_subs()

    def on_AckRecords(self, msg: AckRecords, sender: Any) -> None:
        if self.leading:
            self.subs.ack(msg, self.now(), self.core.committed_records)
            self._flush_subs()

    def on_ShardStatus(self, msg: ShardStatus, sender: Any) -> None:
        if self.core is not None:
            self.send(sender, ShardStatusReply(self.core.shard, self.core.id, self.core.status()))

    def on_ShardInfo(self, msg: Any, sender: Any) -> None:
        if self.core is not None:
            status = self.core.status()
            status["subscriptions"] = self.subs.describe() if self.leading else []
            status["stats"] = self.stats.as_dict()
            status["followers"] = follower_positions(self.core)
            self.send(msg.reply_to or sender, ShardStatusReply(self.core.shard, self.core.id, status))
