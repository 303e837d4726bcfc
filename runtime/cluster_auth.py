"""The cluster port: a shared secret signs every Thespian frame, and only
Chorus's own message classes are unpickled.

Thespian's TCP transport pickles each message and unpickles whatever reaches
a node's ports: the admin port and every actor process's port.  Unpickling
runs code, so anyone who could open a TCP connection to one of them could
run anything on the node.  Two layers close that, installed in the one place
every byte Thespian reads passes through -- the ``serializer`` of
``thespian.system.transport.TCPTransport`` (its ``loads`` decodes every
received frame, message or acknowledgement, in every process of the node;
its ``dumps`` encodes every frame sent):

1. **Authentication.**  Each frame is ``MAGIC | time_ms | HMAC-SHA256 |
   pickle``; the HMAC, keyed by the cluster secret, covers the magic, the
   time and the pickle.  A frame without a valid HMAC is dropped before a
   byte of it is unpickled.  The time bounds replays: a frame older (or
   newer) than ``REPLAY_WINDOW_S`` is dropped too.  The frame is signed,
   not encrypted: keep the cluster port on a private network.
2. **An allow-list unpickler** (:class:`RestrictedUnpickler`) for frames
   that pass: only classes of ``protocol/``, the Thespian message and
   address classes, and a few builtins and standard value types.  Anything
   else -- ``os.system``, ``builtins.eval``, a class of another package --
   fails the frame.  The simulator unpickles every message it carries with
   the same allow-list (:func:`restricted_loads`), so a message class that
   would not cross a real cluster port fails there first.

A dropped frame is logged (Thespian's log, ``logs/thespian.log``) with the
reason; Thespian closes that connection and the node goes on serving.

The secret is 32 random bytes in hex, ``<data_dir>/cluster.secret`` (mode
0600), made on the first start of a new cluster; every node of the cluster
needs the same one (``brokerctl run --join ... --cluster-secret-file``),
as an Erlang cookie is copied to every EMQX node.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import pickle
import secrets
import struct
import time
from pathlib import Path
from typing import Any

SECRET_FILE = "cluster.secret"
MAGIC = b"CHR1"
_HEADER = struct.Struct(">4sQ32s")  # magic, time in ms, HMAC-SHA256
REPLAY_WINDOW_S = 600.0  # frames older or newer than this (by the receiver's clock) are dropped
CLUSTER_FRAME_BYTES_MAX = 256 << 20  # a length prefix above this closes the connection before anything is read

# Thespian's own classes that travel between processes: messages and addresses.  Not ActorSystem,
# Actor or anything whose constructor does work.
_THESPIAN = {
    "thespian.actors": {
        "ActorAddress", "ActorSystemMessage", "ActorSystemConventionUpdate", "ActorExitRequest",
        "ChildActorExited", "PoisonMessage", "WakeupMessage", "WatchMessage", "DeadEnvelope",
    },
    "thespian.system.transport.IPBase": {
        "IPActorAddress", "TCPv4ActorAddress", "TCPv6ActorAddress", "UDPv4ActorAddress", "RoutedTCPv4ActorAddress",
        "TXOnlyAdminTCPv4ActorAddress",
    },
    "thespian.system.transport": {"ForwardMessage"},
    "thespian.system.logdirector": {"LoggerExitRequest", "LogAggregator"},
}
# whole modules of Thespian message classes (every class there is a message)
_THESPIAN_MESSAGE_MODULES = (
    "thespian.system.messages.admin", "thespian.system.messages.convention",
    "thespian.system.messages.multiproc", "thespian.system.messages.status",
    "thespian.system.messages.logcontrol",
)
_STDLIB = {
    "builtins": {"dict", "list", "set", "frozenset", "tuple", "bytes", "bytearray", "str", "int", "float",
                 "complex", "bool", "slice", "range", "object"},
    "datetime": {"timedelta", "datetime", "date", "time", "timezone"},
    "collections": {"OrderedDict", "deque"},
    "copyreg": {"_reconstructor"},  # old-protocol instances: builds only classes this list allows
    "socket": {"AddressFamily", "SocketKind"},  # inside Thespian's TCP addresses (IntEnums)
    "logging": {"LogRecord"},  # Thespian forwards actors' log records to the logger
}
# Chorus packages whose classes are messages or values inside them
_CHORUS_PACKAGES = ("protocol.",)

log = logging.getLogger("chorus.cluster")


class ForbiddenClass(pickle.UnpicklingError):
    """A frame named a class (or function) outside the allow-list."""


def _allowed(module: str, name: str, extra: tuple[str, ...]) -> bool:
    if "." in name:  # a nested attribute path could reach a module's function through a class
        return False
    if name in _STDLIB.get(module, ()):
        return True
    if module == "builtins":  # exceptions (in log records' arguments, error replies): inert values
        import builtins

        obj = getattr(builtins, name, None)
        return isinstance(obj, type) and issubclass(obj, BaseException)
    if name in _THESPIAN.get(module, ()) or module in _THESPIAN_MESSAGE_MODULES:
        return True
    return module.startswith(_CHORUS_PACKAGES + extra)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what :func:`_allowed` lets through, and only classes:
    a function (``os.system``, ``builtins.eval``) is refused even from an
    allowed module.  ``extra``: more package prefixes (the simulator's own
    harness messages, ``"sim."``)."""

    def __init__(self, file: Any, extra: tuple[str, ...] = ()) -> None:
        super().__init__(file)
        self.extra = extra

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name, self.extra):
            raise ForbiddenClass(f"{module}.{name} is not a Chorus message class")
        obj = super().find_class(module, name)
        if not isinstance(obj, type) and not (module == "copyreg" and name == "_reconstructor"):
            raise ForbiddenClass(f"{module}.{name} is not a class")
        if module.startswith(_THESPIAN_MESSAGE_MODULES) or module == "thespian.actors":
            from thespian.actors import ActorSystem, Actor

            if issubclass(obj, (ActorSystem, Actor)):
                raise ForbiddenClass(f"{module}.{name} is not a message class")
        return obj


