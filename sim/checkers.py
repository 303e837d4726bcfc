"""Raft safety checkers over the records of a simulated run.

Each checker is a pure function returning ``list[Violation]`` (empty =
pass).  They consume the records Raft peers emit through the simulator:

``raft.leader`` {peer, term, snapshot_index, snapshot_term, log}
    ``peer`` became leader of ``term``; ``log`` is a tuple of
    ``(index, term, digest)`` for every entry after its snapshot.
``raft.commit`` {peer, index, term, digest, current_term}
    ``peer`` learned that entry ``index`` (of term ``term``) is committed,
    while its own term was ``current_term``.
``raft.apply`` {peer, index, term, digest}
    ``peer`` applied that entry to its state machine.
``raft.snapshot_install`` {peer, index, term}
    ``peer`` replaced its state machine with a snapshot covering
    ``1..index`` (instead of applying those entries).
``raft.boot`` {peer, term, snapshot_index, last_index}
    ``peer`` (re)started and rebuilt its state machine from its persisted
    snapshot ending at ``snapshot_index`` (0: empty); it applies from
    ``snapshot_index + 1`` on.  Only :func:`state_machine_safety` uses it.

Records are processed in time order (a stable sort on ``t``, so records
sharing a timestamp keep their emission order).  The properties, from the
Raft paper (figure 3), and how each is checked:

* :func:`election_safety` -- at most one leader per term: group
  ``raft.leader`` records by term and report every term with more than one
  distinct peer.
* :func:`log_matching` -- if two logs hold an entry with the same index and
  term, they are identical in all entries up to that index.  For every pair
  of final logs, find the highest index both hold with equal terms (the
  *anchor*) and compare every index both hold up to it (indices covered by
  either side's snapshot are skipped).  Each final log is also checked to be
  well formed: indices contiguous from ``snapshot_index + 1``, terms
  non-decreasing and not below ``snapshot_term``.
* :func:`leader_completeness` -- a committed entry is in the log of every
  leader of a later term.  An entry recorded committed by a peer whose term
  was ``Tc`` was committed in some term <= ``Tc``, so every leader of a term
  > ``Tc`` (as of its election: leaders never drop entries) must hold it
  with the same term and digest; an index below the leader's snapshot
  counts as present, one *at* its snapshot index must match the snapshot's
  term.  Per committed entry the smallest ``Tc`` seen is used (the strongest
  sound constraint).
* :func:`state_machine_safety` -- no two applies of the same index differ
  (across peers and within one peer, including snapshot terms), and each
  peer applies ``last + 1`` each time, where ``last`` is its previous apply
  or snapshot install (0 initially; a ``raft.boot`` sets it to the boot
  snapshot's index, possibly backwards -- the state machine was rebuilt);
  a snapshot install may not move ``last`` backwards.
* :func:`committed_never_change` -- the first ``(term, digest)`` recorded
  committed at an index is the only one ever recorded there.

:func:`run_all` runs everything (plus linearizability when client ops are
given).  Malformed records (missing fields) raise ``ValueError``: that is a
simulator bug, not a property violation.  Each checker reports at most
``MAX_VIOLATIONS`` violations followed by one summary violation.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from itertools import combinations
from typing import Any, Iterable, Mapping

from sim.history import FinalLog, Op, Record, Violation, short_repr
from sim.linearizability import check_many

__all__ = [
    "election_safety",
    "log_matching",
    "leader_completeness",
    "state_machine_safety",
    "committed_never_change",
    "run_all",
    "CHECKERS",
    "MAX_VIOLATIONS",
]

#: At most this many violations per checker are returned (plus a summary).
MAX_VIOLATIONS = 50

LEADER, COMMIT, APPLY = "raft.leader", "raft.commit", "raft.apply"
SNAPSHOT_INSTALL, BOOT = "raft.snapshot_install", "raft.boot"


# -------------------------------------------------------------------- helpers
def _f(rec: Record, name: str) -> Any:
    """Field ``name`` of ``rec``, or ``ValueError`` naming the record."""
    try:
        return rec.fields[name]
    except KeyError:
        raise ValueError(f"malformed {rec.kind} record (no field {name!r}): {rec}") from None


def _of_kind(records: Iterable[Record], *kinds: str) -> list[Record]:
    """The records of the given kinds, stably sorted by time."""
    return sorted((r for r in records if r.kind in kinds), key=lambda r: r.t)


def _cap(checker: str, violations: list[Violation]) -> list[Violation]:
    """Keep the first ``MAX_VIOLATIONS`` violations and summarise the rest."""
    if len(violations) <= MAX_VIOLATIONS:
        return violations
    dropped = len(violations) - MAX_VIOLATIONS
    summary = Violation(
        checker,
        f"... and {dropped} more {checker} violations not shown "
        f"({len(violations)} in total)",
        {"suppressed": dropped, "total": len(violations)},
    )
    return violations[:MAX_VIOLATIONS] + [summary]


def _entry(term: Any, digest: Any) -> str:
    return f"(term {term}, digest {short_repr(digest, 24)})"


# ------------------------------------------------------------ election safety
def election_safety(records: Iterable[Record]) -> list[Violation]:
    """At most one distinct peer becomes leader in any term."""
    by_term: dict[int, dict[str, float]] = defaultdict(dict)
    for rec in _of_kind(records, LEADER):
        by_term[_f(rec, "term")].setdefault(_f(rec, "peer"), rec.t)
    out = []
    for term in sorted(by_term):
        leaders = by_term[term]
        if len(leaders) > 1:
            desc = ", ".join(f"{p} at t={t:g}" for p, t in sorted(leaders.items(), key=lambda x: x[1]))
            out.append(Violation(
                "election_safety",
                f"term {term} has {len(leaders)} leaders: {desc}",
                {"term": term, "leaders": dict(leaders)},
            ))
    return _cap("election_safety", out)


# ---------------------------------------------------------------- log matching
def _log_shape(peer: str, log: FinalLog) -> list[Violation]:
    """Well-formedness of one final log (contiguous indices, monotone terms)."""
    out = []
    expect_index, last_term = log.snapshot_index + 1, log.snapshot_term
    for index, term, _digest in log.entries:
        if index != expect_index:
            out.append(Violation(
                "log_matching",
                f"peer {peer}: malformed log, expected index {expect_index} but found "
                f"{index} (snapshot_index {log.snapshot_index})",
                {"peer": peer, "expected_index": expect_index, "found_index": index},
            ))
            break
        if term < last_term:
            out.append(Violation(
                "log_matching",
                f"peer {peer}: log terms decrease at index {index}: term {term} follows term "
                f"{last_term}",
                {"peer": peer, "index": index, "term": term, "previous_term": last_term},
            ))
            break
        expect_index, last_term = index + 1, term
    return out


def _log_pair(a: str, la: FinalLog, b: str, lb: FinalLog) -> Violation | None:
    """Log Matching between two final logs, or ``None`` if it holds."""
    # Indices covered by either snapshot are not compared (a well-formed log
    # holds none; _log_shape reports one that does).
    ea = {i: (t, d) for i, t, d in la.entries if i > la.snapshot_index}
    eb = {i: (t, d) for i, t, d in lb.entries if i > lb.snapshot_index}
    common = sorted(ea.keys() & eb.keys())
    anchors = [i for i in common if ea[i][0] == eb[i][0]]
    if not anchors:
        return None
    top = anchors[-1]
    bad = next((i for i in common if i <= top and ea[i] != eb[i]), None)
    if bad is None:
        return None
    anchor = next(i for i in anchors if i >= bad)
    same = "index and term" if anchor == bad else f"(index {anchor}, term {ea[anchor][0]})"
    msg = (
        f"peers {a} and {b} share {same} but diverge at index {bad}: "
        f"{a} has {_entry(*ea[bad])}, {b} has {_entry(*eb[bad])}"
    )
    return Violation("log_matching", msg, {
        "peers": (a, b), "anchor_index": anchor, "anchor_term": ea[anchor][0],
        "diverging_index": bad, "entries": {a: ea[bad], b: eb[bad]},
    })


def log_matching(final_logs: Mapping[str, FinalLog]) -> list[Violation]:
    """Log Matching over the final logs of all peers (pairwise), plus log shape."""
    out: list[Violation] = []
    peers = sorted(final_logs)
    for p in peers:
        out.extend(_log_shape(p, final_logs[p]))
    for a, b in combinations(peers, 2):
        v = _log_pair(a, final_logs[a], b, final_logs[b])
        if v is not None:
            out.append(v)
    return _cap("log_matching", out)


# --------------------------------------------------------- leader completeness
def _committed_min_term(records: list[Record]) -> dict[tuple[int, int, Any], Record]:
    """Per committed (index, term, digest): the commit record with the lowest
    ``current_term`` (earliest in time among equals)."""
    best: dict[tuple[int, int, Any], Record] = {}
    for rec in records:
        k = (_f(rec, "index"), _f(rec, "term"), _f(rec, "digest"))
        cur = best.get(k)
        if cur is None or _f(rec, "current_term") < _f(cur, "current_term"):
            best[k] = rec
    return best


def _lacks(leader: Record, log: dict[int, tuple[int, Any]], index: int, term: int, digest: Any) -> str | None:
    """Why ``leader``'s log fails to hold (index, term, digest), or ``None``."""
    snap_i, snap_t = _f(leader, "snapshot_index"), _f(leader, "snapshot_term")
    if index < snap_i:
        return None
    if index == snap_i:
        return None if snap_t == term else f"its snapshot ends at index {index} with term {snap_t}"
    have = log.get(index)
    if have is None:
        return "missing"
    if have != (term, digest):
        return f"has {_entry(*have)} instead"
    return None


