"""The supervisor's part of shard groups by time (a mixin of SupervisorCore).

For every topic whose spec has ``shard_group_ms`` (see protocol/groups.py)
the active supervisor, on its tick:

* **rolls over**: ``PRECREATE_MS`` before the current group ends it places
  the next group's shards on the nodes alive *now* (placement.py, least
  loaded first) and writes the new group list and the new shard plans in
  one agency transaction whose precondition is that the list is still
  what it read -- two supervisors can never both add a group;
* **drops** whole groups past retention (``end_ms + retention_ms +
  CLOSE_SLACK_MS <= now``), and the oldest closed groups while a shard
  index holds more than ``retention_bytes`` over all groups (sizes from
  the replicas' state reports, ``ReplicaState.log_bytes``): one transaction removes them from the list and
  deletes their shard plans; each node then stops its replicas of those
  shards and deletes their databases once they exited (actors/node.py);
* **truncates** on request (``brokerctl topics truncate-shards``): the
  group holding now ends now (its shards' plans get ``until_ms`` = now, so
  their leaders refuse later writes) and the next group starts now, placed
  on the current nodes.

One transaction per topic is in flight at a time; a failed precondition
re-reads the lists.  Times are the supervisor's wall clock in ms
(``self.wall_ms``, set by the actor shell before each call).
"""
from __future__ import annotations

from typing import Any

from actors.placement import cluster_load, place_topic
from protocol.agency import AgencyReply, Mutation, Precondition, Read, Txn
from protocol.groups import GROUPS_ROOT, GroupList, ShardGroup, groups_path
from protocol.node import TopicReply
from protocol.shard import Assign
from protocol.topics import TOPICS_ROOT, TopicSpec

GROUPS_REFRESH_S = 1.0


