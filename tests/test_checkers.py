"""Tests for sim.checkers: each Raft safety checker on a passing history and
on hand-made broken ones."""
from __future__ import annotations

import pytest

from sim.checkers import (
    MAX_VIOLATIONS,
    committed_never_change,
    election_safety,
    leader_completeness,
    log_matching,
    run_all,
    state_machine_safety,
)
from sim.history import FinalLog, Op, Record, Violation


# ------------------------------------------------------------------ builders
def rec(t: float, kind: str, **fields) -> Record:
    return Record(t, fields.get("peer", "?"), "raft", kind, fields)


def leader(t, peer, term, log=(), snap=(0, 0)) -> Record:
    return rec(t, "raft.leader", peer=peer, term=term, snapshot_index=snap[0],
               snapshot_term=snap[1], log=tuple(log))


def commit(t, peer, index, term, digest, current_term) -> Record:
    return rec(t, "raft.commit", peer=peer, index=index, term=term, digest=digest,
               current_term=current_term)


def apply_(t, peer, index, term, digest) -> Record:
    return rec(t, "raft.apply", peer=peer, index=index, term=term, digest=digest)


def install(t, peer, index, term) -> Record:
    return rec(t, "raft.snapshot_install", peer=peer, index=index, term=term)


def boot(t, peer, snapshot_index=0, term=0) -> Record:
    return rec(t, "raft.boot", peer=peer, term=term, snapshot_index=snapshot_index,
               last_index=snapshot_index)


E1, E2, E3, E4 = (1, 1, 0xA1), (2, 1, 0xB2), (3, 1, 0xC3), (4, 2, 0xD4)


def good_run() -> tuple[list[Record], dict[str, FinalLog]]:
    """Three peers: n1 leads term 1 and commits 1..3; n2 leads term 2 and
    commits 4; n3 catches up through a snapshot install at 3."""
    records = [leader(1.0, "n1", 1)]
    for i, (idx, term, dig) in enumerate([E1, E2, E3]):
        t = 2.0 + i
        records += [commit(t, "n1", idx, term, dig, 1), apply_(t + 0.1, "n1", idx, term, dig),
                    commit(t + 0.2, "n2", idx, term, dig, 1),
                    apply_(t + 0.3, "n2", idx, term, dig)]
    records += [
        leader(10.0, "n2", 2, log=[E1, E2, E3]),
        commit(11.0, "n2", *E4, 2), apply_(11.1, "n2", *E4),
        commit(11.2, "n1", *E4, 2), apply_(11.3, "n1", *E4),
        install(12.0, "n3", 3, 1), commit(12.1, "n3", *E4, 2), apply_(12.2, "n3", *E4),
    ]
    logs = {
        "n1": FinalLog(0, 0, [E1, E2, E3, E4]),
        "n2": FinalLog(0, 0, [E1, E2, E3, E4]),
        "n3": FinalLog(3, 1, [E4]),
    }
    return records, logs


# ----------------------------------------------------------- election safety
def test_election_safety_passes_on_good_run():
    records, _ = good_run()
    assert election_safety(records) == []


def test_election_safety_two_leaders_in_term_3():
    records = [leader(1.0, "n1", 2), leader(5.0, "n1", 3), leader(5.5, "n2", 3),
               leader(6.0, "n1", 3), leader(9.0, "n3", 4)]
    vs = election_safety(records)
    assert len(vs) == 1
    v = vs[0]
    assert isinstance(v, Violation) and v.checker == "election_safety"
    assert v.details["term"] == 3 and set(v.details["leaders"]) == {"n1", "n2"}
    assert "term 3" in v.message and "n1 at t=5" in v.message and "n2 at t=5.5" in v.message


def test_election_safety_same_peer_twice_in_a_term_is_fine():
    assert election_safety([leader(1.0, "n1", 3), leader(2.0, "n1", 3)]) == []


# --------------------------------------------------------------- log matching
def test_log_matching_passes_on_good_run():
    _, logs = good_run()
    assert log_matching(logs) == []


