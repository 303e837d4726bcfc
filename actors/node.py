"""NodeActor: a node's host for shard replicas and its request coordinator.

* Every ``poll_s`` it reads the shard plans from its local agency peer (a
  local, non-linearizable read: cheap) and creates a ShardReplica child for
  every shard whose plan places a replica on this node -- so topics created
  at run time and replacement followers on spare nodes come to life here.
* When it creates a replica it tells every node and supervisor where it
  lives (``ReplicaAddress``); nodes pass addresses on to their local
  replicas of the same shard.  At boot it says ``NodeHello`` to every node,
  and each answers with its own replicas' addresses.
* It heartbeats to every supervisor (node liveness, used to pick spares).
* A ``Produce`` at level ``any`` is coordinated here with hinted handoff
  (actors/node_handoff.py): a write whose leader is unreachable is kept
  in a durable queue and drained to the leader later.
* Any node coordinates any request: ``Produce``, ``Subscribe`` and
  ``ReadShard`` for a shard go to the replica of the planned leader (local
  when it is here, else through the leader's node), answering to the
  original sender; ``CreateTopic`` goes to the local supervisor, which
  forwards it to the active one.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited

from actors.base import ChorusActor
from actors.node_handoff import NodeHandoff
from actors.replica_spawner import ReplicaSpawner
from actors.shard_replica import ShardReplica
from actors.supervisor import PLAN_ROOT, walk_plans
from actors.supervisor_groups import walk_lists
from protocol.groups import GROUPS_ROOT, GroupList
from protocol.agency import AgencyReply, AgencyRequest, Read
from protocol.consume import Subscribe, SubscribeReply
from protocol.node import (
    AlterTopic,
    CreateTopic,
    DeleteTopic,
    NodeBoot,
    NodeHeartbeat,
    NodeHello,
    PeersAre,
    ReplicaAddress,
    ReplicaExited,
    ReplicaSpawned,
    Routed,
    ShardInfo,
    SpawnReplica,
    TopicReply,
)
from protocol.query import QueryShard, QueryShardReply
from protocol.shard import (
    GroupClose,
    Produce,
    ProduceReply,
    ReadShard,
    ReadShardReply,
    ShardBoot,
    ShardStatusReply,
    SupervisorsAre,
)

REPLICAS_MAX = 10_000
SWEEP_IDS_MAX = 100_000  # shard ids of dropped groups a booting node looks for, per topic


def _places(plan: dict, node: str) -> bool:
    """Whether a shard plan puts a replica (voter or learner) on ``node``."""
    return node in plan.get("replicas", ()) or node in plan.get("learners", ())


class NodeActor(ChorusActor, NodeHandoff):
    def __init__(self) -> None:
        super().__init__()
        self.boot: NodeBoot | None = None
        self.local: dict[str, Any] = {}  # shard -> ShardReplica address
        self.known: dict[tuple[str, str], Any] = {}  # (shard, node) -> address
        self.plans: dict[str, dict] = {}
        self.until: dict[str, int] = {}  # shard -> until_ms its local replica was told
        self.swept = False  # deleted what groups dropped while this node was down
        self.dropping: list[tuple[Any, str]] = []  # (replica address, shard) of dropped shards' exiting replicas
        self.gen = 0
        self.seq = 0
        self.req = 0
        self.revision = 0
        self.node_addrs: dict[str, Any] = {}  # node -> NodeActor address (hellos may come before our boot)
        self.sups: list[Any] = []
        self.spawner: Any = None  # production: the ReplicaSpawner that creates the replicas
        self.spawning: set[str] = set()  # shards whose replica the spawner is creating
        self.exiting = False

    def on_NodeBoot(self, msg: NodeBoot, sender: Any) -> None:
        if self.boot is not None:
            return
        if msg.host is not None:
            self.adopt_host_config(msg.host)
        self.boot = msg
        self.node_addrs = dict(msg.nodes)
        self.sups = list(msg.supervisors)
        self.client = f"node-{msg.node_id}-{self.rng.getrandbits(48):012x}"
        for node in sorted(self.node_addrs):
            if node != msg.node_id:
                self.send(self.node_addrs[node], NodeHello(msg.node_id, ()))
        if getattr(self.host, "spawns_replicas_apart", False):
            # before any database is opened here (actors/replica_spawner.py)
            self.spawner = self.createActor(ReplicaSpawner)
        self._hh_boot()
        self._poll()

    def _poll(self) -> None:
        self.req += 1
        self.send(self.boot.agency, AgencyRequest(self.client, self.req, Read((PLAN_ROOT, GROUPS_ROOT),
                                                                             linearizable=False)))
        self.seq += 1
        hb = NodeHeartbeat(self.boot.node_id, self.seq)
        for sup in self.sups:
            self.send(sup, hb)
        self.gen += 1
        self.set_timer(self.boot.poll_s, ("poll", self.gen))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload == ("poll", self.gen):
            self._poll()
        elif self.boot is not None and msg.payload == ("hh", self.hh_gen):
            self._hh_tick()

    def on_AgencyReply(self, msg: AgencyReply, sender: Any) -> None:
        if msg.status != "ok" or not isinstance(msg.result, dict):
            return
        revision = msg.result.get("revision", 0)
        if revision < self.revision:
            return  # an older view (e.g. our agency peer is catching up after a restart)
        self.revision = revision
        values = list(msg.result["values"]) + [None]
        plans = dict(walk_plans(values[0] or {}))
        lists = walk_lists(values[1] or {})
        grouped = {t for t, _ in lists}
        if not self.swept and plans:
            self.swept = True
            self._sweep_dropped(lists)
        self.plans = plans
        me = self.boot.node_id
        for shard, plan in plans.items():
            if _places(plan, me) and shard not in self.local and shard not in self.spawning:
                if not any(s == shard for _, s in self.dropping):  # else once its old replica's data is gone
                    self._create(shard, plan)
            elif shard in self.local and plan.get("until_ms", -1) != self.until.get(shard, -1):
                self.until[shard] = plan.get("until_ms", -1)
                self.send(self.local[shard], GroupClose(shard, self.until[shard]))
        for shard in [s for s in self.local if s not in plans or not _places(plans[s], me)]:
            # the topic was deleted, its shard group dropped (past retention),
            # or a committed move took the replica away (the move removes a
            # source only once the target holds the log): stop the replica
            # and delete its data, giving the disk space back
            addr = self.local.pop(shard)
            self.until.pop(shard, None)
            if len(self.dropping) < REPLICAS_MAX:
                # its databases are deleted once its process has exited (on_ChildActorExited)
                self.dropping.append((addr, shard))
                self.record("node.replica_dropped", node=self.boot.node_id, shard=shard,
                            why="moved" if shard in plans else
                            "group dropped" if shard.rpartition("#")[0] in grouped else "topic deleted")
            self.send(addr, ActorExitRequest())
            self.known.pop((shard, self.boot.node_id), None)
            self.record("node.replica_stopped", node=self.boot.node_id, shard=shard)

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self.exiting = True  # Thespian stops the children (the spawner too) and then this actor

    def on_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self.spawner is not None and msg.childAddress == self.spawner and not self.exiting:
            # not replaced: a spawner forked from this process (which has
            # opened RocksDB by now) would fork replicas that stall
            self.log_event("error", "replica spawner exited; this node creates no more replicas until it restarts",
                           waiting=len(self.spawning))
            return
        self._replica_exited(msg.childAddress)

    def on_ReplicaExited(self, msg: ReplicaExited, sender: Any) -> None:
        self._replica_exited(msg.address)

    def _replica_exited(self, address: Any) -> None:
        """A stopped replica has exited (its databases are closed): delete
        them, giving the disk space back."""
        for i, (addr, shard) in enumerate(self.dropping):
            if addr == address:
                del self.dropping[i]
                for name in (f"shard/{shard}", f"shard/{shard}.meta"):
                    self.host.remove_store(name)
                self.record("node.shard_data_deleted", node=self.boot.node_id, shard=shard)
                plan = self.plans.get(shard)
                if plan is not None and shard not in self.local and shard not in self.spawning \
                        and _places(plan, self.boot.node_id):
                    self._create(shard, plan)  # placed here again meanwhile: starts empty
                return

    def _sweep_dropped(self, lists: list) -> None:
        """Once after boot: delete the databases of shards whose group was
        dropped while this node was down (ids below the oldest live group's,
        which are never used again)."""
        for topic, raw in lists:
            gl = GroupList.from_json(raw)
            if gl is None or not gl.groups:
                continue
            live = set(gl.shard_ids())
            for sid in range(max(0, min(live) - SWEEP_IDS_MAX), min(live)):
                for name in (f"shard/{topic}#{sid}", f"shard/{topic}#{sid}.meta"):
                    self.host.remove_store(name)

    def _create(self, shard: str, plan: dict) -> None:
        if len(self.local) + len(self.spawning) >= REPLICAS_MAX:
            return
        b = self.boot
        self.until[shard] = int(plan.get("until_ms", -1))
        boot = ShardBoot(shard, b.node_id, tuple(plan["replicas"]), (), int(plan["epoch"]),
                         plan.get("leader") or None, b.tuning, b.host, tuple(self.sups), self.until[shard],
                         tuple(plan.get("learners", ())))
        if self.spawner is not None:
            self.spawning.add(shard)  # the spawner adds the new replica's own address
            self.send(self.spawner, SpawnReplica(replace(boot, addresses=self._peers(shard, others=True))))
            return
        self._created(shard, self.createActor(ShardReplica), boot)

    def on_ReplicaSpawned(self, msg: ReplicaSpawned, sender: Any) -> None:
        """The spawner created a replica (it has sent it its ShardBoot); one
        the plans no longer place here is stopped by the next poll."""
        if msg.shard in self.spawning:
            self.spawning.discard(msg.shard)
            self._created(msg.shard, msg.address)
            for node, addr in self._peers(msg.shard, others=True):  # addresses heard of meanwhile
                self.send(msg.address, ReplicaAddress(msg.shard, node, addr))

    def _created(self, shard: str, addr: Any, boot: ShardBoot | None = None) -> None:
        """Adopt a new replica; ``boot`` is sent to it first (the spawner
        sent it already otherwise)."""
        b = self.boot
        self.local[shard] = addr
        self.known[(shard, b.node_id)] = addr
        if boot is not None:
            self.send(addr, replace(boot, addresses=self._peers(shard)))
        note = ReplicaAddress(shard, b.node_id, addr)
        for node in sorted(self.node_addrs):
            if node != b.node_id:
                self.send(self.node_addrs[node], note)
        for sup in self.sups:
            self.send(sup, note)
        self.record("node.replica_created", node=b.node_id, shard=shard)

    def _peers(self, shard: str, others: bool = False) -> tuple[tuple[str, Any], ...]:
        """(node, address) of every known replica of ``shard``, by node id
        (``others``: not this node's)."""
        return tuple((n, a) for (s, n), a in sorted(self.known.items(), key=lambda kv: kv[0])
                     if s == shard and not (others and n == self.boot.node_id))

    def on_ReplicaAddress(self, msg: ReplicaAddress, sender: Any) -> None:
        self.known[(msg.shard, msg.node)] = msg.address
        local = self.local.get(msg.shard)
        if local is not None:
            self.send(local, msg)

    def on_NodeHello(self, msg: NodeHello, sender: Any) -> None:
        self.node_addrs[msg.node] = sender  # a restarted node has new addresses
        for shard, addr in msg.replicas:
            self.on_ReplicaAddress(ReplicaAddress(shard, msg.node, addr), sender)
        if not msg.reply and self.boot is not None:
            mine = tuple(sorted(self.local.items()))
            self.send(sender, NodeHello(self.boot.node_id, mine, reply=True))

    def on_PeersAre(self, msg: PeersAre, sender: Any) -> None:
        """The launcher's directory (production): adopt every node's current
        addresses and tell the local supervisor and replicas."""
        if self.boot is None:
            return
        changed_sups = False
        sups = []
        for ep in msg.nodes:
            if ep.node is not None:
                if ep.node_id != self.boot.node_id and not self.node_addrs.get(ep.node_id) == ep.node:
                    self.node_addrs[ep.node_id] = ep.node
                    self.send(ep.node, NodeHello(self.boot.node_id, tuple(sorted(self.local.items()))))
            if ep.supervisor is not None:
                sups.append(ep.supervisor)
        if sups and (len(sups) != len(self.sups) or any(not a == b for a, b in zip(sups, self.sups))):
            self.sups = sups
            changed_sups = True
        if changed_sups:
            note = SupervisorsAre(tuple(sups), replace=True)
            for addr in self.local.values():
                self.send(addr, note)
        if self.boot.supervisor is not None:
            self.send(self.boot.supervisor, msg)

    # --------------------------------------------------------- coordination
    def _route(self, shard: str, hint: str | None = None) -> Any:
        """Address to forward a shard request to, or None if unknown.

        A local replica comes first: it learns a new leader at once (Assign,
        Push), so it either serves the request or names the current leader,
        where the plan read from the agency may be up to ``poll_s`` old."""
        local = self.local.get(shard)
        if local is not None and (hint is None or hint == self.boot.node_id):
            return local
        plan = self.plans.get(shard)
        leader = hint or (plan.get("leader") if plan else None)
        if not leader:
            return None
        if leader == self.boot.node_id:
            return self.local.get(shard)
        return self.known.get((shard, leader)) or self.node_addrs.get(leader)

    def _forward(self, msg: Any, sender: Any, refusal: Any, hint: str | None = None) -> None:
        """Forward a shard request to its leader, answering to the original
        sender; ``refusal(error)`` builds the answer when no leader is known."""
        to = msg.reply_to or sender
        target = self._route(msg.shard, hint) if self.boot else None
        if target is None:
            self.send(to, refusal(f"no leader known for shard {msg.shard}"))
            return
        self.send(target, replace(msg, reply_to=to))

    def on_Produce(self, msg: Produce, sender: Any, hint: str | None = None) -> None:
        if self._hh_takes(msg):
            self._hh_produce(msg, sender)  # level any: this node coordinates (actors/node_handoff.py)
            return
        self._forward(msg, sender, lambda err: ProduceReply(msg.shard, msg.client, msg.req_id, "fail", error=err),
                      hint)

    def on_Subscribe(self, msg: Subscribe, sender: Any, hint: str | None = None) -> None:
        self._forward(msg, sender, lambda err: SubscribeReply(msg.shard, msg.subscription, msg.consumer, "fail",
                                                              error=err), hint)

    def on_ReadShard(self, msg: ReadShard, sender: Any, hint: str | None = None) -> None:
        self._forward(msg, sender, lambda err: ReadShardReply(msg.shard, msg.client, msg.req_id, "fail", error=err),
                      hint)

    def on_QueryShard(self, msg: QueryShard, sender: Any, hint: str | None = None) -> None:
        """A history query's read, to the replica on node ``hint`` (any
        replica serves it; the leader when no hint)."""
        self._forward(msg, sender, lambda err: QueryShardReply(msg.shard, msg.client, msg.req_id, "fail",
                                                               error=err), hint)

    def on_Routed(self, msg: Routed, sender: Any) -> None:
        handler = {Produce: self.on_Produce, ReadShard: self.on_ReadShard, Subscribe: self.on_Subscribe,
                   ShardInfo: self.on_ShardInfo, QueryShard: self.on_QueryShard}.get(type(msg.inner))
        if handler is not None:
            handler(msg.inner, sender, msg.leader)

    def on_ShardInfo(self, msg: ShardInfo, sender: Any, hint: str | None = None) -> None:
        self._forward(msg, sender, lambda err: ShardStatusReply(msg.shard, self.boot.node_id if self.boot else "",
                                                                {"error": err}), hint)

    def _to_supervisor(self, msg: CreateTopic | AlterTopic | DeleteTopic, sender: Any) -> None:
        to = msg.reply_to or sender
        if self.boot is None or self.boot.supervisor is None:
            self.send(to, TopicReply(msg.client, msg.req_id, "fail", error="node is starting"))
            return
        self.send(self.boot.supervisor, replace(msg, reply_to=to))

    on_CreateTopic = on_AlterTopic = on_DeleteTopic = on_TruncateShards = _to_supervisor
