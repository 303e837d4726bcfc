"""``GET /metrics``: a node's figures in the Prometheus text format.

Built on prometheus_client with a private :class:`CollectorRegistry` per
node (the Dispatcher's process serves the HTTP port; nothing goes to the
library's global default registry).  Two collectors are registered in it:

* :class:`ChorusCollector` turns a *snapshot* into metric families.  The
  snapshot is what the Dispatcher gathered for this scrape
  (``actors/dispatcher_metrics.py``: agency, nodes, the shards this node
  leads, failovers, hinted handoff, MQTT) plus what the I/O thread knows
  itself (connections and request latencies of the binary and HTTP ports)
  and the node's processes' CPU and memory (:func:`node_processes`).
  Nothing is counted for metrics' sake in the actors but the shard
  leaders' traffic counters; the rest is read from the node's status.
* prometheus_client's ``ProcessCollector`` (``process_*``: the serving
  process alone; ``chorus_node_*`` covers all the node's processes).

Which node reports what: per-shard and per-subscription series come from
the node whose replica *leads* the shard (each shard is reported once in
a cluster; after a failover the new leader's counters start at zero, which
``rate()`` takes as a counter reset).  Agency, node and failover figures
are each node's own view.

Label sets are bounded (``series_max``, ``metrics_series_max`` in the
configuration, 200 by default): at most that many ``{topic, shard}``
series, ``{topic}`` series and ``{topic, subscription}`` series per node,
chosen in name order; the rest are summed into one series labelled
``topic="_other"`` (and ``shard="_other"``, ``subscription="_other"``).
Per-node series (``chorus_node_up``) are bounded by ``NODES_MAX``.  So one
node exposes at most about 20 * series_max + 300 series.

A scrape asks the Dispatcher at most once per ``MIN_INTERVAL_S``;
concurrent or quicker scrapes share the last snapshot.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

OTHER = "_other"
SERIES_MAX_DEFAULT = 200
NODES_MAX = 100
MIN_INTERVAL_S = 1.0
INTERFACES = ("binary", "http", "mqtt")

SHARD_COUNTERS = (
    ("produced_records", "chorus_shard_produced_records", "Records in produce requests the shard's leader took"),
    ("produced_bytes", "chorus_shard_produced_bytes", "Bytes of record batches the shard's leader took"),
    ("consumed_records", "chorus_shard_consumed_records",
     "Records the shard's leader delivered to subscribers or returned to fetches"),
    ("consumed_bytes", "chorus_shard_consumed_bytes",
     "Payload bytes delivered to subscribers plus batch bytes returned to fetches"),
)
HANDOFF_COUNTERS = ("stored", "drained", "dropped_bytes", "dropped_age", "dropped_refused", "refused_too_big")


def _shard_counters(stats: dict) -> dict:
    return {"produced_records": stats.get("produced_records", 0), "produced_bytes": stats.get("produced_bytes", 0),
            "consumed_records": stats.get("delivered_records", 0) + stats.get("fetched_records", 0),
            "consumed_bytes": stats.get("delivered_bytes", 0) + stats.get("fetched_bytes", 0)}


def bound(rows: Iterable[tuple[tuple[str, ...], dict[str, float]]], cap: int,
          combine: dict[str, Callable[[float, float], float]] | None = None) -> list[tuple[tuple[str, ...], dict]]:
    """At most ``cap`` label sets of ``rows`` (label tuple, values), in label
    order, plus one ``_other`` row combining the rest (sum, or the function
    named in ``combine`` for that value).  ``cap`` >= 1."""
    rows = sorted(rows, key=lambda r: r[0])
    if len(rows) <= cap:
        return rows
    kept, rest = rows[:cap - 1], rows[cap - 1:]
    other: dict[str, float] = {}
    for _labels, values in rest:
        for k, v in values.items():
            if v is None:
                continue
            f = (combine or {}).get(k)
            other[k] = v if k not in other else (f(other[k], v) if f else other[k] + v)
    width = len(rows[0][0])
    return kept + [((OTHER,) * width, other)]


def node_processes(pgid: int | None = None, proc: str = "/proc") -> dict:
    """CPU seconds (user + system) and resident bytes summed over the
    processes of this node: its process group (the launcher, the Thespian
    admin, logger and every actor process share it)."""
    pgid = os.getpgid(0) if pgid is None else pgid
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    cpu, rss, n = 0.0, 0, 0
    try:
        entries = os.listdir(proc)
    except OSError:
        return {"cpu_s": 0.0, "rss_bytes": 0, "processes": 0}
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(f"{proc}/{pid}/stat", "rb") as f:
                raw = f.read().decode()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        # fields[0] is the state (field 3 of stat); pgrp is field 5, utime 14, stime 15, rss 24
        if int(fields[2]) != pgid:
            continue
        n += 1
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        rss += int(fields[21]) * page
    return {"cpu_s": cpu, "rss_bytes": rss, "processes": n}


def _histogram(name: str, doc: str, label: str, per_label: dict[str, dict]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=[label])
    for value, snap in sorted(per_label.items()):
        if not snap:
            continue
        acc, buckets = 0, []
        for bound_s, count in zip(list(snap["buckets_s"]) + [float("inf")], snap["counts"]):
            acc += count
            buckets.append(("+Inf" if bound_s == float("inf") else repr(float(bound_s)), acc))
        fam.add_metric([value], buckets, snap.get("sum_s", 0.0))
    return fam


class ChorusCollector(Collector):
    """Metric families from :attr:`snapshot` (see the module docstring)."""

    def __init__(self, series_max: int = SERIES_MAX_DEFAULT) -> None:
        self.series_max = max(1, series_max)
        self.snapshot: dict = {}

    def describe(self) -> list:
        return []  # families depend on the snapshot; registered with auto_describe off

    def collect(self) -> Iterable[Any]:  # noqa: C901 - one family after another
        s = self.snapshot
        if not s:
            return
        g, c = GaugeMetricFamily, CounterMetricFamily
        yield from self._cluster(s, g, c)
        yield from self._shards(s.get("shards") or [], g, c)
        yield from self._handoff(s.get("handoff") or {}, g, c)
        yield from self._failovers(s.get("failovers"), g, c)
        io = s.get("io") or {}
        conns = g("chorus_connections", "Open client connections per interface", labels=["interface"])
        for iface in INTERFACES:
            v = io.get("connections", {}).get(iface)
            if v is not None:
                conns.add_metric([iface], v)
        yield conns
        yield _histogram("chorus_request_duration_seconds",
                         "Client request latency per interface, from the request read to its answer written "
                         "(MQTT: QoS 1/2 PUBLISH to PUBACK/PUBREC)", "interface", io.get("latency", {}))
        procs = s.get("processes")
        if procs:
            yield c("chorus_node_cpu_seconds", "CPU time of all the node's processes (user + system)",
                    value=procs["cpu_s"])
            yield g("chorus_node_resident_memory_bytes", "Resident memory of all the node's processes",
                    value=procs["rss_bytes"])
            yield g("chorus_node_processes", "Processes of the node (launcher, Thespian admin and logger, actors)",
                    value=procs["processes"])
        missing = g("chorus_metrics_part_missing", "1 when a part of this scrape did not answer in time",
                    labels=["part"])
        for part in ("cluster", "shards", "failovers", "mqtt"):
            missing.add_metric([part], 1 if part in (s.get("missing") or ()) else 0)
        yield missing

    def _cluster(self, s: dict, g: Any, c: Any) -> Iterable[Any]:
        ag = s.get("agency") or {}
        yield self._info(s)
        if ag.get("term") is not None:
            yield g("chorus_agency_term", "Raft term of the local agency peer", value=ag["term"])
        if ag.get("commit_index") is not None:
            yield g("chorus_agency_commit_index", "Commit index of the local agency peer", value=ag["commit_index"])
        yield g("chorus_agency_is_leader", "1 when the local agency peer leads the agency",
                value=1 if ag.get("role") == "leader" else 0)
        yield g("chorus_agency_voters", "Agency voters", value=len(ag.get("voters") or ()))
        yield g("chorus_agency_learners", "Agency learners", value=len(ag.get("learners") or ()))
        nodes = s.get("nodes") or []
        up = g("chorus_node_up", "1 when this node's supervisor heard from the node recently", labels=["node_id"])
        for n in nodes[:NODES_MAX]:
            up.add_metric([n["node_id"]], 1 if n.get("alive") else 0)
        yield up
        yield g("chorus_nodes", "Nodes known to the cluster", value=len(nodes))
        yield g("chorus_nodes_alive", "Nodes heard from recently", value=sum(1 for n in nodes if n.get("alive")))
        yield g("chorus_topics", "Topics in the cluster", value=s.get("topics", 0))
        yield g("chorus_shards", "Shards in the cluster", value=s.get("shards_total", 0))
        yield g("chorus_shards_led", "Shards whose planned leader is this node", value=s.get("shards_selected", 0))
        yield g("chorus_replicas_local", "Shard replicas placed on this node", value=s.get("replicas_local", 0))
        yield c("chorus_shard_leader_changes", "Shard leader changes this node has seen in the agency's plans",
                value=s.get("leader_changes", 0))
        yield c("chorus_subscription_resets", "Times a subscription's consumer on this node skipped records: "
                "its shard group was dropped by retention before it acknowledged all of it",
                value=s.get("subscription_resets", 0))
        yield c("chorus_subscription_stale_acks", "Acknowledged records discarded on this node: the ack named a "
                "shard group's shard its subscription no longer reads (the group was dropped, or read to its end)",
                value=s.get("subscription_stale_acks", 0))

    def _info(self, s: dict) -> Any:
        fam = GaugeMetricFamily("chorus_node_info", "This node (value 1)", labels=["node_id", "version"])
        fam.add_metric([str(s.get("node_id", "")), str(s.get("version", ""))], 1)
        return fam

    def _shards(self, shards: list[dict], g: Any, c: Any) -> Iterable[Any]:
        cap = self.series_max
        answered = [x for x in shards if x.get("answered")]
        per_shard = []
        per_topic: dict[str, dict] = {}
        per_sub: dict[tuple[str, str], dict] = {}
        for x in answered:
            counters = _shard_counters(x.get("stats") or {})
            lag = max((x.get("replication_lag") or {}).values(), default=0)
            per_shard.append(((x["topic"], str(x["index"])), {
                **counters, "hw": x.get("hw") or 0, "end": x.get("end") or 0, "in_sync": len(x.get("in_sync") or ()),
                "replicas": len(x.get("replicas") or ()), "replication_lag": lag}))
            t = per_topic.setdefault(x["topic"], dict.fromkeys(counters, 0))
            for k, v in counters.items():
                t[k] += v
            for sub in x.get("subscriptions") or ():
                key = (x["topic"], str(sub.get("subscription")))
                agg = per_sub.setdefault(key, {"lag": 0, "consumers": 0})
                agg["lag"] += sub.get("lag") or 0
                agg["consumers"] += sub.get("consumers") or 0
        shard_rows = bound(per_shard, cap, {"replication_lag": max, "in_sync": min, "replicas": min})
        labels = ["topic", "shard"]
        for key, name, doc in SHARD_COUNTERS:
            fam = c(name, doc, labels=labels)
            for lv, vals in shard_rows:
                fam.add_metric(list(lv), vals.get(key, 0))
            yield fam
        for key, name, doc in (
                ("hw", "chorus_shard_high_watermark", "Offset below which the shard's records are committed"),
                ("end", "chorus_shard_end_offset", "The leader's log end offset"),
                ("in_sync", "chorus_shard_in_sync_replicas", "Replicas in the shard's in-sync set (leader included)"),
                ("replicas", "chorus_shard_replicas", "Replicas the shard's plan names"),
                ("replication_lag", "chorus_shard_replication_lag_records",
                 "Records the furthest-behind follower lacks (leader end offset minus its acknowledged offset)")):
            fam = g(name, doc, labels=labels)
            for lv, vals in shard_rows:
                fam.add_metric(list(lv), vals.get(key, 0))
            yield fam
        topic_rows = bound([((t,), v) for t, v in per_topic.items()], cap)
        for key, name, doc in SHARD_COUNTERS:
            fam = c(name.replace("chorus_shard_", "chorus_topic_"), doc + " (the topic's shards led here)",
                    labels=["topic"])
            for lv, vals in topic_rows:
                fam.add_metric(list(lv), vals.get(key, 0))
            yield fam
        sub_rows = bound(list(per_sub.items()), cap, {"lag": max})
        lag = g("chorus_subscription_lag_records",
                "Committed records a subscription has not acknowledged yet (high watermark minus its cursor), "
                "summed over the topic's shards led here", labels=["topic", "subscription"])
        consumers = g("chorus_subscription_consumers", "Consumers attached to a subscription on shards led here",
                      labels=["topic", "subscription"])
        for lv, vals in sub_rows:
            lag.add_metric(list(lv), vals.get("lag", 0))
            consumers.add_metric(list(lv), vals.get("consumers", 0))
        yield lag
        yield consumers

    def _handoff(self, h: dict, g: Any, c: Any) -> Iterable[Any]:
        yield g("chorus_handoff_hints", "Hints queued on this node for level-any writes", value=h.get("hints", 0))
        yield g("chorus_handoff_bytes", "Bytes of hints queued on this node", value=h.get("bytes", 0))
        if h.get("bytes_max") is not None:
            yield g("chorus_handoff_bytes_max", "Bound of the hinted-handoff queue (hh_bytes_max)",
                    value=h["bytes_max"])
        for k in HANDOFF_COUNTERS:
            yield c(f"chorus_handoff_{k}", f"Hinted handoff: {k.replace('_', ' ')} (hints)", value=h.get(k, 0))
        rows = bound([((t, i), {"hints": q.get("hints", 0), "bytes": q.get("bytes", 0)})
                      for t, i, q in ((*str(sh).rpartition("#")[::2], q) for sh, q in (h.get("queues") or {}).items())],
                     self.series_max)
        hints = g("chorus_handoff_queue_hints", "Hints queued for one shard", labels=["topic", "shard"])
        nbytes = g("chorus_handoff_queue_bytes", "Bytes of hints queued for one shard", labels=["topic", "shard"])
        for lv, vals in rows:
            hints.add_metric(list(lv), vals.get("hints", 0))
            nbytes.add_metric(list(lv), vals.get("bytes", 0))
        yield hints
        yield nbytes

    def _failovers(self, f: dict | None, g: Any, c: Any) -> Iterable[Any]:
        if not f:
            return
        yield g("chorus_supervisor_active", "1 when this node's supervisor is the active one",
                value=1 if f.get("active") else 0)
        fam = c("chorus_failovers", "Shard failovers this node's supervisor ran, by outcome", labels=["outcome"])
        for outcome in ("started", "completed", "abandoned"):
            fam.add_metric([outcome], f.get(outcome, 0))
        yield fam
        yield g("chorus_failovers_in_progress", "Failovers under way", value=f.get("in_progress", 0))
        yield c("chorus_replica_replacements", "Replicas of silent nodes replaced by this node's supervisor",
                value=f.get("replacements", 0))
        acc, buckets = 0, []
        for b, n in zip(list(f.get("duration_buckets_s", ())) + [float("inf")], f.get("duration_counts", ())):
            acc += n
            buckets.append(("+Inf" if b == float("inf") else repr(float(b)), acc))
        if buckets:
            yield HistogramMetricFamily("chorus_failover_duration_seconds",
                                        "From the supervisor deciding a leader failed to the new leader taking "
                                        "writes", buckets=buckets, sum_value=f.get("duration_sum_s", 0.0))


class NodeMetrics:
    """The node's registry and the scrape logic (lives in the I/O thread)."""

    def __init__(self, series_max: int = SERIES_MAX_DEFAULT, process_collector: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ChorusCollector(series_max)
        self.registry.register(self.collector)
        if process_collector:
            ProcessCollector(registry=self.registry)
        self._lock = asyncio.Lock()
        self._taken_s = -1e9
        self._snapshot: dict = {}

    async def snapshot(self, gather: Callable[[], Any]) -> dict:
        """The current snapshot, gathered anew at most every ``MIN_INTERVAL_S``."""
        async with self._lock:
            if time.monotonic() - self._taken_s >= MIN_INTERVAL_S:
                self._snapshot = await gather()
                self._taken_s = time.monotonic()
            return self._snapshot

    def render(self, snapshot: dict, visible: Callable[[str], bool] | None = None) -> bytes:
        """The text exposition of ``snapshot``, with only the topics
        ``visible`` allows (None: all)."""
        if visible is not None:
            snapshot = filter_topics(snapshot, visible)
        self.collector.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self.collector.snapshot = {}


def filter_topics(snapshot: dict, visible: Callable[[str], bool]) -> dict:
    """The snapshot without shards, subscriptions and hint queues of topics
    the caller may not see (metrics honour per-tenant permissions)."""
    out = dict(snapshot)
    out["shards"] = [x for x in snapshot.get("shards") or () if visible(x.get("topic", ""))]
    h = dict(snapshot.get("handoff") or {})
    if h.get("queues"):
        h["queues"] = {sh: q for sh, q in h["queues"].items() if visible(str(sh).rpartition("#")[0])}
    out["handoff"] = h
    return out


__all__ = ["CONTENT_TYPE_LATEST", "ChorusCollector", "NodeMetrics", "bound", "filter_topics", "node_processes"]
