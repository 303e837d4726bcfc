"""The Dispatcher's side of metrics and the dashboard: one snapshot per call.

``_admin_metrics`` gathers, in one admin call of the HTTP API (GET
/metrics, the dashboard's JSON), what the node knows now:

* the agency as the local peer sees it (role, leader, term, commit index)
  and the nodes' liveness as the local supervisor sees it;
* every selected shard's status from its leader (``ShardInfo``, the same
  path as ``GET /api/v1/shards``): in-sync set, high watermark, end offset,
  the leader's traffic counters (actors/shard_stats.py), its followers'
  positions and its subscriptions' cursors.  Scope ``node``: the shards
  whose planned leader is this node, so that every shard is reported by
  exactly one node of a cluster (Prometheus sums over nodes).  Scope
  ``cluster``: every shard (the dashboard);
* the local supervisor's failovers (actors/failover_watch.py);
* the hinted-handoff queues and the MQTT front's status.

Each part has a deadline (``PART_TIMEOUT_S``): a part that does not answer
is left out (``"missing": [...]``) rather than failing the scrape.
Leader changes are seen here, in the agency's shard plans the Dispatcher
polls anyway: a bounded log of the last ``LEADER_LOG_MAX`` changes.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from protocol.node import FailoverStatsQuery, FailoverStatsReply
from protocol.mqtt_cluster import MqttStatusQuery

PART_TIMEOUT_S = 2.0
LEADER_LOG_MAX = 50
SHARDS_MAX = 1000  # shards one snapshot asks leaders about (the rest are counted, not described)


class DispatcherMetrics:
    """Mixed into :class:`actors.dispatcher.Dispatcher`."""

    def _metrics_init(self) -> None:
        self.leader_changes = 0
        self.leader_log: deque[dict] = deque(maxlen=LEADER_LOG_MAX)
        self.failover_waiters: dict[int, Callable[[dict], None]] = {}

    def _observe_leaders(self, leaders: dict[str, str | None]) -> None:
        """After a poll, before ``plan_leaders`` is replaced: log leader changes."""
        if not self.plan_leaders:
            return  # the first poll: nothing changed, we just learned the plans
        for shard in sorted(leaders):
            new = leaders[shard]
            if shard in self.plan_leaders and self.plan_leaders[shard] != new:
                old = self.plan_leaders[shard]
                if new:
                    self.leader_changes += 1
                self.leader_log.append({"at": round(self.wall(), 3), "shard": shard, "from": old or "",
                                        "to": new or "", "epoch": int((self.plans.get(shard) or {}).get("epoch", 0))})

    def on_FailoverStatsReply(self, msg: FailoverStatsReply, sender: Any) -> None:
        cb = self.failover_waiters.pop(msg.req_id, None)
        if cb is not None:
            cb({"node": msg.node, "active": msg.active, **(msg.stats or {})})

    def _metrics_parts(self, parts: dict[str, Callable[[Callable[[Any], None]], None]],
                       done: Callable[[dict, list[str]], None]) -> None:
        """Run every ``parts[name](answer)``; ``done(results, missing)`` once
        all have answered or ``PART_TIMEOUT_S`` has passed."""
        results: dict[str, Any] = {}
        state = {"done": False}

        def finish() -> None:
            if not state["done"]:
                state["done"] = True
                done(results, sorted(set(parts) - set(results)))

        def answer(name: str) -> Callable[[Any], None]:
            def cb(value: Any) -> None:
                if not state["done"] and name not in results:
                    results[name] = value
                    if len(results) == len(parts):
                        finish()
            return cb

        for name, start in parts.items():
            start(answer(name))
        if not state["done"]:
            from actors.dispatcher import _Pending

            req_id = self._next_req()
            self.pending[req_id] = _Pending(req_id, None, self.now() + PART_TIMEOUT_S,
                                          lambda _r: None, lambda *_a: finish())

    def _admin_metrics(self, args: dict, ok: Callable, fail: Callable) -> None:
        me = self.boot.node_id
        scope = args.get("scope", "node")
        every = self._shard_list(None)
        if scope == "node":
            shards = [s for s in every if (self.plans.get(s) or {}).get("leader") == me]
        else:
            shards = every
        asked = shards[:SHARDS_MAX]

        def cluster(cb: Callable[[Any], None]) -> None:
            self._cluster_view(lambda st, seen, members: cb((st, seen, members)))

        def failovers(cb: Callable[[Any], None]) -> None:
            req_id = self._next_req()
            if len(self.failover_waiters) >= 100:  # unanswered ones: forget the oldest
                del self.failover_waiters[min(self.failover_waiters)]
            self.failover_waiters[req_id] = cb
            # the dashboard wants the active supervisor's failovers; /metrics this node's own
            self.send(self.boot.supervisor, FailoverStatsQuery(req_id, active_only=scope != "node"))

        def mqtt(cb: Callable[[Any], None]) -> None:
            self.mqtt_waiters.append(cb)
            self.send(self.boot.endpoints.mqtt, MqttStatusQuery())

        parts: dict[str, Callable] = {"cluster": cluster, "failovers": failovers,
                                      "shards": lambda cb: self._gather_info(asked, cb)}
        if self.boot.endpoints is not None and self.boot.endpoints.mqtt is not None:
            parts["mqtt"] = mqtt

        def done(res: dict, missing: list[str]) -> None:
            st, seen, members = res.get("cluster") or ({}, {}, ())
            ok({"node_id": me, "scope": scope, "uptime_s": round(self.now() - self.started, 3),
                "wall": round(self.wall(), 3), "missing": missing,
                "agency": {"role": st.get("role"), "leader": st.get("leader"), "term": st.get("term"),
                           "commit_index": st.get("commit"), "voters": list(st.get("voters", ())),
                           "learners": list(st.get("learners", ()))},
                "nodes": self._metrics_nodes(st, seen, members),
                "shards": self._metrics_shards(asked, res.get("shards") or {}),
                "shards_total": len(every), "shards_selected": len(shards),
                "replicas_local": sum(1 for p in self.plans.values() if me in p.get("replicas", ())),
                "topics": len(self.topics),
                "handoff": self._hh_status_json(), "failovers": res.get("failovers"),
                "leader_changes": self.leader_changes, "leader_log": list(self.leader_log),
                "subscription_resets": self.gsub_resets(),
                "subscription_stale_acks": self.gsub_stale_acks(),
                "mqtt": res.get("mqtt")})

        self._metrics_parts(parts, done)

    def _metrics_nodes(self, st: dict, seen: dict[str, float], members: tuple[str, ...]) -> list[dict]:
        from actors.dispatcher import NODE_ALIVE_S

        voters, learners = set(st.get("voters", ())), set(st.get("learners", ()))
        out = []
        for n in sorted(set(self.nodes) | set(seen) | set(members) | voters | learners):
            ago = seen.get(n)
            info = self.nodes.get(n, {})
            out.append({"node_id": n, "alive": ago is not None and ago < NODE_ALIVE_S, "last_seen_s": ago,
                        "agency": "voter" if n in voters else "learner" if n in learners else "",
                        "http": info.get("http", ""), "client": info.get("client", "")})
        return out

    def _metrics_shards(self, shards: list[str], info: dict[str, dict]) -> list[dict]:
        out = []
        for shard in shards:
            topic, _, idx = shard.rpartition("#")
            plan = self.plans.get(shard) or {}
            st = info.get(shard) or {}
            leading = st.get("role") == "leader"
            hw, end = st.get("hw"), st.get("end")
            subs = []
            for sub in st.get("subscriptions", ()) if leading else ():
                committed = sub.get("committed")
                subs.append({"subscription": sub.get("subscription"), "mode": sub.get("mode"),
                             "committed": committed, "consumers": len(sub.get("consumers", ())),
                             "lag": max(0, hw - committed) if isinstance(hw, int) and isinstance(committed, int)
                             else None})
            followers = st.get("followers") or {}
            out.append({"shard": shard, "topic": topic, "index": int(idx), "leader": plan.get("leader") or "",
                        "epoch": int(plan.get("epoch", 0)), "replicas": list(plan.get("replicas", ())),
                        "answered": leading, "in_sync": list(st.get("in_sync", ())) if leading else [],
                        "hw": hw if leading else None, "end": end if leading else None,
                        "stats": st.get("stats") or {} if leading else {},
                        "replication_lag": {n: max(0, end - a) for n, a in followers.items()}
                        if leading and isinstance(end, int) else {},
                        "subscriptions": subs})
        return out
