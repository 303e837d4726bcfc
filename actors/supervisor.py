"""Supervision of shards (after ArangoDB's agency supervision).

One Supervisor actor runs on every node; it is *active* only while the
agency peer on its node is the agency leader.  Replicas report their state
to every supervisor every ``ShardTuning.state_interval_ms`` (150 ms in the
simulator, a quarter of the failover grace on real nodes) and nodes
heartbeat every 250 ms.

**Failover.**  When the active supervisor has not heard the planned leader
of a shard claim leadership of the planned epoch for ``grace_s``, it fails
the shard over in three steps, each a single agency transaction with a
precondition on the shard's epoch, so no two leaders can ever be promoted
for one epoch:

1. *fence*: ``epoch := e+1, leader := ""`` if ``epoch == e``; then tell
   every replica to adopt epoch e+1 (they stop accepting data from the old
   leader) and report its log position;
2. *collect* positions from a majority of the replicas, all taken after
   they adopted e+1: every write acknowledged at ``quorum`` in epoch e is on
   a majority, so on at least one of them;
3. *promote* the replica with the longest log -- greatest (epoch of last
   batch, end offset) -- with ``leader := X`` if ``epoch == e+1 and leader
   == ""``, then send ``Assign`` to the replicas.

**Replacement.**  A follower whose node has been silent for
``replace_after_s`` is replaced by a live spare node (actors/placement.py
picks the least loaded): ``replicas := new set, epoch := e+1`` if ``epoch
== e``, leader unchanged.  The spare's NodeActor creates the replica; the
leader starts epoch e+1 and copies its log to it.

**Topics.**  ``CreateTopic`` places the shards (placement.py) and writes the
topic and its shard plans in one transaction with the precondition that the
topic is absent; a non-active supervisor forwards it to the active one.

It also reconciles: a replica that reports an older epoch, or the planned
leader that came back from a restart without its role, is sent the plan
again.  The logic is the sans-IO ``SupervisorCore``; the actor routes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from actors.base import ChorusActor
from actors.failover_watch import FailoverWatch, why_failed
from actors.moves import MoveCore
from actors.placement import choose_replacement, cluster_load, place_topic
from actors.supervisor_groups import SupervisorGroups
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
from protocol.node import (
    AlterTopic,
    CreateTopic,
    DeleteTopic,
    FailoverStatsReply,
    MoveReply,
    NodeHeartbeat,
    NodesReply,
    ReplicaAddress,
    RequestDrain,
    RequestMove,
    TopicReply,
    TruncateShards,
)
from protocol.shard import Assign, Fence, HandoverReady, Position, ReplicaState, ShardBugs, SupervisorBoot
from protocol.groups import groups_path, walks_path
from protocol.topics import TopicName, TopicSpec, topic_path

PLAN_ROOT = "/chorus/plan/shards"
# How long a planned leader that has never reported its state may take to
# come up (a node reads new plans every poll and then starts an actor
# process for the replica) before the supervisor fails it over.
REPLICA_BOOT_S = 3.0


def plan_path(shard: str) -> str:
    return PLAN_ROOT + "/" + shard.replace("#", "/")


def shard_from_path(parts: tuple[str, ...]) -> str:
    """("t", "p", "c", "x", "3") -> "t/p/c/x#3"."""
    return "/".join(parts[:-1]) + "#" + parts[-1]


def walk_plans(tree: Any, parts: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(shard name, plan dict) for every plan in the agency subtree."""
    if not isinstance(tree, dict):
        return []
    if "epoch" in tree and "replicas" in tree:
        return [(shard_from_path(parts), tree)]
    out = []
    for k in sorted(tree):
        out.extend(walk_plans(tree[k], parts + (k,)))
    return out


@dataclass
class Plan:
    epoch: int
    leader: str  # "" while fenced
    replicas: tuple[str, ...]
    learners: tuple[str, ...] = ()  # a move's target while it copies (actors/moves.py)


@dataclass
class _Failover:
    phase: str  # fencing | collecting | promoting | replacing
    epoch: int  # the new epoch
    old_leader: str
    started_s: float
    last_send_s: float = -1.0
    positions: dict[str, Position] = field(default_factory=dict)
    req_id: int = 0
    new_replicas: tuple[str, ...] = ()


