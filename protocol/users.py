"""Users and per-tenant permissions: the record format, password and token
hashing, verification, and every permission decision (pure functions).

Where users live
----------------
In the agency, one leaf per user: ``/chorus/users/<name>`` holds a JSON
object (:func:`new_record`)::

    {"name": "alice",
     "password": {"salt": "<hex>", "n": 16384, "r": 8, "p": 1, "hash": "<hex>"},   # scrypt
     "roles": ["consume:acme", "produce:acme"],
     "tokens": [{"id": "<hex>", "sha256": "<hex>"}]}

A password is never stored: only its scrypt hash with a per-user random
salt and the cost parameters it was made with (so they can be raised later
without invalidating old records).  A bearer token is a random secret shown
once; the record keeps its SHA-256 (the secret has 256 random bits, so a
fast hash is enough) under a short random id.  Salts and secrets come from
the caller (``runtime/``, with :mod:`secrets`): nothing here draws random
numbers, so the module is usable from actors.

Roles
-----
* ``admin``: everything, including user management and cluster administration;
* ``produce:<tenant>``, ``consume:<tenant>``, ``manage:<tenant>`` (create,
  alter and delete that tenant's topics and namespaces); ``<tenant>`` is a
  tenant name (as in topic names: 1-64 of ``A-Z a-z 0-9 . _ -``) or ``*``
  for every tenant.

A topic ``tenant/product/component/topic`` belongs to its first part.  An
MQTT topic's first level is its tenant; a filter whose first level is ``+``
or ``#`` reaches every tenant and needs the grant on ``*``; topics and
filters starting with ``$`` (``$SYS``-like, the server's own) need admin.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Iterable

USERS_ROOT = "/chorus/users"
BOOTSTRAP_PATH = "/chorus/auth/bootstrap"  # written once, with the first admin (runtime/authn.py)
ADMIN = "admin"
ACTIONS = ("produce", "consume", "manage")
DESCRIBE = "describe"  # any of ACTIONS on the tenant: see its topics, look them up
ANY_TENANT = "*"

SCRYPT_N = 1 << 14  # about 50 ms and 16 MiB per verification
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SCRYPT_MAXMEM = 64 << 20
SALT_BYTES = 16

USERS_MAX = 1000
ROLES_PER_USER_MAX = 256
TOKENS_PER_USER_MAX = 16
PASSWORD_CHARS_MAX = 1024
PASSWORD_CHARS_MIN = 8

_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class UserError(ValueError):
    """A user operation that cannot be done: an HTTP status, a stable code and a text."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> UserError:
    return UserError(400, "bad_request", message)


# --------------------------------------------------------------- syntax


def check_name(name: Any) -> str:
    """A user name: 1-64 of ``A-Z a-z 0-9 . _ @ -``, not ``.`` or ``..``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise _bad(f"user name {name!r}: 1-64 characters of A-Z a-z 0-9 . _ @ -")
    return name


def check_password(password: Any) -> str:
    if not isinstance(password, str):
        raise _bad("the password must be a string")
    if not PASSWORD_CHARS_MIN <= len(password) <= PASSWORD_CHARS_MAX:
        raise _bad(f"the password must be {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters long")
    return password


def parse_role(role: Any) -> tuple[str, str]:
    """``"admin"`` -> ``("admin", "")``; ``"produce:acme"`` -> ``("produce", "acme")``;
    raises :class:`UserError` (400) naming the accepted forms."""
    if role == ADMIN:
        return ADMIN, ""
    if isinstance(role, str):
        action, sep, tenant = role.partition(":")
        if sep and action in ACTIONS and (tenant == ANY_TENANT or (
                _TENANT_RE.fullmatch(tenant) and tenant not in (".", ".."))):
            return action, tenant
    raise _bad(f"role {role!r}: expected 'admin' or ACTION:TENANT with ACTION one of "
               f"{', '.join(ACTIONS)} and TENANT a tenant name or '*' (e.g. 'produce:acme', 'consume:*')")


def tenant_of(topic: str) -> str:
    """The tenant of ``tenant/product/component/topic`` (its first part)."""
    return topic.split("/", 1)[0]


# ------------------------------------------------------------- hashing


def hash_password(password: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> dict:
    """The stored form of ``password``: salt, scrypt parameters and hash (hex)."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=SCRYPT_DKLEN,
                            maxmem=SCRYPT_MAXMEM)
    return {"salt": salt.hex(), "n": n, "r": r, "p": p, "hash": digest.hex()}


