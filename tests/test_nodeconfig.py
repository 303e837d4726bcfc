"""NodeConfig: defaults, then the file, then CHORUS_* variables, then flags;
bad values refused with the key's name."""
from __future__ import annotations

import pytest

from runtime.node import NodeConfig


def test_file_then_environment_then_flags(tmp_path) -> None:
    f = tmp_path / "chorus.yml"
    f.write_text("node_id: n2\nfailover_grace_ms: 2500\ngroup_commit_ms: 2\npeers: ['127.0.0.1:7181']\n")
    cfg = NodeConfig.load(str(f), env={})
    assert (cfg.node_id, cfg.failover_grace_ms, cfg.group_commit_ms, cfg.peers) == ("n2", 2500.0, 2.0,
                                                                                     ["127.0.0.1:7181"])
    cfg = NodeConfig.load(str(f), env={"CHORUS_FAILOVER_GRACE_MS": "4000"})
    assert cfg.failover_grace_ms == 4000.0
    cfg = NodeConfig.load(str(f), env={"CHORUS_FAILOVER_GRACE_MS": "4000"}, node_id="n3", data_dir=None)
    assert (cfg.node_id, cfg.failover_grace_ms, cfg.data_dir) == ("n3", 4000.0, "data")


def test_defaults() -> None:
    cfg = NodeConfig.load(env={})
    assert cfg.failover_grace_ms == 1500.0 and cfg.group_commit_ms == 0.0 and cfg.initial_nodes == ["n1"]


@pytest.mark.parametrize("env,words", [
    ({"CHORUS_FAILOVER_GRACE_MS": "50"}, "failover_grace_ms must be in 200..600000, got 50"),
    ({"CHORUS_FAILOVER_GRACE_MS": "soon"}, "failover_grace_ms"),
    ({"CHORUS_CLIENT_PORT": "70000"}, "client_port must be in 0..65535"),
    ({"CHORUS_MQTT_PORT": "-2"}, "mqtt_port must be in 0..65535 .or -1 for none., got -2"),
    ({"CHORUS_MQTT_PORT": "7181"}, "client, http, admin and mqtt ports must differ"),
])
def test_bad_values_are_refused_by_name(env, words) -> None:
    with pytest.raises(ValueError, match=words):
        NodeConfig.load(env=env)


def test_mqtt_port_defaults_to_1883_and_local_clusters_step_it() -> None:
    from runtime.local_cluster import node_configs

    cfg = NodeConfig.load(env={})
    assert cfg.mqtt_port == 1883
    assert [c.mqtt_port for c in node_configs(cfg, 3)] == [1883, 1983, 2083]
    off = NodeConfig.load(env={"CHORUS_MQTT_PORT": "-1"})
    assert [c.mqtt_port for c in node_configs(off, 2)] == [-1, -1]  # none on any node


def test_unknown_keys_are_refused(tmp_path) -> None:
    f = tmp_path / "chorus.toml"
    f.write_text('node_id = "n1"\nfailover_grace = 3\n')
    with pytest.raises(ValueError, match="unknown configuration keys: failover_grace"):
        NodeConfig.load(str(f), env={})


def test_replicas_tick_every_100_ms_and_report_four_times_per_grace() -> None:
    from runtime.node import shard_tuning

    t = shard_tuning(NodeConfig.load(env={"CHORUS_GROUP_COMMIT_MS": "2"}))
    assert (t.tick_ms, t.state_interval_ms, t.group_commit_ms) == (100, 375, 2.0)
    # a short grace still leaves a report per tick, never less
    assert shard_tuning(NodeConfig.load(env={"CHORUS_FAILOVER_GRACE_MS": "200"})).state_interval_ms == 100


def test_cluster_host_is_an_address_the_cluster_ports_bind_to():
    from runtime.node import NodeConfig

    assert NodeConfig.load(None, env={}).cluster_addr == "127.0.0.1"
    assert NodeConfig.load(None, env={}, cluster_host="10.1.2.3").cluster_addr == "10.1.2.3"
    assert NodeConfig.load(None, env={"CHORUS_CLUSTER_SECRET_FILE": "/s"}).cluster_secret_file == "/s"
    import pytest

    with pytest.raises(ValueError, match="cluster_host must be an IPv4 address"):
        NodeConfig.load(None, env={}, cluster_host="example.invalid")
