"""``mailstack health NAME``: exit 0 when the daemon answers its protocol greeting.

For container health checks (docker-compose ``healthcheck``) and scripts. Connects to the
daemon's first listener on loopback (or the first bind address), reads the greeting — ``220``
for SMTP/LMTP, ``* OK`` for IMAP, ``+OK`` for POP3, an HTTP 200 for http (autoconfig) — and says so.

Probes run every few seconds, so the daemons log them at debug level only: the probe sends no
command to the mail daemons (a session without commands is logged at debug) and asks
the http daemon for ``/health`` (on its plain port). The greeting check itself is
:mod:`mailstack.runtime.probe`'s, shared with the container probe and with ``mailstack up``'s
wait for its daemons.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from .banner import listeners
from .probe import EXPECT, HEALTH_PATH, read_greeting, retry

__all__ = ["EXPECT", "HEALTH_PATH", "check"]


def check(cfg: Config, daemon: str, timeout: float = 5.0, wait: float = 0.0,
          stop: Callable[[], bool] = lambda: False) -> tuple[bool, str]:
    """Does ``daemon`` greet on its first listener? (ok, what it said or why not). With
    ``wait``: tried again every 50 ms for up to that long, or until ``stop()``."""
    daemon = "http" if daemon == "autoconfig" else daemon  # the http daemon's old name
    result: list[tuple[bool, str]] = []

    def attempt() -> bool:
        result[:] = [_check_once(cfg, daemon, timeout)]
        return result[0][0]
    retry(attempt, wait, stop)
    return result[0]


def _check_once(cfg: Config, daemon: str, timeout: float) -> tuple[bool, str]:
    rows = [lst for lst in listeners(cfg) if lst.daemon == daemon]
    if not rows:
        return False, f"{daemon} has no enabled listener in {cfg.source}"
    # the first plaintext port (for the mda its TCP listener when it has one, as other
    # containers reach it), else an implicit-TLS port (its plaintext twin set to 0), else the
    # unix socket
    lst = next((r for r in rows if r.port and r.tls != "implicit TLS"),
               next((r for r in rows if r.port), rows[0]))
    host = lst.addresses[0] if lst.addresses else ""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    where = f"unix:{lst.path}" if lst.path else f"{host}:{lst.port}"
    try:
        if lst.path:
            from . import unixsock  # imports asyncio: only when needed (probes are frequent)

            sock = unixsock.connect_blocking(Path(lst.path), timeout)
        else:
            sock = socket.create_connection((host, lst.port), timeout)
            if lst.tls == "implicit TLS":  # its plaintext twin is disabled (port 0)
                sock = _tls(sock)
        with sock as s:
            greeting = read_greeting(s, http=daemon == "http")
    except OSError as exc:
        return False, f"{daemon} {lst.name} on {where}: {exc.strerror or exc}"
    if greeting.startswith(EXPECT[daemon]):
        return True, f"{daemon} {lst.name} on {where}: " \
            f"{greeting.splitlines()[0].decode(errors='replace')}"
    return False, f"{daemon} {lst.name} on {where}: unexpected greeting {greeting[:60]!r}"


def _tls(sock: socket.socket) -> socket.socket:
    """``sock`` after a TLS handshake. Liveness only: the certificate is not checked (an
    operator's own certificate need not be trusted on this host)."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        return ctx.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise
