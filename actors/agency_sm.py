"""The agency's replicated state machine: a hierarchical key-value tree.

Paths are normalized to ``/a/b/c``.  The tree is kept flat: a sorted map
from leaf path to ``(value, version)`` where ``version`` is the revision of
the last change.  A path is either a leaf or an interior node: setting
``/a`` removes everything under ``/a/``; setting ``/a/b`` removes a leaf at
``/a``.  Reading an interior path returns the subtree as nested dicts.

Every successful transaction increments the global ``revision``; each leaf
it changes produces a change event ``(revision, path, value-or-None)``.
The last ``history_max`` events are retained so that watchers can resume
from a revision; older resumptions are answered with ``compacted``.

Client sessions (Raft dissertation, section 6.3) make every request apply
exactly once: the state machine remembers, per client, the id of the last
request it applied and that request's result.  A client numbers its
requests in increasing order and, when an answer is lost, retries the same
id: a request equal to the last one gets the saved result without being
applied again; an older one is refused as stale.  The table holds at most
``sessions_max`` clients; the least recently active is forgotten first (a
client silent for that long must not retry an old request).

Deterministic: no clocks, no randomness, JSON-only values; the snapshot is
a canonical JSON document, so every peer produces identical bytes.
"""
from __future__ import annotations

import json
from collections import deque
from typing import Any, Iterable

from sortedcontainers import SortedDict

from protocol.agency import Mutation, Precondition, Read, Txn

MISSING = object()


