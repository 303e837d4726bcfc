"""`brokerctl simulate --bug`: every deliberate bug of the Raft core, of
shard replication and of MQTT forwarding is offered, documented in --help, and anything else is
refused with the list of valid names."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocol.mqtt_cluster import MqttBugs
from protocol.raft import RaftBugs
from protocol.shard import ShardBugs
from runtime import cli

ROOT = Path(__file__).resolve().parents[1]
PARTITION = str(ROOT / "scenarios" / "partition.yml")
RAFT = [f.name for f in fields(RaftBugs)]
SHARD = [f.name for f in fields(ShardBugs)]
MQTT = [f.name for f in fields(MqttBugs)]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def invoke(*args: str):
    result = CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    # rich may wrap the message in a box: compare words, not layout
    result.words = " ".join(re.sub(r"[│╭╮╰╯─]", " ", ANSI.sub("", result.output)).split())
    return result


def test_every_bug_dataclass_field_is_a_valid_name():
    assert cli.BUGS == tuple(RAFT) and cli.SHARD_BUGS == tuple(SHARD) and cli.MQTT_BUGS == tuple(MQTT)


def test_help_lists_every_name_and_says_the_option_repeats():
    r = invoke("simulate", "--help")
    assert r.exit_code == 0
    for name in RAFT + SHARD + MQTT:
        assert name in r.words
    assert "repeatable" in r.words


def test_unknown_bug_is_refused_with_the_valid_names():
    r = invoke("simulate", PARTITION, "--seed", "1", "--bug", "nonsense")
    assert r.exit_code == 2
    assert "unknown bug 'nonsense'" in r.words
    for name in RAFT + SHARD + MQTT:
        assert name in r.words


def test_one_unknown_among_valid_names_is_refused():
    r = invoke("simulate", PARTITION, "--bug", "double_vote", "--bug", "hw_before_qorum")
    assert r.exit_code == 2
    assert "hw_before_qorum" in r.words


@pytest.mark.parametrize("name", RAFT + SHARD + MQTT)
def test_each_valid_name_reaches_the_scenario(monkeypatch, name):
    seen = {}
    monkeypatch.setattr(cli, "_single", lambda scn, seed, trace: seen.update(scn=scn, seed=seed))
    r = invoke("simulate", PARTITION, "--seed", "3", "--bug", name)
    assert r.exit_code == 0, r.output
    scn = seen["scn"]
    if name in RAFT:
        assert getattr(scn.tuning.bugs, name) is True
    elif name in SHARD:
        assert getattr(scn.shard_bugs, name) is True
    else:
        assert getattr(scn.mqtt_bugs, name) is True
    assert seen["seed"] == 3


def test_raft_and_shard_bugs_combine(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_single", lambda scn, seed, trace: seen.update(scn=scn))
    r = invoke("simulate", PARTITION, "--bug", "double_vote", "--bug", "no_truncation")
    assert r.exit_code == 0, r.output
    assert seen["scn"].tuning.bugs == RaftBugs(double_vote=True)
    assert seen["scn"].shard_bugs == ShardBugs(no_truncation=True)