def walk_lists(tree: Any, parts: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(topic, raw group list) for every list in the agency subtree."""
    if not isinstance(tree, dict):
        return []
    if "groups" in tree and len(parts) == 4:
        return [("/".join(parts), tree)]
    out = []
    for k in sorted(tree):
        out.extend(walk_lists(tree[k], parts + (k,)))
    return out


def walk_specs(tree: Any, parts: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    if not isinstance(tree, dict):
        return []
    if len(parts) == 4:
        return [("/".join(parts), tree)]
    out = []
    for k in sorted(tree):
        out.extend(walk_specs(tree[k], parts + (k,)))
    return out


class SupervisorGroups:
    """Mixed into :class:`actors.supervisor.SupervisorCore`."""

    wall_ms: int = 0
    group_lists: dict[str, Any]  # topic -> raw JSON list as last read or written
    group_specs: dict[str, TopicSpec]
    group_busy: set[str]
    groups_loaded_s: float = -1e9

    def _groups_init(self) -> None:
        self.group_lists = {}
        self.group_specs = {}
        self.group_busy = set()
        self.group_waiting: list[tuple[Any, Any, float]] = []  # truncates waiting for a fresh read

    # ------------------------------------------------------------ reading
    def _groups_load(self, now_s: float) -> None:
        if "groups_load" in {k for k, _ in self.inflight.values()}:
            return
        self.groups_loaded_s = now_s
        self._agency("groups_load", "", Read((GROUPS_ROOT, TOPICS_ROOT)))

    def _groups_loaded(self, r: AgencyReply) -> None:
        if r.status != "ok" or not isinstance(r.result, dict):
            return
        lists_tree, topics_tree = (list(r.result["values"]) + [None, None])[:2]
        specs = {}
        for topic, raw in walk_specs(topics_tree or {}):
            try:
                spec = TopicSpec.from_json(raw)
            except (ValueError, TypeError):
                continue
            if spec.shard_group_ms is not None:
                specs[topic] = spec
        self.group_specs = specs
        self.group_lists = {t: raw for t, raw in walk_lists(lists_tree or {}) if t not in self.group_busy}
        waiting, self.group_waiting = self.group_waiting, []
        for m, reply_to, now_s in waiting:
            self.truncate_shards(m, reply_to, now_s, fresh=True)

    def topic_shards(self, spec: TopicSpec) -> tuple[str, ...]:
        """Every shard of the topic: of each of its groups, or 0..shards-1."""
        name = str(spec.name)
        gl = GroupList.from_json(self.group_lists.get(name))
        if spec.shard_group_ms is not None and gl is not None:
            return tuple(f"{name}#{i}" for i in gl.shard_ids())
        return tuple(f"{name}#{i}" for i in range(spec.shards))

    # ------------------------------------------------------------- writing
    def _place_group(self, spec: TopicSpec, g: ShardGroup, now_s: float) -> list[Mutation]:
        """Plans for a new group's shards on the nodes alive now; raises
        ValueError if there are not enough."""
        from actors.supervisor import plan_path

        alive = sorted(n for n in self.nodes if self._alive(n, now_s, 2 * self.grace_s))
        spec.validate(len(alive))
        load = cluster_load([(p.replicas, p.leader) for p in self.plans.values()])
        placed = place_topic(len(g.shards), spec.replication_factor, alive, load)
        return [Mutation(plan_path(f"{spec.name}#{sid}"), "set",
                         {"epoch": 1, "leader": reps[0], "replicas": list(reps), "until_ms": g.end_ms})
                for sid, reps in zip(g.shards, placed)]

    def group_create_muts(self, spec: TopicSpec, placed: list) -> tuple[list[Mutation], int]:
        """For CreateTopic: the first group's list (shards 0..n-1 placed as
        ``placed``) and its end, which every plan carries as ``until_ms``."""
        gl = GroupList.first(spec.shards, self.wall_ms, spec.shard_group_ms)
        return [Mutation(groups_path(str(spec.name)), "set", gl.to_json())], gl.last.end_ms

    def _group_txn(self, topic: str, kind: str, old: Any, new: GroupList, muts: list[Mutation],
                   extra: Any = None) -> None:
        pre = (Precondition(groups_path(topic), "equals", old),)
        self.group_busy.add(topic)
        self._agency("group_" + kind, (topic, new.to_json(), muts, extra),
                     Txn((Mutation(groups_path(topic), "set", new.to_json()),) + tuple(muts), pre))

    def groups_tick(self, now_s: float) -> None:
        if now_s - self.groups_loaded_s >= GROUPS_REFRESH_S:
            self._groups_load(now_s)
        now_ms = self.wall_ms
        for topic in sorted(self.group_specs):
            spec = self.group_specs[topic]
            raw = self.group_lists.get(topic)
            gl = GroupList.from_json(raw)
            if gl is None or topic in self.group_busy:
                continue
            if gl.needs_next(now_ms, spec.shard_group_ms):
                new = gl.next_group(spec.shards, now_ms, spec.shard_group_ms)
                try:
                    muts = self._place_group(spec, new.last, now_s)
                except ValueError as exc:
                    self.records.append(("groups.create_failed", {"topic": topic, "error": str(exc)}))
                    continue
                self._group_txn(topic, "create", raw, new, muts, new.last)
                continue
            retention = spec.retention_ms
            if retention is not None and self.bugs.drop_group_early:
                drop = [g for g in gl.groups if g.end_ms + retention // 2 <= now_ms and g is not gl.current(now_ms)]
            else:
                drop = gl.expired(now_ms, retention)
            by_time = {g.id for g in drop}
            if spec.retention_bytes is not None:
                by_size = gl.oversize(self._shard_bytes(topic), spec.retention_bytes, now_ms)
                drop = sorted({g.id: g for g in drop + by_size}.values(), key=lambda g: g.id)
            if drop:
                from actors.supervisor import plan_path

                muts = [Mutation(plan_path(f"{topic}#{s}"), "delete") for g in drop for s in g.shards]
                why = tuple("time" if g.id in by_time else "size" for g in drop)
                self._group_txn(topic, "drop", raw, gl.without(drop), muts, (tuple(drop), why))

    def _shard_bytes(self, topic: str) -> dict[int, int]:
        """shard id -> the largest log size its replicas last reported."""
        out: dict[int, int] = {}
        prefix = topic + "#"
        for (shard, _node), (_t, st) in self.seen.items():
            if shard.startswith(prefix) and st.log_bytes >= 0:
                sid = int(shard[len(prefix):])
                out[sid] = max(out.get(sid, 0), st.log_bytes)
        return out

    def truncate_shards(self, m: Any, reply_to: Any, now_s: float, fresh: bool = False) -> None:
        """Close the topic's current group at once; the next writes go to a
        new group placed on the current nodes."""
        from actors.supervisor import plan_path

        def fail(err: str) -> None:
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "fail", error=err)))

        if not self.active or not self.loaded:
            fail("supervisor is not ready")
            return
        spec = self.group_specs.get(m.name)
        raw = self.group_lists.get(m.name)
        gl = GroupList.from_json(raw)
        if (spec is None or gl is None) and not fresh and len(self.group_waiting) < 100:
            # a topic created a moment ago: read the lists, then try again
            self.group_waiting.append((m, reply_to, now_s))
            self._groups_load(now_s)
            return
        if spec is None or gl is None:
            fail(f"topic {m.name} does not exist or has no shard groups (create it with a shard group duration)")
            return
        if m.name in self.group_busy:
            fail(f"topic {m.name}: its shard groups are changing; retry")
            return
        new, closed = gl.truncate(spec.shards, self.wall_ms, spec.shard_group_ms)
        muts = []
        if closed is not None:
            muts += [Mutation(plan_path(f"{m.name}#{s}") + "/until_ms", "set", closed.end_ms)
                     for s in closed.shards if f"{m.name}#{s}" in self.plans]
        fresh = new.last if new.last.id not in {g.id for g in gl.groups} else None
        if fresh is not None:
            try:
                muts += self._place_group(spec, fresh, now_s)
            except ValueError as exc:
                fail(str(exc))
                return
        self._group_txn(m.name, "truncate", raw, new, muts, (m, reply_to, fresh))

    def group_reply(self, kind: str, key: Any, r: AgencyReply) -> None:
        topic, new_json, muts, extra = key
        self.group_busy.discard(topic)
        ok = r.status == "ok" and isinstance(r.result, dict) and r.result.get("ok")
        if not ok:
            self.records.append(("groups.txn_failed", {"topic": topic, "step": kind, "status": r.status}))
            self.group_lists.pop(topic, None)  # re-read before trying again
            self.groups_loaded_s = -1e9
            if kind == "truncate":
                m, reply_to, _ = extra
                status = "unknown" if r.status == "unknown" else "fail"
                self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, status,
                                                               error="the shard groups changed; retry")))
            return
        self.group_lists[topic] = new_json
        from actors.supervisor import Plan

        created = [mu for mu in muts if mu.kind == "set" and isinstance(mu.value, dict)]
        for mu in created:
            shard = topic + "#" + mu.path.rpartition("/")[2]
            reps = tuple(mu.value["replicas"])
            self.plans[shard] = Plan(1, reps[0], reps)
            for n in reps:
                self._to_replica(shard, n, Assign(shard, 1, reps[0], reps))
        gl = GroupList.from_json(new_json)
        if kind == "create":
            g = extra
            self.records.append(("groups.created", {"topic": topic, "group": g.id, "start_ms": g.start_ms,
                                                    "end_ms": g.end_ms, "shards": list(g.shards)}))
        elif kind == "drop":
            for g, why in zip(*extra):
                for s in g.shards:
                    self.plans.pop(f"{topic}#{s}", None)
                    self.plan_since.pop(f"{topic}#{s}", None)
                    self.failovers.pop(f"{topic}#{s}", None)
                self.records.append(("groups.dropped", {"topic": topic, "group": g.id, "start_ms": g.start_ms,
                                                        "end_ms": g.end_ms, "shards": list(g.shards),
                                                        "at_ms": self.wall_ms, "by": why}))
        else:
            m, reply_to, fresh = extra
            cur = gl.current(self.wall_ms) if gl is not None else None
            self.records.append(("groups.truncated", {"topic": topic, "at_ms": self.wall_ms,
                                                      "new_group": cur.id if cur is not None else None}))
            shards = tuple(f"{topic}#{s}" for s in (cur.shards if cur is not None else ()))
            self.out.append(("reply", reply_to, TopicReply(m.client, m.req_id, "ok", shards)))
