"""Who may call what on the HTTP API, and the API of users themselves.

Every route of ``runtime/http_api.py`` has an entry in :data:`ACCESS` (a
test checks that none is missing; a route without one would need admin):

* ``open``: no credentials.  Only what nodes and launchers read from each
  other to find and join a cluster, and that reveals no secret and changes
  nothing: ``GET /status`` (agency role, voters, endpoints; a joining node
  reads the voters there), ``GET /cluster/directory`` (where every node's
  actors listen) and ``GET /openapi.json``.
* ``user``: any authenticated user (lists are filtered to the tenants the
  user has a role on: ``GET /topics``, ``GET /tenants``; ``GET /whoami``).
* ``admin``: cluster administration (nodes, promotion, the shard map of
  every topic, MQTT status and bridges) and user management.
* an action on the tenant of the topic or namespace in the URL (or, when
  a topic is created, in the body): ``produce``, ``consume``, ``manage``,
  or ``describe`` (any of the three).

Credentials: HTTP Basic (user name and password, verified with scrypt in a
thread pool and cached: ``runtime/authn.py``) or ``Authorization: Bearer
<token>`` (``POST /users/{name}/tokens`` makes one).  Missing or wrong
credentials: 401 with ``WWW-Authenticate`` and the API's JSON error;
a missing role: 403 ``forbidden``; over the user's request rate: 429 with
``Retry-After``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from protocol.users import (
    ADMIN,
    DESCRIBE,
    Grants,
    UserError,
    check_name,
    check_password,
    denial,
    hash_password,
    make_token,
    public_view,
    tenant_of,
    token_hash,
)
from runtime.authn import Authenticator, Busy, new_salt, new_token_parts
from runtime.gateway import GatewayError

OPEN = "open"
USER = "user"
AUTH_KEY: web.AppKey[Any] = web.AppKey("chorus_auth", object)
GRANTS: web.RequestKey[Any] = web.RequestKey("chorus_grants", object)  # the caller's Grants (None: auth off)

# handler name -> (what it needs, where the tenant comes from)
ACCESS: dict[str, tuple[str, str]] = {
    "get_status": (OPEN, ""), "get_directory": (OPEN, ""), "openapi": (OPEN, ""),
    "get_nodes": (ADMIN, ""), "promote_node": (ADMIN, ""), "get_shards": (DESCRIBE, "query:topic"),
    "list_topics": (USER, ""), "create_topic": ("manage", "body:name"), "get_topic": (DESCRIBE, "path:name"),
    "alter_topic": ("manage", "path:name"), "delete_topic": ("manage", "path:name"),
    "truncate_shards": ("manage", "path:name"),
    "lookup": (DESCRIBE, "path:name"), "produce": ("produce", "path:name"), "fetch": ("consume", "path:name"),
    "query": ("consume", "path:name"),
    "subscriptions": (DESCRIBE, "path:name"),
    "list_tenants": (USER, ""), "create_tenant": ("manage", "path:path"), "delete_tenant": ("manage", "path:path"),
    "mqtt_status": (ADMIN, ""), "list_mqtt_bridges": (ADMIN, ""), "put_mqtt_bridge": (ADMIN, ""),
    "delete_mqtt_bridge": (ADMIN, ""),
    "whoami": (USER, ""), "list_users": (ADMIN, ""), "create_user": (ADMIN, ""), "get_user": (ADMIN, ""),
    "delete_user": (ADMIN, ""), "set_password": (ADMIN, ""), "grant_role": (ADMIN, ""), "revoke_role": (ADMIN, ""),
    "create_token": (ADMIN, ""), "delete_token": (ADMIN, ""),
    # runtime/http_observe.py: series of topics are filtered to the user's tenants
    "metrics": (USER, ""), "metrics_open": (OPEN, ""), "dashboard_page": (USER, ""), "dashboard_data": (USER, ""),
    "move_shard": (ADMIN, ""), "list_moves": (ADMIN, ""), "drain_node": (ADMIN, ""), "remove_node": (ADMIN, ""),
}


def _json_error(status: int, code: str, message: str, headers: Any = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _challenge(message: str) -> web.Response:
    headers = CIMultiDict([("WWW-Authenticate", 'Basic realm="chorus", charset="UTF-8"'),
                           ("WWW-Authenticate", 'Bearer realm="chorus"')])
    return _json_error(401, "unauthorized", message, headers)


async def _caller(request: web.Request, auth: Authenticator) -> str | web.Response:
    """The authenticated user's name, or the 401/503 answer."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        name = auth.verify_token(value.strip())
        return name if name is not None else _challenge("the bearer token is not valid (unknown or revoked)")
    if scheme == "basic" and value.strip():
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _challenge("malformed Basic credentials: expected base64 of USER:PASSWORD")
        try:
            ok = sep and await auth.verify(user, password)
        except Busy as exc:
            return _json_error(503, "unavailable", str(exc), {"Retry-After": "1"})
        return user if ok else _challenge(f"user name or password not accepted (user {user!r})")
    return _challenge("authentication required: HTTP Basic (-u USER:PASSWORD) or Authorization: Bearer TOKEN")


