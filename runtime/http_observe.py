"""The HTTP port's observability routes: ``/metrics`` and the dashboard.

Registered by :func:`runtime.http_api.make_app` (which only calls
:func:`register` and puts :func:`timed` first among its middlewares):

* ``GET /metrics`` -- Prometheus text format (runtime/metrics.py).  With
  ``metrics_auth`` (the default on nodes with users) it needs any user, by
  HTTP Basic or a bearer token; per-topic series are limited to the
  tenants the user may describe (``admin`` and ``*`` roles see all).
  Without it, it is open, like ``/api/v1/status``.
* ``GET /`` -- the dashboard: one self-contained page
  (``runtime/dashboard/index.html``: HTML, CSS and JavaScript, charts in
  SVG, no build step), which polls
* ``GET /dashboard/data.json`` -- a cluster-wide snapshot: every shard
  from its leader, agency, nodes, failovers, leader changes, hinted
  handoff, and this node's connections and latencies.

The page and its data need a user when the node has users (the browser
asks once and sends the credentials with each poll).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from protocol.users import DESCRIBE, tenant_of
from runtime import http_auth
from runtime.latency import LatencyHistogram
from runtime.metrics import CONTENT_TYPE_LATEST, NodeMetrics, node_processes

DASHBOARD_FILE = Path(__file__).with_name("dashboard") / "index.html"
METRICS_KEY: web.AppKey[Any] = web.AppKey("chorus_metrics", object)
IO_STATS_KEY: web.AppKey[Any] = web.AppKey("chorus_io_stats", object)
HTTP_LATENCY_KEY: web.AppKey[Any] = web.AppKey("chorus_http_latency", object)
GATEWAY_KEY_NAME = "chorus_gateway"

# (method, path, handler name, summary, content type) for the OpenAPI document
PATHS = (
    ("GET", "/metrics", "Prometheus metrics of this node (text format 0.0.4)", "text/plain"),
    ("GET", "/", "The web dashboard (HTML)", "text/html"),
    ("GET", "/dashboard/data.json", "The dashboard's cluster snapshot", "application/json"),
)


@web.middleware
async def timed(request: web.Request, handler: Any) -> web.StreamResponse:
    """Observe every HTTP request's latency (outermost: auth included)."""
    t0 = time.monotonic()
    try:
        return await handler(request)
    finally:
        hist = request.app.get(HTTP_LATENCY_KEY)
        if hist is not None:
            hist.observe(time.monotonic() - t0)


def _visible(request: web.Request) -> Callable[[str], bool] | None:
    g = http_auth.grants_of(request)
    if g is None or g.sees_every_tenant():
        return None
    return lambda topic: g.allows(DESCRIBE, tenant_of(topic))


async def _snapshot(request: web.Request, scope: str) -> dict:
    from runtime.http_api import GATEWAY_KEY, NODE_ID_KEY, VERSION

    gateway = request.app[GATEWAY_KEY]
    snap = await gateway.metrics(scope)
    snap = dict(snap, version=VERSION, node_id=snap.get("node_id") or request.app[NODE_ID_KEY])
    io = request.app[IO_STATS_KEY]() if request.app.get(IO_STATS_KEY) else {"connections": {}, "latency": {}}
    io["latency"]["http"] = request.app[HTTP_LATENCY_KEY].snapshot()
    mqtt = snap.get("mqtt") or {}
    if "connections" in mqtt:
        io["connections"]["mqtt"] = mqtt["connections"]
    if mqtt.get("latency"):
        io["latency"]["mqtt"] = mqtt["latency"]
    snap["io"] = io
    snap["processes"] = node_processes()
    return snap


async def metrics(request: web.Request) -> web.Response:
    m: NodeMetrics = request.app[METRICS_KEY]
    snap = await m.snapshot(lambda: _snapshot(request, "node"))
    body = m.render(snap, _visible(request))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def metrics_open(request: web.Request) -> web.Response:
    return await metrics(request)


async def dashboard_page(request: web.Request) -> web.Response:
    return web.Response(body=DASHBOARD_FILE.read_bytes(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def dashboard_data(request: web.Request) -> web.Response:
    snap = await _snapshot(request, "cluster")
    visible = _visible(request)
    if visible is not None:
        from runtime.metrics import filter_topics

        snap = filter_topics(snap, visible)
    return web.json_response(snap, headers={"Cache-Control": "no-store"})


def register(app: web.Application, *, metrics_auth: bool = True, series_max: int = 200,
             io_stats: Callable[[], dict] | None = None) -> None:
    app[METRICS_KEY] = NodeMetrics(series_max)
    app[IO_STATS_KEY] = io_stats
    app[HTTP_LATENCY_KEY] = LatencyHistogram()
    app.router.add_get("/metrics", metrics if metrics_auth else metrics_open, allow_head=False)
    app.router.add_get("/", dashboard_page, allow_head=False)
    app.router.add_get("/dashboard/data.json", dashboard_data, allow_head=False)


def openapi_paths(metrics_auth: bool = True) -> dict:
    out: dict = {}
    for method, path, summary, ctype in PATHS:
        name = {"/metrics": "metrics" if metrics_auth else "metrics_open", "/": "dashboard_page"}.get(
            path, "dashboard_data")
        security, errors = http_auth.openapi_security(name)
        responses: dict = {"200": {"description": "OK", "content": {ctype: {"schema": {
            "type": "object" if ctype == "application/json" else "string"}}}}}
        for s in sorted(errors | {500} | ({504} if path != "/" else set())):
            responses[str(s)] = {"description": "see the Error schema",
                                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        out[path] = {method.lower(): {"operationId": name, "summary": summary, "tags": ["observability"],
                                      "responses": responses, "security": security}}
    return out