def restricted_loads(data: bytes, extra: tuple[str, ...] = ()) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), extra).load()


# Thespian's acknowledgements are made once, at import, with plain pickle (streamBuffer.ackMsg):
# they carry no data, so they are accepted as they are.
_ACKS = {pickle.dumps("ACK"): "ACK", pickle.dumps("ACK+DATAERR"): "ACK+DATAERR"}


class FrameRejected(Exception):
    """A received cluster frame that is dropped; the message says why."""


class SignedSerializer:
    """What ``TCPTransport.serializer`` is replaced with: ``dumps`` signs,
    ``loads`` checks and unpickles with the allow-list."""

    def __init__(self, secret: str) -> None:
        self.key = derive_key(secret)
        self.rejected = 0

    def dumps(self, obj: Any) -> bytes:
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        now_ms = int(time.time() * 1000)
        head = MAGIC + struct.pack(">Q", now_ms)
        return head + hmac.new(self.key, head + data, hashlib.sha256).digest() + data

    def loads(self, frame: bytes) -> Any:
        frame = bytes(frame)
        ack = _ACKS.get(frame)
        if ack is not None:
            return ack
        try:
            return self._loads(frame)
        except FrameRejected as exc:
            self._reject(str(exc))
            raise
        except Exception as exc:  # a signed frame that still does not decode: the sender has the secret
            self._reject(f"a signed frame does not unpickle: {type(exc).__name__}: {exc}")
            raise FrameRejected(str(exc)) from None

    def _loads(self, frame: bytes) -> Any:
        if len(frame) < _HEADER.size or frame[:4] != MAGIC:
            raise FrameRejected("an unsigned frame (not from a node with this cluster's secret)")
        magic, sent_ms, mac = _HEADER.unpack_from(frame)
        data = memoryview(frame)[_HEADER.size:]
        want = hmac.new(self.key, frame[:12] + data, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):
            raise FrameRejected("a frame with a wrong signature (another cluster's secret, or forged)")
        skew_s = abs(time.time() - sent_ms / 1000.0)
        if skew_s > REPLAY_WINDOW_S:
            raise FrameRejected(f"a frame signed {skew_s:.0f} s away from this node's clock "
                                f"(a replay, or clocks more than {REPLAY_WINDOW_S:.0f} s apart)")
        return RestrictedUnpickler(io.BytesIO(data)).load()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        from thespian.system.utilis import thesplog

        thesplog("chorus cluster port: dropped %s", why, level=logging.WARNING)