def test_log_matching_divergent_logs_with_shared_index_and_term():
    logs = {
        "n1": FinalLog(0, 0, [(1, 1, "a"), (2, 1, "b"), (3, 2, "c")]),
        "n2": FinalLog(0, 0, [(1, 1, "a"), (2, 1, "X"), (3, 2, "c")]),
        "n3": FinalLog(0, 0, [(1, 1, "a"), (2, 1, "b"), (3, 2, "c")]),
    }
    vs = log_matching(logs)
    assert {v.details["peers"] for v in vs} == {("n1", "n2"), ("n2", "n3")}
    v = next(v for v in vs if v.details["peers"] == ("n1", "n2"))
    assert v.checker == "log_matching"
    assert v.details["diverging_index"] == 2 and v.details["anchor_index"] == 2
    assert "n1 and n2" in v.message and "index 2" in v.message


def test_log_matching_divergence_below_a_later_shared_entry():
    logs = {
        "n1": FinalLog(0, 0, [(1, 1, "a"), (2, 1, "b"), (3, 2, "c"), (4, 3, "d")]),
        "n2": FinalLog(0, 0, [(1, 1, "a"), (2, 2, "z"), (3, 2, "c"), (4, 4, "e")]),
    }
    [v] = log_matching(logs)
    assert v.details["diverging_index"] == 2 and v.details["anchor_index"] == 3
    assert "(index 3, term 2)" in v.message


def test_log_matching_uncommitted_conflicting_tails_are_fine():
    logs = {
        "n1": FinalLog(0, 0, [(1, 1, "a"), (2, 1, "b"), (3, 2, "c")]),
        "n2": FinalLog(0, 0, [(1, 1, "a"), (2, 1, "b"), (3, 3, "x"), (4, 3, "y")]),
        "n3": FinalLog(0, 0, [(1, 1, "a")]),
    }
    assert log_matching(logs) == []


def test_log_matching_ignores_snapshot_covered_indices():
    logs = {
        "n1": FinalLog(5, 2, [(6, 3, "f")]),
        # n2's index 2 differs from whatever n1 had, but n1 no longer holds it.
        "n2": FinalLog(0, 0, [(1, 1, "a"), (2, 1, "??"), (3, 2, "c"), (4, 2, "d"),
                              (5, 2, "e"), (6, 3, "f")]),
    }
    assert log_matching(logs) == []
    logs["n2"].entries[5] = (6, 3, "DIFFERENT")
    [v] = log_matching(logs)
    assert v.details["diverging_index"] == 6


def test_log_matching_reports_malformed_logs():
    vs = log_matching({"n1": FinalLog(2, 1, [(3, 1, "a"), (5, 1, "b")])})
    assert len(vs) == 1 and "expected index 4 but found 5" in vs[0].message
    vs = log_matching({"n1": FinalLog(0, 0, [(1, 2, "a"), (2, 1, "b")])})
    assert len(vs) == 1 and "terms decrease at index 2" in vs[0].message
    vs = log_matching({"n1": FinalLog(4, 3, [(5, 2, "a")])})
    assert len(vs) == 1 and "term 2 follows term 3" in vs[0].message


# -------------------------------------------------------- leader completeness
def test_leader_completeness_passes_on_good_run():
    records, _ = good_run()
    assert leader_completeness(records) == []


def test_leader_of_term_5_missing_entry_committed_at_term_4():
    records = [
        leader(1.0, "n1", 4, log=[(1, 4, "a")]),
        commit(2.0, "n1", 1, 4, "a", 4),
        commit(2.5, "n1", 2, 4, "b", 4),
        leader(9.0, "n2", 5, log=[(1, 4, "a")]),  # lacks index 2
    ]
    [v] = leader_completeness(records)
    assert v.checker == "leader_completeness"
    assert v.details["leader"] == "n2" and v.details["term"] == 5
    [p] = v.details["problems"]
    assert p["index"] == 2 and p["problem"] == "missing" and p["committed_by"] == "n1"
    assert "leader n2 of term 5" in v.message and "index 2" in v.message
    assert "t=2.5" in v.message


