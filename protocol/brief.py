"""A short ``str()`` for actor messages that carry data.

Thespian formats every message it sends for a debug log line
(``TransmitIntent.identify`` calls ``str(message)``) whether or not debug
logging is on.  For a dataclass that is its generated repr, and the repr of
a record batch costs as much as pickling and sending it: profiling showed
it as the largest single cost of a shard leader.  Messages that carry
batches, records or agency trees derive from :class:`Brief`; ``repr()``
stays the full dataclass repr for tests and debugging.
"""
from __future__ import annotations


class Brief:
    __slots__ = ()

    def __str__(self) -> str:
        return f"{type(self).__name__}(...)"
