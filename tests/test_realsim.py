"""Scenario files on real processes (runtime/realsim.py).

Without processes: the fault schedule's mapping to firings (the same seed,
the same plan; repeating faults within their window; undo delays within
``restore_after_s``), the faults a real machine cannot apply, the history
recording (a record the producer saw acknowledged, missing from the final
log, is reported lost by the simulator's checker), and the nodes' record
files (written by the production host, read back on the harness's time
line).

With processes: shard-leader-crash, shortened to 16 + 6 scenario seconds, on three real nodes: the
shard leader is killed with SIGKILL and restarted; every checker that runs
must pass, no acknowledged write may be lost, and the crashes must really
have happened.  The slow sweep runs 20 real runs over the three scenarios
that run both ways.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from runtime import realfaults as rf
from runtime.realhistory import Recorder, keys_for_shards, payload
from runtime.realsim import run_real
from sim.datachecks import check_data
from sim.scenario import expand_groups, load

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
BOTH_WAYS = ("partition.yml", "shard-leader-crash.yml", "old-leader-returns.yml")


# ------------------------------------------------------------ no processes
def test_the_plan_is_a_function_of_the_seed_and_keeps_the_schedule() -> None:
    scn = load(SCENARIOS / "shard-leader-crash.yml")
    a, b, c = rf.plan(scn, 7), rf.plan(scn, 7), rf.plan(scn, 8)
    assert a == b and [f.undo_after_s for f in a] == [f.undo_after_s for f in b]
    assert [f.at_s for f in a] != [f.at_s for f in c]
    f0 = scn.faults[0]  # every 5-9 s between 5 and 35, restored after 2-4 s
    assert a and all(f.do == "crash" for f in a)
    times = [f.at_s for f in a]
    assert times == sorted(times) and f0.from_s + 5 <= times[0] <= f0.from_s + 9 and times[-1] < 35
    assert all(5 <= y - x <= 9 for x, y in zip(times, times[1:]))
    assert all(2 <= f.undo_after_s <= 4 for f in a)


def test_one_off_faults_keep_their_times_and_order() -> None:
    scn = load(SCENARIOS / "partition.yml")
    p = rf.plan(scn, 1)
    assert [(f.at_s, f.do) for f in p] == [(f.at_s, f.do) for f in scn.faults]
    assert all(f.undo_after_s is None for f in p)  # heals are faults of their own there


def test_faults_a_real_machine_cannot_apply_are_named_with_the_reason() -> None:
    skew = load(SCENARIOS / "clock-skew.yml")
    missing = rf.unavailable(skew, netns=True)
    assert "clock" in missing or "clock_jump" in missing
    assert all("clock" in why for verb, why in missing.items() if verb.startswith("clock"))
    part = load(SCENARIOS / "partition.yml")
    assert rf.unavailable(part, netns=True) == {}
    assert set(rf.unavailable(part, netns=False)) == {"partition", "partition_oneway"}


def test_partition_groups_resolve_rest_and_drop_clients() -> None:
    peers = ["n1", "n2", "n3"]
    resolve = {"leader": "n2", "n1": "n1", "n2": "n2", "n3": "n3"}.get
    groups = expand_groups([["leader", "c1"], ["rest"]], resolve, peers)
    assert groups == [["n2"], ["n1", "n3"]]
    pairs = set(rf.pairs_between(groups, peers))
    assert pairs == {("n2", "n1"), ("n1", "n2"), ("n2", "n3"), ("n3", "n2")}


def test_keys_route_to_their_shards() -> None:
    from protocol.hashing import shard_for_key

    keys = keys_for_shards(5)
    assert [shard_for_key(k, 5) for k in keys] == [0, 1, 2, 3, 4]


def test_the_recorded_history_feeds_the_simulators_checker() -> None:
    """A record the producer saw acknowledged at quorum and missing from the
    final log is reported; one present is not."""
    from protocol.records import Record, encode_batch

    class Md:
        def __init__(self, offset: int) -> None:
            self.offset, self.level = offset, "quorum"

    h = Recorder(t0=0.0, scale=0.5)
    shard = "acme/shop/orders/created#0"
    h.produce_done("p1", shard, 0, "quorum", Md(0), None)
    h.produce_done("p1", shard, 1, "quorum", Md(1), None)
    h.produce_done("p1", shard, 2, "quorum", None, TimeoutError("no answer"))
    hist = h.snapshot()
    assert [r.fields["status"] for r in hist] == ["ok", "ok", "unknown"]
    assert all(r.t > 0 for r in hist)  # scenario seconds on the harness's clock
    log = [encode_batch([Record(key=None, payload=payload("p1", shard, 0), producer_ts_ms=0)], base_offset=0)]
    found, stats = check_data(hist, {shard: {"n1": log, "n2": log}}, {shard: ("n1", 1)})
    assert stats["acked_records"] == 2
    assert [v.details["payload"] for v in found["acked_writes_durable"]] == ["p1|acme/shop/orders/created#0|1"]
    assert found["replicas_identical"] == [] and found["no_duplicates"] == []


def test_record_files_round_trip_onto_the_harness_time_line(tmp_path, monkeypatch) -> None:
    from runtime.recordfile import RecordFile, read_records

    monkeypatch.setenv("CHORUS_RECORD_DIR", str(tmp_path))
    monkeypatch.setenv("CHORUS_RECORD_KINDS", "raft.")
    w = RecordFile.from_env("n1")
    w.actor = "RaftPeer"
    w.write("n1", "raft.leader", {"peer": "n1", "term": 3, "log": ((1, 1, 99), (2, 3, 7)), "blob": b"\x00\xff"})
    w.write("n1", "shard.boot", {"shard": "x"})  # not a wanted kind
    with open(w.path, "ab") as f:
        f.write(b'{"t": 1, "node": "n1", "ki')  # a line cut short by a kill
    got = list(read_records(tmp_path))
    assert len(got) == 1 and got[0].kind == "raft.leader" and got[0].actor == "RaftPeer"
    assert got[0].fields["log"] == ((1, 1, 99), (2, 3, 7)) and got[0].fields["blob"] == b"\x00\xff"
    assert os.stat(w.path).st_size > 0


# --------------------------------------------------------------- processes
def _short(name: str, duration_s: float, settle_s: float):
    return dataclasses.replace(load(SCENARIOS / name), duration_s=duration_s, settle_s=settle_s)


def _assert_clean(r) -> None:
    assert not r.error, r.error
    assert r.ok, {k: [str(v) for v in vs[:3]] for k, vs in r.violations.items() if vs}
    assert r.lost == 0
    assert r.acked > 100, r  # the producers kept writing
    ran = set(r.violations)  # the checks that ran (skipped ones are not there)
    assert {"acked_writes_durable", "election_safety", "replicas_identical", "log_matching"} <= ran
    assert r.raft_records > 0  # the nodes' Raft peers did record


@pytest.mark.realnet
def test_shard_leader_crash_on_real_processes(tmp_path) -> None:
    scn = _short("shard-leader-crash.yml", duration_s=16, settle_s=6)  # 11 s of faults and settling
    assert rf.plan(scn, 3)[0].at_s < 16  # the first crash falls within the shortened run
    r = run_real(scn, 3, tmp_path, time_scale=0.5)
    _assert_clean(r)
    assert r.fault_counts.get("crash", 0) >= 1 and r.fault_counts.get("restart", 0) >= 1, r.faults
    assert r.deliveries > 0 and "delivered_to_subscriptions" in r.violations


@pytest.mark.realnet
@pytest.mark.slow
def test_twenty_real_runs_of_the_scenarios_that_run_both_ways(tmp_path) -> None:
    results = []
    for k in range(20):
        name = BOTH_WAYS[k % len(BOTH_WAYS)]
        r = run_real(load(SCENARIOS / name), 100 + k, tmp_path / f"run{k}", time_scale=0.4)
        results.append(r)
        print(json.dumps({"scenario": r.scenario, "seed": r.seed, "ok": r.ok, "faults": r.fault_counts,
                          "acked": r.acked, "lost": r.lost, "acked_weak": r.acked_weak, "lost_weak": r.lost_weak,
                          "failed_checks": r.failed_checks(), "wall_s": round(r.wall_seconds, 1),
                          "converge_s": round(r.converge_s, 1), "converge_waited_on": r.converge_waited_on, "skipped_firings": r.skipped_firings,
                          "violations": {k: str(v[0])[:300] for k, v in r.violations.items() if v},
                          "error": r.error[-300:]}), flush=True)
    bad = [(r.scenario, r.seed, r.failed_checks(), r.replay) for r in results if not r.ok]
    assert bad == []
    assert sum(r.lost for r in results) == 0
    kinds = {k for r in results for k in r.fault_counts}
    assert {"crash", "restart", "partition", "heal"} <= kinds


def test_the_cli_refuses_what_the_real_runner_cannot_run() -> None:
    from typer.testing import CliRunner

    from runtime import cli

    def invoke(*args: str):
        r = CliRunner().invoke(cli.app, ["simulate", *args], env={"COLUMNS": "200", "NO_COLOR": "1"})
        return r.exit_code, " ".join(r.output.split())

    code, out = invoke(str(SCENARIOS / "chaos.yml"), "--real")
    assert code == 2 and "needs a data section" in out
    code, out = invoke(str(SCENARIOS / "shard-leader-crash.yml"), "--real", "--time-scale", "0")
    assert code == 2 and "--time-scale must be in" in out
    code, out = invoke(str(SCENARIOS / "shard-leader-crash.yml"), "--real", "--bug", "double_vote")
    assert code == 2 and "not --real" in out
