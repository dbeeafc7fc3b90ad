"""Listening sockets and stream helpers shared by every daemon.

- :func:`start_server` binds one listener on every configured address, turning a privileged-port
  refusal into a one-line :class:`BindError` that names the fixes.
- :func:`starttls` upgrades a stream safely: bytes the client pipelined behind STARTTLS/STLS are
  discarded before the handshake (the CVE-2011-0411 class of injection).
- :class:`LineReader` reads CRLF lines with a length limit and an idle timeout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger("mailstack.net")

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ConnectionLimiter:
    """Open connections per client address and in total, for one daemon (all its listeners).

    A connection over either limit is answered with the protocol's "busy" line and closed, so
    one client cannot take every slot; loopback clients count like any other.
    """

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        n = self._per_ip.get(ip, 0)
        if self.total >= self.max_total or n >= self.max_per_ip:
            return False
        self._per_ip[ip] = n + 1
        self.total += 1
        return True

    def release(self, ip: str) -> None:
        n = self._per_ip.get(ip, 0) - 1
        if n > 0:
            self._per_ip[ip] = n
        else:
            self._per_ip.pop(ip, None)
        self.total = max(0, self.total - 1)

    def refuse(self, transport: asyncio.BaseTransport, ip: str, busy_reply: bytes,
               name: str) -> None:
        log.warning("%s: refused %s: too many connections (%d from it, %d in all)", name, ip,
                    self._per_ip.get(ip, 0), self.total)
        if busy_reply and isinstance(transport, asyncio.WriteTransport):
            transport.write(busy_reply)
        transport.close()


def limiter_for(cfg: Any) -> ConnectionLimiter:
    """The daemon-wide limiter from ``[server] max_connections`` / ``max_connections_per_ip``."""
    return ConnectionLimiter(cfg.server.max_connections, cfg.server.max_connections_per_ip)


class BindError(Exception):
    """A listener could not be opened; the message says how to fix it."""


def install_uvloop() -> bool:
    """Use uvloop when importable (~31 KB per idle TLS connection versus ~280 KB)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


def _privileged_hint(port: int, offset_hint: bool = True) -> str:
    return (f"port {port} is privileged: run as root or grant CAP_NET_BIND_SERVICE "
            "(setcap 'cap_net_bind_service=+ep' on the Python binary), or move every port "
            "with --port-offset N (e.g. --port-offset 10000)")


async def start_server(handler: ClientHandler | None, addresses: Sequence[str], port: int, *,
                       ssl_context: ssl.SSLContext | None = None, name: str = "",
                       limit: int = 64 * 1024,
                       protocol_factory: Callable[[], asyncio.BaseProtocol] | None = None,
                       limiter: ConnectionLimiter | None = None, busy_reply: bytes = b"",
                       ) -> list[asyncio.Server]:
    """Bind on ``port`` of every address; an unavailable IPv6 address is skipped.

    Give either ``handler`` (a streams callback) or ``protocol_factory`` (aiosmtpd; its
    protocol applies ``limiter`` itself, see ``smtpbase.ProtocolMixin``). With ``limiter``, a
    connection over the limits gets ``busy_reply`` and is closed.
    """
    if limiter is not None and handler is not None:
        handler = _limited(handler, limiter, busy_reply, name)
    servers: list[asyncio.Server] = []
    loop = asyncio.get_running_loop()
    tls_timeout = 30 if ssl_context else None
    for host in addresses:
        try:
            if protocol_factory is not None:
                srv = await loop.create_server(
                    protocol_factory, host, port, ssl=ssl_context, reuse_address=True,
                    backlog=1024, ssl_handshake_timeout=tls_timeout)
            else:
                assert handler is not None
                srv = await asyncio.start_server(
                    handler, host, port, ssl=ssl_context, limit=limit, reuse_address=True,
                    backlog=1024, ssl_handshake_timeout=tls_timeout)
        except PermissionError:
            for s in servers:
                s.close()
            raise BindError(f"{name or 'listener'} on {host}:{port}: "
                            f"{_privileged_hint(port)}") from None
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and ":" in host:
                log.warning("%s: skipping %s (IPv6 not available here)", name, host)
                continue
            for s in servers:
                s.close()
            if exc.errno == errno.EADDRINUSE:
                raise BindError(f"{name or 'listener'} on {host}:{port}: address already in use "
                                "(another mail server or mailstack running? stop it or use "
                                "--port-offset N)") from None
            if exc.errno == errno.EACCES:
                raise BindError(f"{name or 'listener'} on {host}:{port}: "
                                f"{_privileged_hint(port)}") from None
            raise BindError(f"{name or 'listener'} on {host}:{port}: {exc.strerror}") from None
        servers.append(srv)
    if not servers:
        raise BindError(f"{name or 'listener'}: none of {', '.join(addresses)} could be bound")
    return servers


