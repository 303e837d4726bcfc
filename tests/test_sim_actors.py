"""Thespian semantics inside the simulator: pickling, exits, errors, children,
timers, host services."""
from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from thespian.actors import (
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

from actors.base import ChorusActor
from sim.options import SimOptions
from sim.world import World


# ----------------------------------------------------------------- messages
@dataclass
class Box:
    items: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SendBox:
    target: ActorAddress


@dataclass(frozen=True)
class SendBad:
    target: ActorAddress


@dataclass(frozen=True)
class Boom:
    times: int  # how many deliveries raise


@dataclass(frozen=True)
class Poke:
    target: ActorAddress
    msg: Any


@dataclass(frozen=True)
class Spawn:
    cls: Any  # a class or a "module.Class" string
    global_name: str | None = None


@dataclass(frozen=True)
class Arm:
    period: Any
    payload: Any


@dataclass(frozen=True)
class Draw:
    n: int


# ------------------------------------------------------------------- actors
class Sink(ChorusActor):
    """Records everything it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[Any, Any]] = []

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        self.got.append((msg, sender))
        self.record("recv", msg=msg, sender=sender.addressDetails)
        return super().receiveMessage(msg, sender)


class Mutator(Sink):
    def on_SendBox(self, msg: SendBox, sender: Any) -> None:
        box = Box([1, 2])
        self.send(msg.target, box)
        box.items.append(3)  # after the send: must not reach the receiver

    def on_SendBad(self, msg: SendBad, sender: Any) -> None:
        self.send(msg.target, Box([threading.Lock()]))  # type: ignore[list-item]

    def on_Poke(self, msg: Poke, sender: Any) -> None:
        self.send(msg.target, msg.msg)


class Flaky(Sink):
    """Raises on the first ``Boom.times`` deliveries of each Boom."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = 0

    def on_Boom(self, msg: Boom, sender: Any) -> None:
        if self.raised < msg.times:
            self.raised += 1
            raise RuntimeError(f"boom {self.raised}")
        self.record("survived", times=msg.times)

    def on_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        raise RuntimeError("exit handler fails")


class Parent(Sink):
    def on_Spawn(self, msg: Spawn, sender: Any) -> None:
        child = self.createActor(msg.cls, globalName=msg.global_name)
        self.send(sender, Poke(child, None))  # tell the asker the address

    def on_Poke(self, msg: Poke, sender: Any) -> None:
        self.send(msg.target, msg.msg)


class Child(Parent):
    pass


class Timed(Sink):
    def on_Arm(self, msg: Arm, sender: Any) -> None:
        self.wakeupAfter(msg.period, msg.payload)

    def on_Draw(self, msg: Draw, sender: Any) -> None:
        self.record("draw", values=[self.rng.random() for _ in range(msg.n)])


def world_ab(seed: int = 5, **knobs: Any) -> World:
    world = World(seed, SimOptions(**knobs))
    world.add_node("a")
    world.add_node("b")
    return world


def addresses_from_pokes(world: World) -> list[str]:
    return [m.target.addressDetails for _, _, m in world.outbox if isinstance(m, Poke)]


# ----------------------------------------------------------------- pickling
def test_mutation_after_send_does_not_reach_receiver() -> None:
    world = world_ab()
    m = world.spawn("a", Mutator, "m")
    s = world.spawn("b", Sink, "s")
    world.send(m, SendBox(s))
    world.run_for(1.0)
    (got, sender) = world.actor(s).got[0]
    assert got == Box([1, 2]) and sender == m


def test_harness_send_is_pickled_too() -> None:
    world = world_ab()
    s = world.spawn("b", Sink, "s")
    box = Box([1])
    world.send(s, box)
    box.items.append(2)
    world.run_for(1.0)
    got = world.actor(s).got[0][0]
    assert got == Box([1]) and got is not box


def test_unpicklable_message_raises_at_send_site() -> None:
    world = world_ab()
    m = world.spawn("a", Mutator, "m")
    s = world.spawn("b", Sink, "s")
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        world.send(s, Box([threading.Lock()]))  # type: ignore[list-item]
    world.send(m, SendBad(s))
    world.run_for(1.0)
    assert world.actor(s).got == []
    assert world.errors and world.errors[0].actor == "a/m"
    assert "pickle" in world.errors[0].message
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        world.spawn("a", Sink, "bad-boot", boot_msg=lambda: None)


# ------------------------------------------------------ exit and children
def test_actor_exit_request_removes_actor_children_and_notifies_parent() -> None:
    world = world_ab()
    p = world.spawn("a", Parent, "p")
    world.send(p, Spawn(Child))
    world.run_for(0.1)
    (child_details,) = addresses_from_pokes(world)
    assert child_details == "a/p/Child-1"
    child = ActorAddress(child_details)
    world.send(child, Spawn(Child))  # a grandchild
    world.run_for(0.1)
    grandchild = ActorAddress(addresses_from_pokes(world)[1])
    assert grandchild.addressDetails == "a/p/Child-1/Child-1"
    child_inst = world.actor(child)

    world.send(child, ActorExitRequest())
    world.run_for(0.1)
    assert isinstance(child_inst.got[-1][0], ActorExitRequest)  # it saw the request
    assert world.actor(child) is None and world.actor(grandchild) is None
    parent_got = [m for m, _ in world.actor(p).got]
    assert ChildActorExited(child) in parent_got
    assert [type(x).__name__ for x in world.actors_on("a")] == ["Parent"]

    # Later messages to the exited actor are dead letters.
    dead_before = world.stats["dropped_dead"]
    world.send(child, Spawn(Child))
    world.run_for(0.1)
    assert world.stats["dropped_dead"] == dead_before + 1

    # A top-level actor's parent is the harness.
    world.send(p, ActorExitRequest())
    world.run_for(0.1)
    assert world.actor(p) is None
    assert any(isinstance(m, ChildActorExited) and m.childAddress == p for _, _, m in world.outbox)


def test_children_addresses_strings_and_global_names() -> None:
    world = world_ab()
    p = world.spawn("a", Parent, "p")
    world.send(p, Spawn(Child))
    world.send(p, Spawn(f"{__name__}.Child"))
    world.send(p, Spawn(Child, global_name="registry"))
    world.send(p, Spawn(Sink, global_name="registry"))  # already registered: same actor
    world.run_for(0.1)
    addrs = addresses_from_pokes(world)
    assert addrs == ["a/p/Child-1", "a/p/Child-2", "a/p/Child-3", "a/p/Child-3"]
    assert type(world.actor("a/p/Child-2")) is Child
    assert world.actor("a/p/Child-3").globalName == "registry"
    assert world.actor("a/p/Child-1").globalName is None
    # children talk like anyone else
    s = world.spawn("b", Sink, "s")
    world.send("a/p/Child-2", Poke(s, "hi"))
    world.run_for(0.1)
    assert world.actor(s).got == [("hi", ActorAddress("a/p/Child-2"))]


def test_children_die_with_a_crash_and_are_not_rebuilt() -> None:
    world = world_ab()
    p = world.spawn("a", Parent, "p")
    world.send(p, Spawn(Child))
    world.run_for(0.1)
    world.crash("a")
    world.restart("a")
    assert world.actor(p) is not None and world.actor("a/p/Child-1") is None


# ------------------------------------------------------------- exceptions
def test_exception_retried_once_then_poison_to_sender() -> None:
    world = world_ab()
    f = world.spawn("b", Flaky, "f")
    m = world.spawn("a", Mutator, "m")
    world.send(m, Poke(f, Boom(times=2)))
    world.run_for(1.0)
    assert [(e.attempt, e.exc_type, e.message) for e in world.errors] == [
        (1, "RuntimeError", "boom 1"), (2, "RuntimeError", "boom 2"),
    ]
    assert all(e.actor == "b/f" and e.msg_type == "Boom" for e in world.errors)
    assert "boom 2" in world.errors[1].traceback and "on_Boom" in world.errors[1].traceback
    poisons = [msg for msg, _ in world.actor(m).got if isinstance(msg, PoisonMessage)]
    assert len(poisons) == 1 and poisons[0].poisonMessage == Boom(times=2)
    assert "boom 2" in poisons[0].details
    assert [r.fields["attempt"] for r in world.history if r.kind == "actor.error"] == [1, 2]


def test_exception_once_is_recorded_and_retry_succeeds() -> None:
    world = world_ab()
    f = world.spawn("b", Flaky, "f")
    world.send(f, Boom(times=1))
    world.run_for(1.0)
    assert [e.attempt for e in world.errors] == [1]
    assert [r.kind for r in world.history if r.actor == "b/f"][-1] == "survived"
    assert not any(isinstance(m, PoisonMessage) for _, _, m in world.outbox)


def test_poison_to_the_harness_and_exit_errors_not_retried() -> None:
    world = world_ab()
    f = world.spawn("b", Flaky, "f")
    world.send(f, Boom(times=5))
    world.run_for(1.0)
    assert any(isinstance(m, PoisonMessage) for _, _, m in world.outbox)
    world.errors.clear()
    world.send(f, ActorExitRequest())
    world.run_for(1.0)
    assert [e.msg_type for e in world.errors] == ["ActorExitRequest"]
    assert world.actor(f) is None  # it exits anyway


# ----------------------------------------------------------------- timers
def test_wakeup_message_shape_and_pickled_payload() -> None:
    world = world_ab()
    t = world.spawn("a", Timed, "t")
    payload = Box([1])
    world.send(t, Arm(timedelta(milliseconds=250), payload))
    world.send(t, Arm(0.5, "seconds-as-float"))
    world.run_for(1.0)
    wakeups = [(msg, sender) for msg, sender in world.actor(t).got if isinstance(msg, WakeupMessage)]
    assert [w.payload for w, _ in wakeups] == [Box([1]), "seconds-as-float"]
    assert wakeups[0][0].delayPeriod == timedelta(milliseconds=250)
    assert all(sender == t for _, sender in wakeups)
    assert wakeups[0][0].payload is not payload
    times = [r.t for r in world.history if r.kind == "recv" and isinstance(r.fields["msg"], WakeupMessage)]
    local = world.options.local_latency_ms / 1000.0
    assert times == pytest.approx([local + 0.25, local + 0.5])


# ------------------------------------------------------------ host services
def draws(seed: int, restart: bool = False) -> dict[str, list[float]]:
    world = world_ab(seed)
    for node in ("a", "b"):
        for name in ("x", "y"):
            world.spawn(node, Timed, name)
    if restart:
        world.restart("a")
    for node in ("a", "b"):
        for name in ("x", "y"):
            world.send(f"{node}/{name}", Draw(3))
    world.run_for(0.1)
    return {r.actor: r.fields["values"] for r in world.history if r.kind == "draw"}


def test_host_rng_deterministic_per_seed_distinct_per_actor_and_incarnation() -> None:
    one, two = draws(1), draws(1)
    assert one == two and len(one) == 4
    assert len({tuple(v) for v in one.values()}) == 4
    other = draws(2)
    assert all(other[k] != one[k] for k in one)
    rebooted = draws(1, restart=True)
    assert rebooted["a/x"] != one["a/x"] and rebooted["b/x"] == one["b/x"]


def test_host_contract_and_noop_thespian_calls() -> None:
    world = world_ab()
    t = world.spawn("b", Timed, "t")
    inst = world.actor(t)
    host = inst.host
    assert host.node_id == "b" and inst.myAddress == t
    world.run_until(2.0)
    assert host.monotonic() == 2.0 and host.wall() == pytest.approx(1_700_000_002.0, abs=1e-6)
    host.record("custom", x=1)
    rec = world.history[-1]
    assert (rec.t, rec.node, rec.actor, rec.kind, rec.fields) == (2.0, "b", "b/t", "custom", {"x": 1})
    store = host.open_store("t-data")
    store.put(b"k", b"v")
    assert world.disk("b").open("t-data").get(b"k") == b"v"  # per-node namespace
    assert isinstance(inst._myRef.logger(), logging.Logger)
    inst.handleDeadLetters()
    inst.notifyOnSystemRegistrationChanges()
    inst.updateCapability("x", 1)
    inst.actorSystemShutdown()
    assert world.errors == []
