"""``brokerctl shards``, ``shards move``, ``nodes drain``, ``nodes remove``
and ``cluster rebalance``: moving data between nodes (actors/moves.py)
over the HTTP API."""
from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.rebalance import load_of, plan_rebalance
from runtime.admin_cli import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    EXIT_API_ERROR,
    JsonOpt,
    TimeoutOpt,
    UrlOpt,
    _Ctx,
    _esc,
    _fail,
    _quote,
    _shards_table,
    out,
)

PHASES = ("requested", "learning", "joined", "done")
POLL_S = 0.5

shards_app = typer.Typer(help="List shards, move a shard's replica.", invoke_without_command=True)
cluster_app = typer.Typer(help="Cluster-wide operations: rebalance.", no_args_is_help=True)

WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="follow the work until it is done")]
WaitTimeoutOpt = Annotated[float, typer.Option("--wait-timeout", min=1.0,
                                               help="give up following after this many seconds")]


@shards_app.callback()
def shards(ctx: typer.Context, url: UrlOpt = DEFAULT_URL,
           topic: Annotated[Optional[str], typer.Option("--topic", help="only this topic's shards")] = None,
           timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """List shards with their leader, epoch, replicas and in-sync set."""
    if ctx.invoked_subcommand is not None:
        return
    c = _Ctx(url, timeout, as_json)
    ss = c.call("GET", "shards", query={"topic": topic})
    if as_json:
        return c.print_json(ss)
    out.print(_shards_table(ss))


def _move_of(c: _Ctx, shard: str) -> dict | None:
    return next((m for m in c.call("GET", "moves")["moves"] if m.get("shard") == shard), None)


def _follow_moves(c: _Ctx, shards: dict[str, tuple[str, str]], deadline_s: float, title: str) -> dict[str, dict]:
    """Poll until every move of ``shards`` (shard -> (from, to)) finished or
    rolled back; a bar per move (its phase) and one for the whole.  A
    shard's earlier move, which a node one poll behind may still show, is
    not taken for this one."""
    final: dict[str, dict] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[phase]}"),
                  TimeElapsedColumn(), console=out, transient=False) as bar:
        total = bar.add_task(title, total=len(shards), phase="")
        tasks = {s: bar.add_task(f"  {s}", total=len(PHASES) - 1, phase="requested") for s in shards}
        while len(final) < len(shards):
            if time.monotonic() > deadline_s:
                break
            r = c.poll("GET", "moves")
            moves = {m.get("shard"): m for m in r["moves"]} if r else {}
            if r is None:
                bar.update(total, phase="(no answer; asking again)")
            for s in shards:
                if s in final:
                    continue
                m = moves.get(s)
                if m is None or (m.get("from"), m.get("to")) != shards[s]:
                    continue
                phase = str(m.get("phase", "requested"))
                step = PHASES.index(phase) if phase in PHASES else len(PHASES) - 1
                bar.update(tasks[s], completed=step, phase=phase + (" (leader handed over)" if m.get("handed_over")
                                                                     else ""))
                if phase in ("done", "rolled_back"):
                    final[s] = m
                    bar.advance(total)
            if len(final) < len(shards):
                time.sleep(POLL_S)
    return final


def _report(final: dict[str, dict], wanted: list[str]) -> None:
    bad = False
    for s in wanted:
        m = final.get(s)
        if m is None:
            out.print(f"[yellow]{_esc(s)}: still moving; follow it with brokerctl shards moves[/]")
            bad = True
        elif m.get("phase") == "rolled_back":
            out.print(f"[red]{_esc(s)}: rolled back: {_esc(str(m.get('reason', '?')))}[/]")
            bad = True
        else:
            out.print(f"[green]{_esc(s)}: moved {_esc(m['from'])} -> {_esc(m['to'])}[/]")
    if bad:
        raise typer.Exit(EXIT_API_ERROR)


def _request_move(c: _Ctx, topic: str, index: int, frm: str, to: str, deadline_s: float) -> None:
    """Ask for a move; an answer lost to a timeout (503, or none) is asked
    again unless the move is already recorded as running."""
    shard = f"{topic}#{index}"
    while True:
        if c.poll("POST", "shards/move", body={"topic": topic, "shard": index, "from": frm, "to": to}) is not None:
            return
        r = c.poll("GET", "moves")
        m = next((x for x in r["moves"] if x.get("shard") == shard), None) if r else None
        if m is not None and m.get("from") == frm and m.get("to") == to and m.get("phase") in PHASES:
            return
        if time.monotonic() > deadline_s:
            _fail(EXIT_API_ERROR, f"no node accepted the move of {shard} {frm} -> {to} in time")
        time.sleep(POLL_S)


