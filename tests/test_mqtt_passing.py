"""Passed-on publishes merged into their origin's direct stream (actors/mqtt_passing.py)."""
from __future__ import annotations

from actors.mqtt_passing import PassMerge, mid_key


def test_message_ids_parse_with_dots_in_node_ids():
    assert mid_key("n2.1.70") == ("n2", 1, 70)
    assert mid_key("dc-1.n2.3.9") == ("dc-1.n2", 3, 9)
    assert mid_key("garbage") is None


def test_without_a_gap_nothing_is_held():
    m = PassMerge(hold_s=2.0)
    assert m.passed("n2.1.5", "p5", 0.0, gaps={}) is False
    assert m.passed("n2.1.5", "p5", 0.0, gaps={"n3": 4}) is False  # a gap of another origin


def test_a_passed_publish_waits_for_the_resent_direct_one_before_it():
    """The simulator's case: direct 69 is being resent (70 came first and was
    refused), 70 comes round through another node: 69 then 70."""
    m = PassMerge(hold_s=2.0)
    m.direct("n2.1.68")
    gaps = {"n2": 49}
    assert m.passed("n2.1.70", "p70", 0.1, gaps) is True
    assert m.direct("n2.1.69") == []  # the resent 69 goes first; the held 70 is after it
    assert m.direct("n2.1.70") == ["p70"]  # released just before the direct copy (a duplicate the session drops)
    assert m.held == {} and m.count == 0


def test_held_publishes_go_in_order_when_the_gap_closes_or_their_time_is_up():
    m = PassMerge(hold_s=2.0)
    gaps = {"n2": 10}
    for n in (9, 7, 8):
        assert m.passed(f"n2.1.{n}", f"p{n}", 0.0, gaps)
    assert m.closed(gaps) == []
    assert m.closed({}) == ["p7", "p8", "p9"]
    assert m.passed("n2.1.20", "p20", 1.0, gaps) and m.passed("n2.1.21", "p21", 1.5, gaps)
    assert m.due(2.9) == []
    assert m.due(3.0) == ["p20"]
    assert m.due(3.5) == ["p21"]


def test_a_publish_the_direct_stream_is_past_is_not_held():
    m = PassMerge(hold_s=2.0)
    m.direct("n2.1.80")
    assert m.passed("n2.1.79", "p79", 0.0, {"n2": 50}) is False
    assert m.passed("n2.2.1", "new epoch", 0.0, {"n2": 50}) is True  # a later incarnation of the origin


def test_at_most_held_max_are_held():
    m = PassMerge(hold_s=2.0, held_max=2)
    gaps = {"n2": 9}
    assert [m.passed(f"n2.1.{n}", n, 0.0, gaps) for n in (1, 2, 3)] == [True, True, False]