def normalize(path: str) -> str:
    if not isinstance(path, str):
        raise ValueError(f"path must be a string, not {type(path).__name__}")
    parts = [p for p in path.split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise ValueError(f"path {path!r} may not contain '.' or '..'")
    return "/" + "/".join(parts)


class AgencyState:
    def __init__(self, history_max: int = 10_000) -> None:
        self.leaves: SortedDict = SortedDict()  # path -> (value, version)
        self.revision = 0
        self.history: deque[tuple[int, str, Any]] = deque()
        self.history_max = history_max
        self.history_floor = 0  # every change with a revision above this is retained
        self.applied_index = 0
        self.sessions: dict[str, tuple[int, int, dict]] = {}  # client -> (last req id, revision, result)
        self.sessions_max = 10_000

    # ------------------------------------------------------------- reading
    def _under(self, path: str) -> Iterable[str]:
        if path == "/":
            return list(self.leaves.keys())
        lo = path + "/"
        hi = path + "0"  # '0' is the character after '/'
        return list(self.leaves.irange(lo, hi, inclusive=(True, False)))

    def get(self, path: str) -> Any:
        """Value of a leaf, the subtree of an interior node, or None."""
        path = normalize(path)
        leaf = self.leaves.get(path, MISSING)
        if leaf is not MISSING:
            return leaf[0]
        keys = self._under(path)
        if not keys:
            return None
        tree: dict[str, Any] = {}
        strip = 0 if path == "/" else len(path)
        for k in keys:
            node = tree
            parts = k[strip:].strip("/").split("/")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = self.leaves[k][0]
        return tree

    def version(self, path: str) -> int:
        """Revision of the last change to a leaf; for an interior node the
        highest version below it; 0 if absent."""
        path = normalize(path)
        leaf = self.leaves.get(path)
        if leaf is not None:
            return leaf[1]
        return max((self.leaves[k][1] for k in self._under(path)), default=0)

    def read(self, op: Read) -> dict:
        return {"revision": self.revision, "values": [self.get(p) for p in op.paths]}

    # ------------------------------------------------------------- writing
    def check(self, pre: Precondition) -> bool:
        if pre.kind == "equals":
            return self.get(pre.path) == pre.value
        if pre.kind == "absent":
            return self.get(pre.path) is None
        if pre.kind == "present":
            return self.get(pre.path) is not None
        if pre.kind == "version":
            return self.version(pre.path) == pre.value
        raise ValueError(pre.kind)

    def apply_txn(
        self, txn: Txn, client: str | None = None, req_id: int | None = None
    ) -> tuple[dict, list[tuple[int, str, Any]]]:
        """Apply atomically; returns (result, change events).  With a client
        and request id, a request at or below the client's last applied id
        is not applied again: the last one gets its saved result (with
        ``"retry": True``), older ones are refused as stale."""
        if client is None or req_id is None:
            return self._apply_txn(txn)
        last = self.sessions.get(client)
        if last is not None:
            if req_id == last[0]:
                return dict(last[2], retry=True), []
            if req_id < last[0]:
                return {"ok": False, "stale": True, "revision": self.revision}, []
        result, events = self._apply_txn(txn)
        self.sessions[client] = (req_id, self.revision, result)
        if len(self.sessions) > self.sessions_max:
            # Never the client just served: after a failed precondition its
            # revision ties with older sessions and the name could lose.
            others = [c for c in self.sessions if c != client]
            oldest = min(others, key=lambda c: (self.sessions[c][1], c))
            del self.sessions[oldest]
        return result, events

    def _apply_txn(self, txn: Txn) -> tuple[dict, list[tuple[int, str, Any]]]:
        failed = [i for i, p in enumerate(txn.preconditions) if not self.check(p)]
        if failed:
            return {"ok": False, "failed": failed, "revision": self.revision}, []
        try:
            planned = self._plan(txn.mutations)
        except ValueError as exc:
            return {"ok": False, "error": str(exc), "revision": self.revision}, []
        self.revision += 1
        rev = self.revision
        events = []
        for path, value in planned:
            if value is MISSING:
                if path in self.leaves:
                    del self.leaves[path]
                    events.append((rev, path, None))
            else:
                self.leaves[path] = (value, rev)
                events.append((rev, path, value))
        for ev in events:
            self.history.append(ev)
        while len(self.history) > self.history_max:
            # Drop whole revisions: a partly retained revision would make
            # changes_since() miss events without reporting compacted.
            dropped = self.history.popleft()[0]
            while self.history and self.history[0][0] == dropped:
                self.history.popleft()
            self.history_floor = dropped
        return {"ok": True, "revision": rev}, events

    def _plan(self, mutations: tuple[Mutation, ...]) -> list[tuple[str, Any]]:
        """Turn mutations into leaf writes/deletes against a scratch view."""
        view: dict[str, Any] = {}  # path -> value or MISSING (overrides)

        def current(path: str) -> Any:
            if path in view:
                return view[path]
            leaf = self.leaves.get(path)
            return MISSING if leaf is None else leaf[0]

        def remove_subtree(path: str) -> None:
            below = "/" if path == "/" else path + "/"
            for k in self._under(path):
                view[k] = MISSING
            for k in list(view):
                if k.startswith(below):
                    view[k] = MISSING
            if current(path) is not MISSING:
                view[path] = MISSING

        def has_children(path: str) -> bool:
            below = path + "/"
            return any(current(k) is not MISSING for k in self._under(path)) or any(
                k.startswith(below) and v is not MISSING for k, v in view.items()
            )

        def remove_leaf_ancestors(path: str) -> None:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                anc = "/" + "/".join(parts[:i])
                if current(anc) is not MISSING:
                    view[anc] = MISSING

        for m in mutations:
            path = normalize(m.path)
            if path == "/" and m.kind != "delete":
                raise ValueError("cannot set the root; set a path below it")
            if m.kind == "delete":
                remove_subtree(path)
            elif m.kind == "set":
                _check_json(m.value)
                remove_subtree(path)
                remove_leaf_ancestors(path)
                if isinstance(m.value, dict) and m.value:
                    for sub, v in _flatten(path, m.value):
                        view[sub] = v
                elif m.value is None:
                    view[path] = MISSING
                else:
                    view[path] = m.value
            elif m.kind == "incr":
                cur = current(path)
                if cur is MISSING and has_children(path):
                    raise ValueError(f"cannot increment interior node {path}")
                base = 0 if cur is MISSING else cur
                if not isinstance(base, int) or isinstance(base, bool):
                    raise ValueError(f"cannot increment non-integer at {path}")
                delta = 1 if m.value is None else m.value
                if not isinstance(delta, int) or isinstance(delta, bool):
                    raise ValueError(f"increment of {path} by non-integer {delta!r}")
                remove_leaf_ancestors(path)
                view[path] = base + delta
        out = []
        for path in sorted(view):
            value = view[path]
            old = self.leaves.get(path)
            if value is MISSING:
                if old is not None:
                    out.append((path, MISSING))
            else:
                out.append((path, value))  # a set always bumps the version
        return out

    # ------------------------------------------------------------- watches
    def changes_since(self, prefix: str, revision: int) -> tuple[list, bool]:
        """Events under prefix with revision > ``revision``; the flag is True
        when the history no longer reaches back that far."""
        prefix = normalize(prefix)
        compacted = revision < self.history_floor
        out = [ev for ev in self.history if ev[0] > revision and matches(prefix, ev[1])]
        return out, compacted

    # ------------------------------------------------------------ snapshots
    def snapshot(self) -> bytes:
        doc = {
            "revision": self.revision,
            "applied_index": self.applied_index,
            "leaves": [[k, v[0], v[1]] for k, v in self.leaves.items()],
            "history": [list(ev) for ev in self.history],
            "history_max": self.history_max,
            "history_floor": self.history_floor,
            "sessions": [[c, r, v, res] for c, (r, v, res) in sorted(self.sessions.items())],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def restore(cls, data: bytes) -> "AgencyState":
        st = cls()
        if not data:
            return st
        doc = json.loads(data)
        st.revision = doc["revision"]
        st.applied_index = doc["applied_index"]
        st.history_max = doc["history_max"]
        st.history_floor = doc.get("history_floor", 0)
        st.leaves = SortedDict({k: (v, ver) for k, v, ver in doc["leaves"]})
        st.history = deque(tuple(ev) for ev in doc["history"])
        st.sessions = {c: (r, v, res) for c, r, v, res in doc.get("sessions", [])}
        return st


def matches(prefix: str, path: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _flatten(base: str, tree: dict) -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        if not isinstance(k, str) or not k or "/" in k or k in (".", ".."):
            raise ValueError(f"invalid key {k!r} in value for {base}")
        p = base.rstrip("/") + "/" + k
        if isinstance(v, dict) and v:
            out.extend(_flatten(p, v))
        elif v is not None:
            out.append((p, v))
    return out


def _check_json(value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value is not JSON: {exc}") from None
