"""What a simulated actor sees: its ``_myRef`` (:class:`SimRef`) and host.

Thespian's :class:`thespian.actors.Actor` routes every system call through
``self._myRef``; the simulator sets that attribute right after constructing
the instance (exactly as Thespian does), so unmodified actor classes run
inside the simulator.  :class:`SimRef` implements

* ``address`` / ``globalName`` -- the actor's stable address and global name
  (``None`` when it has none);
* ``actor_send(target, msg)`` -- pickles ``msg`` immediately (so an
  unpicklable message raises here, in the sender) and hands it to the
  simulated network;
* ``createActor(cls, requirements, globalName, sourceHash)`` -- a child on
  the same node (``requirements`` and ``sourceHash`` are ignored);
* ``wakeupAfter(period, payload)`` -- a timer on the node's *local*
  monotonic clock;
* ``logger(name)`` and no-op versions of the remaining Thespian calls
  (dead-letter handling, convention registration, capabilities, source
  loading, ``actorSystemShutdown``);
* ``chorus_host`` -- a :class:`SimHost`, the hosting contract of
  :mod:`actors.base`.

A :class:`SimRef` is also the simulator's bookkeeping slot for the actor
(instance, parent, children, liveness).  It is created per actor instance:
a restarted actor gets a fresh ref, host and RNG.
"""
from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thespian.actors import ActorAddress

# Actors' log lines in a simulation are for whoever asks for them (a test's
# caplog, a handler of one's own); without one they are dropped rather than
# printed by logging's last-resort handler between a run's results.
logging.getLogger("chorus.sim").addHandler(logging.NullHandler())

if TYPE_CHECKING:  # pragma: no cover
    from sim.world import Node, World


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' ``str`` forms via SHA-256 (never ``hash()``)."""
    text = "\x00".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def derive_rng(*parts: object) -> random.Random:
    return random.Random(derive_seed(*parts))


@dataclass(frozen=True)
class ActorError:
    """An exception raised by an actor's ``receiveMessage``.

    ``attempt`` is 1 for the first delivery and 2 for the retry (after
    which a ``PoisonMessage`` goes back to the sender)."""

    t: float
    node: str
    actor: str
    msg_type: str
    exc_type: str
    message: str
    traceback: str
    attempt: int

    def __str__(self) -> str:
        return (
            f"t={self.t:.6f} {self.actor} raised {self.exc_type}: {self.message} "
            f"on {self.msg_type} (attempt {self.attempt})\n{self.traceback}"
        )


class SimHost:
    """The host of one simulated actor (see :mod:`actors.base`).

    * ``node_id`` -- the node's name.
    * ``monotonic()`` -- the node's monotonic clock, float seconds; starts at
      0 when the node is added, runs at the node's drift rate, never goes
      backwards, keeps running across crashes and pauses.
    * ``wall()`` -- the node's wall clock, float seconds since the Unix
      epoch (virtual time 0 is ``sim.clock.EPOCH_S``), with offset, drift
      and jumps applied; may go backwards.
    * ``rng`` -- a ``random.Random`` seeded by SHA-256 of (world seed, actor
      address, node incarnation): deterministic per run, different per
      actor and per incarnation.
    * ``open_store(name)`` -- ``disk.open(name)`` on the node's
      :class:`storage.memory.MemoryDisk`.  The namespace is **per node**:
      two actors on one node opening the same name share the table, so
      actors pick unique names (e.g. include their own name).  Each call
      returns a fresh handle; handles die with a crash.
    * ``record(kind, **fields)`` -- appends a :class:`sim.history.Record`
      stamped with virtual time, node and actor address to
      ``world.history``.
    """

    __slots__ = ("_world", "_node", "node_id", "actor", "_incarnation", "_rng")

    def __init__(self, world: "World", node: "Node", actor: str) -> None:
        self._world = world
        self._node = node
        self.node_id = node.id
        self.actor = actor
        self._incarnation = node.incarnation
        self._rng: random.Random | None = None

    def monotonic(self) -> float:
        return self._node.clock.monotonic(self._world._now_us)

    def wall(self) -> float:
        return self._node.clock.wall(self._world._now_us)

    @property
    def rng(self) -> random.Random:
        rng = self._rng
        if rng is None:
            rng = self._rng = derive_rng(
                "chorus-sim-host-rng", self._world.seed, self.actor, self._incarnation
            )
        return rng

    def open_store(self, name: str) -> Any:
        return self._node.disk.open(name)

    def remove_store(self, name: str) -> None:
        self._node.disk.remove(name)

    def record(self, kind: str, /, **fields: Any) -> None:
        self._world._record(self.node_id, self.actor, kind, fields)

    def log(self, level: str, msg: str, /, **fields: Any) -> None:
        """Actors' log lines go to the ``chorus.sim`` logger, outside the
        trace (so they never change a run's hash), stamped with virtual time."""
        lg = logging.getLogger("chorus.sim")
        lvl = logging.getLevelName(level.upper())
        if isinstance(lvl, int) and lg.isEnabledFor(lvl):
            lg.log(lvl, "%s", msg, extra={"kv": {"node": self.node_id, "t_us": self._world._now_us, **fields}})

    def __repr__(self) -> str:
        return f"<SimHost {self.actor} inc={self._incarnation}>"


def _noop(*_args: Any, **_kw: Any) -> None:
    return None


class SimRef:
    """``_myRef`` of a simulated actor, and the simulator's slot for it."""

    __slots__ = (
        "world", "node", "address", "details", "globalName", "chorus_host",
        "instance", "parent", "children", "child_seq", "alive",
    )

    def __init__(
        self,
        world: "World",
        node: "Node",
        details: str,
        parent: ActorAddress,
        global_name: str | None = None,
    ) -> None:
        self.world = world
        self.node = node
        self.details = details
        self.address = ActorAddress(details)
        self.globalName = global_name
        self.chorus_host = SimHost(world, node, details)
        self.instance: Any = None
        self.parent = parent
        self.children: list[SimRef] = []
        self.child_seq = 0
        self.alive = True

    # ---------------------------------------------------------- messaging
    def actor_send(self, target: ActorAddress, msg: Any) -> None:
        self.world._send(self.node, self.details, self.address, target, msg)

    def createActor(
        self,
        actorClass: Any,
        targetActorRequirements: Any = None,
        globalName: str | None = None,
        sourceHash: Any = None,
    ) -> ActorAddress:
        return self.world._create_child(self, actorClass, globalName)

    def wakeupAfter(self, period: Any, payload: Any = None) -> None:
        self.world._wakeup_after(self, period, payload)

    def logger(self, name: str | None = None) -> logging.Logger:
        return logging.getLogger(name if name is not None else "chorus.sim." + self.details)

    # ------------------------------------------------ no-op system calls
    handleDeadLetters = staticmethod(_noop)
    registerSourceAuthority = staticmethod(_noop)
    notifyOnSystemRegistrationChanges = staticmethod(_noop)
    updateCapability = staticmethod(_noop)
    loadActorSource = staticmethod(_noop)
    unloadActorSource = staticmethod(_noop)
    notifyOnSourceAvailability = staticmethod(_noop)
    preRegisterRemoteSystem = staticmethod(_noop)
    deRegisterRemoteSystem = staticmethod(_noop)
    actorSystemShutdown = staticmethod(_noop)

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead"
        return f"<SimRef {self.details} {state}>"
