"""The subscription's walk through shard groups (actors/group_walk.py):
one shard per index at a time, on to the next group only when drained,
to the oldest remaining group (reported) when retention dropped its shard."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.group_walk import Attach, Detach, GroupWalk, Refresh, Reset
from protocol.groups import GroupList, ShardGroup


def groups(*ids: int, width: int = 2) -> GroupList:
    """Groups with these ids; group g holds shard ids g*width .. g*width+width-1."""
    gs = tuple(ShardGroup(g, 1000 * g, 1000 * (g + 1), tuple(range(g * width, g * width + width))) for g in ids)
    return GroupList(gs, (max(ids) + 1) * width)


def test_starts_at_the_oldest_live_group_and_moves_on_only_when_drained() -> None:
    w = GroupWalk(2)
    assert w.view(groups(3, 4, 5)) == [Attach(0, 6), Attach(1, 7)]
    assert w.view(groups(3, 4, 5)) == []  # nothing changed
    assert w.drained(6) == [Detach(0, 6), Attach(0, 8)]
    assert w.attached(0) == 8 and w.attached(1) == 7  # index 1 still reads group 3
    assert w.drained(8) == [Detach(0, 8), Attach(0, 10)]
    assert w.drained(10) == [Refresh()]  # no later group in this view: ask for a fresher one
    assert w.view(groups(3, 4, 5, 6)) == [Detach(0, 10), Attach(0, 12)]
    assert w.drained(99) == []  # not attached: ignored


def test_a_dropped_shard_moves_to_the_oldest_remaining_group_and_is_reported() -> None:
    w = GroupWalk(2)
    w.view(groups(0, 1, 2))
    assert w.drained(1) == [Detach(1, 1), Attach(1, 3)]
    # group 0 dropped: index 0 was still reading it (reported); index 1 had left it
    assert w.view(groups(1, 2)) == [Reset(0, 0, 2), Detach(0, 0), Attach(0, 2)]
    # groups 1 and 2 dropped at once while index 0 reads group 1: on to group 3
    assert w.view(groups(3)) == [Reset(0, 2, 6), Reset(1, 3, 7), Detach(0, 2), Detach(1, 3), Attach(0, 6),
                                 Attach(1, 7)]


def test_a_drained_shard_that_is_dropped_is_no_reset() -> None:
    w = GroupWalk(1, )
    w.view(groups(0, 1, width=1))
    assert w.drained(0) == [Detach(0, 0), Attach(0, 1)]
    w2 = GroupWalk(1)
    w2.view(groups(0, width=1))
    assert w2.drained(0) == [Refresh()]
    assert w2.view(groups(1, width=1)) == [Detach(0, 0), Attach(0, 1)]  # drained, then dropped: no skip


def test_a_resumed_subscription_is_told_of_a_group_dropped_while_no_consumer_was_attached() -> None:
    # an earlier consumer left index 0 in group 1 (shard 2), index 1 in group 2 (shard 5)
    w = GroupWalk(2)
    w.resume({0: 2, 1: 5})
    # group 1 was dropped meanwhile: index 0 is reset to the oldest remaining
    # group's shard and reported; index 1 goes on where it was (no reset,
    # and not back to the oldest group, which it had drained)
    assert w.view(groups(2, 3)) == [Reset(0, 2, 4), Attach(0, 4), Attach(1, 5)]
    assert w.view(groups(2, 3)) == []  # reported once
    # without a recorded position: a new subscription, at the oldest record, nothing to report
    fresh = GroupWalk(2)
    fresh.resume({})
    assert fresh.view(groups(2, 3)) == [Attach(0, 4), Attach(1, 5)]
    # a view older than the recorded shard's group: wait for a fresher one
    late = GroupWalk(1)
    late.resume({0: 3})
    assert late.view(groups(0, 1, width=1)) == [] and late.attached(0) is None
    assert late.view(groups(1, 2, 3, width=1)) == [Attach(0, 3)]
    # the broken variant resets to the newest group instead
    bad = GroupWalk(1, bug="reset_to_newest")
    bad.resume({0: 0})
    assert bad.view(groups(2, 3, width=1)) == [Reset(0, 0, 3), Attach(0, 3)]


def test_a_stale_view_is_ignored() -> None:
    w = GroupWalk(1)
    w.view(groups(0, 1, width=1))
    w.drained(0)
    assert w.attached(0) == 1
    assert w.view(groups(0, width=1)) == []  # older than the view already taken
    assert w.attached(0) == 1


def test_the_broken_variants_skip_a_live_group() -> None:
    w = GroupWalk(1, bug="skip_next_group")
    w.view(groups(0, 1, 2, width=1))
    assert w.drained(0) == [Detach(0, 0), Attach(0, 2)]
    w = GroupWalk(1, bug="reset_to_newest")
    w.view(groups(0, 1, 2, width=1))
    assert w.view(groups(1, 2, width=1)) == [Reset(0, 0, 2), Detach(0, 0), Attach(0, 2)]
    with pytest.raises(ValueError, match="unknown group walk bug"):
        GroupWalk(1, bug="nope")


@given(st.lists(st.tuples(st.sampled_from(["drain", "drop", "add"]), st.integers(0, 2)), max_size=40))
def test_an_index_never_goes_back_and_skips_only_dropped_or_drained_shards(steps) -> None:
    """Whatever the order of drains, drops and new groups: an index's
    attachments never go back to an older shard, and every shard it leaves
    behind was drained, or dropped (then a Reset names it unless drained)."""
    live = [0, 1, 2]
    nxt = 3
    w = GroupWalk(1)
    history = []
    drained = set()
    reported = set()

    def apply(effects):
        for e in effects:
            if isinstance(e, Attach):
                assert not history or e.shard > history[-1]
                history.append(e.shard)
            elif isinstance(e, Reset):
                reported.add(e.dropped)

    apply(w.view(groups(*live, width=1)))
    for kind, k in steps:
        cur = w.attached(0)
        if kind == "drain" and cur is not None and cur != live[-1]:
            drained.add(cur)
            apply(w.drained(cur))
        elif kind == "drop" and len(live) > 1:
            live = live[min(k, len(live) - 1) + 1:] or live[-1:]
            apply(w.view(groups(*live, width=1)))
        elif kind == "add":
            live = live + [nxt]
            nxt += 1
            apply(w.view(groups(*live, width=1)))
    # the shards between attachments (never attached at all) were dropped before being reached
    for a, b in zip(history, history[1:]):
        assert a in drained or a in reported, (history, drained, reported)
    assert w.attached(0) in live or w.attached(0) is None or w.attached(0) > max(live)
