"""The HTTP REST API (runtime/http_api.py) in front of an in-memory gateway.

Each test starts the real aiohttp application on 127.0.0.1 with aiohttp's
own test server and drives it with ``asyncio.run``; no plugin is needed."""
from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from runtime.gateway import GatewayError, bad_request, not_found
from runtime import http_observe
from runtime.http_api import FETCH_BYTES_MAX, RECORDS_MAX, ROUTES, make_app, openapi_document

TOPIC = "acme/app/web/orders"
NODES = ("n1", "n2", "n3")


class FakeGateway:
    """A one-process stand-in for a node's Gateway, honouring the documented
    shapes and errors."""

    def __init__(self) -> None:
        self.topics_: dict[str, dict] = {}
        self.logs: dict[tuple[str, int], list[dict]] = {}
        self.namespaces_: set[str] = set()
        self.calls: list[tuple] = []
        self.bridges: dict[str, dict] = {}
        self.explode = False  # every call raises an unexpected exception
        self.rr = 0
        self.add_topic({"name": TOPIC, "shards": 2})

    # helpers --------------------------------------------------------------

    def add_topic(self, spec: dict) -> dict:
        topic = {"name": spec["name"], "shards": spec.get("shards") or 1,
                 "replication_factor": spec.get("replication_factor") or 3,
                 "retention_ms": spec.get("retention_ms"), "retention_bytes": spec.get("retention_bytes")}
        self.topics_[topic["name"]] = topic
        for i in range(topic["shards"]):
            self.logs.setdefault((topic["name"], i), [])
        return topic

    def _call(self, *args) -> None:
        self.calls.append(args)
        if self.explode:
            raise RuntimeError("secret internals: /var/lib/chorus/db is corrupt")

    def _topic(self, name: str) -> dict:
        if name not in self.topics_:
            raise not_found(f"no such topic: {name}")
        return self.topics_[name]

    def _shard(self, name: str, index: int) -> dict:
        leader = NODES[(index + 1) % 3]
        return {"shard": f"{name}#{index}", "topic": name, "index": index, "leader": leader, "epoch": 4,
                "replicas": list(NODES), "learners": [], "in_sync": [leader, NODES[index % 3]],
                "state": "ok" if index == 0 else "fenced"}

    # the Gateway ------------------------------------------------------------

    async def mqtt(self) -> dict:
        self._call("mqtt")
        return {"sessions": 2, "connections": 1, "routes": {"n2": 3}, "retained": 1}

    async def mqtt_bridges(self) -> list[dict]:
        self._call("mqtt_bridges")
        return [{"name": "b", **spec} for spec in self.bridges.values()]

    async def put_mqtt_bridge(self, name: str, spec: dict) -> dict:
        self._call("put_mqtt_bridge", name, spec)
        self.bridges[name] = spec
        return {"name": name, **spec}

    async def delete_mqtt_bridge(self, name: str) -> dict:
        self._call("delete_mqtt_bridge", name)
        if self.bridges.pop(name, None) is None:
            raise GatewayError(404, "not_found", f"no bridge {name!r}")
        return {"name": name, "deleted": True}

    async def directory(self) -> dict:
        return {"cluster_id": "c-test", "nodes": [{"node_id": "n1", "client": "127.0.0.1:7171",
                                                   "http": "127.0.0.1:7181", "admin": "127.0.0.1:7191",
                                                   "raft": "127.0.0.1:40001", "supervisor": "127.0.0.1:40002",
                                                   "node": "127.0.0.1:40003", "dispatcher": "127.0.0.1:40004"}]}

    async def status(self) -> dict:
        self._call("status")
        return {"node_id": "n1", "cluster_id": "c-test", "version": "0.1.0", "uptime_s": 12.5,
                "endpoints": {"client": "127.0.0.1:7171", "http": "127.0.0.1:7181", "admin": "127.0.0.1:7191"},
                "agency": {"role": "leader", "leader": "n1", "term": 3, "commit_index": 120,
                           "voters": list(NODES)},
                "nodes": [{"node_id": n, "agency": "learner" if n == "n3" else "voter", "alive": n != "n3", "client": f"127.0.0.1:717{i + 1}",
                           "http": f"127.0.0.1:718{i + 1}", "last_seen_s": 0.1 * (i + 1)}
                          for i, n in enumerate(NODES)],
                "replicas": 6}

    async def promote_node(self, node_id: str) -> dict:
        self._call("promote_node", node_id)
        if node_id not in NODES:
            raise not_found(f"no such node: {node_id}")
        if node_id != "n3":
            raise GatewayError(409, "conflict", f"{node_id} is already an agency voter")
        return {"node_id": node_id, "role": "voter", "voters": list(NODES), "learners": []}

    async def move_shard(self, body: dict) -> dict:
        self._call("move_shard", body)
        if body["from"] not in NODES:
            raise GatewayError(409, "conflict", f"{body['from']} holds no replica of {body['topic']}#{body['shard']}")
        return {**body, "shard": f"{body['topic']}#{body['shard']}", "phase": "requested"}

    async def moves(self) -> dict:
        self._call("moves")
        return {"moves": [], "drains": [], "replicas": {n: 2 for n in NODES}}

    async def drain_node(self, node_id: str, cancel: bool = False) -> dict:
        self._call("drain_node", node_id, cancel)
        return {"node": node_id, "state": "" if cancel else "draining"}

    async def remove_node(self, node_id: str) -> dict:
        self._call("remove_node", node_id)
        raise GatewayError(409, "conflict", f"{node_id} still holds 2 replica(s); drain it first")

    async def shards(self, topic: str | None = None) -> list[dict]:
        self._call("shards", topic)
        names = [self._topic(topic)["name"]] if topic is not None else sorted(self.topics_)
        return [self._shard(n, i) for n in names for i in range(self.topics_[n]["shards"])]

    async def topics(self) -> list[dict]:
        self._call("topics")
        return [self.topics_[n] for n in sorted(self.topics_)]

    async def topic(self, name: str) -> dict:
        self._call("topic", name)
        return self._topic(name)

    async def create_topic(self, spec: dict) -> dict:
        self._call("create_topic", spec)
        if len(spec["name"].split("/")) != 4:
            raise bad_request("a topic name is tenant/product/component/topic")
        if spec["name"] in self.topics_:
            raise GatewayError(409, "conflict", f"topic {spec['name']} already exists")
        return self.add_topic(spec)

    async def alter_topic(self, name: str, changes: dict) -> dict:
        self._call("alter_topic", name, changes)
        topic = self._topic(name)
        if changes.get("shards", topic["shards"]) < topic["shards"]:
            raise GatewayError(409, "conflict", "shards can only grow")
        topic.update(changes)
        return topic

    async def delete_topic(self, name: str) -> dict:
        self._call("delete_topic", name)
        return self.topics_.pop(self._topic(name)["name"])

    async def lookup(self, topic: str) -> list[dict]:
        self._call("lookup", topic)
        return [{"index": s["index"], "shard": s["shard"], "leader": s["leader"], "epoch": s["epoch"],
                 "client": "127.0.0.1:7171", "http": "127.0.0.1:7181"}
                for s in await self.shards(topic)]

    async def produce(self, topic: str, records: list[dict], level: str = "quorum",
                      shard: int | None = None) -> dict:
        self._call("produce", topic, records, level, shard)
        t = self._topic(topic)
        if shard is None:
            shard, self.rr = self.rr % t["shards"], self.rr + 1
        elif shard >= t["shards"]:
            raise not_found(f"{topic} has no shard {shard}")
        log = self.logs[(topic, shard)]
        base = len(log)
        for i, r in enumerate(records):
            log.append({"offset": base + i, "key": r["key"], "value": r["value"], "headers": r["headers"],
                        "timestamp_ms": 1_700_000_000_000 + base + i})
        return {"topic": topic, "shard": shard, "base_offset": base, "count": len(records), "level": level}

    async def fetch(self, topic: str, shard: int, offset: int = 0, max_bytes: int = 1 << 20, **group) -> dict:
        self._call("fetch", topic, shard, offset, max_bytes, *group.values())
        self._topic(topic)
        if (topic, shard) not in self.logs:
            raise not_found(f"{topic} has no shard {shard}")
        log = self.logs[(topic, shard)]
        return {"topic": topic, "shard": shard, "high_watermark": len(log), "records": log[offset:]}

    async def query(self, topic: str, from_ms: int, to_ms: int, key: str | None = None, limit: int = 1000,
                    after: str | None = None) -> dict:
        self._call("query", topic, from_ms, to_ms, key, limit, after)
        return {"topic": topic, "records": [], "next": None}

    async def subscriptions(self, topic: str) -> list[dict]:
        self._call("subscriptions", topic)
        self._topic(topic)
        return [{"subscription": "billing", "mode": "shared", "shard": 0, "committed": 3,
                 "high_watermark": 5, "lag": 2, "consumers": ["c-1"]}]

    async def namespaces(self) -> dict:
        self._call("namespaces")
        tenants: dict[str, dict[str, list[str]]] = {}
        paths = set(self.namespaces_) | {n.rsplit("/", 1)[0] for n in self.topics_}
        for p in sorted(paths):
            parts = p.split("/")
            products = tenants.setdefault(parts[0], {})
            if len(parts) > 1:
                comps = products.setdefault(parts[1], [])
                if len(parts) > 2 and parts[2] not in comps:
                    comps.append(parts[2])
        return {"tenants": tenants}

    async def create_namespace(self, path: str) -> dict:
        self._call("create_namespace", path)
        if path in self.namespaces_:
            raise GatewayError(409, "conflict", f"namespace {path} already exists")
        self.namespaces_.add(path)
        return {"namespace": path}

    async def delete_namespace(self, path: str) -> dict:
        self._call("delete_namespace", path)
        if any(n.startswith(path + "/") for n in self.topics_):
            raise GatewayError(409, "conflict", f"namespace {path} still holds topics")
        if path not in self.namespaces_:
            raise not_found(f"no such namespace: {path}")
        self.namespaces_.discard(path)
        return {"namespace": path}


