"""Admin commands of ``brokerctl``, talking to a node's HTTP REST API.

:func:`register` adds ``status``, ``shards`` and the ``nodes`` and
``topics`` groups to a Typer application.  The commands speak only HTTP/JSON to
``/api/v1`` (see ``runtime/http_api.py``), with the standard library's
``urllib.request`` and a timeout, so they work against any node of a
cluster from any machine that can reach it.

Every command takes ``--url`` (default: ``$CHORUS_URL``, else
``http://127.0.0.1:7181``), ``--timeout`` and ``--json`` (print the API's
JSON instead of tables), and for a node with TLS ``--tls`` (https://,
verified against the system's CAs) or ``--ca-file PATH`` (verified against
that certificate or CA; ``$CHORUS_CA_FILE``).  Without them a command finds
out itself when the node at ``--url`` was started from this directory
(``./data``, ``$CHORUS_DATA_DIR``): its ``node.pid`` names the certificate
to trust.  Nodes require a user: every command takes ``--user`` and
``--password`` (``$CHORUS_USER``, ``$CHORUS_PASSWORD``; the password is
asked for when only the user is given); without them it logs in as
``admin`` with the password a node started from this directory wrote in
``./data/admin.password`` (or ``./data/n*/``; ``--data-dir``,
``$CHORUS_DATA_DIR``).  Exit codes: 0 success, 1 the API answered with an
error (its code and message are printed), 2 no node could be reached.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:7181"
DEFAULT_TIMEOUT_S = 10.0

EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

UrlOpt = Annotated[str, typer.Option("--url", envvar="CHORUS_URL",
                                     help="base URL of any Chorus node's HTTP API")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, help="seconds to wait for the node")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the raw JSON answer instead of tables")]


# --------------------------------------------------------------------------
# The REST client


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    pass


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({reason.verify_message}); give --ca-file"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason.reason or reason}); does the node use TLS?"
    if type(reason).__name__ == "RemoteDisconnected":
        return "it closed the connection without an answer (a node with TLS needs --tls or --ca-file)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower() if reason.strerror[:1].isupper() else reason.strerror
    return str(reason) or type(reason).__name__


def request(url: str, method: str, path: str, *, body: Any = None, query: dict | None = None,
            timeout: float = DEFAULT_TIMEOUT_S, context: ssl.SSLContext | None = None,
            headers: dict[str, str] | None = None) -> Any:
    """One API call; returns the decoded JSON answer.

    Raises :class:`Unreachable` when no HTTP answer came back and
    :class:`ApiError` for an error answer (or one that is not JSON)."""
    full = url.rstrip("/") + "/api/v1/" + path.lstrip("/")
    if query:
        full += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    data = None if body is None else json.dumps(body).encode()
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise Unreachable("not an http:// or https:// URL")
    try:
        req = urllib.request.Request(full, data=data, method=method,
                                     headers={"Accept": "application/json", "Content-Type": "application/json",
                                              **(headers or {})})
        with _urlopen(req, timeout=timeout, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
        exc.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # ValueError: a malformed --url; OSError covers resets and timeouts mid-read
        raise Unreachable(_reason(exc)) from None
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        raise ApiError(status, "bad_response",
                       f"HTTP {status} with a body that is not JSON (is this a Chorus node?)") from None
    if status >= 400:
        e = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(e, dict):
            raise ApiError(status, str(e.get("code", f"http_{status}")), str(e.get("message", "")))
        raise ApiError(status, f"http_{status}", f"HTTP {status}")
    return payload


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="/")


# --------------------------------------------------------------------------
# TLS: --tls / --ca-file on every command (added by register(), see with_tls)

_TLS_OPTS: contextvars.ContextVar[tuple[bool, str | None]] = contextvars.ContextVar("chorus_tls", default=(False, None))
TlsOpt = Annotated[bool, typer.Option("--tls", help="the node uses TLS: https://, verified against the system's CAs")]
CaFileOpt = Annotated[Optional[str], typer.Option(
    "--ca-file", envvar="CHORUS_CA_FILE",
    help="the node uses TLS: trust this PEM certificate or CA (e.g. DATA_DIR/tls/cert.pem)")]


def _urlopen(req: Any, *, timeout: float, context: ssl.SSLContext | None) -> Any:
    from runtime.tls import urlopen

    return urlopen(req, timeout=timeout, context=context)


def _local_trust(url: str) -> str | None:
    """The certificate to trust for ``url`` when it is a node started from
    this directory with TLS (its ``node.pid`` in ./data, ./data/n*, or
    $CHORUS_DATA_DIR says so), else None."""
    where = urllib.parse.urlsplit(url).netloc
    data = os.environ.get("CHORUS_DATA_DIR", "data")
    candidates = [os.path.join(data, "node.pid")]
    try:
        candidates += [os.path.join(data, d, "node.pid") for d in sorted(os.listdir(data))]
    except OSError:
        pass
    for path in candidates:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("http") == where and doc.get("tls_ca_file"):
            return str(doc["tls_ca_file"])
    return None


def _tls_for(url: str, tls: bool, ca_file: str | None) -> tuple[str, ssl.SSLContext | None]:
    """The URL to use (https:// when the node uses TLS) and the context."""
    from runtime.tls import client_context

    scheme = urllib.parse.urlsplit(url).scheme
    if ca_file is None:
        ca_file = _local_trust(url)  # a node started here: also for an https:// URL
    if not (tls or ca_file or scheme == "https"):
        return url, None
    if scheme == "http":
        url = "https" + url[len("http"):]
    return url, client_context(ca_file)


def with_options(command: Any, var: contextvars.ContextVar, options: dict[str, tuple[Any, Any]]) -> Any:
    """``command`` with the keyword ``options`` (name -> (annotation,
    default)) added; their values reach :class:`_Ctx` as a tuple through the
    context variable ``var``, so commands need not pass them along."""
    sig = inspect.signature(command, eval_str=True)
    if next(iter(options)) in sig.parameters:
        return command

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = var.set(tuple(kwargs.pop(name, default) for name, (_, default) in options.items()))
        try:
            return command(*args, **kwargs)
        finally:
            var.reset(token)

    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in options.items()]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
              else p for p in sig.parameters.values()]
    wrapper.__signature__ = sig.replace(parameters=params + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**getattr(command, "__annotations__", {}),
                               **{name: annotation for name, (annotation, _) in options.items()}}
    return wrapper


