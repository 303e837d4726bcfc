"""Structured log lines: one line per event, ``key=value`` pairs (logfmt).

Every line a node writes (``logs/actors.log`` for its actor processes,
``node.out`` for the launcher) looks like::

    ts=2026-12-03T12:30:11.123Z level=info node=n1 actor=Supervisor pid=4242 logger=chorus.actor \
msg="failover done" shard=acme/shop/web/orders#0 epoch=3 old_leader=n2 new_leader=n3 took_ms=1712 ...

``ts``, ``level``, ``node``, ``pid``, ``logger`` and ``msg`` are always
there; ``actor`` names the actor whose process wrote the line (its I/O
threads included), and actors add their own fields (``shard=`` where there
is one).  Values with spaces, quotes, ``=`` or non-printable characters are
double-quoted with backslash escapes, so a line always splits back into the
same pairs (:func:`parse`).

Actor processes are forked by Thespian, which replaces the logging root in
each of them with a forwarder to its logger process; :func:`adopt_forwarding`
moves the loggers that modules created before the fork onto that root (they
would otherwise still write to the launcher's stderr, ``node.out``), and
:func:`set_process_fields` stamps every record of a process with its node
and actor.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

ALWAYS = ("ts", "level", "node", "actor", "pid", "logger", "msg")
_PLAIN = re.compile(r"[A-Za-z0-9_.:/#@+\-,\[\]]+")
_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')
VALUE_CHARS_MAX = 4096  # one field's value; a longer one is cut (with a marker) to keep lines bounded

_process_fields: dict[str, str] = {}


def quote(value: Any) -> str:
    """A logfmt value: bare when it is one plain token, else double-quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if len(text) > VALUE_CHARS_MAX:
        text = text[:VALUE_CHARS_MAX] + "...(cut)"
    if text and _PLAIN.fullmatch(text):
        return text
    esc = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
           .replace("\r", "\\r").replace("\t", "\\t"))
    return '"' + esc + '"'


def parse(line: str) -> dict[str, str]:
    """The pairs of one logfmt line (the inverse of the formatter)."""
    out = {}
    for key, raw in _PAIR.findall(line):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)), raw[1:-1])
        out[key] = raw
    return out


class LogfmtFormatter(logging.Formatter):
    """``logging`` formatter writing one logfmt line per record.

    ``node`` is the default for records that carry none (the launcher and the
    logger process know their node; actor processes stamp their own)."""

    def __init__(self, node: str = "", **_kw: Any) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        d = record.__dict__
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        kv = d.get("kv") or {}
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            msg = str(record.msg)
        pairs = [("ts", ts), ("level", record.levelname.lower()),
                 ("node", kv.get("node") or d.get("chorus_node") or self.node),
                 ("actor", kv.get("actor") or d.get("chorus_actor") or ""),
                 ("pid", record.process), ("logger", record.name), ("msg", msg)]
        pairs += [(k, v) for k, v in kv.items() if k not in ("node", "actor")]
        if record.exc_text or record.exc_info:
            exc = record.exc_text or self.formatException(record.exc_info)
            pairs.append(("exc", exc))
        return " ".join(f"{k}={quote(v)}" for k, v in pairs if v not in (None, ""))


def log_defs(path: str, level: str, node: str) -> dict:
    """A ``logging.config.dictConfig`` document: logfmt lines into ``path``."""
    return {
        "version": 1,
        "formatters": {"logfmt": {"()": "runtime.logfmt.LogfmtFormatter", "node": node}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "logfmt",
                              "level": level}},
        "root": {"handlers": ["file"], "level": level},
    }


def configure_stderr(level: str, node: str = "") -> None:
    """The launcher's own logging: logfmt lines on stderr (``node.out``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(node))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


def set_process_fields(**fields: str) -> None:
    """Stamp every log record this process makes with ``chorus_<name>``
    attributes (``node``, ``actor``): set once, by the first actor of the
    process (Thespian runs one actor per process)."""
    if not _process_fields:
        base = logging.getLogRecordFactory()

        def factory(*args: Any, **kw: Any) -> logging.LogRecord:
            rec = base(*args, **kw)
            for k, v in _process_fields.items():
                setattr(rec, "chorus_" + k, v)
            return rec

        logging.setLogRecordFactory(factory)
    for k, v in fields.items():
        _process_fields.setdefault(k, v)


def adopt_forwarding(modules: Any = None) -> int:
    """Attach the loggers made before this process was forked to the current
    root logger; returns how many were moved.

    Thespian replaces ``logging.root`` and the logger manager in every actor
    process; a module-level ``logging.getLogger(...)`` that ran in the parent
    keeps the parent's root -- the launcher's stderr.  Each such logger is
    re-registered with the current manager and hangs off the current root.
    ``modules``: where to look (default: every imported module)."""
    root, manager = logging.root, logging.Logger.manager
    moved = 0
    for mod in list(sys.modules.values() if modules is None else modules):
        for value in list(getattr(mod, "__dict__", {}).values()):
            if isinstance(value, logging.Logger) and not isinstance(value, logging.RootLogger) \
                    and value.manager is not manager:
                value.manager = manager
                value.parent = root
                value.handlers = []
                manager.loggerDict[value.name] = value
                moved += 1
    for lg in list(manager.loggerDict.values()):
        if isinstance(lg, logging.Logger):
            lg._cache.clear()
    return moved
