"""Unit tests of the metrics collectors, their label bounds, the failover
watch, the shard traffic counters, latency histograms and logfmt lines."""
from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.failover_watch import DURATION_BUCKETS_S, FailoverWatch, why_failed
from actors.shard_stats import ShardStats
from protocol.records import Record, encode_batch
from protocol.shard import ReplicaState
from runtime.latency import BUCKETS_S, LatencyHistogram
from runtime.logfmt import LogfmtFormatter, parse, quote
from runtime.metrics import OTHER, ChorusCollector, NodeMetrics, bound, filter_topics, node_processes


def _shard(topic: str, index: int, produced: int = 0, lag: int = 0, subs: tuple = ()) -> dict:
    return {"shard": f"{topic}#{index}", "topic": topic, "index": index, "leader": "n1", "epoch": 1,
            "replicas": ["n1", "n2", "n3"], "answered": True, "in_sync": ["n1", "n2"], "hw": 100, "end": 100 + lag,
            "stats": {"produced_records": produced, "produced_bytes": produced * 10, "delivered_records": 3,
                      "delivered_bytes": 30, "fetched_records": 2, "fetched_bytes": 40},
            "replication_lag": {"n2": lag, "n3": 0},
            "subscriptions": [{"subscription": s, "mode": "exclusive", "committed": 90, "consumers": 1, "lag": 10}
                              for s in subs]}


def _snapshot(shards: list[dict], **kw) -> dict:
    base = {"node_id": "n1", "version": "0.1.0", "agency": {"role": "leader", "leader": "n1", "term": 7,
                                                            "commit_index": 42, "voters": ["n1", "n2", "n3"],
                                                            "learners": []},
            "nodes": [{"node_id": "n1", "alive": True}, {"node_id": "n2", "alive": False}],
            "shards": shards, "shards_total": len(shards), "shards_selected": len(shards), "topics": 1,
            "replicas_local": 3, "handoff": {"hints": 2, "bytes": 64, "bytes_max": 1024, "stored": 5,
                                             "queues": {"acme/a/b/t#0": {"hints": 2, "bytes": 64}}},
            "failovers": {"active": True, "started": 2, "completed": 1, "abandoned": 1, "replacements": 0,
                          "in_progress": 0, "duration_buckets_s": list(DURATION_BUCKETS_S),
                          "duration_counts": [0, 0, 1] + [0] * (len(DURATION_BUCKETS_S) - 2),
                          "duration_sum_s": 0.7, "recent": []},
            "leader_changes": 3, "missing": [],
            "io": {"connections": {"binary": 4, "http": 1, "mqtt": 2},
                   "latency": {"binary": {"buckets_s": list(BUCKETS_S), "counts": [1] * (len(BUCKETS_S) + 1),
                                          "sum_s": 2.0}}},
            "processes": {"cpu_s": 1.5, "rss_bytes": 1 << 20, "processes": 9}}
    base.update(kw)
    return base


def _families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def _value(fams: dict, name: str, sample: str | None = None, **labels) -> float:
    fam = fams[name]
    for s in fam.samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((name, labels))


def test_collector_output_parses_and_carries_the_snapshot() -> None:
    m = NodeMetrics(series_max=50, process_collector=False)
    text = m.render(_snapshot([_shard("acme/a/b/t", 0, produced=11, lag=4, subs=("billing",)),
                               _shard("acme/a/b/t", 1, produced=5)]))
    f = _families(text)
    assert _value(f, "chorus_agency_term") == 7 and _value(f, "chorus_agency_commit_index") == 42
    assert _value(f, "chorus_agency_is_leader") == 1
    assert _value(f, "chorus_node_up", node_id="n2") == 0 and _value(f, "chorus_node_up", node_id="n1") == 1
    assert _value(f, "chorus_shard_produced_records", topic="acme/a/b/t", shard="0") == 11
    assert _value(f, "chorus_shard_consumed_records", topic="acme/a/b/t", shard="1") == 5  # 3 delivered + 2 fetched
    assert _value(f, "chorus_topic_produced_records", topic="acme/a/b/t") == 16
    assert _value(f, "chorus_shard_replication_lag_records", shard="0") == 4
    assert _value(f, "chorus_shard_in_sync_replicas", shard="0") == 2
    assert _value(f, "chorus_subscription_lag_records", subscription="billing") == 10
    assert _value(f, "chorus_handoff_hints") == 2 and _value(f, "chorus_handoff_queue_bytes", shard="0") == 64
    assert _value(f, "chorus_failovers", outcome="completed") == 1
    assert _value(f, "chorus_failover_duration_seconds", "chorus_failover_duration_seconds_bucket", le="1.0") == 1
    assert _value(f, "chorus_failover_duration_seconds", "chorus_failover_duration_seconds_count") == 1
    assert _value(f, "chorus_connections", interface="mqtt") == 2
    lat = "chorus_request_duration_seconds"
    assert _value(f, lat, lat + "_count", interface="binary") == len(BUCKETS_S) + 1
    assert _value(f, lat, lat + "_bucket", interface="binary", le="0.001") == 2  # cumulative
    assert _value(f, "chorus_node_cpu_seconds") == 1.5 and _value(f, "chorus_node_processes") == 9
    assert _value(f, "chorus_shard_leader_changes") == 3
    assert f["chorus_shard_produced_records"].type == "counter"


