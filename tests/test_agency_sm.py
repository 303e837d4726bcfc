"""Unit tests of the agency's replicated state machine (actors/agency_sm.py).

Each test pins one documented behaviour of AgencyState; the hypothesis test
at the end runs random transactions against a nested-dict reference model
and compares every path's value and version and every change event."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.agency_sm import AgencyState, matches, normalize
from protocol.agency import Mutation, Precondition, Read, Txn


def txn(*mutations, pre=()):
    return Txn(tuple(mutations), tuple(pre))


def setm(path, value):
    return Mutation(path, "set", value)


def delm(path):
    return Mutation(path, "delete")


def incm(path, delta=None):
    return Mutation(path, "incr", delta)


def apply(state, *mutations, pre=(), client=None, req_id=None):
    return state.apply_txn(txn(*mutations, pre=pre), client, req_id)


# ------------------------------------------------------------------ paths
@pytest.mark.parametrize(
    "raw, norm",
    [
        ("/a/b", "/a/b"),
        ("a/b", "/a/b"),
        ("//a///b/", "/a/b"),
        ("/", "/"),
        ("", "/"),
        ("///", "/"),
        ("/a.b/c..d", "/a.b/c..d"),  # dots inside a component are fine
    ],
)
def test_normalize(raw, norm):
    assert normalize(raw) == norm


@pytest.mark.parametrize("bad", ["/a/../b", "..", "/a/.", "./a", "/a/b/.."])
def test_normalize_rejects_dot_components(bad):
    with pytest.raises(ValueError):
        normalize(bad)


def test_normalize_rejects_non_string():
    with pytest.raises(ValueError):
        normalize(3)  # type: ignore[arg-type]


def test_reads_and_writes_use_normalized_paths():
    s = AgencyState()
    res, _ = apply(s, setm("a//b/", 1))
    assert res["ok"]
    assert list(s.leaves) == ["/a/b"]
    assert s.get("/a/b") == s.get("a/b/") == s.get("//a//b") == 1
    with pytest.raises(ValueError):
        s.get("/a/../a/b")


def test_mutation_with_dotdot_path_is_an_error_and_applies_nothing():
    s = AgencyState()
    apply(s, setm("/x", 1))
    res, events = apply(s, setm("/y", 2), setm("/a/../b", 1))
    assert res["ok"] is False and "error" in res
    assert events == []
    assert s.revision == 1
    assert s.get("/y") is None


def test_dict_value_with_dot_keys_is_rejected():
    s = AgencyState()
    for key in ("..", ".", "", "a/b"):
        res, events = apply(s, setm("/x", {key: 1}))
        assert res["ok"] is False, key
        assert events == [] and not s.leaves and s.revision == 0


def test_matches():
    assert matches("/", "/anything")
    assert matches("/cfg", "/cfg")
    assert matches("/cfg", "/cfg/a/b")
    assert not matches("/cfg", "/cfgx")
    assert not matches("/cfg", "/other/cfg")


# ------------------------------------------------------------ set and get
def test_set_leaf_and_read_subtree_as_nested_dict():
    s = AgencyState()
    apply(s, setm("/a/b/c", 1), setm("/a/b/d", "x"), setm("/a/e", [1, 2]), setm("/z", True))
    assert s.get("/a/b/c") == 1
    assert s.get("/a/e") == [1, 2]
    assert s.get("/a/b") == {"c": 1, "d": "x"}
    assert s.get("/a") == {"b": {"c": 1, "d": "x"}, "e": [1, 2]}
    assert s.get("/") == {"a": {"b": {"c": 1, "d": "x"}, "e": [1, 2]}, "z": True}
    assert s.get("/missing") is None
    assert s.get("/a/b/c/deeper") is None
    # a sibling with a common name prefix is not part of the subtree
    apply(s, setm("/ab", 5))
    assert s.get("/a") == {"b": {"c": 1, "d": "x"}, "e": [1, 2]}


def test_set_dict_value_is_stored_as_leaves():
    s = AgencyState()
    apply(s, setm("/a", {"b": 1, "c": {"d": 2}, "n": None}))
    assert sorted(s.leaves) == ["/a/b", "/a/c/d"]
    assert s.get("/a") == {"b": 1, "c": {"d": 2}}
    assert s.get("/a/c/d") == 2


def test_set_none_deletes():
    s = AgencyState()
    apply(s, setm("/a/b", 1), setm("/a/c", 2))
    apply(s, setm("/a/b", None))
    assert s.get("/a") == {"c": 2}


def test_setting_interior_path_replaces_subtree():
    s = AgencyState()
    apply(s, setm("/a/b", 1), setm("/a/c/d", 2), setm("/ab", 3))
    res, events = apply(s, setm("/a", 7))
    assert res == {"ok": True, "revision": 2}
    assert s.get("/a") == 7
    assert s.get("/a/b") is None and s.get("/a/c/d") is None
    assert s.get("/ab") == 3
    assert sorted(s.leaves) == ["/a", "/ab"]
    assert events == [(2, "/a", 7), (2, "/a/b", None), (2, "/a/c/d", None)]


def test_setting_below_a_leaf_replaces_the_leaf():
    s = AgencyState()
    apply(s, setm("/a", 1))
    res, events = apply(s, setm("/a/b/c", 2))
    assert res["ok"]
    assert s.get("/a") == {"b": {"c": 2}}
    assert sorted(s.leaves) == ["/a/b/c"]
    assert events == [(2, "/a", None), (2, "/a/b/c", 2)]


def test_cannot_set_root():
    s = AgencyState()
    res, events = apply(s, setm("/", 1))
    assert res["ok"] is False and events == [] and s.revision == 0


def test_delete_subtree():
    s = AgencyState()
    apply(s, setm("/a/b", 1), setm("/a/c/d", 2), setm("/ab", 3), setm("/x", 4))
    res, events = apply(s, delm("/a"))
    assert res == {"ok": True, "revision": 2}
    assert s.get("/a") is None
    assert s.get("/ab") == 3 and s.get("/x") == 4
    assert events == [(2, "/a/b", None), (2, "/a/c/d", None)]
    # deleting a leaf
    apply(s, delm("/x"))
    assert s.get("/x") is None and s.get("/") == {"ab": 3}
    # deleting the root clears everything
    res, events = apply(s, delm("/"))
    assert res["ok"] and s.get("/") is None and not s.leaves
    assert events == [(4, "/ab", None)]


def test_delete_root_also_deletes_writes_earlier_in_the_same_txn():
    s = AgencyState()
    apply(s, setm("/keep", 1))
    res, events = apply(s, setm("/x", 1), setm("/y/z", 2), delm("/"))
    assert res["ok"]
    assert not s.leaves, dict(s.leaves)
    assert events == [(2, "/keep", None)]


def test_delete_of_missing_path_changes_nothing_but_revision():
    s = AgencyState()
    apply(s, setm("/a", 1))
    res, events = apply(s, delm("/nope"), delm("/a/below-leaf"))
    assert res["ok"] and events == []
    assert s.get("/a") == 1 and s.version("/a") == 1


# ------------------------------------------------------------------ incr
def test_incr_absent_starts_from_zero_and_default_delta_is_one():
    s = AgencyState()
    apply(s, incm("/n", 5))
    assert s.get("/n") == 5
    apply(s, incm("/n"))
    assert s.get("/n") == 6
    apply(s, incm("/n", -10))
    assert s.get("/n") == -4
    apply(s, incm("/m"))
    assert s.get("/m") == 1


def test_incr_below_a_leaf_replaces_the_leaf():
    s = AgencyState()
    apply(s, setm("/a", "text"))
    res, _ = apply(s, incm("/a/n", 2))
    assert res["ok"] and s.get("/a") == {"n": 2}


@pytest.mark.parametrize("value", ["7", 1.5, True, [1], {"x": 1}])
def test_incr_non_integer_is_an_error_and_applies_nothing(value):
    s = AgencyState()
    apply(s, setm("/v", value), setm("/other", 1))
    before = s.snapshot()
    res, events = apply(s, setm("/other", 2), incm("/v", 1))
    assert res["ok"] is False
    assert "error" in res and res["revision"] == 1
    assert events == []
    assert s.snapshot() == before
    assert s.get("/other") == 1


def test_incr_interior_node_is_an_error():
    s = AgencyState()
    apply(s, setm("/a/b", 1))
    res, events = apply(s, incm("/a"))
    assert res["ok"] is False and events == []
    assert sorted(s.leaves) == ["/a/b"]
    # also when the subtree was created earlier in the same transaction
    res, _ = apply(s, setm("/c/d", 1), incm("/c"))
    assert res["ok"] is False and s.get("/c") is None
    # but after the subtree is deleted in the same transaction it is absent
    res, _ = apply(s, delm("/a"), incm("/a", 3))
    assert res["ok"] and s.get("/a") == 3 and sorted(s.leaves) == ["/a"]


@pytest.mark.parametrize("delta", ["1", 0.5, True, [1]])
def test_incr_by_non_integer_delta_is_an_error_result(delta):
    s = AgencyState()
    apply(s, setm("/n", 1))
    res, events = apply(s, incm("/n", delta))  # must not raise
    assert res["ok"] is False and events == []
    assert s.get("/n") == 1 and s.revision == 1


# --------------------------------------------------------- preconditions
@pytest.fixture
def pstate():
    s = AgencyState()
    apply(s, setm("/a/b", 1), setm("/a/c", "x"))  # rev 1
    apply(s, setm("/a/c", "y"))  # rev 2
    apply(s, setm("/f", False))  # rev 3
    return s


@pytest.mark.parametrize(
    "pre, holds",
    [
        (Precondition("/a/b", "equals", 1), True),
        (Precondition("/a/b", "equals", 2), False),
        (Precondition("/a", "equals", {"b": 1, "c": "y"}), True),
        (Precondition("/a", "equals", {"b": 1}), False),
        (Precondition("/nope", "equals", None), True),
        (Precondition("/f", "equals", False), True),
        (Precondition("/nope", "absent"), True),
        (Precondition("/a/b", "absent"), False),
        (Precondition("/a", "absent"), False),
        (Precondition("/a/b", "present"), True),
        (Precondition("/a", "present"), True),
        (Precondition("/f", "present"), True),  # a false value is present
        (Precondition("/nope", "present"), False),
        (Precondition("/a/b", "version", 1), True),
        (Precondition("/a/b", "version", 2), False),
        (Precondition("/a/c", "version", 2), True),
        (Precondition("/a", "version", 2), True),  # interior: highest below
        (Precondition("/a", "version", 1), False),
        (Precondition("/nope", "version", 0), True),
        (Precondition("/nope", "version", 1), False),
    ],
)
def test_precondition_kinds(pstate, pre, holds):
    s = pstate
    assert s.check(pre) is holds
    before = s.snapshot()
    res, events = s.apply_txn(txn(setm("/out", 1), pre=(pre,)))
    if holds:
        assert res == {"ok": True, "revision": 4}
        assert s.get("/out") == 1 and events == [(4, "/out", 1)]
    else:
        assert res == {"ok": False, "failed": [0], "revision": 3}
        assert events == []
        assert s.revision == 3
        assert s.snapshot() == before


def test_failed_preconditions_are_all_reported_and_nothing_applies(pstate):
    s = pstate
    hist = list(s.history)
    res, events = s.apply_txn(
        txn(
            setm("/a/b", 99),
            delm("/f"),
            pre=(
                Precondition("/a/b", "equals", 1),
                Precondition("/a/b", "absent"),
                Precondition("/f", "present"),
                Precondition("/a", "version", 7),
            ),
        )
    )
    assert res == {"ok": False, "failed": [1, 3], "revision": 3}
    assert events == []
    assert s.revision == 3 and s.get("/a/b") == 1 and s.get("/f") is False
    assert list(s.history) == hist


def test_unknown_precondition_or_mutation_kind_is_refused():
    with pytest.raises(ValueError):
        Precondition("/a", "bigger", 1)
    with pytest.raises(ValueError):
        Mutation("/a", "append", 1)


# --------------------------------------------------------- atomic txns
def test_multi_mutation_txn_is_atomic_and_gets_one_revision():
    s = AgencyState()
    res, events = apply(s, setm("/a", 1), setm("/b/c", 2), incm("/n", 3), delm("/none"))
    assert res == {"ok": True, "revision": 1}
    assert s.revision == 1
    assert events == [(1, "/a", 1), (1, "/b/c", 2), (1, "/n", 3)]
    assert {p: s.version(p) for p in ("/a", "/b/c", "/n")} == {"/a": 1, "/b/c": 1, "/n": 1}
    # a failing later mutation undoes the earlier ones of the same txn
    before = s.snapshot()
    res, events = apply(s, setm("/a", 10), delm("/b"), incm("/a/x", 1), setm("/a", "s"), incm("/a"))
    assert res["ok"] is False and events == []
    assert s.snapshot() == before


def test_mutations_in_a_txn_see_earlier_ones():
    s = AgencyState()
    res, events = apply(s, incm("/n"), incm("/n"), incm("/n", 5))
    assert res["ok"] and s.get("/n") == 7
    assert events == [(1, "/n", 7)]
    res, events = apply(s, setm("/a/b", 1), delm("/a"), setm("/a/c", 2))
    assert s.get("/a") == {"c": 2}
    assert events == [(2, "/a/c", 2)]


# --------------------------------------------------- revisions, versions
def test_revision_and_per_leaf_version():
    s = AgencyState()
    assert s.revision == 0 and s.version("/a") == 0
    apply(s, setm("/a/x", 1))
    apply(s, setm("/a/y", 1))
    apply(s, setm("/b", 1))
    assert s.revision == 3
    assert s.version("/a/x") == 1 and s.version("/a/y") == 2 and s.version("/b") == 3
    assert s.version("/a") == 2 and s.version("/") == 3
    apply(s, setm("/a/x", 1))  # same value: still a change, version bumps
    assert s.version("/a/x") == 4 and s.version("/a") == 4
    apply(s, delm("/a/x"))
    assert s.version("/a/x") == 0 and s.version("/a") == 2
    assert s.revision == 5
    # a failed txn does not bump the revision; an error neither
    apply(s, setm("/b", 2), pre=(Precondition("/b", "equals", 0),))
    apply(s, incm("/b", "x"))
    assert s.revision == 5 and s.version("/b") == 3


def test_read_op():
    s = AgencyState()
    apply(s, setm("/a/b", 1))
    assert s.read(Read(("/a", "/a/b", "/zz"))) == {"revision": 1, "values": [{"b": 1}, 1, None]}


# ------------------------------------------------------ change events
def test_change_events_recorded_in_history():
    s = AgencyState()
    _, e1 = apply(s, setm("/a/b", 1), setm("/c", 2))
    _, e2 = apply(s, setm("/a", 3))
    _, e3 = apply(s, delm("/c"))
    assert e1 == [(1, "/a/b", 1), (1, "/c", 2)]
    assert e2 == [(2, "/a", 3), (2, "/a/b", None)]
    assert e3 == [(3, "/c", None)]
    assert list(s.history) == e1 + e2 + e3


def test_changes_since_prefix_and_resume():
    s = AgencyState()
    apply(s, setm("/cfg/a", 1))  # 1
    apply(s, setm("/other", 1))  # 2
    apply(s, setm("/cfg/b", 2), setm("/cfgx", 9))  # 3
    apply(s, delm("/cfg/a"))  # 4
    apply(s, setm("/cfg", 5))  # 5: replaces the subtree
    events, compacted = s.changes_since("/cfg", 0)
    assert not compacted
    assert events == [
        (1, "/cfg/a", 1),
        (3, "/cfg/b", 2),
        (4, "/cfg/a", None),
        (5, "/cfg", 5),
        (5, "/cfg/b", None),
    ]
    assert s.changes_since("cfg/", 3) == ([(4, "/cfg/a", None), (5, "/cfg", 5), (5, "/cfg/b", None)], False)
    assert s.changes_since("/cfg", 5) == ([], False)
    assert s.changes_since("/cfg", 99) == ([], False)
    assert s.changes_since("/", 3) == (list(s.history)[4:], False)
    assert [e[1] for e in s.changes_since("/cfgx", 0)[0]] == ["/cfgx"]
    assert s.changes_since("/cfg/b", 1) == ([(3, "/cfg/b", 2), (5, "/cfg/b", None)], False)


def test_changes_since_reports_compaction():
    s = AgencyState(history_max=3)
    for i in range(1, 6):
        apply(s, setm(f"/k{i}", i))
    assert [e[0] for e in s.history] == [3, 4, 5]
    assert s.changes_since("/", 2) == ([(3, "/k3", 3), (4, "/k4", 4), (5, "/k5", 5)], False)
    events, compacted = s.changes_since("/", 1)
    assert compacted is True
    events, compacted = s.changes_since("/", 0)
    assert compacted is True
    # the flag does not depend on the prefix matching anything
    assert s.changes_since("/nothing", 1) == ([], True)
    # up to date is never compacted
    assert s.changes_since("/", 5) == ([], False)


def test_history_never_keeps_part_of_a_revision():
    s = AgencyState(history_max=3)
    apply(s, setm("/a", 1), setm("/b", 1))  # rev 1: two events
    apply(s, setm("/c", 1), setm("/d", 1))  # rev 2: two events
    assert len(s.history) <= 3
    # a watcher resuming from 0 must either get all of rev 1 or be told compacted
    events, compacted = s.changes_since("/", 0)
    got_rev1 = [e for e in events if e[0] == 1]
    assert compacted or got_rev1 == [(1, "/a", 1), (1, "/b", 1)]
    assert compacted
    assert s.changes_since("/", 1) == ([(2, "/c", 1), (2, "/d", 1)], False)
    # a single txn with more events than history_max
    apply(s, *(setm(f"/m{i}", i) for i in range(5)))
    events, compacted = s.changes_since("/", 2)
    assert compacted or len(events) == 5


# ------------------------------------------------------------- sessions
def test_session_retry_returns_saved_result_without_reapplying():
    s = AgencyState()
    r1, e1 = apply(s, incm("/n"), client="c1", req_id=1)
    assert r1 == {"ok": True, "revision": 1} and e1 == [(1, "/n", 1)]
    apply(s, setm("/x", 1), client="c2", req_id=1)
    before = s.snapshot()
    r2, e2 = apply(s, incm("/n"), client="c1", req_id=1)
    assert r2 == {"ok": True, "revision": 1, "retry": True}
    assert e2 == []
    assert s.get("/n") == 1 and s.revision == 2
    assert s.snapshot() == before
    # the saved result of a failed txn is returned too
    rf, _ = apply(s, setm("/y", 1), pre=(Precondition("/y", "present"),), client="c3", req_id=4)
    apply(s, setm("/y", 0))
    rr, ev = apply(s, setm("/y", 1), pre=(Precondition("/y", "present"),), client="c3", req_id=4)
    assert rr == dict(rf, retry=True) and rr["ok"] is False and ev == []
    assert s.get("/y") == 0


def test_session_lower_req_id_is_stale_and_higher_is_applied():
    s = AgencyState()
    apply(s, incm("/n"), client="c", req_id=5)
    res, events = apply(s, incm("/n"), client="c", req_id=3)
    assert res == {"ok": False, "stale": True, "revision": 1}
    assert events == [] and s.get("/n") == 1 and s.revision == 1
    res, events = apply(s, incm("/n"), client="c", req_id=6)
    assert res == {"ok": True, "revision": 2} and s.get("/n") == 2
    res, _ = apply(s, incm("/n"), client="c", req_id=100)  # gaps are fine
    assert res["ok"] and s.get("/n") == 3
    assert s.sessions["c"][0] == 100
    # other clients are independent; no client means no session
    res, _ = apply(s, incm("/n"), client="d", req_id=1)
    assert res["ok"] and s.get("/n") == 4
    apply(s, incm("/n"))
    apply(s, incm("/n"))
    assert s.get("/n") == 6 and set(s.sessions) == {"c", "d"}


def test_sessions_are_bounded_and_evict_least_recently_active():
    s = AgencyState()
    s.sessions_max = 3
    for i, c in enumerate(["a", "b", "c"], start=1):
        apply(s, setm(f"/{c}", i), client=c, req_id=1)
    apply(s, setm("/a", 10), client="a", req_id=2)  # a is now the most recent
    apply(s, setm("/d", 4), client="d", req_id=1)
    assert len(s.sessions) == 3
    assert set(s.sessions) == {"a", "c", "d"}  # b was the least recently active
    apply(s, setm("/e", 5), client="e", req_id=1)
    assert set(s.sessions) == {"a", "d", "e"}
    # a forgotten client's old request is applied again (documented limit)
    res, _ = apply(s, setm("/b", 2), client="b", req_id=1)
    assert res.get("retry") is None and res["ok"]


def test_session_eviction_never_drops_the_client_just_served():
    s = AgencyState()
    s.sessions_max = 2
    never = Precondition("/q", "present")
    for c in ["b", "c", "a"]:  # all at revision 0: ties broken by name
        res, _ = apply(s, setm("/q", 1), pre=(never,), client=c, req_id=1)
        assert res["ok"] is False
    assert "a" in s.sessions and len(s.sessions) == 2
    res, _ = apply(s, setm("/q", 1), pre=(never,), client="a", req_id=1)
    assert res.get("retry") is True


# ------------------------------------------------------------ snapshots
def _busy_state():
    s = AgencyState(history_max=6)
    apply(s, setm("/a/b", {"c": 1, "d": [1, "x", None]}), client="c1", req_id=1)
    apply(s, setm("/z", "ü\u2603"), client="c2", req_id=7)
    apply(s, incm("/n", 3), client="c1", req_id=2)
    apply(s, delm("/a/b/c"))
    apply(s, setm("/f", 1.5), pre=(Precondition("/f", "present"),), client="c3", req_id=1)
    apply(s, setm("/t", {"u": {"v": True}}))
    s.applied_index = 42
    return s


def test_snapshot_restore_round_trip_is_byte_identical():
    s = _busy_state()
    snap = s.snapshot()
    json.loads(snap)  # canonical JSON
    r = AgencyState.restore(snap)
    assert r.snapshot() == snap
    assert r.revision == s.revision and r.applied_index == 42 and r.history_max == 6
    assert dict(r.leaves) == dict(s.leaves)
    assert list(r.history) == list(s.history)
    assert r.sessions == s.sessions
    for p in ("/", "/a", "/a/b", "/a/b/d", "/z", "/n", "/t/u"):
        assert r.get(p) == s.get(p) and r.version(p) == s.version(p)
    for rev in range(0, s.revision + 1):
        assert r.changes_since("/", rev) == s.changes_since("/", rev)
    # and both evolve identically afterwards
    for st_ in (s, r):
        apply(st_, incm("/n"), client="c1", req_id=3)
        apply(st_, setm("/w", 1))
    assert r.snapshot() == s.snapshot()


def test_restored_state_keeps_sessions():
    s = _busy_state()
    r = AgencyState.restore(s.snapshot())
    res, events = apply(r, incm("/n", 3), client="c1", req_id=2)
    assert res == {"ok": True, "revision": 3, "retry": True} and events == []
    assert r.get("/n") == 3
    res, _ = apply(r, incm("/n"), client="c1", req_id=1)
    assert res["stale"] is True
    res, _ = apply(r, setm("/f", 1.5), pre=(Precondition("/f", "present"),), client="c3", req_id=1)
    assert res["retry"] is True and res["ok"] is False


def test_snapshot_is_independent_of_insertion_order():
    a, b = AgencyState(), AgencyState()
    apply(a, setm("/x", 1), setm("/y", 2), client="p", req_id=1)
    apply(a, setm("/z", 1), client="q", req_id=1)
    apply(b, setm("/y", 2), setm("/x", 1), client="p", req_id=1)
    apply(b, setm("/z", 1), client="q", req_id=1)
    assert a.snapshot() == b.snapshot()


def test_restore_of_empty_data_is_a_fresh_state():
    r = AgencyState.restore(b"")
    assert r.revision == 0 and not r.leaves and not r.sessions
    assert r.snapshot() == AgencyState().snapshot()


# ---------------------------------------------- model-based (hypothesis)
PATHS = ["/a", "/a/b", "/a/c", "/d", "/a/b/e"]
KEYS = ["b", "c", "e"]

scalars = st.one_of(st.integers(-5, 5), st.sampled_from(["s", "t"]), st.booleans())
dict_values = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(scalars, st.dictionaries(st.sampled_from(KEYS), scalars, min_size=1, max_size=2)),
    min_size=1,
    max_size=3,
)
mutations = st.one_of(
    st.builds(setm, st.sampled_from(PATHS), st.one_of(scalars, st.none(), dict_values)),
    st.builds(delm, st.sampled_from(PATHS + ["/"])),
    st.builds(incm, st.sampled_from(PATHS), st.one_of(st.none(), st.integers(-3, 3))),
)
txns = st.lists(mutations, min_size=1, max_size=3)


class ModelError(Exception):
    pass


class Model:
    """The specification as a nested dict: interior nodes are dicts, leaves
    are anything else; empty interior nodes do not exist."""

    def __init__(self):
        self.tree: dict = {}
        self.versions: dict[str, int] = {}
        self.revision = 0

    @staticmethod
    def parts(path):
        return [p for p in path.split("/") if p]

    @staticmethod
    def get_in(tree, path):
        node = tree
        for p in Model.parts(path):
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        if isinstance(node, dict) and not node:
            return None
        return copy.deepcopy(node)

    @staticmethod
    def leaves(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            p = prefix + "/" + k
            if isinstance(v, dict):
                out.update(Model.leaves(v, p))
            else:
                out[p] = v
        return out

    @staticmethod
    def prune(node):
        for k in list(node):
            if isinstance(node[k], dict):
                Model.prune(node[k])
                if not node[k]:
                    del node[k]

    @staticmethod
    def delete(tree, path):
        parts = Model.parts(path)
        if not parts:
            tree.clear()
            return
        node = tree
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                return
            node = node[p]
        node.pop(parts[-1], None)

    @staticmethod
    def put(tree, path, value, written):
        parts = Model.parts(path)
        node = tree
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}  # replaces a leaf on the way
            node = node[p]
        node[parts[-1]] = copy.deepcopy(value)
        base = "/" + "/".join(parts)
        if isinstance(value, dict):
            written.update(base + p for p in Model.leaves(value))
        else:
            written.add(base)

    def apply(self, muts):
        """Returns the expected events, or raises ModelError (nothing applied)."""
        tree = copy.deepcopy(self.tree)
        written: set[str] = set()
        for m in muts:
            if m.kind == "delete":
                Model.delete(tree, m.path)
            elif m.kind == "set":
                if m.value is None:
                    # delete the subtree and any leaf on the way
                    parts = Model.parts(m.path)
                    node = tree
                    for p in parts[:-1]:
                        nxt = node.get(p)
                        if not isinstance(nxt, dict):
                            node.pop(p, None)
                            break
                        node = nxt
                    else:
                        node.pop(parts[-1], None)
                else:
                    Model.put(tree, m.path, m.value, written)
            else:  # incr
                cur = Model.get_in(tree, m.path)
                if isinstance(cur, dict) or isinstance(cur, bool) or not isinstance(cur, (int, type(None))):
                    raise ModelError(m)
                Model.put(tree, m.path, (cur or 0) + (1 if m.value is None else m.value), written)
            Model.prune(tree)
        old = Model.leaves(self.tree)
        new = Model.leaves(tree)
        self.revision += 1
        rev = self.revision
        events = []
        for p in sorted(set(old) | set(new)):
            if p not in new:
                events.append((rev, p, None))
            elif p in written:
                events.append((rev, p, new[p]))
        self.versions = {p: (rev if p in written else self.versions[p]) for p in new}
        self.tree = tree
        return events

    def get(self, path):
        return Model.get_in(self.tree, path)

    def version(self, path):
        norm = "/" + "/".join(Model.parts(path))
        if norm in self.versions:
            return self.versions[norm]
        below = [v for p, v in self.versions.items() if norm == "/" or p.startswith(norm + "/")]
        return max(below, default=0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(txns, min_size=1, max_size=25))
def test_random_txns_match_reference_model(steps):
    s = AgencyState()
    model = Model()
    for muts in steps:
        rev_before = s.revision
        try:
            expected = model.apply(muts)
        except ModelError:
            expected = None
        res, events = s.apply_txn(Txn(tuple(muts)))
        if expected is None:
            assert res["ok"] is False and "error" in res, (muts, res)
            assert events == [] and s.revision == rev_before
        else:
            assert res == {"ok": True, "revision": rev_before + 1}, (muts, res)
            assert events == expected, muts
        for p in PATHS + ["/"]:
            assert s.get(p) == model.get(p), (p, muts)
            assert s.version(p) == model.version(p), (p, muts)
        # the tree invariant: no leaf is an ancestor of another leaf
        keys = list(s.leaves)
        for k in keys:
            assert not any(o.startswith(k + "/") for o in keys), keys
    r = AgencyState.restore(s.snapshot())
    assert r.snapshot() == s.snapshot()
