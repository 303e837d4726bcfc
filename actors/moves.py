"""Shard moves and node drains, sans-IO: the planned version of follower
replacement (after ArangoDB's MoveShard job).

A move of shard S's replica from node F to node T is a record in the
agency at ``/chorus/moves/<shard path>`` that any node writes (``phase:
requested``) and the active supervisor drives, one agency transaction per
step, each with a precondition on the shard's epoch *and* on the move
record as it read it -- so a stale supervisor can never apply a step twice
or apply one to a move that another supervisor already advanced:

1. *learn*: ``plan.learners := [T], epoch := e+1``; move ``learning``.
   T's node creates the replica; the leader copies its log to it
   (``ShardTuning.move_bytes_per_s``), and T counts for nothing.
2. *join*, once T reported the epoch with its end at the leader's high
   watermark: ``replicas += [T], learners := [], epoch := e+2``; move
   ``joined``.  The shard now has one voting replica more than its
   replication factor: a write commits on a majority of old + T.
3. if F leads: *hand over*.  ``Handover`` freezes the leader (persisted;
   no writes until a newer epoch) until T holds its whole log, then
   ``leader := T, epoch := e+3`` if ``epoch == e+2 and leader == F``.
4. *leave*, once the leader committed in the current epoch (high
   watermark above its epoch's start: everything before is on a majority
   of the enlarged set, so on a majority of the set without F) and T is
   at that watermark: ``replicas -= [F], epoch += 1``; move ``done``.

Rolled back (``replicas``/``learners`` without T, epoch + 1, move
``rolled_back`` with the reason) when T stays silent for
``replace_after_s``, or the request no longer fits the plan.  A frozen
leader whose handover will not happen is released by an epoch bump that
keeps it.  A crash of F only delays the move; of the agency leader, moves
the work to the next active supervisor, which reads the records.

Drains: ``/chorus/drain/<node>`` = ``{"state": "draining"}`` makes the
supervisor request moves off that node, ``moves_max`` at a time, to the
least loaded live node that is not draining; ``removed`` keeps it out.
"""
from __future__ import annotations

from typing import Any

from actors.placement import choose_replacement, cluster_load
from protocol.agency import AgencyReply, Mutation, Precondition, Read, Txn
from protocol.node import MoveReply, RequestDrain, RequestMove
from protocol.shard import Assign, Handover, HandoverReady

MOVES_ROOT = "/chorus/moves"
REPLICA_BOOT_S = 3.0  # as the supervisor's: a new replica's node reads the plan, then starts it
DRAIN_ROOT = "/chorus/drain"
ACTIVE = ("requested", "learning", "joined")
HANDOVER_RESEND_S = 0.5
# The target keeps up when it holds what the leader had committed this long
# ago: under steady writes the two reports are never taken at the same time,
# so "at the leader's watermark now" would be a matter of luck.
KEEP_UP_S = 0.5
MARKS_MAX = 64


def move_path(shard: str) -> str:
    return MOVES_ROOT + "/" + shard.replace("#", "/")


def drain_path(node: str) -> str:
    return DRAIN_ROOT + "/" + node


def walk_moves(tree: Any) -> dict[str, dict]:
    """shard -> move record, for every record in the agency subtree."""
    out: dict[str, dict] = {}

    def walk(t: Any) -> None:
        if not isinstance(t, dict):
            return
        if "shard" in t and "phase" in t:
            out[str(t["shard"])] = t
            return
        for k in sorted(t):
            walk(t[k])

    walk(tree)
    return out