def test_leader_completeness_wrong_digest_or_term():
    records = [
        commit(2.0, "n1", 1, 1, "a", 1),
        commit(2.0, "n1", 2, 1, "b", 1),
        leader(9.0, "n2", 2, log=[(1, 1, "a"), (2, 1, "EVIL")]),
        leader(19.0, "n3", 3, log=[(1, 1, "a"), (2, 2, "b")]),
    ]
    vs = leader_completeness(records)
    assert [v.details["leader"] for v in vs] == ["n2", "n3"]
    assert "has (term 1, digest 'EVIL') instead" in vs[0].message


def test_leader_completeness_only_binds_later_terms():
    # A follower learned the commit while in term 4; a leader of term 4
    # itself need not be checked (it may be the one that committed it).
    records = [commit(2.0, "n1", 1, 3, "a", 4), leader(3.0, "n2", 4, log=[])]
    assert leader_completeness(records) == []
    # But the smallest current_term wins: n3 learned it in term 3.
    records.append(commit(5.0, "n3", 1, 3, "a", 3))
    [v] = leader_completeness(records)
    assert v.details["leader"] == "n2"
    assert v.details["problems"][0]["committed_by"] == "n3"


def test_leader_completeness_snapshot_counts_as_present():
    records = [
        commit(2.0, "n1", 1, 1, "a", 1), commit(2.1, "n1", 2, 1, "b", 1),
        commit(2.2, "n1", 3, 2, "c", 2),
        leader(9.0, "n2", 3, log=[(3, 2, "c")], snap=(2, 1)),
    ]
    assert leader_completeness(records) == []
    # A snapshot ending exactly at a committed index must carry its term.
    records[-1] = leader(9.0, "n2", 3, log=[(3, 2, "c")], snap=(2, 2))
    [v] = leader_completeness(records)
    assert "snapshot ends at index 2 with term 2" in v.message


# ------------------------------------------------------- state machine safety
def test_state_machine_safety_passes_on_good_run():
    records, _ = good_run()
    assert state_machine_safety(records) == []


def _applies(peer, upto, t0=0.0, digest=lambda i: i):
    return [apply_(t0 + i, peer, i, 1, digest(i)) for i in range(1, upto + 1)]


def test_two_peers_apply_different_digests_at_index_7():
    records = _applies("n1", 8) + _applies("n2", 8, 0.5, lambda i: "BAD" if i == 7 else i)
    [v] = state_machine_safety(records)
    assert v.checker == "state_machine_safety" and v.details["index"] == 7
    assert "index 7 applied with 2 different entries" in v.message
    assert "n1@t=7" in v.message and "n2@t=7.5" in v.message


def test_gap_in_applies_is_reported():
    records = [r for r in _applies("n1", 6) if r.fields["index"] != 4]
    [v] = state_machine_safety(records)
    assert v.details == {"peer": "n1", "t": 5.0, "index": 5, "last_applied": 3}
    assert "gap" in v.message and "4..4 skipped" in v.message


def test_first_apply_must_be_index_1():
    [v] = state_machine_safety([apply_(1.0, "n1", 2, 1, "b")])
    assert v.details["last_applied"] == 0 and v.details["index"] == 2


def test_repeated_or_backwards_apply_is_reported():
    records = _applies("n1", 3) + [apply_(10.0, "n1", 2, 1, 2)]
    [v] = state_machine_safety(records)
    assert "out-of-order/repeated" in v.message and v.details["last_applied"] == 3


def test_snapshot_install_allows_a_jump_but_not_a_rollback():
    records = _applies("n2", 2) + [install(5.0, "n2", 10, 1), apply_(6.0, "n2", 11, 1, 11)]
    assert state_machine_safety(records) == []
    records.append(install(7.0, "n2", 4, 1))
    [v] = state_machine_safety(records)
    assert "moved backwards" in v.message and v.details["last_applied"] == 11


def test_snapshot_install_term_must_match_applied_entries():
    records = _applies("n1", 3) + [install(9.0, "n2", 3, 2)]
    [v] = state_machine_safety(records)
    assert v.details["index"] == 3 and v.details["applied_terms"] == [1]


