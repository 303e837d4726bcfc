"""Effects of a durable named subscription (see ``actors/subscription.py``).

A subscription core takes inputs (attach, detach, records read from the
log, ack, nack, tick) and answers each with a list of these frozen
dataclasses, in the order the host must carry them out:

* :class:`Refused` -- an attach was refused (exclusive subscription busy);
* :class:`PersistCursor` -- the committed cursor of a shard advanced; the
  host persists it (replicated) and may batch or coalesce consecutive ones
  (only the newest value per shard matters);
* :class:`Deliver` -- send one record to one consumer;
* :class:`FetchMore` -- read records of a shard from the log (only durable
  records, i.e. below the shard's high watermark) and hand them back with
  ``records(shard, first_offset, records, now_s)``.

Shards are identified by their index within the topic (``int``); offsets are
positions in the shard's append-only log (0, 1, 2, ...).

This module imports nothing of actors/, storage/, sim/ or runtime/.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Union

from protocol.brief import Brief


class Mode(StrEnum):
    """Subscription modes.  ``StrEnum``: ``Mode.SHARED == "shared"``."""

    EXCLUSIVE = "exclusive"  # one consumer; a second attach is refused
    FAILOVER = "failover"  # first attached is active, the others stand by
    SHARED = "shared"  # round-robin over all attached consumers, unordered

    @property
    def ordered(self) -> bool:
        """True when delivery is in shard order (exclusive, failover)."""
        return self is not Mode.SHARED


MODES: tuple[str, ...] = tuple(m.value for m in Mode)


@dataclass(frozen=True)
class Deliver:
    """Send ``record`` (at ``offset`` of ``shard``) to ``consumer``.

    ``redelivery`` is True when this subscription core delivered the same
    offset before (to any consumer) and it was not acknowledged."""

    consumer: str
    shard: int
    offset: int
    record: Any
    redelivery: bool = False


@dataclass(frozen=True)
class FetchMore:
    """Read at most ``max_records`` records of ``shard`` starting at
    ``from_offset`` and return them with ``records(shard, from_offset, ...)``.

    The host may answer with fewer records (only what is durable), with an
    empty list, or hold the request until records become durable.  The core
    never asks for more than fits its buffer."""

    shard: int
    from_offset: int
    max_records: int


@dataclass(frozen=True)
class PersistCursor:
    """The committed cursor of ``shard`` is now ``offset``: every offset
    below it is acknowledged.  Persist it; restore it with
    ``SubscriptionCore(..., cursors={shard: offset})``."""

    shard: int
    offset: int


@dataclass(frozen=True)
class Refused:
    """``consumer`` may not attach; ``reason`` says why, for humans."""

    consumer: str
    reason: str


ConsumeEffect = Union[Deliver, FetchMore, PersistCursor, Refused]


# ------------------------------------------------------------------ messages
# Consumers talk to the leader of each shard they read.  Deliveries and
# acknowledgements are batched: one actor message carries many records.


@dataclass(frozen=True)
class Subscribe:
    """Attach (or keep attached: send it again as a heartbeat) a consumer to
    a durable subscription on one shard.  Creates the subscription with
    ``mode`` if it does not exist."""

    shard: str
    subscription: str
    mode: str
    consumer: str
    reply_to: Any = None


@dataclass(frozen=True)
class SubscribeReply:
    shard: str
    subscription: str
    consumer: str
    status: str  # ok | fail
    leader: str | None = None
    error: str = ""
    # the shard's group is closed for good and this subscription has
    # acknowledged every record of it: a consumer of a topic with shard
    # groups moves on to the same shard index of the next group
    # (actors/group_walk.py).  Sent in answer to every Subscribe then.
    drained: bool = False


@dataclass(frozen=True)
class Unsubscribe:
    shard: str
    subscription: str
    consumer: str


@dataclass(frozen=True)
class Delivery(Brief):
    shard: str
    subscription: str
    consumer: str
    records: tuple[tuple[int, bytes, bool], ...]  # (offset, payload, redelivery)
    epoch: int = 0


@dataclass(frozen=True)
class AckRecords(Brief):
    shard: str
    subscription: str
    consumer: str
    offsets: tuple[int, ...]
    negative: bool = False  # a nack: redeliver these
