"""Tests for the MQTT topic trie (actors/mqtt_trie.py)."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.mqtt_trie import TopicTrie

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_match(flt: str, topic: str) -> bool:
    """MQTT 3.1.1, 4.7, written as plainly as possible."""
    f, t = flt.split("/"), topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):  # MQTT-4.7.2-1
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True  # this level and below, the parent included
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


# Few distinct level names, so that filters and topics often meet.
topic_level = st.sampled_from(["", "a", "b", "$SYS", "$x", "é"])
topics = st.lists(topic_level, min_size=1, max_size=4).map("/".join).filter(bool)
filters = st.builds(lambda levels, tail: "/".join(levels + tail),
                    st.lists(st.one_of(topic_level, st.just("+")), min_size=0, max_size=4),
                    st.sampled_from([[], ["#"]])).filter(bool)
values = st.integers(0, 3)
ops = st.lists(st.tuples(st.sampled_from(["add", "add", "remove"]), filters, values), max_size=40)


def nodes(trie: TopicTrie) -> set[tuple[str, ...]]:
    """The level paths of every node below the root."""
    out: set[tuple[str, ...]] = set()
    stack = [((), trie._root)]
    while stack:
        path, node = stack.pop()
        for level, child in node.children.items():
            out.add(path + (level,))
            stack.append((path + (level,), child))
    return out


def replay(operations) -> tuple[TopicTrie, dict[str, set]]:
    trie, model = TopicTrie(), {}
    for op, flt, value in operations:
        if op == "add":
            assert trie.add(flt, value) == (value not in model.get(flt, set()))
            model.setdefault(flt, set()).add(value)
        else:
            assert trie.remove(flt, value) == (value in model.get(flt, set()))
            model.get(flt, set()).discard(value)
            if not model.get(flt, True):
                del model[flt]
    return trie, model


@FAST
@given(operations=ops, probes=st.lists(topics, min_size=1, max_size=10))
def test_match_agrees_with_the_reference(operations, probes) -> None:
    trie, model = replay(operations)
    for topic in probes:
        expected = sorted((f, v) for f, vs in model.items() if reference_match(f, topic) for v in vs)
        got = trie.match(topic)
        assert sorted(got) == expected and len(got) == len(expected)  # each pair once
        assert trie.has_match(topic) == bool(expected)


@FAST
@given(operations=ops)
def test_bookkeeping_and_pruning(operations) -> None:
    trie, model = replay(operations)
    assert len(trie) == sum(map(len, model.values()))
    assert sorted(trie.filters()) == sorted(model)
    for flt, vs in model.items():
        assert trie.values(flt) == vs
    # exactly the prefixes of live filters have nodes: removal pruned the rest
    assert nodes(trie) == {tuple(f.split("/")[:i]) for f in model for i in range(1, len(f.split("/")) + 1)}
    for flt, vs in list(model.items()):
        for v in vs:
            assert trie.remove(flt, v)
    assert len(trie) == 0 and trie.filters() == [] and nodes(trie) == set()


def test_spec_examples() -> None:  # MQTT 3.1.1, 4.7.1 and 4.7.2
    cases = {
        "sport/tennis/player1/#": (["sport/tennis/player1", "sport/tennis/player1/ranking",
                                    "sport/tennis/player1/score/wimbledon"], ["sport/tennis/player2"]),
        "sport/#": (["sport", "sport/"], ["sports"]),
        "sport/tennis/+": (["sport/tennis/player1", "sport/tennis/"], ["sport/tennis/player1/ranking", "sport/tennis"]),
        "sport/+": (["sport/"], ["sport"]),
        "+/+": (["/finance", "a/b"], ["a", "a/b/c"]),
        "/+": (["/finance"], ["finance", "a/b"]),
        "+": (["finance", "x"], ["/finance", "$SYS"]),
        "#": (["a", "/", "a/b/c"], ["$SYS", "$SYS/monitor/Clients"]),
        "+/monitor/Clients": (["a/monitor/Clients"], ["$SYS/monitor/Clients"]),
        "$SYS/#": (["$SYS", "$SYS/monitor/Clients"], ["SYS/x"]),
        "$SYS/monitor/+": (["$SYS/monitor/Clients"], ["$SYS/monitor"]),
        "a//b": (["a//b"], ["a/b", "a/x/b"]),
        "+/#": (["a", "/", "a/b"], ["$SYS/a"]),
    }
    for flt, (yes, no) in cases.items():
        trie = TopicTrie()
        trie.add(flt, 1)
        for topic in yes:
            assert trie.match(topic) == [(flt, 1)], (flt, topic)
            assert reference_match(flt, topic), (flt, topic)
        for topic in no:
            assert trie.match(topic) == [] and not trie.has_match(topic), (flt, topic)
            assert not reference_match(flt, topic), (flt, topic)


def test_add_remove_values() -> None:
    trie = TopicTrie()
    assert trie.add("a/+", "s1") and trie.add("a/+", "s2") and trie.add("a/#", ("node", 3))
    assert not trie.add("a/+", "s1")
    assert len(trie) == 3 and trie.values("a/+") == {"s1", "s2"} and trie.values("a") == set()
    assert sorted(trie.match("a/b"), key=repr) == sorted([("a/+", "s1"), ("a/+", "s2"), ("a/#", ("node", 3))],
                                                        key=repr)
    trie.values("a/+").clear()  # a copy
    assert trie.values("a/+") == {"s1", "s2"}
    assert not trie.remove("a/+", "s3") and not trie.remove("x/y", "s1") and not trie.remove("a", "s1")
    assert trie.remove("a/+", "s1") and trie.remove("a/+", "s2") and not trie.remove("a/+", "s2")
    assert trie.filters() == ["a/#"] and nodes(trie) == {("a",), ("a", "#")}
    assert trie.remove("a/#", ("node", 3)) and nodes(trie) == set() and len(trie) == 0


def test_interior_nodes_survive_pruning_of_their_children() -> None:
    trie = TopicTrie()
    trie.add("a", 1)
    trie.add("a/b/c", 2)
    trie.remove("a/b/c", 2)
    assert nodes(trie) == {("a",)} and trie.match("a") == [("a", 1)]


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "#/", "a/+b", "++", 7, None])
def test_invalid_filters_raise(bad) -> None:
    trie = TopicTrie()
    for call in (lambda: trie.add(bad, 1), lambda: trie.remove(bad, 1), lambda: trie.values(bad)):
        with pytest.raises(ValueError):
            call()
    assert len(trie) == 0 and nodes(trie) == set()


@pytest.mark.parametrize("bad", ["a/+", "#", "a/#", 3])
def test_invalid_topics_raise(bad) -> None:
    trie = TopicTrie()
    trie.add("#", 1)
    with pytest.raises(ValueError):
        trie.match(bad)
    with pytest.raises(ValueError):
        trie.has_match(bad)


def test_match_does_not_scan_all_filters() -> None:
    trie = TopicTrie()
    for i in range(20_000):
        trie.add(f"dev/{i}/temp", i)
    trie.add("dev/+/temp", "all")
    trie.add("dev/#", "tree")
    start = time.perf_counter()
    for i in range(2_000):
        assert len(trie.match(f"dev/{i}/temp")) == 3
    # A scan of 20,000 filters per match would take tens of seconds; the walk takes milliseconds.
    assert time.perf_counter() - start < 2.0


def test_match_cache_forgets_on_add_and_remove_and_hands_out_copies():
    trie = TopicTrie()
    trie.add("a/+", 1)
    first = trie.match("a/b")
    assert first == [("a/+", 1)]
    first.append("junk")  # a caller's list is its own
    assert trie.match("a/b") == [("a/+", 1)]
    trie.add("a/#", 2)
    assert sorted(trie.match("a/b")) == [("a/#", 2), ("a/+", 1)]
    trie.remove("a/+", 1)
    assert trie.match("a/b") == [("a/#", 2)]
    for i in range(5000):  # more topics than the cache holds
        assert trie.match(f"a/{i}") == [("a/#", 2)]
    assert trie.match("b") == []
