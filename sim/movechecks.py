"""Checkers for shard moves and drains (actors/moves.py).

* ``moves_keep_majority`` -- whenever a move step takes a node out of a
  shard's voting replicas (the source leaving, or a target rolled back),
  every record acknowledged at ``quorum``/``all`` so far is held by a
  majority of the voting replicas that remain (their real logs at that
  moment; a replica whose node is down, or whose restarted node has not
  started it yet, counts as holding it -- the durability checks judge it
  after the heal).  A move that takes the
  source out before the target caught up leaves acknowledged writes on a
  minority: caught here even when no later crash turns it into a loss.
* ``moves_in_sync`` -- when a move takes its source out, the target (if
  its node is up and has started it) holds every record acknowledged at ``quorum``/``all``
  more than ``IN_SYNC_LAG_S`` before: the shard keeps as many in-sync
  replicas as before the move.  (A source removed while its target still
  copies leaves the shard one in-sync replica short for as long as the
  copy takes, which no durability check sees unless another crash hits.)
* ``moves_settled`` -- after the heal every move finished or was rolled
  back (with a reason), no shard keeps a learner, every shard has exactly
  its replication factor of voting replicas, and a draining node holds no
  replica when another node could take it.
"""
from __future__ import annotations

from typing import Any, Callable

from sim.datachecks import decode_log
from sim.history import Record, Violation


class Observed(list):
    """A history list that calls ``fn`` on every appended record."""

    def __init__(self, items: list, fn: Callable[[Record], None]) -> None:
        super().__init__(items)
        self.fn = fn

    def append(self, r: Record) -> None:  # type: ignore[override]
        super().append(r)
        self.fn(r)


IN_SYNC_LAG_S = 3.0  # more than the supervisor's oldest usable report (2 x grace) plus a transaction


class MoveProbe:
    """Judges ``moves_keep_majority`` at the moment a step is recorded."""

    def __init__(self, replica_log: Callable[[str, str], list[bytes] | None]) -> None:
        self.replica_log = replica_log  # (shard, node) -> batches, None if the node is down
        self.acked: dict[str, list[bytes]] = {}
        self.acked_t: dict[str, list[float]] = {}
        self.violations: list[Violation] = []
        self.lagging: list[Violation] = []
        self.checked = 0

    def __call__(self, r: Record) -> None:
        if r.kind == "produce.done":
            f = r.fields
            if f["status"] == "ok" and f["level"] in ("quorum", "all") and not f.get("duplicate"):
                self.acked.setdefault(f["shard"], []).extend(
                    f"{f['producer']}|{f['shard']}|{f['seq'] + i}".encode() for i in range(f["count"]))
                self.acked_t.setdefault(f["shard"], []).extend([r.t] * f["count"])
        elif r.kind in ("move.done", "move.rolled_back") and "replicas" in r.fields:
            self._check(r)

    def _check(self, r: Record) -> None:
        shard, voters = r.fields["shard"], list(r.fields["replicas"])
        need = len(voters) // 2 + 1
        holders: list[set[bytes] | None] = []
        for n in voters:
            batches = self.replica_log(shard, n)
            holders.append(None if batches is None else {p for _o, p in decode_log(batches)})
        self.checked += 1
        to = r.fields.get("to")
        if r.kind == "move.done" and to in voters:
            h = holders[voters.index(to)]
            acked = self.acked.get(shard, [])
            old = [p for p, t in zip(acked, self.acked_t.get(shard, [])) if t <= r.t - IN_SYNC_LAG_S]
            missing = [p for p in old if h is not None and p not in h]
            if missing:
                self.lagging.append(Violation(
                    "moves_in_sync",
                    f"t={r.t:.3f}s shard {shard}: source {r.fields.get('from')} removed while target {to} lacks "
                    f"{len(missing)} record(s) acknowledged over {IN_SYNC_LAG_S:.0f} s before, e.g. "
                    f"{missing[0].decode()}", {"shard": shard}))
        for p in self.acked.get(shard, []):
            count = sum(1 for h in holders if h is None or p in h)
            if count < need:
                self.violations.append(Violation(
                    "moves_keep_majority",
                    f"t={r.t:.3f}s shard {shard}: after move step {r.fields.get('step')} ({r.fields.get('from')} -> "
                    f"{r.fields.get('to')}) the acknowledged record {p.decode()} is on {count} of the voting "
                    f"replicas {voters}, fewer than a majority", {"shard": shard, "payload": p.decode()}))
                return  # one per step is enough


def check_settled(history: list[Record], agency: dict[str, Any], rf: dict[str, int],
                  plans: dict[str, dict], nodes_up: list[str]) -> tuple[list[Violation], dict]:
    from actors.moves import ACTIVE, walk_moves

    out: list[Violation] = []
    moves = walk_moves(agency.get("moves") or {})
    for shard, mv in sorted(moves.items()):
        if mv.get("phase") in ACTIVE:
            out.append(Violation("moves_settled", f"move of {shard} ({mv['from']} -> {mv['to']}) is still "
                                 f"{mv['phase']} after the heal", {"shard": shard}))
        if mv.get("phase") == "rolled_back" and not mv.get("reason"):
            out.append(Violation("moves_settled", f"move of {shard} was rolled back without a reason", {}))
    for shard, plan in sorted(plans.items()):
        if plan.get("learners"):
            out.append(Violation("moves_settled", f"shard {shard} keeps learners {plan['learners']}", {}))
        want = rf.get(shard)
        if want is not None and len(plan.get("replicas", ())) != want:
            out.append(Violation("moves_settled", f"shard {shard} has voting replicas {plan['replicas']}, "
                                 f"not its replication factor {want}", {"shard": shard}))
    drains = {n: v.get("state") for n, v in (agency.get("drain") or {}).items() if isinstance(v, dict)}
    spare_nodes = [n for n in nodes_up if n not in drains]
    for node, state in sorted(drains.items()):
        for shard, plan in sorted(plans.items()):
            reps = plan.get("replicas", ())
            if node in reps and any(n not in reps for n in spare_nodes):
                out.append(Violation("moves_settled", f"{state} node {node} still holds a replica of {shard}",
                                     {"shard": shard}))
    started = sum(1 for r in history if r.kind == "move.requested")
    stats = {"moves_requested": started,
             "moves_done": sum(1 for r in history if r.kind == "move.done"),
             "moves_rolled_back": sum(1 for r in history if r.kind == "move.rolled_back"),
             "handovers": sum(1 for r in history if r.kind == "move.handed_over")}
    return out, stats
