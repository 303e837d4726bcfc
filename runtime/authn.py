"""Authentication on a node's listeners: who is asking, may they, and how often.

The decisions are pure (``protocol/users.py``); this module is the part
that needs threads, clocks and randomness, so it lives in ``runtime/``:

* :class:`Authenticator`, one per listener process (the Dispatcher's I/O
  bridge serves the binary protocol and the HTTP API; the MqttFront's
  listener serves MQTT).  Its actor hands it the users it read from the
  agency (:meth:`Authenticator.set_users`); the I/O thread asks it to
  verify passwords and tokens and to decide requests.
* Password verification is scrypt (tens of ms): it runs once per
  connection (binary protocol, MQTT) or per HTTP request, in a small thread
  pool so the I/O loop keeps serving, never in an actor.  Successful
  verifications are cached, keyed by a hash of the user, the password and
  the record's salt and hash (``protocol.users.credential_key``), so a
  reconnect storm costs a dictionary look-up per connection, and a changed
  password misses the cache.  Failed ones are cached too (same key), so
  repeating one wrong password costs nothing either.  At most
  ``VERIFY_WAITING_MAX`` verifications wait for the pool; more are refused
  as "busy" (the client retries).
* :class:`RateLimiter`: a token bucket per user per listener process.
* :func:`bootstrap_admin`: the first start of a new cluster creates user
  ``admin`` with a random password (compare-and-set in the agency: exactly
  one node of a new cluster does it) and writes it to
  ``<data_dir>/admin.password`` (mode 0600).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

from protocol import frames as fr
from protocol.users import (
    ADMIN,
    BOOTSTRAP_PATH,
    DESCRIBE,
    SALT_BYTES,
    USERS_ROOT,
    Grants,
    credential_key,
    hash_password,
    new_record,
    parse_token,
    tenant_of,
    verify_password,
    verify_token,
)

log = logging.getLogger("chorus.auth")

ADMIN_PASSWORD_FILE = "admin.password"
CACHE_MAX = 4096  # verifications remembered (successes and failures)
VERIFY_WORKERS = 2
VERIFY_WAITING_MAX = 256


class Busy(Exception):
    """Too many password verifications are waiting: try again shortly."""


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def new_password() -> str:
    return secrets.token_urlsafe(18)


def new_token_parts() -> tuple[str, str]:
    """(token id, secret) for a new bearer token."""
    return secrets.token_hex(4), secrets.token_urlsafe(32)


# --------------------------------------------------------------- limits


class RateLimiter:
    """A token bucket per key: ``rate_per_s`` tokens a second, at most
    ``burst`` saved up (default: one second's worth).  A rate of 0 means
    unlimited."""

    def __init__(self, rate_per_s: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst if burst is not None else max(1.0, self.rate))
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, n: float = 1.0) -> float:
        """Take ``n`` tokens: 0.0 if there were enough, else the seconds
        until there will be (and nothing is taken)."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= 100_000:
                    self._buckets.clear()  # bounded: forgetting buckets only forgives
                b = self._buckets[key] = [self.burst, now]
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
            if b[0] >= n:
                b[0] -= n
                return 0.0
            return (n - b[0]) / self.rate

    def debit(self, key: str, n: float) -> float:
        """Take ``n`` tokens even if that leaves the bucket in debt; returns
        the seconds until it is out of debt (0.0 if it is not in debt)."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            b = self._buckets.setdefault(key, [self.burst, now])
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate) - n
            b[1] = now
            return max(0.0, -b[0] / self.rate)


# ---------------------------------------------------------- the view


class Authenticator:
    """See the module docstring.  ``enabled=False`` lets everyone do
    everything (``auth: false`` in a node's configuration)."""

    def __init__(self, *, enabled: bool = True, requests_per_s: float = 10_000.0,
                 burst: float | None = None) -> None:
        self.enabled = enabled
        self.limiter = RateLimiter(requests_per_s, burst)
        self._records: dict[str, dict] = {}
        self._grants: dict[str, Grants] = {}
        self._tree: Any = None
        self.loaded = False
        self._cache: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._waiting = 0
        self.stats = {"verified": 0, "cached": 0, "failed": 0, "denied": 0, "throttled": 0}

    # -------------------------------------------------------- users
    def set_users(self, tree: Any) -> None:
        """The users subtree as read from the agency (name -> record).
        Called from the actor's thread; the swap is one assignment each."""
        if self.loaded and tree == self._tree:
            return
        records = {n: r for n, r in (tree or {}).items() if isinstance(r, dict)} if isinstance(tree, dict) else {}
        self._grants = {n: Grants.of(dict(r, name=n)) for n, r in records.items()}
        self._records = records
        self._tree = dict(tree) if isinstance(tree, dict) else tree  # the caller may change its own later
        # A cluster with users always has an admin (the last one cannot be
        # removed): a view without any is one not caught up yet -- a
        # restarted node's agency peer before it learned the commit index --
        # and logins wait for a real one (retriable refusals), not fail.
        self.loaded = bool(records)

    def record(self, name: str) -> dict | None:
        return self._records.get(name)

    def grants(self, name: str) -> Grants | None:
        """The user's current grants (None: no such user any more)."""
        return self._grants.get(name)

    # -------------------------------------------------- verification
    def _cached(self, key: str) -> bool | None:
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def _remember(self, key: str, ok: bool) -> None:
        with self._cache_lock:
            self._cache[key] = ok
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_MAX:
                self._cache.popitem(last=False)

    def check_cached(self, name: str, password: str) -> bool | None:
        """True/False when the answer is known without scrypt, else None."""
        record = self._records.get(name)
        if record is None:
            return False
        return self._cached(credential_key(name, password, record))

    async def verify(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s (scrypt in the pool unless cached).
        Raises :class:`Busy` when too many verifications are waiting."""
        record = self._records.get(name)
        if record is None or not password:
            self.stats["failed"] += 1
            return False
        key = credential_key(name, password, record)
        hit = self._cached(key)
        if hit is not None:
            self.stats["cached"] += 1
            if not hit:
                self.stats["failed"] += 1
            return hit
        if self._waiting >= VERIFY_WAITING_MAX:
            raise Busy(f"{self._waiting} logins are being verified; try again in a moment")
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(VERIFY_WORKERS, thread_name_prefix="chorus-auth")
        self._waiting += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(self._pool, verify_password, record, password)
        finally:
            self._waiting -= 1
        self._remember(key, ok)
        self.stats["verified" if ok else "failed"] += 1
        return ok

    def verify_token(self, token: str) -> str | None:
        """The user a bearer token belongs to, or None."""
        parts = parse_token(token)
        if parts is None:
            return None
        name, token_id, secret = parts
        record = self._records.get(name)
        return name if record is not None and verify_token(record, token_id, secret) else None

    # ------------------------------------------------------ decisions
    def throttle(self, name: str) -> float:
        """0.0 if ``name`` may make one more request now, else the seconds to wait."""
        wait = self.limiter.take(name)
        if wait:
            self.stats["throttled"] += 1
        return wait

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# -------------------------------------------- binary-protocol requests


def frame_needs(msg: Any) -> list[tuple[str, str]]:
    """The (action, tenant) pairs a binary-protocol request needs."""
    if isinstance(msg, fr.ProduceRequest):
        return [("produce", tenant_of(msg.topic))]
    if isinstance(msg, (fr.FetchRequest, fr.SubscribeRequest, fr.AckRequest, fr.CommitRequest, fr.QueryRequest,
                        fr.GroupFetchRequest)):
        return [("consume", tenant_of(msg.topic))]
    if isinstance(msg, fr.GroupsRequest):
        return [(DESCRIBE, tenant_of(msg.topic))]
    if isinstance(msg, fr.MetadataRequest):
        return [(DESCRIBE, tenant_of(t)) for t in msg.topics]  # every topic: the answer is filtered
    return [(ADMIN, "")]  # a request type this table does not know: admins only


def filter_metadata(grants: Grants, msg: Any) -> Any:
    """A MetadataResponse with only the topics ``grants`` may see."""
    if grants.sees_every_tenant() or not isinstance(msg, fr.MetadataResponse):
        return msg
    return fr.MetadataResponse(topics=tuple(t for t in msg.topics if grants.allows(DESCRIBE, tenant_of(t.topic))))


# ------------------------------------------------------------ bootstrap


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_admin_password(data_dir: str | Path) -> str | None:
    """The bootstrap admin password kept in ``data_dir`` (or, for a local
    cluster's base directory, in one of its ``n*`` subdirectories), else None."""
    base = Path(data_dir)
    candidates = [base / ADMIN_PASSWORD_FILE]
    try:
        candidates += sorted(p / ADMIN_PASSWORD_FILE for p in base.iterdir() if p.is_dir())
    except OSError:
        pass
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def bootstrap_admin(ask: Callable[[Any, float], Any], node_id: str, data_dir: str | Path, *,
                    timeout_s: float = 30.0, wall: Callable[[], float] = time.time) -> str:
    """Create user ``admin`` if this cluster never had one, exactly once
    across its nodes: a transaction with the precondition that
    ``/chorus/auth/bootstrap`` is absent.  ``ask(request, timeout_s)`` sends
    an :class:`~protocol.agency.AgencyRequest` to the local agency peer and
    returns its reply (or None).

    Returns ``"created"`` (this node did it: the password is in
    ``<data_dir>/admin.password``), ``"exists"`` (the cluster has it) or
    ``"undecided"`` (no answer within ``timeout_s``; call again later).
    The password file is written before the transaction (as ``.new``) and
    renamed once it committed, so a crash in between loses nothing: the
    next start finds the marker naming this node and a stored hash the
    pending password verifies against."""
    from protocol.agency import OK, AgencyRequest, Mutation, Precondition, Txn

    data = Path(data_dir)
    final, pending = data / ADMIN_PASSWORD_FILE, data / (ADMIN_PASSWORD_FILE + ".new")
    if final.exists():
        return "exists"
    password = pending.read_text().strip() if pending.exists() else ""
    if not password:
        password = new_password()
        write_secret_file(pending, password)
    record = new_record(ADMIN, hash_password(password, new_salt()), [ADMIN])
    txn = Txn((Mutation(f"{USERS_ROOT}/{ADMIN}", "set", record),
               Mutation(BOOTSTRAP_PATH, "set", {"node": node_id, "at": wall()})),
              (Precondition(BOOTSTRAP_PATH, "absent"),))
    client = f"bootstrap-{node_id}-{secrets.token_hex(4)}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = ask(AgencyRequest(client, 1, txn), min(5.0, max(0.5, deadline - time.monotonic())))
        status = getattr(reply, "status", None)
        if status == OK and isinstance(reply.result, dict):
            if reply.result.get("ok"):
                os.replace(pending, final)
                return "created"
            return _settle_existing(ask, node_id, password, pending, final)
        time.sleep(0.3)  # no leader yet, or no answer: the same request again (applied at most once)
    return "undecided"


def _settle_existing(ask: Callable[[Any, float], Any], node_id: str, password: str, pending: Path,
                     final: Path) -> str:
    """The cluster has its admin: keep the pending password only if an
    earlier start of this node created it (and crashed before the rename)."""
    from protocol.agency import OK, AgencyRequest, Read

    reply = ask(AgencyRequest(f"bootstrap-read-{node_id}-{secrets.token_hex(4)}", 1,
                              Read((BOOTSTRAP_PATH, f"{USERS_ROOT}/{ADMIN}"))), 5.0)
    if getattr(reply, "status", None) == OK and isinstance(reply.result, dict):
        marker, record = (list(reply.result.get("values") or []) + [None, None])[:2]
        if isinstance(marker, dict) and marker.get("node") == node_id and verify_password(record or {}, password):
            os.replace(pending, final)
            return "created"
        try:
            pending.unlink()
        except OSError:
            pass
    return "exists"


def admin_credentials(data_dir: str | Path) -> tuple[str, str] | None:
    """``("admin", password)`` from a data directory, for tools and tests."""
    pw = read_admin_password(data_dir)
    return (ADMIN, pw) if pw else None