def with_tls(command: Any) -> Any:
    """``command`` with the options ``--tls`` and ``--ca-file`` added."""
    return with_options(command, _TLS_OPTS, {"tls": (TlsOpt, False), "ca_file": (CaFileOpt, None)})


# --------------------------------------------------------------------------
# Users: --user / --password / --data-dir on every command (see with_login)

_LOGIN_OPTS: contextvars.ContextVar[tuple] = contextvars.ContextVar("chorus_login", default=(None, None, None))
UserOpt = Annotated[Optional[str], typer.Option("--user", envvar="CHORUS_USER",
                                                help="log in as this user [admin, with the password of --data-dir]")]
PasswordOpt = Annotated[Optional[str], typer.Option("--password", envvar="CHORUS_PASSWORD",
                                                    help="its password (asked for when --user is given alone)")]
DataDirOpt = Annotated[Optional[str], typer.Option(
    "--data-dir", envvar="CHORUS_DATA_DIR",
    help="without --user: log in as admin with the password a node started here wrote in DATA_DIR/admin.password "
         "[./data]")]


def with_login(command: Any) -> Any:
    """``command`` with the options ``--user``, ``--password`` and ``--data-dir`` added."""
    return with_options(command, _LOGIN_OPTS, {"user": (UserOpt, None), "password": (PasswordOpt, None),
                                               "data_dir": (DataDirOpt, None)})


