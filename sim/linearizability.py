"""Linearizability checker for the agency key-value store.

Model
=====
Every key is an independent register that starts *absent* (``None``):

* ``write(k, v)`` sets the register to ``v``;
* ``read(k)`` must return the current value (``None`` if absent);
* ``cas(k, expected, new)`` with result ``True`` requires current ==
  ``expected`` and then sets ``new``; with result ``False`` it requires
  current != ``expected`` and changes nothing.

Outcomes (see :class:`sim.history.Op`): ``fail`` ops definitely did not take
effect and are dropped.  ``unknown`` ops may have taken effect at any point
after their invocation, or not at all; they get an infinite return time and
their recorded result is ignored:

* an unknown *read* constrains nothing and is dropped;
* an unknown *write* is an ordinary write with return time +inf --
  "never took effect" is the same as "took effect after everything else",
  which the infinite return time allows;
* an unknown *cas*, wherever it is linearized, swaps iff current ==
  expected and otherwise does nothing (so its outcome is unconstrained: it
  may have succeeded or failed).  "Never took effect" is again covered by
  linearizing it at the very end, where whatever it does is unobservable,
  and a do-nothing placement anywhere else is equivalent to that.  So the
  model stays deterministic.

The model state is the register's current value, interned per key as a
small int (by ``==``, so unhashable values such as dicts work; ``None`` is
0).

Algorithm
=========
1. **P-compositionality.**  Linearizability is local (Herlihy & Wing): a
   history is linearizable iff every per-key sub-history is.  Ops are
   partitioned by key and each key is searched separately; a failure names
   the offending key.

2. **Cheap pre-check.**  An ok read of ``v`` (or a successful cas expecting
   ``v``), ``v`` not ``None``, needs some write/cas storing ``v`` invoked no
   later than the observation returned.  If none exists the key fails at once
   with that op as the explanation (this catches garbage reads in O(n log n)
   however large the history).

3. **Wing & Gong search with Lowe's cache (the Porcupine algorithm).**
   Each op contributes a *call* entry at ``invoke_t`` and a *return* entry at
   its (effective) return time; all entries form a doubly linked list sorted
   by time.  Tie-break at equal times: **calls before returns**, so an op
   returning at exactly the instant another is invoked is treated as
   *concurrent* with it (either order is allowed).  Clocks in the simulator
   are discrete and we must not reject a correct system because two events
   share a timestamp; the price is a slightly weaker check for exactly-equal
   times.  Among calls (or among returns) at the same time the order is the
   input order, which does not affect the verdict.

   A depth-first search walks the list from its head.  At a call entry it
   tries to linearize that op next: if the model accepts it and the pair
   (set of linearized ops as a bitset, model state) has not been seen
   before, the op's call and return entries are *lifted* out of the list
   (dancing links), the pair is cached and the walk restarts from the
   head.  Otherwise the walk moves on to the next entry.  Reaching a return
   entry means the op it belongs to had to be linearized by now but could
   not be: the search backtracks -- pops the last linearized op, *unlifts*
   it and continues just after it.  The history is linearizable iff the list
   empties; it is not iff a return entry is hit with nothing to backtrack.
   The cache is sound because the remaining search only depends on which
   ops are linearized and on the model state (and a node cannot meet itself
   on its own path: the bitset only grows).

4. **Two reductions** that keep the search exact:

   * *Forced ops.*  The *candidates* at a search node are the calls before
     the first remaining return.  If a candidate is a definite read of the
     current value, or a definite failed cas whose expected value is not the
     current value, linearizing it changes nothing.  If the node has any
     completion, it has one that starts with this op: move the op to the
     front -- it is already invoked and everything that must precede it is
     already linearized, so real-time order is kept, and since it never
     changes the register every other op sees the same values as before.
     So such an op is linearized at once and *no alternative is tried at
     that node*: backtracking over it continues backtracking.  This removes
     most of the branching from reads, the bulk of real histories.
   * *Interchangeable unknown ops.*  Two unknown ops with the same kind,
     expected and new value both have an infinite return time, so once both
     are invoked they can be swapped in any linearization.  Hence only the
     earliest-invoked pending op of each such class may be linearized
     (the ones "never linearized" -- i.e. at the end -- are then always the
     latest), which makes equivalent search nodes share one cache key.

5. **Budget.**  Steps (list entries visited) are counted per key; each key
   gets ``budget_steps``.  When a key exhausts it the verdict is ``None``
   ("gave up"), which :func:`check_many` reports as a violation -- a run is
   never silently green because the checker could not finish.  Histories
   with very high per-key concurrency (~20 ops in flight) or many pending
   unknown ops *and* a violation can hit the budget (the problem is
   NP-complete); 2M steps take about one second.

6. **Explanation.**  On failure the result carries the longest linearizable
   prefix found, the register value after it, the ops that
   were candidates there and the op whose return could not be passed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable

from sim.history import Op, Violation, short_repr

__all__ = [
    "LinResult",
    "KeyResult",
    "check_linearizable",
    "check_key",
    "check_many",
    "CHECKER_NAME",
    "DEFAULT_BUDGET_STEPS",
]

CHECKER_NAME = "linearizability"
DEFAULT_BUDGET_STEPS = 2_000_000

# Compiled op codes for the model step.
_WRITE, _READ, _CAS_OK, _CAS_FAIL, _CAS_MAYBE = range(5)


# -------------------------------------------------------------------- results
@dataclass
class KeyResult:
    """Verdict for one key's sub-history.

    ``ok``: ``True`` linearizable, ``False`` not, ``None`` gave up (budget).
    For ``False``/``None``: ``prefix`` is the longest linearizable prefix
    found (ops in linearization order), ``state`` the register value after
    it, ``candidates`` the pending ops that were tried next,
    and ``blocking`` the op whose return was reached without it being
    linearizable (``None`` if the search gave up before any dead end).
    """

    key: Hashable
    ok: bool | None
    message: str
    n_ops: int
    steps: int
    prefix: list[Op] = field(default_factory=list)
    state: Any = None
    candidates: list[Op] = field(default_factory=list)
    blocking: Op | None = None


@dataclass
class LinResult:
    """Verdict for a whole history.

    ``ok`` is ``False`` if any key is not linearizable, else ``None`` if the
    search gave up on any key, else ``True``.  ``key``/``message``/``prefix``
    /``candidates``/``blocking`` describe the first bad key (keys in sorted
    order, failures before give-ups); ``per_key`` holds every key's result.
    """

    ok: bool | None
    message: str
    key: Hashable | None = None
    prefix: list[Op] = field(default_factory=list)
    candidates: list[Op] = field(default_factory=list)
    blocking: Op | None = None
    steps: int = 0
    per_key: dict[Hashable, KeyResult] = field(default_factory=dict)

    @property
    def bad_keys(self) -> list[KeyResult]:
        """Results of all keys that are not (proven) linearizable."""
        return [r for r in self.per_key.values() if r.ok is not True]


# ------------------------------------------------------------ value interning
class _Interner:
    """Maps register values to small ints (0 is ``None``), by ``==``."""

    def __init__(self) -> None:
        self.values: list[Any] = [None]
        self._hashable: dict[Any, int] = {None: 0}
        self._unhashable: list[tuple[Any, int]] = []

    def id(self, value: Any) -> int:
        """The small int standing for ``value``."""
        try:
            idx = self._hashable.get(value)
            if idx is None:
                idx = self._find_unhashable(value)
                if idx is None:
                    idx = self._add(value)
                    self._hashable[value] = idx
        except TypeError:
            idx = self._find_unhashable(value)
            if idx is None:
                idx = self._add(value)
                self._unhashable.append((value, idx))
        return idx

    def _find_unhashable(self, value: Any) -> int | None:
        for other, idx in self._unhashable:
            if other == value:
                return idx
        return None

    def _add(self, value: Any) -> int:
        self.values.append(value)
        return len(self.values) - 1

    def decode(self, state: int) -> Any:
        """The value a state (value id) stands for."""
        return self.values[state]


# ------------------------------------------------------------------ the search
def _compile(op: Op, interner: _Interner) -> tuple[int, int, int]:
    """(code, a, b) for the model step; ``a``/``b`` are value ids: the value
    written / read / expected, and a cas's new value."""
    if op.kind == "write":
        return (_WRITE, interner.id(op.value), 0)
    if op.kind == "read":
        return (_READ, interner.id(op.result), 0)
    exp, new = interner.id(op.expected), interner.id(op.value)
    if op.status == "unknown":
        return (_CAS_MAYBE, exp, new)
    return (_CAS_OK if op.result else _CAS_FAIL, exp, new)