def test_shard_topic_and_subscription_label_sets_are_capped() -> None:
    topics = [f"acme/a/b/t{k:03d}" for k in range(30)]
    shards = [_shard(t, i, produced=1, lag=i, subs=(f"s{i}", f"x{i}")) for t in topics for i in range(10)]
    m = NodeMetrics(series_max=25, process_collector=False)
    f = _families(m.render(_snapshot(shards)))
    produced = [s for s in f["chorus_shard_produced_records"].samples if s.name.endswith("_total")]
    assert len(produced) == 25
    other = [s for s in produced if s.labels["topic"] == OTHER]
    assert len(other) == 1 and other[0].labels["shard"] == OTHER
    # nothing is lost: the capped series still add up to every shard's count
    assert sum(s.value for s in produced) == 300
    assert max(s.value for s in f["chorus_shard_replication_lag_records"].samples) == 9  # max over the rest
    for name in ("chorus_topic_produced_records", "chorus_subscription_lag_records", "chorus_shard_high_watermark"):
        assert len({tuple(sorted(s.labels.items())) for s in f[name].samples}) <= 25, name
    total = sum(s.value for s in f["chorus_topic_produced_records"].samples if s.name.endswith("_total"))
    assert total == 300


def test_bound_keeps_order_and_combines_the_rest() -> None:
    rows = [((f"t{k}",), {"a": k, "m": k}) for k in range(5)]
    assert bound(rows, 10) == sorted(rows)
    out = bound(list(reversed(rows)), 3, {"m": max})
    assert [r[0] for r in out] == [("t0",), ("t1",), (OTHER,)]
    assert out[-1][1] == {"a": 2 + 3 + 4, "m": 4}


def test_series_of_hidden_tenants_are_filtered() -> None:
    snap = _snapshot([_shard("acme/a/b/t", 0, produced=1), _shard("globex/a/b/t", 0, produced=2)])
    snap["handoff"]["queues"]["globex/a/b/t#0"] = {"hints": 1, "bytes": 1}
    out = filter_topics(snap, lambda t: t.startswith("acme/"))
    assert [s["topic"] for s in out["shards"]] == ["acme/a/b/t"]
    assert list(out["handoff"]["queues"]) == ["acme/a/b/t#0"]
    text = NodeMetrics(process_collector=False).render(snap, lambda t: t.startswith("acme/")).decode()
    assert "globex" not in text and "acme/a/b/t" in text


def test_private_registry_and_empty_collector() -> None:
    from prometheus_client import REGISTRY

    a, b = NodeMetrics(), NodeMetrics()
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert list(ChorusCollector().collect()) == []  # no snapshot, no families
    assert b"process_cpu_seconds_total" in a.render(_snapshot([]))  # ProcessCollector in the private registry


def test_node_processes_counts_this_process_group() -> None:
    p = node_processes()
    assert p["processes"] >= 1 and p["rss_bytes"] > 0 and p["cpu_s"] > 0
    assert node_processes(pgid=-12345)["processes"] == 0


def test_latency_histogram_buckets() -> None:
    h = LatencyHistogram()
    for s in (0.0001, 0.001, 0.003, 99.0):
        h.observe(s)
    snap = h.snapshot()
    assert snap["counts"][0] == 1 and snap["counts"][1] == 1  # 0.001 <= le 0.001
    assert snap["counts"][BUCKETS_S.index(0.005)] == 1 and snap["counts"][-1] == 1
    assert sum(snap["counts"]) == 4 and snap["sum_s"] == pytest.approx(99.0041)


def _state(node: str, role: str, epoch: int) -> ReplicaState:
    return ReplicaState("t/p/c/x#0", node, epoch, role, node if role == "leader" else None, epoch, 10, 10)


