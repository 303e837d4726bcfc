"""ReplicaSpawner: creates a node's ShardReplica processes (production).

RocksDB is not fork-safe.  Its background threads (memtable flushes,
compactions) do not exist in a child forked from a process that has used
RocksDB, while the inherited thread-pool state says they do: the child's
flushes are queued for threads that are gone, and once its memtables are
full (128 MiB with the defaults) every write blocks for good.  Thespian
forks each actor from its parent, and the NodeActor, the replicas' parent,
keeps the hinted-handoff queue in RocksDB.  So in production the NodeActor
creates this actor first, before it opens any database, and has it create
every replica: the replicas are forked from a process that never touched
RocksDB.  It only creates actors and passes on their exits; it holds no
state the node does not hold too.

The simulator has no processes to fork: there the NodeActor creates its
replicas itself (``host.spawns_replicas_apart`` is not set).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from thespian.actors import ChildActorExited

from actors.base import ChorusActor
from actors.shard_replica import ShardReplica
from protocol.node import ReplicaExited, ReplicaSpawned, SpawnReplica


class ReplicaSpawner(ChorusActor):
    def __init__(self) -> None:
        super().__init__()
        self.node: Any = None  # the NodeActor that asks (the only one)

    def on_SpawnReplica(self, msg: SpawnReplica, sender: Any) -> None:
        self.node = sender
        addr = self.createActor(ShardReplica)
        b = msg.boot
        addresses = tuple(sorted(b.addresses + ((b.node_id, addr),), key=lambda kv: kv[0]))
        self.send(addr, replace(b, addresses=addresses))
        self.send(sender, ReplicaSpawned(b.shard, addr))

    def on_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self.node is not None:
            self.send(self.node, ReplicaExited(msg.childAddress))