# --------------------------------------------------------------------------


def serve(scenario, gateway: FakeGateway | None = None, **app_kw):
    """Run ``await scenario(client, gateway)`` against a fresh app."""
    gw = gateway or FakeGateway()

    async def main():
        async with TestClient(TestServer(make_app(gw, **app_kw), host="127.0.0.1")) as client:
            return await scenario(client, gw)

    return asyncio.run(main())


async def call(client, method: str, path: str, *, status: int, **kw):
    resp = await client.request(method, path, **kw)
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", (resp.content_type, text)
    return json.loads(text)


async def error(client, method: str, path: str, *, status: int, code: str, **kw) -> str:
    body = await call(client, method, path, status=status, **kw)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


# ----- happy paths ---------------------------------------------------------


def test_status_and_nodes():
    async def s(c, gw):
        resp = await c.get("/api/v1/status")
        assert resp.headers["Server"].startswith("chorus/")
        assert resp.headers["Chorus-Node"] == "n1"
        status = await resp.json()
        assert status == await gw.status()
        nodes = await call(c, "GET", "/api/v1/nodes", status=200)
        assert [n["node_id"] for n in nodes] == list(NODES)
        assert nodes[2]["alive"] is False
    serve(s, node_id="n1")


def test_mqtt_status():
    async def s(c, gw):
        assert await call(c, "GET", "/api/v1/mqtt", status=200) == await gw.mqtt()
        assert gw.calls[-1] == ("mqtt",)
    serve(s)


