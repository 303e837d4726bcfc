"""The simulated network: latency, loss, duplication, ordering, partitions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from thespian.actors import ActorAddress

from actors.base import ChorusActor
from sim.options import SimOptions
from sim.world import World


@dataclass(frozen=True)
class Fire:
    """Ask a Relay to send ``count`` Seq messages to ``target``."""

    target: ActorAddress
    count: int
    tag: str = ""


@dataclass(frozen=True)
class Seq:
    tag: str
    i: int


class Relay(ChorusActor):
    def on_Fire(self, msg: Fire, sender: Any) -> None:
        for i in range(msg.count):
            self.send(msg.target, Seq(msg.tag, i))


class Sink(ChorusActor):
    def receiveMessage(self, msg: Any, sender: Any) -> None:
        self.record("recv", msg=msg, sender=sender.addressDetails)


NODES = ("a", "b", "c")


def make_world(seed: int = 1, **knobs: Any) -> World:
    world = World(seed, SimOptions(**knobs))
    for node in NODES:
        world.add_node(node)
        world.spawn(node, Relay, "relay")
        world.spawn(node, Sink, "sink")
    return world


def relay(node: str) -> ActorAddress:
    return ActorAddress(f"{node}/relay")


def sink(node: str) -> ActorAddress:
    return ActorAddress(f"{node}/sink")


def received(world: World, node: str, tag: str | None = None) -> list[tuple[float, Seq]]:
    return [
        (r.t, r.fields["msg"])
        for r in world.history
        if r.kind == "recv" and r.actor == f"{node}/sink"
        and (tag is None or r.fields["msg"].tag == tag)
    ]


def fire(world: World, src: str, dst: str, count: int, tag: str = "") -> None:
    world.send(relay(src), Fire(sink(dst), count, tag))


def reaches(world: World, src: str, dst: str, tag: str) -> bool:
    """Fire one message src -> dst and report whether it arrived."""
    fire(world, src, dst, 1, tag)
    world.run_for(1.0)
    return len(received(world, dst, tag)) == 1


# ------------------------------------------------------------------ latency
def test_latency_within_bounds_and_mean_plausible() -> None:
    # reorder=True (no jitter) shows the raw per-message distribution; with
    # FIFO a burst on one pair inherits the largest delay drawn before it.
    world = make_world(latency_min_ms=2.0, latency_mean_ms=6.0, latency_max_ms=30.0, reorder=True)
    fire(world, "a", "b", 2000)
    world.run_until(0.0)  # the Fire itself arrives after local latency only
    world.run_for(1.0)
    got = received(world, "b")
    assert len(got) == 2000
    t_send = world.options.local_latency_ms / 1000.0  # Relay handled Fire then
    lat_ms = [(t - t_send) * 1000.0 for t, _ in got]
    assert min(lat_ms) >= 2.0 - 1e-3
    assert max(lat_ms) <= 30.0 + 1e-3
    mean = sum(lat_ms) / len(lat_ms)
    assert 5.0 < mean < 7.0, mean
    assert max(lat_ms) > 15.0  # the exponential tail is really there


def test_same_node_messages_take_local_latency_and_are_never_faulted() -> None:
    world = make_world(loss=1.0, duplicate=1.0, local_latency_ms=0.5)
    fire(world, "a", "a", 100)
    world.run_for(1.0)
    got = received(world, "a")
    assert [m.i for _, m in got] == list(range(100))
    assert {round(t, 6) for t, _ in got} == {0.001}  # Fire after 0.5 ms, Seq 0.5 ms later
    assert world.stats["dropped_loss"] == 0 and world.stats["duplicated"] == 0


def test_spikes_exceed_the_cap() -> None:
    world = make_world(latency_max_ms=10.0, spike_prob=0.05, spike_ms=500.0, reorder=True)
    fire(world, "a", "b", 400)
    world.run_for(2.0)
    times = [t for t, _ in received(world, "b")]
    assert len(times) == 400
    assert max(times) > 0.25  # at least one spike of >= 250 ms
    assert sum(1 for t in times if t < 0.011) > 300  # most are not spiked


# ------------------------------------------------------------ loss and dups
def test_loss_rate_roughly_as_set() -> None:
    world = make_world(loss=0.2)
    fire(world, "a", "b", 2000)
    world.run_for(1.0)
    n = len(received(world, "b"))
    assert 1450 <= n <= 1750, n
    assert world.stats["dropped_loss"] == 2000 - n


def test_duplication() -> None:
    world = make_world(duplicate=0.1)
    fire(world, "a", "b", 2000)
    world.run_for(1.0)
    got = [m.i for _, m in received(world, "b")]
    assert set(got) == set(range(2000))
    dups = len(got) - 2000
    assert 120 <= dups <= 280, dups
    assert world.stats["duplicated"] == dups


def test_duplicates_are_unpickled_separately() -> None:
    world = make_world(duplicate=1.0)
    fire(world, "a", "b", 1)
    world.run_for(1.0)
    msgs = [m for _, m in received(world, "b")]
    assert len(msgs) == 2 and msgs[0] == msgs[1] and msgs[0] is not msgs[1]


# ----------------------------------------------------------------- ordering
def test_fifo_burst_is_clamped_to_running_max() -> None:
    world = make_world(latency_min_ms=2.0, latency_mean_ms=6.0, latency_max_ms=30.0)
    fire(world, "a", "b", 200)
    world.run_for(1.0)
    times = [t for t, _ in received(world, "b")]
    assert times == sorted(times) and len(times) == 200
    assert times[-1] > times[0]


def test_fifo_per_pair_without_reorder() -> None:
    world = make_world(latency_min_ms=0.1, latency_mean_ms=20.0, latency_max_ms=200.0,
                       spike_prob=0.05, spike_ms=300.0)
    fire(world, "a", "b", 500, "x")
    fire(world, "c", "b", 500, "y")
    world.run_for(2.0)
    for tag in ("x", "y"):
        assert [m.i for _, m in received(world, "b", tag)] == list(range(500))
    # The two senders' streams do interleave (FIFO is per pair, not global).
    tags = [m.tag for _, m in received(world, "b")]
    assert tags != sorted(tags)


def test_reorder_actually_reorders() -> None:
    world = make_world(latency_min_ms=0.1, latency_mean_ms=5.0, latency_max_ms=50.0,
                       reorder=True, reorder_jitter_ms=10.0)
    fire(world, "a", "b", 500)
    world.run_for(2.0)
    order = [m.i for _, m in received(world, "b")]
    assert sorted(order) == list(range(500))
    inversions = sum(1 for x, y in zip(order, order[1:]) if x > y)
    assert inversions > 50, inversions


def test_reorder_jitter_alone_reorders_and_fixed_latency_alone_does_not() -> None:
    fixed = dict(latency_min_ms=5.0, latency_mean_ms=5.0, latency_max_ms=5.0, reorder=True)
    calm = make_world(**fixed)
    jittery = make_world(**fixed, reorder_jitter_ms=10.0)
    for world in (calm, jittery):
        fire(world, "a", "b", 200)
        world.run_for(1.0)
    assert [m.i for _, m in received(calm, "b")] == list(range(200))
    order = [m.i for _, m in received(jittery, "b")]
    assert sorted(order) == list(range(200)) and order != list(range(200))
    lat = [t for t, _ in received(jittery, "b")]
    assert min(lat) >= 0.005 and max(lat) <= 0.015 + 0.0001


# --------------------------------------------------------------- partitions
def test_symmetric_partition_and_unlisted_nodes() -> None:
    world = make_world()
    world.partition(["a"], ["b"])  # c is unlisted: its own extra group
    assert not reaches(world, "a", "b", "ab") and not reaches(world, "b", "a", "ba")
    assert not reaches(world, "a", "c", "ac") and not reaches(world, "c", "b", "cb")
    assert reaches(world, "a", "a", "aa")
    assert world.stats["dropped_partition"] == 4
    world.heal()
    world.partition(["a"])  # a alone; b and c (unlisted) together
    assert reaches(world, "b", "c", "bc") and reaches(world, "c", "b", "cb2")
    assert not reaches(world, "a", "b", "ab2") and not reaches(world, "c", "a", "ca")


def test_oneway_partition() -> None:
    world = make_world()
    world.partition_oneway(["a"], ["b"])
    assert not reaches(world, "a", "b", "ab")
    assert reaches(world, "b", "a", "ba")
    assert reaches(world, "a", "c", "ac") and reaches(world, "c", "b", "cb")
    assert world.cut_links() == [("a", "b")]


def test_bridge() -> None:
    world = make_world()
    world.bridge(["a"], ["c"], "b")
    assert not reaches(world, "a", "c", "ac") and not reaches(world, "c", "a", "ca")
    for src, dst in (("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")):
        assert reaches(world, src, dst, src + dst)


def test_rules_compose_and_heal_restores_traffic() -> None:
    world = make_world()
    world.partition_oneway("a", "b")
    world.partition_oneway("b", "c")
    assert world.cut_links() == [("a", "b"), ("b", "c")]
    assert not reaches(world, "a", "b", "1") and not reaches(world, "b", "c", "2")
    assert reaches(world, "c", "a", "3")
    world.heal()
    assert world.cut_links() == []
    for src in NODES:
        for dst in NODES:
            assert reaches(world, src, dst, f"healed-{src}{dst}")


def test_partition_drops_messages_already_in_flight() -> None:
    world = make_world(latency_min_ms=10.0, latency_mean_ms=10.0, latency_max_ms=10.0)
    fire(world, "a", "b", 5)
    world.at(0.005, lambda: world.partition(["a"], ["b", "c"]), "split")
    world.at(0.5, world.heal)
    world.run_for(1.0)
    assert received(world, "b") == []
    assert world.stats["dropped_partition"] == 5
    assert reaches(world, "a", "b", "after")


def test_partition_checked_at_send_time_too() -> None:
    world = make_world(latency_min_ms=10.0, latency_mean_ms=10.0, latency_max_ms=10.0)
    world.run_until(0.1)
    world.partition(["a"], ["b", "c"])
    fire(world, "a", "b", 3)
    world.run_until(0.1 + 0.005)  # sent (and dropped) at ~0.10001, heal before it would land
    assert world.stats["dropped_partition"] == 3
    world.heal()
    world.run_for(1.0)
    assert received(world, "b") == []


def test_partition_rejects_unknown_and_overlapping_nodes() -> None:
    world = make_world()
    with pytest.raises(KeyError):
        world.partition(["a"], ["zz"])
    with pytest.raises(ValueError):
        world.partition(["a", "b"], ["b"])
    with pytest.raises(ValueError):
        world.bridge(["a"], ["c"], "a")


def test_nodes_added_later_obey_the_unlisted_group_rule() -> None:
    world = make_world()
    world.partition(["a"], ["b"])
    world.add_node("d")
    world.spawn("d", Relay, "relay")
    world.spawn("d", Sink, "sink")
    assert reaches(world, "c", "d", "cd")
    assert not reaches(world, "d", "a", "da")


def test_set_network_changes_knobs_mid_run() -> None:
    world = make_world()
    world.at(1.0, lambda: world.set_network(loss=1.0), "loss on")
    world.at(2.0, lambda: world.set_network(loss=0.0), "loss off")
    world.run_until(1.5)
    fire(world, "a", "b", 10, "lossy")
    world.run_until(2.5)
    fire(world, "a", "b", 10, "clean")
    world.run_until(3.0)
    assert received(world, "b", "lossy") == []
    assert len(received(world, "b", "clean")) == 10
    assert world.options.loss == 0.0