def test_failover_watch_measures_detection_to_new_leader_taking_writes() -> None:
    w = FailoverWatch()
    reason, silent = why_failed("n1", (10.0, _state("n1", "leader", 3)), 3, 11.6)
    assert "no state report from leader n1 for 1.60 s" == reason and silent == pytest.approx(1.6)
    w.detected("t/p/c/x#0", 3, "n1", reason, silent, now_s=11.6, wall_s=1000.0)
    assert w.leader_report("t/p/c/x#0", "n2", "leader", 4, 11.7) is None  # not promoted yet
    w.promoted("t/p/c/x#0", "n2", 4, 11.9)
    assert w.leader_report("t/p/c/x#0", "n2", "follower", 4, 12.0) is None
    assert w.leader_report("t/p/c/x#0", "n3", "leader", 4, 12.0) is None
    done = w.leader_report("t/p/c/x#0", "n2", "leader", 4, 12.4)
    assert done["took_s"] == pytest.approx(0.8) and done["promote_s"] == pytest.approx(0.3)
    st = w.stats()
    assert st["started"] == st["completed"] == 1 and st["in_progress"] == 0
    assert st["duration_counts"][DURATION_BUCKETS_S.index(1.0)] == 1
    logs = w.take_logs()
    assert [m for _l, m, _f in logs] == ["shard leader failed; failing over",
                                         "failover done: the new leader takes writes"]
    assert logs[1][2]["took_ms"] == 800 and logs[1][2]["new_leader"] == "n2" and logs[1][2]["reason"] == reason
    assert w.take_logs() == []


def test_failover_watch_abandoned_and_reasons() -> None:
    w = FailoverWatch()
    w.detected("s#0", 1, "", *why_failed("", None, 1, 0.0), now_s=0.0, wall_s=0.0)
    w.abandoned("s#0", "transaction failed")
    assert w.stats()["abandoned"] == 1 and not w.open
    assert "never reported" in why_failed("n1", None, 2, 5.0)[0]
    assert "does not lead epoch 2" in why_failed("n1", (4.0, _state("n1", "follower", 2)), 2, 5.0)[0]


def test_shard_stats_count_produce_deliveries_and_fetches() -> None:
    s = ShardStats()
    s.produced(10, 500)
    s.delivered(((1, b"abc", False), (2, b"de", True)))
    batch = encode_batch([Record(key=None, payload=b"x")] * 4, base_offset=7, epoch=1, broker_ts_ms=0)
    s.fetched([batch])
    d = s.as_dict()
    assert d["produced_records"] == 10 and d["produced_bytes"] == 500
    assert d["delivered_records"] == 2 and d["delivered_bytes"] == 5
    assert d["fetched_records"] == 4 and d["fetched_bytes"] == len(batch)


@pytest.mark.parametrize("value", ["plain", "two words", 'q"uote', "a=b", "multi\nline", "", "x\\y", "ünï"])
def test_logfmt_values_round_trip(value: str) -> None:
    line = f"k={quote(value)} other=1"
    assert parse(line) == {"k": value, "other": "1"}


def test_logfmt_formatter_writes_one_line_with_the_fields() -> None:
    fmt = LogfmtFormatter(node="n9")
    rec = logging.LogRecord("chorus.actor", logging.WARNING, __file__, 1, "%s", ("failover done",), None)
    rec.kv = {"actor": "Supervisor", "shard": "acme/a/b/t#0", "took_ms": 12, "reason": "no report\nfor 2 s"}
    line = fmt.format(rec)
    assert "\n" not in line
    kv = parse(line)
    assert kv["node"] == "n9" and kv["actor"] == "Supervisor" and kv["level"] == "warning"
    assert kv["msg"] == "failover done" and kv["shard"] == "acme/a/b/t#0" and kv["took_ms"] == "12"
    assert kv["reason"] == "no report\nfor 2 s" and kv["ts"].endswith("Z")


def test_loggers_made_before_a_fork_follow_the_new_root() -> None:
    """What Thespian does in an actor process -- a new root and manager --
    leaves module-level loggers on the old root (the launcher's stderr);
    adopt_forwarding moves them onto the new one."""
    from runtime.logfmt import adopt_forwarding

    old_root, old_manager = logging.root, logging.Logger.manager
    module_logger = logging.getLogger("chorus.test_module_logger")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    import types

    mod = types.ModuleType("chorus_test_fake_module")
    mod.log = module_logger
    try:
        logging.root = logging.RootLogger(logging.WARNING)
        logging.Logger.root = logging.root
        logging.Logger.manager = logging.Manager(logging.root)
        logging.root.addHandler(Keep())
        module_logger.warning("before")
        assert seen == []  # still on the old root
        assert adopt_forwarding([mod]) == 1
        module_logger.warning("after")
        assert seen == ["after"]
        assert logging.getLogger("chorus.test_module_logger") is module_logger
    finally:
        logging.root = old_root
        logging.Logger.root = old_root
        logging.Logger.manager = old_manager
        module_logger.manager, module_logger.parent = old_manager, old_manager.getLogger("chorus")


def test_log_level_setting() -> None:
    from runtime.node import NodeConfig

    assert NodeConfig.load(env={}, log_level="info").log_level == "INFO"
    assert NodeConfig.load(env={"CHORUS_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ValueError, match="log_level must be one of debug, info, warning, error"):
        NodeConfig.load(env={}, log_level="verbose")
