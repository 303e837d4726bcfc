"""Supervision of shard leaders (after ArangoDB's agency supervision).

One Supervisor actor runs on every node; it is *active* only while the
agency peer on its node is the agency leader.  Replicas report their state
to every supervisor every 250 ms.  When the supervisor has not heard the
planned leader of a shard claim leadership of the planned epoch for
``grace_s``, it fails the shard over in three steps, each a single agency
transaction with a precondition on the shard's epoch, so that no two
leaders can ever be promoted for one epoch:

1. **fence**: ``epoch := e+1, leader := ""`` if ``epoch == e``; then tell
   every replica to adopt epoch e+1 (which stops them accepting data from
   the old leader) and report its log position;
2. **collect** positions from a majority of the replicas, all taken after
   they adopted e+1: every write acknowledged at ``quorum`` in epoch e is on
   a majority, so on at least one of them;
3. **promote** the replica with the longest log -- greatest (epoch of last
   batch, end offset) -- with ``leader := X`` if ``epoch == e+1 and leader
   == ""``, then send ``Assign`` to the replicas.

It also reconciles: a replica that reports an older epoch, or the planned
leader that came back from a restart without its role, is sent the plan
again.  Placement of new topics uses actors/placement.py.

The logic is the sans-IO ``SupervisorCore``; the actor routes messages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.base import ChorusActor
from protocol.agency import (
    AgencyReply,
    AgencyRequest,
    Mutation,
    Precondition,
    Read,
    StatusQuery,
    StatusReply,
    Txn,
)
from protocol.shard import Assign, Fence, Position, ReplicaState, ShardBugs

PLAN_ROOT = "/chorus/plan/shards"


def plan_path(shard: str) -> str:
    return PLAN_ROOT + "/" + shard.replace("#", "/")


@dataclass
class Plan:
    epoch: int
    leader: str  # "" while fenced
    replicas: tuple[str, ...]


@dataclass
class _Failover:
    phase: str  # fencing | collecting | promoting
    epoch: int  # the new epoch
    old_leader: str
    started_s: float
    last_send_s: float = -1.0
    positions: dict[str, Position] = field(default_factory=dict)
    req_id: int = 0


@dataclass(frozen=True)
class SupervisorBoot:
    node_id: str
    agency: Any  # address of the local RaftPeer
    replicas: tuple[tuple[str, str, Any], ...]  # (shard, node, address) of every replica
    plans: tuple[tuple[str, int, str, tuple[str, ...]], ...]  # initial (shard, epoch, leader, replicas)
    grace_s: float = 0.6
    bugs: ShardBugs = ShardBugs()
    host: Any = None


class SupervisorCore:
    def __init__(self, node_id: str, client_id: str, grace_s: float, bugs: ShardBugs | None = None) -> None:
        self.node = node_id
        self.client = client_id
        self.grace_s = grace_s
        self.bugs = bugs or ShardBugs()
        self.active = False
        self.active_since = 0.0
        self.loaded = False
        self.plans: dict[str, Plan] = {}
        self.initial: dict[str, Plan] = {}
        self.seen: dict[tuple[str, str], tuple[float, ReplicaState]] = {}
        self.failovers: dict[str, _Failover] = {}
        self.req_seq = 0
        self.inflight: dict[int, tuple[str, str]] = {}  # req id -> (kind, shard)
        self.last_assign: dict[tuple[str, str], float] = {}
        self.out: list[tuple[str, Any]] = []  # ("agency", Txn|Read, req_id) / ("replica", shard, node, msg)
        self.records: list[tuple[str, dict]] = []

    def take(self) -> tuple[list, list]:
        out, rec = self.out, self.records
        self.out, self.records = [], []
        return out, rec

    def _agency(self, kind: str, shard: str, op: Any) -> int:
        self.req_seq += 1
        self.inflight[self.req_seq] = (kind, shard)
        self.out.append(("agency", op, self.req_seq))
        return self.req_seq

    def _to_replica(self, shard: str, node: str, msg: Any) -> None:
        self.out.append(("replica", shard, node, msg))

    # ----------------------------------------------------------- activity
    def set_active(self, active: bool, now_s: float) -> None:
        if active and not self.active:
            self.active = True
            self.active_since = now_s
            self.loaded = False
            self.failovers = {}
            self._agency("load", "", Read((PLAN_ROOT,)))
            self.records.append(("supervisor.active", {"node": self.node}))
        elif not active and self.active:
            self.active = False
            self.failovers = {}

    def replica_state(self, st: ReplicaState, now_s: float) -> None:
        self.seen[(st.shard, st.node)] = (now_s, st)

    # -------------------------------------------------------- agency replies
    def agency_reply(self, r: AgencyReply, now_s: float) -> None:
        kind, shard = self.inflight.pop(r.req_id, ("", ""))
        if not kind or not self.active:
            return
        ok = r.status == "ok" and isinstance(r.result, dict)
        if kind == "load":
            if not ok:
                self._agency("load", "", Read((PLAN_ROOT,)))
                return
            self._load(r.result["values"][0] or {})
        elif kind == "create":
            if ok and r.result.get("ok"):
                self.plans[shard] = self.initial[shard]
            else:
                self.loaded = False
                self._agency("load", "", Read((PLAN_ROOT,)))
        elif kind in ("fence", "promote"):
            fo = self.failovers.get(shard)
            if fo is None or fo.req_id != r.req_id:
                return
            if not (ok and r.result.get("ok")):
                # precondition failed or outcome unknown: start over from the agency's plan
                self.records.append(("supervisor.txn_failed", {"shard": shard, "step": kind, "status": r.status}))
                del self.failovers[shard]
                self.loaded = False
                self._agency("load", "", Read((PLAN_ROOT,)))
                return
            plan = self.plans[shard]
            if kind == "fence":
                self.plans[shard] = Plan(fo.epoch, "", plan.replicas)
                fo.phase = "collecting"
                fo.last_send_s = -1.0
                self.records.append(("supervisor.fenced", {"shard": shard, "epoch": fo.epoch}))
                self._send_fences(shard, fo, now_s)
            else:
                leader = self._best(fo)
                self.plans[shard] = Plan(fo.epoch, leader, plan.replicas)
                del self.failovers[shard]
                self.records.append(("supervisor.promoted", {"shard": shard, "epoch": fo.epoch, "leader": leader,
                                                             "old_leader": fo.old_leader}))
                for n in plan.replicas:
                    self._to_replica(shard, n, Assign(shard, fo.epoch, leader, plan.replicas))

    def _load(self, tree: dict) -> None:
        plans: dict[str, Plan] = {}
        for shard in sorted(self.initial):
            node = tree
            for part in plan_path(shard)[len(PLAN_ROOT) + 1:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict) and "epoch" in node:
                plans[shard] = Plan(int(node["epoch"]), str(node.get("leader", "")),
                                    tuple(node.get("replicas", ())))
            else:
                p = self.initial[shard]
                self._agency("create", shard, Txn(
                    (Mutation(plan_path(shard), "set", {"epoch": p.epoch, "leader": p.leader,
                                                         "replicas": list(p.replicas)}),),
                    (Precondition(plan_path(shard), "absent"),)))
        self.plans = plans
        self.loaded = True

    # ------------------------------------------------------------ failover
    def position(self, p: Position, now_s: float) -> None:
        fo = self.failovers.get(p.shard)
        if fo is None or fo.phase != "collecting" or p.epoch != fo.epoch:
            return
        fo.positions[p.node] = p
        plan = self.plans[p.shard]
        if len(fo.positions) >= len(plan.replicas) // 2 + 1:
            self._promote(p.shard, fo)

    def _best(self, fo: _Failover) -> str:
        return max(fo.positions.values(), key=lambda p: (p.last_epoch, p.end, p.node != fo.old_leader, p.node)).node

    def _promote(self, shard: str, fo: _Failover) -> None:
        fo.phase = "promoting"
        path = plan_path(shard)
        pre: tuple = () if self.bugs.promote_without_precondition else (
            Precondition(path + "/epoch", "equals", fo.epoch), Precondition(path + "/leader", "equals", ""))
        fo.req_id = self._agency("promote", shard, Txn((Mutation(path + "/leader", "set", self._best(fo)),), pre))

    def _start_failover(self, shard: str, plan: Plan, now_s: float) -> None:
        fo = _Failover("fencing", plan.epoch + 1, plan.leader, now_s)
        self.failovers[shard] = fo
        path = plan_path(shard)
        self.records.append(("supervisor.failover", {"shard": shard, "epoch": plan.epoch, "leader": plan.leader}))
        if self.bugs.promote_without_precondition:
            # Broken variant: no fencing round and no preconditions -- promote
            # the longest log among the states heard, straight away.
            for n in plan.replicas:
                seen = self.seen.get((shard, n))
                if seen is not None and n != plan.leader:
                    st = seen[1]
                    fo.positions[n] = Position(shard, n, fo.epoch, st.last_epoch, st.end)
            if not fo.positions:
                del self.failovers[shard]
                return
            self.plans[shard] = Plan(fo.epoch, "", plan.replicas)
            fo.req_id = self._agency("promote", shard, Txn((Mutation(path + "/epoch", "set", fo.epoch),
                                                             Mutation(path + "/leader", "set", self._best(fo)))))
            fo.phase = "promoting"
            return
        fo.req_id = self._agency("fence", shard, Txn(
            (Mutation(path + "/epoch", "set", fo.epoch), Mutation(path + "/leader", "set", "")),
            (Precondition(path + "/epoch", "equals", plan.epoch),)))

    def _send_fences(self, shard: str, fo: _Failover, now_s: float) -> None:
        fo.last_send_s = now_s
        for n in self.plans[shard].replicas:
            if n not in fo.positions:
                self._to_replica(shard, n, Fence(shard, fo.epoch))

    # ---------------------------------------------------------------- tick
    def tick(self, now_s: float) -> None:
        if not self.active or not self.loaded:
            return
        settling = now_s - self.active_since < self.grace_s
        for shard in sorted(self.plans):
            plan = self.plans[shard]
            fo = self.failovers.get(shard)
            if fo is not None:
                if now_s - fo.started_s > 10 * self.grace_s:
                    del self.failovers[shard]  # give up this round; a later tick starts again
                elif fo.phase == "collecting" and now_s - fo.last_send_s >= 0.5:
                    self._send_fences(shard, fo, now_s)
                continue
            if settling:
                continue
            if not plan.leader or not self._leader_alive(shard, plan, now_s):
                self._start_failover(shard, plan, now_s)
                continue
            self._reconcile(shard, plan, now_s)

    def _leader_alive(self, shard: str, plan: Plan, now_s: float) -> bool:
        seen = self.seen.get((shard, plan.leader))
        if seen is None:
            return now_s - self.active_since < 2 * self.grace_s
        t, st = seen
        if now_s - t > self.grace_s:
            return False
        if st.epoch == plan.epoch and st.role == "leader":
            return True
        # alive but not (yet) leading the planned epoch: give it the plan
        return now_s - t <= self.grace_s and st.epoch <= plan.epoch and self._nudge(shard, plan.leader, plan, now_s)

    def _nudge(self, shard: str, node: str, plan: Plan, now_s: float) -> bool:
        last = self.last_assign.get((shard, node), -1e9)
        if now_s - last >= 0.5:
            self.last_assign[(shard, node)] = now_s
            self._to_replica(shard, node, Assign(shard, plan.epoch, plan.leader, plan.replicas))
            return True
        return now_s - last < self.grace_s

    def _reconcile(self, shard: str, plan: Plan, now_s: float) -> None:
        for n in plan.replicas:
            seen = self.seen.get((shard, n))
            if seen is None or n == plan.leader:
                continue
            st = seen[1]
            if st.epoch < plan.epoch or (st.epoch == plan.epoch and st.leader != plan.leader):
                self._nudge(shard, n, plan, now_s)


class Supervisor(ChorusActor):
    """Actor shell: routes replica states, positions and agency replies to
    the core, asks the local agency peer whether it leads, and sends the
    core's effects."""

    TICK_S = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.core: SupervisorCore | None = None
        self.gen = 0

    def on_SupervisorBoot(self, msg: SupervisorBoot, sender: Any) -> None:
        if self.core is not None:
            return
        if msg.host is not None:
            self.adopt_host_config(msg.host)
        self.boot = msg
        client = f"supervisor-{msg.node_id}-{self.rng.getrandbits(48):012x}"
        self.core = SupervisorCore(msg.node_id, client, msg.grace_s, msg.bugs)
        self.core.initial = {s: Plan(e, l, tuple(r)) for s, e, l, r in msg.plans}
        self.replica_addrs = {(s, n): a for s, n, a in msg.replicas}
        self._arm()

    def _arm(self) -> None:
        self.gen += 1
        self.set_timer(self.TICK_S, ("tick", self.gen))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload != ("tick", self.gen) or self.core is None:
            return
        self.send(self.boot.agency, StatusQuery())
        self.core.tick(self.now())
        self._flush()
        self._arm()

    def on_StatusReply(self, msg: StatusReply, sender: Any) -> None:
        self.core.set_active(msg.status.get("role") == "leader", self.now())
        self._flush()

    def on_ReplicaState(self, msg: ReplicaState, sender: Any) -> None:
        if self.core is not None:
            self.core.replica_state(msg, self.now())

    def on_Position(self, msg: Position, sender: Any) -> None:
        if self.core is not None:
            self.core.position(msg, self.now())
            self._flush()

    def on_AgencyReply(self, msg: AgencyReply, sender: Any) -> None:
        if self.core is not None:
            self.core.agency_reply(msg, self.now())
            self._flush()

    def _flush(self) -> None:
        out, records = self.core.take()
        for eff in out:
            if eff[0] == "agency":
                _, op, req_id = eff
                self.send(self.boot.agency, AgencyRequest(self.core.client, req_id, op))
            else:
                _, shard, node, m = eff
                addr = self.replica_addrs.get((shard, node))
                if addr is not None:
                    self.send(addr, m)
        for kind, fields in records:
            self.record(kind, **fields)
