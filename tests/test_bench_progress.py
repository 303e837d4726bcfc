"""`brokerctl bench`'s progress display: a bar per case with an estimate,
while the results and the JSON file stay as they were.  The cases are
replaced by stand-ins that report progress like the real ones, so no node
is started."""
from __future__ import annotations

import json
from pathlib import Path

from rich.progress import Progress

from runtime import bench
from runtime.bench import Result, _TimeColumn


def fake_cases(monkeypatch, calls: list):
    def throughput(base, nodes, level, n, size, progress):
        for done in (0, n // 2, n):
            progress(done)
        calls.append(("throughput", nodes, level, n))
        return Result(f"{nodes} nodes, {level}", n, 1.0, n * size, [1.0, 2.0])

    def any_down(base, n, size, progress):
        progress(0)
        progress(n)
        calls.append(("any", n))
        return Result("3 nodes, any", n, 1.0, n * size, [1.0], {"hinted_batches": 3})

    def e2e(base, rate, seconds, size, progress, nodes=3):
        progress(0)
        progress(int(rate * seconds))
        calls.append(("e2e", nodes))
        return Result("end to end", 10, 1.0, 10 * size, [3.0], {"delivered": "10/10"})

    def failover(base, size, progress):
        for step in (0, 1, 2):
            progress(step)
        calls.append(("failover",))
        return Result(bench.FAILOVER, 5, 0.0, 0, [], {"killed": "n1", "new_leader": "n2", "outage_s": 1.0,
                                                       "leader_seen_s": 0.5, "failed": 0})

    def rolling(base, size, progress):
        for done in (0, 1, 2, 3):
            progress(done)
        calls.append(("rolling",))
        return Result(bench.ROLLING, 100, 30.0, 0, [], {
            "acked": 100, "failed": 0, "redelivered": 2, "lost_in_log": 0, "lost_to_consumer": 0,
            "restarts": [{"node": n, "stop_s": 0.5, "start_s": 4.0, "producer_stall_s": 0.3,
                          "consumer_stall_s": 0.4} for n in ("n1", "n2", "n3")]})

    def mqtt(base, case, seconds, size, progress, **opts):
        progress(0)
        progress(10)
        calls.append(("mqtt", case))
        return Result(f"MQTT {case}", 10, 1.0, 10 * size, [4.0])

    monkeypatch.setattr(bench, "run_mqtt", mqtt)
    monkeypatch.setattr(bench, "run_throughput", throughput)
    monkeypatch.setattr(bench, "run_e2e", e2e)
    monkeypatch.setattr(bench, "run_any", any_down)
    monkeypatch.setattr(bench, "run_failover", failover)
    monkeypatch.setattr(bench, "run_rolling", rolling)
    monkeypatch.setattr(bench, "_quiet_disk", lambda path: None)


def test_run_returns_and_writes_what_the_cases_return(monkeypatch, tmp_path: Path):
    calls: list = []
    fake_cases(monkeypatch, calls)
    out = tmp_path / "bench.json"
    results = bench.run(list(bench.CASES), 4000, 100, 1000, 2.0, str(out))
    assert calls == [("throughput", 1, "one", 4000), ("throughput", 3, "quorum", 4000), ("any", 4000), ("e2e", 3),
                     ("e2e", 1),
                     ("failover",), ("rolling",), ("mqtt", "mqtt-qos0"), ("mqtt", "mqtt-qos1"), ("mqtt", "mqtt-cross")]
    assert [r.case for r in results] == ["1 nodes, one", "3 nodes, quorum", "3 nodes, any", "end to end", "end to end",
                                         bench.FAILOVER, bench.ROLLING, "MQTT mqtt-qos0", "MQTT mqtt-qos1", "MQTT mqtt-cross"]
    assert json.loads(out.read_text()) == [r.row() for r in results]


def render(task) -> str:
    return _TimeColumn().render(task).plain


def test_time_column_says_what_a_case_does_then_estimates():
    prog = Progress(auto_refresh=False, disable=True)
    counted = prog.add_task("single", total=100, start=False, unit="records", expect_s=None,
                            state="starting 1 node")
    timed = prog.add_task("failover", total=2, start=False, unit="steps", expect_s=8.0, state="starting 3 nodes")
    assert render(prog._tasks[counted]) == "starting 1 node"
    assert render(prog._tasks[timed]) == "starting 3 nodes"
    prog.start_task(counted)
    prog.start_task(timed)
    assert render(prog._tasks[counted]).endswith("left")
    assert render(prog._tasks[timed]) == "0:00 of ~0:08"
    prog.update(counted, completed=100)
    prog.update(timed, completed=2)
    assert render(prog._tasks[counted]) == "0:00"
    assert render(prog._tasks[timed]) == "0:00"