def _limited(handler: ClientHandler, limiter: ConnectionLimiter, busy_reply: bytes,
             name: str) -> ClientHandler:
    async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip = peer_ip(writer)
        if not limiter.acquire(ip):
            limiter.refuse(writer.transport, ip, busy_reply, name)
            return
        try:
            await handler(reader, writer)
        finally:
            limiter.release(ip)
    return limited


def format_sockname(sockname: tuple) -> str:
    """``127.0.0.1:25`` or ``[::1]:25``."""
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else "unknown"


def is_loopback(writer: asyncio.StreamWriter) -> bool:
    """True when the connection arrived on a loopback address."""
    sock = writer.get_extra_info("sockname")
    if not sock:
        return False
    host = str(sock[0])
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1", "localhost")


async def starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   context: ssl.SSLContext, timeout: float = 30.0) -> int:
    """Upgrade to TLS; returns how many pipelined plaintext bytes were discarded.

    Must be called right after the "go ahead" reply was written.
    """
    await writer.drain()
    buffered = reader._buffer  # type: ignore[attr-defined]  # no public API to discard
    dropped = len(buffered)
    buffered.clear()
    # No event-loop iteration may run between the clear and start_tls() pausing the plaintext
    # reader: the client's ClientHello would land in the discarded buffer and the handshake
    # would hang. asyncio.wait_for() wraps the coroutine in a task (one iteration later on 3.11),
    # so await start_tls() directly under asyncio.timeout().
    async with asyncio.timeout(timeout):
        await writer.start_tls(context)
    return dropped


class LineTooLong(Exception):
    """A line exceeded the limit; the rest of it was discarded. ``head`` keeps its first
    octets (at most :data:`HEAD`), where a protocol's tag is."""

    def __init__(self, head: bytes = b"") -> None:
        super().__init__("line too long")
        self.head = head


HEAD = 256


class LineReader:
    """Reads lines ending in LF (CRLF expected) with a maximum length and an idle timeout."""

    def __init__(self, reader: asyncio.StreamReader, max_line: int, timeout: float) -> None:
        self.reader = reader
        self.max_line = max_line
        self.timeout = timeout

    async def readline(self) -> bytes:
        """One line including its end; b"" at EOF; raises LineTooLong or TimeoutError."""
        try:
            async with asyncio.timeout(self.timeout):
                line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial if len(exc.partial) <= self.max_line else b""
        except asyncio.LimitOverrunError:
            # the line's start is still in the stream's buffer (there is no public peek)
            head = bytes(self.reader._buffer[:HEAD])  # type: ignore[attr-defined]
            await self._discard_line()
            raise LineTooLong(head) from None
        if len(line) > self.max_line:
            raise LineTooLong(line[:HEAD])
        return line

    async def _discard_line(self) -> None:
        """Drop input up to and including the next LF, bounded by the idle timeout."""
        async with asyncio.timeout(self.timeout):
            while True:
                try:
                    await self.reader.readuntil(b"\n")
                    return
                except asyncio.LimitOverrunError as exc:
                    await self.reader.readexactly(exc.consumed)
                except asyncio.IncompleteReadError:
                    return

    async def read_into(self, buf: bytearray, n: int, chunk: int = 1 << 18) -> None:
        """Append exactly ``n`` octets to ``buf``, read in pieces (the idle timeout applies to
        each): a big literal is copied once, not gathered in the stream's buffer first.
        Raises IncompleteReadError at EOF, TimeoutError when the client goes quiet."""
        while n > 0:
            async with asyncio.timeout(self.timeout):
                piece = await self.reader.read(min(n, chunk))
            if not piece:
                raise asyncio.IncompleteReadError(b"", n)
            buf += piece
            n -= len(piece)


def set_keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass
