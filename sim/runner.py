"""Run a scenario for one seed and judge it.

A run has two phases (after TigerBeetle's VOPR):

1. safety, ``duration_s`` long: the workload runs while the fault schedule
   fires;
2. liveness, ``settle_s`` long: every fault is undone (partitions healed,
   paused nodes resumed, crashed nodes restarted, the network calmed).
   Clients keep working for the first half and stop for the second, and
   the cluster must converge: one leader, every peer's applied index equal
   to the leader's commit index, and some operation completed during it.

Then the checkers run over the recorded history.  The same seed gives the
same trace hash; every failure carries the command that replays it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from thespian.actors import ActorAddress

from actors.raft_core import LEADER
from actors.raft_peer import RaftPeer
from protocol.raft import RaftBoot
from sim.checkers import (
    committed_never_change,
    election_safety,
    leader_completeness,
    log_matching,
    state_machine_safety,
)
from sim.history import FinalLog, Op, Violation
from sim.linearizability import check_many
from sim.options import SimOptions
from sim.scenario import Fault, Scenario
from sim.workload import AgencyClient, ClientBoot
from sim.world import World

BUG_FLAGS = {"double_vote", "commit_old_terms", "ack_before_sync"}
LIVENESS_LAG_S = 1.0  # with a busy agency at the end (shard groups), peers may trail the last second


@dataclass
class RunResult:
    scenario: str
    seed: int
    trace_hash: str
    violations: dict[str, list[Violation]]
    ops: dict[str, int]
    leaders: list[tuple[float, str, int]]
    faults: list[tuple[float, str]]
    events: int
    sim_seconds: float
    wall_seconds: float
    commit_latency_ms: list[float] = field(default_factory=list)
    failover_s: list[float] = field(default_factory=list)
    produce_latency_ms: list[float] = field(default_factory=list)
    data_stats: dict = field(default_factory=dict)
    mqtt_stats: dict = field(default_factory=dict)
    commits: int = 0
    replay: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not any(self.violations.values())

    def failed_checks(self) -> list[str]:
        out = [k for k, v in self.violations.items() if v]
        return out + (["crashed"] if self.error else [])


def peer_ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def client_ids(n: int) -> list[str]:
    return [f"c{i}" for i in range(1, n + 1)]


class Harness:
    """Builds the simulated cluster and carries out a scenario's faults."""

    def __init__(self, scn: Scenario, seed: int, trace_path: str | None = None) -> None:
        self.scn = scn
        self.seed = seed
        import random

        self.rng = random.Random(f"harness:{seed}")
        opts = SimOptions.swarm(random.Random(f"swarm:{seed}")) if scn.swarm else SimOptions()
        opts = opts.with_overrides(**scn.network)
        self.base_options = opts
        self.world = World(seed, opts, trace_path=trace_path)
        self.peers = peer_ids(scn.peers)
        self.clients = client_ids(scn.workload.clients)
        self.fault_log: list[tuple[float, str]] = []
        self.down: set[str] = set()
        self.paused: set[str] = set()
        for n in self.peers + self.clients:
            self.world.add_node(n)
        addrs = tuple((p, ActorAddress(f"{p}/raft")) for p in self.peers)
        for p in self.peers:
            boot = RaftBoot(p, addrs, voters=tuple(self.peers), tuning=scn.tuning)
            addr = self.world.spawn(p, RaftPeer, "raft", boot)
            assert addr == dict(addrs)[p]
        self.shards: list[str] = []
        self.producers: list[str] = []
        self.leader_crashes: list[tuple[float, str, list[str]]] = []
        if scn.data is not None:
            self._build_data_plane(scn, addrs)
            if "moves_keep_majority" in scn.checks or "moves_in_sync" in scn.checks:
                from sim.movechecks import MoveProbe, Observed

                self.move_probe = MoveProbe(self._replica_log)
                self.world.history = Observed(self.world.history, self.move_probe)
        self.mqtt_clients: list[str] = []
        if scn.mqtt is not None:
            self._build_mqtt(scn, addrs)
        wl = scn.workload
        for c in self.clients:
            boot = ClientBoot(
                c, addrs, keys=wl.keys, rate_per_s=wl.rate_per_s, read_ratio=wl.read,
                write_ratio=wl.write, timeout_s=wl.timeout_s,
                stop_after_s=scn.duration_s + scn.settle_s / 2,
            )
            self.world.spawn(c, AgencyClient, "client", boot)

    # ------------------------------------------------------------ data plane
    def _build_data_plane(self, scn: Scenario, agency_addrs: tuple) -> None:
        from dataclasses import replace as dc_replace

        from actors.node import NodeActor
        from actors.supervisor import Supervisor, SupervisorBoot
        from protocol.node import CreateTopic, NodeBoot
        from protocol.shard import ShardBugs, ShardTuning
        from sim.consumer import ConsumerBoot, ShardConsumer
        from sim.producer import ProducerBoot, ShardProducer

        d = scn.data
        bugs = scn.shard_bugs or ShardBugs()
        tuning = dc_replace(ShardTuning(**{"group_commit_ms": 2.0, **d.tuning}), bugs=bugs)
        agency = dict(agency_addrs)
        sups = tuple((n, ActorAddress(f"{n}/supervisor")) for n in self.peers)
        node_addrs = tuple((n, ActorAddress(f"{n}/node")) for n in self.peers)
        for n in self.peers:
            self.world.spawn(n, Supervisor, "supervisor", SupervisorBoot(
                n, agency[n], sups, tuple(self.peers), grace_s=d.grace_s, bugs=bugs))
            self.world.spawn(n, NodeActor, "node", NodeBoot(
                n, agency[n], node_addrs, tuple(a for _, a in sups), dict(sups)[n], tuning))
        self.shards = [f"{t.name}#{i}" for t in d.topics for i in range(t.shards)]
        for i, t in enumerate(d.topics, start=1):
            spec = {"name": t.name, "shards": t.shards, "replication_factor": t.replication_factor}
            if t.shard_group_ms is not None:
                spec.update(shard_group_ms=t.shard_group_ms, retention_ms=t.retention_ms)
                if t.retention_bytes is not None:
                    spec["retention_bytes"] = t.retention_bytes
            req = CreateTopic("harness", i, spec)
            # any node takes it; repeat until the agency and supervisor are up (idempotent: absent precondition)
            for k, at in enumerate((1.0, 2.0, 3.0, 5.0)):
                self.world.at(at, lambda req=req, k=k: self.world.send(node_addrs[k % len(node_addrs)][1], req),
                              f"create topic {t.name}")
        routes = tuple((s, node_addrs) for s in self.shards)
        grouped = d.topics[0].shard_group_ms is not None
        self.grouped_topic = d.topics[0].name if grouped else None
        raft_addrs = tuple(a for _, a in agency_addrs) if grouped else ()
        if grouped:  # the producers write to the first topic's current group
            self.shards = [s for s in self.shards if not s.startswith(d.topics[0].name + "#")]
        for i, p in enumerate(self.producers_for(d), start=1):
            self.world.add_node(p)
            boot = ProducerBoot(p, 1000 + i, () if grouped else routes, topic=d.topics[0].name, agency=raft_addrs,
                                refresh_s=1e9,  # like a client: re-read the groups when a write is refused
                                nodes=node_addrs, rate_per_s=d.rate_per_s,
                                records_per_batch=d.records_per_batch, level=d.level[(i - 1) % len(d.level)],
                                timeout_s=d.timeout_s, pad_bytes=d.record_pad_bytes,
                                stop_after_s=scn.duration_s + scn.settle_s / 2)
            self.world.spawn(p, ShardProducer, "producer", boot)
        if d.truncate_every_s > 0:
            self._schedule_truncates(d, node_addrs)
        from sim.querier import QuerierBoot, ShardQuerier

        for k in range(1, d.queriers + 1):
            node = f"query-{k}"
            self.world.add_node(node)
            t = d.topics[0]
            self.world.spawn(node, ShardQuerier, "querier", QuerierBoot(
                node, t.name, t.shards, node_addrs, every_s=d.query_every_s, limit=d.query_limit, agency=raft_addrs,
                stop_after_s=scn.duration_s + 0.5 * scn.settle_s))
        self.consumers: list[str] = []
        walk_bug = next((b for b in ("skip_next_group", "reset_to_newest") if getattr(bugs, b)), "")
        for name, mode, count, nack, pause in d.subscriptions:
            for k in range(1, count + 1):
                node = f"{name}-c{k}"
                self.world.add_node(node)
                self.consumers.append(node)
                # a topic with shard groups: the consumer walks the first topic's groups
                boot = ConsumerBoot(node, name, mode, () if grouped else routes, nack_ratio=nack,
                                    stop_after_s=scn.duration_s + 0.8 * scn.settle_s,
                                    topic=d.topics[0].name if grouped else "", indices=d.topics[0].shards,
                                    agency=raft_addrs, nodes=node_addrs, walk_bug=walk_bug, pause_s=pause)
                self.world.spawn(node, ShardConsumer, "consumer", boot)

    def _schedule_truncates(self, d, node_addrs: tuple) -> None:
        """truncate-shards of the first topic, sent to a random node, at
        exponential intervals until the faults end."""
        from protocol.node import TruncateShards

        t, k = 5.0, 0
        while True:
            t += self.rng.expovariate(1.0 / d.truncate_every_s)
            if t >= self.scn.duration_s:
                return
            k += 1
            req = TruncateShards("harness", 1000 + k, d.topics[0].name)
            addr = node_addrs[self.rng.randrange(len(node_addrs))][1]
            self.world.at(t, lambda req=req, addr=addr: self.world.send(addr, req), "truncate-shards")

    # ------------------------------------------------------------------ MQTT
    def _build_mqtt(self, scn: Scenario, agency_addrs: tuple) -> None:
        """An MqttFront on every node (next to its agency peer, and its
        supervisor when the data plane runs), MQTT clients on nodes of their
        own: publishers mp1.., subscribers ms1.."""
        from protocol.mqtt_cluster import MqttBoot, MqttBugs
        from sim.mqtt_client import MqttClient, MqttClientBoot, ObservedMqttFront

        m = scn.mqtt
        agency = dict(agency_addrs)
        fronts = tuple((n, ActorAddress(f"{n}/mqtt")) for n in self.peers)
        bugs = scn.mqtt_bugs or MqttBugs()
        for n in self.peers:
            sup = ActorAddress(f"{n}/supervisor") if scn.data is not None else None
            self.world.spawn(n, ObservedMqttFront, "mqtt", MqttBoot(
                n, agency[n], supervisor=sup, peers=fronts, tuning=m.tuning, bugs=bugs))
        names = [f"mp{i}" for i in range(1, m.publishers + 1)] + [f"ms{i}" for i in range(1, m.subscribers + 1)]
        stop = scn.duration_s + scn.settle_s / 2
        for i, c in enumerate(names):
            k = i % len(fronts)
            order = fronts[k:] + fronts[:k]
            if c.startswith("mp"):
                boot = MqttClientBoot(c, order, topics=m.topics, qos=m.qos, rate_per_s=m.rate_per_s,
                                      retain_ratio=m.retain_ratio, inflight_max=m.inflight_max,
                                      keepalive_s=m.keepalive_s, timeout_s=m.timeout_s,
                                      ack_timeout_s=m.ack_timeout_s, stop_after_s=stop)
            else:
                j = int(c[2:]) - 1
                qos = m.sub_qos[j % len(m.sub_qos)]
                boot = MqttClientBoot(c, order, filters=tuple((f, qos) for f in m.filters[j % len(m.filters)]),
                                      keepalive_s=m.keepalive_s, timeout_s=m.timeout_s,
                                      ack_timeout_s=m.ack_timeout_s)
            self.world.add_node(c)
            self.world.spawn(c, MqttClient, "mqtt", boot)
            self.mqtt_clients.append(c)

    def producers_for(self, d) -> list[str]:
        self.producers = [f"p{i}" for i in range(1, d.producers + 1)]
        return self.producers

    def replica(self, shard: str, node: str) -> Any:
        """The live ShardReplica instance of ``shard`` on ``node``, if any."""
        if not self.world.is_up(node):
            return None
        host = self.world.actor(f"{node}/node")
        addr = host.local.get(shard) if host is not None else None
        return self.world.actor(addr) if addr is not None else None

    def _replica_log(self, shard: str, node: str) -> list[bytes] | None:
        if not self.world.is_up(node):
            return None
        a = self.replica(shard, node)
        # a replica its restarted node has not started yet counts as down
        # (its log is on the disk; the durability checks judge it after the
        # heal), not as an empty log
        return a.core.all_batches() if a is not None and a.core is not None else None

    def _do_move(self, a: dict) -> None:
        from protocol.node import RequestMove

        shard = self.shards[a["shard"] % len(self.shards)]
        lead = self.shard_leader(shard)
        core = self.replica(shard, lead).core if lead else None
        if core is None:
            self._note(f"move {shard}: no leader now, skipped")
            return
        holders = set(core.replicas) | set(core.learners)
        frm = a["from"]
        if frm == "shard_leader":
            frm = lead
        elif frm == "shard_follower":
            cands = sorted(n for n in core.replicas if n != lead)
            frm = self.rng.choice(cands) if cands else None
        to = a["to"]
        if to == "spare":
            cands = sorted(n for n in self.peers if n not in holders and self.world.is_up(n))
            to = self.rng.choice(cands) if cands else None
        if frm is None or to is None:
            self._note(f"move {shard}: no source or target now, skipped")
            return
        self.move_seq = getattr(self, "move_seq", 0) + 1
        req = RequestMove("harness", self.move_seq, shard, frm, to)
        for n in self.peers:
            if self.world.is_up(n):
                self.world.send(f"{n}/supervisor", req)
        self._note(f"move {shard} {frm} -> {to}")

    def _do_drain(self, node: str) -> None:
        from protocol.node import RequestDrain

        self.move_seq = getattr(self, "move_seq", 0) + 1
        for n in self.peers:
            if self.world.is_up(n):
                self.world.send(f"{n}/supervisor", RequestDrain("harness", self.move_seq, node))
        self._note(f"drain {node}")

    def shard_leader(self, shard: str | None = None) -> str | None:
        """The node whose replica leads the shard in the highest epoch."""
        shard = shard or (self.shards[0] if self.shards else None)
        if shard is None:
            return None
        best: tuple[int, str] | None = None
        for n in self.peers:
            a = self.replica(shard, n)
            if a is not None and a.core is not None and a.core.role == "leader":
                if best is None or a.core.epoch > best[0]:
                    best = (a.core.epoch, n)
        return best[1] if best else None

    # ------------------------------------------------------------ queries
    def leader(self) -> str | None:
        best: tuple[int, str] | None = None
        for p in self.peers:
            if not self.world.is_up(p):
                continue
            a = self.world.actor(f"{p}/raft")
            if a is not None and a.core is not None and a.core.role == LEADER:
                if best is None or a.core.term > best[0]:
                    best = (a.core.term, p)
        return best[1] if best else None

    def _resolve(self, target: str) -> str | None:
        if target == "leader":
            return self.leader()
        if target == "shard_leader":
            return self.shard_leader()
        if target.startswith("shard_leader_not:"):
            # the leader of the first shard that ``node`` does not lead (e.g. one its writes must reach)
            node = target.split(":", 1)[1]
            return next((lead for lead in map(self.shard_leader, self.shards) if lead and lead != node), None)
        if target == "shard_follower":
            lead = self.shard_leader()
            core = self.replica(self.shards[0], lead).core if lead else None
            cands = sorted(n for n in (core.replicas if core else ()) if n != lead and self.world.is_up(n))
            return self.rng.choice(cands) if cands else None
        if target == "follower":
            lead = self.leader()
            cands = [p for p in self.peers if p != lead and self.world.is_up(p)]
            return self.rng.choice(cands) if cands else None
        if target == "random":
            return self.rng.choice(self.peers)
        if target not in self.world.nodes:
            raise ValueError(f"unknown node {target!r}")
        return target

    def _expand(self, groups: list[list[str]]) -> list[list[str]]:
        from sim.scenario import expand_groups

        return expand_groups(groups, self._resolve, list(self.world.nodes))

    # ------------------------------------------------------------- faults
    def schedule(self) -> None:
        if getattr(self, "grouped_topic", None):
            # the supervisor keeps writing the agency (group rollovers) up to
            # the end: liveness asks every peer to have applied what was
            # committed a second before the end, not the last moment's entry
            end = self.scn.duration_s + self.scn.settle_s
            self.world.at(end - LIVENESS_LAG_S, self._note_commit, "note the commit index")
        for f in self.scn.faults:
            if f.at_s is not None:
                self.world.at(f.at_s, self._firer(f), f"fault {f.do}")
            else:
                self._schedule_repeat(f, f.from_s or 0.0)

    def _note_commit(self) -> None:
        cores = [a.core for p in self.peers if (a := self.world.actor(f"{p}/raft")) is not None
                 and a.core is not None]
        self.commit_before_end = max((c.commit for c in cores), default=0)

    def _schedule_repeat(self, f: Fault, after: float) -> None:
        lo, hi = f.every_s
        t = after + self.rng.uniform(lo, hi)
        end = f.to_s if f.to_s is not None else self.scn.duration_s
        if t >= min(end, self.scn.duration_s):
            return

        def fire() -> None:
            self._firer(f)()
            self._schedule_repeat(f, t)

        self.world.at(t, fire, f"fault {f.do} (repeating)")

    def _firer(self, f: Fault) -> Callable[[], None]:
        def fire() -> None:
            undo = self.apply(f)
            if undo is not None and f.restore_after_s is not None:
                lo, hi = f.restore_after_s
                self.world.at(self.world.now + self.rng.uniform(lo, hi), undo, f"undo {f.do}")

        return fire

    def _note(self, text: str) -> None:
        self.fault_log.append((self.world.now, text))

    def apply(self, f: Fault) -> Callable[[], None] | None:
        w, a = self.world, f.args
        if f.do in ("crash", "restart", "pause", "resume", "clock", "clock_jump"):
            node = self._resolve(a["target"])
            if node is None:
                self._note(f"{f.do} {a['target']}: no such node now, skipped")
                return None
            return getattr(self, "_do_" + f.do)(node, a)
        if f.do == "partition":
            groups = self._expand(a["groups"])
            w.partition(*groups)
            self._note("partition " + " | ".join(",".join(g) for g in groups))
            return self._heal
        if f.do == "partition_oneway":
            src, dst = self._expand([a["from"], a["to"]])
            w.partition_oneway(src, dst)
            self._note(f"one-way {','.join(src)} -/-> {','.join(dst)}")
            return self._heal
        if f.do == "bridge":
            via = self._resolve(a["via"])
            sa, sb = self._expand([a["a"], a["b"]])
            sa = [n for n in sa if n != via]
            sb = [n for n in sb if n != via and n not in sa]
            if not sa or not sb:
                self._note(f"bridge {a['a']} <-{a['via']}-> {a['b']}: the sides are one node now, skipped")
                return None
            w.bridge(sa, sb, via)
            self._note(f"bridge {','.join(sa)} <-{via}-> {','.join(sb)}")
            return self._heal
        if f.do == "heal":
            self._heal()
            return None
        if f.do == "move":
            self._do_move(a)
            return None
        if f.do == "drain":
            node = self._resolve(a["target"])
            if node is not None:
                self._do_drain(node)
            return None
        if f.do == "network":
            w.set_network(**a["set"])
            self._note("network " + ", ".join(f"{k}={v}" for k, v in a["set"].items()))
            return self._calm
        if f.do == "network_reset":
            self._calm()
            return None
        raise AssertionError(f.do)

    def _do_crash(self, node: str, a: dict) -> Callable[[], None] | None:
        if node in self.down:
            return None
        led = [s for s in self.shards if self.shard_leader(s) == node]
        if led:
            self.leader_crashes.append((self.world.now, node, led))
        self.world.crash(node)
        self.down.add(node)
        self.paused.discard(node)
        self._note(f"crash {node}")
        return lambda: self._do_restart(node, {})

    def _do_restart(self, node: str, a: dict) -> None:
        if node not in self.down:
            return None
        self.world.restart(node)
        self.down.discard(node)
        self._note(f"restart {node}")
        return None

    def _do_pause(self, node: str, a: dict) -> Callable[[], None] | None:
        if node in self.paused or node in self.down:
            return None
        self.world.pause(node)
        self.paused.add(node)
        self._note(f"pause {node}")
        return lambda: self._do_resume(node, {})

    def _do_resume(self, node: str, a: dict) -> None:
        if node in self.paused:
            self.world.resume(node)
            self.paused.discard(node)
            self._note(f"resume {node}")
        return None

    def _do_clock(self, node: str, a: dict) -> Callable[[], None]:
        self.world.set_clock(node, offset_s=a.get("offset_s"), drift_ppm=a.get("drift_ppm"))
        self._note(f"clock {node} " + " ".join(f"{k}={v}" for k, v in a.items() if k != "target"))
        return lambda: self.world.set_clock(node, offset_s=0.0, drift_ppm=0.0)

    def _do_clock_jump(self, node: str, a: dict) -> None:
        self.world.clock_jump(node, a["delta_s"])
        self._note(f"clock jump {node} {a['delta_s']:+}s")
        return None

    def _heal(self) -> None:
        self.world.heal()
        self._note("heal")

    def _calm(self) -> None:
        self.world.set_network(**self.base_options.as_dict())
        self._note("network reset")

    def heal_all(self) -> None:
        self._heal()
        self._calm()
        for n in sorted(self.paused):
            self._do_resume(n, {})
        for n in sorted(self.down):
            self._do_restart(n, {})
        for p in self.peers:
            self.world.set_clock(p, drift_ppm=0.0)


def _ops(world: World) -> list[Op]:
    invokes: dict[tuple[str, int], Any] = {}
    ops = []
    for r in world.history:
        if r.kind == "op.invoke":
            invokes[(r.fields["client"], r.fields["op_id"])] = r
        elif r.kind == "op.done":
            inv = invokes.pop((r.fields["client"], r.fields["op_id"]), None)
            if inv is None:
                continue
            f = inv.fields
            status = r.fields["status"]
            ops.append(Op(
                client=f["client"], op_id=f["op_id"], kind=f["kind"], key=f["key"], value=f["value"],
                expected=f["expected"], invoke_t=inv.t,
                return_t=r.t if status != "unknown" else None, status=status, result=r.fields["result"],
            ))
    for inv in invokes.values():  # still in flight at the end: unknown outcome
        f = inv.fields
        ops.append(Op(client=f["client"], op_id=f["op_id"], kind=f["kind"], key=f["key"], value=f["value"],
                      expected=f["expected"], invoke_t=inv.t, return_t=None, status="unknown"))
    return ops


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values; 0.0 for none."""
    vals = sorted(values)
    return vals[min(len(vals) - 1, max(0, int(round(p / 100 * (len(vals) - 1)))))] if vals else 0.0


def failover_times(h: Harness) -> list[float]:
    """For each crash of a shard leader's node: seconds until the first
    write acknowledged on each shard it led (None-free: shards that never
    recovered within the run are reported by the data_liveness check)."""
    done = [(r.t, r.fields["shard"]) for r in h.world.history
            if r.kind == "produce.done" and r.fields["status"] == "ok"]
    out = []
    for t, _node, shards in h.leader_crashes:
        for s in shards:
            nxt = next((td for td, sd in done if sd == s and td > t), None)
            if nxt is not None:
                out.append(nxt - t)
    return out


def produce_latencies(h: Harness) -> list[float]:
    inv: dict[tuple[str, str, int], float] = {}
    out = []
    for r in h.world.history:
        if r.kind == "produce.invoke":
            inv[(r.fields["producer"], r.fields["shard"], r.fields["seq"])] = r.t
        elif r.kind == "produce.done" and r.fields["status"] == "ok":
            t0 = inv.pop((r.fields["producer"], r.fields["shard"], r.fields["seq"]), None)
            if t0 is not None:
                out.append((r.t - t0) * 1000)
    return out


def replay_command(scn: Scenario, seed: int) -> str:
    bugs = [b for b in sorted(BUG_FLAGS) if getattr(scn.tuning.bugs, b)]
    if scn.shard_bugs is not None:
        bugs += [b for b in sorted(scn.shard_bugs.__dataclass_fields__) if getattr(scn.shard_bugs, b)]
    if scn.mqtt_bugs is not None:
        bugs += [b for b in sorted(scn.mqtt_bugs.__dataclass_fields__) if getattr(scn.mqtt_bugs, b)]
    extra = "".join(f" --bug {b}" for b in bugs)
    return f"brokerctl simulate {scn.path or scn.name} --seed {seed}{extra}"


def run(scn: Scenario, seed: int, trace_path: str | None = None) -> RunResult:
    t0 = time.perf_counter()
    h = Harness(scn, seed, trace_path)
    w = h.world
    h.schedule()
    error = ""
    try:
        w.run_until(scn.duration_s)
        h.heal_all()
        w.run_until(scn.duration_s + scn.settle_s)
    except Exception as exc:  # a crash of the harness itself is a failed run
        import traceback

        error = "".join(traceback.format_exception(exc))[-4000:]
    wall = time.perf_counter() - t0
    violations = judge(h, scn) if not error else {}
    ops = _ops(w)
    counts = {"ok": 0, "fail": 0, "unknown": 0}
    for o in ops:
        counts[o.status] = counts.get(o.status, 0) + 1
    leaders = [(r.t, r.fields["peer"], r.fields["term"]) for r in w.history if r.kind == "raft.leader"]
    lat = [((o.return_t or 0) - o.invoke_t) * 1000 for o in ops if o.status == "ok" and o.kind != "read"]
    result = RunResult(
        scenario=scn.name, seed=seed, trace_hash=w.trace_hash(), violations=violations, ops=counts,
        leaders=leaders, faults=h.fault_log, events=w.stats.get("events", 0),
        sim_seconds=scn.duration_s + scn.settle_s, wall_seconds=wall, commit_latency_ms=lat,
        commits=sum(1 for o in ops if o.status == "ok" and o.kind != "read"),
        replay=replay_command(scn, seed), error=error,
        failover_s=failover_times(h), produce_latency_ms=produce_latencies(h),
        data_stats=getattr(h, "data_stats", {}), mqtt_stats=getattr(h, "mqtt_stats", {}),
    )
    w.close()
    return result


def judge(h: Harness, scn: Scenario) -> dict[str, list[Violation]]:
    w = h.world
    records = w.history
    checks = set(scn.checks)
    out: dict[str, list[Violation]] = {}
    if w.errors:
        out["actor_errors"] = [
            Violation("actor_errors", f"{e.actor} raised {e.exc_type} on {e.msg_type} at t={e.t:.3f}s: {e.message}",
                      {"traceback": e.traceback[-1500:]})
            for e in w.errors[:5]
        ]
    if "election_safety" in checks:
        out["election_safety"] = election_safety(records)
    if "leader_completeness" in checks:
        out["leader_completeness"] = leader_completeness(records)
    if "state_machine_safety" in checks:
        out["state_machine_safety"] = state_machine_safety(records)
    if "committed_never_change" in checks:
        out["committed_never_change"] = committed_never_change(records)
    if "log_matching" in checks:
        logs = {}
        for p in h.peers:
            a = w.actor(f"{p}/raft")
            if a is not None and a.core is not None:
                si, st, entries = a.final_log()
                logs[p] = FinalLog(si, st, entries)
        out["log_matching"] = log_matching(logs)
    if "linearizability" in checks:
        out["linearizability"] = check_many(_ops(w))
    if "liveness" in checks:
        out["liveness"] = liveness(h, scn)
    if scn.data is not None:
        out.update(judge_data(h, scn, checks))
    if scn.mqtt is not None:
        out.update(judge_mqtt(h, scn, checks))
    return out


def judge_mqtt(h: Harness, scn: Scenario, checks: set[str]) -> dict[str, list[Violation]]:
    """The MQTT checks (sim/mqttchecks.py) over the history and every
    node's final route table, sessions and retained map, against the
    agency's (read from the leader's state machine)."""
    from protocol.agency import Read
    from protocol.mqtt_cluster import MQTT_ROOT
    from sim.mqttchecks import MqttFinal, check_mqtt

    w = h.world
    final = MqttFinal(end_t=w.now, leader=h.leader())
    if final.leader is not None:
        sm = w.actor(f"{final.leader}/raft").sm
        final.agency = (sm.read(Read((MQTT_ROOT,))).get("values") or [None])[0] or {}
    for n in h.peers:
        a = w.actor(f"{n}/mqtt")
        core = a.core if a is not None else None
        if core is None:
            final.nodes[n] = None
            continue
        final.nodes[n] = {
            "routes": {d: set(fs) for d, fs in core.routes.routes.items()},
            "loaded": core.routes_loaded,
            "filters": {f for s in core.sessions.values() for f in s.subs},
            "retained": dict(core.retained),
        }
    found, stats = check_mqtt(w.history, final, scn.mqtt.tuning, scn.duration_s,
                              [c for c in h.mqtt_clients if c.startswith("ms")])
    h.mqtt_stats = stats
    return {k: v for k, v in found.items() if k in checks}


def judge_data(h: Harness, scn: Scenario, checks: set[str]) -> dict[str, list[Violation]]:
    from sim.datachecks import check_data
    from sim.retentionchecks import live_group_shards

    w = h.world
    if getattr(h, "grouped_topic", None):  # the shards of the groups that exist at the end
        h.shards = sorted(set(h.shards) | set(live_group_shards(h, h.grouped_topic)))
    logs: dict[str, dict[str, list[bytes]]] = {}
    leaders: dict[str, tuple[str, int]] = {}
    for s in h.shards:
        logs[s] = {}
        lead = h.shard_leader(s)
        if lead is None:
            continue
        core = h.replica(s, lead).core
        leaders[s] = (lead, core.hw)
        for n in core.replicas:  # the current replica set (replacements included)
            a = h.replica(s, n)
            if a is not None and a.core is not None:
                logs[s][n] = a.core.all_batches()
            else:
                logs[s][n] = [b"<replica missing>"]
    found, stats = check_data(w.history, logs, leaders, [sd[0] for sd in scn.data.subscriptions])
    h.data_stats = stats
    out = {k: v for k, v in found.items() if k in checks}
    if "query_exact" in checks:
        from sim.querychecks import check_queries, committed

        final = {s: committed(logs[s][leaders[s][0]], leaders[s][1]) for s in h.shards if s in leaders}
        topic = scn.data.topics[0].name
        dropped = frozenset(int(s) for r in w.history if r.kind == "groups.dropped" and r.fields["topic"] == topic
                            for s in r.fields["shards"])
        out["query_exact"], stats["queries"] = check_queries(w.history, final, topic, dropped)
    if "moves_keep_majority" in checks:
        probe = getattr(h, "move_probe", None)
        out["moves_keep_majority"] = probe.violations[:20] if probe else []
        stats["move_steps_checked"] = probe.checked if probe else 0
    if "moves_in_sync" in checks:
        probe = getattr(h, "move_probe", None)
        out["moves_in_sync"] = probe.lagging[:20] if probe else []
    if "moves_settled" in checks:
        from protocol.agency import Read
        from sim.movechecks import check_settled

        lead = h.leader()
        agency: dict = {}
        plans: dict = {}
        if lead is not None:
            from actors.supervisor import PLAN_ROOT, walk_plans

            sm = w.actor(f"{lead}/raft").sm
            vals = sm.read(Read(("/chorus/moves", "/chorus/drain", PLAN_ROOT))).get("values") or [None, None, None]
            agency = {"moves": vals[0] or {}, "drain": vals[1] or {}}
            plans = dict(walk_plans(vals[2] or {}))
        rf = {f"{t.name}#{i}": t.replication_factor for t in scn.data.topics for i in range(t.shards)}
        found, mstats = check_settled(w.history, agency, rf, plans, [n for n in h.peers if w.is_up(n)])
        if lead is None:
            found.append(Violation("moves_settled", "no agency leader after the settle phase", {}))
        out["moves_settled"] = found
        stats.update(mstats)
    if "retention_safe" in checks or "dropped_data_removed" in checks:
        from sim.retentionchecks import check_retention

        found_r, stats["retention"] = check_retention(h, scn, leaders)
        out.update({k: v for k, v in found_r.items() if k in checks})
    if "groups_consumed" in checks and getattr(h, "grouped_topic", None):
        from sim.walkchecks import check_walk

        subs = [sd[0] for sd in scn.data.subscriptions]
        out["groups_consumed"], stats["consumption"] = check_walk(
            w.history, h.grouped_topic, scn.data.topics[0].shards, subs,
            {sd[0]: sd[1] for sd in scn.data.subscriptions})
    if "data_liveness" in checks:
        late = [r for r in w.history if r.kind == "produce.done" and r.t >= scn.duration_s
                and r.fields["status"] == "ok"]
        bad = [] if late or not h.producers else [
            Violation("data_liveness", "no write was acknowledged after the faults were healed", {})]
        for s in h.shards:
            if s not in leaders:
                bad.append(Violation("data_liveness", f"shard {s} has no leader after the settle phase", {}))
        out["data_liveness"] = bad
    return out


def liveness(h: Harness, scn: Scenario) -> list[Violation]:
    w = h.world
    bad: list[Violation] = []
    leader = h.leader()
    if leader is None:
        return [Violation("liveness", f"no leader {scn.settle_s}s after all faults were healed", {})]
    lc = w.actor(f"{leader}/raft").core
    target = min(lc.commit, getattr(h, "commit_before_end", lc.commit))
    for p in h.peers:
        a = w.actor(f"{p}/raft")
        if a is None or a.core is None:
            bad.append(Violation("liveness", f"peer {p} is not running after the settle phase", {}))
        elif a.core.applied < target or a.core.applied > lc.commit:
            bad.append(Violation(
                "liveness", f"peer {p} applied {a.core.applied} but leader {leader} committed {lc.commit}",
                {"peer": p, "applied": a.core.applied, "commit": lc.commit}))
    if scn.workload.clients and scn.settle_s > 0:
        start = scn.duration_s
        done = [r for r in w.history if r.kind == "op.done" and r.t >= start and r.fields["status"] == "ok"]
        if not done:
            bad.append(Violation("liveness", "no operation succeeded after the faults were healed", {}))
    return bad