@shards_app.command("move")
def shards_move(topic: Annotated[str, typer.Argument(help="tenant/product/component/topic")],
                shard: Annotated[int, typer.Argument(min=0, help="the shard's index")],
                frm: Annotated[str, typer.Option("--from", help="the node that holds the replica now")],
                to: Annotated[str, typer.Option("--to", help="the node to move it to")],
                url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False,
                wait: WaitOpt = True, wait_timeout: WaitTimeoutOpt = 3600.0) -> None:
    """Move one replica of a shard to another node without downtime.

    The target copies the log as a learner, joins the in-sync set, takes
    over the leadership if the source led, and only then is the source
    removed.  Writes and consumers keep working throughout."""
    c = _Ctx(url, timeout, as_json)
    mv = c.call("POST", "shards/move", body={"topic": topic, "shard": shard, "from": frm, "to": to})
    name = f"{topic}#{shard}"
    if as_json and not wait:
        return c.print_json(mv)
    if not wait:
        out.print(f"move of {_esc(name)} {_esc(frm)} -> {_esc(to)} requested; follow it with brokerctl shards moves")
        return
    final = _follow_moves(c, {name: (frm, to)}, time.monotonic() + wait_timeout, "move")
    if as_json:
        return c.print_json(final.get(name) or _move_of(c, name) or {})
    _report(final, [name])


def _moves_table(moves: list[dict]) -> Table:
    t = Table(title="Moves", title_justify="left")
    for col in ("shard", "from", "to", "phase", "by", "reason"):
        t.add_column(col)
    for m in moves:
        t.add_row(*(_esc(str(m.get(k, "") or "")) for k in ("shard", "from", "to", "phase", "by", "reason")))
    return t


