"""``mailstack serve imap``: the listeners (143 with STARTTLS, 993 with implicit TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from ..accounts.authlimit import AuthThrottle
from ..accounts.users import UserDB
from ..config import Config
from ..runtime.netserver import (
    format_sockname,
    limiter_for,
    peer_ip,
    proxy_policy,
    set_keepalive,
    start_server,
)
from ..runtime.tls import ensure_tls_files, server_context
from . import (  # noqa: F401  (register the commands)
    cmd_append,
    cmd_mailbox,
    cmd_message,
    cmd_search,
    compress,
    notify,
    quota,
)
from .session import Session

log = logging.getLogger("mailstack.imap")
IMAP_BUSY = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"


class IMAPServer:
    """Shared state of the daemon: config, users, throttle, TLS context, live sessions."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.users = UserDB(cfg.data_dir / "users")
        self.throttle = AuthThrottle.for_config(cfg)
        self.tls_context: ssl.SSLContext | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.sessions: set[Session] = set()

    def handler(self, implicit_tls: bool):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            set_keepalive(writer)
            session = Session(self, reader, writer, implicit_tls=implicit_tls)
            self.sessions.add(session)
            try:
                await session.run()
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("imap %s: session failed", peer_ip(writer))
            finally:
                self.tasks.discard(task)
                self.sessions.discard(session)
                with contextlib.suppress(Exception):
                    session.unselect()  # writes metadata the session added to the cache
                writer.close()
                # a shutdown may cancel this task here too (the session had just ended):
                # ending quietly, or the streams callback logs the CancelledError as an error
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(writer.wait_closed(), 2)
        return handle


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    """Open the IMAP listeners on every bind address, serve until ``stop`` is set."""
    server = IMAPServer(cfg)
    files = await asyncio.to_thread(ensure_tls_files, cfg)
    server.tls_context = server_context(files)
    listeners: list[asyncio.Server] = []
    addresses = list(cfg.server.bind)
    limiter = limiter_for(cfg)
    plain_port = cfg.port("imap", "imap")
    tls_port = cfg.port("imap", "imaps")
    try:
        if plain_port:
            srvs = await start_server(server.handler(False), addresses, plain_port,
                                      name="imap", limiter=limiter, busy_reply=IMAP_BUSY,
                                      proxy=proxy_policy(cfg, "imap"))
            listeners += srvs
            for srv in srvs:
                for sock in srv.sockets:
                    log.info("listening on %s (imap, STARTTLS)",
                             format_sockname(sock.getsockname()))
        if tls_port:
            srvs = await start_server(server.handler(True), addresses, tls_port,
                                      ssl_context=server.tls_context, name="imaps",
                                      limiter=limiter, busy_reply=IMAP_BUSY,
                                      handshake_timeout=float(cfg.server.tls_handshake_timeout),
                                      proxy=proxy_policy(cfg, "imaps"))
            listeners += srvs
            for srv in srvs:
                for sock in srv.sockets:
                    log.info("listening on %s (imaps, implicit TLS)",
                             format_sockname(sock.getsockname()))
        await stop.wait()
    finally:
        for srv in listeners:
            srv.close()
        for session in list(server.sessions):  # tell clients before closing (RFC 3501 7.1.5)
            with contextlib.suppress(Exception):
                session.writer.write(b"* BYE server shutting down\r\n")
        for task in list(server.tasks):
            task.cancel()
        if server.tasks:
            await asyncio.wait(list(server.tasks), timeout=5)
        for srv in listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 5)
        server.throttle.close()
