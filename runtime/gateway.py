"""The operations the HTTP API (and the admin CLI behind it) can ask of a node.

A :class:`Gateway` lives in a node's I/O thread (``runtime/bridge.py``) and
turns each call into a request to the node's Dispatcher actor, awaiting its
answer; the HTTP layer (``runtime/http_api.py``) only maps URLs and JSON to
these calls.  Every method is a coroutine and either returns plain JSON-able
data or raises :class:`GatewayError` with an HTTP status, a stable
machine-readable ``code`` and a message for people.

Shapes of what is returned (all keys always present):

``status()``::

    {"node_id": "n1", "cluster_id": "c-...", "version": "0.1.0",
     "uptime_s": 12.5,
     "endpoints": {"client": "127.0.0.1:7171", "http": "127.0.0.1:7181",
                   "admin": "127.0.0.1:7191"},
     "tls": false,                       # the client, MQTT and HTTP ports speak TLS only
     "agency": {"role": "leader", "leader": "n1", "term": 3,
                "commit_index": 120, "voters": ["n1", "n2", "n3"], "learners": ["n4"]},
     "nodes": [{"node_id": "n1", "agency": "voter" | "learner" | "",
                "alive": true, "client": "127.0.0.1:7171",
                "http": "127.0.0.1:7181", "last_seen_s": 0.1}, ...],
     "replicas": 6}                      # shard replicas on this node

``metrics(scope)``: the snapshot behind ``/metrics`` (scope ``node``: the
shards this node leads) and the dashboard (scope ``cluster``: every shard);
see actors/dispatcher_metrics.py for its shape.

``directory()``: how nodes find each other's actors (see runtime/node.py)::

    {"cluster_id": "c-...", "nodes": [{"node_id", "client", "http", "admin",
     "raft", "supervisor", "node", "dispatcher"}],   # addresses as host:port
     "convention_leaders": ["127.0.0.1:7191", ...],  # the Thespian convention's
     "convention": ["n2", ...],                       # members heard of through it
     "convention_refused": ["x1"]}                    # ... that belong to another cluster

``promote_node(node_id)``: make an agency learner a voter; returns
``{"node_id", "role": "voter", "voters": [...], "learners": [...]}``.  404
for a node the cluster does not know, 409 for a voter already, a node that
is not a learner, or a learner that is not alive.

``shards(topic=None)``: list of::

    {"shard": "acme/app/web/orders#0", "topic": "acme/app/web/orders",
     "index": 0, "leader": "n2", "epoch": 4, "replicas": ["n1", "n2", "n3"],
     "in_sync": ["n2", "n3"], "state": "ok" | "fenced" | "leaderless"}

``topics()``: list of topic dicts; ``topic(name)`` one of them::

    {"name": "acme/app/web/orders", "shards": 3, "replication_factor": 3,
     "retention_ms": null, "retention_bytes": null}

``create_topic(spec)`` takes such a dict (only ``name`` required; defaults
``shards`` 1, ``replication_factor`` min(3, nodes)) and returns the topic
dict; ``alter_topic(name, changes)`` and ``delete_topic(name)`` likewise.

``lookup(topic)``: list of ``{"index", "shard", "leader", "epoch",
"client": "host:port" or "", "http": "host:port" or ""}``.

``produce(topic, records, level="quorum", shard=None, key=None)``:
``records`` is a list of ``{"value": str, "key": str|None,
"headers": {str: str}}``; returns ``{"topic", "shard": index,
"base_offset", "count", "level"}``.  Without ``shard`` the shard is chosen
by ``key`` (murmur3, as the client does) or round-robin.

``fetch(topic, shard, offset=0, max_bytes=1 MiB)``: ``{"topic", "shard",
"high_watermark", "records": [{"offset", "key", "value", "headers",
"timestamp_ms"}]}`` with keys and values decoded as UTF-8 where they are
valid UTF-8, else base64 with ``"encoding": "base64"`` on that record.

``query(topic, from_ms, to_ms, key=None, limit=1000, after=None)``: one
page of a history query (``actors/query.py``): ``{"topic", "records":
[{"shard", "offset", "key", "value", "headers", "timestamp_ms",
"broker_timestamp_ms"}], "next": token or null}`` in (timestamp, shard,
offset) order; ``next`` continues the query (``after``).

``subscriptions(topic)``: list of ``{"subscription", "mode", "shard",
"committed", "high_watermark", "lag", "consumers": [...]}``.

``namespaces()``: ``{"tenants": {tenant: {product: [component, ...]}}}``,
derived from topic names plus namespaces created explicitly;
``create_namespace(path)`` / ``delete_namespace(path)`` take
``"tenant"``, ``"tenant/product"`` or ``"tenant/product/component"``;
deleting a namespace that still holds topics is a 409.
"""
from __future__ import annotations

from typing import Protocol


class GatewayError(Exception):
    """A request the node cannot carry out.

    ``status`` is the HTTP status to answer with (400 bad input, 404 not
    found, 409 conflict, 503 not ready / no leader, 504 timed out), ``code``
    a stable snake_case name clients may match on."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class Gateway(Protocol):
    async def status(self) -> dict: ...

    async def metrics(self, scope: str = "node") -> dict: ...

    async def directory(self) -> dict: ...

    async def promote_node(self, node_id: str) -> dict: ...

    async def mqtt(self) -> dict: ...

    async def mqtt_bridges(self) -> list[dict]: ...

    async def put_mqtt_bridge(self, name: str, spec: dict) -> dict: ...

    async def delete_mqtt_bridge(self, name: str) -> dict: ...

    async def shards(self, topic: str | None = None) -> list[dict]: ...

    async def move_shard(self, body: dict) -> dict: ...

    async def moves(self) -> dict: ...

    async def drain_node(self, node_id: str, cancel: bool = False) -> dict: ...

    async def remove_node(self, node_id: str) -> dict: ...

    async def topics(self) -> list[dict]: ...

    async def topic(self, name: str) -> dict: ...

    async def create_topic(self, spec: dict) -> dict: ...

    async def alter_topic(self, name: str, changes: dict) -> dict: ...

    async def delete_topic(self, name: str) -> dict: ...

    async def truncate_shards(self, name: str) -> dict: ...

    async def lookup(self, topic: str) -> list[dict]: ...

    async def produce(self, topic: str, records: list[dict], level: str = "quorum",
                      shard: int | None = None) -> dict: ...

    async def fetch(self, topic: str, shard: int, offset: int = 0, max_bytes: int = 1 << 20,
                    group: int | None = None) -> dict: ...

    async def query(self, topic: str, from_ms: int, to_ms: int, key: str | None = None, limit: int = 1000,
                    after: str | None = None) -> dict: ...

    async def subscriptions(self, topic: str) -> list[dict]: ...

    async def namespaces(self) -> dict: ...

    async def create_namespace(self, path: str) -> dict: ...

    async def delete_namespace(self, path: str) -> dict: ...


def bad_request(message: str) -> GatewayError:
    return GatewayError(400, "bad_request", message)


def not_found(message: str) -> GatewayError:
    return GatewayError(404, "not_found", message)


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, "unavailable", message)


def timed_out(message: str) -> GatewayError:
    return GatewayError(504, "timeout", message)