async def _needed(request: web.Request, need: str, source: str) -> tuple[str, str] | None:
    """(action, tenant) a call needs; None when its input has no tenant to
    check (a body without a name: the handler answers 400, nothing is done)."""
    kind, _, key = source.partition(":")
    if kind == "path":
        return need, tenant_of(request.match_info.get(key, ""))
    if kind == "query":
        value = request.query.get(key)
        return (need, tenant_of(value)) if value else (ADMIN, "")  # no topic: every topic's shards
    if kind == "body":
        name = await _body_name(request)
        return (need, tenant_of(name)) if name else None
    return need, ""


async def _body_name(request: web.Request) -> str | None:
    """The ``name`` of a JSON body, if it has one."""
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return None
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) and name else None


def auth_middleware(auth: Authenticator) -> Any:
    @web.middleware
    async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
        if getattr(request.match_info, "http_exception", None) is not None:
            return await handler(request)  # 404 / 405: nothing to protect
        need, source = ACCESS.get(getattr(request.match_info.handler, "__name__", ""), (ADMIN, ""))
        if need == OPEN:
            return await handler(request)
        who = await _caller(request, auth)
        if isinstance(who, web.Response):
            return who
        grants = auth.grants(who)
        if grants is None:
            return _challenge(f"user {who!r} no longer exists")
        wait = auth.throttle(who)
        if wait:
            return _json_error(429, "too_many_requests",
                               f"user {who!r} is over its request rate on this node "
                               f"({auth.limiter.rate:g} requests/s); retry in {wait:.2f} s",
                               {"Retry-After": str(max(1, math.ceil(wait)))})
        if need != USER:
            needed = await _needed(request, need, source)
            if needed is not None and not grants.allows(*needed):
                auth.stats["denied"] += 1
                return _json_error(403, "forbidden", denial(grants, *needed))
        request[GRANTS] = grants
        return await handler(request)

    return authenticate


def grants_of(request: web.Request) -> Grants | None:
    """The caller's grants; None when the node does not authenticate (everything allowed)."""
    return request.get(GRANTS)


def visible_topics(request: web.Request, topics: list[dict]) -> list[dict]:
    g = grants_of(request)
    if g is None or g.sees_every_tenant():
        return topics
    return [t for t in topics if g.allows(DESCRIBE, tenant_of(str(t.get("name", ""))))]


def visible_tenants(request: web.Request, doc: dict) -> dict:
    g = grants_of(request)
    if g is None or g.sees_every_tenant() or not isinstance(doc.get("tenants"), dict):
        return doc
    return dict(doc, tenants={t: v for t, v in doc["tenants"].items() if g.allows(DESCRIBE, t)})


