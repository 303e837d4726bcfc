"""The production host: real clocks, a real RNG and RocksDB stores."""
from __future__ import annotations

import gc
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from protocol.host import HostConfig
from storage.rocks import RocksStore

log = logging.getLogger("chorus")
actor_log = logging.getLogger("chorus.actor")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class ProductionHost:
    # RocksDB is not fork-safe: the NodeActor has its replicas created by a
    # child forked before it opens a database (actors/replica_spawner.py)
    spawns_replicas_apart = True

    def __init__(self, config: HostConfig) -> None:
        self.node_id = config.node_id
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "big")
        self.rng = random.Random(seed)
        self.pid = os.getpid()
        self._stores: dict[str, RocksStore] = {}
        # scenario runs on real processes (runtime/realsim.py) collect the
        # checkers' observations from every actor process of every node
        from runtime.recordfile import RecordFile

        self._records = RecordFile.from_env(config.node_id)
        # this process's loggers write to its Thespian logger process (actors.log), not
        # to the launcher's stderr; every record names the node
        from runtime.logfmt import adopt_forwarding, set_process_fields

        adopt_forwarding()
        set_process_fields(node=config.node_id)
        # Everything the process holds by now -- imported modules, the
        # transport's state, some 40,000 objects -- lives as long as the
        # process: keep it out of the collector's full passes, each of which
        # would otherwise scan it all (10 ms on an idle core, 30-50 ms seen
        # as an end-to-end latency spike on a busy one).
        gc.freeze()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def open_store(self, name: str) -> RocksStore:
        store = self._stores.get(name)
        if store is None:
            safe = name.replace("/", "_")
            store = RocksStore(str(self.data_dir / safe))
            self._stores[name] = store
        return store

    def remove_store(self, name: str) -> None:
        """Delete store ``name``'s database from disk (one RocksDB database
        per store: the space is given back at once).  Only for a store no
        process has open (the NodeActor calls it once a dropped shard's
        replica has exited)."""
        import shutil

        store = self._stores.pop(name, None)
        if store is not None:
            store.close()
        shutil.rmtree(self.data_dir / name.replace("/", "_"), ignore_errors=True)

    def open_bridge(self, listen: Any, *, node_id: str, cluster_id: str) -> Any:
        """The Dispatcher's socket bridge: servers in an I/O thread of this process."""
        from runtime.bridge import IOBridge

        self._bridge = IOBridge(listen, node_id=node_id, cluster_id=cluster_id).start()
        return self._bridge

    def open_mqtt_listener(self, listen: Any) -> Any:
        """The MqttFront's listener: an MQTT server in an I/O thread of this process."""
        from runtime.mqtt_listener import MqttListener

        self._mqtt = MqttListener(listen).start()
        return self._mqtt

    def serving(self, actor: str) -> None:
        """The actor this process runs: every log line of the process names it."""
        from runtime.logfmt import set_process_fields

        set_process_fields(actor=actor)
        if self._records is not None:
            self._records.actor = actor

    def record(self, kind: str, /, **fields: Any) -> None:
        log.debug("%s %s %s", self.node_id, kind, fields)
        if self._records is not None:
            self._records.write(self.node_id, kind, fields)

    def log(self, level: str, msg: str, /, **fields: Any) -> None:
        """One structured line (runtime/logfmt.py) in the node's actors.log."""
        lvl = _LEVELS.get(level, logging.INFO)
        if actor_log.isEnabledFor(lvl):
            actor_log.log(lvl, "%s", msg, extra={"kv": {"node": self.node_id, **fields}})

    @property
    def records_wanted(self) -> bool:
        """Whether ``record`` writes anything (debug logging is on): an actor
        may skip its per-message records when not -- building their fields
        costs more than the rest of a small message's path."""
        return log.isEnabledFor(logging.DEBUG)


def make_host(config: HostConfig) -> ProductionHost:
    return ProductionHost(config)