def test_boot_resets_the_apply_cursor_to_its_snapshot():
    records = [boot(0.0, "n1")] + _applies("n1", 3) + [boot(5.0, "n1")] + _applies("n1", 4, 5.0)
    assert state_machine_safety(records) == []
    # Without the boot record the re-apply is a violation.
    assert len(state_machine_safety(_applies("n1", 3) + _applies("n1", 4, 5.0))) == 3
    # Booting from a snapshot at 2: applying resumes at 3.
    records = _applies("n1", 3) + [boot(5.0, "n1", snapshot_index=2)]
    assert state_machine_safety(records + [apply_(6.0, "n1", 3, 1, 3)]) == []
    [v] = state_machine_safety(records + [apply_(6.0, "n1", 4, 1, 4)])
    assert v.details["last_applied"] == 2 and "gap" in v.message


def test_records_are_processed_in_time_order():
    records = list(reversed(_applies("n1", 5)))
    assert state_machine_safety(records) == []


# ----------------------------------------------------- committed never change
def test_committed_never_change_passes_on_good_run():
    records, _ = good_run()
    assert committed_never_change(records) == []


def test_committed_entry_changes():
    records = [
        commit(1.0, "n1", 3, 1, "a", 1),
        commit(2.0, "n2", 3, 1, "a", 1),
        commit(3.0, "n3", 3, 2, "b", 2),
        commit(4.0, "n1", 3, 2, "b", 2),   # same conflict: reported once
        commit(5.0, "n2", 3, 1, "c", 2),   # another one
    ]
    vs = committed_never_change(records)
    assert len(vs) == 2
    assert vs[0].checker == "committed_never_change"
    assert vs[0].details["first"] == {"peer": "n1", "t": 1.0, "entry": (1, "a")}
    assert vs[0].details["later"] == {"peer": "n3", "t": 3.0, "entry": (2, "b")}
    assert "index 3 was committed as (term 1, digest 'a') by n1 at t=1" in vs[0].message
    assert vs[1].details["later"]["entry"] == (1, "c")


# --------------------------------------------------------------- run_all etc.
def _ops(bad: bool) -> list[Op]:
    return [
        Op("c1", 1, "write", "k", value=1, invoke_t=0.0, return_t=1.0, status="ok"),
        Op("c2", 1, "read", "k", invoke_t=2.0, return_t=3.0, status="ok",
           result=None if bad else 1),
    ]


def test_run_all_on_good_run():
    records, logs = good_run()
    result = run_all(records, logs)
    assert set(result) == {"election_safety", "log_matching", "leader_completeness",
                           "state_machine_safety", "committed_never_change"}
    assert all(v == [] for v in result.values())
    result = run_all(records, logs, ops=_ops(bad=False))
    assert result["linearizability"] == []


def test_run_all_routes_each_violation_to_its_checker():
    records, logs = good_run()
    records += [leader(20.0, "n3", 2, log=[E1, E2, E3, E4])]  # second leader of term 2
    result = run_all(records, logs, ops=_ops(bad=True))
    failing = {name for name, vs in result.items() if vs}
    assert failing == {"election_safety", "linearizability"}
    assert result["linearizability"][0].checker == "linearizability"


def test_run_all_accepts_an_iterator_of_records():
    records, logs = good_run()
    assert all(v == [] for v in run_all(iter(records), logs).values())
    records.append(commit(30.0, "n3", 4, 3, 0xEE, 3))  # only the last checker sees it
    result = run_all(iter(records), logs)
    assert len(result["committed_never_change"]) == 1


def test_violations_are_capped_with_a_summary():
    records = [leader(float(t), p, t) for t in range(1, 80) for p in ("n1", "n2")]
    vs = election_safety(records)
    assert len(vs) == MAX_VIOLATIONS + 1
    assert vs[-1].details == {"suppressed": 79 - MAX_VIOLATIONS, "total": 79}


def test_malformed_records_raise():
    with pytest.raises(ValueError, match="no field 'term'"):
        election_safety([rec(1.0, "raft.leader", peer="n1")])


def test_violation_str():
    v = Violation("x", "boom", {"a": 1})
    assert str(v) == "[x] boom\n    a: 1"
    assert str(Violation("x", "boom")) == "[x] boom"
