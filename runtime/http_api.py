"""The HTTP REST API of a node: URLs and JSON in front of a :class:`Gateway`.

Everything is served under ``/api/v1``.  The HTTP layer holds no state and
makes no decisions about the cluster: each handler validates its input,
calls one :class:`~runtime.gateway.Gateway` coroutine and answers with its
result as JSON.

Routes are declared once, in :data:`ROUTES`; :func:`make_app` registers
exactly those and ``GET /api/v1/openapi.json`` describes exactly those, so
the document cannot drift from what is served.

Every answer is ``application/json``.  Errors always have the shape
``{"error": {"code": "...", "message": "..."}}``:

* a :class:`GatewayError` answers with its own status and code;
* malformed JSON, wrong types, missing or unknown fields: 400 ``bad_request``;
* a body larger than ``body_bytes_max``: 413 ``payload_too_large``;
* an unknown URL: 404 ``not_found``; a known URL with the wrong method:
  405 ``method_not_allowed`` (with an ``Allow`` header);
* anything else: 500 ``internal_error``, logged with its traceback on the
  node; the client gets no internals.

Topic names contain slashes (``tenant/product/component/topic``), so a topic
is always the *last* part of a URL and each kind of sub-resource has its own
prefix (``/api/v1/lookup/{name}``, ``/api/v1/produce/{name}``, ...).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from actors.query import LIMIT_DEFAULT, LIMIT_MAX, TOKEN_CHARS_MAX, QueryError, check_params
from runtime import http_auth, http_observe
from runtime.gateway import Gateway, GatewayError, bad_request

log = logging.getLogger("chorus.http")

API_PREFIX = "/api/v1"
LEVELS = ("any", "one", "quorum", "all")
RECORDS_MAX = 1000
FETCH_BYTES_DEFAULT = 1 << 20
FETCH_BYTES_MAX = 16 << 20

GATEWAY_KEY: web.AppKey[Any] = web.AppKey("chorus_gateway", object)
NODE_ID_KEY: web.AppKey[str] = web.AppKey("chorus_node_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chorus-broker")
    except PackageNotFoundError:
        return "0.0.0"


VERSION = _version()


# --------------------------------------------------------------------------
# Input validation helpers.  Each raises a 400 GatewayError naming the field.


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]


async def _json_object(request: web.Request) -> dict:
    raw = await request.read()  # raises 413 past client_max_size
    if not raw.strip():
        raise bad_request("the request body must be a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(body: dict, allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"unknown field(s) in {what}: {', '.join(unknown)}; "
                          f"expected some of {', '.join(allowed)}")


def _opt_int(body: dict, key: str, minimum: int) -> None:
    v = body.get(key)
    if v is not None and (not _is_int(v) or v < minimum):
        raise bad_request(f"{key!r} must be an integer >= {minimum} or null")


def _query_int(request: web.Request, name: str, *, default: int | None, minimum: int,
               maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise bad_request(f"the query parameter {name!r} is required")
        return default
    try:
        v = int(raw, 10)
    except ValueError:
        raise bad_request(f"the query parameter {name!r} must be an integer, not {raw!r}") from None
    if v < minimum or (maximum is not None and v > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise bad_request(f"the query parameter {name!r} must be {bound}")
    return v


TOPIC_SETTINGS = ("shards", "replication_factor", "retention_ms", "retention_bytes", "shard_group_ms")


def _validate_settings(body: dict) -> None:
    for key in ("shards", "replication_factor"):
        _opt_int(body, key, 1)
    for key in ("retention_ms", "retention_bytes", "shard_group_ms"):
        _opt_int(body, key, 0)


def _validate_records(records: Any) -> list[dict]:
    if not isinstance(records, list) or not records:
        raise bad_request("'records' must be a non-empty list")
    if len(records) > RECORDS_MAX:
        raise bad_request(f"at most {RECORDS_MAX} records per request, got {len(records)}")
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise bad_request(f"records[{i}] must be an object")
        _check_fields(rec, ("value", "key", "headers"), f"records[{i}]")
        if "value" not in rec:
            raise bad_request(f"records[{i}].value is required")
        if not isinstance(rec["value"], str):
            raise bad_request(f"records[{i}].value must be a string")
        key = rec.get("key")
        if key is not None and not isinstance(key, str):
            raise bad_request(f"records[{i}].key must be a string or null")
        headers = rec.get("headers")
        if headers is None:
            headers = {}
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise bad_request(f"records[{i}].headers must be an object of strings")
        out.append({"value": rec["value"], "key": key, "headers": dict(headers)})
    return out


# --------------------------------------------------------------------------
# Handlers: one gateway call each.


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).status())


async def get_directory(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).directory())


async def get_nodes(request: web.Request) -> web.Response:
    return web.json_response((await _gateway(request).status())["nodes"])


async def promote_node(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).promote_node(request.match_info["node_id"]))


async def move_shard(request: web.Request) -> web.Response:
    body = await _json_object(request)
    _check_fields(body, ("topic", "shard", "from", "to"), "the move")
    for k in ("topic", "from", "to"):
        if not isinstance(body.get(k), str) or not body[k]:
            raise bad_request(f"'{k}' is required and must be a non-empty string")
    if not _is_int(body.get("shard")) or body["shard"] < 0:
        raise bad_request("'shard' is required and must be an integer >= 0")
    return web.json_response(await _gateway(request).move_shard(body), status=202)


async def list_moves(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).moves())


async def drain_node(request: web.Request) -> web.Response:
    cancel = request.query.get("cancel", "") in ("1", "true", "yes")
    return web.json_response(await _gateway(request).drain_node(request.match_info["node_id"], cancel), status=202)


async def remove_node(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).remove_node(request.match_info["node_id"]))


async def get_shards(request: web.Request) -> web.Response:
    topic = request.query.get("topic") or None
    return web.json_response(await _gateway(request).shards(topic))


async def list_topics(request: web.Request) -> web.Response:
    return web.json_response(http_auth.visible_topics(request, await _gateway(request).topics()))


async def create_topic(request: web.Request) -> web.Response:
    spec = await _json_object(request)
    _check_fields(spec, ("name",) + TOPIC_SETTINGS, "the topic spec")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("'name' is required and must be a non-empty string")
    _validate_settings(spec)
    topic = await _gateway(request).create_topic(spec)
    return web.json_response(topic, status=201,
                             headers={"Location": f"{API_PREFIX}/topics/{topic.get('name', name)}"})


async def get_topic(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).topic(request.match_info["name"]))


async def alter_topic(request: web.Request) -> web.Response:
    changes = await _json_object(request)
    _check_fields(changes, TOPIC_SETTINGS, "the topic changes")
    if not changes:
        raise bad_request(f"nothing to change; give some of {', '.join(TOPIC_SETTINGS)}")
    _validate_settings(changes)
    return web.json_response(await _gateway(request).alter_topic(request.match_info["name"], changes))


async def delete_topic(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).delete_topic(request.match_info["name"]))


async def truncate_shards(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).truncate_shards(request.match_info["name"]))


async def lookup(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).lookup(request.match_info["name"]))


async def produce(request: web.Request) -> web.Response:
    body = await _json_object(request)
    _check_fields(body, ("records", "level", "shard"), "the produce request")
    if "records" not in body:
        raise bad_request("'records' is required")
    records = _validate_records(body["records"])
    level = body.get("level", "quorum")
    if level is None:
        level = "quorum"
    if level not in LEVELS:
        raise bad_request(f"'level' must be one of {', '.join(LEVELS)}")
    shard = body.get("shard")
    if shard is not None and (not _is_int(shard) or shard < 0):
        raise bad_request("'shard' must be an integer >= 0 or null")
    result = await _gateway(request).produce(request.match_info["name"], records, level=level, shard=shard)
    return web.json_response(result)


async def fetch(request: web.Request) -> web.Response:
    shard = _query_int(request, "shard", default=None, minimum=0)
    offset = _query_int(request, "offset", default=0, minimum=0)
    max_bytes = _query_int(request, "max_bytes", default=FETCH_BYTES_DEFAULT, minimum=1,
                           maximum=FETCH_BYTES_MAX)
    # a topic with shard groups: an older group's shard (default: the current group's)
    kw = {"group": _query_int(request, "group", default=0, minimum=0)} if request.query.get("group") else {}
    return web.json_response(await _gateway(request).fetch(
        request.match_info["name"], shard, offset=offset, max_bytes=max_bytes, **kw))


async def query(request: web.Request) -> web.Response:
    q = request.query
    try:
        p = check_params(q.get("from"), q.get("to"), q.get("key") or None, q.get("limit") or None)
    except QueryError as exc:
        raise bad_request(str(exc)) from None
    after = q.get("after") or None
    if after is not None and len(after) > TOKEN_CHARS_MAX:
        raise bad_request("'after' is not a continuation token")
    return web.json_response(await _gateway(request).query(
        request.match_info["name"], p.from_ms, p.to_ms, key=q.get("key") or None, limit=p.limit or LIMIT_DEFAULT,
        after=after))


async def subscriptions(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).subscriptions(request.match_info["name"]))


async def list_tenants(request: web.Request) -> web.Response:
    return web.json_response(http_auth.visible_tenants(request, await _gateway(request).namespaces()))


def _namespace_path(request: web.Request) -> str:
    path = request.match_info["path"]
    parts = path.split("/")
    if len(parts) > 3 or not all(parts):
        raise bad_request("a namespace is 'tenant', 'tenant/product' or 'tenant/product/component'")
    return path


async def create_tenant(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).create_namespace(_namespace_path(request)))


async def delete_tenant(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).delete_namespace(_namespace_path(request)))


async def mqtt_status(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).mqtt())


BRIDGE_FIELDS = ("direction", "filter", "topic", "level", "prefix")


async def list_mqtt_bridges(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).mqtt_bridges())


async def put_mqtt_bridge(request: web.Request) -> web.Response:
    spec = await _json_object(request)
    _check_fields(spec, BRIDGE_FIELDS, "the bridge")
    return web.json_response(await _gateway(request).put_mqtt_bridge(request.match_info["name"], spec))


async def delete_mqtt_bridge(request: web.Request) -> web.Response:
    return web.json_response(await _gateway(request).delete_mqtt_bridge(request.match_info["name"]))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# --------------------------------------------------------------------------
# The route table: what is served and what is documented.


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(name: str) -> dict:
    return {"type": "array", "items": _ref(name)}


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict
    description: str
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str                      # aiohttp pattern, relative to API_PREFIX
    handler: Handler
    summary: str
    tag: str
    response: dict                 # JSON schema of the success body
    status: int = 200
    body: dict | None = None       # JSON schema of the request body, if any
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()   # statuses beyond the 400/500 every route may answer
    path_doc: dict[str, str] = field(default_factory=dict)

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path

    @property
    def openapi_path(self) -> str:
        return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", self.full_path)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)(?::[^}]*)?\}", self.path)


_USER_PARAM = {"name": "The user's name: 1-64 of A-Z a-z 0-9 . _ @ -"}
_ROLE_DOC = "admin, or produce|consume|manage:TENANT, TENANT a tenant name or *"
_TOPIC_PARAM = {"name": "The topic's full name, tenant/product/component/topic; its slashes are not escaped."}
_NS_PARAM = {"path": "'tenant', 'tenant/product' or 'tenant/product/component'."}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/status", get_status, "This node's view of the cluster", "cluster", _ref("Status")),
    Route("GET", "/cluster/directory", get_directory, "Where every node's actors are (for joining nodes)",
          "cluster", _ref("Directory")),
    Route("GET", "/nodes", get_nodes, "The cluster's nodes", "cluster", _list_of("Node")),
    Route("POST", "/nodes/{node_id}/promote", promote_node, "Make an agency learner (a joined node) a voter",
          "cluster", _ref("Promotion"), errors=(404, 409, 503),
          path_doc={"node_id": "The node's id; it must be a live agency learner."}),
    Route("POST", "/nodes/{node_id}/drain", drain_node, "Move every replica and leadership off a node "
          "(?cancel=true stops draining)", "cluster", {"type": "object"}, status=202, errors=(404, 409, 503),
          query=(Param("cancel", {"type": "boolean", "default": False}, "stop draining (moves under way finish)"),),
          path_doc={"node_id": "The node's id."}),
    Route("DELETE", "/nodes/{node_id}", remove_node, "Remove a drained node from the cluster and the agency",
          "cluster", {"type": "object"}, errors=(404, 409, 503), path_doc={"node_id": "The node's id."}),
    Route("POST", "/shards/move", move_shard, "Move a shard's replica from one node to another", "cluster",
          {"type": "object"}, status=202,
          body={"type": "object", "required": ["topic", "shard", "from", "to"],
                "properties": {"topic": {"type": "string"}, "shard": {"type": "integer", "minimum": 0},
                               "from": {"type": "string"}, "to": {"type": "string"}}},
          errors=(404, 409, 503)),
    Route("GET", "/moves", list_moves, "Shard moves (running and last finished per shard) and node drains",
          "cluster", {"type": "object"}, errors=(503,)),
    Route("GET", "/shards", get_shards, "Shards, their leaders and replicas", "cluster", _list_of("Shard"),
          query=(Param("topic", {"type": "string"}, "only the shards of this topic"),), errors=(404,)),
    Route("GET", "/topics", list_topics, "List topics", "topics", _list_of("Topic")),
    Route("POST", "/topics", create_topic, "Create a topic", "topics", _ref("Topic"), status=201,
          body=_ref("TopicSpec"), errors=(409, 503)),
    Route("GET", "/topics/{name:.+}", get_topic, "Describe a topic", "topics", _ref("Topic"),
          errors=(404,), path_doc=_TOPIC_PARAM),
    Route("PATCH", "/topics/{name:.+}", alter_topic, "Change a topic's settings", "topics", _ref("Topic"),
          body=_ref("TopicChanges"), errors=(404, 409, 503), path_doc=_TOPIC_PARAM),
    Route("DELETE", "/topics/{name:.+}", delete_topic, "Delete a topic", "topics", _ref("Topic"),
          errors=(404, 503), path_doc=_TOPIC_PARAM),
    Route("POST", "/topics/{name:.+}/truncate-shards", truncate_shards,
          "Close a topic's current shard group at once; the next writes open a new group on the current nodes",
          "topics", {"type": "object"}, errors=(400, 404, 503), path_doc=_TOPIC_PARAM),
    Route("GET", "/lookup/{name:.+}", lookup, "Where each shard of a topic is led", "data",
          _list_of("LookupEntry"), errors=(404, 503), path_doc=_TOPIC_PARAM),
    Route("POST", "/produce/{name:.+}", produce, "Append records to a topic", "data", _ref("ProduceResult"),
          body=_ref("ProduceRequest"), errors=(404, 503, 504), path_doc=_TOPIC_PARAM),
    Route("GET", "/fetch/{name:.+}", fetch, "Read records from one shard of a topic", "data", _ref("FetchResult"),
          query=(Param("shard", {"type": "integer", "minimum": 0}, "the shard's index", required=True),
                 Param("offset", {"type": "integer", "minimum": 0, "default": 0}, "first offset to read"),
                 Param("max_bytes", {"type": "integer", "minimum": 1, "maximum": FETCH_BYTES_MAX,
                                     "default": FETCH_BYTES_DEFAULT}, "stop after about this many bytes"),
                 Param("group", {"type": "integer", "minimum": 0},
                       "a topic with shard groups: the group to read (its id, GET /topics/{name}); "
                       "default: the current group")),
          errors=(404, 503, 504), path_doc=_TOPIC_PARAM),
    Route("GET", "/query/{name:.+}", query,
          "History query: a topic's records by producer timestamp, merged across its shards", "data",
          _ref("QueryResult"),
          query=(Param("from", {"type": "integer", "minimum": 0}, "start of the range, ms since the epoch "
                       "(inclusive)", required=True),
                 Param("to", {"type": "integer", "minimum": 0}, "end of the range, ms since the epoch "
                       "(exclusive); from <= to", required=True),
                 Param("key", {"type": "string"}, "only records with this key"),
                 Param("limit", {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": LIMIT_DEFAULT},
                       "at most this many records (and about 4 MiB) per page"),
                 Param("after", {"type": "string"}, "the 'next' token of the previous page: continue "
                       "exactly after it (same from, to and key)")),
          errors=(404, 503, 504), path_doc=_TOPIC_PARAM),
    Route("GET", "/subscriptions/{name:.+}", subscriptions, "Subscriptions of a topic and their lag", "data",
          _list_of("Subscription"), errors=(404,), path_doc=_TOPIC_PARAM),
    Route("GET", "/tenants", list_tenants, "Tenants, products and components", "namespaces",
          _ref("Namespaces")),
    Route("PUT", "/tenants/{path:.+}", create_tenant, "Create a namespace", "namespaces", {"type": "object"},
          errors=(409, 503), path_doc=_NS_PARAM),
    Route("DELETE", "/tenants/{path:.+}", delete_tenant, "Delete an empty namespace", "namespaces",
          {"type": "object"}, errors=(404, 409, 503), path_doc=_NS_PARAM),
    Route("GET", "/mqtt", mqtt_status, "This node's MQTT front end: sessions, routes, retained, forwarding",
          "mqtt", {"type": "object"}, errors=(503,)),
    Route("GET", "/mqtt/bridges", list_mqtt_bridges, "Bridges between MQTT topic trees and Chorus topics", "mqtt",
          {"type": "array", "items": {"type": "object"}}, errors=(503,)),
    Route("PUT", "/mqtt/bridges/{name}", put_mqtt_bridge,
          "Create or replace a bridge: direction 'in' stores MQTT publishes matching 'filter' in 'topic' "
          "(at 'level'); 'out' publishes 'topic' over MQTT under 'prefix'/<shard>", "mqtt", {"type": "object"},
          body={"type": "object", "properties": {k: {"type": "string"} for k in BRIDGE_FIELDS}},
          errors=(400, 404, 409, 503), path_doc={"name": "The bridge's name: 1-64 of A-Z a-z 0-9 . _ -"}),
    Route("DELETE", "/mqtt/bridges/{name}", delete_mqtt_bridge, "Delete a bridge", "mqtt", {"type": "object"},
          errors=(404, 503), path_doc={"name": "The bridge's name"}),
    Route("GET", "/whoami", http_auth.whoami, "The caller: user name and roles", "users", _ref("Whoami")),
    Route("GET", "/users", http_auth.list_users, "List users (never their hashes)", "users", _list_of("User"),
          errors=(503,)),
    Route("POST", "/users", http_auth.create_user, "Create a user", "users", _ref("User"), status=201,
          body=_ref("UserSpec"), errors=(409, 503)),
    Route("GET", "/users/{name}", http_auth.get_user, "Describe a user", "users", _ref("User"), errors=(404, 503),
          path_doc=_USER_PARAM),
    Route("PATCH", "/users/{name}", http_auth.set_password, "Change a user's password", "users", _ref("User"),
          body=_ref("PasswordChange"), errors=(404, 409, 503),
          path_doc=_USER_PARAM),
    Route("DELETE", "/users/{name}", http_auth.delete_user, "Delete a user (never the last admin)", "users",
          {"type": "object"}, errors=(404, 409, 503), path_doc=_USER_PARAM),
    Route("PUT", "/users/{name}/roles/{role}", http_auth.grant_role, "Grant a role", "users", _ref("User"),
          errors=(404, 409, 503), path_doc={**_USER_PARAM, "role": _ROLE_DOC}),
    Route("DELETE", "/users/{name}/roles/{role}", http_auth.revoke_role, "Revoke a role (never the last admin's)",
          "users", _ref("User"), errors=(404, 409, 503), path_doc={**_USER_PARAM, "role": _ROLE_DOC}),
    Route("POST", "/users/{name}/tokens", http_auth.create_token,
          "Make a bearer token for the user; its secret is shown this once", "users",
          _ref("Token"), status=201, errors=(404, 409, 503),
          path_doc=_USER_PARAM),
    Route("DELETE", "/users/{name}/tokens/{token_id}", http_auth.delete_token, "Revoke a bearer token", "users",
          _ref("User"), errors=(404, 409, 503), path_doc={**_USER_PARAM, "token_id": "The token's id"}),
    Route("GET", "/openapi.json", openapi, "This document", "meta", {"type": "object"}),
)

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NULL_INT = {"type": ["integer", "null"], "minimum": 0}
_STRS = {"type": "array", "items": _STR}
_HEADERS = {"type": "object", "additionalProperties": _STR}


def _obj(props: dict, required: list[str] | None = None, *, closed: bool = False) -> dict:
    out = {"type": "object", "properties": props,
           "required": list(props) if required is None else required}
    if closed:
        out["additionalProperties"] = False
    return out


SCHEMAS: dict[str, dict] = {
    "Directory": _obj({"cluster_id": _STR, "convention_leaders": _STRS, "convention": _STRS,
                       "convention_refused": _STRS,
                       "nodes": {"type": "array", "items": _obj({
                           "node_id": _STR, "client": _STR, "http": _STR, "admin": _STR, "raft": _STR,
                           "supervisor": _STR, "node": _STR, "dispatcher": _STR})}}),
    "Error": _obj({"error": _obj({"code": {"type": "string", "description": "stable snake_case name"},
                                   "message": {"type": "string", "description": "for people"}})}),
    "Node": _obj({"node_id": _STR, "agency": {"type": "string", "enum": ["voter", "learner", ""]},
                  "alive": {"type": "boolean"}, "client": _STR, "http": _STR,
                  "last_seen_s": {"type": ["number", "null"]}}),
    "Promotion": _obj({"node_id": _STR, "role": {"type": "string", "enum": ["voter"]}, "voters": _STRS,
                       "learners": _STRS}),
    "Status": _obj({
        "node_id": _STR, "cluster_id": _STR, "version": _STR, "uptime_s": {"type": "number"},
        "endpoints": _obj({"client": _STR, "http": _STR, "admin": _STR}),
        "agency": _obj({"role": _STR, "leader": {"type": ["string", "null"]}, "term": _INT,
                        "commit_index": _INT, "voters": _STRS, "learners": _STRS}),
        "nodes": _list_of("Node"), "replicas": _INT,
        "tls": {"type": "boolean", "description": "the client, MQTT and HTTP ports speak TLS only"}}),
    "Shard": _obj({"shard": _STR, "topic": _STR, "index": _INT, "leader": {"type": ["string", "null"]},
                   "epoch": _INT, "replicas": _STRS, "learners": _STRS, "in_sync": _STRS,
                   "state": {"type": "string", "enum": ["ok", "fenced", "leaderless"]}}),
    "Topic": _obj({"name": _STR, "shards": _INT, "replication_factor": _INT,
                   "retention_ms": _NULL_INT, "retention_bytes": _NULL_INT}),
    "TopicSpec": _obj({"name": _STR, "shards": {"type": "integer", "minimum": 1, "default": 1},
                       "replication_factor": {"type": "integer", "minimum": 1,
                                              "description": "default min(3, nodes)"},
                       "retention_ms": _NULL_INT, "retention_bytes": _NULL_INT}, ["name"], closed=True),
    "TopicChanges": {**_obj({"shards": {"type": "integer", "minimum": 1},
                             "replication_factor": {"type": "integer", "minimum": 1},
                             "retention_ms": _NULL_INT, "retention_bytes": _NULL_INT}, [], closed=True),
                     "minProperties": 1},
    "LookupEntry": _obj({"index": _INT, "shard": _STR, "leader": {"type": ["string", "null"]}, "epoch": _INT,
                         "client": {"type": "string", "description": "host:port or empty"},
                         "http": {"type": "string", "description": "host:port or empty"}}),
    "ProduceRecord": _obj({"value": _STR, "key": {"type": ["string", "null"], "default": None},
                           "headers": {**_HEADERS, "default": {}}}, ["value"], closed=True),
    "ProduceRequest": _obj({
        "records": {"type": "array", "items": _ref("ProduceRecord"), "minItems": 1, "maxItems": RECORDS_MAX},
        "level": {"type": "string", "enum": list(LEVELS), "default": "quorum"},
        "shard": {"type": ["integer", "null"], "minimum": 0, "default": None,
                  "description": "without it the shard is chosen by key, or round-robin"}},
        ["records"], closed=True),
    "ProduceResult": _obj({"topic": _STR, "shard": _INT, "base_offset": _INT, "count": _INT, "level": _STR}),
    "FetchedRecord": _obj({"offset": _INT, "key": {"type": ["string", "null"]}, "value": _STR,
                           "headers": _HEADERS, "timestamp_ms": _INT,
                           "encoding": {"type": "string", "enum": ["base64"],
                                        "description": "present when key and value are base64"}},
                          ["offset", "key", "value", "headers", "timestamp_ms"]),
    "FetchResult": _obj({"topic": _STR, "shard": _INT, "high_watermark": _INT,
                         "records": _list_of("FetchedRecord"), "group": _INT, "shard_id": _INT},
                        ["topic", "shard", "high_watermark", "records"]),
    "QueryResult": _obj({"topic": _STR, "records": _list_of("QueriedRecord"),
                         "next": {"type": ["string", "null"],
                                  "description": "continuation token for the next page; null: no more"}}),
    "QueriedRecord": _obj({"shard": _INT, "offset": _INT, "key": {"type": ["string", "null"]}, "value": _STR,
                           "headers": _HEADERS, "timestamp_ms": _INT, "broker_timestamp_ms": _INT,
                           "encoding": {"type": "string", "enum": ["base64"],
                                        "description": "present when key and value are base64"}},
                          ["shard", "offset", "key", "value", "headers", "timestamp_ms"]),
    "Subscription": _obj({"subscription": _STR, "mode": _STR, "shard": _INT, "committed": _INT,
                          "high_watermark": _INT, "lag": _INT, "consumers": {"type": "array"}}),
    "Namespaces": _obj({"tenants": {"type": "object", "additionalProperties": {
        "type": "object", "additionalProperties": _STRS}}}),
    "User": _obj({"name": _STR, "roles": _STRS, "tokens": {**_STRS, "description": "ids of its bearer tokens"}}),
    "UserSpec": _obj({"name": _STR, "password": {"type": "string", "minLength": 8},
                      "roles": {**_STRS, "description": "admin, or produce|consume|manage:TENANT (or :*)"}},
                     ["name", "password"], closed=True),
    "PasswordChange": _obj({"password": {"type": "string", "minLength": 8}}, closed=True),
    "Token": _obj({"name": _STR, "id": _STR, "token": {"type": "string", "description": "shown this once"}}),
    "Whoami": _obj({"name": {"type": ["string", "null"]}, "roles": _STRS, "admin": {"type": "boolean"},
                    "auth": {"type": "boolean", "description": "false: this node lets everyone do everything"}}),
}

_ERROR_TEXT = {400: "Bad request", 401: "No credentials, or wrong ones", 403: "The user lacks the role needed",
               404: "Not found", 409: "Conflict", 413: "Request body too large",
               429: "The user is over its request rate (see Retry-After)",
               500: "Internal error", 503: "Not ready, or no leader", 504: "Timed out"}


def openapi_document() -> dict:
    """The OpenAPI 3.1 description of :data:`ROUTES`."""
    paths: dict[str, dict] = {}
    for r in ROUTES:
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"},
                   "description": r.path_doc.get(p, "")} for p in r.path_params]
        params += [{"name": q.name, "in": "query", "required": q.required, "schema": q.schema,
                    "description": q.description} for q in r.query]
        security, auth_errors = http_auth.openapi_security(r.handler.__name__)
        error_statuses = {400, 500, *r.errors, *auth_errors}
        if r.body is not None:
            error_statuses.add(413)
        responses: dict[str, Any] = {
            str(r.status): {"description": "OK" if r.status == 200 else "Created",
                            "content": {"application/json": {"schema": r.response}}}}
        for s in sorted(error_statuses):
            responses[str(s)] = {"description": _ERROR_TEXT[s],
                                 "content": {"application/json": {"schema": _ref("Error")}}}
        op: dict[str, Any] = {"operationId": r.handler.__name__, "summary": r.summary, "tags": [r.tag],
                              "responses": responses, "security": security}
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": r.body}}}
        paths.setdefault(r.openapi_path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Chorus HTTP API", "version": VERSION,
                 "description": "Cluster status, topics, produce and fetch on a Chorus node. "
                                "Every error answers with the Error schema."},
        "servers": [{"url": "/"}],
        "paths": {**paths, **http_observe.openapi_paths()},
        "components": {"schemas": SCHEMAS, "securitySchemes": http_auth.SECURITY_SCHEMES},
    }


# --------------------------------------------------------------------------
# The application.


def _error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status) or re.sub(r"\W+", "_", exc.reason.lower()).strip("_") or "error"
        if exc.status == 404:
            message = f"no such resource: {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        else:
            message = exc.text or exc.reason
            if message.startswith(f"{exc.status}: "):
                message = message[len(f"{exc.status}: "):]
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, code, message, headers)
    except Exception:
        log.exception("internal error while handling %s %s", request.method, request.path)
        return _error(500, "internal_error",
                      f"internal error while handling {request.method} {request.path}; see the node's log")


class _Busy(asyncio.Protocol):
    """A connection over the HTTP port's ``connections_max``: it reads the
    request's head, answers 503 with the API's JSON error and closes (after
    reading, so the close is not a reset that could lose the answer)."""

    HEAD_BYTES_MAX = 16 << 10
    WAIT_S = 5.0

    def __init__(self, connections_max: int) -> None:
        body = json.dumps({"error": {"code": "unavailable",
                                     "message": f"too many connections: this node serves at most {connections_max} "
                                                f"on its HTTP port (http_connections_max); try again later"}}).encode()
        self.answer = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                       b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n"
                       b"Server: chorus/%s\r\n\r\n" % (len(body), VERSION.encode())) + body
        self.head = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        asyncio.get_running_loop().call_later(self.WAIT_S, self._answer)

    def data_received(self, data: bytes) -> None:
        self.head = (self.head + data)[-self.HEAD_BYTES_MAX:]
        if b"\r\n\r\n" in self.head or len(self.head) >= self.HEAD_BYTES_MAX:
            self._answer()

    def eof_received(self) -> bool:
        self._answer()
        return False

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.answer)
            self.transport.close()


def http_protocol_factory(server: Any, connections_max: int) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for ``loop.create_server``: aiohttp's ``server``
    (an ``AppRunner``'s) while it has fewer than ``connections_max``
    connections, else a 503 answer (:class:`_Busy`)."""

    def factory() -> asyncio.BaseProtocol:
        if len(server.connections) >= connections_max:
            log.info("HTTP port: %d connections (http_connections_max), answering 503", connections_max)
            return _Busy(connections_max)
        return server()

    return factory


