"""``brokerctl users``: users and their roles, over the HTTP API
(``/api/v1/users``; admin only).  See ``protocol/users.py`` for the roles:
``admin``, or ``produce``/``consume``/``manage`` on a tenant (``*``: every
tenant)."""
from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from protocol.users import UserError, check_password, parse_role
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
    out,
)

users_app = typer.Typer(help="Users and their roles: admin, produce|consume|manage:TENANT (TENANT or '*').",
                        no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="the user's name (1-64 of A-Z a-z 0-9 . _ @ -)")]
Role = Annotated[str, typer.Argument(help="admin, or produce:TENANT, consume:TENANT, manage:TENANT "
                                          "(TENANT a tenant name or '*' for every tenant)")]
NewPasswordOpt = Annotated[Optional[str], typer.Option(
    "--new-password", help="the user's password (8-1024 characters) [asked for]")]


def _users_table(users: list[dict]) -> Table:
    t = Table(title="Users", title_justify="left")
    for col in ("user", "roles", "tokens"):
        t.add_column(col)
    for u in users:
        t.add_row(_esc(str(u.get("name"))), _esc(", ".join(u.get("roles") or []) or "-"),
                  _esc(", ".join(u.get("tokens") or []) or "-"))
    return t


def _check_role(role: str) -> str:
    try:
        parse_role(role)
    except UserError as e:
        _fail(EXIT_API_ERROR, e.message)
    return role


def _new_password(given: str | None, name: str) -> str:
    if given is None:
        if not os.isatty(0):
            _fail(EXIT_API_ERROR, f"give the password of {name} with --new-password (no terminal to ask on)")
        given = typer.prompt(f"password of {name}", hide_input=True, confirmation_prompt=True)
    try:
        return check_password(given)
    except UserError as e:
        _fail(EXIT_API_ERROR, e.message)


def _do(url: str, timeout: float, as_json: bool, method: str, path: str, text: str, body: Any = None) -> None:
    """One call; prints ``text`` and the user it answers with (or its JSON)."""
    c = _Ctx(url, timeout, as_json)
    answer = c.call(method, path, body=body)
    if as_json:
        return c.print_json(answer)
    if text:
        out.print(text)
    if isinstance(answer, list) or "roles" in answer:
        out.print(_users_table(answer if isinstance(answer, list) else [answer]))


@users_app.command("list")
def users_list(url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """List the users, their roles and the ids of their tokens."""
    _do(url, timeout, as_json, "GET", "users", "")


@users_app.command("add")
def users_add(name: Name,
              role: Annotated[list[str], typer.Option("--role", help="a role to grant (repeatable)")] = [],
              new_password: NewPasswordOpt = None,
              url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Create a user (the password is asked for unless --new-password is given)."""
    roles = [_check_role(r) for r in role]
    body = {"name": name, "password": _new_password(new_password, name), "roles": roles}
    _do(url, timeout, as_json, "POST", "users", f"created user [bold]{_esc(name)}[/]", body)


@users_app.command("delete")
def users_delete(name: Name, url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                 as_json: JsonOpt = False) -> None:
    """Delete a user (never the last admin)."""
    _do(url, timeout, as_json, "DELETE", f"users/{_quote(name)}", f"deleted user [bold]{_esc(name)}[/]")


@users_app.command("grant")
def users_grant(name: Name, role: Role, url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                as_json: JsonOpt = False) -> None:
    """Grant a role to a user."""
    _do(url, timeout, as_json, "PUT", f"users/{_quote(name)}/roles/{_quote(_check_role(role))}",
        f"granted [bold]{_esc(role)}[/] to [bold]{_esc(name)}[/]")


@users_app.command("revoke")
def users_revoke(name: Name, role: Role, url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
                 as_json: JsonOpt = False) -> None:
    """Revoke a role from a user (never the last admin's 'admin')."""
    _do(url, timeout, as_json, "DELETE", f"users/{_quote(name)}/roles/{_quote(_check_role(role))}",
        f"revoked [bold]{_esc(role)}[/] from [bold]{_esc(name)}[/]")


@users_app.command("passwd")
def users_passwd(name: Name, new_password: NewPasswordOpt = None, url: UrlOpt = DEFAULT_URL,
                 timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Set a user's password (asked for unless --new-password is given)."""
    body = {"password": _new_password(new_password, name)}
    _do(url, timeout, as_json, "PATCH", f"users/{_quote(name)}", f"changed the password of [bold]{_esc(name)}[/]",
        body)


@users_app.command("token")
def users_token(name: Name,
                revoke: Annotated[Optional[str], typer.Option("--revoke", help="revoke the token with this id")] = None,
                url: UrlOpt = DEFAULT_URL, timeout: TimeoutOpt = DEFAULT_TIMEOUT_S, as_json: JsonOpt = False) -> None:
    """Make a bearer token for a user (shown this once), or --revoke one."""
    if revoke is not None:
        return _do(url, timeout, as_json, "DELETE", f"users/{_quote(name)}/tokens/{_quote(revoke)}",
                   f"revoked token [bold]{_esc(revoke)}[/] of [bold]{_esc(name)}[/]")
    c = _Ctx(url, timeout, as_json)
    t: Any = c.call("POST", f"users/{_quote(name)}/tokens")
    if as_json:
        return c.print_json(t)
    out.print(f"token [bold]{_esc(str(t.get('id')))}[/] for [bold]{_esc(name)}[/] (shown this once; use it as "
              f"'Authorization: Bearer TOKEN'):")
    typer.echo(str(t.get("token")))
