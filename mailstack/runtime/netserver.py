"""Listening sockets and stream helpers shared by every daemon.

- :func:`start_server` binds one listener on every configured address, turning a privileged-port
  refusal into a one-line :class:`BindError` that names the fixes.
- :func:`starttls` upgrades a stream safely: bytes the client pipelined behind STARTTLS/STLS are
  discarded before the handshake (the CVE-2011-0411 class of injection).
- :class:`LineReader` reads CRLF lines with a length limit and an idle timeout.
- :class:`CountedProtocol` counts a connection against the daemon's limits when it is accepted
  and does the implicit-TLS handshake itself, with a timeout, after that. On a listener with
  trusted proxy networks it first reads the PROXY protocol header (v1 or v2) of a connection
  from them, so that limits, throttles, the plaintext-login networks and logs see the real
  client: :func:`peer_ip` and :func:`arrived_on` answer with the header's addresses.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import resource
import socket
import ssl
import sys
import weakref
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import proxyproto

log = logging.getLogger("mailstack.net")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = tuple[str, int]
#: the (client, local) addresses that a PROXY header gave a stream connection
_PROXIED: weakref.WeakKeyDictionary[asyncio.StreamWriter, tuple[Address, Address]] = \
    weakref.WeakKeyDictionary()

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
        # not isinstance(transport, asyncio.WriteTransport): uvloop's transports are not
        # subclasses of it, and the reply was silently skipped in production
        write = getattr(transport, "write", None)
        if busy_reply and write is not None:
            write(busy_reply)
        transport.close()


def transport_ip(transport: asyncio.BaseTransport) -> str:
    """The client's address, or "unknown" (e.g. a unix socket)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer and isinstance(peer, tuple) else "unknown"


