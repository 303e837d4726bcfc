"""The hosting contract: the base class every Chorus actor derives from.

An actor gets everything that is not pure logic from its *host*:

* ``host.monotonic()`` -- seconds on a clock that never goes backwards
  (use it for timeouts and leases);
* ``host.wall()`` -- seconds since the epoch; may jump (offsets, NTP steps),
  never use it for safety;
* ``host.rng`` -- a ``random.Random``-like object, seeded by the host;
* ``host.open_store(name)`` -- a :class:`storage.base.Store`, durable only
  after ``sync()``;
* ``host.record(kind, **fields)`` -- an observation for checkers (and the
  debug log);
* ``host.log(level, msg, **fields)`` -- one structured log line (level
  ``debug|info|warning|error``; the host adds node id and pid, the base
  class the actor's name; see docs/ARCHITECTURE.md, "Observability").
  Actors never import ``logging`` themselves: a logger created before
  Thespian forks an actor process would write to the launcher's stderr;
* ``host.node_id`` -- the name of the node the actor lives on;
* ``host.spawns_replicas_apart`` (optional, production) -- the NodeActor
  has a ReplicaSpawner create its replicas, so that no replica process is
  forked from one that has used RocksDB (actors/replica_spawner.py).

In the simulator the host is supplied by the simulated ``_myRef``
(attribute ``chorus_host``): the node's skewed virtual clock, an RNG derived
from the run seed and the actor's address, and the node's in-memory disk
with crash semantics.  In production the first message an actor receives
carries a :class:`protocol.host.HostConfig`; the base class then builds the
production host (real clocks, a real RNG, RocksDB) by importing
``runtime.host`` by name -- actors/ never imports runtime/ statically, so the
direction of dependencies stays runtime -> actors.

Actors never touch time, random, os.urandom, uuid, sockets, threads or
sleep themselves; ``tests/test_purity.py`` walks the AST of actors/ to keep
it so.

Messages are dispatched to ``on_<TypeName>(msg, sender)`` methods, resolved
once per (actor class, message type) along the message's MRO.
"""
from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any, Callable

from thespian.actors import Actor, WakeupMessage

from protocol.host import HostConfig


class ChorusActor(Actor):
    """Base class: host services, typed dispatch and generation-tagged timers."""

    _dispatch_cache: dict[type, Callable[..., Any] | None]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._dispatch_cache = {}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._host = None

    # ------------------------------------------------------------------ host
    @property
    def host(self) -> Any:
        if self._host is None:
            ref = getattr(self, "_myRef", None)
            sim_host = getattr(ref, "chorus_host", None)
            if sim_host is not None:
                self._host = sim_host
            else:
                raise RuntimeError(
                    f"{type(self).__name__} has no host yet: in production the "
                    "first message must carry a HostConfig"
                )
        return self._host

    def adopt_host_config(self, config: HostConfig) -> None:
        """Build the production host from a bootstrap message's HostConfig.

        Ignored when a host is already attached (the simulator's, or one
        built by an earlier bootstrap message)."""
        if self._host is not None:
            return
        ref = getattr(self, "_myRef", None)
        if getattr(ref, "chorus_host", None) is not None:
            self._host = ref.chorus_host
            return
        module = importlib.import_module(config.host_module)
        self._host = module.make_host(config)
        serving = getattr(self._host, "serving", None)
        if serving is not None:
            serving(type(self).__name__)

    def now(self) -> float:
        return self.host.monotonic()

    def wall(self) -> float:
        return self.host.wall()

    @property
    def rng(self) -> Any:
        return self.host.rng

    def open_store(self, name: str) -> Any:
        return self.host.open_store(name)

    def record(self, kind: str, /, **fields: Any) -> None:
        self.host.record(kind, **fields)

    def log_event(self, level: str, msg: str, /, **fields: Any) -> None:
        """One structured log line through the host, tagged with this
        actor's class (pass ``shard=`` where there is one)."""
        self.host.log(level, msg, actor=type(self).__name__, **fields)

    # -------------------------------------------------------------- timers
    def set_timer(self, delay_s: float, payload: Any) -> None:
        """wakeupAfter with seconds; there is no cancel, so payloads carry a
        generation number and handlers ignore stale ones."""
        self.wakeupAfter(timedelta(seconds=delay_s), payload)

    # ------------------------------------------------------------ dispatch
    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        cls = type(self)
        mtype = type(msg)
        try:
            handler = cls._dispatch_cache[mtype]
        except KeyError:
            handler = None
            for base in mtype.__mro__:
                handler = getattr(cls, "on_" + base.__name__, None)
                if handler is not None:
                    break
            cls._dispatch_cache[mtype] = handler
        if handler is None:
            return self.on_unhandled(msg, sender)
        return handler(self, msg, sender)

    def on_unhandled(self, msg: Any, sender: Any) -> None:
        """Messages nobody handles are dropped (e.g. system notices)."""
        return None

    def on_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        return None