def test_mqtt_bridges_crud():
    async def s(c, gw):
        spec = {"direction": "in", "filter": "sensors/#", "topic": "acme/iot/s/readings", "level": "quorum"}
        assert await call(c, "PUT", "/api/v1/mqtt/bridges/b", json=spec, status=200) == {"name": "b", **spec}
        assert gw.calls[-1] == ("put_mqtt_bridge", "b", spec)
        assert await call(c, "GET", "/api/v1/mqtt/bridges", status=200) == [{"name": "b", **spec}]
        assert "unknown" in await error(c, "PUT", "/api/v1/mqtt/bridges/b", json={"colour": "red"}, status=400,
                                        code="bad_request")
        await call(c, "DELETE", "/api/v1/mqtt/bridges/b", status=200)
        await error(c, "DELETE", "/api/v1/mqtt/bridges/b", status=404, code="not_found")
    serve(s)


def test_promote_node():
    async def s(c, gw):
        done = await call(c, "POST", "/api/v1/nodes/n3/promote", status=200)
        assert done == {"node_id": "n3", "role": "voter", "voters": list(NODES), "learners": []}
        assert gw.calls[-1] == ("promote_node", "n3")
        assert "already" in await error(c, "POST", "/api/v1/nodes/n1/promote", status=409, code="conflict")
        await error(c, "POST", "/api/v1/nodes/n9/promote", status=404, code="not_found")
        await error(c, "GET", "/api/v1/nodes/n3/promote", status=405, code="method_not_allowed")
    serve(s)


