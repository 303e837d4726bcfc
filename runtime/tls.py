"""TLS for the client-facing ports, with the standard ``ssl`` module.

A node configured with a certificate and key (``NodeConfig.tls_cert_file``
and ``tls_key_file``, or ``brokerctl run --tls-self-signed``) speaks TLS
only on its binary client port, its MQTT port and its HTTP port; the
cluster (Thespian) port is not affected (see the cluster secret).  This
module holds everything TLS that those places share:

* :func:`server_context` / :func:`client_context`: contexts with TLS 1.2 as
  the minimum version;
* :class:`TlsAcceptor`: wraps an asyncio protocol factory so that each
  accepted connection does its handshake with ``loop.start_tls`` before the
  real protocol sees it.  A handshake that fails (a plaintext client, a
  client that does not trust the certificate, a scanner) closes that
  connection and is logged at INFO; the application protocol is never
  created for it, so it takes no slot of the listener's connection limit.
  (With ``create_server(ssl=...)`` the protocol is created at accept time
  and never hears of a failed handshake, and asyncio reports the failure
  only in debug mode.)  Handshakes in progress are bounded too;
* :func:`ensure_self_signed`: a certificate and key for 127.0.0.1 and
  localhost, made once with the ``openssl`` command line;
* :func:`urlopen`: ``urllib`` with a context for ``https://`` URLs, for the
  nodes' calls to each other's HTTP API and for ``brokerctl``.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("chorus.tls")

HANDSHAKE_TIMEOUT_S = 10.0  # a connection that has not finished its handshake by then is closed
SELF_SIGNED_DIR = "tls"  # under the data directory
SELF_SIGNED_CERT = "cert.pem"
SELF_SIGNED_KEY = "key.pem"
SELF_SIGNED_DAYS = 825


class TlsError(Exception):
    """TLS cannot be set up as configured (a missing file, no openssl)."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for ``cert_file`` (PEM, with its chain) and ``key_file``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS certificate {cert_file!r} and key {key_file!r}: {exc}") from None
    return ctx


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_file`` (PEM:
    a CA bundle, or the server's own self-signed certificate), or against
    the system's trusted CAs when None.  Host names (and IP addresses) are
    checked."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_ssl(tls: bool | ssl.SSLContext | None, ca_file: str | None) -> ssl.SSLContext | None:
    """The context a client uses: ``tls`` itself when it is one; a verifying
    context when ``tls`` is true or a ``ca_file`` is given; None (plaintext)
    otherwise."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls or ca_file:
        return client_context(ca_file)
    return None


# ------------------------------------------------------------- accepting
class TlsAcceptor:
    """Protocol factories that do a TLS handshake first.

    ``acceptor.wrap(factory)`` gives a factory for ``loop.create_server``
    (without ``ssl=``).  Each connection it accepts pauses reading, runs the
    server side of the handshake, and only then calls ``factory()`` and the
    protocol's ``connection_made`` with the TLS transport.  At most
    ``handshakes_max`` handshakes run at once; connections beyond are closed
    at once."""

    def __init__(self, context: ssl.SSLContext, *, what: str, handshakes_max: int = 256,
                 timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.context = context
        self.what = what
        self.handshakes_max = handshakes_max
        self.timeout_s = timeout_s
        self.handshaking = 0
        self.failed = 0  # handshakes that failed (for tests and status)
        self._tasks: set[asyncio.Task] = set()

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
        return lambda: _Handshake(self, factory)

    def close(self) -> None:
        """Cancel the handshakes in progress (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()


class _Handshake(asyncio.Protocol):
    """The plain TCP side of one connection until its handshake is done."""

    def __init__(self, acceptor: TlsAcceptor, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self.acceptor = acceptor
        self.factory = factory
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        a = self.acceptor
        if a.handshakes_max and a.handshaking >= a.handshakes_max:
            log.info("%s: %d TLS handshakes in progress, closing a new connection from %s", a.what,
                     a.handshaking, _peer(transport))
            transport.abort()
            return
        # No byte may reach this protocol: the client's hello is for start_tls.
        transport.pause_reading()
        a.handshaking += 1
        task = asyncio.get_running_loop().create_task(self._handshake())
        a._tasks.add(task)
        task.add_done_callback(a._tasks.discard)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    async def _handshake(self) -> None:
        a = self.acceptor
        loop = asyncio.get_running_loop()
        peer = _peer(self.transport)
        # The handshake's protocol only holds what arrives between the end of
        # the handshake and this task resuming (asyncio reads on at once);
        # the real protocol then gets connection_made first, that data next.
        early = _Early()
        try:
            tls_transport = await loop.start_tls(self.transport, early, a.context, server_side=True,
                                                 ssl_handshake_timeout=a.timeout_s)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, EOFError) as exc:
            a.failed += 1
            log.info("%s: TLS handshake with %s failed (%s); connection closed", a.what, peer,
                     _reason(exc))
            self.transport.abort()
            return
        except asyncio.CancelledError:
            self.transport.abort()
            raise
        finally:
            a.handshaking -= 1
        if tls_transport is None or early.lost:  # the peer went away meanwhile
            self.transport.abort()
            return
        app = self.factory()
        tls_transport.set_protocol(app)
        app.connection_made(tls_transport)
        for data in early.chunks:
            app.data_received(data)
        if early.eof and not app.eof_received():
            tls_transport.close()


class _Early(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _peer(transport: Any) -> str:
    try:
        peer = transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"
    except Exception:
        return "?"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------ self-signed
def ensure_self_signed(data_dir: str | Path) -> tuple[str, str]:
    """The certificate and key in ``<data_dir>/tls/``, made on first use
    (``openssl req -x509``: an EC P-256 key, valid for 127.0.0.1 and
    localhost).  Returns their paths."""
    d = Path(data_dir) / SELF_SIGNED_DIR
    cert, key = d / SELF_SIGNED_CERT, d / SELF_SIGNED_KEY
    if cert.exists() and key.exists():
        return str(cert.resolve()), str(key.resolve())
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError("--tls-self-signed needs the openssl command line tool, which is not installed "
                       "(on Debian: apt-get install openssl); or give tls_cert_file and tls_key_file")
    d.mkdir(parents=True, exist_ok=True)
    tmp_cert, tmp_key = d / (SELF_SIGNED_CERT + ".tmp"), d / (SELF_SIGNED_KEY + ".tmp")
    cmd = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", str(tmp_key), "-out", str(tmp_cert), "-days", str(SELF_SIGNED_DAYS),
           "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
           "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=digitalSignature,keyCertSign"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TlsError(f"openssl could not make a certificate: {exc}") from None
    if r.returncode != 0:
        raise TlsError(f"openssl could not make a certificate (exit {r.returncode}): "
                       f"{(r.stderr or r.stdout).strip()[-500:]}")
    tmp_key.chmod(0o600)
    tmp_key.replace(key)
    tmp_cert.replace(cert)
    return str(cert.resolve()), str(key.resolve())


# ------------------------------------------------------------------ HTTP
def urlopen(url: str | urllib.request.Request, *, timeout: float,
            context: ssl.SSLContext | None = None) -> Any:
    """``urllib.request.urlopen`` with ``context`` for https:// URLs."""
    if context is None:
        return urllib.request.urlopen(url, timeout=timeout)
    return urllib.request.urlopen(url, timeout=timeout, context=context)


__all__ = ["TlsError", "TlsAcceptor", "server_context", "client_context", "client_ssl", "ensure_self_signed",
           "urlopen", "HANDSHAKE_TIMEOUT_S"]
