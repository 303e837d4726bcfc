"""The deterministic, seeded, virtual-time world that hosts Chorus actors.

Determinism
-----------
Everything that happens is an *event* in ONE queue, a
``sortedcontainers.SortedList`` of ``(time_us, seq, event)`` ordered by
virtual time (integer microseconds) and then by a sequence number assigned
when the event is scheduled.  Nothing else decides order: there is no real
time, no thread, no unseeded randomness (every RNG is derived from the
world seed with SHA-256), and no iteration over a set or over a dict whose
order depends on ``PYTHONHASHSEED``.  The same seed, options and harness
therefore give the same run -- and the same :meth:`World.trace_hash` -- in
any process.  (Actors must keep their side of the bargain: a message that
contains a set of strings pickles differently per process.)

Events are message deliveries, timer firings and harness callbacks
(:meth:`World.at`).  Fault verbs called directly run at the current virtual
time.  Every processed event, every message dropped at send time and every
fault verb updates the SHA-256 trace hash once, with its time, kind,
source, destination, message type name and pickled bytes; with
``trace_path`` the same events are also written one per line (time, kind,
``src -> dst``, a deterministic repr of the message cut at 200 characters,
see :mod:`sim.trace`), which does not influence the hash; the file is
byte-identical across processes too.  Dropped and held messages show only
their type name and size.  Event kinds: ``deliver``, ``wakeup``, ``call``,
``hold``, ``drop.{loss,partition,crash,dead}``, ``fault.<verb>``.

Inspection: ``history`` (list of :class:`sim.history.Record`: actor
observations, ``"actor.error"`` and ``"sim.<verb>"`` fault records),
``errors`` (list of :class:`sim.host.ActorError`), ``outbox`` (messages to
the harness as ``(t, sender details, msg)``), ``stats``, ``actor(addr)``,
``actors_on(node)``, ``nodes``, ``is_up``, ``monotonic(node)``,
``wall(node)``, ``disk(node)``, ``cut_links()``.

Messages
--------
Every message is pickled (protocol 5) at the send site -- an unpicklable
message raises there -- and unpickled at delivery, separately for each
duplicate, so sender and receiver never share objects, with the allow-list
of the real cluster port (``runtime/cluster_auth.py``): a message that
carries a class a real node would refuse fails here first.  Timer payloads are
pickled too.  Addresses are ``thespian.actors.ActorAddress`` objects whose
details are strings: ``"<node>/<name>"`` for top-level actors, and
``"<parent>/<ClassName>-<n>"`` for children.  ``"sim/external"``
(:attr:`World.EXTERNAL`) is the harness; messages to any ``"sim/..."``
address are appended to :attr:`World.outbox`.

Network (see :mod:`sim.options` and :mod:`sim.network`)
------------------------------------------------------
A message between different nodes is checked, at send time, against the
destination being up (else ``dropped_crash``), the partition rules (else
``dropped_partition``) and ``loss``; it then gets a delay, FIFO per
(sender actor, receiver actor) pair unless ``reorder`` is on, and possibly
a duplicate.  At delivery it is checked again: destination up with the
same incarnation it had at send time (else ``dropped_crash``) and the link
not cut (else ``dropped_partition``); then the receiving actor must exist
(else ``dropped_dead``).  Messages within a node and to/from the harness
take exactly ``local_latency_ms`` and are never lost, duplicated, reordered
or partitioned (they are still dropped if the node is down, and held if it
is paused).  Boot messages are queued with zero delay when the actor is
built, so they are always its first message.  Note that with FIFO a burst
on one pair is delivered no earlier than the slowest message before it
(head-of-line blocking, as on a TCP stream).

Running
-------
``run_until(t)`` processes every event with time ``<= t`` (including those
scheduled while running) and then sets ``now = t``; ``run_for(dt)`` is
``run_until(now + dt)``; ``step()`` processes exactly one event;
``pending()`` counts queued plus held events.  Virtual time is an integer
number of microseconds (``now_us``); ``now`` is float seconds.

Fault verbs
-----------
Each is a method, runs at the current virtual time, is traced, appended to
``history`` as a ``Record(kind="sim.<verb>", actor="sim")`` and can be
scheduled with ``world.at(t, lambda: world.crash("n1"))``.

* ``crash(node)`` -- the node goes down: its actor instances are dropped,
  every event stamped with its current incarnation (messages in flight to
  it, its timers, messages held by a pause) will be discarded, its disk
  loses unsynced writes (``MemoryDisk.crash``; open store handles raise
  ``StoreClosed``).  Messages it already put on the wire to other nodes
  still arrive.  Sends to a down node are dropped.  No-op if already down.
* ``restart(node)`` -- bumps the incarnation, brings the node up and
  rebuilds every registered top-level actor (fresh instance, same address)
  in spawn order, each getting its boot message again as its first
  message.  Restarting an up node crashes it first (a reboot).
* ``pause(node)`` / ``resume(node)`` -- stop-the-world (a GC or VM pause):
  deliveries and timers that fall due while paused are held in order and
  re-queued, still in order, at the time of ``resume``; clocks keep
  running; messages to the node keep being accepted.
* ``partition(*groups)``, ``partition_oneway(srcs, dsts)``,
  ``bridge(side_a, side_b, bridge_node)``, ``heal()`` -- see
  :mod:`sim.network`; rules compose (a link is cut if any rule cuts it).
* ``set_clock(node, offset_s=None, drift_ppm=None)``, ``clock_jump(node,
  delta_s)`` -- see :mod:`sim.clock`; changing the drift re-times pending
  timers so they still fire when the *local* monotonic clock reaches their
  deadline.
* ``set_network(**overrides)`` -- replace SimOptions knobs from now on
  (messages already in flight keep their delays).

Actor semantics (following Thespian's multiprocTCPBase)
-------------------------------------------------------
* ``ActorExitRequest`` is delivered to ``receiveMessage``; then the actor
  is removed at once (later messages to it are dead letters), each child
  is sent ``ActorExitRequest`` (if the request is recursive) and the parent
  is sent ``ChildActorExited(address)`` (top-level actors' parent is the
  harness, so it lands in ``outbox``; an exited top-level actor is still
  registered and comes back at the node's next restart).
* If ``receiveMessage`` raises, the message is redelivered once (a fresh
  unpickled copy); if that raises too, ``PoisonMessage(msg, traceback)``
  is sent back to the sender (unless the message was itself a
  ``PoisonMessage``).  Each exception is appended to ``world.errors`` (an
  :class:`sim.host.ActorError`) and to ``history`` as ``"actor.error"``.
  ``ActorExitRequest`` failures are recorded but not retried.
* Return values of ``receiveMessage`` (e.g. ``ThespianWatch``) are ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import pickle
import traceback
from datetime import timedelta
from typing import Any, Callable, Iterable

from sortedcontainers import SortedList
from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

from sim.clock import NodeClock
from sim.history import Record
from sim.host import ActorError, SimRef, derive_rng
from sim.network import DelayModel, Network, make_bridge, make_oneway, make_partition
from sim.options import DRIFT_PPM_LIMIT, SimOptions
from runtime.cluster_auth import restricted_loads
from sim.trace import describe
from storage.memory import MemoryDisk

__all__ = ["World", "Node", "SimOptions", "Record", "ActorError"]

_US = 1_000_000
_PICKLE_PROTOCOL = 5
_REPR_LIMIT = 200

_HARNESS_PACKAGES = ("sim.", "tests.", "test_")  # never on a real cluster port


def _loads(data: bytes) -> Any:
    """Unpickle a carried message with the real cluster port's allow-list
    (runtime/cluster_auth.py), plus the simulator's own harness messages and
    the test suite's: a message class a real node would refuse fails here
    first."""
    return restricted_loads(data, _HARNESS_PACKAGES)

# Event kinds (first element of an event tuple).
K_DELIVER = 0  # (K, src_node, src_details, dst_node, dst_details, inc, data, tname, sender)
K_WAKEUP = 1   # (K, node, details, node, details, inc, data, tname, period, deadline)
K_CALL = 2     # (K, fn, label)

_STAT_KEYS = (
    "events", "sent", "delivered", "wakeups", "duplicated", "held",
    "dropped_loss", "dropped_partition", "dropped_crash", "dropped_dead",
)


class Node:
    """One simulated machine: disk, clock, liveness and its actors."""

    __slots__ = (
        "id", "disk", "clock", "incarnation", "up", "paused", "held",
        "boot", "actors", "global_names",
    )

    def __init__(self, node_id: str, clock: NodeClock, disk: Any) -> None:
        self.id = node_id
        self.disk = disk
        self.clock = clock
        self.incarnation = 1
        self.up = True
        self.paused = False
        self.held: list[tuple] = []
        #: registered top-level actors: (class, name, pickled boot msg or None, its type name)
        self.boot: list[tuple[type, str, bytes | None, str]] = []
        #: live actors by address details, in creation order
        self.actors: dict[str, SimRef] = {}
        self.global_names: dict[str, SimRef] = {}

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        if self.paused:
            state += ",paused"
        return f"<Node {self.id} inc={self.incarnation} {state} actors={len(self.actors)}>"


def _to_us(t_s: float) -> int:
    return int(round(t_s * _US))


def _seconds(period: Any) -> float:
    if isinstance(period, timedelta):
        return period.total_seconds()
    return float(period)


_NOTHING = object()  # "no message object at hand" (None is a valid message)


class World:
    """A seeded simulation of nodes, actors, network and clocks."""

    EXTERNAL = ActorAddress("sim/external")

    def __init__(
        self,
        seed: int,
        options: SimOptions | None = None,
        trace_path: str | None = None,
    ) -> None:
        self.seed = int(seed)
        # A private copy: later changes go through set_network().
        self._options = dataclasses.replace(options) if options is not None else SimOptions()
        self._now_us = 0
        self._seq = 0
        self._queue: SortedList = SortedList()
        self._nodes: dict[str, Node] = {}
        self._external = Node("sim", NodeClock(0), None)
        self._node_of: dict[str, Node] = {}
        self._actors: dict[str, SimRef] = {}
        self._fifo: dict[tuple[str, str], int] = {}
        self._net = Network()
        self._delay = DelayModel(self._options, derive_rng("chorus-sim-network", self.seed))
        self._clock_rng = derive_rng("chorus-sim-clocks", self.seed)
        self._classes: dict[str, type] = {}
        self._counts: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self._hash = hashlib.sha256()
        self._hparts: list[bytes] = []
        self._trace = open(trace_path, "w", encoding="utf-8") if trace_path else None
        self.history: list[Record] = []
        self.errors: list[ActorError] = []
        #: messages sent to the harness: (t seconds, sender details, message)
        self.outbox: list[tuple[float, str, Any]] = []

    # ================================================================ nodes
    def add_node(self, node_id: str) -> None:
        """Add an up node with a fresh MemoryDisk; draws its clock skew."""
        if not isinstance(node_id, str) or not node_id or "/" in node_id:
            raise ValueError(f"node id must be a non-empty str without '/', got {node_id!r}")
        if node_id == "sim" or node_id in self._nodes:
            raise ValueError(f"node id {node_id!r} is reserved or already used")
        o = self._options
        rng = self._clock_rng
        offset = rng.uniform(-o.clock_offset_max_s, o.clock_offset_max_s) if o.clock_offset_max_s > 0 else 0.0
        drift = rng.uniform(-o.clock_drift_max_ppm, o.clock_drift_max_ppm) if o.clock_drift_max_ppm > 0 else 0.0
        node = Node(node_id, NodeClock(self._now_us, offset, drift), MemoryDisk())
        self._nodes[node_id] = node
        self._net.recompute(self.nodes)
        self._fault("add_node", node_id, f"offset={offset!r} drift_ppm={drift!r}")

    @property
    def nodes(self) -> list[str]:
        """Node ids in insertion order."""
        return list(self._nodes)

    def _node(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no such node {node_id!r}; nodes: {self.nodes}") from None

    def is_up(self, node_id: str) -> bool:
        return self._node(node_id).up

    def is_paused(self, node_id: str) -> bool:
        return self._node(node_id).paused

    def incarnation(self, node_id: str) -> int:
        return self._node(node_id).incarnation

    def disk(self, node_id: str) -> MemoryDisk:
        return self._node(node_id).disk

    def monotonic(self, node_id: str) -> float:
        """The node's monotonic clock now (what its actors would read)."""
        return self._node(node_id).clock.monotonic(self._now_us)

    def wall(self, node_id: str) -> float:
        """The node's wall clock now (what its actors would read)."""
        return self._node(node_id).clock.wall(self._now_us)

    # =============================================================== actors
    def spawn(self, node_id: str, actor_cls: type, name: str, boot_msg: Any = None) -> ActorAddress:
        """Create (and register for restarts) the top-level actor ``node/name``.

        ``boot_msg`` (if not None) is its first message, from EXTERNAL, and
        is delivered again after every restart.  Spawning on a down node
        only registers the actor; it is built by the next restart."""
        node = self._node(node_id)
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"actor name must be a non-empty str without '/', got {name!r}")
        if any(entry[1] == name for entry in node.boot):
            raise ValueError(f"an actor named {name!r} is already registered on {node_id}")
        boot = None if boot_msg is None else pickle.dumps(boot_msg, _PICKLE_PROTOCOL)
        entry = (actor_cls, name, boot, type(boot_msg).__name__)
        if node.up:
            self._build_top(node, entry)  # a failing constructor registers nothing
        node.boot.append(entry)
        return ActorAddress(f"{node_id}/{name}")

    def _build_top(self, node: Node, entry: tuple[type, str, bytes | None, str]) -> None:
        actor_cls, name, boot, tname = entry
        ref = self._instantiate(node, actor_cls, f"{node.id}/{name}", self.EXTERNAL, None)
        if boot is not None:
            ev = (K_DELIVER, self._external, self.EXTERNAL.addressDetails, node, ref.details,
                  node.incarnation, boot, tname, self.EXTERNAL)
            self._push(self._now_us, ev)

    def _instantiate(
        self, node: Node, actor_cls: type, details: str, parent: ActorAddress, global_name: str | None
    ) -> SimRef:
        """Thespian order: construct the instance, then attach ``_myRef``."""
        instance = actor_cls()
        ref = SimRef(self, node, details, parent, global_name)
        ref.instance = instance
        instance._myRef = ref
        self._actors[details] = ref
        node.actors[details] = ref
        self._node_of[details] = node
        if global_name is not None:
            node.global_names[global_name] = ref
        return ref

    def _create_child(self, parent: SimRef, actor_class: Any, global_name: str | None) -> ActorAddress:
        node = parent.node
        if global_name is not None:
            existing = node.global_names.get(global_name)
            if existing is not None:
                return existing.address
        cls = self._resolve_class(actor_class)
        parent.child_seq += 1
        details = f"{parent.details}/{cls.__name__}-{parent.child_seq}"
        ref = self._instantiate(node, cls, details, parent.address, global_name)
        parent.children.append(ref)
        return ref.address

    def _resolve_class(self, actor_class: Any) -> type:
        if isinstance(actor_class, type):
            return actor_class
        if not isinstance(actor_class, str):
            raise TypeError(f"actorClass must be a class or 'module.Class', not {actor_class!r}")
        cls = self._classes.get(actor_class)
        if cls is None:
            module_name, _, class_name = actor_class.rpartition(".")
            if not module_name:
                raise ValueError(f"actorClass string must be 'module.Class', got {actor_class!r}")
            cls = getattr(importlib.import_module(module_name), class_name)
            self._classes[actor_class] = cls
        return cls

    def actor(self, addr_or_details: ActorAddress | str) -> Any:
        """The live instance at that address, or None."""
        details = addr_or_details.addressDetails if isinstance(addr_or_details, ActorAddress) else addr_or_details
        ref = self._actors.get(details)
        return None if ref is None else ref.instance

    def actors_on(self, node_id: str) -> list[Any]:
        """Live actor instances on the node, in creation order."""
        return [ref.instance for ref in self._node(node_id).actors.values()]

    def _remove(self, ref: SimRef) -> None:
        ref.alive = False
        self._actors.pop(ref.details, None)
        node = ref.node
        node.actors.pop(ref.details, None)
        if ref.globalName is not None and node.global_names.get(ref.globalName) is ref:
            del node.global_names[ref.globalName]

    def _exit_actor(self, ref: SimRef, recursive: bool) -> None:
        """After ActorExitRequest was handled: remove, stop children, tell parent."""
        self._remove(ref)
        if recursive:
            for child in ref.children:
                if child.alive:
                    self._send(ref.node, ref.details, ref.address, child.address, ActorExitRequest())
        parent = self._actors.get(ref.parent.addressDetails)
        if parent is not None and ref in parent.children:
            parent.children.remove(ref)
        self._send(ref.node, ref.details, ref.address, ref.parent, ChildActorExited(ref.address))

    # ============================================================ messaging
    def send(self, to_addr: ActorAddress | str, msg: Any, sender: ActorAddress | None = None) -> None:
        """Inject a message from the harness (local latency, never faulted)."""
        target = to_addr if isinstance(to_addr, ActorAddress) else ActorAddress(to_addr)
        src = self.EXTERNAL if sender is None else sender
        self._send(self._external, src.addressDetails, src, target, msg)

    def _send(self, src_node: Node, src_details: str, sender: ActorAddress, target: ActorAddress, msg: Any) -> None:
        """The network: pickle, filter, delay and queue one message (hot path)."""
        data = pickle.dumps(msg, _PICKLE_PROTOCOL)
        counts = self._counts
        counts["sent"] += 1
        dst_details = target.addressDetails
        dst = self._node_of.get(dst_details)
        if dst is None:
            dst = self._node_for(dst_details)
            if dst is None:
                counts["dropped_dead"] += 1
                self._note("drop.dead", src_details, str(dst_details), type(msg).__name__, data)
                return
        if not dst.up:
            counts["dropped_crash"] += 1
            self._note("drop.crash", src_details, dst_details, type(msg).__name__, data)
            return
        ev = (K_DELIVER, src_node, src_details, dst, dst_details, dst.incarnation, data,
              type(msg).__name__, sender)
        delay = self._delay
        self._seq += 1
        if dst is src_node or src_node is self._external or dst is self._external:
            self._queue.add((self._now_us + delay.local_us, self._seq, ev))
            return
        if (src_node.id, dst.id) in self._net.cut:
            counts["dropped_partition"] += 1
            self._note("drop.partition", src_details, dst_details, ev[7], data)
            return
        if delay.loss and delay.rng.random() < delay.loss:
            counts["dropped_loss"] += 1
            self._note("drop.loss", src_details, dst_details, ev[7], data)
            return
        self._queue.add((self._remote_time(src_details, dst_details), self._seq, ev))
        if delay.duplicate and delay.rng.random() < delay.duplicate:
            counts["duplicated"] += 1
            self._seq += 1
            self._queue.add((self._remote_time(src_details, dst_details), self._seq, ev))

    def _node_for(self, details: Any) -> Node | None:
        node = self._node_of.get(details)
        if node is None and isinstance(details, str):
            node_id = details.partition("/")[0]
            node = self._external if node_id == "sim" else self._nodes.get(node_id)
            if node is not None:
                self._node_of[details] = node
        return node

    def _remote_time(self, src_details: str, dst_details: str) -> int:
        """Delivery time of a cross-node message, FIFO-clamped unless reordering."""
        delay = self._delay
        t = self._now_us + delay.delay_us()
        if not delay.reorder:
            key = (src_details, dst_details)
            fifo = self._fifo
            last = fifo.get(key, 0)
            if t < last:
                t = last
            fifo[key] = t
        return t

    def _push(self, t_us: int, ev: tuple) -> None:
        self._seq += 1
        self._queue.add((t_us, self._seq, ev))

    def _wakeup_after(self, ref: SimRef, period: Any, payload: Any) -> None:
        seconds = _seconds(period)
        data = pickle.dumps(payload, _PICKLE_PROTOCOL)
        node = ref.node
        clock = node.clock
        deadline = clock.monotonic(self._now_us) + seconds
        ev = (K_WAKEUP, node, ref.details, node, ref.details, node.incarnation, data,
              "WakeupMessage", period, deadline)
        self._push(self._now_us + clock.virtual_delay_us(seconds), ev)

    # ============================================================== running
    @property
    def now(self) -> float:
        """Virtual time in seconds."""
        return self._now_us / _US

    @property
    def now_us(self) -> int:
        return self._now_us

    def pending(self) -> int:
        """Events queued plus deliveries held by paused nodes."""
        return len(self._queue) + sum(len(n.held) for n in self._nodes.values())

    def step(self) -> bool:
        """Process the next event; False if the queue is empty."""
        if not self._queue:
            return False
        t_us, _seq, ev = self._queue.pop(0)
        self._now_us = t_us
        self._process(ev)
        self._flush()
        return True

    def run_until(self, t_s: float) -> None:
        """Process every event with time <= t_s, then set ``now = t_s``."""
        end = _to_us(t_s)
        if end < self._now_us:
            raise ValueError(f"run_until({t_s}) is in the past (now={self.now})")
        queue = self._queue
        pop = queue.pop
        deliver = self._deliver
        process = self._process
        while queue and queue[0][0] <= end:
            t_us, _seq, ev = pop(0)
            self._now_us = t_us
            if ev[0] == K_DELIVER:
                deliver(ev)
            else:
                process(ev)
        self._now_us = end
        self._flush()

    def run_for(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"run_for({dt_s}): negative duration")
        self.run_until((self._now_us + _to_us(dt_s)) / _US)

    def at(self, t_s: float, fn: Callable[[], None], label: str = "") -> None:
        """Run the harness callback ``fn()`` at virtual time ``t_s``."""
        t_us = _to_us(t_s)
        if t_us < self._now_us:
            raise ValueError(f"at({t_s}) is in the past (now={self.now})")
        self._push(t_us, (K_CALL, fn, label or getattr(fn, "__name__", "call")))

    def _process(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == K_DELIVER:
            self._deliver(ev)
        elif kind == K_WAKEUP:
            self._fire(ev)
        else:
            self._counts["events"] += 1
            self._note("call", "sim", "sim", "", ev[2].encode(), text=ev[2])
            ev[1]()

    def _admit(self, ev: tuple, src: Node, node: Node) -> bool:
        """Delivery-time checks common to messages and timers."""
        if node.incarnation != ev[5] or not node.up:
            self._counts["dropped_crash"] += 1
            self._note("drop.crash", ev[2], ev[4], ev[7], ev[6])
            return False
        if node.paused:
            node.held.append(ev)
            self._counts["held"] += 1
            self._note("hold", ev[2], ev[4], ev[7], ev[6])
            return False
        if src is not node and (src.id, node.id) in self._net.cut:
            self._counts["dropped_partition"] += 1
            self._note("drop.partition", ev[2], ev[4], ev[7], ev[6])
            return False
        return True

    def _deliver(self, ev: tuple) -> None:
        """A message event (hot path): admit, unpickle, trace, invoke."""
        counts = self._counts
        counts["events"] += 1
        _, src, src_details, node, dst_details, inc, data, tname, sender = ev
        if node.incarnation != inc or not node.up or node.paused or (
            src is not node and (src.id, node.id) in self._net.cut
        ):
            self._admit(ev, src, node)
            return
        ref = self._actors.get(dst_details)
        if ref is None:
            if node is self._external:
                msg = _loads(data)
                counts["delivered"] += 1
                self._note("deliver", src_details, dst_details, tname, data, msg)
                self.outbox.append((self.now, src_details, msg))
                return
            counts["dropped_dead"] += 1
            self._note("drop.dead", src_details, dst_details, tname, data)
            return
        msg = _loads(data)
        counts["delivered"] += 1
        self._note("deliver", src_details, dst_details, tname, data, msg)
        try:
            ref.instance.receiveMessage(msg, sender)
        except Exception as exc:
            self._failed(ref, msg, sender, data, None, exc)
        if isinstance(msg, ActorExitRequest) and ref.alive:
            self._exit_actor(ref, msg.isRecursive)

    def _fire(self, ev: tuple) -> None:
        """A timer event: admit, rebuild the WakeupMessage, invoke."""
        self._counts["events"] += 1
        node = ev[1]
        if not self._admit(ev, node, node):
            return
        ref = self._actors.get(ev[4])
        if ref is None:
            self._counts["dropped_dead"] += 1
            self._note("drop.dead", ev[2], ev[4], ev[7], ev[6])
            return
        period = ev[8]
        msg = WakeupMessage(period, _loads(ev[6]))
        self._counts["wakeups"] += 1
        self._note("wakeup", ev[2], ev[4], ev[7], ev[6], msg)
        try:
            ref.instance.receiveMessage(msg, ref.address)
        except Exception as exc:
            self._failed(ref, msg, ref.address, ev[6], period, exc)

    def _failed(self, ref: SimRef, msg: Any, sender: ActorAddress, data: bytes, period: Any, exc: Exception) -> None:
        self._record_error(ref, msg, exc, 1)
        if isinstance(msg, ActorExitRequest) or not ref.alive:
            return
        copy = self._fresh(data, period)
        try:
            ref.instance.receiveMessage(copy, sender)
        except Exception as exc2:
            details = self._record_error(ref, msg, exc2, 2)
            if not isinstance(msg, PoisonMessage):
                poison = PoisonMessage(self._fresh(data, period), details)
                self._send(ref.node, ref.details, ref.address, sender, poison)

    @staticmethod
    def _fresh(data: bytes, period: Any) -> Any:
        payload = _loads(data)
        return payload if period is None else WakeupMessage(period, payload)

    def _record_error(self, ref: SimRef, msg: Any, exc: Exception, attempt: int) -> str:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        err = ActorError(self.now, ref.node.id, ref.details, type(msg).__name__,
                         type(exc).__name__, str(exc), tb, attempt)
        self.errors.append(err)
        self._record(ref.node.id, ref.details, "actor.error", {
            "msg_type": err.msg_type, "exc_type": err.exc_type,
            "message": err.message, "traceback": tb, "attempt": attempt,
        })
        return tb

    def _record(self, node_id: str, actor: str, kind: str, fields: dict[str, Any]) -> None:
        self.history.append(Record(self._now_us / _US, node_id, actor, kind, fields))

    # ========================================================== fault verbs
    def crash(self, node_id: str) -> None:
        """Node down: actors, timers, in-flight and held messages to it gone;
        unsynced disk writes lost."""
        node = self._node(node_id)
        if not node.up:
            self._fault("crash", node_id, "already down")
            return
        node.up = False
        node.paused = False
        node.held = []
        for ref in list(node.actors.values()):
            ref.alive = False
            self._actors.pop(ref.details, None)
        node.actors.clear()
        node.global_names.clear()
        node.disk.crash()
        self._fault("crash", node_id)

    def restart(self, node_id: str) -> None:
        """New incarnation; rebuild registered top-level actors with boot messages."""
        node = self._node(node_id)
        if node.up:
            self.crash(node_id)
        node.incarnation += 1
        node.up = True
        self._fault("restart", node_id, f"incarnation={node.incarnation}")
        for entry in node.boot:
            self._build_top(node, entry)

    def pause(self, node_id: str) -> None:
        """Stop-the-world: hold deliveries and timers due on the node."""
        node = self._node(node_id)
        node.paused = node.up
        self._fault("pause", node_id)

    def resume(self, node_id: str) -> None:
        """Re-queue held deliveries/timers, in order, at the current time."""
        node = self._node(node_id)
        node.paused = False
        held, node.held = node.held, []
        self._fault("resume", node_id, f"released={len(held)}")
        for ev in held:
            self._push(self._now_us, ev)

    def partition(self, *groups: Iterable[str] | str) -> None:
        """Symmetric partition between groups; unlisted nodes form one more group."""
        rule = make_partition(groups)
        self._check_names(n for g in rule.groups for n in g)
        self._net.add(rule, self.nodes)
        self._fault("partition", "sim", rule.describe())

    def partition_oneway(self, src_nodes: Iterable[str] | str, dst_nodes: Iterable[str] | str) -> None:
        """Cut src -> dst; dst -> src still flows."""
        rule = make_oneway(src_nodes, dst_nodes)
        self._check_names(rule.srcs + rule.dsts)
        self._net.add(rule, self.nodes)
        self._fault("partition_oneway", "sim", rule.describe())

    def bridge(self, side_a: Iterable[str] | str, side_b: Iterable[str] | str, bridge_node: str) -> None:
        """side_a and side_b cannot talk; bridge_node talks to both."""
        rule = make_bridge(side_a, side_b, bridge_node)
        self._check_names(rule.side_a + rule.side_b + (rule.bridge,))
        self._net.add(rule, self.nodes)
        self._fault("bridge", "sim", rule.describe())

    def heal(self) -> None:
        """Remove every partition rule."""
        self._net.heal()
        self._fault("heal", "sim")

    def cut_links(self) -> list[tuple[str, str]]:
        """Currently cut directed links, in node insertion order."""
        nodes = self.nodes
        return [(a, b) for a in nodes for b in nodes if (a, b) in self._net.cut]

    def set_clock(self, node_id: str, offset_s: float | None = None, drift_ppm: float | None = None) -> None:
        """Set the wall-clock offset (vs true time) and/or the drift rate."""
        node = self._node(node_id)
        clock = node.clock
        if drift_ppm is not None:
            if not abs(drift_ppm) < DRIFT_PPM_LIMIT:
                raise ValueError(f"drift_ppm must be within +-{DRIFT_PPM_LIMIT:g}, got {drift_ppm!r}")
            clock.set_drift(self._now_us, drift_ppm)
            self._retime_timers(node)
        if offset_s is not None:
            clock.set_offset(self._now_us, float(offset_s))
        self._fault("set_clock", node_id, f"offset_s={offset_s!r} drift_ppm={drift_ppm!r}")

    def clock_jump(self, node_id: str, delta_s: float) -> None:
        """Step the node's wall clock by delta_s (monotonic unaffected)."""
        self._node(node_id).clock.jump(self._now_us, float(delta_s))
        self._fault("clock_jump", node_id, f"delta_s={delta_s!r}")

    def set_network(self, **overrides: Any) -> None:
        """Replace SimOptions knobs from now on."""
        self._options = self._options.with_overrides(**overrides)
        self._delay.configure(self._options)
        text = " ".join(f"{k}={overrides[k]!r}" for k in sorted(overrides))
        self._fault("set_network", "sim", text)

    @property
    def options(self) -> SimOptions:
        return self._options

    def _retime_timers(self, node: Node) -> None:
        """After a drift change, move the node's timers to their new virtual time."""
        clock = node.clock
        local_now = clock.monotonic(self._now_us)
        moved = [item for item in self._queue
                 if item[2][0] == K_WAKEUP and item[2][3] is node and item[2][5] == node.incarnation]
        for item in moved:
            self._queue.remove(item)
            t_us = self._now_us + clock.virtual_delay_us(item[2][9] - local_now)
            self._queue.add((t_us, item[1], item[2]))

    def _check_names(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._nodes:
                raise KeyError(f"no such node {name!r}; nodes: {self.nodes}")

    def _fault(self, verb: str, node_id: str, text: str = "") -> None:
        self._note("fault." + verb, "sim", node_id, "", text.encode(), text=text)
        self._record(node_id, "sim", "sim." + verb, {"detail": text} if text else {})

    # ================================================================ trace
    def _note(
        self, kind: str, src: str, dst: str, tname: str, data: bytes,
        msg: Any = _NOTHING, text: str | None = None,
    ) -> None:
        """Add one event to the trace hash (and the trace file, if any).

        Hash input per event: ``"<t_us>\x1f<kind>\x1f<src>\x1f<dst>\x1f<type>\x1f<len>\x1e"``
        (UTF-8) followed by the pickled bytes.  Parts are buffered and fed to
        SHA-256 in batches, which gives the same digest as feeding them one by
        one."""
        t = self._now_us
        parts = self._hparts
        parts.append(f"{t}\x1f{kind}\x1f{src}\x1f{dst}\x1f{tname}\x1f{len(data)}\x1e".encode())
        parts.append(data)
        if len(parts) >= 512:
            self._hash.update(b"".join(parts))
            parts.clear()
        if self._trace is not None:
            if text is None:
                text = describe(msg, _REPR_LIMIT) if msg is not _NOTHING else f"<{tname} {len(data)}B>"
            self._trace.write(f"{t / _US:.6f} {kind} {src} -> {dst} {text}\n")

    def trace_hash(self) -> str:
        """Hex SHA-256 over every traced event so far."""
        if self._hparts:
            self._hash.update(b"".join(self._hparts))
            self._hparts.clear()
        return self._hash.copy().hexdigest()

    def _flush(self) -> None:
        if self._trace is not None:
            self._trace.flush()

    def close(self) -> None:
        """Close the trace file (if any)."""
        if self._trace is not None:
            self._trace.close()
            self._trace = None

    def __enter__(self) -> "World":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================ stats
    @property
    def stats(self) -> dict[str, int]:
        """Counters: events, sent, delivered, wakeups, duplicated, held,
        dropped_loss, dropped_partition, dropped_crash, dropped_dead."""
        return dict(self._counts)

    def __repr__(self) -> str:
        return f"<World seed={self.seed} t={self.now:.6f} nodes={self.nodes} pending={self.pending()}>"