def test_shards_all_and_by_topic():
    async def s(c, gw):
        gw.add_topic({"name": "acme/app/web/users", "shards": 1})
        every = await call(c, "GET", "/api/v1/shards", status=200)
        assert sorted(x["shard"] for x in every) == [f"{TOPIC}#0", f"{TOPIC}#1", "acme/app/web/users#0"]
        some = await call(c, "GET", "/api/v1/shards", params={"topic": TOPIC}, status=200)
        assert [x["shard"] for x in some] == [f"{TOPIC}#0", f"{TOPIC}#1"]
        assert set(some[0]) == {"shard", "topic", "index", "leader", "epoch", "replicas", "learners", "in_sync",
                                "state"}
        await error(c, "GET", "/api/v1/shards", params={"topic": "no/such/topic/x"}, status=404,
                    code="not_found")
    serve(s)


def test_topic_lifecycle():
    async def s(c, gw):
        name = "acme/app/api/events"
        resp = await c.post("/api/v1/topics", json={"name": name, "shards": 3, "retention_ms": 60000})
        assert resp.status == 201
        assert resp.headers["Location"] == f"/api/v1/topics/{name}"
        created = await resp.json()
        assert created == {"name": name, "shards": 3, "replication_factor": 3, "retention_ms": 60000,
                           "retention_bytes": None}
        listed = await call(c, "GET", "/api/v1/topics", status=200)
        assert [t["name"] for t in listed] == [name, TOPIC]
        assert await call(c, "GET", f"/api/v1/topics/{name}", status=200) == created
        altered = await call(c, "PATCH", f"/api/v1/topics/{name}", json={"shards": 4, "retention_ms": None},
                             status=200)
        assert altered["shards"] == 4 and altered["retention_ms"] is None
        assert gw.calls[-1] == ("alter_topic", name, {"shards": 4, "retention_ms": None})
        deleted = await call(c, "DELETE", f"/api/v1/topics/{name}", status=200)
        assert deleted["name"] == name
        await error(c, "GET", f"/api/v1/topics/{name}", status=404, code="not_found")
        await error(c, "DELETE", f"/api/v1/topics/{name}", status=404, code="not_found")
    serve(s)


def test_gateway_errors_keep_their_status_and_code():
    async def s(c, gw):
        msg = await error(c, "POST", "/api/v1/topics", json={"name": TOPIC}, status=409, code="conflict")
        assert "already exists" in msg
        await error(c, "POST", "/api/v1/topics", json={"name": "flat"}, status=400, code="bad_request")
        await error(c, "PATCH", f"/api/v1/topics/{TOPIC}", json={"shards": 1}, status=409, code="conflict")
        await error(c, "PATCH", "/api/v1/topics/x/y/z/w", json={"shards": 3}, status=404, code="not_found")

        async def unavailable(*a, **k):
            raise GatewayError(503, "unavailable", "no agency leader")
        gw.topics = unavailable
        assert await error(c, "GET", "/api/v1/topics", status=503, code="unavailable") == "no agency leader"
    serve(s)


