"""Data types shared by the simulator (which produces them) and the checkers
(which judge them).

* :class:`Record` -- one observation emitted by an actor through
  ``host.record(kind, **fields)``, stamped by the simulator with the virtual
  time and the node / actor that emitted it.
* :class:`Op` -- one client operation on the agency key-value store, as seen
  from the client: when it was invoked, when (and whether) it returned, and
  what it returned.  The linearizability checker consumes a list of these.
* :class:`FinalLog` -- a Raft peer's log at the end of a run.
* :class:`Violation` -- one broken property, reported by a checker.

This module has no dependencies beyond the standard library and must stay
that way: the simulator imports it, and so do the checkers.
"""
from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

__all__ = [
    "Record",
    "Op",
    "OP_KINDS",
    "OP_STATUSES",
    "FinalLog",
    "Violation",
    "short_repr",
]

#: Valid values of :attr:`Op.kind`.
OP_KINDS = frozenset({"read", "write", "cas"})
#: Valid values of :attr:`Op.status`.
OP_STATUSES = frozenset({"ok", "fail", "unknown"})


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (for messages)."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


# --------------------------------------------------------------------- Record
@dataclass(frozen=True)
class Record:
    """One observation recorded during a simulated run.

    ``t`` is the simulator's (global, virtual) time, ``node`` the node the
    emitting actor lives on, ``actor`` the actor's name/address, ``kind`` a
    dotted event name such as ``"raft.commit"`` and ``fields`` the keyword
    arguments given to ``host.record``.  ``fields`` does not take part in
    hashing (dicts are unhashable) but does in equality.
    """

    t: float
    node: str
    actor: str
    kind: str
    fields: dict = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        body = ", ".join(f"{k}={short_repr(v)}" for k, v in self.fields.items())
        return f"t={self.t:g} {self.node}/{self.actor} {self.kind}({body})"


# ------------------------------------------------------------------------- Op
@dataclass
class Op:
    """One client operation on the agency KV store.

    Identity and request: ``client``, ``op_id`` (unique per client), ``kind``
    (``"read"`` | ``"write"`` | ``"cas"``), ``key``, ``value`` (write / cas:
    the new value) and ``expected`` (cas: the value that must currently be
    there; ``None`` means "key absent").

    Outcome: ``invoke_t``; ``return_t`` (``None`` when the outcome is
    unknown); ``status``:

    * ``"ok"`` -- completed with a definite ``result``;
    * ``"fail"`` -- definitely did *not* take effect (the checker drops it);
    * ``"unknown"`` -- may or may not have taken effect, at any time after
      ``invoke_t``; the checker treats ``return_t`` as +infinity and accepts
      any ``result``.

    ``result``: read -- the value read (``None`` if absent); cas -- ``True``
    if it swapped, ``False`` if the precondition failed; write -- ``None``.

    Every field after ``key`` is keyword-only, so call sites stay readable::

        Op("c1", 7, "cas", "k", value=2, expected=1,
           invoke_t=1.0, return_t=1.5, status="ok", result=True)

    Ops are mutable (the simulator may fill in the outcome late); call
    :meth:`validate` -- the checkers do -- once the outcome is final.
    """

    client: str
    op_id: int
    kind: str
    key: str
    _: KW_ONLY
    value: object = None
    expected: object = None
    invoke_t: float
    return_t: float | None
    status: str
    result: object = None

    @property
    def effective_return_t(self) -> float:
        """The return time the checker uses: +inf unless the op is ``ok``/``fail``."""
        if self.status == "unknown" or self.return_t is None:
            return math.inf
        return self.return_t

    def validate(self) -> None:
        """Raise ``ValueError`` if the op is not a well-formed, final outcome."""
        if self.kind not in OP_KINDS:
            raise ValueError(f"{self}: kind must be one of {sorted(OP_KINDS)}")
        if self.status not in OP_STATUSES:
            raise ValueError(f"{self}: status must be one of {sorted(OP_STATUSES)}")
        if not isinstance(self.invoke_t, (int, float)) or math.isnan(self.invoke_t):
            raise ValueError(f"{self}: invoke_t must be a number")
        if self.status == "ok":
            if self.return_t is None:
                raise ValueError(f"{self}: an 'ok' op needs a return_t")
            if self.kind == "cas" and not isinstance(self.result, bool):
                raise ValueError(f"{self}: an 'ok' cas needs result True or False")
        if self.return_t is not None and self.status != "unknown":
            if math.isnan(self.return_t) or self.return_t < self.invoke_t:
                raise ValueError(f"{self}: return_t precedes invoke_t")

    def describe(self) -> str:
        """Compact one-line rendering, e.g. ``c1#3 cas(k, 1->2)=True [1, 1.5] ok``."""
        if self.kind == "read":
            call = f"read({self.key})"
        elif self.kind == "write":
            call = f"write({self.key}, {short_repr(self.value, 30)})"
        else:
            call = (
                f"cas({self.key}, {short_repr(self.expected, 30)}"
                f"->{short_repr(self.value, 30)})"
            )
        if self.status == "ok" and self.kind != "write":
            call += f"={short_repr(self.result, 30)}"
        ret = "?" if self.status == "unknown" or self.return_t is None else f"{self.return_t:g}"
        return f"{self.client}#{self.op_id} {call} [{self.invoke_t:g}, {ret}] {self.status}"

    def __str__(self) -> str:
        return self.describe()


# ------------------------------------------------------------------- FinalLog
@dataclass(frozen=True)
class FinalLog:
    """A Raft peer's log at the end of a run.

    ``snapshot_index`` / ``snapshot_term`` describe the last entry covered by
    the peer's snapshot (0 / 0 when it has none); ``entries`` holds
    ``(index, term, digest)`` for every entry after the snapshot, in index
    order.
    """

    snapshot_index: int
    snapshot_term: int
    entries: list[tuple[int, int, int]] = field(default_factory=list, hash=False)


# ------------------------------------------------------------------ Violation
@dataclass(frozen=True)
class Violation:
    """A property a checker found broken.

    ``checker`` names the checker (e.g. ``"election_safety"``), ``message``
    is a self-contained human-readable explanation (peers, terms, indices,
    times) and ``details`` holds the same facts in machine-readable form.
    """

    checker: str
    message: str
    details: dict = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        text = f"[{self.checker}] {self.message}"
        if self.details:
            lines = [f"    {k}: {short_repr(v, 200)}" for k, v in self.details.items()]
            text += "\n" + "\n".join(lines)
        return text
