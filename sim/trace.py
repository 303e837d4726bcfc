"""Deterministic, human-readable one-line descriptions of messages.

Used only for the optional trace file (never for the trace hash).  Plain
``repr`` is not good enough: objects without a ``__repr__`` -- notably
``thespian.actors.ActorAddress`` and Thespian's system messages -- print
their memory address, which differs between runs and would make two trace
files of the same seed differ.  :func:`describe` renders addresses as
``@<details>``, Thespian messages by their fields, dataclasses, tuples,
lists and dicts recursively, sets sorted, and strips any remaining
``" at 0x..."`` from other reprs.  Output is cut to ``limit`` characters.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

_AT_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_ITEMS = 16


def describe(obj: Any, limit: int = 200) -> str:
    text = _desc(obj, 0)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _desc(obj: Any, depth: int) -> str:
    if depth > 6:
        return "..."
    d = depth + 1
    if isinstance(obj, ActorAddress):
        return f"@{obj.addressDetails}"
    if isinstance(obj, WakeupMessage):
        return f"WakeupMessage({_desc(obj.delayPeriod, d)}, {_desc(obj.payload, d)})"
    if isinstance(obj, ChildActorExited):
        return f"ChildActorExited({_desc(obj.childAddress, d)})"
    if isinstance(obj, ActorExitRequest):
        return f"ActorExitRequest(recursive={obj.isRecursive})"
    if isinstance(obj, PoisonMessage):
        return f"PoisonMessage({_desc(obj.poisonMessage, d)}, {_desc(obj.details, d)})"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        parts = [f"{f.name}={_desc(getattr(obj, f.name), d)}" for f in dataclasses.fields(obj) if f.repr]
        return f"{type(obj).__name__}({', '.join(parts)})"
    kind = type(obj)
    if kind is tuple or kind is list:
        items = [_desc(x, d) for x in obj[:_MAX_ITEMS]]
        if len(obj) > _MAX_ITEMS:
            items.append("...")
        if kind is tuple:
            return "(" + ", ".join(items) + ("," if len(obj) == 1 else "") + ")"
        return "[" + ", ".join(items) + "]"
    if kind is dict:
        items = [f"{_desc(k, d)}: {_desc(v, d)}" for k, v in list(obj.items())[:_MAX_ITEMS]]
        if len(obj) > _MAX_ITEMS:
            items.append("...")
        return "{" + ", ".join(items) + "}"
    if kind is set or kind is frozenset:
        items = sorted(_desc(x, d) for x in obj)
        return kind.__name__ + "({" + ", ".join(items[:_MAX_ITEMS]) + "})"
    return _AT_ADDRESS.sub("", repr(obj))
