"""Rebalance planning, sans-IO: which replica moves spread replicas and
leaders evenly over the nodes.

A pure function of the shard list and the nodes, deterministic (sorted
ids, ties by id).  Each move takes one replica from the most loaded node to
the least loaded node that holds no replica of that shard; a move of a
leader's replica hands the leadership to the target (actors/moves.py), so
when the source has more than its share of leaderships the leader replica
is the one that moves.  Replica moves stop when the replica counts differ
by at most one.  Then leaderships are evened out the only way a move can
carry one: a pair of moves that swaps replicas between the node with the
most leaderships (H) and the one with the fewest (L) -- H's leader replica
of a shard L does not hold goes to L, and a follower replica of L's goes
to H, so the replica counts stay even.  Leaderships stop when they differ
by at most one, or no such pair exists; everything stops after
``moves_max`` moves.
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
        _apply(state, best)
        moves.append(best)
    while len(moves) + 2 <= moves_max:
        pair = _leader_swap(state, nodes)
        if pair is None:
            break
        for m in pair:
            _apply(state, m)
            moves.append(m)
    return moves


def _apply(state: dict[str, tuple[tuple[str, ...], str]], m: PlannedMove) -> None:
    reps, leader = state[m.shard]
    state[m.shard] = (tuple(m.to if n == m.frm else n for n in reps), m.to if m.leader else leader)


def _leader_swap(state: dict[str, tuple[tuple[str, ...], str]], nodes: list[str]) -> tuple[PlannedMove, ...] | None:
    """Two moves that give a leadership of the node with the most to the
    node with the fewest and keep both nodes' replica counts, or None."""
    load = load_of([(s, r, l) for s, (r, l) in state.items()], nodes)
    pairs = sorted(((hi, lo) for hi in nodes for lo in nodes if load[hi][1] - load[lo][1] > 1),
                   key=lambda p: (load[p[1]][1] - load[p[0]][1], p))
    for hi, lo in pairs:
        lead = next((s for s in sorted(state) if state[s][1] == hi and lo not in state[s][0]), None)
        back = next((s for s in sorted(state) if s != lead and lo in state[s][0] and state[s][1] != lo
                     and hi not in state[s][0]), None)
        if lead is not None and back is not None:
            return PlannedMove(lead, hi, lo, True), PlannedMove(back, lo, hi, False)
    return None
