"""Simulated agency clients: a workload of reads, writes and compare-and-set.

Each client is an ordinary Chorus actor living on its own client node.  It
issues one operation at a time (closed loop, exponential think time), sends
it to the peer it believes leads (any peer at first; peers forward to the
leader), and records the history the linearizability checker needs:

* ``op.invoke`` {client, op_id, kind, key, value, expected}
* ``op.done``   {client, op_id, status, result}  status ok | fail | unknown

An operation that gets no answer within ``timeout_s`` is recorded as
``unknown`` (writes and CAS may still take effect) -- never dropped.
Values written are unique per client and operation, which keeps the
linearizability search small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import ChorusActor
from protocol.agency import (
    FAIL,
    OK,
    UNKNOWN,
    AgencyReply,
    AgencyRequest,
    Mutation,
    Precondition,
    Read,
    Txn,
)


@dataclass(frozen=True)
class ClientBoot:
    client_id: str
    peers: tuple[tuple[str, Any], ...]
    keys: int = 4
    rate_per_s: float = 10.0
    read_ratio: float = 0.4
    write_ratio: float = 0.4  # the rest is CAS
    timeout_s: float = 2.0
    stop_after_s: float = 1e9
    key_prefix: str = "/w"


class AgencyClient(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.boot: ClientBoot | None = None
        self.op_id = 0
        self.inflight: tuple[int, str, str, Any] | None = None  # (op_id, kind, key, value)
        self.leader: str | None = None
        self.last_seen: dict[str, Any] = {}
        self.started = 0.0

    def on_ClientBoot(self, msg: ClientBoot, sender: Any) -> None:
        if self.boot is not None:
            return
        self.boot = msg
        self.peers = dict(msg.peers)
        self.peer_ids = [p for p, _ in msg.peers]
        self.started = self.now()
        self._think()

    def _think(self) -> None:
        delay = self.rng.expovariate(self.boot.rate_per_s)
        self.set_timer(delay, ("next", self.op_id))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        kind, op_id = msg.payload
        if kind == "next" and self.inflight is None:
            if self.now() - self.started < self.boot.stop_after_s:
                self._issue()
        elif kind == "timeout" and self.inflight is not None and self.inflight[0] == op_id:
            self._done(UNKNOWN if self.inflight[1] != "read" else FAIL, None, "client timeout")
            self.leader = None  # try another peer next time

    def _issue(self) -> None:
        b = self.boot
        self.op_id += 1
        key = f"{b.key_prefix}/k{self.rng.randrange(b.keys)}"
        r = self.rng.random()
        value = expected = None
        if r < b.read_ratio:
            kind, op = "read", Read((key,))
        elif r < b.read_ratio + b.write_ratio:
            kind = "write"
            value = f"{b.client_id}:{self.op_id}"
            op = Txn((Mutation(key, "set", value),))
        else:
            kind = "cas"
            value = f"{b.client_id}:{self.op_id}"
            expected = self.last_seen.get(key)
            pre = Precondition(key, "absent") if expected is None else Precondition(key, "equals", expected)
            op = Txn((Mutation(key, "set", value),), (pre,))
        self.inflight = (self.op_id, kind, key, value)
        self.record("op.invoke", client=b.client_id, op_id=self.op_id, kind=kind, key=key,
                    value=value, expected=expected)
        target = self.leader if self.leader in self.peers else self.rng.choice(self.peer_ids)
        self.send(self.peers[target], AgencyRequest(b.client_id, self.op_id, op))
        self.set_timer(b.timeout_s, ("timeout", self.op_id))

    def on_AgencyReply(self, msg: AgencyReply, sender: Any) -> None:
        if self.inflight is None or msg.req_id != self.inflight[0]:
            return  # late answer to an op already recorded as timed out
        if msg.leader:
            self.leader = msg.leader
        _op_id, kind, key, value = self.inflight
        if msg.status != OK:
            if msg.status == FAIL and not msg.leader:
                self.leader = None
            status = msg.status
            if kind != "read" and status == FAIL:
                # The network may have duplicated the request: a copy refused
                # here can still be applied through another peer (at most
                # once, by the agency's client sessions).  So for a write a
                # refusal is not definite from the client's point of view.
                status = UNKNOWN
            self._done(status, None, msg.error)
            return
        result: Any = None
        if kind == "read":
            result = msg.result["values"][0]
            self.last_seen[key] = result
        elif msg.result.get("duplicate"):
            # Our own earlier copy of this request was applied already; its
            # answer was lost, so the outcome is unknown to us.
            self._done(UNKNOWN, None, "duplicate")
            return
        elif kind == "cas":
            result = bool(msg.result.get("ok"))
            if result:
                self.last_seen[key] = value
        else:
            self.last_seen[key] = value
        self._done(OK, result, "")

    def _done(self, status: str, result: Any, error: str) -> None:
        op_id = self.inflight[0]
        self.inflight = None
        self.record("op.done", client=self.boot.client_id, op_id=op_id, status=status,
                    result=result, error=error)
        self._think()
