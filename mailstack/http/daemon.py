"""``mailstack serve http``: the HTTP face (80 plain, 443 TLS) on uvicorn + Starlette.

uvicorn's HTTP protocol (httptools) is driven over the runtime's listeners: each connection
is a :class:`HTTPConnection`, counted by the daemon's :class:`ConnectionLimiter` when accepted
(over the limits: ``503`` and close) and, on the TLS port, upgraded within the handshake timeout
before uvicorn sees a byte. On top of uvicorn it bounds what a client can hold:

- a request head (request line and headers) of at most :data:`MAX_HEAD` octets (else ``431``);
- a client silent for ``[http] idle_timeout`` while it owes us bytes (no request yet, half a
  head, half a body) is disconnected; a response being streamed (an event stream) is not idle;
- a head that takes longer than the idle timeout in all (one byte at a time) is cut off too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ..config import Config
from ..runtime.netserver import (
    Address,
    CountedProtocol,
    format_sockname,
    limiter_for,
    proxy_policy,
    start_server,
)
from ..runtime.tls import ensure_tls_files, server_context
from .app import HTTPApp

log = logging.getLogger("mailstack.http")

MAX_HEAD = 16 * 1024
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
        b"content-length: 18\r\nretry-after: 5\r\nconnection: close\r\n\r\ntoo many requests\n")
TOO_BIG_HEAD = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                b"connection: close\r\n\r\n")


async def _head_too_large(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 431,
                "headers": [(b"content-length", b"0"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b""})


class HTTPConnection(CountedProtocol, HttpToolsProtocol):
    """One HTTP connection: uvicorn's protocol, counted at accept, with a bounded head and an
    idle timeout while the client owes us bytes."""

    idle_timeout = 30.0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._reading_head = True  # before a request's headers are complete
        self._head_bytes = 0  # octets received while in a head
        self._head_seen = 0  # octets of request line and header fields parsed
        self._head_started = 0.0
        self._last_data = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- uvicorn hooks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._state == "open" and self._idle_timer is None:
            self._last_data = self._head_started = self.loop.time()
            self._arm(self.idle_timeout)

    def use_client_address(self, client: Address, local: Address | None) -> None:
        """Behind a trusted proxy: the client and the address it connected to, as its PROXY
        header says, are what uvicorn puts in the request's scope."""
        self.client = (str(client[0]), int(client[1]))
        if local is not None:
            self.server = (str(local[0]), int(local[1]))

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self._last_data = now
        if self._reading_head:
            if not self._head_bytes:
                self._head_started = now
            self._head_bytes += len(data)
        super().data_received(data)
        # still in the head after this piece (the parser buffers a header it has not
        # finished): bound what it holds
        if self._reading_head and self._head_bytes > MAX_HEAD and self._state == "open" \
                and not self.transport.is_closing():
            log.info("%s: request head over %d octets", self._peer(), MAX_HEAD)
            self.transport.write(TOO_BIG_HEAD)
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self._head_seen += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_seen += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        seen, self._head_seen = self._head_seen, 0
        if seen <= MAX_HEAD:
            super().on_headers_complete()
            return
        log.info("%s: request head over %d octets", self._peer(), MAX_HEAD)
        app, self.app = self.app, _head_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)

    # -- idle timeout ---------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        self._idle_timer = self.loop.call_later(max(delay, 0.05), self._check_idle)

    def _owes_bytes(self) -> bool:
        """The client must send more before we can answer (no complete request pending)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return not self.pipeline  # waiting for the next request (or its first byte)
        return bool(cycle.more_body) or (self._reading_head and self._head_bytes > 0)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._state != "open" or self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if not self._owes_bytes():
            self._arm(self.idle_timeout)
            return
        head_slow = self._reading_head and self._head_bytes and \
            now - self._head_started >= self.idle_timeout
        if now - self._last_data >= self.idle_timeout or head_slow:
            log.debug("%s: idle for %.0fs: closed", self._peer(), self.idle_timeout)
            self.transport.close()
            return
        self._arm(self.idle_timeout - (now - self._last_data))

    def _peer(self) -> str:
        return self.client[0] if self.client else "unknown"


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    """Open the HTTP (80) and HTTPS (443) listeners; serve until ``stop`` is set."""
    files = await asyncio.to_thread(ensure_tls_files, cfg)
    app = HTTPApp(cfg, files)
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                            server_header=False, date_header=True, http="httptools",
                            ws="none", loop="none", proxy_headers=False,
                            timeout_keep_alive=max(1, int(cfg.http.idle_timeout)))
    config.load()
    state = ServerState()
    limiter = limiter_for(cfg)
    tls = server_context(files)
    servers: list[asyncio.Server] = []

    def factory(implicit_tls: bool, name: str):
        proxy = proxy_policy(cfg, name)

        def make() -> asyncio.BaseProtocol:
            proto = HTTPConnection(config=config, server_state=state, app_state={})
            proto.limiter, proto.busy_reply, proto.listener_name = limiter, BUSY, name
            proto.implicit_tls = tls if implicit_tls else None
            proto.handshake_timeout = float(cfg.server.tls_handshake_timeout)
            proto.idle_timeout = float(cfg.http.idle_timeout)
            proto.proxy = proxy
            return proto
        return make

    try:
        for key, implicit_tls in (("http", False), ("https", True)):
            port = cfg.port("http", key)
            if not port:
                continue
            srvs = await start_server(None, cfg.server.bind, port, name=key,
                                      protocol_factory=factory(implicit_tls, key))
            servers += srvs
            for srv in srvs:
                for sock in srv.sockets:
                    what = "https, implicit TLS" if implicit_tls else "http, autoconfig"
                    log.info("listening on %s (%s)", format_sockname(sock.getsockname()), what)
        await app.start()
        await stop.wait()
    finally:
        for srv in servers:
            srv.close()
        await app.stop()  # event streams end
        for conn in list(state.connections):
            with contextlib.suppress(Exception):
                conn.shutdown()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=5)
        for conn in list(state.connections):
            with contextlib.suppress(Exception):
                conn.transport.close()
        await asyncio.sleep(0)
