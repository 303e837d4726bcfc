"""``brokerctl mqtt``: a node's MQTT front end and the MQTT <-> log bridges,
over the HTTP API (``/api/v1/mqtt``)."""
from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from runtime.admin_cli import DEFAULT_TIMEOUT_S, DEFAULT_URL, JsonOpt, TimeoutOpt, UrlOpt, _Ctx, _esc, _quote, out

mqtt_app = typer.Typer(help="MQTT: this node's sessions and routes; bridges between MQTT and topics.",
                       no_args_is_help=True)
bridges_app = typer.Typer(help="Bridges: store MQTT topic trees in topics, publish topics over MQTT.",
                          no_args_is_help=True)
mqtt_app.add_typer(bridges_app, name="bridges")

BridgeName = Annotated[str, typer.Argument(help="the bridge's name (A-Z a-z 0-9 . _ -)")]
TopicOpt = Annotated[str, typer.Option("--topic", help="the Chorus topic: tenant/product/component/topic")]


@mqtt_app.command("status")
def mqtt_status(url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """This node's MQTT front end: sessions, connections, routes, forwarding."""
    c = _Ctx(url, timeout, as_json)
    s = c.call("GET", "mqtt")
    if as_json:
        return c.print_json(s)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key in ("port", "sessions", "online", "connections", "subscriptions", "retained", "published",
                "delivered", "forwarded", "dropped", "appended", "published_from_log"):
        if key in s:
            grid.add_row(key, _esc(str(s[key])))
    routes = s.get("routes") or {}
    grid.add_row("routes of other nodes", _esc(", ".join(f"{n}: {k}" for n, k in routes.items()) or "-"))
    queued = {n: k for n, k in (s.get("forward_queued") or {}).items() if k}
    grid.add_row("waiting to be forwarded", _esc(", ".join(f"{n}: {k}" for n, k in queued.items()) or "-"))
    out.print(grid)


def _bridges_table(bridges: list[dict]) -> Table:
    t = Table(title="MQTT bridges")
    for col in ("name", "direction", "MQTT", "topic", "level"):
        t.add_column(col)
    for b in bridges:
        mqtt = b.get("filter") if b.get("direction") == "in" else f"{b.get('prefix')}/<shard>"
        t.add_row(*(_esc(str(x)) for x in (b.get("name"), b.get("direction"), mqtt, b.get("topic"),
                                           b.get("level", "-"))))
    return t


@bridges_app.command("list")
def bridges_list(url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """List the bridges."""
    c = _Ctx(url, timeout, as_json)
    bs = c.call("GET", "mqtt/bridges")
    if as_json:
        return c.print_json(bs)
    out.print(_bridges_table(bs))


def _put(c: _Ctx, name: str, spec: dict[str, Any]) -> None:
    b = c.call("PUT", f"mqtt/bridges/{_quote(name)}", body=spec)
    if c.as_json:
        return c.print_json(b)
    out.print(_bridges_table([b]))


@bridges_app.command("in")
def bridges_in(name: BridgeName, topic: TopicOpt,
               filter_: Annotated[str, typer.Option("--filter", help="MQTT topic filter, e.g. 'sensors/#'")],
               level: Annotated[str, typer.Option("--level", help="any, one, quorum or all")] = "quorum",
               url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Store every MQTT publish matching --filter in --topic (key: the MQTT
    topic); publishers are acknowledged once it is stored at --level."""
    _put(_Ctx(url, timeout, as_json), name, {"direction": "in", "filter": filter_, "topic": topic, "level": level})


@bridges_app.command("out")
def bridges_out(name: BridgeName, topic: TopicOpt,
                prefix: Annotated[str, typer.Option("--prefix", help="MQTT topic prefix; records go to PREFIX/SHARD")],
                url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Publish the records of --topic over MQTT (QoS 1) to PREFIX/SHARD."""
    _put(_Ctx(url, timeout, as_json), name, {"direction": "out", "topic": topic, "prefix": prefix})


@bridges_app.command("delete")
def bridges_delete(name: BridgeName, url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                   as_json: JsonOpt = False) -> None:
    """Delete a bridge."""
    c = _Ctx(url, timeout, as_json)
    r = c.call("DELETE", f"mqtt/bridges/{_quote(name)}")
    if as_json:
        return c.print_json(r)
    out.print(f"deleted bridge [bold]{_esc(name)}[/]")