class CountedProtocol:
    """Mix in before an asyncio protocol class (aiosmtpd's ``SMTP``, ``StreamReaderProtocol``).

    The connection is counted with ``limiter`` the moment it is accepted (over the limits: the
    ``busy_reply``, then close) and released when it is lost. With ``implicit_tls`` the
    handshake follows, bounded by ``handshake_timeout``; only then does the wrapped protocol
    see the connection. Handshakes in progress therefore count against the limits, and one
    client cannot hold thousands of them (a refused implicit-TLS connection gets no reply: the
    client expects a handshake, not plaintext).
    """

    limiter: ConnectionLimiter | None = None
    busy_reply: bytes = b""
    implicit_tls: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0
    listener_name: str = ""
    #: the peers that must (and only ones that may) begin with a PROXY header
    proxy: ProxyPolicy | None = None
    #: the client's and the local address from a PROXY header (None: the socket's own)
    client_address: Address | None = None
    local_address: Address | None = None
    _state = "new"  # new → (proxy →) handshake → open; or refused; closed at the end
    _counted_ip: str | None = None
    _proxy: tuple[asyncio.BaseTransport, bytearray, asyncio.TimerHandle] | None = None
    _sniff = False  # an untrusted peer on a proxied listener: a PROXY header from it closes
    _tls: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._state == "handshake":  # from the TLS layer: the handshake is done
            self._open(transport)
            return
        if self._state != "new":  # not expected: a second connection_made is passed on
            super().connection_made(transport)  # type: ignore[misc]
            return
        ip = transport_ip(transport)
        if self.proxy is not None:
            if in_networks(ip, self.proxy.networks):
                # until its header names the client, the connection counts as the proxy's
                if self.limiter is not None:
                    if not self.limiter.acquire(ip):
                        self._state = "refused"
                        self.limiter.refuse(transport, ip, b"", self.listener_name or "proxy")
                        return
                    self._counted_ip = ip
                self._state = "proxy"
                timer = asyncio.get_running_loop().call_later(
                    self.proxy.timeout, self._proxy_refused, ip,
                    f"no complete PROXY header within {self.proxy.timeout:g}s")
                self._proxy = (transport, bytearray(), timer)
                return
            self._sniff = True
        self._accept(transport, ip)

    def _accept(self, transport: asyncio.BaseTransport, ip: str) -> None:
        """Count the connection under ``ip`` (the real client's), then TLS or open it."""
        if self.limiter is not None:
            if not self.limiter.acquire(ip):
                self._state = "refused"
                self.limiter.refuse(transport, ip, b"" if self.implicit_tls else self.busy_reply,
                                    self.listener_name or type(self).__name__)
                return
            self._counted_ip = ip
        if self.implicit_tls is None:
            self._open(transport)
            return
        self._state = "handshake"
        self._start_tls(transport, ip)

    def _open(self, transport: asyncio.BaseTransport) -> None:
        self._state = "open"
        super().connection_made(transport)  # type: ignore[misc]
        if self.client_address is not None:
            self.use_client_address(self.client_address, self.local_address)

    def use_client_address(self, client: Address, local: Address | None) -> None:
        """Called once the connection is open when a PROXY header named the client: the
        protocol records it where its code looks for the peer (aiosmtpd: ``session.peer``)."""

    def data_received(self, data: bytes) -> None:
        if self._state == "proxy":
            self._proxy_data(data)
            return
        if self._sniff:
            self._sniff = False
            if data.startswith((proxyproto.V1_PREFIX, proxyproto.V2_SIGNATURE)):
                transport = getattr(self, "transport", None) or \
                    getattr(self, "_transport", None)
                log.warning("%s: %s: PROXY header from a peer outside the trusted proxy "
                            "networks: closed", self.listener_name or "proxy",
                            self._counted_ip or "?")
                if transport is not None:
                    transport.close()
                return
        super().data_received(data)  # type: ignore[misc]

    def _proxy_data(self, data: bytes) -> None:
        assert self._proxy is not None
        transport, buf, timer = self._proxy
        buf += data
        ip = transport_ip(transport)
        try:
            got = proxyproto.parse(buf)
        except proxyproto.ProxyHeaderError as exc:
            self._proxy_refused(ip, str(exc))
            return
        if got is None:
            return
        header, size = got
        rest = bytes(buf[size:])
        timer.cancel()
        self._proxy = None
        self._state = "new"
        self._release()  # the proxy's count; the client's is taken by _accept
        if header.source is not None and header.dest is not None:
            self.client_address, self.local_address = header.source, header.dest
            ip = header.source[0]
        self._accept(transport, ip)
        if not rest:
            return
        if self._state == "open":
            self.data_received(rest)
        elif self._state == "handshake" and self._tls is not None:
            _feed(self._tls, rest)

    def _proxy_refused(self, ip: str, why: str) -> None:
        if self._proxy is None:
            return
        transport, _, timer = self._proxy
        timer.cancel()
        self._proxy = None
        self._state = "closed"
        log.warning("%s: %s: PROXY header refused: %s", self.listener_name or "proxy", ip, why)
        transport.abort()

    def _start_tls(self, raw: asyncio.BaseTransport, ip: str) -> None:
        """Put the TLS layer under this protocol now, as ``create_server(ssl=...)`` does: no
        byte of the ClientHello can be read before it (``loop.start_tls`` runs a loop
        iteration later, and uvloop starts reading right after ``connection_made``)."""
        assert self.implicit_tls is not None
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        tls = _ssl_protocol_class(loop)(
            loop, self, self.implicit_tls, waiter, server_side=True,
            call_connection_made=True, ssl_handshake_timeout=self.handshake_timeout)
        raw.set_protocol(tls)
        self._tls = tls
        tls.connection_made(raw)
        waiter.add_done_callback(lambda w: self._handshake_done(w, ip))

    def _handshake_done(self, waiter: asyncio.Future[None], ip: str) -> None:
        exc = None if waiter.cancelled() else waiter.exception()
        if exc is None and not waiter.cancelled():
            return
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError)) \
                and not isinstance(exc, ssl.SSLError):
            # the client closed before any TLS was spoken (a port check, a load balancer's TCP
            # probe): at debug, as probes of the plaintext ports are; a handshake timeout or a
            # TLS error stays at info
            log.debug("%s: %s: closed before the TLS handshake: %s",
                      self.listener_name or "tls", ip, type(exc).__name__)
        else:
            log.info("%s: %s: TLS handshake failed: %s", self.listener_name or "tls", ip,
                     str(exc) or type(exc).__name__)
        if self._state == "handshake":
            self._state = "closed"
            self._release()

    def eof_received(self) -> bool | None:
        if self._state == "proxy":
            self._proxy_refused(transport_ip(self._proxy[0]) if self._proxy else "?",
                                "end of input before a complete PROXY header")
            return False
        if self._state != "open":
            return False
        return super().eof_received()  # type: ignore[misc]

    def connection_lost(self, error: Exception | None) -> None:
        if self._proxy is not None:
            self._proxy[2].cancel()
            self._proxy = None
        state, self._state = self._state, "closed"
        try:
            if state == "open":
                super().connection_lost(error)  # type: ignore[misc]
        finally:
            self._release()

    def _release(self) -> None:
        if self._counted_ip is not None and self.limiter is not None:
            self.limiter.release(self._counted_ip)
        self._counted_ip = None


