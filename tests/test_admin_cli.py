"""The admin commands of brokerctl (runtime/admin_cli.py) against a real HTTP
server: the API application with an in-memory gateway, served on
127.0.0.1 from a background thread."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import threading

import pytest
import typer
from aiohttp import web
from typer.testing import CliRunner

from runtime.admin_cli import register
from runtime.http_api import make_app
from test_http_api import TOPIC, FakeGateway

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BackgroundServer:
    """The HTTP API on 127.0.0.1, on a free port, in its own thread and loop."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="http-api-test", daemon=True)
        self.ready = threading.Event()
        self.port = 0
        self.failure: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(make_app(self.gateway, node_id="n1"))
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # surfaced by start()
            self.failure = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

    def start(self) -> str:
        self.thread.start()
        assert self.ready.wait(10), "the test server did not start"
        if self.failure:
            raise self.failure
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def server():
    srv = BackgroundServer(FakeGateway())
    url = srv.start()
    yield srv, url
    srv.stop()


@pytest.fixture
def gw(server) -> FakeGateway:
    """The server's gateway, back in its initial state for each test."""
    srv, _ = server
    srv.gateway.__init__()
    return srv.gateway


@pytest.fixture
def url(server) -> str:
    return server[1]


APP = typer.Typer()
register(APP)