def verify_password(record: Any, password: str) -> bool:
    """Whether ``password`` is the record's (scrypt, compared in constant time).
    Costs tens of milliseconds: see runtime/authn.py for where it runs."""
    try:
        pw = record["password"]
        salt, want = bytes.fromhex(pw["salt"]), bytes.fromhex(pw["hash"])
        got = hashlib.scrypt(password.encode(), salt=salt, n=int(pw["n"]), r=int(pw["r"]), p=int(pw["p"]),
                             dklen=len(want), maxmem=SCRYPT_MAXMEM)
    except (KeyError, TypeError, ValueError):
        return False
    return hmac.compare_digest(got, want)


def credential_key(name: str, password: str, record: Any) -> str:
    """What a cache of successful verifications is keyed by: a hash of the
    name, the password and the record's credential (salt and hash), so a
    changed password (or a deleted and re-created user) misses the cache."""
    pw = record.get("password", {}) if isinstance(record, dict) else {}
    h = hashlib.sha256()
    for part in (name, password, str(pw.get("salt", "")), str(pw.get("hash", ""))):
        data = part.encode()
        h.update(len(data).to_bytes(4, "big") + data)
    return h.hexdigest()


TOKEN_PREFIX = "chorus_"


def make_token(name: str, token_id: str, secret: str) -> str:
    """The bearer token handed to the user once: ``chorus_<name>.<id>.<secret>``."""
    return f"{TOKEN_PREFIX}{name}.{token_id}.{secret}"