def _step(state: int, code: int, a: int, b: int) -> int:
    """The register value after applying one op to ``state``; -1 if the op's
    outcome is impossible from ``state``."""
    if code == _WRITE:
        return a
    if code == _READ:
        return a if state == a else -1
    if code == _CAS_OK:
        return b if state == a else -1
    if code == _CAS_FAIL:
        return state if state != a else -1
    # _CAS_MAYBE: swaps iff the precondition holds (see the module docstring).
    return b if state == a else state


def _relevant(op: Op) -> bool:
    """Whether an op constrains the history (fail ops / unknown reads don't)."""
    return op.status != "fail" and not (op.status == "unknown" and op.kind == "read")


def _impossible_value(ops: list[Op], compiled: list[tuple[int, int, int]]) -> int | None:
    """Index of an ok read (or successful cas) that observes a value no op
    could have stored by the time it returned, or ``None``.

    A value other than ``None`` can only be current if a write or cas storing
    it was invoked no later than the observation's return.  O(n log n).
    """
    first_store: dict[int, float] = {0: -math.inf}  # None is there from the start
    for op, (code, a, b) in zip(ops, compiled):
        if code in (_WRITE, _CAS_OK, _CAS_MAYBE):
            stored = a if code == _WRITE else b
            first_store[stored] = min(first_store.get(stored, math.inf), op.invoke_t)
    bad = [
        (op.effective_return_t, i)
        for i, (op, (code, a, _)) in enumerate(zip(ops, compiled))
        if code in (_READ, _CAS_OK) and first_store.get(a, math.inf) > op.effective_return_t
    ]
    return min(bad)[1] if bad else None


