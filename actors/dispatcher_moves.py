"""The Dispatcher's shard moves, drains and node removal (a mixin): the
admin operations behind ``POST /shards/move``, ``GET /moves``, ``POST
/nodes/{id}/drain`` and ``DELETE /nodes/{id}``.

Moves and drains are requests to the local supervisor, which passes them
to the active one; that one writes them to the agency and drives them
(actors/moves.py).  Removing a node is done here: it is refused while the
node holds any replica (or is a move's target), and otherwise takes the
node out of the agency (voter or learner; never leaving an even number of
voters) and marks it ``removed`` so that no replica is placed on it again.
"""
from __future__ import annotations

from typing import Any, Callable

from actors.moves import DRAIN_ROOT, MOVES_ROOT, walk_moves
from protocol.agency import AgencyReply, MembershipChange, Read
from protocol.node import MoveReply, RequestDrain, RequestMove

MOVE_REQUEST_TIMEOUT_S = 10.0


class DispatcherMoves:
    """Mixed into the Dispatcher; uses its ``pending``, ``plans``,
    ``_agency``, ``_agency_call`` and ``_cluster_view``."""

    def _move_call(self, msg: Any, ok: Callable, fail: Callable) -> None:
        from actors.dispatcher import _Pending

        def done(reply: MoveReply) -> None:
            ok(reply.move or {})

        def failed(_code: Any, error: str) -> None:
            e = error.lower()
            if "no such" in e:
                fail(404, "not_found", error)
            elif "no active supervisor" in e or "not ready" in e or "no answer" in e:
                fail(503, "unavailable", error)
            else:
                fail(409, "conflict", error)

        req_id = self._next_req()
        msg = type(msg)(**{**msg.__dict__, "req_id": req_id, "client": self.client})
        self.pending[req_id] = _Pending(req_id, msg, self.now() + MOVE_REQUEST_TIMEOUT_S, done, failed)
        self.send(self.boot.supervisor, msg)

    def on_MoveReply(self, msg: MoveReply, sender: Any) -> None:
        self.on_TopicReply(msg, sender)  # same shape: req_id, status, error

    def _shard_name(self, args: dict, fail: Callable) -> str | None:
        topic, index = args.get("topic"), args.get("shard")
        spec = self.topics.get(topic) if isinstance(topic, str) else None
        if spec is None:
            fail(404, "not_found", f"topic {topic!r} does not exist")
            return None
        n = int(spec.get("shards", 1))
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            fail(400, "bad_request", f"shard must be an integer in 0..{n - 1} for topic {topic}")
            return None
        return f"{topic}#{index}"

    def _admin_move_shard(self, args: dict, ok: Callable, fail: Callable) -> None:
        shard = self._shard_name(args, fail)
        if shard is None:
            return
        frm, to = args.get("from"), args.get("to")
        if not isinstance(frm, str) or not frm or not isinstance(to, str) or not to:
            fail(400, "bad_request", "'from' and 'to' must be node ids")
            return
        if frm == to:
            fail(400, "bad_request", "'from' and 'to' are the same node")
            return
        self._move_call(RequestMove(self.client, 0, shard, frm, to), ok, fail)

    def _admin_moves(self, args: dict, ok: Callable, fail: Callable) -> None:
        def done(r: AgencyReply) -> None:
            if r.status != "ok" or not isinstance(r.result, dict):
                fail(503, "unavailable", f"agency: {r.error or r.status}")
                return
            moves_tree, drain_tree = r.result["values"]
            moves = [mv for _s, mv in sorted(walk_moves(moves_tree or {}).items())]
            drains = {n: v.get("state") for n, v in sorted((drain_tree or {}).items()) if isinstance(v, dict)}
            held: dict[str, int] = {}
            for plan in self.plans.values():
                for n in set(plan.get("replicas", ())) | set(plan.get("learners", ())):
                    held[n] = held.get(n, 0) + 1
            ok({"moves": moves, "drains": [{"node_id": n, "state": s, "replicas": held.get(n, 0)}
                                           for n, s in drains.items()],
                "replicas": dict(sorted(held.items()))})

        self._agency(Read((MOVES_ROOT, DRAIN_ROOT)), done)

    def _admin_drain_node(self, args: dict, ok: Callable, fail: Callable) -> None:
        nid = args.get("node_id")
        state = "" if args.get("cancel") else "draining"

        def decide(st: dict, seen: dict[str, float], members: tuple[str, ...]) -> None:
            known = set(seen) | set(members) | set(st.get("voters", ())) | set(st.get("learners", ()))
            if nid not in known:
                fail(404, "not_found", f"no such node: {nid}")
                return
            self._move_call(RequestDrain(self.client, 0, nid, state), ok, fail)

        self._cluster_view(decide)

    def _admin_remove_node(self, args: dict, ok: Callable, fail: Callable) -> None:
        nid = args.get("node_id")
        if nid == self.boot.node_id:
            fail(409, "conflict", f"{nid} is the node answering this request; ask another node to remove it")
            return
        holding = sorted(s for s, p in self.plans.items()
                         if nid in p.get("replicas", ()) or nid in p.get("learners", ()))
        if holding:
            more = f" and {len(holding) - 3} more" if len(holding) > 3 else ""
            fail(409, "conflict", f"{nid} still holds {len(holding)} replica(s) ({', '.join(holding[:3])}{more}); "
                                  f"drain it first: brokerctl nodes drain {nid}")
            return

        def decide(st: dict, seen: dict[str, float], members: tuple[str, ...]) -> None:
            voters, learners = list(st.get("voters", ())), list(st.get("learners", ()))
            known = set(seen) | set(members) | set(voters) | set(learners)
            if nid not in known:
                fail(404, "not_found", f"no such node: {nid}")
                return
            if nid in voters and (len(voters) - 1) % 2 == 0:
                fail(409, "conflict", f"removing {nid} would leave {len(voters) - 1} agency voters, an even number "
                                      "(no more failures tolerated than with one fewer); promote another node first "
                                      "(brokerctl nodes promote) or remove a second voter after this one")
                return

            def mark(_r: Any = None) -> None:
                self._move_call(RequestDrain(self.client, 0, nid, "removed"),
                                lambda _mv: ok({"node_id": nid, "removed": True,
                                                "voters": [v for v in voters if v != nid],
                                                "learners": [n for n in learners if n != nid]}), fail)

            if nid not in voters and nid not in learners:
                mark()
                return

            def done(reply: AgencyReply) -> None:
                if reply.status == "ok":
                    mark()
                else:
                    fail(503, "unavailable", f"agency: {reply.error or reply.status}")

            self._agency_call(lambda req_id: MembershipChange(self.client, req_id, "remove_voter", nid), done)

        self._cluster_view(decide)