def _feed(protocol: Any, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as its transport would (buffered protocols included)."""
    if not hasattr(protocol, "get_buffer"):
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buf = protocol.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


def in_networks(ip: str, networks: Sequence[Network]) -> bool:
    """True when the address ``ip`` (IPv4-mapped IPv6 taken as IPv4) is in ``networks``."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


@dataclass(frozen=True)
class ProxyPolicy:
    """A listener's trusted proxies and how long their PROXY header may take to arrive."""

    networks: tuple[Network, ...]
    timeout: float


def proxy_policy(cfg: Any, listener: str) -> ProxyPolicy | None:
    """The PROXY policy of ``listener`` (e.g. ``imaps``): ``[server] proxy_networks`` when
    ``[server] proxy_listeners`` is empty or names it, else None; the header's time limit is
    ``[server] tls_handshake_timeout``."""
    server = cfg.server
    if not server.proxy_networks or (server.proxy_listeners
                                      and listener not in server.proxy_listeners):
        return None
    return ProxyPolicy(tuple(ipaddress.ip_network(n, strict=False)
                             for n in server.proxy_networks), float(server.tls_handshake_timeout))


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The TLS protocol class of this event loop: uvloop's own under uvloop (asyncio's kept
    ~3 KiB per connection there, see mta/smtp.py), else asyncio's."""
    uvloop = sys.modules.get("uvloop.loop")  # imported by install_uvloop() when in use
    if uvloop is not None and isinstance(loop, uvloop.Loop):
        return uvloop.SSLProtocol
    return sslproto.SSLProtocol


class _StreamProtocol(CountedProtocol, asyncio.StreamReaderProtocol):
    """``asyncio.start_server``'s protocol, counted and (implicit TLS) upgraded first."""


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
                       handshake_timeout: float = 10.0,
                       proxy: ProxyPolicy | None = None) -> list[asyncio.Server]:
    """Bind on ``port`` of every address; an unavailable IPv6 address is skipped.

    Give either ``handler`` (a streams callback) or ``protocol_factory`` (aiosmtpd: a
    :class:`CountedProtocol` configured by the caller, ``ssl_context`` not allowed). For a
    handler, every connection is counted with ``limiter`` when accepted (over the limits:
    ``busy_reply`` and close) and, with ``ssl_context``, upgraded to TLS (implicit TLS) within
    ``handshake_timeout`` seconds before the handler runs. A connection from a ``proxy``
    network must begin with a PROXY header (within its timeout); the handler's
    :func:`peer_ip` and :func:`arrived_on` then answer with its addresses.
    """
    loop = asyncio.get_running_loop()
    if protocol_factory is None:
        assert handler is not None

        def factory() -> asyncio.BaseProtocol:
            async def connected(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
                if proto.client_address is not None and proto.local_address is not None:
                    _PROXIED[writer] = (proto.client_address, proto.local_address)
                await handler(reader, writer)

            proto = _StreamProtocol(asyncio.StreamReader(limit=limit, loop=loop), connected,
                                    loop=loop)
            proto.limiter, proto.busy_reply, proto.listener_name = limiter, busy_reply, name
            proto.implicit_tls, proto.handshake_timeout = ssl_context, handshake_timeout
            proto.proxy = proxy
            return proto
        protocol_factory = factory
    elif ssl_context is not None:
        raise ValueError("start_server: set implicit_tls on the protocol instead of ssl_context")
    servers: list[asyncio.Server] = []
    for host in addresses:
        try:
            srv = await loop.create_server(protocol_factory, host, port, reuse_address=True,
                                           backlog=1024)
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


def format_sockname(sockname: tuple) -> str:
    """``127.0.0.1:25`` or ``[::1]:25``."""
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def peer_ip(writer: asyncio.StreamWriter) -> str:
    """The client's address: a PROXY header's when one named it, else the socket's peer."""
    proxied = _PROXIED.get(writer)
    if proxied is not None:
        return proxied[0][0]
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else "unknown"


def is_loopback(writer: asyncio.StreamWriter) -> bool:
    """True when the connection arrived on a loopback address."""
    return arrived_on(writer, ("127.0.0.0/8", "::1/128"))


def arrived_on(writer: asyncio.StreamWriter, networks: Sequence[str]) -> bool:
    """True when the connection arrived on (its local address is in) one of ``networks``
    (``[server] plaintext_login_networks``: where a password may travel before TLS). Behind
    a trusted proxy, the address the client connected to as its PROXY header says."""
    proxied = _PROXIED.get(writer)
    sock = proxied[1] if proxied is not None else writer.get_extra_info("sockname")
    if not sock:
        return False
    return in_networks(str(sock[0]), [ipaddress.ip_network(n, strict=False) for n in networks])


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