class SupervisorCore(SupervisorGroups):
    def __init__(self, node_id: str, client_id: str, grace_s: float, bugs: ShardBugs | None = None,
                 replace_after_s: float = 5.0, nodes: tuple[str, ...] = ()) -> None:
        self.node = node_id
        self.client = client_id
        self.grace_s = grace_s
        self.replace_after_s = replace_after_s
        self.nodes = tuple(nodes)
        self.bugs = bugs or ShardBugs()
        self.active = False
        self.active_since = 0.0
        self.loaded = False
        self.agency_leader: str | None = None
        self.plans: dict[str, Plan] = {}
        self.seen: dict[tuple[str, str], tuple[float, ReplicaState]] = {}
        # shard -> (epoch, when this supervisor first saw the plan of that
        # epoch): a leader that has never reported gets REPLICA_BOOT_S from then
        self.plan_since: dict[str, tuple[int, float]] = {}
        self.node_seen: dict[str, float] = {}
        self.failovers: dict[str, _Failover] = {}
        self.req_seq = 0
        self.inflight: dict[int, tuple[str, Any]] = {}  # req id -> (kind, shard or topic request)
        self.last_assign: dict[tuple[str, str], float] = {}
        self.resizing: dict[str, tuple[int, tuple[str, ...]]] = {}
        self.last_load_s = 0.0
        self.started_s: float | None = None
        self.refresh_s = 1.0  # re-read the plans: another supervisor may have changed them
        self.out: list[tuple] = []  # ("agency", op, req_id) / ("replica", shard, node, msg) / ("reply", to, msg)
        self.records: list[tuple[str, dict]] = []
        self.watch = FailoverWatch()  # why and how long (logs, metrics); no checker records
        self.wall_s = 0.0  # the host's wall clock at the last tick, for the watch's timestamps
        self.excluded: set[str] = set()  # draining or removed nodes: no new replicas there
        self.moves = MoveCore(self)
        self._groups_init()

    def take(self) -> tuple[list, list]:
        out, rec = self.out, self.records
        self.out, self.records = [], []
        return out, rec

    def _agency(self, kind: str, key: Any, op: Any) -> int:
        self.req_seq += 1
        self.inflight[self.req_seq] = (kind, key)
        self.out.append(("agency", op, self.req_seq))
        return self.req_seq

    def _to_replica(self, shard: str, node: str, msg: Any) -> None:
        self.out.append(("replica", shard, node, msg))

    def _reload(self) -> None:
        self.loaded = False
        self._agency("load", "", Read((PLAN_ROOT,)))

    # ----------------------------------------------------------- activity
    def set_active(self, active: bool, leader: str | None, now_s: float) -> None:
        self.agency_leader = leader
        if not active and self.active:
            for shard in list(self.watch.open):
                self.watch.abandoned(shard, "this supervisor is no longer active (agency leadership moved)")
        if active and not self.active:
            self.active = True
            self.active_since = now_s
            self.failovers = {}
            self._reload()
            self.moves.reload()
            self.records.append(("supervisor.active", {"node": self.node}))
        elif not active and self.active:
            self.active = False
            self.failovers = {}
            self.moves.deactivate()

    def replica_state(self, st: ReplicaState, now_s: float) -> None:
        self.seen[(st.shard, st.node)] = (now_s, st)
        self.node_seen[st.node] = now_s
        if self.watch.open:
            self.watch.leader_report(st.shard, st.node, st.role, st.epoch, now_s)

    def heartbeat(self, hb: NodeHeartbeat, now_s: float) -> None:
        self.node_seen[hb.node] = now_s

    def _alive(self, node: str, now_s: float, within_s: float) -> bool:
        t = self.node_seen.get(node)
        return t is not None and now_s - t <= within_s

    def _placeable(self, now_s: float) -> list[str]:
        """Live nodes that may take new replicas (not draining or removed)."""
        return sorted(n for n in self.nodes if self._alive(n, now_s, 2 * self.grace_s) and n not in self.excluded)

    # -------------------------------------------------------------- topics
    def create_topic(self, m: CreateTopic, reply_to: Any, now_s: float) -> None:
        def fail(err: str) -> None:
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "fail", error=err)))

        if not self.active or not self.loaded:
            fail("supervisor is not ready")
            return
        try:
            spec = TopicSpec.from_json(m.spec)
            alive = self._placeable(now_s)
            spec.validate(len(alive))
            load = cluster_load([(p.replicas, p.leader) for p in self.plans.values()])
            placed = place_topic(spec.shards, spec.replication_factor, alive, load)
        except ValueError as exc:
            fail(str(exc))
            return
        name = str(spec.name)
        shards = tuple(f"{name}#{i}" for i in range(spec.shards))
        muts = [Mutation(topic_path(spec.name), "set", spec.to_json())]
        extra: dict = {}
        if spec.shard_group_ms is not None:
            group_muts, extra["until_ms"] = self.group_create_muts(spec, placed)
            muts += group_muts
        for shard, reps in zip(shards, placed):
            muts.append(Mutation(plan_path(shard), "set",
                                 {"epoch": 1, "leader": reps[0], "replicas": list(reps), **extra}))
        self._agency("create", (m, reply_to, shards, tuple(placed)),
                     Txn(tuple(muts), (Precondition(topic_path(spec.name), "absent"),)))

    def change_topic(self, m: AlterTopic | DeleteTopic, reply_to: Any) -> None:
        """Alter or delete: read the current spec, then one transaction whose
        precondition is that the spec is still what was read."""
        if not self.active or not self.loaded:
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "fail",
                                                           error="supervisor is not ready")))
            return
        try:
            path = topic_path(TopicName.parse(m.name))
        except ValueError as exc:
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "fail", error=str(exc))))
            return
        self._agency("topic_read", (m, reply_to, path), Read((path,)))

    def _topic_read(self, key: Any, r: AgencyReply, now_s: float) -> None:
        m, reply_to, path = key

        def answer(status: str, error: str = "", shards: tuple = ()) -> None:
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, status, shards, error)))

        if r.status != "ok":
            answer("fail", r.error or "agency unavailable")
            return
        current = r.result["values"][0]
        if not current:
            answer("fail", f"topic {m.name} does not exist")
            return
        try:
            spec = TopicSpec.from_json(current)
        except ValueError as exc:
            answer("fail", f"stored spec unreadable: {exc}")
            return
        old_shards = self.topic_shards(spec)
        if isinstance(m, DeleteTopic):
            muts = [Mutation(path, "delete")] + [Mutation(plan_path(s), "delete") for s in old_shards]
            if spec.shard_group_ms is not None:
                muts += [Mutation(groups_path(str(spec.name)), "delete"), Mutation(walks_path(str(spec.name)), "delete")]
            self._agency("topic_write", (m, reply_to, (), (), old_shards),
                         Txn(tuple(muts), (Precondition(path, "equals", current),)))
            return
        try:
            new = spec.alter(**m.changes)
            alive = self._placeable(now_s)
            added = new.shards - spec.shards
            placed = []
            load = cluster_load([(p.replicas, p.leader) for p in self.plans.values()])
            if added or new.replication_factor > spec.replication_factor:
                new.validate(len(alive))
            if added:
                placed = place_topic(added, new.replication_factor, alive, load)
            resized = self._resize(old_shards, new.replication_factor, alive, load)
        except (ValueError, TypeError) as exc:
            answer("fail", str(exc))
            return
        shards = tuple(f"{new.name}#{i}" for i in range(spec.shards, new.shards))
        muts = [Mutation(path, "set", new.to_json())]
        pres = [Precondition(path, "equals", current)]
        for shard, (epoch, reps) in resized.items():
            pp = plan_path(shard)
            muts += [Mutation(pp + "/epoch", "set", epoch), Mutation(pp + "/replicas", "set", list(reps))]
            pres.append(Precondition(pp + "/epoch", "equals", epoch - 1))
        self.resizing = resized
        for shard, reps in zip(shards, placed):
            muts.append(Mutation(plan_path(shard), "set", {"epoch": 1, "leader": reps[0], "replicas": list(reps)}))
        all_shards = old_shards + shards
        self._agency("topic_write", (m, reply_to, shards, tuple(placed), all_shards),
                     Txn(tuple(muts), tuple(pres)))

    def _resize(self, shards: tuple[str, ...], rf: int, alive: list[str], load: dict) -> dict:
        """New (epoch, replicas) of every shard whose replica set must change
        for replication factor ``rf``: add least-loaded live spares, or drop
        followers (never the leader), each in a new epoch."""
        out = {}
        for shard in shards:
            plan = self.plans.get(shard)
            if plan is None or len(plan.replicas) == rf:
                continue
            if not plan.leader or shard in self.failovers:
                raise ValueError(f"shard {shard} is failing over; retry")
            if self.moves.moving(shard) or plan.learners:
                raise ValueError(f"shard {shard} is being moved; retry when the move is done")
            reps = list(plan.replicas)
            while len(reps) < rf:
                spare = choose_replacement(tuple(reps), alive, load)
                if spare is None:
                    raise ValueError(f"not enough live nodes for replication factor {rf}")
                reps.append(spare)
                leaders, count = load.get(spare, (0, 0))
                load = {**load, spare: (leaders, count + 1)}
            while len(reps) > rf:
                reps.remove(next(n for n in reversed(reps) if n != plan.leader))
            out[shard] = (plan.epoch + 1, tuple(reps))
        return out

    def _topic_written(self, key: Any, r: AgencyReply) -> None:
        m, reply_to, shards, placed, all_shards = key
        ok = r.status == "ok" and isinstance(r.result, dict) and r.result.get("ok")
        if not ok:
            status = "unknown" if r.status == "unknown" else "fail"
            err = "the topic changed concurrently; retry" if r.status == "ok" else (r.error or r.status)
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, status, error=err)))
            return
        if isinstance(m, DeleteTopic):
            for s in all_shards:
                self.plans.pop(s, None)
                self.plan_since.pop(s, None)
            self.records.append(("supervisor.topic_deleted", {"topic": m.name}))
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "ok", ())))
            return
        for shard, reps in zip(shards, placed):
            self.plans[shard] = Plan(1, reps[0], tuple(reps))
            for n in reps:
                self._to_replica(shard, n, Assign(shard, 1, reps[0], tuple(reps)))
        for shard, (epoch, reps) in self.resizing.items():
            old = self.plans[shard]
            self.plans[shard] = Plan(epoch, old.leader, reps)
            for n in sorted(set(old.replicas) | set(reps)):
                self._to_replica(shard, n, Assign(shard, epoch, old.leader, reps, old.learners))
        self.resizing = {}
        self.records.append(("supervisor.topic_altered", {"topic": m.name, "new_shards": list(shards)}))
        self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "ok", all_shards)))

    # -------------------------------------------------------- agency replies
    def agency_reply(self, r: AgencyReply, now_s: float) -> None:
        kind, key = self.inflight.pop(r.req_id, ("", None))
        if not kind or not self.active:
            return
        ok = r.status == "ok" and isinstance(r.result, dict)
        if kind == "load":
            if not ok:
                self._reload()
                return
            self._load(r.result["values"][0] or {})
            self.last_load_s = now_s
        elif kind == "create":
            m, reply_to, shards, placed = key
            if ok and r.result.get("ok"):
                for shard, reps in zip(shards, placed):
                    self.plans[shard] = Plan(1, reps[0], tuple(reps))
                    for n in reps:
                        self._to_replica(shard, n, Assign(shard, 1, reps[0], tuple(reps)))
                self.records.append(("supervisor.topic_created", {"shards": list(shards)}))
                self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "ok", shards)))
            else:
                err = "topic exists" if ok else (r.error or r.status)
                status = "unknown" if r.status == "unknown" else "fail"
                self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, status, error=err)))
        elif kind in ("move", "moves_load", "moves_drain", "moves_request"):
            self.moves.agency_reply(kind, key, r, now_s)
        elif kind == "topic_read":
            self._topic_read(key, r, now_s)
        elif kind == "topic_write":
            self._topic_written(key, r)
        elif kind == "groups_load":
            self._groups_loaded(r)
        elif kind.startswith("group_"):
            self.group_reply(kind[len("group_"):], key, r)
        elif kind in ("fence", "promote", "replace"):
            shard = key
            fo = self.failovers.get(shard)
            if fo is None or fo.req_id != r.req_id:
                return
            if not (ok and r.result.get("ok")):
                # precondition failed or outcome unknown: start over from the agency's plan
                self.records.append(("supervisor.txn_failed", {"shard": shard, "step": kind, "status": r.status}))
                del self.failovers[shard]
                self.watch.abandoned(shard, f"the {kind} transaction failed ({r.status}); plans reloaded")
                self._reload()
                return
            plan = self.plans[shard]
            if kind == "fence":
                self.plans[shard] = Plan(fo.epoch, "", plan.replicas, plan.learners)
                fo.phase = "collecting"
                fo.last_send_s = -1.0
                self.records.append(("supervisor.fenced", {"shard": shard, "epoch": fo.epoch}))
                self._send_fences(shard, fo, now_s)
            elif kind == "promote":
                leader = self._best(fo)
                self.plans[shard] = Plan(fo.epoch, leader, plan.replicas, plan.learners)
                del self.failovers[shard]
                self.records.append(("supervisor.promoted", {"shard": shard, "epoch": fo.epoch, "leader": leader,
                                                             "old_leader": fo.old_leader}))
                self.watch.promoted(shard, leader, fo.epoch, now_s)
                for n in plan.replicas + plan.learners:
                    self._to_replica(shard, n, Assign(shard, fo.epoch, leader, plan.replicas, plan.learners))
            else:
                self.plans[shard] = Plan(fo.epoch, plan.leader, fo.new_replicas, plan.learners)
                del self.failovers[shard]
                self.records.append(("supervisor.replaced", {"shard": shard, "epoch": fo.epoch,
                                                             "replicas": list(fo.new_replicas)}))
                for n in sorted(set(plan.replicas) | set(fo.new_replicas) | set(plan.learners)):
                    self._to_replica(shard, n, Assign(shard, fo.epoch, plan.leader, fo.new_replicas, plan.learners))

    def _load(self, tree: dict) -> None:
        fresh = {
            shard: Plan(int(p["epoch"]), str(p.get("leader", "")), tuple(p.get("replicas", ())),
                        tuple(p.get("learners", ())))
            for shard, p in walk_plans(tree)
        }
        for shard in [s for s in self.plans if s not in fresh and s not in self.failovers]:
            del self.plans[shard]  # deleted (by us or by another supervisor)
            self.plan_since.pop(shard, None)
        for shard, plan in fresh.items():
            mine = self.plans.get(shard)
            # keep a newer plan we committed after this read was taken
            if mine is None or plan.epoch > mine.epoch or (plan.epoch == mine.epoch and shard not in self.failovers):
                self.plans[shard] = plan
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
        reason, silent = why_failed(plan.leader, self.seen.get((shard, plan.leader)), plan.epoch, now_s)
        self.watch.detected(shard, plan.epoch, plan.leader, reason, silent, now_s, self.wall_s)
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

    def _maybe_replace(self, shard: str, plan: Plan, now_s: float) -> bool:
        dead = [n for n in plan.replicas if n != plan.leader and self.node_seen.get(n) is not None
                and not self._alive(n, now_s, self.replace_after_s)]
        if not dead:
            return False
        alive = self._placeable(now_s)
        load = cluster_load([(p.replicas, p.leader) for p in self.plans.values()])
        spare = choose_replacement(plan.replicas + plan.learners, alive, load)
        if spare is None:
            return False
        new = tuple(spare if n == dead[0] else n for n in plan.replicas)
        fo = _Failover("replacing", plan.epoch + 1, plan.leader, now_s, new_replicas=new)
        self.failovers[shard] = fo
        path = plan_path(shard)
        self.records.append(("supervisor.replace", {"shard": shard, "dead": dead[0], "spare": spare}))
        self.watch.replaced(shard, dead[0], spare)
        fo.req_id = self._agency("replace", shard, Txn(
            (Mutation(path + "/epoch", "set", fo.epoch), Mutation(path + "/replicas", "set", list(new))),
            (Precondition(path + "/epoch", "equals", plan.epoch),)))
        return True

    # ---------------------------------------------------------------- tick
    def tick(self, now_s: float) -> None:
        if self.started_s is None:
            self.started_s = now_s
        if not self.active or not self.loaded:
            return
        if now_s - self.last_load_s >= self.refresh_s and "load" not in {k for k, _ in self.inflight.values()}:
            self._agency("load", "", Read((PLAN_ROOT,)))
            self.moves.reload()
        self.groups_tick(now_s)
        # Every supervisor receives replica states all the time, so a newly
        # active one already knows who is alive: it only waits out its own
        # start (restart), not its activation.
        settling = now_s - self.started_s < self.grace_s
        for shard in sorted(self.plans):
            plan = self.plans[shard]
            if self.plan_since.get(shard, (None,))[0] != plan.epoch:
                self.plan_since[shard] = (plan.epoch, now_s)
            fo = self.failovers.get(shard)
            if fo is not None:
                if now_s - fo.started_s > 10 * self.grace_s:
                    del self.failovers[shard]  # give up this round; a later tick starts again
                    self.watch.abandoned(shard, f"not done within {10 * self.grace_s:g} s ({fo.phase})")
                elif fo.phase == "collecting" and now_s - fo.last_send_s >= 0.5:
                    self._send_fences(shard, fo, now_s)
                continue
            if settling:
                continue
            if not plan.leader or not self._leader_alive(shard, plan, now_s):
                self._start_failover(shard, plan, now_s)
                continue
            if not self.moves.moving(shard) and self._maybe_replace(shard, plan, now_s):
                continue
            self._reconcile(shard, plan, now_s)
        if not settling:
            self.moves.tick(now_s)

    def _leader_alive(self, shard: str, plan: Plan, now_s: float) -> bool:
        seen = self.seen.get((shard, plan.leader))
        if seen is None:
            # never reported: a replica that is still being created (a new
            # topic: the node reads the plan, then starts an actor process)
            # or one of a node that is down.  Wait for its first report.
            started = self.started_s if self.started_s is not None else now_s
            since = max(started, self.plan_since.get(shard, (0, now_s))[1])
            return now_s - since < max(2 * self.grace_s, REPLICA_BOOT_S)
        t, st = seen
        if now_s - t > self.grace_s:
            return False
        if st.epoch == plan.epoch and st.role == "leader":
            return True
        # alive but not (yet) leading the planned epoch: give it the plan
        return st.epoch <= plan.epoch and self._nudge(shard, plan.leader, plan, now_s)

    def _nudge(self, shard: str, node: str, plan: Plan, now_s: float) -> bool:
        last = self.last_assign.get((shard, node), -1e9)
        if now_s - last >= 0.5:
            self.last_assign[(shard, node)] = now_s
            self._to_replica(shard, node, Assign(shard, plan.epoch, plan.leader, plan.replicas, plan.learners))
            return True
        return now_s - last < self.grace_s

    def _reconcile(self, shard: str, plan: Plan, now_s: float) -> None:
        for n in plan.replicas + plan.learners:
            seen = self.seen.get((shard, n))
            if seen is None or n == plan.leader:
                continue
            st = seen[1]
            if st.epoch < plan.epoch or (st.epoch == plan.epoch and st.leader != plan.leader):
                self._nudge(shard, n, plan, now_s)


