"""Determinism of the simulator: same seed => byte-identical trace, in any
process; plus the basic event-loop API."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorAddress, WakeupMessage

from actors.base import ChorusActor
from sim.options import SimOptions
from sim.world import World

REPO = Path(__file__).resolve().parent.parent
NODES = ("n1", "n2", "n3")


@dataclass(frozen=True)
class Start:
    peers: tuple[ActorAddress, ...]


@dataclass(frozen=True)
class Gossip:
    origin: str
    counter: int
    wall: float
    note: dict[str, int]


class Gossiper(ChorusActor):
    """Every ~50 ms tells a random peer its counter; persists now and then."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: tuple[ActorAddress, ...] = ()
        self.counter = 0
        self.seen: dict[str, int] = {}

    def on_Start(self, msg: Start, sender: Any) -> None:
        self.peers = msg.peers
        self.store = self.open_store(f"gossip-{self.myAddress.addressDetails}")
        raw = self.store.get(b"counter")
        self.counter = int(raw) if raw else 0
        self.set_timer(self.rng.uniform(0.01, 0.05), "tick")

    def on_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        self.counter += 1
        peer = self.rng.choice(self.peers)
        self.send(peer, Gossip(self.myAddress.addressDetails, self.counter, self.wall(),
                               {"x": self.counter % 7}))
        self.store.put(b"counter", str(self.counter).encode())
        if self.rng.random() < 0.3:
            self.store.sync()
        self.set_timer(self.rng.uniform(0.02, 0.08), "tick")

    def on_Gossip(self, msg: Gossip, sender: Any) -> None:
        self.seen[msg.origin] = max(self.seen.get(msg.origin, 0), msg.counter)
        self.record("gossip", origin=msg.origin, counter=msg.counter, mono=self.now())


def scenario(seed: int, trace_path: str | None = None) -> World:
    """A few seconds of gossip under swarm-drawn faults and scheduled chaos."""
    options = SimOptions.swarm(random.Random(seed)).with_overrides(loss=0.05, reorder=True,
                                                                   reorder_jitter_ms=5.0)
    world = World(seed, options, trace_path=trace_path)
    peers = tuple(ActorAddress(f"{n}/g") for n in NODES)
    for node in NODES:
        world.add_node(node)
        world.spawn(node, Gossiper, "g", Start(peers))
    chaos = random.Random(seed * 7919)
    t = 0.2
    while t < 4.0:
        node = chaos.choice(NODES)
        verb = chaos.randrange(6)
        if verb == 0:
            world.at(t, lambda n=node: world.crash(n), f"crash {node}")
            world.at(t + 0.3, lambda n=node: world.restart(n), f"restart {node}")
        elif verb == 1:
            world.at(t, lambda n=node: world.partition([n]), f"isolate {node}")
            world.at(t + 0.4, world.heal, "heal")
        elif verb == 2:
            world.at(t, lambda n=node: world.pause(n), f"pause {node}")
            world.at(t + 0.2, lambda n=node: world.resume(n), f"resume {node}")
        elif verb == 3:
            world.at(t, lambda n=node: world.clock_jump(n, -1.5), f"jump {node}")
        elif verb == 4:
            world.at(t, lambda n=node: world.set_clock(n, drift_ppm=200.0), f"drift {node}")
        else:
            world.at(t, lambda: world.set_network(duplicate=0.2), "dups on")
            world.at(t + 0.3, lambda: world.set_network(duplicate=0.0), "dups off")
        t += chaos.uniform(0.2, 0.6)
    world.run_until(5.0)
    return world


def test_same_seed_same_trace_hash() -> None:
    a, b = scenario(42), scenario(42)
    assert a.trace_hash() == b.trace_hash()
    assert a.stats == b.stats and a.stats["delivered"] > 100
    assert [(r.t, r.actor, r.kind, r.fields) for r in a.history] == [
        (r.t, r.actor, r.kind, r.fields) for r in b.history
    ]


def test_different_seeds_differ() -> None:
    hashes = {scenario(seed).trace_hash() for seed in (1, 2, 3)}
    assert len(hashes) == 3


def test_trace_file_written_and_hash_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "run.trace"
    traced = scenario(42, trace_path=str(path))
    traced.close()
    assert traced.trace_hash() == scenario(42).trace_hash()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) > traced.stats["events"]  # events plus fault verbs and send-time drops
    assert any(" deliver n" in line and "Gossip(origin=" in line for line in lines)
    assert any(" fault.crash sim -> " in line for line in lines)
    assert all(len(line) < 400 for line in lines)
    assert " at 0x" not in path.read_text(encoding="utf-8")  # no memory addresses


def test_same_hash_and_trace_in_other_processes_with_other_hash_seeds(tmp_path: Path) -> None:
    here = tmp_path / "here.trace"
    world = scenario(42, trace_path=str(here))
    world.close()
    expected = world.trace_hash()
    for hash_seed in ("0", "12345"):
        there = tmp_path / f"there-{hash_seed}.trace"
        code = (
            "import importlib, sys; "
            f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]; "
            f"m = importlib.import_module({__name__!r}); "
            f"w = m.scenario(42, trace_path={str(there)!r}); w.close(); "
            "print(w.trace_hash())"
        )
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected
        assert there.read_bytes() == here.read_bytes()


# ---------------------------------------------------------------- event loop
class Echo(ChorusActor):
    def receiveMessage(self, msg: Any, sender: Any) -> None:
        self.record("echo", msg=msg)


def test_run_until_step_pending_and_at() -> None:
    world = World(0)
    world.add_node("n")
    e = world.spawn("n", Echo, "e")
    calls: list[float] = []
    world.at(0.5, lambda: calls.append(world.now), "mark")
    world.send(e, "hello")
    assert world.pending() == 2
    assert world.step() and world.now == pytest.approx(world.options.local_latency_ms / 1000)
    assert world.pending() == 1
    world.run_until(0.25)
    assert world.now == 0.25 and calls == []
    world.run_for(0.25)
    assert calls == [0.5] and world.now == 0.5 and world.pending() == 0
    assert not world.step()
    with pytest.raises(ValueError):
        world.run_until(0.1)
    with pytest.raises(ValueError):
        world.at(0.1, lambda: None)
    assert world.stats["events"] == 2 and world.stats["delivered"] == 1
    assert [r.kind for r in world.history if r.actor == "n/e"] == ["echo"]


def test_same_time_events_run_in_scheduling_order() -> None:
    world = World(0)
    order: list[str] = []
    for label in ("first", "second", "third"):
        world.at(1.0, lambda lab=label: order.append(lab), label)
    world.run_until(1.0)
    assert order == ["first", "second", "third"]
