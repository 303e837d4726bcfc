"""Rebalance planning, sans-IO: which replica moves spread replicas and
leaders evenly over the nodes.

A pure function of the shard list and the nodes, deterministic (sorted
ids, ties by id).  Each move takes one replica from the most loaded node to
the least loaded node that holds no replica of that shard; a move of a
leader's replica hands the leadership to the target (actors/moves.py), so
when the source has more than its share of leaderships the leader replica
is the one that moves.  Planning stops when the replica counts differ by at
most one, or after ``moves_max`` moves.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlannedMove:
    shard: str
    frm: str
    to: str
    leader: bool  # the moved replica leads: leadership goes to ``to``


def load_of(shards: list[tuple[str, tuple[str, ...], str]], nodes: list[str]) -> dict[str, tuple[int, int]]:
    """node -> (replicas, leaderships)."""
    out = {n: [0, 0] for n in nodes}
    for _s, reps, leader in shards:
        for n in reps:
            out.setdefault(n, [0, 0])[0] += 1
        if leader:
            out.setdefault(leader, [0, 0])[1] += 1
    return {n: (v[0], v[1]) for n, v in sorted(out.items())}


def plan_rebalance(shards: list[tuple[str, tuple[str, ...], str]], nodes: list[str],
                   moves_max: int = 1000) -> list[PlannedMove]:
    """Moves that even out ``shards`` (name, replicas, leader) over
    ``nodes`` (the nodes that may hold replicas)."""
    if not nodes:
        return []
    nodes = sorted(set(nodes))
    state = {s: (tuple(r), l) for s, r, l in shards}
    moves: list[PlannedMove] = []
    while len(moves) < moves_max:
        load = load_of([(s, r, l) for s, (r, l) in state.items()], nodes)
        # nodes not allowed to hold replicas (draining) count as overloaded
        src = max(load, key=lambda n: (n not in nodes, load[n][0], load[n][1], n))
        dst_cands = [n for n in nodes if n != src]
        if not dst_cands:
            break
        leaders_share = sum(v[1] for v in load.values()) / len(nodes)
        best: PlannedMove | None = None
        for shard in sorted(state):
            reps, leader = state[shard]
            if src not in reps:
                continue
            spares = [n for n in dst_cands if n not in reps]
            if not spares:
                continue
            dst = min(spares, key=lambda n: (load[n][0], load[n][1], n))
            if src in nodes and load[src][0] - load[dst][0] <= 1:
                continue
            is_leader = leader == src
            cand = PlannedMove(shard, src, dst, is_leader)
            want_leader = load[src][1] > leaders_share and load[dst][1] < leaders_share
            if best is None or (is_leader == want_leader and best.leader != want_leader):
                best = cand
        if best is None:
            break
        reps, leader = state[best.shard]
        state[best.shard] = (tuple(best.to if n == best.frm else n for n in reps),
                             best.to if best.leader else leader)
        moves.append(best)
    return moves