def _class_predecessors(ops: list[Op], compiled: list[tuple[int, int, int]]) -> list[int]:
    """For each unknown op, the previous-invoked unknown op with the same
    compiled signature (-1 if none, and for definite ops)."""
    prev_same = [-1] * len(ops)
    last_of_class: dict[tuple[int, int, int], int] = {}
    for i in sorted(range(len(ops)), key=lambda i: (ops[i].invoke_t, i)):
        if ops[i].status == "unknown":
            prev_same[i] = last_of_class.get(compiled[i], -1)
            last_of_class[compiled[i]] = i
    return prev_same


def check_key(key: Hashable, ops: list[Op], *, budget_steps: int = DEFAULT_BUDGET_STEPS) -> KeyResult:
    """Decide whether one key's sub-history is linearizable.

    ``ops`` must all be on ``key``; ``fail`` ops and unknown reads are
    ignored.  See the module docstring for the algorithm.
    """
    ops = [op for op in ops if _relevant(op)]
    n = len(ops)
    if n == 0:
        return KeyResult(key, True, f"key {key!r}: no ops to check", 0, 0)
    interner = _Interner()
    compiled = [_compile(op, interner) for op in ops]

    bad = _impossible_value(ops, compiled)
    if bad is not None:
        op = ops[bad]
        seen = op.result if op.kind == "read" else op.expected
        reason = (
            f"key {key!r}: NOT linearizable ({n} ops). {op.describe()} observes "
            f"{short_repr(seen, 30)}, but no write or cas storing that value was invoked "
            f"before it returned"
        )
        return _result(key, False, ops, interner, 0, ([], 0, [bad], bad), budget_steps, reason)

    prev_same = _class_predecessors(ops, compiled)

    # Entries: 0 = head, 1..2n = calls/returns, 2n+1 = tail, in flat lists
    # for speed, linked in (time, call-before-return, input order) order.
    order = sorted(
        [(op.invoke_t, 0, i) for i, op in enumerate(ops)]
        + [(op.effective_return_t, 1, i) for i, op in enumerate(ops)]
    )
    head, tail = 0, 2 * n + 1
    nxt = [min(e + 1, tail) for e in range(2 * n + 2)]
    prv = [max(e - 1, head) for e in range(2 * n + 2)]
    op_of = [-1] * (2 * n + 2)
    is_call = [False] * (2 * n + 2)
    match = [0] * (2 * n + 2)  # call entry -> its return entry
    call_entry = [0] * n
    for pos, (_, is_ret, i) in enumerate(order, start=1):
        op_of[pos] = i
        if is_ret:
            match[call_entry[i]] = pos
        else:
            is_call[pos] = True
            call_entry[i] = pos

    def lift(e: int) -> None:
        """Unlink call entry ``e`` and its return entry."""
        r = match[e]
        nxt[prv[e]] = nxt[e]
        prv[nxt[e]] = prv[e]
        nxt[prv[r]] = nxt[r]
        prv[nxt[r]] = prv[r]

    def unlift(e: int) -> None:
        """Relink call entry ``e`` and its return entry (reverse of lift)."""
        r = match[e]
        nxt[prv[r]] = r
        prv[nxt[r]] = r
        nxt[prv[e]] = e
        prv[nxt[e]] = e

    state = 0  # the register starts absent (None)
    linearized = 0  # bitset over op indices
    stack: list[tuple[int, int, bool]] = []  # (call entry, state before, forced?)
    cache: set[tuple[int, int]] = set()  # (linearized, state) nodes entered
    steps = 0
    # Deepest dead end: (prefix op indices, state, candidate op indices, blocking op).
    best: tuple[list[int], int, list[int], int | None] | None = None

    def dead_end(ret_entry: int) -> None:
        """Remember the deepest point where the search got stuck."""
        nonlocal best
        if best is not None and len(best[0]) >= len(stack) and best[3] is not None:
            return
        cands = []
        e = nxt[head]
        while e != ret_entry:
            if is_call[e]:
                cands.append(op_of[e])
            e = nxt[e]
        best = ([op_of[c] for c, _, _ in stack], state, cands, op_of[ret_entry])

    def find_forced() -> int:
        """A pending definite op that leaves the state unchanged, or 0."""
        nonlocal steps
        e = nxt[head]
        while is_call[e]:
            steps += 1
            code, a, _b = compiled[op_of[e]]
            if (code == _READ and state == a) or (code == _CAS_FAIL and state != a):
                return e
            e = nxt[e]
        return 0

    entry = head
    fresh = True  # at a new search level: look for a forced op first
    while nxt[head] != tail:
        if steps > budget_steps:
            if best is None or len(best[0]) < len(stack):
                best = ([op_of[c] for c, _, _ in stack], state, [], None)
            return _result(key, None, ops, interner, steps, best, budget_steps)
        stuck = False
        if fresh:
            fresh = False
            forced = find_forced()
            if forced:
                new_lin = linearized | (1 << op_of[forced])
                if (new_lin, state) not in cache:
                    cache.add((new_lin, state))
                    stack.append((forced, state, True))
                    linearized = new_lin
                    lift(forced)
                    fresh = True
                    continue
                stuck = True  # explored (and failed) before: so does this level
            entry = nxt[head]
        if not stuck:
            steps += 1
            if is_call[entry]:
                i = op_of[entry]
                p = prev_same[i]
                if p < 0 or linearized >> p & 1:
                    code, a, b = compiled[i]
                    new_state = _step(state, code, a, b)
                    if new_state >= 0:
                        new_lin = linearized | (1 << i)
                        if (new_lin, new_state) not in cache:
                            cache.add((new_lin, new_state))
                            stack.append((entry, state, False))
                            state, linearized = new_state, new_lin
                            lift(entry)
                            fresh = True
                            continue
                entry = nxt[entry]
                continue
            dead_end(entry)
        # Backtrack: undo linearized ops up to and including the last free choice.
        while True:
            if not stack:
                return _result(key, False, ops, interner, steps, best, budget_steps)
            entry, state, was_forced = stack.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            if not was_forced:
                entry = nxt[entry]
                break
    return KeyResult(key, True, f"key {key!r}: linearizable ({n} ops, {steps} steps)", n, steps)


