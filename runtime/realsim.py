"""One scenario, two worlds: a scenario file run on real node processes.

``brokerctl simulate FILE --real`` reads the same scenario as the
simulator (``sim/scenario.py``), starts that many real nodes
(``runtime/realcluster.py``; each in a network namespace of its own when the
machine allows it, ``runtime/realfaults.py``), creates the topics, runs the
data workload with the real clients (``runtime/client.py``: one producer per
scenario producer at its consistency level, the subscriptions' consumers
acknowledging or, at ``nack_ratio``, refusing), and applies the fault
schedule in real time: the scenario's seconds times ``time_scale``.

* ``crash`` -- SIGKILL every process of the node; the undo (after
  ``restore_after_s``) starts it again on the same data directory;
* ``pause`` / ``resume`` -- SIGSTOP / SIGCONT every process of the node;
* ``partition``, ``partition_oneway``, ``bridge``, ``heal`` -- blackhole
  routes between the nodes' namespaces.  Clients stay in the root namespace
  and reach every node: a client named in a partition group is ignored;
* clock skew, traffic shaping, moves and drains are not available: the run
  lists them and skips them (``realfaults.UNAVAILABLE``).

The history is recorded in the simulator's format (``sim.history.Record``,
time in scenario seconds): ``produce.invoke`` / ``produce.done`` per record
as the producer saw it (shard, offset, level), ``consume.deliver`` per
delivered record, and the Raft peers' own ``raft.*`` records, written by
the nodes' processes (``runtime/recordfile.py``).  After the faults every
node is healed, resumed and restarted, the cluster must converge (one
agency leader, every shard led and fully in sync), the clients stop, the
nodes stop, and each node's final shard logs and Raft log are read from its
data directory.  Then the simulator's checkers judge the run.

Checks that need what a real run cannot observe are listed as skipped with
the reason (``SKIPPED_CHECKS``).  Every process the run starts, it stops by
PID; every namespace it creates, it removes; every wait is bounded.
"""
from __future__ import annotations

import heapq
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sim.history import Violation
from sim.scenario import Scenario, expand_groups

from runtime import realfaults as rf
from runtime.realhistory import Recorder, keys_for_shards, outcome, payload

SKIPPED_CHECKS = {
    "linearizability": "the agency's key-value operations are not on the client protocol: no real KV workload",
    "delivery_order": "a delivery does not carry its leader epoch on the client protocol",
}
RAFT_RECORD_CHECKS = ("election_safety", "leader_completeness", "state_machine_safety", "committed_never_change")
DEFAULT_TIME_SCALE = 0.4
CONVERGE_S = 120.0  # after the heal: every node up, one agency leader, every shard led and in sync
FLUSH_S = 60.0  # the producers deliver what they hold
CATCH_UP_S = 60.0  # the consumers receive every acknowledged record
HTTP_S = 2.0


@dataclass
class RealResult:
    scenario: str
    seed: int
    time_scale: float
    netns: bool = False
    faults: list[tuple[float, str]] = field(default_factory=list)  # (scenario s, what), as applied
    fault_counts: dict[str, int] = field(default_factory=dict)  # applied, by verb
    skipped_faults: dict[str, str] = field(default_factory=dict)  # verb -> why it cannot run here
    skipped_checks: dict[str, str] = field(default_factory=dict)
    violations: dict[str, list[Violation]] = field(default_factory=dict)
    data_stats: dict = field(default_factory=dict)
    acked: int = 0  # records acknowledged at quorum or all
    acked_weak: int = 0  # at one or any
    lost: int = 0  # acknowledged at quorum or all, missing from the final log
    lost_weak: int = 0  # acknowledged at one/any and missing (allowed, counted)
    failed_sends: int = 0
    converge_s: float = 0.0  # real seconds from the heal until every node and shard was back in order
    converge_waited_on: str = ""  # what held the convergence after the heal up last (empty: nothing)
    waited_on: str = ""
    skipped_firings: int = 0  # firings not applied (verb not available here, or no such node then)
    deliveries: int = 0
    raft_records: int = 0
    wall_seconds: float = 0.0
    replay: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not any(self.violations.values())

    def failed_checks(self) -> list[str]:
        return [k for k, v in self.violations.items() if v] + (["harness"] if self.error else [])