def make_app(gateway: Gateway, *, node_id: str = "", body_bytes_max: int = 1 << 20,
             auth: Any = None, metrics_auth: bool = True, metrics_series_max: int = 200,
             io_stats: Callable[[], dict] | None = None) -> web.Application:
    """The aiohttp application serving :data:`ROUTES` in front of ``gateway``.

    ``node_id``, when given, is sent back in a ``Chorus-Node`` header on every
    response; request bodies larger than ``body_bytes_max`` get a 413.  With
    ``auth`` (a :class:`runtime.authn.Authenticator`) every route but the
    open ones needs credentials and the role ``runtime/http_auth.py`` names.
    ``/metrics`` and the dashboard: runtime/http_observe.py."""
    middlewares = [http_observe.timed, _errors_as_json] + ([http_auth.auth_middleware(auth)] if auth is not None else [])
    app = web.Application(middlewares=middlewares, client_max_size=body_bytes_max)
    app[GATEWAY_KEY] = gateway
    app[http_auth.AUTH_KEY] = auth
    app[NODE_ID_KEY] = node_id
    for r in ROUTES:
        app.router.add_route(r.method, r.full_path, r.handler)
    http_observe.register(app, metrics_auth=metrics_auth, series_max=metrics_series_max, io_stats=io_stats)

    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = f"chorus/{VERSION}"
        if node_id:
            response.headers["Chorus-Node"] = node_id

    app.on_response_prepare.append(_headers)
    return app