def _result(
    key: Hashable,
    ok: bool | None,
    ops: list[Op],
    interner: _Interner,
    steps: int,
    best: tuple[list[int], int, list[int], int | None] | None,
    budget_steps: int,
    reason: str | None = None,
) -> KeyResult:
    """Build a failure / give-up :class:`KeyResult` from the deepest dead end
    (``reason`` overrides the generated message)."""
    prefix_idx, state, cand_idx, block_idx = best if best is not None else ([], 0, [], None)
    prefix = [ops[i] for i in prefix_idx]
    value = interner.decode(state)
    candidates = [ops[i] for i in cand_idx]
    blocking = ops[block_idx] if block_idx is not None else None
    shown = ", ".join(o.describe() for o in prefix[-5:])
    more = f"... ({len(prefix) - 5} earlier), " if len(prefix) > 5 else ""
    if ok is None:
        msg = (
            f"key {key!r}: search GAVE UP after {steps} steps (budget_steps={budget_steps}) "
            f"on {len(ops)} ops; linearizability NOT established. Deepest prefix: "
            f"{len(prefix)} ops [{more}{shown}]"
        )
    else:
        msg = (
            f"key {key!r}: NOT linearizable ({len(ops)} ops). Longest linearizable prefix "
            f"has {len(prefix)} ops [{more}{shown}], leaving the register at {short_repr(value, 30)}; "
            f"then no pending op can be linearized next (tried: "
            f"[{', '.join(o.describe() for o in candidates)}]), yet "
            f"{blocking.describe() if blocking else '?'} must take effect before it returns"
        )
    msg = reason or msg
    return KeyResult(key, ok, msg, len(ops), steps, prefix, value, candidates, blocking)