def parse_token(token: str) -> tuple[str, str, str] | None:
    """``(name, token id, secret)`` of a token made by :func:`make_token`, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    rest, _, secret = token[len(TOKEN_PREFIX):].rpartition(".")
    name, _, token_id = rest.rpartition(".")
    if not name or not token_id or not secret:
        return None
    return name, token_id, secret


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_token(record: Any, token_id: str, secret: str) -> bool:
    want = token_hash(secret)
    for t in record.get("tokens", ()) if isinstance(record, dict) else ():
        if isinstance(t, dict) and t.get("id") == token_id and hmac.compare_digest(str(t.get("sha256", "")), want):
            return True
    return False


# ---------------------------------------------------------- decisions


@dataclass(frozen=True)
class Grants:
    """What one user may do, parsed once from its roles."""

    name: str
    admin: bool = False
    tenants: frozenset = frozenset()  # (action, tenant or "*")

    @classmethod
    def of(cls, record: Any) -> "Grants":
        roles = record.get("roles", ()) if isinstance(record, dict) else ()
        pairs = set()
        admin = False
        for role in roles:
            try:
                action, tenant = parse_role(role)
            except UserError:
                continue  # a role this version does not know grants nothing
            if action == ADMIN:
                admin = True
            else:
                pairs.add((action, tenant))
        return cls(str(record.get("name", "")) if isinstance(record, dict) else "", admin, frozenset(pairs))

    def allows(self, action: str, tenant: str) -> bool:
        """May this user do ``action`` (produce, consume, manage, describe or
        admin) on ``tenant``?"""
        if self.admin:
            return True
        if action == DESCRIBE:
            return any(self.allows(a, tenant) for a in ACTIONS)
        if action not in ACTIONS or tenant.startswith("$"):
            return False
        return (action, tenant) in self.tenants or (action, ANY_TENANT) in self.tenants

    def sees_every_tenant(self) -> bool:
        return self.admin or any(t == ANY_TENANT for _, t in self.tenants)

    @property
    def mqtt_usable(self) -> bool:
        """Whether MQTT is of any use to this user (CONNACK 5 otherwise)."""
        return self.admin or any(a in ("produce", "consume") for a, _ in self.tenants)


def denial(grants: Grants | None, action: str, tenant: str) -> str:
    """A clear refusal text for people."""
    who = f"user {grants.name!r}" if grants is not None else "this user"
    if action == ADMIN:
        return f"permission denied: {who} is not an admin (role 'admin' needed)"
    if action == DESCRIBE:
        return (f"permission denied: {who} has no role on tenant {tenant!r} "
                f"(needs produce:{tenant}, consume:{tenant} or manage:{tenant})")
    return f"permission denied: {who} may not {action} on tenant {tenant!r} (needs role {action}:{tenant})"


def mqtt_tenant(name: str) -> str:
    """The tenant of an MQTT topic or filter (its first level; a shared
    subscription's filter after ``$share/<group>/``); ``*`` for a filter
    whose first level is a wildcard."""
    if name.startswith("$share/"):
        rest = name[len("$share/"):].partition("/")[2]
        if rest:
            name = rest
    first = name.split("/", 1)[0]
    return ANY_TENANT if first in ("+", "#") else first


def mqtt_allows(grants: Grants, action: str, name: str) -> bool:
    """May this user publish to (``produce``) or subscribe to (``consume``)
    the MQTT topic or filter ``name``?  ``$`` topics need admin."""
    tenant = mqtt_tenant(name)
    if tenant.startswith("$"):
        return grants.admin
    return grants.allows(action, tenant)


# ----------------------------------------------------------- records


def new_record(name: str, password: dict, roles: Iterable[str] = ()) -> dict:
    """A user's agency record; ``password`` is :func:`hash_password`'s result."""
    check_name(name)
    return {"name": name, "password": password, "roles": _roles(roles), "tokens": []}


def _roles(roles: Iterable[str]) -> list[str]:
    out = sorted(set(roles))
    for role in out:
        parse_role(role)
    if len(out) > ROLES_PER_USER_MAX:
        raise _bad(f"at most {ROLES_PER_USER_MAX} roles per user")
    return out


def public_view(record: dict) -> dict:
    """What the API shows of a user: never a hash or salt."""
    return {"name": record.get("name"), "roles": list(record.get("roles", ())),
            "tokens": [t.get("id") for t in record.get("tokens", ()) if isinstance(t, dict)]}


def _admins(users: dict) -> set[str]:
    return {n for n, r in users.items() if isinstance(r, dict) and ADMIN in r.get("roles", ())}


def plan_change(users: dict, op: str, name: str, arg: Any = None) -> dict | None:
    """The user's new record after ``op`` on the current ``users`` (name ->
    record), or None to delete it; raises :class:`UserError` for what cannot
    be done.  Ops: ``create`` (arg: the record), ``delete``, ``grant`` /
    ``revoke`` (arg: a role), ``passwd`` (arg: hash_password's result),
    ``add_token`` (arg: ``{"id", "sha256"}``), ``drop_token`` (arg: an id).

    The last admin can be neither deleted nor stripped of its role: the
    caller applies the result on the precondition that ``users`` is still
    what it read, so two concurrent changes cannot each leave the other's
    admin as the last one."""
    check_name(name)
    if op == "create":
        if name in users:
            raise UserError(409, "conflict", f"user {name!r} already exists")
        if len(users) >= USERS_MAX:
            raise UserError(409, "conflict", f"at most {USERS_MAX} users")
        if not isinstance(arg, dict) or arg.get("name") != name:
            raise _bad("a new user needs its record")
        return dict(arg, roles=_roles(arg.get("roles", ())))
    record = users.get(name)
    if not isinstance(record, dict):
        raise UserError(404, "not_found", f"no user {name!r}")
    last_admin = _admins(users) == {name}
    if op == "delete":
        if last_admin:
            raise UserError(409, "conflict", f"{name!r} is the last admin: grant 'admin' to another user first")
        return None
    if op in ("grant", "revoke"):
        parse_role(arg)
        roles = set(record.get("roles", ()))
        if op == "grant":
            roles.add(arg)
        else:
            if arg not in roles:
                raise UserError(404, "not_found", f"user {name!r} does not have role {arg!r}")
            if arg == ADMIN and last_admin:
                raise UserError(409, "conflict", f"{name!r} is the last admin: grant 'admin' to another user first")
            roles.discard(arg)
        return dict(record, roles=_roles(roles))
    if op == "passwd":
        if not isinstance(arg, dict) or not {"salt", "hash", "n", "r", "p"} <= set(arg):
            raise _bad("a new password needs its hash")
        return dict(record, password=arg)
    if op == "add_token":
        tokens = [t for t in record.get("tokens", ()) if isinstance(t, dict)]
        if len(tokens) >= TOKENS_PER_USER_MAX:
            raise UserError(409, "conflict", f"user {name!r} has {TOKENS_PER_USER_MAX} tokens already; "
                                             "revoke one first")
        if not isinstance(arg, dict) or not {"id", "sha256"} <= set(arg):
            raise _bad("a new token needs its id and hash")
        return dict(record, tokens=tokens + [{"id": str(arg["id"]), "sha256": str(arg["sha256"])}])
    if op == "drop_token":
        tokens = [t for t in record.get("tokens", ()) if isinstance(t, dict)]
        kept = [t for t in tokens if t.get("id") != arg]
        if len(kept) == len(tokens):
            raise UserError(404, "not_found", f"user {name!r} has no token {arg!r}")
        return dict(record, tokens=kept)
    raise _bad(f"unknown user operation {op!r}")