@shards_app.command("moves")
def shards_moves(url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Running moves (and each shard's last finished one) and node drains."""
    c = _Ctx(url, timeout, as_json)
    r = c.call("GET", "moves")
    if as_json:
        return c.print_json(r)
    out.print(_moves_table(r["moves"]))
    if r["drains"]:
        t = Table(title="Drains", title_justify="left")
        for col in ("node", "state", "replicas left"):
            t.add_column(col)
        for d in r["drains"]:
            t.add_row(_esc(d["node_id"]), _esc(str(d["state"])), str(d["replicas"]))
        out.print(t)


def nodes_drain(node_id: Annotated[str, typer.Argument(help="the node to empty")],
                url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False,
                cancel: Annotated[bool, typer.Option("--cancel", help="stop draining (moves under way finish)")] = False,
                wait: WaitOpt = True, wait_timeout: WaitTimeoutOpt = 3600.0) -> None:
    """Move every replica and leadership off a node, a few shards at a time."""
    c = _Ctx(url, timeout, as_json)
    r = c.call("POST", f"nodes/{_quote(node_id)}/drain", query={"cancel": "true"} if cancel else None)
    if cancel or not wait:
        return c.print_json(r) if as_json else out.print(
            f"{_esc(node_id)}: {'drain cancelled' if cancel else 'draining; follow it with brokerctl shards moves'}")
    deadline = time.monotonic() + wait_timeout
    left = start = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=out) as bar:
        task = None
        while time.monotonic() < deadline:
            moves = c.poll("GET", "moves")
            if moves is None:
                time.sleep(POLL_S)
                continue
            left = int(moves["replicas"].get(node_id, 0))
            if start is None:
                start = max(left, 1)
                task = bar.add_task(f"draining {node_id}", total=start)
            bar.update(task, completed=start - left)
            if left == 0:
                break
            time.sleep(POLL_S)
    if as_json:
        return c.print_json({"node_id": node_id, "replicas_left": left})
    if left:
        _fail(EXIT_API_ERROR, f"{node_id} still holds {left} replica(s) after {wait_timeout:.0f} s")
    out.print(f"[green]{_esc(node_id)} is drained[/]; remove it with brokerctl nodes remove {_esc(node_id)}")


def nodes_remove(node_id: Annotated[str, typer.Argument(help="a drained node")],
                 url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Remove a drained node from the cluster (and from the agency).

    Refused while the node still holds a replica, or when it would leave an
    even number of agency voters."""
    c = _Ctx(url, timeout, as_json)
    r = c.call("DELETE", f"nodes/{_quote(node_id)}")
    if as_json:
        return c.print_json(r)
    out.print(f"removed [bold]{_esc(node_id)}[/] (agency voters {_esc(', '.join(r.get('voters') or []))})")


def _balance_table(title: str, shards: list[tuple[str, tuple[str, ...], str]], nodes: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("node", "replicas", "leaders"):
        t.add_column(col)
    for n, (reps, leads) in load_of(shards, nodes).items():
        t.add_row(_esc(n), str(reps), str(leads))
    return t


@cluster_app.command("rebalance")
def cluster_rebalance(url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False,
                      dry_run: Annotated[bool, typer.Option("--dry-run", help="only show the plan")] = False,
                      parallel: Annotated[int, typer.Option("--parallel", min=1, max=16,
                                                            help="moves at a time")] = 2,
                      wait_timeout: WaitTimeoutOpt = 3600.0) -> None:
    """Spread replicas and leaders evenly over the nodes: plan moves, show
    the plan, run them a few at a time."""
    c = _Ctx(url, timeout, as_json)
    ss = c.call("GET", "shards")
    nodes = c.call("GET", "nodes")
    drains = {d["node_id"] for d in c.call("GET", "moves")["drains"]}
    live = sorted(n["node_id"] for n in nodes if n.get("alive") and n["node_id"] not in drains)
    shards = [(s["shard"], tuple(s["replicas"]), s.get("leader") or "") for s in ss]
    plan = plan_rebalance(shards, live)
    after = {s: (r, l) for s, r, l in shards}
    for m in plan:
        reps, lead = after[m.shard]
        after[m.shard] = (tuple(m.to if n == m.frm else n for n in reps), m.to if m.leader else lead)
    projected = [(s, r, l) for s, (r, l) in after.items()]
    if as_json and dry_run:
        return c.print_json({"moves": [m.__dict__ for m in plan]})
    out.print(_balance_table("Before", shards, live))
    t = Table(title=f"Plan: {len(plan)} move(s)", title_justify="left")
    for col in ("shard", "from", "to", "leader"):
        t.add_column(col)
    for m in plan:
        t.add_row(_esc(m.shard), _esc(m.frm), _esc(m.to), "yes" if m.leader else "")
    out.print(t)
    out.print(_balance_table("After", projected, live))
    if dry_run or not plan:
        if not plan:
            out.print("[green]balanced: nothing to move[/]")
        return
    deadline = time.monotonic() + wait_timeout
    final: dict[str, dict] = {}
    done = 0
    while done < len(plan):
        batch: list = []  # up to --parallel moves, each of another shard (a shard moves one replica at a time)
        for m in plan[done:]:
            if len(batch) == parallel or any(b.shard == m.shard for b in batch):
                break
            batch.append(m)
        for m in batch:
            topic, _, idx = m.shard.rpartition("#")
            _request_move(c, topic, int(idx), m.frm, m.to, deadline)
        got = _follow_moves(c, {m.shard: (m.frm, m.to) for m in batch}, deadline,
                            f"moves {done + 1}-{done + len(batch)} of {len(plan)}")
        final.update(got)
        done += len(batch)
        if any(got.get(m.shard, {}).get("phase") != "done" for m in batch):
            break  # the rest of the plan assumed these moves: stop, say what happened
    _report(final, list(dict.fromkeys(m.shard for m in plan[:done])))
    if done < len(plan):
        _fail(EXIT_API_ERROR, f"stopped after {done} of {len(plan)} moves; run brokerctl cluster rebalance again")


def register(app: typer.Typer, nodes_app: typer.Typer) -> tuple[typer.Typer, ...]:
    """Add the commands; the caller gives the returned groups --tls and login."""
    nodes_app.command("drain")(nodes_drain)
    nodes_app.command("remove")(nodes_remove)
    app.add_typer(shards_app, name="shards")
    app.add_typer(cluster_app, name="cluster")
    return shards_app, cluster_app