def test_lookup_and_subscriptions():
    async def s(c, gw):
        entries = await call(c, "GET", f"/api/v1/lookup/{TOPIC}", status=200)
        assert [e["index"] for e in entries] == [0, 1]
        assert set(entries[0]) == {"index", "shard", "leader", "epoch", "client", "http"}
        subs = await call(c, "GET", f"/api/v1/subscriptions/{TOPIC}", status=200)
        assert subs[0]["subscription"] == "billing" and subs[0]["lag"] == 2
        await error(c, "GET", "/api/v1/lookup/no/such/topic/x", status=404, code="not_found")
        await error(c, "GET", "/api/v1/subscriptions/no/such/topic/x", status=404, code="not_found")
    serve(s)


def test_produce_then_fetch():
    async def s(c, gw):
        res = await call(c, "POST", f"/api/v1/produce/{TOPIC}", status=200, json={
            "records": [{"value": "a"}, {"value": "b", "key": "k", "headers": {"h": "v"}}],
            "level": "all", "shard": 1})
        assert res == {"topic": TOPIC, "shard": 1, "base_offset": 0, "count": 2, "level": "all"}
        # records reach the gateway in their full documented shape
        assert gw.calls[-1] == ("produce", TOPIC, [{"value": "a", "key": None, "headers": {}},
                                                   {"value": "b", "key": "k", "headers": {"h": "v"}}], "all", 1)
        res = await call(c, "POST", f"/api/v1/produce/{TOPIC}", status=200,
                         json={"records": [{"value": "c", "key": None, "headers": {}}], "shard": 1})
        assert res["base_offset"] == 2 and res["level"] == "quorum"
        fetched = await call(c, "GET", f"/api/v1/fetch/{TOPIC}", params={"shard": "1", "offset": "1"},
                             status=200)
        assert fetched["high_watermark"] == 3
        assert [r["value"] for r in fetched["records"]] == ["b", "c"]
        assert gw.calls[-1] == ("fetch", TOPIC, 1, 1, 1 << 20)
        await call(c, "GET", f"/api/v1/fetch/{TOPIC}", params={"shard": "0", "max_bytes": "100"}, status=200)
        assert gw.calls[-1] == ("fetch", TOPIC, 0, 0, 100)
        # a topic with shard groups: an older group's shard
        await call(c, "GET", f"/api/v1/fetch/{TOPIC}", params={"shard": "0", "group": "3"}, status=200)
        assert gw.calls[-1] == ("fetch", TOPIC, 0, 0, 1 << 20, 3)
        await error(c, "GET", f"/api/v1/fetch/{TOPIC}", params={"shard": "0", "group": "x"}, status=400,
                    code="bad_request")
        await error(c, "GET", f"/api/v1/fetch/{TOPIC}", params={"shard": "7"}, status=404, code="not_found")
        # without shard the gateway picks one
        res = await call(c, "POST", f"/api/v1/produce/{TOPIC}", status=200, json={"records": [{"value": "d"}]})
        assert gw.calls[-1][4] is None and res["shard"] in (0, 1)
    serve(s)


def test_tenants():
    async def s(c, gw):
        assert await call(c, "GET", "/api/v1/tenants", status=200) == {"tenants": {"acme": {"app": ["web"]}}}
        assert await call(c, "PUT", "/api/v1/tenants/globex/shop", status=200) == {"namespace": "globex/shop"}
        assert gw.calls[-1] == ("create_namespace", "globex/shop")
        tenants = (await call(c, "GET", "/api/v1/tenants", status=200))["tenants"]
        assert tenants["globex"] == {"shop": []}
        await error(c, "PUT", "/api/v1/tenants/globex/shop", status=409, code="conflict")
        await error(c, "DELETE", "/api/v1/tenants/acme", status=409, code="conflict")
        assert await call(c, "DELETE", "/api/v1/tenants/globex/shop", status=200) == {"namespace": "globex/shop"}
        await error(c, "PUT", "/api/v1/tenants/a/b/c/d", status=400, code="bad_request")
        await error(c, "PUT", "/api/v1/tenants/a//c", status=400, code="bad_request")
    serve(s)