def run(*args: str, input: str | None = None, env: dict | None = None):
    result = CliRunner().invoke(APP, list(args), input=input,
                                env={"COLUMNS": "200", "CHORUS_URL": None, **(env or {})})
    result.plain = ANSI.sub("", result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ok(*args: str, **kw):
    r = run(*args, **kw)
    assert r.exit_code == 0, r.plain
    assert "Traceback" not in r.plain
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- status, nodes, shards ----------------------------------------------


def test_status(gw, url):
    out = ok("status", "--url", url).plain
    for needle in ("c-test", "0.1.0", "leader", "this node is leader", "term 3", "commit index 120", "n1, n2, n3",
                   "127.0.0.1:7171", "127.0.0.1:7181", "127.0.0.1:7173", "this node", "agency leader"):
        assert needle in out, needle
    rows = {n: next(line for line in out.splitlines() if f"│ {n} " in line) for n in ("n1", "n2", "n3")}
    assert "this node" in rows["n1"] and "│ yes " in rows["n2"] and "│ no " in rows["n3"]


def test_status_json(gw, url):
    data = json.loads(ok("status", "--url", url, "--json").stdout)
    assert data["node_id"] == "n1" and data["agency"]["term"] == 3 and len(data["nodes"]) == 3


def test_url_from_environment(gw, url):
    data = json.loads(ok("status", "--json", env={"CHORUS_URL": url}).stdout)
    assert data["cluster_id"] == "c-test"


def test_nodes(gw, url):
    out = ok("nodes", "--url", url).plain
    for needle in ("n1", "n2", "n3", "127.0.0.1:7182", "0.3s ago"):
        assert needle in out
    assert [n["node_id"] for n in json.loads(ok("nodes", "--url", url, "--json").stdout)] == ["n1", "n2", "n3"]


def test_nodes_promote(gw, url):
    assert "learner" in next(line for line in ok("nodes", "--url", url).plain.splitlines() if "│ n3 " in line)
    out = ok("nodes", "promote", "n3", "--url", url).plain
    assert "n3 is now an agency voter (voters n1, n2, n3; learners -)" in out
    assert gw.calls[-1] == ("promote_node", "n3")
    assert json.loads(ok("nodes", "promote", "n3", "--url", url, "--json").stdout)["role"] == "voter"
    r = run("nodes", "promote", "n1", "--url", url)
    assert r.exit_code == 1 and "conflict" in r.plain and "already an agency voter" in r.plain
    r = run("nodes", "promote", "n9", "--url", url)
    assert r.exit_code == 1 and "no such node: n9" in r.plain


def test_shards(gw, url):
    gw.add_topic({"name": "acme/app/web/users", "shards": 1})
    out = ok("shards", "--url", url).plain
    assert f"{TOPIC}#0" in out and f"{TOPIC}#1" in out and "acme/app/web/users#0" in out
    for col in ("shard", "leader", "epoch", "replicas", "in-sync", "state"):
        assert col in out
    row = next(line for line in out.splitlines() if f"{TOPIC}#1" in line)
    assert "n3" in row and "fenced" in row and "n1, n2, n3" in row
    only = json.loads(ok("shards", "--url", url, "--topic", TOPIC, "--json").stdout)
    assert [s["shard"] for s in only] == [f"{TOPIC}#0", f"{TOPIC}#1"]
    assert gw.calls[-1] == ("shards", TOPIC)


# ----- topics ----------------------------------------------------------------


def test_topics_create_list_describe_delete(gw, url):
    name = "acme/app/api/events"
    out = ok("topics", "create", name, "--shards", "3", "--replication-factor", "2",
             "--retention-ms", "60000", "--url", url).plain
    assert f"created topic {name}" in out
    assert gw.calls[-1] == ("create_topic", {"name": name, "shards": 3, "replication_factor": 2,
                                             "retention_ms": 60000})

    out = ok("topics", "list", "--url", url).plain
    assert name in out and TOPIC in out and "60000" in out
    listed = json.loads(ok("topics", "list", "--url", url, "--json").stdout)
    assert [t["name"] for t in listed] == [name, TOPIC]

    out = ok("topics", "describe", name, "--url", url).plain
    assert f"{name}#0" in out and f"{name}#2" in out and "60000" in out
    described = json.loads(ok("topics", "describe", name, "--url", url, "--json").stdout)
    assert described["topic"]["replication_factor"] == 2 and len(described["shards"]) == 3

    out = ok("topics", "delete", name, "--yes", "--url", url).plain
    assert f"deleted topic {name}" in out
    assert name not in gw.topics_


def test_topics_create_defaults_json(gw, url):
    created = json.loads(ok("topics", "create", "acme/app/api/audit", "--url", url, "--json").stdout)
    assert created["name"] == "acme/app/api/audit" and created["shards"] == 1
    assert gw.calls[-1] == ("create_topic", {"name": "acme/app/api/audit"})


def test_topics_delete_asks_first(gw, url):
    r = run("topics", "delete", TOPIC, "--url", url, input="n\n")
    assert r.exit_code == 1 and "not deleted" in r.plain
    assert TOPIC in gw.topics_ and not any(c[0] == "delete_topic" for c in gw.calls)

    r = ok("topics", "delete", TOPIC, "--url", url, input="y\n")
    assert f"Delete topic {TOPIC}" in r.plain and f"deleted topic {TOPIC}" in r.plain
    assert TOPIC not in gw.topics_


def test_empty_topic_list(gw, url):
    gw.topics_.clear()
    assert "no topics" in ok("topics", "list", "--url", url).plain
    assert json.loads(ok("topics", "list", "--url", url, "--json").stdout) == []


# ----- errors -----------------------------------------------------------------


@pytest.mark.parametrize("args, code, needle", [
    (("topics", "describe", "no/such/topic/x"), "not_found", "no such topic: no/such/topic/x"),
    (("topics", "delete", "no/such/topic/x", "--yes"), "not_found", "no such topic"),
    (("topics", "create", TOPIC), "conflict", "already exists"),
    (("topics", "create", "flat"), "bad_request", "tenant/product/component/topic"),
    (("shards", "--topic", "no/such/topic/x", "--json"), "not_found", "no such topic"),
])
def test_api_error_exits_1_with_code_and_message(gw, url, args, code, needle):
    r = run(*args, "--url", url)
    assert r.exit_code == 1, r.plain
    assert code in r.stderr and needle in r.stderr
    assert r.stdout == "" and "Traceback" not in r.plain


def test_unexpected_server_failure_exits_1(gw, url):
    gw.explode = True
    r = run("status", "--url", url)
    assert r.exit_code == 1 and "internal_error" in r.stderr and "secret" not in r.plain


@pytest.mark.parametrize("command", [("status",), ("nodes",), ("shards",), ("topics", "list"),
                                     ("topics", "describe", TOPIC), ("topics", "create", TOPIC),
                                     ("topics", "delete", TOPIC, "--yes")])
def test_unreachable_node_exits_2(command):
    dead = f"http://127.0.0.1:{free_port()}"
    r = run(*command, "--url", dead, "--json")
    assert r.exit_code == 2, r.plain
    assert r.stderr.strip() == f"cannot reach a Chorus node at {dead}: connection refused"
    assert r.stdout == ""


def test_silent_node_times_out_and_exits_2():
    with socket.socket() as s:  # accepts connections (the kernel does) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        r = run("nodes", "--url", dead, "--timeout", "0.3")
    assert r.exit_code == 2, r.plain
    assert r.stderr.strip() == f"cannot reach a Chorus node at {dead}: timed out"


def test_malformed_url_exits_2():
    r = run("status", "--url", "not-a-url")
    assert r.exit_code == 2
    assert r.stderr.strip() == "cannot reach a Chorus node at not-a-url: not an http:// or https:// URL"
    r = run("status", "--url", "http://")
    assert r.exit_code == 2 and r.stderr.startswith("cannot reach a Chorus node at http://: ")


# ----- mqtt ------------------------------------------------------------------


def test_mqtt_status_and_bridges(gw, url):
    assert "sessions" in ok("mqtt", "status", "--url", url).plain
    r = ok("mqtt", "bridges", "in", "sensors", "--filter", "sensors/#", "--topic", TOPIC, "--url", url).plain
    assert "sensors/#" in r and "quorum" in r
    assert gw.calls[-1] == ("put_mqtt_bridge", "sensors",
                            {"direction": "in", "filter": "sensors/#", "topic": TOPIC, "level": "quorum"})
    ok("mqtt", "bridges", "out", "orders", "--topic", TOPIC, "--prefix", "chorus/orders", "--url", url)
    assert gw.calls[-1][2] == {"direction": "out", "topic": TOPIC, "prefix": "chorus/orders"}
    listed = json.loads(ok("mqtt", "bridges", "list", "--url", url, "--json").stdout)
    assert len(listed) == 2
    assert "deleted bridge sensors" in ok("mqtt", "bridges", "delete", "sensors", "--url", url).plain
    r = run("mqtt", "bridges", "delete", "sensors", "--url", url)
    assert r.exit_code != 0 and "not_found" in r.plain


# ----- moves -----------------------------------------------------------------


def test_shards_move_drain_remove_and_rebalance(gw, url):
    out = ok("shards", "move", TOPIC, "1", "--from", "n1", "--to", "n3", "--url", url, "--no-wait").plain
    assert f"move of {TOPIC}#1 n1 -> n3 requested" in out
    assert gw.calls[-1] == ("move_shard", {"topic": TOPIC, "shard": 1, "from": "n1", "to": "n3"})
    r = run("shards", "move", TOPIC, "1", "--from", "n9", "--to", "n3", "--url", url, "--no-wait")
    assert r.exit_code == 1 and "holds no replica" in r.plain
    assert "draining" in ok("nodes", "drain", "n2", "--url", url, "--no-wait").plain
    assert gw.calls[-1] == ("drain_node", "n2", False)
    r = run("nodes", "remove", "n2", "--url", url)
    assert r.exit_code == 1 and "drain it first" in r.plain
    out = ok("cluster", "rebalance", "--dry-run", "--url", url).plain
    assert "Before" in out and "Plan:" in out and "After" in out
    assert "move_shard" not in {c[0] for c in gw.calls[-3:]}  # a dry run moves nothing


def test_following_a_move_rides_out_an_unanswered_poll_and_an_earlier_move(gw, url):
    from runtime.gateway import GatewayError

    shard = f"{TOPIC}#1"
    answers = [GatewayError(503, "unavailable", "no answer for MovesQuery before the deadline"),
               {"moves": [{"shard": shard, "from": "n2", "to": "n1", "phase": "done"}]},  # the shard's earlier move
               {"moves": [{"shard": shard, "from": "n1", "to": "n3", "phase": "learning"}]},
               {"moves": [{"shard": shard, "from": "n1", "to": "n3", "phase": "done"}]}]

    async def moves() -> dict:
        a = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(a, Exception):
            raise a
        return {"drains": [], "replicas": {}, **a}

    gw.moves = moves
    out = ok("shards", "move", TOPIC, "1", "--from", "n1", "--to", "n3", "--url", url, "--wait-timeout", "30").plain
    assert f"{shard}: moved n1 -> n3" in out, out
    assert len(answers) == 1  # it asked until the move it started was done