def leader_completeness(records: Iterable[Record]) -> list[Violation]:
    """Every committed entry is in the log of every leader of a later term."""
    records = list(records)
    committed = _committed_min_term(_of_kind(records, COMMIT))
    ordered = sorted(committed.items(), key=lambda kv: (_f(kv[1], "current_term"), kv[0][0]))
    keys = [k for k, _ in ordered]
    commit_terms = [_f(rec, "current_term") for _, rec in ordered]
    out = []
    for leader in _of_kind(records, LEADER):
        lterm, lpeer = _f(leader, "term"), _f(leader, "peer")
        log = [tuple(e) for e in _f(leader, "log")]
        snap_i = _f(leader, "snapshot_index")
        # Fast path (set membership in C): entries committed before this term
        # that the leader's log does not hold verbatim; then explain each.
        holds = set(log)
        upto = bisect_left(commit_terms, lterm)
        suspects = [k for k in keys[:upto] if k not in holds and k[0] >= snap_i]
        if not suspects:
            continue
        by_index = {i: (t, d) for i, t, d in log}
        problems = []
        for index, term, digest in suspects:
            why = _lacks(leader, by_index, index, term, digest)
            if why is not None:
                rec = committed[(index, term, digest)]
                problems.append({
                    "index": index, "term": term, "digest": digest, "problem": why,
                    "committed_by": _f(rec, "peer"), "committed_at": rec.t,
                    "current_term": _f(rec, "current_term"),
                })
        if problems:
            out.append(_completeness_violation(leader, lterm, lpeer, problems))
    return _cap("leader_completeness", out)