# ----- bad input -------------------------------------------------------------


@pytest.mark.parametrize("body, needle", [
    ("{not json", "not valid JSON"),
    ("", "JSON object"),
    ("[1, 2]", "JSON object"),
    ('"a string"', "JSON object"),
])
def test_bodies_that_are_not_json_objects(body, needle):
    async def s(c, gw):
        for method, path in (("POST", "/api/v1/topics"), ("PATCH", f"/api/v1/topics/{TOPIC}"),
                             ("POST", f"/api/v1/produce/{TOPIC}")):
            msg = await error(c, method, path, data=body, headers={"Content-Type": "application/json"},
                              status=400, code="bad_request")
            assert needle in msg
        assert [x for x in gw.calls if x[0] != "status"] == []
    serve(s)


@pytest.mark.parametrize("spec, needle", [
    ({}, "'name' is required"),
    ({"name": ""}, "'name' is required"),
    ({"name": 5}, "'name' is required"),
    ({"name": TOPIC + "2", "shards": "3"}, "'shards'"),
    ({"name": TOPIC + "2", "shards": 0}, "'shards'"),
    ({"name": TOPIC + "2", "shards": True}, "'shards'"),
    ({"name": TOPIC + "2", "replication_factor": 1.5}, "'replication_factor'"),
    ({"name": TOPIC + "2", "retention_ms": -1}, "'retention_ms'"),
    ({"name": TOPIC + "2", "partitions": 3}, "unknown field(s)"),
])
def test_create_topic_validation(spec, needle):
    async def s(c, gw):
        assert needle in await error(c, "POST", "/api/v1/topics", json=spec, status=400, code="bad_request")
        assert not any(x[0] == "create_topic" for x in gw.calls)
    serve(s)


@pytest.mark.parametrize("changes, needle", [
    ({}, "nothing to change"),
    ({"name": "other"}, "unknown field(s)"),
    ({"retention_bytes": "big"}, "'retention_bytes'"),
])
def test_alter_topic_validation(changes, needle):
    async def s(c, gw):
        assert needle in await error(c, "PATCH", f"/api/v1/topics/{TOPIC}", json=changes, status=400,
                                     code="bad_request")
    serve(s)


@pytest.mark.parametrize("body, needle", [
    ({}, "'records' is required"),
    ({"records": []}, "non-empty list"),
    ({"records": {"value": "a"}}, "non-empty list"),
    ({"records": ["a"]}, "records[0] must be an object"),
    ({"records": [{"key": "k"}]}, "records[0].value is required"),
    ({"records": [{"value": "a"}, {"value": 3}]}, "records[1].value must be a string"),
    ({"records": [{"value": "a", "key": 3}]}, "records[0].key"),
    ({"records": [{"value": "a", "headers": {"h": 1}}]}, "records[0].headers"),
    ({"records": [{"value": "a", "headers": ["h"]}]}, "records[0].headers"),
    ({"records": [{"value": "a", "partition": 1}]}, "unknown field(s) in records[0]"),
    ({"records": [{"value": "a"}], "level": "most"}, "'level' must be one of any, one, quorum, all"),
    ({"records": [{"value": "a"}], "level": 2}, "'level' must be one of"),
    ({"records": [{"value": "a"}], "shard": -1}, "'shard'"),
    ({"records": [{"value": "a"}], "shard": "0"}, "'shard'"),
    ({"records": [{"value": "a"}] * (RECORDS_MAX + 1)}, f"at most {RECORDS_MAX} records"),
])
def test_produce_validation(body, needle):
    async def s(c, gw):
        msg = await error(c, "POST", f"/api/v1/produce/{TOPIC}", json=body, status=400, code="bad_request")
        assert needle in msg
        assert not any(x[0] == "produce" for x in gw.calls)
    serve(s)