def openapi_security(handler_name: str) -> tuple[list, set[int]]:
    """The OpenAPI ``security`` of a route and the error statuses it adds."""
    need, _ = ACCESS.get(handler_name, (ADMIN, ""))
    if need == OPEN:
        return [], set()
    return [{"basic": []}, {"bearer": []}], {401, 429} | ({403} if need != USER else set())


SECURITY_SCHEMES = {"basic": {"type": "http", "scheme": "basic"},
                    "bearer": {"type": "http", "scheme": "bearer", "description": "a token from POST "
                                                                                 "/users/{name}/tokens"}}


# ------------------------------------------------------------- /users


async def _hash(password: str) -> dict:
    """scrypt in a worker thread: the loop keeps serving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, hash_password, password, new_salt())


def _gw(request: web.Request) -> Any:
    from runtime.http_api import GATEWAY_KEY

    return request.app[GATEWAY_KEY]


async def _change(request: web.Request, op: str, name: str, arg: Any = None) -> dict:
    try:
        check_name(name)
    except UserError as e:
        raise GatewayError(e.status, e.code, e.message) from None
    return await _gw(request).change_user(op, name, arg)


async def _body(request: web.Request, allowed: tuple[str, ...], what: str) -> dict:
    from runtime.http_api import _check_fields, _json_object

    body = await _json_object(request)
    _check_fields(body, allowed, what)
    return body


def _user_error(e: UserError) -> GatewayError:
    return GatewayError(e.status, e.code, e.message)


async def whoami(request: web.Request) -> web.Response:
    g = grants_of(request)
    if g is None:
        return web.json_response({"name": None, "roles": [], "admin": True, "auth": False})
    record = request.app[AUTH_KEY].record(g.name) or {}
    return web.json_response({"name": g.name, "roles": list(record.get("roles", ())), "admin": g.admin,
                              "auth": True})


async def list_users(request: web.Request) -> web.Response:
    users = await _gw(request).users()
    return web.json_response([public_view(dict(r, name=n)) for n, r in sorted(users.items())])


async def get_user(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    users = await _gw(request).users()
    if name not in users:
        raise GatewayError(404, "not_found", f"no user {name!r}")
    return web.json_response(public_view(dict(users[name], name=name)))


async def create_user(request: web.Request) -> web.Response:
    body = await _body(request, ("name", "password", "roles"), "the user")
    from protocol.users import new_record

    roles = body.get("roles", [])
    try:
        name = check_name(body.get("name"))
        password = check_password(body.get("password"))
        if not isinstance(roles, list):
            raise UserError(400, "bad_request", "'roles' must be a list of roles")
        record = new_record(name, await _hash(password), roles)
    except UserError as e:
        raise _user_error(e) from None
    user = await _change(request, "create", name, record)
    return web.json_response(user, status=201, headers={"Location": f"/api/v1/users/{name}"})


async def delete_user(request: web.Request) -> web.Response:
    return web.json_response(await _change(request, "delete", request.match_info["name"]))


async def set_password(request: web.Request) -> web.Response:
    body = await _body(request, ("password",), "the change")
    try:
        password = check_password(body.get("password"))
    except UserError as e:
        raise _user_error(e) from None
    return web.json_response(await _change(request, "passwd", request.match_info["name"], await _hash(password)))


async def grant_role(request: web.Request) -> web.Response:
    return web.json_response(await _change(request, "grant", request.match_info["name"], request.match_info["role"]))


async def revoke_role(request: web.Request) -> web.Response:
    return web.json_response(await _change(request, "revoke", request.match_info["name"],
                                           request.match_info["role"]))


async def create_token(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    token_id, secret = new_token_parts()
    await _change(request, "add_token", name, {"id": token_id, "sha256": token_hash(secret)})
    return web.json_response({"name": name, "id": token_id, "token": make_token(name, token_id, secret)},
                             status=201)


async def delete_token(request: web.Request) -> web.Response:
    return web.json_response(await _change(request, "drop_token", request.match_info["name"],
                                           request.match_info["token_id"]))