def derive_key(secret: str) -> bytes:
    return hashlib.sha256(b"chorus-cluster-frame-v1\x00" + secret.strip().encode()).digest()


_installed: SignedSerializer | None = None


def install(secret: str) -> SignedSerializer:
    """Sign and check every Thespian TCP frame of this process and of the
    processes it starts from now on (they inherit the module state: Thespian
    forks them).  Call before creating the ActorSystem."""
    global _installed
    import thespian.system.transport.TCPTransport as tcp
    from thespian.system.transport.streamBuffer import ReceiveBuffer

    if _installed is not None and _installed.key == derive_key(secret):
        return _installed
    _installed = SignedSerializer(secret)
    tcp.serializer = _installed
    if not getattr(ReceiveBuffer.addMore, "_chorus_bounded", False):
        original = ReceiveBuffer.addMore

        def addMore(self: Any, buf: bytes) -> None:
            original(self, buf)
            if self._size is not None and self._size > CLUSTER_FRAME_BYTES_MAX:
                raise FrameRejected(f"a frame of {self._size} bytes announced (at most {CLUSTER_FRAME_BYTES_MAX})")

        addMore._chorus_bounded = True  # type: ignore[attr-defined]
        ReceiveBuffer.addMore = addMore
    return _installed


# ----------------------------------------------------------------- the secret
def new_secret() -> str:
    return secrets.token_hex(32)


def read_secret(path: str | Path) -> str:
    """The secret in ``path``; a clear error if it is missing or too short."""
    p = Path(path)
    try:
        text = p.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"cannot read the cluster secret {p}: {exc.strerror or exc}") from None
    if len(text) < 32:
        raise SystemExit(f"the cluster secret in {p} is too short: at least 32 characters (64 hex digits "
                         f"as `brokerctl run` makes them)")
    return text


def write_secret(path: str | Path, secret: str) -> None:
    p = Path(path)
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def node_secret(data_dir: str | Path, given_file: str = "", new_cluster: bool = True) -> tuple[str, str]:
    """The cluster secret of the node whose data directory is ``data_dir``,
    and what happened: ``"kept"`` (the data directory had it), ``"copied"``
    (from ``given_file`` into the data directory) or ``"created"`` (a new
    cluster's first start).  A node joining a running cluster without one
    is refused with the way to get it; a given file that differs from the
    data directory's is refused too."""
    own = Path(data_dir) / SECRET_FILE
    given = read_secret(given_file) if given_file else None
    if own.exists():
        have = read_secret(own)
        if given is not None and given != have:
            raise SystemExit(f"{given_file} is not the cluster secret this node has in {own}; "
                             f"a node keeps the secret of the cluster it belongs to")
        return have, "kept"
    if given is not None:
        write_secret(own, given)
        return given, "copied"
    if not new_cluster:
        raise SystemExit("a node joining a cluster needs the cluster's secret: copy cluster.secret from the data "
                         "directory of a node of that cluster and pass it with --cluster-secret-file "
                         "(or CHORUS_CLUSTER_SECRET_FILE)")
    secret = new_secret()
    write_secret(own, secret)
    return secret, "created"