def _completeness_violation(leader: Record, lterm: int, lpeer: str, problems: list[dict]) -> Violation:
    """One violation per leader, listing every committed entry it lacks."""
    first = problems[0]
    msg = (
        f"leader {lpeer} of term {lterm} (elected t={leader.t:g}) lacks "
        f"{len(problems)} committed entr{'y' if len(problems) == 1 else 'ies'}; first: "
        f"index {first['index']} {_entry(first['term'], first['digest'])} committed by "
        f"{first['committed_by']} at t={first['committed_at']:g} in its term "
        f"{first['current_term']} -- {first['problem']}"
    )
    return Violation("leader_completeness", msg, {
        "leader": lpeer, "term": lterm, "elected_at": leader.t, "problems": problems,
    })


# -------------------------------------------------------- state machine safety
def _apply_conflicts(applied: dict[int, dict[tuple, list]], snaps: list[Record]) -> list[Violation]:
    """Cross-peer agreement on what is applied at each index."""
    out = []
    for index in sorted(applied):
        variants = applied[index]
        if len(variants) > 1:
            desc = "; ".join(
                f"{_entry(*td)} by {', '.join(f'{p}@t={t:g}' for p, t in who)}"
                for td, who in variants.items()
            )
            out.append(Violation(
                "state_machine_safety",
                f"index {index} applied with {len(variants)} different entries: {desc}",
                {"index": index, "variants": {td: list(who) for td, who in variants.items()}},
            ))
    for rec in snaps:
        index, term = _f(rec, "index"), _f(rec, "term")
        terms = {td[0] for td in applied.get(index, {})}
        if terms and term not in terms:
            out.append(Violation(
                "state_machine_safety",
                f"peer {_f(rec, 'peer')} installed a snapshot at t={rec.t:g} ending at index "
                f"{index} term {term}, but index {index} was applied with term(s) {sorted(terms)}",
                {"peer": _f(rec, "peer"), "t": rec.t, "index": index, "term": term,
                 "applied_terms": sorted(terms)},
            ))
    return out


