"""Fault verbs: crash, restart, pause/resume and clock skew."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from thespian.actors import ActorAddress, WakeupMessage

from actors.base import ChorusActor
from sim.clock import EPOCH_S
from sim.options import SimOptions
from sim.world import World
from storage.base import StoreClosed


@dataclass(frozen=True)
class Boot:
    tag: str


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    sync: bool


@dataclass(frozen=True)
class Forward:
    target: ActorAddress
    msg: Any


@dataclass(frozen=True)
class Arm:
    delay_s: float
    payload: Any


class Keeper(ChorusActor):
    """Keeps a map in memory and in its store; arms a 1 s timer at boot."""

    def __init__(self) -> None:
        super().__init__()
        self.first: Any = None
        self.mem: dict[str, str] = {}
        self.recovered: dict[str, str] = {}
        self.store: Any = None

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        if self.first is None:
            self.first = msg
        self.record("recv", msg=msg)
        return super().receiveMessage(msg, sender)

    def on_Boot(self, msg: Boot, sender: Any) -> None:
        self.store = self.open_store("keeper")
        self.recovered = {k.decode(): v.decode() for k, v in self.store.scan()}
        self.mem = dict(self.recovered)
        self.set_timer(1.0, ("boot-timer", msg.tag))

    def on_Put(self, msg: Put, sender: Any) -> None:
        self.mem[msg.key] = msg.value
        self.store.put(msg.key.encode(), msg.value.encode())
        if msg.sync:
            self.store.sync()

    def on_Arm(self, msg: Arm, sender: Any) -> None:
        self.set_timer(msg.delay_s, msg.payload)

    def on_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        self.record("tick", payload=msg.payload, mono=self.now(), wall=self.wall())


class Forwarder(ChorusActor):
    def on_Forward(self, msg: Forward, sender: Any) -> None:
        self.send(msg.target, msg.msg)


FIXED_10MS = dict(latency_min_ms=10.0, latency_mean_ms=10.0, latency_max_ms=10.0)
KEEPER = ActorAddress("b/keeper")
FWD_A = ActorAddress("a/fwd")


def make_world(seed: int = 3, **knobs: Any) -> World:
    world = World(seed, SimOptions(**{**FIXED_10MS, **knobs}))
    for node in ("a", "b"):
        world.add_node(node)
        world.spawn(node, Forwarder, "fwd")
    world.spawn("b", Keeper, "keeper", Boot("v1"))
    return world


def records(world: World, kind: str, actor: str = "b/keeper") -> list[Any]:
    return [r for r in world.history if r.kind == kind and r.actor == actor]


def puts_seen(world: World) -> list[str]:
    return [r.fields["msg"].key for r in records(world, "recv") if isinstance(r.fields["msg"], Put)]


# -------------------------------------------------------------------- crash
def test_crash_loses_actors_unsynced_writes_and_open_handles() -> None:
    world = make_world()
    world.send(KEEPER, Put("k1", "v1", sync=True))
    world.send(KEEPER, Put("k2", "v2", sync=False))
    world.run_for(0.1)
    old = world.actor(KEEPER)
    assert old.mem == {"k1": "v1", "k2": "v2"}
    world.crash("b")
    assert not world.is_up("b") and world.is_up("a")
    assert world.actor(KEEPER) is None and world.actors_on("b") == []
    with pytest.raises(StoreClosed):
        old.store.get(b"k1")
    store = world.disk("b").open("keeper")
    assert store.get(b"k1") == b"v1" and store.get(b"k2") is None


def test_crash_cancels_timers() -> None:
    world = make_world()
    world.at(0.5, lambda: world.crash("b"))
    world.at(0.6, lambda: world.restart("b"))
    world.run_until(3.0)
    ticks = records(world, "tick")
    assert [round(r.t, 6) for r in ticks] == [1.6]  # the t=1.0 timer died with incarnation 1


def test_crash_drops_messages_in_flight_to_the_node() -> None:
    world = make_world()
    world.run_until(0.7)
    world.send(FWD_A, Forward(KEEPER, Put("late", "x", sync=True)))  # reaches b at ~0.71
    world.at(0.705, lambda: world.crash("b"))
    world.at(0.706, lambda: world.restart("b"))
    world.run_until(0.9)  # before the dead incarnation's boot timer (t=1.0) is discarded too
    assert puts_seen(world) == []
    assert world.stats["dropped_crash"] == 1
    assert world.actor(KEEPER) is not None  # the new incarnation is there


def test_sends_to_a_down_node_are_dropped() -> None:
    world = make_world()
    world.run_until(0.1)
    world.crash("b")
    world.send(KEEPER, Put("lost2", "x", sync=True))  # the harness too
    assert world.stats["dropped_crash"] == 1  # dropped at the send site
    world.send(FWD_A, Forward(KEEPER, Put("lost", "x", sync=True)))
    world.run_until(0.2)
    assert world.stats["dropped_crash"] == 2
    world.restart("b")
    world.run_until(0.5)
    assert puts_seen(world) == []


def test_messages_sent_before_a_crash_still_arrive() -> None:
    world = make_world()
    world.send(FWD_A, Forward(KEEPER, Put("from-a", "x", sync=False)))  # on the wire ~t=0
    world.at(0.005, lambda: world.crash("a"))
    world.run_until(0.1)
    assert puts_seen(world) == ["from-a"]


# ------------------------------------------------------------------ restart
def test_restart_rebuilds_actors_with_boot_and_synced_state() -> None:
    world = make_world()
    world.send(KEEPER, Put("k1", "v1", sync=True))
    world.send(KEEPER, Put("k2", "v2", sync=False))
    world.run_for(0.1)
    old = world.actor(KEEPER)
    world.crash("b")
    world.restart("b")
    assert world.incarnation("b") == 2
    world.run_for(0.1)
    new = world.actor(KEEPER)
    assert new is not None and new is not old
    assert new.myAddress == KEEPER
    assert isinstance(new.first, Boot) and new.first == Boot("v1")
    assert new.recovered == {"k1": "v1"}
    assert world.actor("b/fwd") is not None


def test_restart_of_an_up_node_is_a_reboot() -> None:
    world = make_world()
    world.send(KEEPER, Put("k", "unsynced", sync=False))
    world.run_for(0.1)
    old = world.actor(KEEPER)
    world.restart("b")
    world.run_for(0.1)
    assert world.actor(KEEPER) is not old and world.actor(KEEPER).recovered == {}
    kinds = [r.kind for r in world.history if r.actor == "sim"]
    assert kinds[-2:] == ["sim.crash", "sim.restart"]


def test_spawn_on_a_down_node_waits_for_restart() -> None:
    world = make_world()
    world.crash("a")
    addr = world.spawn("a", Keeper, "late", Boot("late"))
    assert world.actor(addr) is None
    world.restart("a")
    world.run_for(0.1)
    assert world.actor(addr).first == Boot("late")


# -------------------------------------------------------------- pause/resume
def test_pause_holds_deliveries_and_timers_in_order_clock_keeps_running() -> None:
    world = make_world()
    world.send(KEEPER, Arm(0.2, "t-0.2"))
    world.run_until(0.05)
    world.pause("b")
    for i in range(5):
        world.send(FWD_A, Forward(KEEPER, Put(f"p{i}", "x", sync=False)))  # due ~0.06
    world.at(0.5, lambda: world.resume("b"))
    world.run_until(0.499)
    assert puts_seen(world) == [] and records(world, "tick") == []
    assert world.pending() >= 6 and world.stats["held"] == 6
    world.run_until(0.6)
    after = [r for r in records(world, "recv") if r.t >= 0.5]
    assert [round(r.t, 6) for r in after] == [0.5] * 6
    assert [getattr(r.fields["msg"], "key", "tick") for r in after] == [
        "p0", "p1", "p2", "p3", "p4", "tick",
    ]
    (tick,) = records(world, "tick")
    assert tick.fields["payload"] == "t-0.2"
    assert tick.fields["mono"] == pytest.approx(0.5)  # clocks ran during the pause


def test_crash_while_paused_discards_held_events() -> None:
    world = make_world()
    world.run_until(0.05)
    world.pause("b")
    world.send(FWD_A, Forward(KEEPER, Put("held", "x", sync=False)))
    world.run_until(0.1)
    world.crash("b")
    world.restart("b")
    world.resume("b")
    world.run_until(0.5)
    assert puts_seen(world) == [] and not world.is_paused("b")


# ------------------------------------------------------------------- clocks
def test_initial_offsets_and_drifts_drawn_per_node() -> None:
    world = World(11, SimOptions(clock_offset_max_s=5.0, clock_drift_max_ppm=300.0))
    for n in ("a", "b", "c"):
        world.add_node(n)
    offsets = [world.wall(n) - EPOCH_S for n in world.nodes]
    assert all(abs(o) <= 5.0 for o in offsets) and len(set(offsets)) == 3
    world.run_until(1000.0)
    rates = [world.monotonic(n) / 1000.0 for n in world.nodes]
    assert all(abs(r - 1.0) <= 300e-6 + 1e-9 for r in rates) and len(set(rates)) == 3
    plain = World(11)
    plain.add_node("a")
    plain.run_until(10.0)
    assert plain.wall("a") == EPOCH_S + 10.0 and plain.monotonic("a") == 10.0


def test_set_clock_offset() -> None:
    world = make_world()
    world.run_until(2.0)
    world.set_clock("b", offset_s=2.5)
    assert world.wall("b") == pytest.approx(EPOCH_S + 2.0 + 2.5, abs=1e-6)
    world.set_clock("b", offset_s=-1.0)  # may go backwards
    assert world.wall("b") == pytest.approx(EPOCH_S + 2.0 - 1.0, abs=1e-6)
    assert world.monotonic("b") == pytest.approx(2.0)


@pytest.mark.parametrize("ppm, fire_at", [(50_000.0, 1.0 / 1.05), (-50_000.0, 1.0 / 0.95)])
def test_drift_moves_timers_in_virtual_time(ppm: float, fire_at: float) -> None:
    world = make_world()
    world.run_until(0.5)
    world.set_clock("b", drift_ppm=ppm)
    world.send(KEEPER, Arm(1.0, "drift"))  # handled at 0.5 + local latency
    world.run_until(3.0)
    armed_at = 0.5 + world.options.local_latency_ms / 1000.0
    tick = [r for r in records(world, "tick") if r.fields["payload"] == "drift"][0]
    assert tick.t == pytest.approx(armed_at + fire_at, abs=2e-6)
    assert tick.t != pytest.approx(armed_at + 1.0, abs=1e-3)
    # monotonic runs at 1 + ppm/1e6 since the change
    assert world.monotonic("b") == pytest.approx(0.5 + 2.5 * (1 + ppm * 1e-6))


def test_drift_change_retimes_pending_timers() -> None:
    world = make_world()
    world.send(KEEPER, Arm(1.0, "x"))
    world.at(0.5, lambda: world.set_clock("b", drift_ppm=50_000.0))
    world.run_until(3.0)
    tick = [r for r in records(world, "tick") if r.fields["payload"] == "x"][0]
    armed_at = world.options.local_latency_ms / 1000.0
    remaining_local = armed_at + 1.0 - 0.5
    assert tick.t == pytest.approx(0.5 + remaining_local / 1.05, abs=2e-6)
    assert tick.fields["mono"] == pytest.approx(armed_at + 1.0, abs=2e-6)


def test_clock_jump_moves_wall_only() -> None:
    world = make_world()
    world.send(KEEPER, Arm(2.0, "after-jump"))
    world.run_until(1.0)
    wall0, mono0 = world.wall("b"), world.monotonic("b")
    world.clock_jump("b", -10.0)
    assert world.wall("b") == pytest.approx(wall0 - 10.0, abs=1e-6)
    assert world.monotonic("b") == mono0
    world.clock_jump("b", +3.0)
    assert world.wall("b") == pytest.approx(wall0 - 7.0, abs=1e-6)
    world.run_until(1.5)
    assert world.monotonic("b") == pytest.approx(mono0 + 0.5)
    assert world.wall("b") == pytest.approx(wall0 - 6.5, abs=1e-6)
    world.run_until(3.0)
    tick = [r for r in records(world, "tick") if r.fields["payload"] == "after-jump"][0]
    assert tick.t == pytest.approx(2.0 + world.options.local_latency_ms / 1000.0)
    assert tick.fields["wall"] == pytest.approx(EPOCH_S + tick.t - 7.0, abs=1e-6)


def test_monotonic_never_goes_backwards() -> None:
    world = make_world()
    seen = []
    for i, ppm in enumerate([0.0, 90_000.0, -90_000.0, 1.0, -99_999.0]):
        world.run_until(0.1 * (i + 1))
        seen.append(world.monotonic("b"))
        world.set_clock("b", offset_s=-100.0 * i, drift_ppm=ppm)
        world.clock_jump("b", -5.0)
        seen.append(world.monotonic("b"))
    assert seen == sorted(seen)
    with pytest.raises(ValueError):
        world.set_clock("b", drift_ppm=-1e6)