class MoveCore:
    """Drives the moves of the shards of one (active) supervisor.  It reads
    and writes the supervisor core's plans and sends through its effects."""

    def __init__(self, sup: Any, moves_max: int = 2) -> None:
        self.sup = sup
        self.moves_max = moves_max  # moves the supervisor runs at once (drains request no more)
        self.moves: dict[str, dict] = {}
        self.drains: dict[str, str] = {}  # node -> draining | removed
        self.loaded = False
        self.busy: set[str] = set()  # shards with a transaction of ours in flight
        self.ready: dict[str, int] = {}  # shard -> epoch whose leader said HandoverReady
        self.last_handover: dict[str, float] = {}
        self.phase_since: dict[str, tuple[str, float]] = {}
        self.marks: dict[tuple[str, int], list[tuple[float, int]]] = {}  # (shard, epoch) -> (time, leader hw)

    # ------------------------------------------------------------ loading
    def reload(self) -> None:
        self.sup._agency("moves_load", "", Read((MOVES_ROOT, DRAIN_ROOT)))

    def loaded_reply(self, r: AgencyReply) -> None:
        if r.status != "ok" or not isinstance(r.result, dict):
            return
        moves_tree, drain_tree = r.result["values"]
        fresh = walk_moves(moves_tree or {})
        for shard in self.busy:  # our own write in flight is newer than this read
            if shard in self.moves:
                fresh[shard] = self.moves[shard]
        self.moves = fresh
        self.drains = {n: str(v.get("state", "draining")) for n, v in sorted((drain_tree or {}).items())
                       if isinstance(v, dict)}
        self.sup.excluded = set(self.drains)
        self.loaded = True

    def deactivate(self) -> None:
        self.busy = set()
        self.ready = {}
        self.loaded = False

    def moving(self, shard: str) -> bool:
        m = self.moves.get(shard)
        return m is not None and m.get("phase") in ACTIVE

    # ----------------------------------------------------------- requests
    def request_move(self, m: RequestMove, reply_to: Any, now_s: float) -> None:
        """Validate a move against the plans and write its record (if no
        other move of the shard is under way)."""
        sup = self.sup

        def fail(err: str) -> None:
            sup.out.append(("reply", reply_to, MoveReply(m.client, m.req_id, "fail", err)))

        plan = sup.plans.get(m.shard)
        if not sup.active or not sup.loaded or not self.loaded:
            fail("supervisor is not ready; retry")
        elif plan is None:
            fail(f"no such shard: {m.shard}")
        elif m.frm not in plan.replicas:
            fail(f"{m.frm} holds no replica of {m.shard} (replicas: {', '.join(plan.replicas)})")
        elif m.to not in sup.nodes:
            fail(f"no such node: {m.to}")
        elif m.to in plan.replicas or m.to in plan.learners:
            fail(f"{m.to} already holds a replica of {m.shard}")
        elif m.to in self.drains:
            fail(f"{m.to} is {self.drains[m.to]}; it takes no replicas")
        elif self.moving(m.shard) or m.shard in self.busy:
            mv = self.moves[m.shard]
            fail(f"{m.shard} is already moving ({mv['from']} -> {mv['to']}, {mv['phase']})")
        elif not sup._alive(m.to, now_s, 2 * sup.grace_s):
            fail(f"{m.to} is not alive")
        else:
            mv = {"shard": m.shard, "from": m.frm, "to": m.to, "phase": "requested", "by": m.client}
            cur = self.moves.get(m.shard)
            pre = Precondition(move_path(m.shard), "equals", cur) if cur is not None else \
                Precondition(move_path(m.shard), "absent")
            sup._agency("moves_request", (m, reply_to, mv), Txn((Mutation(move_path(m.shard), "set", mv),), (pre,)))

    def request_drain(self, m: RequestDrain, reply_to: Any) -> None:
        sup = self.sup
        if m.state not in ("draining", "removed", ""):
            sup.out.append(("reply", reply_to, MoveReply(m.client, m.req_id, "fail",
                                                         f"unknown drain state {m.state!r}")))
            return
        op = Mutation(drain_path(m.node), "set", {"state": m.state}) if m.state else \
            Mutation(drain_path(m.node), "delete")
        sup._agency("moves_request", (m, reply_to, {"node": m.node, "state": m.state}), Txn((op,), ()))

    def _requested_reply(self, key: Any, r: AgencyReply) -> None:
        m, reply_to, mv = key
        ok = r.status == "ok" and isinstance(r.result, dict) and r.result.get("ok")
        if ok:
            if isinstance(m, RequestMove):
                self.moves[m.shard] = mv
                self.sup.records.append(("move.requested", {"shard": m.shard, "from": m.frm, "to": m.to,
                                                            "by": m.client}))
            else:
                if m.state:
                    self.drains[m.node] = m.state
                else:
                    self.drains.pop(m.node, None)
                self.sup.excluded = set(self.drains)
                self.sup.records.append(("move.drain", {"node": m.node, "state": m.state}))
            self.sup.out.append(("reply", reply_to, MoveReply(m.client, m.req_id, "ok", move=mv)))
            return
        err = "another move of the shard started; retry" if r.status == "ok" else (r.error or r.status)
        status = "unknown" if r.status == "unknown" else "fail"
        self.sup.out.append(("reply", reply_to, MoveReply(m.client, m.req_id, status, err)))

    # ----------------------------------------------------------- replies
    def handover_ready(self, m: HandoverReady) -> None:
        mv = self.moves.get(m.shard)
        plan = self.sup.plans.get(m.shard)
        if mv and plan and mv.get("phase") == "joined" and m.to == mv["to"] and m.epoch == plan.epoch \
                and plan.leader == m.node:
            self.ready[m.shard] = m.epoch

    def agency_reply(self, kind: str, key: Any, r: AgencyReply, now_s: float) -> None:
        if kind == "moves_load":
            self.loaded_reply(r)
            return
        if kind == "moves_drain":
            return  # the next load shows it
        if kind == "moves_request":
            self._requested_reply(key, r)
            return
        shard, new_move, new_plan, note = key
        self.busy.discard(shard)
        ok = r.status == "ok" and isinstance(r.result, dict) and r.result.get("ok")
        if not ok:
            self.sup.records.append(("move.txn_failed", {"shard": shard, "step": note, "status": r.status}))
            self.sup._reload()
            self.reload()
            return
        old = self.sup.plans.get(shard)
        if new_move is None:
            self.moves.pop(shard, None)
        else:
            self.moves[shard] = new_move
        if new_plan is not None:
            self.sup.plans[shard] = new_plan
            targets = set(new_plan.replicas) | set(new_plan.learners)
            if old is not None:
                targets |= set(old.replicas) | set(old.learners)
            for n in sorted(targets):
                self.sup._to_replica(shard, n, Assign(shard, new_plan.epoch, new_plan.leader, new_plan.replicas,
                                                      new_plan.learners))
        fields = {"shard": shard, "step": note}
        if new_move is not None:
            fields.update({"from": new_move["from"], "to": new_move["to"], "phase": new_move["phase"]})
            if new_move.get("reason"):
                fields["reason"] = new_move["reason"]
        if new_plan is not None:
            fields.update({"epoch": new_plan.epoch, "leader": new_plan.leader,
                           "replicas": list(new_plan.replicas), "learners": list(new_plan.learners)})
        self.sup.records.append(("move." + note, fields))

    # -------------------------------------------------------------- steps
    def _step(self, shard: str, mv: dict, new_move: dict | None, new_plan: Any, note: str,
              plan_pres: tuple = ()) -> None:
        from actors.supervisor import plan_path

        old = self.sup.plans[shard]
        pp = plan_path(shard)
        muts = [Mutation(move_path(shard), "set", new_move) if new_move is not None
                else Mutation(move_path(shard), "delete")]
        pres = [Precondition(move_path(shard), "equals", mv), Precondition(pp + "/epoch", "equals", old.epoch)]
        pres.extend(plan_pres)
        if new_plan is not None:
            muts += [Mutation(pp + "/epoch", "set", new_plan.epoch),
                     Mutation(pp + "/leader", "set", new_plan.leader),
                     Mutation(pp + "/replicas", "set", list(new_plan.replicas)),
                     Mutation(pp + "/learners", "set", list(new_plan.learners))]
        self.busy.add(shard)
        self.sup._agency("move", (shard, new_move, new_plan, note), Txn(tuple(muts), tuple(pres)))

    def _state(self, shard: str, node: str, epoch: int, now_s: float) -> Any:
        seen = self.sup.seen.get((shard, node))
        if seen is None or seen[1].epoch != epoch or now_s - seen[0] > 2 * self.sup.grace_s:
            return None
        return seen[1]

    def _keeps_up(self, shard: str, epoch: int, lead: Any, st: Any, now_s: float) -> bool:
        """``st`` (the target) holds what ``lead`` had committed in this
        epoch ``KEEP_UP_S`` ago (or now, if it is at the watermark)."""
        for k in [k for k in self.marks if k[0] == shard and k[1] != epoch]:
            del self.marks[k]  # bounded: one epoch per shard
        marks = self.marks.setdefault((shard, epoch), [])
        if not marks or marks[-1][1] != lead.hw:
            marks.append((now_s, lead.hw))
            del marks[:-MARKS_MAX]
        old = [hw for t, hw in marks if t <= now_s - KEEP_UP_S]
        target = old[-1] if old else lead.hw
        return st.end >= min(target, lead.hw) and (st.end >= lead.hw or bool(old))

    def _roll_back(self, shard: str, mv: dict, plan: Any, reason: str, now_s: float) -> None:
        from actors.supervisor import Plan

        to = mv["to"]
        new = Plan(plan.epoch + 1, plan.leader, tuple(n for n in plan.replicas if n != to) or plan.replicas,
                   tuple(n for n in plan.learners if n != to))
        self._step(shard, mv, {**mv, "phase": "rolled_back", "reason": reason, "epoch": new.epoch}, new,
                   "rolled_back")

    def tick(self, now_s: float) -> None:
        sup = self.sup
        if not self.loaded:
            return
        for shard in sorted(self.moves):
            mv = self.moves[shard]
            if mv.get("phase") not in ACTIVE or shard in self.busy or shard in sup.failovers:
                continue
            plan = sup.plans.get(shard)
            if plan is None:
                continue
            if self.phase_since.get(shard, ("",))[0] != mv["phase"]:
                self.phase_since[shard] = (mv["phase"], now_s)
            try:
                getattr(self, "_" + mv["phase"])(shard, mv, plan, now_s)
            except KeyError:
                continue
        self._release_frozen(now_s)
        self._drain(now_s)

    def _target_lost(self, mv: dict, now_s: float) -> bool:
        """The target's replica has not reported for ``replace_after_s``
        (counted from the phase's start at the earliest): its node is down,
        or the replica does not come up there."""
        sup = self.sup
        since = self.phase_since.get(mv["shard"], ("", now_s))[1]
        seen = sup.seen.get((mv["shard"], mv["to"]))
        last = seen[0] if seen is not None else since
        return now_s - max(last, since) > max(sup.replace_after_s, 2 * REPLICA_BOOT_S)

    def _requested(self, shard: str, mv: dict, plan: Any, now_s: float) -> None:
        from actors.supervisor import Plan

        frm, to = mv["from"], mv["to"]
        why = ""
        if frm not in plan.replicas:
            why = f"{frm} holds no replica of {shard}"
        elif to in plan.replicas:
            why = f"{to} already holds a replica of {shard}"
        elif plan.learners:
            return  # another move's learner: wait
        elif not plan.leader:
            return  # failing over: wait
        elif not self.sup._alive(to, now_s, 2 * self.sup.grace_s):
            if self._target_lost(mv, now_s):
                why = f"target {to} is not alive"
            else:
                return
        if why:
            self._step(shard, mv, {**mv, "phase": "rolled_back", "reason": why}, None, "rolled_back")
            return
        new = Plan(plan.epoch + 1, plan.leader, plan.replicas, (to,))
        self._step(shard, mv, {**mv, "phase": "learning", "epoch": new.epoch}, new, "learning")

    def _learning(self, shard: str, mv: dict, plan: Any, now_s: float) -> None:
        from actors.supervisor import Plan

        to = mv["to"]
        if to not in plan.learners:
            self._roll_back(shard, mv, plan, "the plan lost the learner", now_s)
            return
        if self._target_lost(mv, now_s):
            self._roll_back(shard, mv, plan, f"target {to}'s replica went silent while copying", now_s)
            return
        if not self.sup.bugs.move_remove_before_sync:
            lead = self._state(shard, plan.leader, plan.epoch, now_s) if plan.leader else None
            st = self._state(shard, to, plan.epoch, now_s)
            if lead is None or st is None or lead.role != "leader" or not self._keeps_up(shard, plan.epoch, lead, st,
                                                                                         now_s):
                return
        new = Plan(plan.epoch + 1, plan.leader, plan.replicas + (to,), ())
        self._step(shard, mv, {**mv, "phase": "joined", "epoch": new.epoch}, new, "joined")

    def _joined(self, shard: str, mv: dict, plan: Any, now_s: float) -> None:
        from actors.supervisor import Plan

        frm, to = mv["from"], mv["to"]
        if to not in plan.replicas:
            self._roll_back(shard, mv, plan, "the plan lost the target", now_s)
            return
        if frm not in plan.replicas:
            self._step(shard, mv, {**mv, "phase": "done", "epoch": plan.epoch}, None, "done")
            return
        if not plan.leader:
            return
        bugs = self.sup.bugs
        if self._target_lost(mv, now_s):
            if plan.leader == to:
                return  # the target leads: a failover, not a roll-back, handles it
            self._roll_back(shard, mv, plan, f"target {to}'s replica went silent after joining", now_s)
            return
        lead = self._state(shard, plan.leader, plan.epoch, now_s)
        st = self._state(shard, to, plan.epoch, now_s)
        caught_up = (lead is not None and st is not None and lead.role == "leader"
                     and lead.hw > lead.epoch_start and st.end > lead.epoch_start
                     and self._keeps_up(shard, plan.epoch, lead, st, now_s))
        if not caught_up and not bugs.move_remove_before_sync:
            return
        if plan.leader == frm:
            if bugs.move_same_epoch:
                new = Plan(plan.epoch, to, plan.replicas, plan.learners)
                self._step(shard, mv, {**mv, "handed_over": True}, new, "handed_over")
                return
            if self.ready.get(shard) == plan.epoch:
                del self.ready[shard]
                new = Plan(plan.epoch + 1, to, plan.replicas, plan.learners)
                self._step(shard, mv, {**mv, "epoch": new.epoch}, new, "handed_over",
                           (Precondition(plan_path_of(shard) + "/leader", "equals", frm),))
                return
            if now_s - self.last_handover.get(shard, -1e9) >= HANDOVER_RESEND_S:
                self.last_handover[shard] = now_s
                self.sup._to_replica(shard, frm, Handover(shard, plan.epoch, to))
            return
        new = Plan(plan.epoch + 1, plan.leader, tuple(n for n in plan.replicas if n != frm), plan.learners)
        self._step(shard, mv, {**mv, "phase": "done", "epoch": new.epoch}, new, "done")

    def _release_frozen(self, now_s: float) -> None:
        """A leader frozen for a handover that no move is going to finish
        (the move was rolled back, or the plan changed): an epoch bump that
        keeps it as leader lifts the freeze."""
        from actors.supervisor import Plan, plan_path

        sup = self.sup
        for shard in sorted(sup.plans):
            plan = sup.plans[shard]
            if not plan.leader or shard in self.busy or shard in sup.failovers:
                continue
            st = self._state(shard, plan.leader, plan.epoch, now_s)
            if st is None or not st.handing_over:
                continue
            mv = self.moves.get(shard)
            if mv is not None and mv.get("phase") == "joined" and mv["to"] == st.handing_over \
                    and mv["from"] == plan.leader:
                continue
            new = Plan(plan.epoch + 1, plan.leader, plan.replicas, plan.learners)
            pp = plan_path(shard)
            self.busy.add(shard)
            sup._agency("move", (shard, mv, new, "unfrozen"), Txn(
                (Mutation(pp + "/epoch", "set", new.epoch),),
                (Precondition(pp + "/epoch", "equals", plan.epoch),
                 Precondition(pp + "/leader", "equals", plan.leader))))

    # ------------------------------------------------------------- drains
    def _drain(self, now_s: float) -> None:
        sup = self.sup
        draining = [n for n, s in self.drains.items() if s == "draining"]
        if not draining:
            return
        active = sum(1 for m in self.moves.values() if m.get("phase") in ACTIVE)
        if active >= self.moves_max:
            return
        alive = sorted(n for n in sup.nodes if sup._alive(n, now_s, 2 * sup.grace_s) and n not in self.drains)
        load = cluster_load([(p.replicas + p.learners, p.leader) for p in sup.plans.values()])
        for shard in sorted(sup.plans):
            if active >= self.moves_max:
                return
            plan = sup.plans[shard]
            if self.moving(shard) or shard in self.busy or plan.learners:
                continue
            frm = next((n for n in plan.replicas if n in draining), None)
            if frm is None:
                continue
            to = choose_replacement(plan.replicas, alive, load)
            if to is None:
                continue
            leaders, held = load.get(to, (0, 0))
            load = {**load, to: (leaders, held + 1)}
            mv = {"shard": shard, "from": frm, "to": to, "phase": "requested", "by": "drain"}
            cur = self.moves.get(shard)
            pre = Precondition(move_path(shard), "equals", cur) if cur is not None else \
                Precondition(move_path(shard), "absent")
            self.moves[shard] = mv
            active += 1
            sup.records.append(("move.requested", {"shard": shard, "from": frm, "to": to, "by": "drain"}))
            sup._agency("moves_drain", shard, Txn((Mutation(move_path(shard), "set", mv),), (pre,)))


def plan_path_of(shard: str) -> str:
    from actors.supervisor import plan_path

    return plan_path(shard)