def _apply_order(rec: Record, last: int) -> Violation | None:
    """Per-peer ordering of one apply / snapshot install, given the last index."""
    peer, index = _f(rec, "peer"), _f(rec, "index")
    if rec.kind == SNAPSHOT_INSTALL:
        if index < last:
            return Violation(
                "state_machine_safety",
                f"peer {peer} installed a snapshot ending at index {index} at t={rec.t:g} after "
                f"already applying up to index {last} (state machine moved backwards)",
                {"peer": peer, "t": rec.t, "index": index, "last_applied": last},
            )
        return None
    if index == last + 1:
        return None
    what = "gap" if index > last + 1 else "out-of-order/repeated apply"
    return Violation(
        "state_machine_safety",
        f"peer {peer} applied index {index} at t={rec.t:g} right after index {last} ({what}"
        + (f", indices {last + 1}..{index - 1} skipped)" if index > last + 1 else ")"),
        {"peer": peer, "t": rec.t, "index": index, "last_applied": last},
    )


def state_machine_safety(records: Iterable[Record]) -> list[Violation]:
    """Peers apply identical entries at each index, in order, without gaps
    (except across a snapshot install; a ``raft.boot`` resets a peer to the
    index of the snapshot it booted from)."""
    events = _of_kind(records, APPLY, SNAPSHOT_INSTALL, BOOT)
    applied: dict[int, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    last: dict[str, int] = defaultdict(int)
    out = []
    for rec in events:
        peer = _f(rec, "peer")
        if rec.kind == BOOT:
            last[peer] = _f(rec, "snapshot_index")
            continue
        v = _apply_order(rec, last[peer])
        if v is not None:
            out.append(v)
        index = _f(rec, "index")
        if rec.kind == APPLY:
            applied[index][(_f(rec, "term"), _f(rec, "digest"))].append((peer, rec.t))
        last[peer] = max(last[peer], index)
    snaps = [r for r in events if r.kind == SNAPSHOT_INSTALL]
    return _cap("state_machine_safety", _apply_conflicts(applied, snaps) + out)


# ------------------------------------------------------ committed never change
def committed_never_change(records: Iterable[Record]) -> list[Violation]:
    """Once index i is recorded committed with (term, digest), it never is with
    anything else (by any peer)."""
    first: dict[int, Record] = {}
    reported: set[tuple[int, Any, Any]] = set()
    out = []
    for rec in _of_kind(records, COMMIT):
        index, td = _f(rec, "index"), (_f(rec, "term"), _f(rec, "digest"))
        orig = first.setdefault(index, rec)
        otd = (_f(orig, "term"), _f(orig, "digest"))
        if td == otd or (index, *td) in reported:
            continue
        reported.add((index, *td))
        out.append(Violation(
            "committed_never_change",
            f"index {index} was committed as {_entry(*otd)} by {_f(orig, 'peer')} at "
            f"t={orig.t:g}, but {_f(rec, 'peer')} recorded it committed as {_entry(*td)} "
            f"at t={rec.t:g}",
            {"index": index, "first": {"peer": _f(orig, "peer"), "t": orig.t, "entry": otd},
             "later": {"peer": _f(rec, "peer"), "t": rec.t, "entry": td}},
        ))
    return _cap("committed_never_change", out)


# ------------------------------------------------------------------- run_all
#: Checker name -> function over records (log_matching takes final logs instead).
CHECKERS = {
    "election_safety": election_safety,
    "log_matching": log_matching,
    "leader_completeness": leader_completeness,
    "state_machine_safety": state_machine_safety,
    "committed_never_change": committed_never_change,
}


def run_all(
    records: Iterable[Record],
    final_logs: Mapping[str, FinalLog],
    ops: list[Op] | None = None,
) -> dict[str, list[Violation]]:
    """Run every checker; ``{checker name: violations}`` (all empty = pass).

    ``"linearizability"`` is included only when ``ops`` is given (a budget
    exhaustion is reported as a violation there, never as a pass).
    """
    records = list(records)
    result: dict[str, list[Violation]] = {}
    for name, fn in CHECKERS.items():
        result[name] = fn(final_logs) if name == "log_matching" else fn(records)
    if ops is not None:
        result["linearizability"] = check_many(ops)
    return result
