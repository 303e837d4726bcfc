"""Who holds each persistent MQTT session (sans-IO): one owner at a time.

``/chorus/mqtt/sessions/<escaped client id> = "<node>:<epoch>"`` in the
agency.  A CONNECT with ``clean_session=0`` first *claims* the session: a
transaction that sets the owner to this node with the next epoch, on the
precondition that the entry is still what this node last saw.  Only then
does it ask the other nodes to hand the session over, and it takes the
state only from the previous owner, at the previous epoch.  A CONNECT with
``clean_session=1`` *releases* it (deletes the entry, same precondition).

Without this, a client that moved while the node holding its session was
cut off got a fresh session on the new node while the old one lived on;
a later move could resume the stale copy as "present" (the simulator's
``mqtt_single_session`` check found it).  Now a node that sees the entry
name another owner closes the client's connection there and drops its
copy once nobody asked for it within ``moved_grace_s``; a node restarting
keeps only the sessions the registry still gives it; and a stale copy is
never handed over, because nobody asks its node for it.
"""
from __future__ import annotations

from typing import Any

from actors.mqtt_routes import escape, unescape
from protocol.agency import Mutation, Precondition, Txn
from protocol.mqtt_cluster import SESSIONS_ROOT

Owner = tuple[str, int]  # (node, epoch)


def _text(owner: Owner) -> str:
    return f"{owner[0]}:{owner[1]}"


def parse(value: Any) -> Owner | None:
    if not isinstance(value, str) or ":" not in value:
        return None
    node, _, epoch = value.rpartition(":")
    try:
        return node, int(epoch)
    except ValueError:
        return None


class SessionOwners:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.view: dict[str, Owner] = {}  # client id -> owner, as this node's agency peer has it

    def load(self, tree: Any) -> None:
        self.view = {}
        for seg, value in (tree or {}).items():
            owner = parse(value)
            if owner is not None:
                self.view[unescape(seg)] = owner

    def event(self, seg: str, value: Any) -> tuple[str, Owner | None]:
        """A watch event on the entry ``seg``: (client id, its owner now)."""
        cid = unescape(seg)
        owner = parse(value)
        if owner is None:
            self.view.pop(cid, None)
        else:
            self.view[cid] = owner
        return cid, owner

    def _pre(self, path: str, prev: Owner | None) -> Precondition:
        return Precondition(path, "equals", _text(prev)) if prev else Precondition(path, "absent")

    def claim(self, cid: str) -> tuple[Txn, Owner | None, int]:
        """The transaction that makes this node the owner: (txn, the owner
        it replaces, the new epoch)."""
        prev = self.view.get(cid)
        epoch = (prev[1] if prev else 0) + 1
        path = f"{SESSIONS_ROOT}/{escape(cid)}"
        return Txn((Mutation(path, "set", _text((self.node_id, epoch))),), (self._pre(path, prev),)), prev, epoch

    def release(self, cid: str) -> tuple[Txn | None, Owner | None]:
        """The transaction that ends the persistent session (None: there is none)."""
        prev = self.view.get(cid)
        if prev is None:
            return None, None
        path = f"{SESSIONS_ROOT}/{escape(cid)}"
        return Txn((Mutation(path, "delete"),), (self._pre(path, prev),)), prev

    def mine(self, cid: str, epoch: int) -> bool:
        return self.view.get(cid) == (self.node_id, epoch)


class SessionExpiry:
    """Which persistent sessions have been offline for ``expiry_s`` (as
    EMQX ends MQTT 3.1.1 sessions after its session expiry interval): their
    queue, subscriptions and registry entry go, so that client ids that never
    come back do not hold the registry forever.  A scan every ``scan_s``
    notes when each session was first seen offline; precision is one scan."""

    def __init__(self, expiry_s: float, scan_s: float) -> None:
        self.expiry_s = expiry_s
        self.scan_s = scan_s
        self.next_scan = 0.0
        self.offline_since: dict[str, float] = {}  # client id -> first scan that saw it offline

    def due(self, now: float) -> bool:
        if now < self.next_scan:
            return False
        self.next_scan = now + self.scan_s
        return True

    def scan(self, offline: list[str], now: float) -> list[str]:
        """``offline``: the persistent sessions with no connection and no
        CONNECT on its way to them.  Returns those to end now."""
        since = {cid: self.offline_since.get(cid, now) for cid in offline}
        ended = [cid for cid, t in since.items() if now - t >= self.expiry_s]
        for cid in ended:
            del since[cid]
        self.offline_since = since
        return ended
