"""Metrics, the dashboard and failover logs on three real node processes.

One cluster for the module (started and stopped here, by PID): the
Prometheus scrape of every node, parsed with prometheus_client's parser;
the dashboard in headless Chromium (skipped, with the reason, where there
is no browser); then a leader is killed with SIGKILL and the failover's
log line and metrics are checked."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.client import Consumer, Producer
from runtime.logfmt import parse
from runtime.realcluster import RealCluster

pytestmark = pytest.mark.realnet

TOPIC = "acme/shop/web/orders"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = RealCluster(tmp_path_factory.mktemp("observe"), n=3)
    try:
        c.start()
        c.create_topic("n1", TOPIC, shards=2)
        yield c
    finally:
        assert c.stop_all() == []


def scrape(c: RealCluster, nid: str) -> dict[str, list]:
    status, headers, body = c.http_raw(nid, "/metrics")
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("text/plain"), headers
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def total(fams: dict, sample: str, **labels) -> float:
    name = sample.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
    return sum(s.value for s in fams.get(name, ()) if s.name == sample
               and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(what, check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


def produce(c: RealCluster, n: int, tag: str) -> None:
    with Producer(c.client("n1"), **c.auth) as p:
        for f in [p.send(TOPIC, b"%s-%d" % (tag.encode(), i)) for i in range(n)]:
            f.result(timeout=30)


def mqtt_publish(c: RealCluster, nid: str, n: int) -> None:
    """QoS 1 PUBLISHes with paho (each waits for its PUBACK)."""
    import paho.mqtt.client as mqtt

    cl = c.mqtt_login(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observe-pub",
                                  protocol=mqtt.MQTTv311))
    deadline = time.monotonic() + 60
    while True:  # a node refuses (CONNACK 3) until it can settle sessions; retry like a client
        try:
            cl.connect(*c.mqtt(nid))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    cl.loop_start()
    try:
        for i in range(n):
            info = cl.publish(f"sensors/{i}", b"21.5", qos=1)
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        cl.loop_stop()
        cl.disconnect()


def test_every_node_serves_metrics_that_add_up(cluster: RealCluster) -> None:
    c = cluster
    status, headers, _ = c.http_raw("n1", "/metrics", auth=False)
    assert status == 401 and "Basic" in headers.get("WWW-Authenticate", "")
    produce(c, 200, "m")
    mqtt_publish(c, "n3", 5)
    with Consumer(c.client("n2"), TOPIC, "billing", **c.auth) as con:
        got = [con.poll(timeout_s=10) for _ in range(20)]
        assert all(m is not None for m in got)
        for m in got:
            m.ack()

        def added_up():
            fams = {n: scrape(c, n) for n in sorted(c.cfgs)}
            produced = sum(total(f, "chorus_shard_produced_records_total", topic=TOPIC) for f in fams.values())
            consumed = sum(total(f, "chorus_shard_consumed_records_total", topic=TOPIC) for f in fams.values())
            return fams if produced == 200 and consumed >= 20 else None

        fams = wait_for("produced records summed over the nodes", added_up)
    # each shard is reported by exactly one node: its leader's
    shards = [(s.labels["topic"], s.labels["shard"]) for f in fams.values()
              for s in f["chorus_shard_produced_records"] if s.name.endswith("_total")]
    assert sorted(shards) == [(TOPIC, "0"), (TOPIC, "1")]
    for nid, f in fams.items():
        assert total(f, "chorus_node_up") == 3, nid
        assert total(f, "chorus_agency_voters") == 3
        assert total(f, "chorus_node_processes") >= 5 and total(f, "chorus_node_resident_memory_bytes") > 0
        assert total(f, "chorus_request_duration_seconds_count", interface="http") > 0
    terms = {total(f, "chorus_agency_term") for f in fams.values()}
    assert len(terms) == 1 and terms.pop() >= 1
    assert sum(total(f, "chorus_agency_is_leader") for f in fams.values()) == 1
    assert sum(total(f, "chorus_shard_in_sync_replicas", topic=TOPIC) for f in fams.values()) == 6
    # followers catch up (the leader also writes control records, e.g. the subscription's cursor)
    wait_for("replication lag back to 0", lambda: sum(
        total(scrape(c, n), "chorus_shard_replication_lag_records", topic=TOPIC) for n in sorted(c.cfgs)) == 0)
    assert total(fams["n1"], "chorus_request_duration_seconds_count", interface="binary") > 0
    assert total(fams["n3"], "chorus_request_duration_seconds_count", interface="mqtt") == 5
    assert total(fams["n2"], "chorus_connections", interface="binary") >= 1  # the consumer's
    lags = [s for f in fams.values() for s in f.get("chorus_subscription_lag_records", ())
            if s.labels.get("subscription") == "billing"]
    assert lags and all(0 <= s.value <= 200 for s in lags)


def _browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser: {CHROMIUM} is missing (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser driver: the playwright package is not installed (pip install playwright)")
    return sync_playwright


def test_dashboard_shows_the_cluster_and_updates_after_a_produce(cluster: RealCluster) -> None:
    sync_playwright = _browser()
    c = cluster
    url = f"http://127.0.0.1:{c.cfgs['n2'].http_port}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(http_credentials={"username": "admin", "password": c.password},
                                      viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_function("document.querySelectorAll('#nodes tr[data-alive=true]').length === 3",
                                   timeout=60_000)
            assert sorted(page.eval_on_selector_all("#nodes tr", "rs => rs.map(r => r.dataset.node)")) == \
                ["n1", "n2", "n3"]
            page.wait_for_selector(f'#topics tr[data-topic="{TOPIC}"]', timeout=60_000)
            assert page.locator(f'#topics tr[data-shard="{TOPIC}#0"]').count() == 1
            assert page.locator(f'#topics tr[data-shard="{TOPIC}#1"]').count() == 1
            leader = page.text_content("#agency-leader")
            assert leader in ("n1", "n2", "n3")
            before = int(page.get_attribute("#total-produced", "data-value"))
            polls = int(page.get_attribute("#updated", "data-polls"))
            produce(c, 50, "d")
            page.wait_for_function(
                f"Number(document.querySelector('#total-produced').dataset.value) >= {before + 50}",
                timeout=60_000)
            assert int(page.get_attribute("#updated", "data-polls")) > polls
            assert page.text_content("#error") == ""
        finally:
            browser.close()


def _failover_lines(c: RealCluster, nodes: list[str]) -> list[dict]:
    out = []
    for nid in nodes:
        try:
            text = (Path(c.cfgs[nid].data_dir) / "logs" / "actors.log").read_text()
        except OSError:
            continue
        out += [parse(line) for line in text.splitlines() if "failover done" in line]
    return out


def test_a_failover_logs_why_and_how_long_and_counts(cluster: RealCluster) -> None:
    c = cluster
    shards = c.wait_leaders("n1", TOPIC)
    st = c.get("n1", "/status")
    agency_leader = st["agency"]["leader"]
    # kill the leader of a shard on a node that does not lead the agency: the failover is the shard's alone
    victim = next((s["leader"] for s in shards if s["leader"] != agency_leader), None)
    if victim is None:
        victim = next(n for n in sorted(c.cfgs) if n != agency_leader)
    shard = next((s["shard"] for s in shards if s["leader"] == victim), None)
    c.kill9(victim)
    alive = [n for n in sorted(c.cfgs) if n != victim]
    c.wait_leaders(agency_leader, TOPIC, timeout_s=60, exclude=victim)
    if shard is None:
        pytest.skip(f"{victim} led no shard of {TOPIC}; nothing to fail over")
    lines = wait_for("a 'failover done' line in actors.log", lambda: [
        kv for kv in _failover_lines(c, alive) if kv.get("shard") == shard], timeout_s=60)
    kv = lines[0]
    assert kv["level"] == "warning" and kv["actor"] == "Supervisor" and kv["node"] in alive
    assert kv["old_leader"] == victim and kv["new_leader"] in alive
    assert 0 < int(kv["took_ms"]) < 60_000 and kv["reason"]
    assert int(kv["promoted_after_ms"]) <= int(kv["took_ms"])
    # the detection line says why, too
    text = (Path(c.cfgs[kv["node"]].data_dir) / "logs" / "actors.log").read_text()
    detected = [parse(x) for x in text.splitlines() if "failing over" in x]
    assert any(d.get("shard") == shard and d.get("reason") for d in detected)
    # actors' lines go to actors.log, never to the launcher's output
    for nid in alive:
        out = c.output(nid)
        assert "actor=" not in out and "failover" not in out, out[-2000:]

    def counted():
        f = scrape(c, kv["node"])
        return f if total(f, "chorus_failovers_total", outcome="completed") >= 1 else None

    f = wait_for("the failover counted in /metrics", counted)
    assert total(f, "chorus_failover_duration_seconds_count") >= 1
    assert total(f, "chorus_supervisor_active") == 1
    changes = wait_for("the leader change seen", lambda: total(scrape(c, alive[0]),
                                                                "chorus_shard_leader_changes_total"))
    assert changes >= 1
    data = c.http_raw(alive[0], "/dashboard/data.json")
    assert data[0] == 200 and shard.encode() in data[2]