def _login_headers() -> dict[str, str]:
    """The Authorization header of this invocation: --user/--password, else
    the admin password a node started from this directory wrote, else none."""
    import base64

    from runtime.authn import read_admin_password

    user, password, data_dir = _LOGIN_OPTS.get()
    if not user:
        password = password or read_admin_password(data_dir or "data")
        user = "admin" if password else None
    if not user:
        return {}
    if password is None:
        if not os.isatty(0):
            _fail(EXIT_API_ERROR, f"--user {user}: give --password (or CHORUS_PASSWORD)")
        password = typer.prompt(f"password of {user}", hide_input=True)
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class _Ctx:
    """What one command invocation needs: where to go and how to print."""

    def __init__(self, url: str, timeout: float, as_json: bool) -> None:
        self.timeout, self.as_json = timeout, as_json
        self.url, self.context = _tls_for(url, *_TLS_OPTS.get())
        self.headers = _login_headers()

    def call(self, method: str, path: str, **kw) -> Any:
        try:
            return self._request(method, path, **kw)
        except Unreachable as exc:
            _fail(EXIT_UNREACHABLE, f"cannot reach a Chorus node at {self.url}: {exc}", prefix="")
        except ApiError as exc:
            _fail_api(exc)

    def poll(self, method: str, path: str, **kw) -> Any:
        """``call`` for a loop that follows long work: None when the node did
        not answer in time or answered 5xx (a busy or failing-over cluster;
        the loop asks again until its own deadline); other errors fail."""
        try:
            return self._request(method, path, **kw)
        except Unreachable:
            return None
        except ApiError as exc:
            if exc.status >= 500:
                return None
            _fail_api(exc)

    def _request(self, method: str, path: str, **kw) -> Any:
        return request(self.url, method, path, timeout=self.timeout, context=self.context, headers=self.headers,
                       **kw)

    def print_json(self, data: Any) -> None:
        typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _fail_api(exc: ApiError) -> NoReturn:
    hint = ("; log in with --user/--password (or CHORUS_USER/CHORUS_PASSWORD), or run from the directory "
            "whose data/admin.password a node wrote (--data-dir)") if exc.status == 401 else ""
    _fail(EXIT_API_ERROR, f"{exc.code}: {exc.message}{hint}", prefix=f"error (HTTP {exc.status}) ")


def _fail(code: int, message: str, prefix: str = "error: ") -> NoReturn:
    err.print(f"[red]{_esc(prefix)}[/]{_esc(message)}" if prefix else _esc(message), soft_wrap=True)
    raise typer.Exit(code)


def _esc(text: str) -> str:
    return escape(text)


# --------------------------------------------------------------------------
# Rendering