class Supervisor(ChorusActor):
    """Actor shell: routes replica states, heartbeats, positions, topic
    requests and agency replies to the core; asks the local agency peer
    whether it leads; sends the core's effects."""

    TICK_S = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.core: SupervisorCore | None = None
        self.gen = 0
        self.replica_addrs: dict[tuple[str, str], Any] = {}

    def on_SupervisorBoot(self, msg: SupervisorBoot, sender: Any) -> None:
        if self.core is not None:
            return
        if msg.host is not None:
            self.adopt_host_config(msg.host)
        self.boot = msg
        self.sup_addrs = dict(msg.supervisors)
        client = f"supervisor-{msg.node_id}-{self.rng.getrandbits(48):012x}"
        self.core = SupervisorCore(msg.node_id, client, msg.grace_s, msg.bugs, msg.replace_after_s, msg.nodes)
        self._arm()

    def _arm(self) -> None:
        self.gen += 1
        self.set_timer(self.TICK_S, ("tick", self.gen))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload != ("tick", self.gen) or self.core is None:
            return
        self.send(self.boot.agency, StatusQuery())
        self.core.wall_s = self.wall()
        self.core.wall_ms = int(self.wall() * 1000)
        self.core.tick(self.now())
        self._flush()
        self._arm()

    def on_StatusReply(self, msg: StatusReply, sender: Any) -> None:
        self.core.set_active(msg.status.get("role") == "leader", msg.status.get("leader"), self.now())
        self._flush()

    def on_ReplicaState(self, msg: ReplicaState, sender: Any) -> None:
        # The sender is the replica itself: this is also how a supervisor
        # that restarted learns (again) where every replica lives.
        self.replica_addrs[(msg.shard, msg.node)] = sender
        if self.core is not None:
            self.core.replica_state(msg, self.now())

    def on_NodeHeartbeat(self, msg: NodeHeartbeat, sender: Any) -> None:
        if self.core is not None:
            self.core.heartbeat(msg, self.now())

    def on_ReplicaAddress(self, msg: ReplicaAddress, sender: Any) -> None:
        self.replica_addrs[(msg.shard, msg.node)] = msg.address

    def on_HandoverReady(self, msg: HandoverReady, sender: Any) -> None:
        if self.core is not None:
            self.core.moves.handover_ready(msg)

    def on_Position(self, msg: Position, sender: Any) -> None:
        if self.core is not None:
            self.core.position(msg, self.now())
            self._flush()

    def _to_active(self, msg: Any, sender: Any, reply: type) -> Any:
        """Where to answer ``msg``, if this supervisor is the active one and
        carries it out; otherwise pass it to the active supervisor (the one
        on the agency leader's node), or fail it with ``reply``, and None."""
        if self.core is None:
            return None
        to = msg.reply_to or sender
        if self.core.active:
            return to
        target = self.sup_addrs.get(self.core.agency_leader or "")
        if target is not None and self.core.agency_leader != self.boot.node_id:
            self.send(target, replace(msg, reply_to=to))
        else:
            self.send(to, reply(msg.client, msg.req_id, "fail", error="no active supervisor; retry"))
        return None

    def _topic_request(self, msg: CreateTopic | AlterTopic | DeleteTopic | TruncateShards, sender: Any) -> None:
        """Carry out a topic request if active, else pass it to the active
        supervisor (the one on the agency leader's node)."""
        to = self._to_active(msg, sender, TopicReply)
        if to is None:
            return
        msg = replace(msg, reply_to=to)
        self.core.wall_ms = int(self.wall() * 1000)
        if isinstance(msg, CreateTopic):
            self.core.create_topic(msg, to, self.now())
        elif isinstance(msg, TruncateShards):
            self.core.truncate_shards(msg, to, self.now())
        else:
            self.core.change_topic(msg, to)
        self._flush()

    on_CreateTopic = on_AlterTopic = on_DeleteTopic = on_TruncateShards = _topic_request

    def on_FailoverStatsQuery(self, msg: Any, sender: Any) -> None:
        if self.core is None:
            return
        to, leader = msg.reply_to or sender, self.core.agency_leader
        if msg.active_only and msg.reply_to is None and not self.core.active and leader in self.sup_addrs \
                and leader != self.boot.node_id:
            self.send(self.sup_addrs[leader], replace(msg, reply_to=to))
            return
        self.send(to, FailoverStatsReply(self.core.node, self.core.active, self.core.watch.stats(), msg.req_id))

    def _move_request(self, msg: RequestMove | RequestDrain, sender: Any) -> None:
        """Moves and drains: the active supervisor writes them to the agency
        (actors/moves.py); another passes them on, as topic requests."""
        to = self._to_active(msg, sender, MoveReply)
        if to is None:
            return
        msg = replace(msg, reply_to=to)
        if isinstance(msg, RequestMove):
            self.core.moves.request_move(msg, to, self.now())
        else:
            self.core.moves.request_drain(msg, to)
        self._flush()

    on_RequestMove = on_RequestDrain = _move_request

    def on_NodesQuery(self, msg: Any, sender: Any) -> None:
        if self.core is not None:
            now = self.now()
            seen = tuple((n, round(now - t, 3)) for n, t in sorted(self.core.node_seen.items()))
            self.send(sender, NodesReply(seen, tuple(self.core.nodes)))

    def on_PeersAre(self, msg: Any, sender: Any) -> None:
        """Production directory update: every node's current supervisor."""
        for ep in msg.nodes:
            if ep.supervisor is not None:
                self.sup_addrs[ep.node_id] = ep.supervisor
        if self.core is not None:
            # a node that joined the cluster can hold replicas from now on
            self.core.nodes = tuple(sorted(set(self.core.nodes) | {ep.node_id for ep in msg.nodes}))

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
            elif eff[0] == "reply":
                self.send(eff[1], eff[2])
            else:
                _, shard, node, m = eff
                addr = self.replica_addrs.get((shard, node))
                if addr is not None:
                    self.send(addr, m)
        for kind, fields in records:
            self.record(kind, **fields)
        for level, text, fields in self.core.watch.take_logs():
            self.log_event(level, text, **fields)
