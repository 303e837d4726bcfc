"""The Dispatcher's part in hinted handoff (a mixin): level ``any`` writes
go to this node's NodeActor, the coordinator that keeps hints
(actors/node_handoff.py), and the queue's state is part of the status.

A write at ``any`` is never sent straight to a cached leader replica: only
the coordinating node can keep it as a hint when that leader is
unreachable.  The queue's sizes and counters are read from the NodeActor
with every poll of the agency view (``POLL_S``), so ``status`` shows them
at most one poll old.
"""
from __future__ import annotations

from typing import Any

from protocol.node import HandoffQuery, HandoffReply
from protocol.shard import Produce


class DispatcherHandoff:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    hh_status: dict = {}

    def _hh_routes(self, msg: Any) -> bool:
        """Send a write at ``any`` of an idempotent producer to the
        coordinating NodeActor; False for every other request."""
        if isinstance(msg, Produce) and msg.level == "any" and msg.producer_id:
            self.send(self.boot.node, msg)
            return True
        return False

    def _hh_poll(self) -> None:
        self.send(self.boot.node, HandoffQuery())

    def on_HandoffReply(self, msg: HandoffReply, sender: Any) -> None:
        self.hh_status = dict(msg.status)

    def _hh_status_json(self) -> dict:
        st = self.hh_status or {}
        return {"hints": st.get("hints", 0), "bytes": st.get("bytes", 0), "bytes_max": st.get("bytes_max"),
                "age_max_s": st.get("age_max_s"), "queues": st.get("queues", {}),
                **{k: st.get(k, 0) for k in ("stored", "drained", "dropped_bytes", "dropped_age",
                                             "dropped_refused", "refused_too_big")}}