def check_runnable(scn: Scenario, time_scale: float) -> None:
    """Raise ValueError saying why ``scn`` cannot run on real processes."""
    if scn.data is None or not scn.data.topics:
        raise ValueError(f"{scn.path or scn.name}: the real runner needs a data section (topics, producers); "
                         "agency-only scenarios have no real workload")
    if scn.mqtt is not None:
        raise ValueError(f"{scn.path or scn.name}: MQTT scenarios are not mapped to the real runner")
    if not 0.05 <= time_scale <= 10:
        raise ValueError(f"--time-scale must be in [0.05, 10], got {time_scale:g}")


def replay_command(scn: Scenario, seed: int, scale: float) -> str:
    return f"brokerctl simulate {scn.path or scn.name} --real --seed {seed} --time-scale {scale:g}"


class RealRun:
    """One run of a scenario on real processes (see the module docstring)."""

    def __init__(self, scn: Scenario, seed: int, base_dir: Path, *, time_scale: float = DEFAULT_TIME_SCALE,
                 progress: Callable[[str], None] = lambda _s: None, use_netns: bool | None = None) -> None:
        check_runnable(scn, time_scale)
        self.scn, self.seed, self.scale = scn, seed, time_scale
        self.base = Path(base_dir)
        self.say = progress
        self.netns = rf.netns_available() if use_netns is None else use_netns
        self.rng = random.Random(f"realsim-targets:{seed}")
        self.peers = [f"n{i}" for i in range(1, scn.peers + 1)]
        self.topic = scn.data.topics[0].name
        self.res = RealResult(scn.name, seed, time_scale, netns=self.netns,
                              replay=replay_command(scn, seed, time_scale))
        self.res.skipped_faults = rf.unavailable(scn, self.netns)
        self.res.skipped_checks = {c: why for c, why in SKIPPED_CHECKS.items() if c in scn.checks}
        self.down: set[str] = set()
        self.paused: set[str] = set()
        self.lab: rf.NetLab | None = None
        self.cluster: Any = None
        self.hist: Recorder | None = None
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        self.errors: list[str] = []
        self.stop_watching = threading.Event()
        self.view_lock = threading.Lock()
        self.view_leader: str | None = None
        self.view_shards: list[dict] = []
        self.booting: dict[str, float] = {}  # restarted, not yet answering: no live replica to target
        self.answered: list[str] = []

    # ------------------------------------------------------------ cluster
    def _start_cluster(self) -> None:
        from runtime.realcluster import RealCluster

        env = {"CHORUS_RECORD_DIR": str(self.base / "records"), "CHORUS_RECORD_KINDS": "raft."}
        if self.netns:
            self.lab = rf.NetLab(self.peers).open()
        c = RealCluster(self.base / "nodes", n=self.scn.peers, netns=self.lab, env=env)
        self.cluster = c
        c.start(timeout_s=120)

    def _up(self) -> list[str]:
        return [n for n in self.peers if n not in self.down and n not in self.paused]

    def _ask_all(self, path: str) -> dict[str, Any]:
        """``path`` asked of every running node at once; their answers
        (a node cut off or busy does not hold the others up)."""
        from concurrent.futures import ThreadPoolExecutor, wait

        up = self._up()
        if not up:
            return {}
        pool = ThreadPoolExecutor(len(up), thread_name_prefix="realsim-ask")
        futs = {n: pool.submit(self.cluster.get, n, path, HTTP_S) for n in up}
        wait(list(futs.values()), timeout=HTTP_S + 1)
        pool.shutdown(wait=False)
        out = {}
        for n, f in futs.items():
            got = f.result() if f.done() and f.exception() is None else None
            if got is not None and not (isinstance(got, dict) and "error" in got):
                out[n] = got
        return out

    def _agency_leader(self) -> str | None:
        """The agency leader of the highest term any running node names."""
        best: tuple[int, str] | None = None
        got = self._ask_all("/status")
        self.answered = list(got)
        for st in got.values():
            ag = st.get("agency") or {} if isinstance(st, dict) else {}
            if ag.get("leader") in self.peers and (best is None or (ag.get("term") or 0) > best[0]):
                best = (ag.get("term") or 0, ag["leader"])
        return best[1] if best else None

    def _shards(self) -> list[dict]:
        """Each shard as the running node with the newest view (highest epoch) lists it."""
        best: dict[str, dict] = {}
        for got in self._ask_all(f"/shards?topic={self.topic}").values():
            for s in got if isinstance(got, list) else []:
                cur = best.get(s.get("shard"))
                if cur is None or (s.get("epoch") or 0) > (cur.get("epoch") or 0):
                    best[s["shard"]] = s
        return [best[k] for k in sorted(best, key=lambda k: best[k].get("index", 0))]

    def _watch(self) -> None:
        """Keep the newest view of the agency leader and the shards (targets
        are resolved from it at once: a node cut off or busy does not delay
        the schedule)."""
        while not self.stop_watching.is_set():
            started = time.monotonic()
            lead, shards = self._agency_leader(), self._shards()
            with self.view_lock:
                for n in self.answered:  # answered a poll begun after its restart: booted
                    if self.booting.get(n, started) < started:
                        del self.booting[n]
                if lead:
                    self.view_leader = lead
                if shards:
                    self.view_shards = shards
            self.stop_watching.wait(0.3)

    def _resolve(self, target: str) -> str | None:
        if target in self.peers:
            return target
        node = self._resolve_role(target)
        return node if node in self.peers else None  # never a name the cluster does not have

    def _resolve_role(self, target: str) -> str | None:
        with self.view_lock:
            gone = self.down | set(self.booting)
        if target == "leader":
            with self.view_lock:
                return self.view_leader if self.view_leader not in gone else None
        if target == "random":
            return self.rng.choice(self.peers)
        if target == "follower":
            lead = self._resolve("leader")
            cands = [n for n in self._up() if n != lead]
            return self.rng.choice(cands) if cands else None
        with self.view_lock:
            shards = list(self.view_shards)
        if target == "shard_leader":
            lead = (shards[0].get("leader") or None) if shards else None  # "" or null: leaderless
            return lead if lead not in gone else None
        if target == "shard_follower":
            if not shards:
                return None
            cands = sorted(n for n in shards[0].get("replicas", []) if n != shards[0].get("leader") and n in self._up())
            return self.rng.choice(cands) if cands else None
        if target.startswith("shard_leader_not:"):
            node = target.split(":", 1)[1]
            return next((s.get("leader") for s in shards if s.get("leader") and s.get("leader") != node
                         and s.get("leader") not in gone), None)
        return None  # a client (c1, p1, ...): clients are not confined on real runs

    # ------------------------------------------------------------- faults
    def _note(self, verb: str, text: str) -> None:
        assert self.hist is not None
        self.res.faults.append((self.hist.now(), text))
        self.res.fault_counts[verb] = self.res.fault_counts.get(verb, 0) + 1
        self.say(f"t={self.hist.now():5.1f}s {text}")

    def _skip(self, text: str) -> None:
        assert self.hist is not None
        self.res.faults.append((self.hist.now(), text + ": skipped"))
        self.res.skipped_firings += 1
        self.say(f"t={self.hist.now():5.1f}s {text}: skipped")

    def _signal_node(self, node: str, sig: int) -> int:
        pids = self.lab.pids(node) if self.lab else self.cluster.node_pids(node)
        n = 0
        for p in pids:
            try:
                os.kill(p, sig)
                n += 1
            except ProcessLookupError:
                pass
        return n

    def crash(self, node: str) -> Callable[[], None] | None:
        if node in self.down:
            return None
        if self.lab is None:  # its processes are found through its pid file: let a restarted node write it
            self.cluster.wait_ready(node, 60)
        self.cluster.kill9(node)
        self.down.add(node)
        self.paused.discard(node)
        self._note("crash", f"crash {node} (kill -9)")
        return lambda: self.restart(node)

    def restart(self, node: str) -> None:
        if node not in self.down:
            return
        self.cluster.spawn(node)
        with self.view_lock:
            self.booting[node] = time.monotonic()
        self.down.discard(node)
        self._note("restart", f"restart {node}")

    def pause(self, node: str) -> Callable[[], None] | None:
        if node in self.down or node in self.paused:
            return None
        self._signal_node(node, signal.SIGSTOP)
        self.paused.add(node)
        self._note("pause", f"pause {node} (SIGSTOP)")
        return lambda: self.resume(node)

    def resume(self, node: str) -> None:
        if node not in self.paused:
            return
        self._signal_node(node, signal.SIGCONT)
        self.paused.discard(node)
        self._note("resume", f"resume {node} (SIGCONT)")

    def heal(self) -> None:
        n = self.lab.heal() if self.lab else 0
        self._note("heal", f"heal ({n} blocked directions lifted)")

    def apply(self, f: Any) -> Callable[[], None] | None:
        a, do = f.args, f.do
        if do in self.res.skipped_faults:
            self._skip(f"{do} ({self.res.skipped_faults[do]})")
            return None
        if do in ("crash", "restart", "pause", "resume"):
            node = self._resolve(a["target"])
            if node is None:
                self._skip(f"{do} {a['target']}: no such node now")
                return None
            return getattr(self, do)(node)
        if do == "heal":
            self.heal()
            return None
        assert self.lab is not None
        if do == "partition":
            groups = expand_groups(a["groups"], self._resolve, self.peers)
            if any(not [n for n in g if n in self.peers] for g in groups):
                self._skip(f"partition {rf.describe_groups(groups)}: a side has no node now")
                return None
            fresh = self.lab.block(rf.pairs_between(groups, self.peers))
            self._note(do, f"partition {rf.describe_groups(groups)} ({len(fresh)} directions blocked)")
        elif do == "partition_oneway":
            src, dst = expand_groups([a["from"], a["to"]], self._resolve, self.peers)
            if not src or not dst:
                self._skip(f"one-way {a['from']} -/-> {a['to']}: a side has no node now")
                return None
            fresh = self.lab.block([(x, y) for x in src for y in dst])
            self._note(do, f"one-way {','.join(src)} -/-> {','.join(dst)} ({len(fresh)} directions blocked)")
        elif do == "bridge":
            via = self._resolve(a["via"])
            sa, sb = expand_groups([a["a"], a["b"]], self._resolve, self.peers)
            sa = [n for n in sa if n != via]
            sb = [n for n in sb if n != via and n not in sa]
            if not sa or not sb:
                self._skip(f"bridge {a['a']} <-{a['via']}-> {a['b']}: the sides are one node now")
                return None
            fresh = self.lab.block(rf.pairs_between([sa, sb], self.peers))
            self._note(do, f"bridge {','.join(sa)} <-{via}-> {','.join(sb)} ({len(fresh)} directions blocked)")
        else:
            raise AssertionError(do)
        return self.heal

    def heal_all(self) -> None:
        if self.lab and self.lab.blocked:
            self.heal()
        for n in sorted(self.paused):
            self.resume(n)
        for n in sorted(self.down):
            self.restart(n)

    def _run_faults(self) -> None:
        """Fire the plan in real time until the end of the safety phase."""
        assert self.hist is not None
        queue: list[tuple[float, int, Callable[[], Any]]] = []
        seq = 0
        for fi in rf.plan(self.scn, self.seed):
            queue.append((fi.at_s, seq, self._firer(fi)))
            seq += 1
        heapq.heapify(queue)
        end = self.scn.duration_s
        while queue and queue[0][0] < end:
            at, _, action = heapq.heappop(queue)
            self._sleep_until(at)
            undo = action()
            if undo is not None:
                heapq.heappush(queue, (undo[0], seq, undo[1]))
                seq += 1
        self._sleep_until(end)

    def _firer(self, fi: rf.Firing) -> Callable[[], tuple[float, Callable[[], Any]] | None]:
        def fire() -> tuple[float, Callable[[], Any]] | None:
            undo = self.apply(fi.fault)
            if undo is None or fi.undo_after_s is None:
                return None

            def run_undo() -> None:  # an undo schedules nothing further
                undo()

            return (self.hist.now() + fi.undo_after_s, run_undo)
        return fire

    def _sleep_until(self, scn_t: float) -> None:
        assert self.hist is not None
        while not self.errors:
            left = (scn_t - self.hist.now()) * self.scale
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    # ------------------------------------------------------------ clients
    def _producer(self, i: int, level: str, bootstrap: list[str]) -> None:
        from runtime.client import Producer

        d = self.scn.data
        name = f"p{i}"
        t = self.scn.data.topics[0]
        keys = keys_for_shards(t.shards)
        seqs = [0] * t.shards
        h = self.hist
        try:
            with Producer(bootstrap, level=level, linger_ms=2, delivery_timeout_s=30, request_timeout_ms=5000,
                          **self.cluster.auth) as p:
                k = 0
                next_t = time.monotonic()
                while not self.stop_producing.is_set():
                    s = k % t.shards
                    shard = f"{t.name}#{s}"
                    for _ in range(d.records_per_batch):
                        seq = seqs[s]
                        seqs[s] += 1
                        h.record(name, "producer", "produce.invoke", producer=name, shard=shard, seq=seq, count=1,
                                 level=level)
                        fut = p.send(t.name, payload(name, shard, seq), key=keys[s])
                        fut.add_done_callback(
                            lambda f, shard=shard, seq=seq: h.produce_done(name, shard, seq, level,
                                                                           *outcome(f, shard)))
                    k += 1
                    next_t += 1.0 / d.rate_per_s
                    self.stop_producing.wait(max(0.0, next_t - time.monotonic()))
                p.flush(FLUSH_S)
        except Exception as exc:  # noqa: BLE001 - reported as a harness error
            self.errors.append(f"producer {name}: {exc!r}")

    def _consumer(self, sub: str, mode: str, k: int, nack_ratio: float, bootstrap: list[str]) -> None:
        from runtime.client import Consumer

        name = f"{sub}-c{k}"
        rng = random.Random(f"realsim-consumer:{self.seed}:{name}")
        h = self.hist
        try:
            with Consumer(bootstrap, self.topic, sub, mode=mode, consumer_id=name, **self.cluster.auth) as c:
                while not self.stop_consuming.is_set():
                    msg = c.poll(timeout_s=0.2)
                    if msg is None:
                        continue
                    h.record(name, "consumer", "consume.deliver", consumer=name, subscription=sub, mode=mode,
                             shard=f"{self.topic}#{msg.shard}", offset=msg.offset, payload=msg.value,
                             redelivery=msg.redelivery, epoch=0)
                    if nack_ratio and rng.random() < nack_ratio:
                        msg.nack()
                    else:
                        msg.ack()
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"consumer {name}: {exc!r}")

    def _delivered_all(self) -> bool:
        acked = {payload(f["producer"], f["shard"], f["seq"]) for r in self.hist.snapshot()
                 if r.kind == "produce.done" and (f := r.fields)["status"] == "ok" and f["level"] in ("quorum", "all")}
        got: dict[str, set[bytes]] = {}
        for r in self.hist.snapshot():
            if r.kind == "consume.deliver":
                got.setdefault(r.fields["subscription"], set()).add(r.fields["payload"])
        return all(acked <= got.get(s[0], set()) for s in self.scn.data.subscriptions)

    # ----------------------------------------------------------- converge
    def _converged(self) -> tuple[bool, str]:
        c = self.cluster
        leaders = set()
        for n in self.peers:
            st = c.get(n, "/status", timeout_s=HTTP_S)
            if not isinstance(st, dict):
                return False, f"{n} does not answer /status"
            leaders.add((st.get("agency") or {}).get("leader") or None)
        if len(leaders) != 1 or None in leaders:
            return False, f"agency leaders named: {sorted(map(str, leaders))}"
        shards = self._shards()
        t = self.scn.data.topics[0]
        if len(shards) != t.shards:
            return False, f"{len(shards)} of {t.shards} shards listed"
        for s in shards:
            if s["state"] != "ok" or len(s["in_sync"]) < len(s["replicas"]):
                return False, f"shard {s['shard']}: {s['state']}, in sync {s['in_sync']} of {s['replicas']}"
        return True, ""

    def _replicated(self) -> tuple[bool, str]:
        """Every shard's leader reports that its followers hold its whole log
        (``/metrics``: replication lag 0, high watermark at the log end): the
        moment to compare the replicas byte for byte."""
        from prometheus_client.parser import text_string_to_metric_families

        for s in self._shards():
            lead = s.get("leader")
            if not lead:
                return False, f"shard {s['shard']} has no leader"
            try:
                status, _h, body = self.cluster.http_raw(lead, "/metrics", timeout_s=HTTP_S)
            except OSError as exc:
                return False, f"{lead} /metrics: {exc}"
            if status != 200:
                return False, f"{lead} /metrics: HTTP {status}"
            vals: dict[str, float] = {}
            for fam in text_string_to_metric_families(body.decode()):
                for smp in fam.samples:
                    if smp.labels.get("topic") == self.topic and smp.labels.get("shard") == str(s["index"]):
                        vals[smp.name] = smp.value
            lag = vals.get("chorus_shard_replication_lag_records")
            hw, end = vals.get("chorus_shard_high_watermark"), vals.get("chorus_shard_end_offset")
            if lag != 0 or hw is None or hw != end:
                return False, f"shard {s['shard']} on {lead}: replication lag {lag}, high watermark {hw}, end {end}"
        return True, ""

    def _settled(self) -> tuple[bool, str]:
        ok, why = self._converged()
        return self._replicated() if ok else (ok, why)

    def _wait(self, cond: Callable[[], Any], timeout_s: float) -> Any:
        """Poll ``cond`` until it holds or ``timeout_s`` passes; the last
        reason it did not hold is kept (``res.waited_on``)."""
        deadline = time.monotonic() + timeout_s
        got = cond()
        while not (got[0] if isinstance(got, tuple) else got) and time.monotonic() < deadline:
            if isinstance(got, tuple):
                self.res.waited_on = got[1]
            time.sleep(0.3)
            got = cond()
        return got

    # ---------------------------------------------------------------- run
    def run(self) -> RealResult:
        t_start = time.monotonic()
        threads: list[threading.Thread] = []
        try:
            self.say(f"starting {self.scn.peers} nodes" + (" in network namespaces" if self.netns else
                                                             " on 127.0.0.1 (no namespaces: partitions skipped)"))
            self._start_cluster()
            c = self.cluster
            for t in self.scn.data.topics:
                c.create_topic("n1", t.name, shards=t.shards, rf=t.replication_factor)
            ok, why = self._wait(self._converged, CONVERGE_S)
            if not ok:
                raise TimeoutError(f"the fresh cluster did not settle: {why}")
            bootstrap = [c.client(n) for n in self.peers]
            self.hist = Recorder(time.monotonic(), self.scale)
            d = self.scn.data
            for i in range(1, d.producers + 1):
                threads.append(threading.Thread(target=self._producer, name=f"realsim-p{i}", daemon=True,
                                                args=(i, d.level[(i - 1) % len(d.level)], bootstrap)))
            consumers = []
            for sub, mode, count, nack, pause in d.subscriptions:
                if pause:
                    self.say(f"subscription {sub}: pause_s is not available on real processes; "
                             "its consumers run throughout")
                for k in range(1, count + 1):
                    consumers.append(threading.Thread(target=self._consumer, name=f"realsim-{sub}-{k}", daemon=True,
                                                      args=(sub, mode, k, nack, bootstrap)))
            watcher = threading.Thread(target=self._watch, name="realsim-watch", daemon=True)
            for th in threads + consumers + [watcher]:
                th.start()
            self.say(f"workload running; faults over {self.scn.duration_s * self.scale:.0f} s")
            self._run_faults()
            self.say("healing: partitions lifted, paused nodes resumed, crashed nodes restarted")
            t_heal = time.monotonic()
            self.heal_all()
            self.stop_watching.set()
            watcher.join(10)
            self._sleep_until(self.scn.duration_s + self.scn.settle_s / 2)
            ok, why = self._wait(self._converged, CONVERGE_S)
            self.res.converge_s = time.monotonic() - t_heal
            self.res.converge_waited_on, self.res.waited_on = self.res.waited_on, ""
            self.say(f"converged {self.res.converge_s:.1f} s after the heal" if ok else f"not converged: {why}")
            if not ok:
                self.res.violations["liveness"] = [Violation(
                    "liveness", f"the cluster did not converge {CONVERGE_S:.0f} s after the heal: {why}", {})]
            self._sleep_until(self.scn.duration_s + self.scn.settle_s / 2 + 1.0)  # some writes after the heal
            self.stop_producing.set()
            for th in threads:
                th.join(FLUSH_S + 30)
            self.say("producers stopped; consumers catching up")
            if d.subscriptions:
                self._wait(self._delivered_all, CATCH_UP_S)
            self.stop_consuming.set()
            for th in consumers:
                th.join(30)
            ok, why = self._wait(self._settled, CONVERGE_S)
            final_shards = self._shards()
            if not ok and "liveness" not in self.res.violations:
                self.res.violations["liveness"] = [Violation("liveness", f"not converged at the end: {why}", {})]
            t_end = self.hist.now()
            self.say("stopping nodes; reading their logs")
            left = self._stop()
            if left:
                self.errors.append(f"processes outlived SIGTERM and were killed: {left}")
            self._judge(final_shards, t_end)
            if self.errors:
                self.res.error = "; ".join(self.errors)
        except Exception as exc:  # noqa: BLE001 - a harness failure is a failed run, with its reason
            import traceback

            self.res.error = "".join(traceback.format_exception(exc))[-3000:]
        finally:
            self.stop_watching.set()
            self.stop_producing.set()
            self.stop_consuming.set()
            self._stop()
            if self.lab is not None:
                left = self.lab.close()
                if left:
                    self.res.error = (self.res.error + "\n" if self.res.error else "") + f"not removed: {left}"
            self.res.wall_seconds = time.monotonic() - t_start
        return self.res

    def _stop(self) -> list[int]:
        c = self.cluster
        if c is None:
            return []
        for n in list(self.paused):
            self._signal_node(n, signal.SIGCONT)
        self.paused.clear()
        left = c.stop_all()
        if self.lab is not None:  # anything still in a namespace is ours
            for n in self.peers:
                for p in self.lab.pids(n):
                    left.append(p)
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        return left

    # -------------------------------------------------------------- judge
    def _judge(self, final_shards: list[dict], t_end: float) -> None:
        from runtime.realjudge import judge

        judge(self, final_shards, t_end)


def run_real(scn: Scenario, seed: int, base_dir: Path, **kw: Any) -> RealResult:
    """One real run of ``scn`` under ``base_dir`` (created; left for inspection)."""
    return RealRun(scn, seed, base_dir, **kw).run()
