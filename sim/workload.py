"""Simulated agency clients: a workload of reads, writes and compare-and-set.

Each client is an ordinary Chorus actor living on its own client node.  It
issues one operation at a time (closed loop, exponential think time), sends
it to the peer it believes leads (any peer at first; peers forward to the
leader), and records the history the linearizability checker needs:

* ``op.invoke`` {client, op_id, kind, key, value, expected}
* ``op.done``   {client, op_id, status, result}  status ok | fail | unknown

A write or CAS that gets no answer within ``timeout_s``, or is refused
(no leader, leadership lost), is retried with the *same* request id, up to
``attempts_max`` times: the agency's client sessions apply a request at
most once and answer a retry with the saved result, so retries turn most
lost answers into definite ones.  Only when every attempt fails is the
operation recorded as ``unknown`` -- never dropped.  Reads are not retried:
a read that fails had no effect.
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
    attempts_max: int = 5
    retry_backoff_s: float = 0.05


class AgencyClient(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.boot: ClientBoot | None = None
        self.op_id = 0
        self.inflight: tuple[int, str, str, Any] | None = None  # (op_id, kind, key, value)
        self.request: AgencyRequest | None = None
        self.attempt = 0
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
        self.set_timer(delay, ("next", self.op_id, 0))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        kind, op_id, attempt = msg.payload
        if kind == "next" and self.inflight is None:
            if self.now() - self.started < self.boot.stop_after_s:
                self._issue()
            return
        current = self.inflight is not None and self.inflight[0] == op_id and self.attempt == attempt
        if not current:
            return  # stale timer
        if kind == "timeout":
            self.leader = None  # try another peer
            self._retry_or_give_up("client timeout")
        elif kind == "retry":
            self._send_attempt()

    def _retry_or_give_up(self, error: str) -> None:
        if self.inflight[1] == "read":
            self._done(FAIL, None, error)
        elif self.attempt < self.boot.attempts_max:
            self.attempt += 1
            self.set_timer(self.boot.retry_backoff_s, ("retry", self.inflight[0], self.attempt))
        else:
            self._done(UNKNOWN, None, error)

    def _send_attempt(self) -> None:
        target = self.leader if self.leader in self.peers else self.rng.choice(self.peer_ids)
        self.send(self.peers[target], self.request)
        self.set_timer(self.boot.timeout_s, ("timeout", self.inflight[0], self.attempt))

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
        self.request = AgencyRequest(b.client_id, self.op_id, op)
        self.attempt = 1
        self._send_attempt()

    def on_AgencyReply(self, msg: AgencyReply, sender: Any) -> None:
        if self.inflight is None or msg.req_id != self.inflight[0]:
            return  # late answer to an op already recorded as timed out
        if msg.leader:
            self.leader = msg.leader
        _op_id, kind, key, value = self.inflight
        if msg.status != OK:
            if msg.status == FAIL and not msg.leader:
                self.leader = None
            if kind == "read":
                self._done(msg.status, None, msg.error)
            else:
                # A refusal or unknown outcome of one copy is not the final
                # word (another copy, duplicated by the network or sent on
                # an earlier attempt, may be applied): ask again with the
                # same request id.
                self._retry_or_give_up(msg.error or msg.status)
            return
        result: Any = None
        if kind == "read":
            result = msg.result["values"][0]
            self.last_seen[key] = result
        elif msg.result.get("stale"):
            self._done(UNKNOWN, None, "agency reports the request as stale")
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
        self.request = None
        self.record("op.done", client=self.boot.client_id, op_id=op_id, status=status,
                    result=result, error=error)
        self._think()