def _dash(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def _nodes_table(nodes: list[dict], *, self_id: str = "", leader: str | None = None) -> Table:
    t = Table(title="Nodes", title_justify="left")
    for col in ("node", "agency", "alive", "client", "http", "last seen"):
        t.add_column(col, no_wrap=True)
    for n in nodes:
        marks = []
        if n.get("node_id") == self_id:
            marks.append("this node")
        if leader and n.get("node_id") == leader:
            marks.append("agency leader")
        name = _esc(str(n.get("node_id"))) + (f" [dim]({', '.join(marks)})[/]" if marks else "")
        alive = "[green]yes[/]" if n.get("alive") else "[red]no[/]"
        seen = n.get("last_seen_s")
        t.add_row(name, _esc(_dash(n.get("agency"))), alive, _esc(_dash(n.get("client"))), _esc(_dash(n.get("http"))),
                  "-" if seen is None else f"{seen:.1f}s ago")
    return t


_STATE_STYLE = {"ok": "green", "fenced": "yellow", "leaderless": "red"}


def _shards_table(shards: list[dict]) -> Table:
    t = Table(title="Shards", title_justify="left")
    for col in ("shard", "leader", "epoch", "replicas", "in-sync", "state"):
        t.add_column(col, no_wrap=col in ("shard", "leader", "epoch", "state"))
    for s in shards:
        state = str(s.get("state"))
        style = _STATE_STYLE.get(state, "")
        t.add_row(_esc(str(s.get("shard"))), _esc(_dash(s.get("leader"))), str(s.get("epoch")),
                  _esc(", ".join(s.get("replicas") or [])), _esc(", ".join(s.get("in_sync") or [])),
                  f"[{style}]{_esc(state)}[/]" if style else _esc(state))
    return t


def _topics_table(topics: list[dict], title: str = "Topics") -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("topic", no_wrap=True)
    for col in ("shards", "replication", "retention ms", "retention bytes"):
        t.add_column(col, justify="right")
    for tp in topics:
        t.add_row(_esc(str(tp.get("name"))), str(tp.get("shards")), str(tp.get("replication_factor")),
                  _dash(tp.get("retention_ms")), _dash(tp.get("retention_bytes")))
    return t


def _handoff_line(h: dict) -> str:
    """Hinted handoff on this node: queued hints and bytes, per shard, and the counters."""
    queues = ", ".join(f"{shard} {q.get('hints', 0)} ({q.get('bytes', 0)} B)"
                       for shard, q in (h.get("queues") or {}).items())
    return (f"{h.get('hints', 0)} hints queued, {h.get('bytes', 0)} of {_dash(h.get('bytes_max'))} bytes"
            + (f" [{queues}]" if queues else "")
            + f"; stored {h.get('stored', 0)}, drained {h.get('drained', 0)}, dropped "
              f"{h.get('dropped_bytes', 0)} (full) {h.get('dropped_age', 0)} (age) "
              f"{h.get('dropped_refused', 0)} (refused)")


def _status_panel(s: dict) -> Panel:
    ag = s.get("agency") or {}
    ep = s.get("endpoints") or {}
    rows = [
        ("node", s.get("node_id")),
        ("cluster", s.get("cluster_id")),
        ("version", s.get("version")),
        ("uptime", f"{float(s.get('uptime_s') or 0):.1f}s"),
        ("endpoints", "  ".join(f"{k} {v}" for k, v in ep.items() if v)),
        ("tls", "on (TLS only on the client, MQTT and HTTP ports)" if s.get("tls") else "off"),
        ("agency", f"this node is {ag.get('role')}; leader {_dash(ag.get('leader'))}, term {ag.get('term')}, "
                   f"commit index {ag.get('commit_index')}"),
        ("voters", ", ".join(ag.get("voters") or [])),
        ("learners", ", ".join(ag.get("learners") or []) or "-"),
        ("replicas", s.get("replicas")),
        ("handoff", _handoff_line(s.get("handoff") or {})),
    ]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for k, v in rows:
        grid.add_row(k, _esc(_dash(v)))
    return Panel(grid, title="Chorus", title_align="left", expand=False)


# --------------------------------------------------------------------------
# Commands


def status(url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Show this node's view of the cluster: agency, endpoints and nodes."""
    c = _Ctx(url, timeout, as_json)
    s = c.call("GET", "status")
    if as_json:
        return c.print_json(s)
    out.print(_status_panel(s))
    out.print(_nodes_table(s.get("nodes") or [], self_id=s.get("node_id", ""),
                           leader=(s.get("agency") or {}).get("leader")))


nodes_app = typer.Typer(help="List the cluster's nodes; promote a joined node to an agency voter.")


@nodes_app.callback(invoke_without_command=True)
def nodes(ctx: typer.Context, url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
          as_json: JsonOpt = False) -> None:
    """List the cluster's nodes, their agency role and whether they are alive."""
    if ctx.invoked_subcommand is not None:
        return
    c = _Ctx(url, timeout, as_json)
    ns = c.call("GET", "nodes")
    if as_json:
        return c.print_json(ns)
    out.print(_nodes_table(ns))


@nodes_app.command("promote")
def nodes_promote(node_id: Annotated[str, typer.Argument(help="a live agency learner, e.g. a node that joined")],
                  url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                  as_json: JsonOpt = False) -> None:
    """Make an agency learner a voter (one at a time; it must be alive).

    A node that joins with ``--join`` replicates the agency as a learner; a
    voter also counts for the agency's quorum, so promote nodes until the
    agency has three (or five) voters on separate machines."""
    c = _Ctx(url, timeout, as_json)
    r = c.call("POST", f"nodes/{_quote(node_id)}/promote")
    if as_json:
        return c.print_json(r)
    out.print(f"[bold]{_esc(node_id)}[/] is now an agency voter "
              f"(voters {_esc(', '.join(r.get('voters') or []))}; "
              f"learners {_esc(', '.join(r.get('learners') or []) or '-')})")


def shards(url: UrlOpt = DEFAULT_URL,
           topic: Annotated[Optional[str], typer.Option("--topic", help="only this topic's shards")] = None,
           timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """List shards with their leader, epoch, replicas and in-sync set."""
    c = _Ctx(url, timeout, as_json)
    ss = c.call("GET", "shards", query={"topic": topic})
    if as_json:
        return c.print_json(ss)
    out.print(_shards_table(ss))


topics_app = typer.Typer(help="Create, list, describe and delete topics.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="full topic name: tenant/product/component/topic")]


@topics_app.command("create")
def topics_create(
    name: NameArg,
    shards_: Annotated[Optional[int], typer.Option("--shards", min=1, help="number of shards (default 1)")] = None,
    replication_factor: Annotated[Optional[int], typer.Option(
        "--replication-factor", "-r", min=1, help="replicas per shard (default min(3, nodes))")] = None,
    retention_ms: Annotated[Optional[int], typer.Option("--retention-ms", min=0, help="keep records this long")] = None,
    retention_bytes: Annotated[Optional[int], typer.Option(
        "--retention-bytes", min=0, help="keep at most this many bytes per shard")] = None,
    shard_group_ms: Annotated[Optional[int], typer.Option(
        "--shard-group-ms", min=1000, help="keep records in shard groups of this many ms (e.g. 3600000 = 1 h): "
        "each group gets its own shards on the nodes of its time, whole groups past --retention-ms are "
        "dropped")] = None,
    url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False,
) -> None:
    """Create a topic."""
    c = _Ctx(url, timeout, as_json)
    spec: dict[str, Any] = {"name": name}
    for key, v in (("shards", shards_), ("replication_factor", replication_factor),
                   ("retention_ms", retention_ms), ("retention_bytes", retention_bytes),
                   ("shard_group_ms", shard_group_ms)):
        if v is not None:
            spec[key] = v
    topic = c.call("POST", "topics", body=spec)
    if as_json:
        return c.print_json(topic)
    out.print(f"created topic [bold]{_esc(str(topic.get('name', name)))}[/]")
    out.print(_topics_table([topic], title=""))


@topics_app.command("list")
def topics_list(url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                as_json: JsonOpt = False) -> None:
    """List topics."""
    c = _Ctx(url, timeout, as_json)
    ts = c.call("GET", "topics")
    if as_json:
        return c.print_json(ts)
    if not ts:
        out.print("no topics")
        return
    out.print(_topics_table(ts))


@topics_app.command("describe")
def topics_describe(name: NameArg, url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                    as_json: JsonOpt = False) -> None:
    """Show a topic's settings and its shards."""
    c = _Ctx(url, timeout, as_json)
    topic = c.call("GET", f"topics/{_quote(name)}")
    ss = c.call("GET", "shards", query={"topic": name})
    if as_json:
        return c.print_json({"topic": topic, "shards": ss})
    out.print(_topics_table([topic], title="Topic"))
    out.print(_shards_table(ss))


@topics_app.command("delete")
def topics_delete(name: NameArg,
                  yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
                  url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                  as_json: JsonOpt = False) -> None:
    """Delete a topic and all its records."""
    c = _Ctx(url, timeout, as_json)
    if not yes and not typer.confirm(f"Delete topic {name} and all its records?", default=False):
        err.print("not deleted")
        raise typer.Exit(EXIT_API_ERROR)
    topic = c.call("DELETE", f"topics/{_quote(name)}")
    if as_json:
        return c.print_json(topic)
    out.print(f"deleted topic [bold]{_esc(str(topic.get('name', name)))}[/]")


@topics_app.command("truncate-shards")
def topics_truncate_shards(name: NameArg, url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                           as_json: JsonOpt = False) -> None:
    """Close a topic's current shard group at once: the next writes open a new
    group, placed on the nodes of the cluster now (e.g. after adding nodes)."""
    c = _Ctx(url, timeout, as_json)
    result = c.call("POST", f"topics/{_quote(name)}/truncate-shards")
    if as_json:
        return c.print_json(result)
    groups = result.get("groups") or []
    out.print(f"truncated topic [bold]{_esc(name)}[/]: {len(groups)} shard group(s)")
    for g in groups:
        out.print(f"  group {g['id']}: {g['start_ms']} .. {g['end_ms']} ms, shards {g['shards']}")


def _tls_everywhere(*apps: typer.Typer) -> None:
    """Give every command (and group callback) of ``apps`` ``--tls`` and ``--ca-file``
    (and ``--user``, ``--password``, ``--data-dir``)."""
    for a in apps:
        for cmd in a.registered_commands:
            cmd.callback = with_login(with_tls(cmd.callback))
        if a.registered_callback is not None and a.registered_callback.callback is not None:
            a.registered_callback.callback = with_login(with_tls(a.registered_callback.callback))
        _tls_everywhere(*(g.typer_instance for g in a.registered_groups if g.typer_instance is not None))


def register(app: typer.Typer) -> None:
    """Add ``status``, ``shards`` and the ``nodes``, ``topics`` and ``mqtt`` groups to ``app``."""
    app.command("status")(with_login(with_tls(status)))
    app.add_typer(nodes_app, name="nodes")
    app.add_typer(topics_app, name="topics")
    from runtime.moves_cli import register as register_moves
    from runtime.mqtt_cli import mqtt_app
    from runtime.users_cli import users_app

    moves_apps = register_moves(app, nodes_app)  # shards (list, move, moves), nodes drain/remove, cluster
    app.add_typer(mqtt_app, name="mqtt")
    app.add_typer(users_app, name="users")
    _tls_everywhere(nodes_app, topics_app, mqtt_app, users_app, *moves_apps)
