"""Checkers' observations from real node processes, one file per process.

In the simulator every ``host.record(kind, **fields)`` lands in the run's
history.  A scenario run on real processes (``runtime/realsim.py``) needs
the same observations from the Raft peers of real nodes: it starts each
node with ``CHORUS_RECORD_DIR`` set, and the production host of every
actor process then appends each record as one JSON line to
``<dir>/<node>-<pid>.jsonl``::

    {"t": 1234.5678, "node": "n1", "actor": "RaftPeer", "kind": "raft.commit", "fields": {...}}

``t`` is ``time.monotonic()``: one clock for every process on the machine
(network namespaces share it), so the harness merges the files with its own
client-side history on one time line.  ``CHORUS_RECORD_KINDS`` (comma
separated prefixes, e.g. ``raft.``) keeps only the kinds wanted.

Each line is written with one ``os.write`` on an ``O_APPEND`` descriptor,
not buffered: a process killed with SIGKILL loses nothing it recorded (the
page cache survives the process).  Lines are bounded (``LINE_BYTES_MAX``;
longer ones are cut to a marker record) and so is each file
(``FILE_BYTES_MAX``: records beyond are dropped and counted in
``RecordFile.dropped``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

ENV_DIR = "CHORUS_RECORD_DIR"
ENV_KINDS = "CHORUS_RECORD_KINDS"
LINE_BYTES_MAX = 4 << 20
FILE_BYTES_MAX = 512 << 20


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, bytes):
        return {"$b": v.hex()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return [_plain(x) for x in sorted(v, key=repr)]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return repr(v)


def _back(v: Any) -> Any:
    """JSON back to the shapes the checkers expect: lists as tuples, bytes."""
    if isinstance(v, list):
        return tuple(_back(x) for x in v)
    if isinstance(v, dict):
        if len(v) == 1 and "$b" in v:
            return bytes.fromhex(v["$b"])
        return {k: _back(x) for k, x in v.items()}
    return v


class RecordFile:
    def __init__(self, directory: str, node_id: str, kinds: tuple[str, ...] = ()) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"{node_id}-{os.getpid()}.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.kinds = kinds
        self.actor = ""
        self.written = 0
        self.dropped = 0

    @classmethod
    def from_env(cls, node_id: str) -> "RecordFile | None":
        directory = os.environ.get(ENV_DIR, "")
        if not directory:
            return None
        kinds = tuple(k for k in os.environ.get(ENV_KINDS, "").split(",") if k)
        return cls(directory, node_id, kinds)

    def write(self, node_id: str, kind: str, fields: dict) -> None:
        if self.kinds and not kind.startswith(self.kinds):
            return
        line = json.dumps({"t": time.monotonic(), "node": node_id, "actor": self.actor, "kind": kind,
                           "fields": _plain(fields)}, separators=(",", ":")).encode() + b"\n"
        if len(line) > LINE_BYTES_MAX:
            line = json.dumps({"t": time.monotonic(), "node": node_id, "actor": self.actor, "kind": "record.too_big",
                               "fields": {"kind": kind, "bytes": len(line)}}).encode() + b"\n"
        if self.written + len(line) > FILE_BYTES_MAX:
            self.dropped += 1
            return
        os.write(self.fd, line)
        self.written += len(line)


def read_records(directory: str | Path, t0: float = 0.0, scale: float = 1.0) -> Iterator[Any]:
    """Every record of every file in ``directory`` as a
    :class:`sim.history.Record`, in time order; ``t`` becomes
    ``(t - t0) / scale`` (the harness's time line).  A line cut short by a
    kill (the last one of a file) is skipped."""
    from sim.history import Record

    out = []
    for p in sorted(Path(directory).glob("*.jsonl")):
        for raw in p.read_bytes().splitlines():
            try:
                d = json.loads(raw)
            except ValueError:
                continue
            out.append(Record((d["t"] - t0) / scale, d["node"], d.get("actor", ""), d["kind"],
                              _back(d.get("fields", {}))))
    out.sort(key=lambda r: r.t)
    return iter(out)
