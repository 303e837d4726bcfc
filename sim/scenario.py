"""Scenario files: cluster shape, workload, fault schedule, duration, checks.

A scenario is YAML::

    name: partition
    description: leader isolated in a minority, then healed
    duration_s: 60          # safety phase: workload + faults
    settle_s: 15            # liveness phase: all faults healed, must converge
    cluster: {peers: 3, tuning: {tick_ms: 50, election_ticks: 10}}
    network: {latency_min_ms: 1, latency_mean_ms: 3}   # SimOptions knobs
    swarm: false            # true: draw network knobs from the seed
    workload: {clients: 3, keys: 4, rate_per_s: 10, read: 0.4, write: 0.4, timeout_s: 2}
    faults:
      - {at_s: 10, do: partition, groups: [[leader], [rest]]}
      - {at_s: 25, do: heal}
      - {from_s: 5, to_s: 50, every_s: [3, 8], do: crash, target: random, restore_after_s: [1, 4]}
    checks: [election_safety, log_matching, leader_completeness,
             state_machine_safety, committed_never_change, linearizability, liveness]
    mqtt:                   # optional: an MqttFront on every node, MQTT clients on nodes of their own
      publishers: 2         # client nodes mp1.., publishing while connected
      subscribers: 3        # client nodes ms1.., persistent sessions (clean_session false)
      topics: [sensors/a/temp, sensors/b/temp, alerts/x]   # a publisher picks one per message
      filters: [[sensors/+/temp], ["sensors/#", "alerts/#"]]  # subscriber i gets filters[i % len]
      sub_qos: [2, 1]       # subscriber i asks for sub_qos[i % len] on each of its filters
      qos: [1, 2]           # each publish draws its qos from these
      rate_per_s: 10        # publishes per second per publisher
      retain_ratio: 0.1     # share of publishes with the retain flag
      inflight_max: 4       # a publisher's unacknowledged publishes
      keepalive_s: 1
      timeout_s: 1.0        # CONNACK / SUBACK / PINGRESP wait before the client moves to the next node
      ack_timeout_s: 4.0    # PUBACK / PUBREC / PUBCOMP wait before it does the same
      tuning: {forward_retry_s: 0.3, ack_wait_max_s: 2}   # MqttTuning knobs

Fault verbs (``do``): crash, restart, pause, resume, partition (groups),
partition_oneway (from, to), bridge (a, b, via), heal, clock (target,
offset_s, drift_ppm), clock_jump (target, delta_s), network (knobs),
network_reset, move (shard index, from, to: a shard move, actors/moves.py;
``to: spare`` picks a live node without a replica of it), drain (target:
every replica moved off that node).  Targets: a node id (``n1``), ``leader``, ``follower``,
``random`` (a peer), ``shard_leader``, ``shard_follower`` (of the first
shard), ``shard_leader_not:<node>`` (the leader of the first shard that
node does not lead), resolved when the fault fires.  In groups, ``rest``
stands for every node not named elsewhere (clients included).  A fault with
``every_s`` repeats between ``from_s`` and ``to_s``; with
``restore_after_s`` each occurrence is undone after that delay (crash ->
restart, pause -> resume, partition -> heal).

MQTT: client ``i`` (publishers first, then subscribers) connects to node
``n{i % peers + 1}`` first and moves through the nodes in order when a node
does not answer.  The ``mqtt_*`` checks need the ``mqtt`` section; they
are listed in :data:`MQTT_CHECKS` and described in :mod:`sim.mqttchecks`.

A malformed file raises :class:`ScenarioError` naming the file, the key
path and what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protocol.mqtt_cluster import MqttTuning
from protocol.raft import RaftBugs, RaftTuning
from sim.options import SimOptions

VERBS = (
    "crash", "restart", "pause", "resume", "partition", "partition_oneway", "bridge",
    "heal", "clock", "clock_jump", "network", "network_reset", "move", "drain",
)
TARGETED = ("crash", "restart", "pause", "resume", "clock", "clock_jump")
CHECKS = (
    "election_safety", "log_matching", "leader_completeness", "state_machine_safety",
    "committed_never_change", "linearizability", "liveness",
)
DATA_CHECKS = (
    "acked_writes_durable", "no_duplicates", "shard_order", "replicas_identical", "offsets_unique",
    "data_liveness", "delivered_to_subscriptions", "delivery_order", "hinted_writes_delivered",
    "query_exact", "moves_settled", "moves_keep_majority", "moves_in_sync", "retention_safe",
    "dropped_data_removed", "groups_consumed",
)
MQTT_CHECKS = (
    "mqtt_at_least_once", "mqtt_exactly_once", "mqtt_single_session", "mqtt_order", "mqtt_routes_converge", "mqtt_retained_converge",
    "mqtt_liveness",
)
ALL_CHECKS = CHECKS + DATA_CHECKS + MQTT_CHECKS
SHARD_TUNING_KEYS = ("tick_ms", "push_batches_max", "push_bytes_max", "inflight_max", "isr_timeout_s",
                     "request_timeout_s", "group_commit_ms", "state_interval_ms", "hh_bytes_max", "hh_age_max_s",
                     "hh_drain_bytes_per_s", "hh_direct_timeout_s", "move_bytes_per_s")
LEVEL_NAMES = ("any", "one", "quorum", "all")
TUNING_KEYS = tuple(f for f in RaftTuning.__dataclass_fields__ if f != "bugs")
OPTION_KEYS = tuple(SimOptions.__dataclass_fields__)
BUG_NAMES = tuple(RaftBugs.__dataclass_fields__)
MQTT_TUNING_KEYS = tuple(MqttTuning.__dataclass_fields__)


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    do: str
    at_s: float | None = None
    from_s: float | None = None
    to_s: float | None = None
    every_s: tuple[float, float] | None = None
    restore_after_s: tuple[float, float] | None = None
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    clients: int = 3
    keys: int = 4
    rate_per_s: float = 10.0
    read: float = 0.4
    write: float = 0.4
    timeout_s: float = 2.0


@dataclass(frozen=True)
class DataTopic:
    name: str
    shards: int = 1
    replication_factor: int = 3
    shard_group_ms: int | None = None  # shard groups by time (protocol/groups.py)
    retention_ms: int | None = None
    retention_bytes: int | None = None  # retention by size, per shard index over all groups


@dataclass(frozen=True)
class DataPlane:
    topics: tuple[DataTopic, ...] = ()
    producers: int = 2
    rate_per_s: float = 20.0
    records_per_batch: int = 5
    level: tuple[str, ...] = ("quorum",)  # producer i writes at level[i % len]
    timeout_s: float = 0.5
    grace_s: float = 0.6
    tuning: dict = field(default_factory=dict)
    # (name, mode, consumers, nack_ratio, (pause from_s, to_s) or ())
    subscriptions: tuple[tuple[str, str, int, float, tuple[float, ...]], ...] = ()
    queriers: int = 0  # history-query clients (sim/querier.py) on the first topic
    query_every_s: float = 0.5
    query_limit: int = 7  # records per page: small, so that every query pages
    truncate_every_s: float = 0.0  # > 0: truncate-shards the first topic about this often (exponential)
    record_pad_bytes: int = 0  # random header bytes on every produced record (to fill logs: retention by size)


@dataclass(frozen=True)
class MqttPlane:
    publishers: int = 2
    subscribers: int = 3
    topics: tuple[str, ...] = ("sensors/a/temp", "sensors/b/temp", "alerts/x")
    filters: tuple[tuple[str, ...], ...] = (("sensors/+/temp",), ("sensors/#", "alerts/#"))
    sub_qos: tuple[int, ...] = (2, 1)
    qos: tuple[int, ...] = (1, 2)
    rate_per_s: float = 10.0
    retain_ratio: float = 0.1
    inflight_max: int = 4
    keepalive_s: int = 1
    timeout_s: float = 1.0
    ack_timeout_s: float = 4.0
    tuning: MqttTuning = MqttTuning()


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    duration_s: float = 60.0
    settle_s: float = 15.0
    peers: int = 3
    tuning: RaftTuning = field(default_factory=RaftTuning)
    network: dict = field(default_factory=dict)
    swarm: bool = False
    workload: Workload = field(default_factory=Workload)
    faults: tuple[Fault, ...] = ()
    checks: tuple[str, ...] = CHECKS
    path: str = ""
    data: DataPlane | None = None
    shard_bugs: Any = None
    mqtt: MqttPlane | None = None
    mqtt_bugs: Any = None

    def with_bugs(self, bugs: RaftBugs) -> "Scenario":
        from dataclasses import replace

        return replace(self, tuning=replace(self.tuning, bugs=bugs))

    def with_shard_bugs(self, bugs: Any) -> "Scenario":
        from dataclasses import replace

        return replace(self, shard_bugs=bugs)

    def with_mqtt_bugs(self, bugs: Any) -> "Scenario":
        from dataclasses import replace

        return replace(self, mqtt_bugs=bugs)


class _V:
    """Tiny validator that always knows where it is in the document."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, expected: str, got: Any) -> None:
        raise ScenarioError(f"{self.source}: {path or '<top>'}: expected {expected}, got {got!r}")

    def mapping(self, path: str, v: Any, allowed: tuple[str, ...]) -> dict:
        if not isinstance(v, dict):
            self.fail(path, "a mapping", v)
        for k in v:
            if k not in allowed:
                self.fail(f"{path}.{k}" if path else str(k), f"one of the keys {list(allowed)}", k)
        return v

    def number(self, path: str, v: Any, lo: float | None = None, hi: float | None = None) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(path, "a number", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(path, f"a number in [{lo}, {hi}]", v)
        return float(v)

    def integer(self, path: str, v: Any, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(path, f"an integer in [{lo}, {hi}]", v)
        return v

    def span(self, path: str, v: Any) -> tuple[float, float]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (float(v), float(v))
        if not isinstance(v, list) or len(v) != 2:
            self.fail(path, "a number or a [min, max] pair", v)
        lo, hi = self.number(f"{path}[0]", v[0], 0), self.number(f"{path}[1]", v[1], 0)
        if lo > hi:
            self.fail(path, "min <= max", v)
        return (lo, hi)

    def string(self, path: str, v: Any) -> str:
        if not isinstance(v, str) or not v:
            self.fail(path, "a non-empty string", v)
        return v


def load(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{p}: not valid YAML: {exc}") from None
    return parse(doc, str(p))


def parse(doc: Any, source: str = "<scenario>") -> Scenario:
    v = _V(source)
    top = v.mapping("", doc, (
        "name", "description", "duration_s", "settle_s", "cluster", "network", "swarm",
        "workload", "faults", "checks", "data", "mqtt",
    ))
    name = v.string("name", top.get("name"))
    duration = v.number("duration_s", top.get("duration_s", 60), 1, 86_400)
    settle = v.number("settle_s", top.get("settle_s", 15), 0, 3_600)
    cluster = v.mapping("cluster", top.get("cluster", {}), ("peers", "tuning"))
    peers = v.integer("cluster.peers", cluster.get("peers", 3), 1, 7)
    tun = v.mapping("cluster.tuning", cluster.get("tuning", {}), TUNING_KEYS)
    for k, val in tun.items():
        if not isinstance(val, bool):
            v.integer(f"cluster.tuning.{k}", val, 1, 10_000_000)
    try:
        tuning = RaftTuning(**tun)
    except ValueError as exc:
        raise ScenarioError(f"{source}: cluster.tuning: {exc}") from None
    net = v.mapping("network", top.get("network", {}), OPTION_KEYS)
    try:
        SimOptions().with_overrides(**net)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{source}: network: {exc}") from None
    swarm = top.get("swarm", False)
    if not isinstance(swarm, bool):
        v.fail("swarm", "true or false", swarm)
    wl = v.mapping("workload", top.get("workload", {}), tuple(Workload.__dataclass_fields__))
    workload = Workload(
        clients=v.integer("workload.clients", wl.get("clients", 3), 0, 64),
        keys=v.integer("workload.keys", wl.get("keys", 4), 1, 1000),
        rate_per_s=v.number("workload.rate_per_s", wl.get("rate_per_s", 10), 0.01, 10_000),
        read=v.number("workload.read", wl.get("read", 0.4), 0, 1),
        write=v.number("workload.write", wl.get("write", 0.4), 0, 1),
        timeout_s=v.number("workload.timeout_s", wl.get("timeout_s", 2), 0.01, 600),
    )
    if workload.read + workload.write > 1:
        v.fail("workload", "read + write <= 1 (the rest is cas)", wl)
    faults_doc = top.get("faults", []) or []
    if not isinstance(faults_doc, list):
        v.fail("faults", "a list", faults_doc)
    faults = tuple(_fault(v, f"faults[{i}]", f, peers) for i, f in enumerate(faults_doc))
    checks_doc = top.get("checks", list(CHECKS))
    if not isinstance(checks_doc, list):
        v.fail("checks", "a list", checks_doc)
    for i, c in enumerate(checks_doc):
        if c not in ALL_CHECKS:
            v.fail(f"checks[{i}]", f"one of {list(ALL_CHECKS)}", c)
    data = _data(v, top["data"], peers) if "data" in top else None
    mqtt = _mqtt(v, top["mqtt"]) if "mqtt" in top else None
    if mqtt is None:
        for i, c in enumerate(checks_doc):
            if c in MQTT_CHECKS:
                v.fail(f"checks[{i}]", "an mqtt section for the mqtt_* checks", c)
    return Scenario(
        name=name, description=str(top.get("description", "")), duration_s=duration,
        settle_s=settle, peers=peers, tuning=tuning, network=dict(net), swarm=swarm,
        workload=workload, faults=faults, checks=tuple(checks_doc), path=source, data=data, mqtt=mqtt,
    )


def _pause(v: _V, path: str, p: Any) -> tuple[float, ...]:
    """``pause_s: [from, to]``: the subscription's consumers go quiet (no
    heartbeats, no acks) from ``from`` to ``to`` seconds, then come back."""
    if p is None:
        return ()
    if not isinstance(p, list) or len(p) != 2:
        v.fail(path, "[from_s, to_s]", p)
    a, b = v.number(path + "[0]", p[0], 0, 1e6), v.number(path + "[1]", p[1], 0, 1e6)
    if b <= a:
        v.fail(path, "from_s < to_s", p)
    return (float(a), float(b))


def _data(v: _V, d: Any, nodes: int) -> DataPlane:
    d = v.mapping("data", d, ("topics", "producers", "rate_per_s", "records_per_batch", "level", "timeout_s",
                              "grace_s", "tuning", "subscriptions", "queriers", "query_every_s", "query_limit",
                              "truncate_every_s", "record_pad_bytes"))
    subs = []
    for i, sd in enumerate(d.get("subscriptions", []) or []):
        sd = v.mapping(f"data.subscriptions[{i}]", sd, ("name", "mode", "consumers", "nack_ratio", "pause_s"))
        mode = sd.get("mode", "exclusive")
        if mode not in ("exclusive", "shared", "failover"):
            v.fail(f"data.subscriptions[{i}].mode", "one of ['exclusive', 'shared', 'failover']", mode)
        subs.append((v.string(f"data.subscriptions[{i}].name", sd.get("name")), mode,
                     v.integer(f"data.subscriptions[{i}].consumers", sd.get("consumers", 1), 1, 16),
                     v.number(f"data.subscriptions[{i}].nack_ratio", sd.get("nack_ratio", 0.0), 0, 0.5),
                     _pause(v, f"data.subscriptions[{i}].pause_s", sd.get("pause_s"))))
    topics_doc = d.get("topics")
    if not isinstance(topics_doc, list) or not topics_doc:
        v.fail("data.topics", "a non-empty list of topics", topics_doc)
    topics = []
    for i, t in enumerate(topics_doc):
        t = v.mapping(f"data.topics[{i}]", t, ("name", "shards", "replication_factor", "shard_group_ms",
                                                "retention_ms", "retention_bytes"))
        name = v.string(f"data.topics[{i}].name", t.get("name"))
        if len(name.split("/")) != 4:
            v.fail(f"data.topics[{i}].name", "tenant/product/component/topic", name)
        rf = v.integer(f"data.topics[{i}].replication_factor", t.get("replication_factor", 3), 1, nodes)
        group_ms = t.get("shard_group_ms")
        retention = t.get("retention_ms")
        if group_ms is not None:
            group_ms = v.integer(f"data.topics[{i}].shard_group_ms", group_ms, 1000, 10**9)
        if retention is not None:
            retention = v.integer(f"data.topics[{i}].retention_ms", retention, 1000, 10**12)
        size = t.get("retention_bytes")
        if size is not None:
            size = v.integer(f"data.topics[{i}].retention_bytes", size, 1, 10**15)
        topics.append(DataTopic(name, v.integer(f"data.topics[{i}].shards", t.get("shards", 1), 1, 64), rf,
                                group_ms, retention, size))
    level = d.get("level", "quorum")
    levels = level if isinstance(level, list) else [level]
    for i, lv in enumerate(levels):
        if lv not in LEVEL_NAMES:
            v.fail("data.level" + (f"[{i}]" if isinstance(level, list) else ""),
                   f"one of {list(LEVEL_NAMES)} (or a list of them, one per producer in turn)", lv)
    level = tuple(levels)
    tun = v.mapping("data.tuning", d.get("tuning", {}), SHARD_TUNING_KEYS)
    for k, val in tun.items():
        v.number(f"data.tuning.{k}", val, 0.001, 10_000_000)
    return DataPlane(
        topics=tuple(topics),
        producers=v.integer("data.producers", d.get("producers", 2), 0, 32),
        rate_per_s=v.number("data.rate_per_s", d.get("rate_per_s", 20), 0.01, 100_000),
        records_per_batch=v.integer("data.records_per_batch", d.get("records_per_batch", 5), 1, 10_000),
        level=level,
        timeout_s=v.number("data.timeout_s", d.get("timeout_s", 0.5), 0.01, 600),
        grace_s=v.number("data.grace_s", d.get("grace_s", 0.6), 0.05, 600),
        tuning=dict(tun),
        subscriptions=tuple(subs),
        queriers=v.integer("data.queriers", d.get("queriers", 0), 0, 16),
        query_every_s=v.number("data.query_every_s", d.get("query_every_s", 0.5), 0.01, 600),
        query_limit=v.integer("data.query_limit", d.get("query_limit", 7), 1, 10_000),
        truncate_every_s=v.number("data.truncate_every_s", d.get("truncate_every_s", 0.0), 0.0, 600),
        record_pad_bytes=v.integer("data.record_pad_bytes", d.get("record_pad_bytes", 0), 0, 1 << 20),
    )


def _mqtt(v: _V, d: Any) -> MqttPlane:
    from protocol.mqtt import MqttProtocolError, parse_shared, validate_topic_filter, validate_topic_name

    d = v.mapping("mqtt", d, ("publishers", "subscribers", "topics", "filters", "sub_qos", "qos", "rate_per_s",
                              "retain_ratio", "inflight_max", "keepalive_s", "timeout_s", "ack_timeout_s", "tuning"))
    base = MqttPlane()

    def names(path: str, x: Any, check: Any) -> tuple[str, ...]:
        if not isinstance(x, list) or not x:
            v.fail(path, "a non-empty list", x)
        for i, t in enumerate(x):
            v.string(f"{path}[{i}]", t)
            try:
                check(t)
                parse_shared(t)
            except (MqttProtocolError, ValueError) as exc:
                v.fail(f"{path}[{i}]", f"a valid MQTT name ({exc})", t)
        return tuple(x)

    def qos_list(path: str, x: Any, lo: int) -> tuple[int, ...]:
        if not isinstance(x, list) or not x:
            v.fail(path, f"a non-empty list of QoS levels {lo}..2", x)
        return tuple(v.integer(f"{path}[{i}]", q, lo, 2) for i, q in enumerate(x))

    topics = names("mqtt.topics", d.get("topics", list(base.topics)), validate_topic_name)
    for i, t in enumerate(topics):
        if t.startswith("$"):
            v.fail(f"mqtt.topics[{i}]", "a topic a client may publish to (not starting with '$')", t)
    filters_doc = d.get("filters", [list(f) for f in base.filters])
    if not isinstance(filters_doc, list) or not filters_doc:
        v.fail("mqtt.filters", "a non-empty list of filter lists (one per subscriber, cycled)", filters_doc)
    filters = tuple(names(f"mqtt.filters[{i}]", fl, validate_topic_filter) for i, fl in enumerate(filters_doc))
    for i, fl in enumerate(filters):
        for j, f in enumerate(fl):
            if f.startswith("$share/"):
                v.fail(f"mqtt.filters[{i}][{j}]", "a plain filter (the checker does not model shared "
                       "subscriptions)", f)
    tun = v.mapping("mqtt.tuning", d.get("tuning", {}), MQTT_TUNING_KEYS)
    for k, val in tun.items():
        v.number(f"mqtt.tuning.{k}", val, 0.001, 10_000_000)
    tuning = MqttTuning(**{k: (int(val) if isinstance(getattr(base.tuning, k), int) else float(val))
                           for k, val in tun.items()})
    return MqttPlane(
        publishers=v.integer("mqtt.publishers", d.get("publishers", base.publishers), 0, 32),
        subscribers=v.integer("mqtt.subscribers", d.get("subscribers", base.subscribers), 0, 32),
        topics=topics,
        filters=filters,
        sub_qos=qos_list("mqtt.sub_qos", d.get("sub_qos", list(base.sub_qos)), 1),
        qos=qos_list("mqtt.qos", d.get("qos", list(base.qos)), 1),
        rate_per_s=v.number("mqtt.rate_per_s", d.get("rate_per_s", base.rate_per_s), 0.01, 10_000),
        retain_ratio=v.number("mqtt.retain_ratio", d.get("retain_ratio", base.retain_ratio), 0, 1),
        inflight_max=v.integer("mqtt.inflight_max", d.get("inflight_max", base.inflight_max), 1, 1000),
        keepalive_s=v.integer("mqtt.keepalive_s", d.get("keepalive_s", base.keepalive_s), 1, 600),
        timeout_s=v.number("mqtt.timeout_s", d.get("timeout_s", base.timeout_s), 0.01, 600),
        ack_timeout_s=v.number("mqtt.ack_timeout_s", d.get("ack_timeout_s", base.ack_timeout_s), 0.01, 600),
        tuning=tuning,
    )


def _fault(v: _V, path: str, f: Any, peers: int) -> Fault:
    f = v.mapping(path, f, (
        "do", "at_s", "from_s", "to_s", "every_s", "restore_after_s", "target", "groups",
        "from", "to", "a", "b", "via", "offset_s", "drift_ppm", "delta_s", "set", "shard",
    ))
    do = f.get("do")
    if do not in VERBS:
        v.fail(f"{path}.do", f"one of {list(VERBS)}", do)
    at = f.get("at_s")
    every = f.get("every_s")
    if (at is None) == (every is None):
        v.fail(path, "exactly one of at_s (once) or every_s (repeating)", f)
    args: dict[str, Any] = {}
    if do in TARGETED:
        args["target"] = v.string(f"{path}.target", f.get("target"))
    if do == "partition":
        groups = f.get("groups")
        if not isinstance(groups, list) or len(groups) < 2 or not all(isinstance(g, list) and g for g in groups):
            v.fail(f"{path}.groups", "a list of at least two non-empty lists of nodes", groups)
        args["groups"] = [[v.string(f"{path}.groups[{i}][{j}]", n) for j, n in enumerate(g)] for i, g in enumerate(groups)]
    if do == "move":
        # shard: index into the scenario's shards; from: a node or shard_leader / shard_follower (of
        # that shard); to: a node or ``spare`` (a live node without a replica of it)
        args["shard"] = v.integer(f"{path}.shard", f.get("shard", 0), 0, 4096)
        args["from"] = v.string(f"{path}.from", f.get("from", "shard_leader"))
        args["to"] = v.string(f"{path}.to", f.get("to", "spare"))
    if do == "drain":
        args["target"] = v.string(f"{path}.target", f.get("target"))
    if do == "partition_oneway":
        args["from"] = _nodes(v, f"{path}.from", f.get("from"))
        args["to"] = _nodes(v, f"{path}.to", f.get("to"))
    if do == "bridge":
        args["a"] = _nodes(v, f"{path}.a", f.get("a"))
        args["b"] = _nodes(v, f"{path}.b", f.get("b"))
        args["via"] = v.string(f"{path}.via", f.get("via"))
    if do == "clock":
        if "offset_s" not in f and "drift_ppm" not in f:
            v.fail(path, "offset_s and/or drift_ppm", f)
        if "offset_s" in f:
            args["offset_s"] = v.number(f"{path}.offset_s", f["offset_s"], -86_400, 86_400)
        if "drift_ppm" in f:
            args["drift_ppm"] = v.number(f"{path}.drift_ppm", f["drift_ppm"], -100_000, 100_000)
    if do == "clock_jump":
        args["delta_s"] = v.number(f"{path}.delta_s", f.get("delta_s"), -86_400, 86_400)
    if do == "network":
        knobs = v.mapping(f"{path}.set", f.get("set"), OPTION_KEYS)
        try:
            SimOptions().with_overrides(**knobs)
        except (ValueError, TypeError) as exc:
            raise ScenarioError(f"{v.source}: {path}.set: {exc}") from None
        args["set"] = dict(knobs)
    restore = f.get("restore_after_s")
    if restore is not None and do not in ("crash", "pause", "partition", "partition_oneway", "bridge", "network", "clock"):
        v.fail(f"{path}.restore_after_s", "only with crash, pause, partition*, bridge, network or clock", restore)
    return Fault(
        do=do,
        at_s=None if at is None else v.number(f"{path}.at_s", at, 0),
        from_s=v.number(f"{path}.from_s", f.get("from_s", 0), 0),
        to_s=None if f.get("to_s") is None else v.number(f"{path}.to_s", f["to_s"], 0),
        every_s=None if every is None else v.span(f"{path}.every_s", every),
        restore_after_s=None if restore is None else v.span(f"{path}.restore_after_s", restore),
        args=args,
    )


def expand_groups(groups: list[list[str]], resolve: Any, everyone: list[str]) -> list[list[str]]:
    """Resolve the names in partition groups with ``resolve`` (None: left
    out); ``rest`` stands for everyone not named elsewhere."""
    named: list[list[str]] = []
    for g in groups:
        out = []
        for n in g:
            if n == "rest":
                continue
            r = resolve(n)
            if r is not None and r not in out:
                out.append(r)
        named.append(out)
    used = {n for g in named for n in g}
    rest = [n for n in everyone if n not in used]
    return [g + (rest if "rest" in orig else []) for g, orig in zip(named, groups)]


def _nodes(v: _V, path: str, x: Any) -> list[str]:
    if isinstance(x, str):
        return [x]
    if not isinstance(x, list) or not x:
        v.fail(path, "a node or a non-empty list of nodes", x)
    return [v.string(f"{path}[{i}]", n) for i, n in enumerate(x)]
