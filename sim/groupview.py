"""A simulated client's view of a topic's shard groups (protocol/groups.py),
read from the agency like a client refreshing its metadata: a
linearizable read of the topic's group list from one agency peer in turn
(a peer that does not answer within ``timeout_s``, or is not the leader,
is replaced by the next).  Mixed into sim/producer.py and sim/querier.py.
"""
from __future__ import annotations

from typing import Any, Callable

from protocol.agency import AgencyReply, AgencyRequest, Read
from protocol.groups import GroupList, groups_path


class GroupView:
    """Needs ``self.boot.topic``, ``self.boot.agency`` (peer addresses) and
    the actor's ``send``/``set_timer``/``now``."""

    view: GroupList | None = None
    view_revision: int = -1

    def _gv_refresh(self, then: Callable[[], None] | None = None) -> None:
        st = self.__dict__.setdefault("_gv", {"req": 0, "peer": 0, "waiting": [], "busy": False})
        if then is not None:
            st["waiting"].append(then)
        if st["busy"] or not self.boot.agency:
            return
        st["busy"] = True
        self._gv_send()

    def _gv_send(self) -> None:
        st = self._gv
        st["req"] += 1
        peer = self.boot.agency[st["peer"] % len(self.boot.agency)]
        self.send(peer, AgencyRequest(f"gv-{self.boot.topic}-{id(self) % 100000}", st["req"],
                                      Read((groups_path(self.boot.topic),))))
        self.set_timer(0.5, ("gv_timeout", st["req"], None))

    def _gv_timeout(self, req: int) -> bool:
        st = self.__dict__.get("_gv")
        if st is None or req != st["req"] or not st["busy"]:
            return False
        st["peer"] += 1
        self._gv_send()
        return True

    def on_AgencyReply(self, msg: AgencyReply, sender: Any) -> None:
        st = self.__dict__.get("_gv")
        if st is None or msg.req_id != st["req"] or not st["busy"]:
            return
        if msg.status != "ok" or not isinstance(msg.result, dict):
            st["peer"] += 1
            self.set_timer(0.05, ("gv_timeout", st["req"], None))
            return
        rev = msg.result.get("revision", 0)
        gl = GroupList.from_json(msg.result["values"][0])
        if rev >= self.view_revision and gl is not None:
            self.view, self.view_revision = gl, rev
        st["busy"] = False
        waiting, st["waiting"] = st["waiting"], []
        for cb in waiting:
            cb()
