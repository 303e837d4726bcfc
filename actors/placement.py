"""Shard placement, sans-IO: which nodes hold the replicas of each shard.

Pure functions of their arguments, used by the supervisor.  No clocks, no
randomness, no I/O; every choice is made over node ids in sorted order with
ties broken by node id, so the same inputs always give the same plan on
every node and every run.

Load
----
A node's load is the pair ``(leaders, replicas)``: how many shards, over
the whole cluster, it leads and how many it holds a replica of (the
replicas include the led ones, so ``followers = replicas - leaders``).
:func:`cluster_load` computes it from the current shard plans; nodes that
hold nothing are simply absent (load ``(0, 0)``).

Placement (:func:`place_topic`)
-------------------------------
Shard by shard, greedily, updating the load as it goes:

* the leader is the node with the fewest leaderships (then fewest replicas,
  then smallest id);
* the ``rf - 1`` followers are the other nodes with the fewest followerships
  (then fewest replicas, then smallest id).

Leaders and followers are balanced separately, so leadership (the costly
role: it takes the produce traffic) is spread as evenly as replicas are.
Onto an empty cluster this gives, for S shards of replication factor r on N
nodes, every node S*r/N replicas and S/N leaderships, each within 1 (in
fact the max and min differ by at most 1).  Existing load is balanced
against: a node with more leaderships than the others gets no new ones
until they caught up, and likewise (nearly) for followerships.  Placing
several topics one after the other, each on the load left by the ones
before, keeps leaderships within 1 and replicas within 2 of each other.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

__all__ = ["place_topic", "choose_replacement", "cluster_load", "Load"]

Load = Mapping[str, tuple[int, int]]  # node id -> (leaders, replicas)


def _check_nodes(nodes: Iterable[str], what: str) -> list[str]:
    nodes = list(nodes)
    for n in nodes:
        if not isinstance(n, str) or not n:
            raise ValueError(f"{what} must be non-empty node id strings, got {n!r}")
    if len(set(nodes)) != len(nodes):
        dups = sorted({n for n in nodes if nodes.count(n) > 1})
        raise ValueError(f"{what} lists node(s) {dups} more than once")
    return sorted(nodes)


def _load_of(load: Load | None, nodes: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    leaders = {n: 0 for n in nodes}
    replicas = {n: 0 for n in nodes}
    if load:
        for n in nodes:
            if n in load:
                led, held = load[n]
                leaders[n], replicas[n] = int(led), int(held)
    return leaders, replicas


def place_topic(spec_shards: int, rf: int, nodes: list[str],
                load: Load | None = None) -> list[tuple[str, ...]]:
    """Replica sets for ``spec_shards`` new shards, each ``rf`` distinct node
    ids with the leader first, balanced against ``load`` (not modified).

    Raises ValueError if ``rf > len(nodes)`` or the arguments are malformed.
    """
    if not isinstance(spec_shards, int) or isinstance(spec_shards, bool) or spec_shards < 0:
        raise ValueError(f"shard count must be an int >= 0, got {spec_shards!r}")
    if not isinstance(rf, int) or isinstance(rf, bool) or rf < 1:
        raise ValueError(f"replication factor must be an int >= 1, got {rf!r}")
    order = _check_nodes(nodes, "nodes")
    if rf > len(order):
        raise ValueError(f"replication factor {rf} needs at least {rf} nodes, but only {len(order)} "
                         f"are available: {order}")
    leaders, replicas = _load_of(load, order)

    plan: list[tuple[str, ...]] = []
    for _ in range(spec_shards):
        leader = min(order, key=lambda n: (leaders[n], replicas[n], n))
        others = sorted((n for n in order if n != leader),
                        key=lambda n: (replicas[n] - leaders[n], replicas[n], n))
        chosen = (leader, *others[:rf - 1])
        leaders[leader] += 1
        for n in chosen:
            replicas[n] += 1
        plan.append(chosen)
    return plan


def choose_replacement(replicas: tuple[str, ...], nodes_alive: list[str],
                       load: Load | None = None) -> str | None:
    """A live node, not already a replica, to take over a lost replica.

    The least loaded spare: fewest replicas, then fewest leaderships, then
    smallest id.  ``None`` if every live node already holds a replica.
    """
    current = set(replicas)
    alive = _check_nodes(dict.fromkeys(nodes_alive), "nodes_alive")  # duplicates are harmless here
    spares = [n for n in alive if n not in current]
    if not spares:
        return None
    leaders, held = _load_of(load, spares)
    return min(spares, key=lambda n: (held[n], leaders[n], n))


def _plan_parts(plan: Any) -> tuple[Iterable[str], str | None]:
    if hasattr(plan, "replicas"):
        return plan.replicas, getattr(plan, "leader", None)
    if isinstance(plan, Mapping):
        return plan["replicas"], plan.get("leader")
    replicas, leader = plan
    return replicas, leader


def cluster_load(plans: Iterable[Any]) -> dict[str, tuple[int, int]]:
    """``node -> (leaders, replicas)`` summed over shard plans.

    Each plan is ShardPlan-like: an object with ``replicas`` and ``leader``
    attributes, a mapping with those keys (``ShardPlan.to_json()``), or a
    pair ``(replicas, leader)``.  A falsy leader (no leader) counts no
    leadership.  Keys are returned in sorted order.
    """
    leaders: dict[str, int] = {}
    held: dict[str, int] = {}
    for plan in plans:
        replicas, leader = _plan_parts(plan)
        for n in replicas:
            held[n] = held.get(n, 0) + 1
        if leader:
            leaders[leader] = leaders.get(leader, 0) + 1
            held.setdefault(leader, 0)
    return {n: (leaders.get(n, 0), held[n]) for n in sorted(held)}