# ------------------------------------------------------------------ public API
def _partition(ops: Iterable[Op]) -> dict[Hashable, list[Op]]:
    by_key: dict[Hashable, list[Op]] = {}
    for op in ops:
        op.validate()
        by_key.setdefault(op.key, []).append(op)
    return by_key


def check_linearizable(ops: list[Op], *, budget_steps: int = DEFAULT_BUDGET_STEPS) -> LinResult:
    """Check a history of agency KV ops for linearizability.

    Each key is checked independently with its own budget of
    ``budget_steps`` search steps.  Returns a :class:`LinResult` whose
    ``ok`` is ``True`` (linearizable), ``False`` (some key is not; ``key``
    names the first such key in sorted order) or ``None`` (the search gave up
    on some key and no key failed).  Raises ``ValueError`` on malformed ops
    (see :meth:`sim.history.Op.validate`).
    """
    by_key = _partition(ops)
    per_key: dict[Hashable, KeyResult] = {}
    for key in sorted(by_key, key=lambda k: (type(k).__name__, str(k))):
        per_key[key] = check_key(key, by_key[key], budget_steps=budget_steps)
    steps = sum(r.steps for r in per_key.values())
    failed = [r for r in per_key.values() if r.ok is False]
    gave_up = [r for r in per_key.values() if r.ok is None]
    worst = failed[0] if failed else gave_up[0] if gave_up else None
    if worst is None:
        n = sum(r.n_ops for r in per_key.values())
        return LinResult(
            True, f"linearizable: {n} ops over {len(per_key)} keys, {steps} steps",
            steps=steps, per_key=per_key,
        )
    extra = len(failed) + len(gave_up) - 1
    msg = worst.message + (f" (and {extra} more bad keys)" if extra else "")
    return LinResult(
        False if failed else None, msg, worst.key, worst.prefix, worst.candidates,
        worst.blocking, steps, per_key,
    )


def check_many(ops: list[Op], *, budget_steps: int = DEFAULT_BUDGET_STEPS) -> list[Violation]:
    """Scenario-runner wrapper: one :class:`Violation` per key that is not
    proven linearizable (including keys where the search gave up), and one
    for a malformed history.  Empty list = linearizable."""
    try:
        result = check_linearizable(ops, budget_steps=budget_steps)
    except ValueError as exc:
        return [Violation(CHECKER_NAME, f"malformed history: {exc}", {})]
    out = []
    for r in result.bad_keys:
        details = {
            "key": r.key,
            "verdict": "not linearizable" if r.ok is False else "gave up",
            "n_ops": r.n_ops,
            "steps": r.steps,
            "prefix_len": len(r.prefix),
            "prefix_tail": [o.describe() for o in r.prefix[-10:]],
            "state_after_prefix": r.state,
            "candidates": [o.describe() for o in r.candidates],
            "blocking": r.blocking.describe() if r.blocking else None,
        }
        out.append(Violation(CHECKER_NAME, r.message, details))
    return out
