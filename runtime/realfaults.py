"""Faults on real node processes: the scenario schedule in real time, and
the network namespaces that partitions need.

:func:`plan` turns a scenario's fault list into the fault firings of one
run -- times, and the delay before each one is undone -- drawn from the
seed exactly as the simulator's harness draws them (``every_s`` intervals
one after the other, ``restore_after_s`` per firing), in *scenario*
seconds.  The real runner multiplies them by its time scale.  It is pure:
the same scenario and seed give the same plan (unit-tested without
processes).  Targets (``shard_leader``, ``leader``, ...) are resolved when a
fault fires, by asking the live cluster.

:class:`NetLab` puts every node in a network namespace of its own
(``ip netns``), joined by veth pairs to a bridge in the root namespace that
carries an address of a private /24, so the harness (and the clients) reach
every node.  A partition between two nodes is a ``blackhole`` route to the
other's address in each one's namespace; a one-way partition is the route
on the sending side only (over TCP that stalls the connections both ways,
as a lost direction does on a real network); ``heal`` removes every route.
Namespaces need root and iproute2: :func:`netns_available` says whether the
machine allows them; without, partitions are reported as unavailable and
skipped.  Everything NetLab creates carries the run's prefix and is removed
by :meth:`NetLab.close` (on every path).
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field

from sim.scenario import Fault, Scenario

# What real processes can do, and why the rest is skipped.
REAL_VERBS = ("crash", "restart", "pause", "resume", "partition", "partition_oneway", "bridge", "heal")
NETNS_VERBS = ("partition", "partition_oneway", "bridge")
UNAVAILABLE = {
    "clock": "clock skew and drift: every process on one machine reads the same kernel clock",
    "clock_jump": "clock jumps: every process on one machine reads the same kernel clock",
    "network": "latency/loss knobs: the real runner does not shape traffic (no netem here)",
    "network_reset": "latency/loss knobs: the real runner does not shape traffic (no netem here)",
    "move": "shard moves are not mapped to the real runner yet (the HTTP API has them: POST /shards/move)",
    "drain": "drains are not mapped to the real runner yet (the HTTP API has them)",
}
IP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Firing:
    """One firing of a scenario fault: at ``at_s`` (scenario seconds), undone
    ``undo_after_s`` later (None: not undone by itself)."""

    at_s: float
    index: int  # the fault's position in the scenario's list
    fault: Fault = field(compare=False)
    undo_after_s: float | None = None

    @property
    def do(self) -> str:
        return self.fault.do


def plan(scn: Scenario, seed: int) -> list[Firing]:
    """Every firing of the scenario's faults within ``duration_s``, in time order."""
    rng = random.Random(f"realsim:{seed}")
    out: list[Firing] = []
    for i, f in enumerate(scn.faults):
        if f.at_s is not None:
            if f.at_s < scn.duration_s:
                out.append(Firing(f.at_s, i, f, _undo(rng, f)))
            continue
        lo, hi = f.every_s
        end = min(f.to_s if f.to_s is not None else scn.duration_s, scn.duration_s)
        t = f.from_s or 0.0
        while True:
            t += rng.uniform(lo, hi)
            if t >= end:
                break
            out.append(Firing(t, i, f, _undo(rng, f)))
    out.sort(key=lambda x: (x.at_s, x.index))
    return out


def _undo(rng: random.Random, f: Fault) -> float | None:
    if f.restore_after_s is None:
        return None
    return rng.uniform(*f.restore_after_s)


def unavailable(scn: Scenario, netns: bool) -> dict[str, str]:
    """The scenario's fault verbs this machine cannot apply, with the reason."""
    out = {}
    for f in scn.faults:
        if f.do in UNAVAILABLE:
            out[f.do] = UNAVAILABLE[f.do]
        elif f.do in NETNS_VERBS and not netns:
            out[f.do] = "partitions need network namespaces (root and iproute2), not available here"
    return out


# ------------------------------------------------------------ namespaces
def netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=check)


class NetLab:
    """Network namespaces for ``nodes``: ``addr[node]`` is its address."""

    def __init__(self, nodes: list[str], tag: str | None = None) -> None:
        self.tag = tag or f"ch{os.getpid() % 100000}"
        self.nodes = list(nodes)
        self.subnet = self._free_subnet()
        self.bridge = f"{self.tag}br"
        self.ns = {n: f"{self.tag}{n}" for n in nodes}
        self.addr = {n: f"{self.subnet}.{11 + k}" for k, n in enumerate(nodes)}
        self.blocked: set[tuple[str, str]] = set()  # (from, to) node pairs with a blackhole route
        self.created: list[tuple[str, str]] = []

    @staticmethod
    def _free_subnet() -> str:
        used = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
        base = os.getpid() % 200
        for k in range(200):
            net = f"10.213.{(base + k) % 200 + 20}"
            if f"{net}." not in used:
                return net
        raise RuntimeError("no free 10.213.x.0/24 subnet for the run's namespaces")

    def open(self) -> "NetLab":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self.created.append(("link", self.bridge))
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for n in self.nodes:
                ns, host_if, ns_if = self.ns[n], f"{self.tag}{n}h", f"{self.tag}{n}c"
                _ip("netns", "add", ns)
                self.created.append(("netns", ns))
                _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
                self.created.append(("link", host_if))
                _ip("link", "set", ns_if, "netns", ns)
                _ip("link", "set", host_if, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self.addr[n]}/24", "dev", ns_if)
                _ip("-n", ns, "link", "set", ns_if, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def exec_prefix(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node]]

    def pids(self, node: str) -> list[int]:
        """Every process in the node's namespace (its launcher, admin, actors)."""
        r = _ip("netns", "pids", self.ns[node], check=False)
        return [int(x) for x in r.stdout.split() if x.isdigit()]

    def block(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Drop traffic from each ``a`` to each ``b``; returns the pairs newly blocked."""
        fresh = []
        for a, b in pairs:
            if a == b or (a, b) in self.blocked or a not in self.ns or b not in self.ns:
                continue
            _ip("-n", self.ns[a], "route", "add", "blackhole", f"{self.addr[b]}/32")
            self.blocked.add((a, b))
            fresh.append((a, b))
        return fresh

    def heal(self) -> int:
        n = len(self.blocked)
        for a, b in sorted(self.blocked):
            _ip("-n", self.ns[a], "route", "del", "blackhole", f"{self.addr[b]}/32", check=False)
        self.blocked.clear()
        return n

    def close(self) -> list[str]:
        """Remove everything this lab created (namespaces last-in first-out);
        returns what could not be removed."""
        left = []
        for kind, name in reversed(self.created):
            if kind == "netns":
                r = _ip("netns", "del", name, check=False)
            else:
                r = _ip("link", "del", name, check=False)
            if r.returncode != 0 and "Cannot find" not in r.stderr and "No such" not in r.stderr \
                    and "does not exist" not in r.stderr:
                left.append(f"{kind} {name}: {r.stderr.strip()}")
        self.created.clear()
        return left


def pairs_between(groups: list[list[str]], nodes: list[str]) -> list[tuple[str, str]]:
    """Both directions between nodes of different groups (clients ignored)."""
    known = set(nodes)
    out = []
    for i, g in enumerate(groups):
        for h in groups[i + 1:]:
            for a in g:
                for b in h:
                    if a in known and b in known and a != b:
                        out += [(a, b), (b, a)]
    return out


def describe_groups(groups: list[list[str]]) -> str:
    return " | ".join(",".join(g) for g in groups)
