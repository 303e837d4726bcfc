"""actors.placement: distinct replicas, even spread of replicas and leaders,
balancing against existing load, replacement choice, determinism."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from actors.placement import choose_replacement, cluster_load, place_topic
from protocol.topics import ShardPlan


def nodes_of(n: int) -> list[str]:
    return [f"node-{i}" for i in range(n)]


def load_after(plan: list[tuple[str, ...]], base: dict[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
    out = dict(base or {})
    for replicas in plan:
        led, held = out.get(replicas[0], (0, 0))
        out[replicas[0]] = (led + 1, held)
        for n in replicas:
            led, held = out.get(n, (0, 0))
            out[n] = (led, held + 1)
    return out


def assert_even(plan, shards: int, rf: int, nodes: list[str]) -> None:
    assert len(plan) == shards
    for replicas in plan:
        assert len(replicas) == rf
        assert len(set(replicas)) == rf
        assert set(replicas) <= set(nodes)
    load = load_after(plan)
    n = len(nodes)
    for node in nodes:
        leaders, replicas = load.get(node, (0, 0))
        assert abs(replicas - shards * rf / n) <= 1, (node, replicas, shards * rf / n)
        assert abs(leaders - shards / n) <= 1, (node, leaders, shards / n)


def test_small_example() -> None:
    plan = place_topic(3, 2, ["c", "a", "b"])
    assert plan == [("a", "b"), ("c", "a"), ("b", "c")]
    assert cluster_load([(r, r[0]) for r in plan]) == {"a": (1, 2), "b": (1, 2), "c": (1, 2)}


def test_single_node_and_zero_shards() -> None:
    assert place_topic(3, 1, ["only"]) == [("only",), ("only",), ("only",)]
    assert place_topic(0, 3, nodes_of(3)) == []


@given(st.integers(1, 64), st.integers(1, 9), st.data())
@settings(max_examples=300, deadline=None)
def test_even_spread_on_empty_cluster(shards: int, n: int, data: st.DataObject) -> None:
    rf = data.draw(st.integers(1, min(5, n)), label="rf")
    nodes = nodes_of(n)
    assert_even(place_topic(shards, rf, nodes), shards, rf, nodes)


def test_even_spread_exhaustive() -> None:
    for n in range(1, 10):
        nodes = nodes_of(n)
        for rf in range(1, min(5, n) + 1):
            for shards in range(1, 65):
                plan = place_topic(shards, rf, nodes)
                assert_even(plan, shards, rf, nodes)
                load = load_after(plan)
                led = [load.get(x, (0, 0))[0] for x in nodes]
                held = [load.get(x, (0, 0))[1] for x in nodes]
                assert max(led) - min(led) <= 1 and max(held) - min(held) <= 1, (shards, rf, n)


def test_rf_larger_than_cluster_is_rejected() -> None:
    with pytest.raises(ValueError, match="replication factor 4 needs at least 4 nodes"):
        place_topic(1, 4, nodes_of(3))
    with pytest.raises(ValueError):
        place_topic(1, 1, [])


@pytest.mark.parametrize("args", [(-1, 1), (1, 0), (True, 1), (1, 1.0)])
def test_bad_arguments(args) -> None:
    with pytest.raises(ValueError):
        place_topic(args[0], args[1], nodes_of(3))


def test_duplicate_nodes_rejected() -> None:
    with pytest.raises(ValueError, match="more than once"):
        place_topic(1, 1, ["a", "b", "a"])


def test_existing_load_is_balanced_against() -> None:
    # a is busy: it gets nothing until the others catch up
    load = {"a": (4, 8)}
    plan = place_topic(4, 2, ["a", "b", "c", "d"], load)
    assert all("a" not in r for r in plan)
    assert load == {"a": (4, 8)}  # not modified
    # b leads a lot but follows nothing: it gets followers, not leaderships
    load = {"b": (6, 6)}
    plan = place_topic(3, 2, ["a", "b", "c"], load)
    assert all(r[0] != "b" for r in plan)
    assert any("b" in r[1:] for r in plan)
    # load of nodes not in the list is ignored
    assert place_topic(2, 1, ["x", "y"], {"gone": (9, 9)}) == [("x",), ("y",)]


def test_second_topic_evens_out_the_first() -> None:
    nodes = nodes_of(3)
    first = place_topic(1, 1, nodes)  # node-0 leads one shard
    second = place_topic(2, 1, nodes, load_after(first))
    assert second == [("node-1",), ("node-2",)]


@given(st.integers(1, 9), st.data())
@settings(max_examples=200, deadline=None)
def test_leaders_fill_up_evenly_from_any_load(n: int, data: st.DataObject) -> None:
    nodes = nodes_of(n)
    base = {}
    for node in nodes:
        led = data.draw(st.integers(0, 20))
        base[node] = (led, led + data.draw(st.integers(0, 20)))
    rf = data.draw(st.integers(1, min(5, n)))
    shards = data.draw(st.integers(1, 64))
    plan = place_topic(shards, rf, nodes, base)
    after = load_after(plan, base)
    min_led = min(after[x][0] for x in nodes)
    for node in nodes:
        if after[node][0] > base[node][0]:  # got new leaderships: water-filling
            assert after[node][0] <= min_led + 1
    for replicas in plan:
        assert len(set(replicas)) == rf


@given(st.lists(st.tuples(st.integers(1, 32), st.integers(1, 5)), min_size=1, max_size=6), st.integers(5, 9))
@settings(max_examples=100, deadline=None)
def test_many_topics_stay_balanced(topics: list[tuple[int, int]], n: int) -> None:
    nodes = nodes_of(n)
    load: dict[str, tuple[int, int]] = {}
    for shards, rf in topics:
        load = load_after(place_topic(shards, rf, nodes, load), load)
    led = [load.get(x, (0, 0))[0] for x in nodes]
    held = [load.get(x, (0, 0))[1] for x in nodes]
    assert max(led) - min(led) <= 1
    assert max(held) - min(held) <= 2


@given(st.integers(1, 40), st.integers(1, 9), st.data())
@settings(max_examples=100, deadline=None)
def test_deterministic_and_independent_of_input_order(shards: int, n: int, data: st.DataObject) -> None:
    rf = data.draw(st.integers(1, min(5, n)))
    nodes = nodes_of(n)
    base = {x: (i % 3, i % 3 + i % 2) for i, x in enumerate(nodes)}
    shuffled = data.draw(st.permutations(nodes))
    shuffled_load = dict(data.draw(st.permutations(sorted(base.items()))))
    expected = place_topic(shards, rf, nodes, base)
    assert place_topic(shards, rf, list(shuffled), shuffled_load) == expected
    assert place_topic(shards, rf, nodes, base) == expected


# -- replacement -------------------------------------------------------------------------------------------

def test_choose_replacement() -> None:
    load = {"a": (3, 5), "b": (1, 4), "c": (0, 2), "d": (2, 2), "e": (0, 9)}
    assert choose_replacement(("a", "b"), ["a", "b", "c", "d", "e"], load) == "c"  # 2 replicas, 0 leaders
    assert choose_replacement(("a", "c"), ["a", "b", "c", "d", "e"], load) == "d"
    assert choose_replacement(("a", "b"), ["a", "b", "x", "c"], load) == "x"  # unknown = unloaded
    assert choose_replacement(("a",), ["b", "c", "a"], None) == "b"  # ties by id
    assert choose_replacement(("a", "b"), ["b", "a"], load) is None
    assert choose_replacement(("a",), [], load) is None
    assert choose_replacement(("a",), ["c", "c", "b"], {}) == "b"


@given(st.integers(2, 9), st.data())
@settings(max_examples=100, deadline=None)
def test_replacement_is_a_least_loaded_spare(n: int, data: st.DataObject) -> None:
    nodes = nodes_of(n)
    replicas = tuple(data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=n - 1, unique=True)))
    load = {x: (l, l + data.draw(st.integers(0, 5))) for x in nodes for l in [data.draw(st.integers(0, 5))]}
    pick = choose_replacement(replicas, nodes, load)
    spares = [x for x in nodes if x not in replicas]
    assert pick in spares
    assert load[pick][1] == min(load[x][1] for x in spares)
    assert choose_replacement(replicas, list(reversed(nodes)), load) == pick


# -- cluster load ------------------------------------------------------------------------------------------

def test_cluster_load_from_plans() -> None:
    plans = [
        ShardPlan(("a", "b", "c"), "a", 1, ("a", "b")),
        ShardPlan(("b", "c", "d"), "b", 0, ("b", "c", "d")),
        ShardPlan(("c", "a", "b"), "c", 4, ("c",)),
    ]
    expected = {"a": (1, 2), "b": (1, 3), "c": (1, 3), "d": (0, 1)}
    assert cluster_load(plans) == expected
    assert list(cluster_load(plans)) == ["a", "b", "c", "d"]
    assert cluster_load([p.to_json() for p in plans]) == expected
    assert cluster_load([(p.replicas, p.leader) for p in plans]) == expected
    assert cluster_load([]) == {}
    assert cluster_load([(("a", "b"), None)]) == {"a": (0, 1), "b": (0, 1)}
    # a fenced shard (mid-failover) has no leader; a promoted follower leads
    assert cluster_load([ShardPlan(("a", "b"), "", 3, ("a", "b")), ShardPlan(("a", "b"), "b", 3, ("b",))]) == {
        "a": (0, 2), "b": (1, 2)}


def test_round_trip_place_then_measure() -> None:
    nodes = nodes_of(5)
    plan = place_topic(10, 3, nodes)
    plans = [ShardPlan(r, r[0], 0, r) for r in plan]
    assert cluster_load(plans) == load_after(plan)
    # and placing a second topic on that measured load keeps everyone within one
    more = place_topic(5, 3, nodes, cluster_load(plans))
    total = load_after(more, cluster_load(plans))
    assert {v for v in total.values()} == {(3, 9)}