def test_produce_accepts_exactly_the_maximum_records():
    async def s(c, gw):
        res = await call(c, "POST", f"/api/v1/produce/{TOPIC}", status=200,
                         json={"records": [{"value": "x"}] * RECORDS_MAX, "level": "any", "shard": 0})
        assert res["count"] == RECORDS_MAX
    serve(s)


@pytest.mark.parametrize("query, needle", [
    ({}, "'shard' is required"),
    ({"shard": "one"}, "'shard' must be an integer"),
    ({"shard": "-1"}, "'shard' must be >= 0"),
    ({"shard": "0", "offset": "x"}, "'offset' must be an integer"),
    ({"shard": "0", "max_bytes": "0"}, "'max_bytes' must be between"),
    ({"shard": "0", "max_bytes": str(FETCH_BYTES_MAX + 1)}, "'max_bytes' must be between"),
])
def test_fetch_validation(query, needle):
    async def s(c, gw):
        msg = await error(c, "GET", f"/api/v1/fetch/{TOPIC}", params=query, status=400, code="bad_request")
        assert needle in msg
    serve(s)


def test_oversized_body_is_413():
    async def s(c, gw):
        big = json.dumps({"records": [{"value": "x" * 2000}]})
        msg = await error(c, "POST", f"/api/v1/produce/{TOPIC}", data=big, status=413, code="payload_too_large")
        assert "1024" in msg
        assert not any(x[0] == "produce" for x in gw.calls)
        # just under the limit is fine
        ok = json.dumps({"records": [{"value": "x" * 900}]})
        await call(c, "POST", f"/api/v1/produce/{TOPIC}", data=ok, status=200)
    serve(s, body_bytes_max=1024)


def test_unknown_route_and_wrong_method_are_json():
    async def s(c, gw):
        assert "/api/v1/nope" in await error(c, "GET", "/api/v1/nope", status=404, code="not_found")
        await error(c, "GET", "/nope", status=404, code="not_found")  # "/" is the dashboard
        await error(c, "GET", "/api/v1/topics/", status=404, code="not_found")
        resp = await c.request("PUT", "/api/v1/topics")
        assert resp.status == 405 and resp.content_type == "application/json"
        assert set(resp.headers["Allow"].split(",")) == {"GET", "POST"}
        body = await resp.json()
        assert body["error"]["code"] == "method_not_allowed"
        await error(c, "POST", f"/api/v1/fetch/{TOPIC}", status=405, code="method_not_allowed")
        await error(c, "DELETE", "/api/v1/status", status=405, code="method_not_allowed")
    serve(s)


def test_unexpected_exception_is_a_json_500_without_internals(caplog):
    async def s(c, gw):
        gw.explode = True
        for method, path, kw in (("GET", "/api/v1/status", {}), ("GET", "/api/v1/topics", {}),
                                 ("POST", f"/api/v1/produce/{TOPIC}", {"json": {"records": [{"value": "a"}]}})):
            msg = await error(c, method, path, status=500, code="internal_error", **kw)
            assert "secret" not in msg and "Traceback" not in msg and "RuntimeError" not in msg
    with caplog.at_level("ERROR", logger="chorus.http"):
        serve(s)
    assert "secret internals" in caplog.text  # but the node's log has it


def test_unserialisable_gateway_answer_is_500():
    async def s(c, gw):
        async def topics():
            return [object()]
        gw.topics = topics
        await error(c, "GET", "/api/v1/topics", status=500, code="internal_error")
    serve(s)


# ----- the OpenAPI document ----------------------------------------------------


def _served_routes(app) -> set[tuple[str, str]]:
    return {(r.method.lower(), r.resource.canonical) for r in app.router.routes()}


def test_openapi_describes_exactly_the_served_routes():
    async def s(c, gw):
        doc = await call(c, "GET", "/api/v1/openapi.json", status=200)
        assert doc["openapi"] == "3.1.0"
        assert doc == json.loads(json.dumps(openapi_document()))
        documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
        served = _served_routes(c.server.app)
        assert documented == served
        assert len(served) == len(ROUTES) + len(http_observe.PATHS)
        return doc
    doc = serve(s)

    schemas = doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, op in ops.items():
            assert op["responses"]["500"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}
            assert {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"} == names
            assert all(p["required"] for p in op.get("parameters", ()) if p["in"] == "path")
            action = path.endswith(("/promote", "/tokens", "/drain", "/truncate-shards"))  # an action takes no body
            # PUT creates a namespace (no body: its path says it all) or a bridge (its spec)
            put_body = method == "put" and "/bridges/" in path
            assert ("requestBody" in op) == (method in ("post", "patch") and not action or put_body)
    assert schemas["Error"]["properties"]["error"]["required"] == ["code", "message"]
    assert schemas["ProduceRequest"]["properties"]["level"]["enum"] == ["any", "one", "quorum", "all"]
    # every $ref resolves
    refs = re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc))
    assert refs and set(refs) <= set(schemas)
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))
    fetch = doc["paths"]["/api/v1/fetch/{name}"]["get"]
    assert {p["name"]: p["required"] for p in fetch["parameters"] if p["in"] == "query"} == {
        "shard": True, "offset": False, "max_bytes": False, "group": False}


@pytest.mark.parametrize("query, needle", [
    ({"to": "5"}, "required"),
    ({"from": "9", "to": "5"}, "after 'to'"),
    ({"from": "x", "to": "5"}, "integer"),
    ({"from": "1.5", "to": "5"}, "integer"),
    ({"from": "-1", "to": "5"}, "must be in"),
    ({"from": "1", "to": "5", "limit": "0"}, "'limit'"),
    ({"from": "1", "to": "5", "limit": "10001"}, "'limit'"),
])
def test_query_validation(query, needle):
    async def s(c, gw):
        msg = await error(c, "GET", f"/api/v1/query/{TOPIC}", params=query, status=400, code="bad_request")
        assert needle in msg
        assert not any(x[0] == "query" for x in gw.calls)
    serve(s)


def test_query_passes_the_range_key_limit_and_token_on():
    async def s(c, gw):
        body = await call(c, "GET", f"/api/v1/query/{TOPIC}", status=200,
                          params={"from": "10", "to": "20", "key": "k", "limit": "3", "after": "tok"})
        assert body == {"topic": TOPIC, "records": [], "next": None}
        assert gw.calls[-1] == ("query", TOPIC, 10, 20, "k", 3, "tok")
    serve(s)


def test_moves_drain_and_remove_routes():
    async def s(c, gw):
        body = {"topic": TOPIC, "shard": 1, "from": "n1", "to": "n3"}
        mv = await call(c, "POST", "/api/v1/shards/move", json=body, status=202)
        assert mv["phase"] == "requested" and gw.calls[-1] == ("move_shard", body)
        assert "holds no replica" in await error(c, "POST", "/api/v1/shards/move",
                                                 json={**body, "from": "n9"}, status=409, code="conflict")
        for bad, needle in (({**body, "shard": -1}, "'shard'"), ({**body, "to": ""}, "'to'"),
                            ({k: v for k, v in body.items() if k != "from"}, "'from'"),
                            ({**body, "extra": 1}, "extra")):
            assert needle in await error(c, "POST", "/api/v1/shards/move", json=bad, status=400,
                                         code="bad_request")
        assert (await call(c, "GET", "/api/v1/moves", status=200))["replicas"]["n1"] == 2
        assert (await call(c, "POST", "/api/v1/nodes/n2/drain", status=202))["state"] == "draining"
        assert gw.calls[-1] == ("drain_node", "n2", False)
        await call(c, "POST", "/api/v1/nodes/n2/drain", params={"cancel": "true"}, status=202)
        assert gw.calls[-1] == ("drain_node", "n2", True)
        assert "drain it first" in await error(c, "DELETE", "/api/v1/nodes/n2", status=409, code="conflict")
    serve(s)
