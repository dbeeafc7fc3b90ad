"""``mailstack serve pop3``: the POP3 listeners (110-equivalent with STLS, 995 implicit TLS).

:func:`serve` opens ``[pop3].pop3`` (plain, STLS offered) and ``[pop3].pop3s`` (RFC 8314
implicit TLS) on every ``[server].bind`` address, logs one ``listening on`` line per listener,
waits for ``stop``, then stops accepting and ends the open sessions (they get
``-ERR [SYS/TEMP]``; nothing is deleted for a session that did not QUIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from ..accounts.authlimit import AuthThrottle
from ..accounts.users import UserDB
from ..config import Config
from ..runtime.netserver import format_sockname, limiter_for, proxy_policy, start_server
from ..runtime.tls import ensure_tls_files, server_context
from .session import Shared, handle

log = logging.getLogger("mailstack.pop3")
POP3_BUSY = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"


async def serve(cfg: Config, stop: asyncio.Event) -> None:
    tls_context = server_context(ensure_tls_files(cfg))
    shared = Shared(cfg=cfg, users=UserDB(cfg.data_dir / "users"),
                    throttle=AuthThrottle.for_config(cfg),
                    tls_context=tls_context)
    servers: list[asyncio.Server] = []
    limiter = limiter_for(cfg)
    try:
        plain_port = cfg.port("pop3", "pop3")
        if plain_port:
            for srv in await start_server(functools.partial(handle, shared, implicit_tls=False),
                                          cfg.server.bind, plain_port, name="pop3",
                                          limiter=limiter, busy_reply=POP3_BUSY,
                                          proxy=proxy_policy(cfg, "pop3")):
                servers.append(srv)
                for sock in srv.sockets:
                    log.info("listening on %s (pop3, STLS)", format_sockname(sock.getsockname()))
        tls_port = cfg.port("pop3", "pop3s")
        if tls_port:
            for srv in await start_server(functools.partial(handle, shared, implicit_tls=True),
                                          cfg.server.bind, tls_port, ssl_context=tls_context,
                                          name="pop3s", limiter=limiter, busy_reply=POP3_BUSY,
                                          handshake_timeout=float(
                                              cfg.server.tls_handshake_timeout),
                                          proxy=proxy_policy(cfg, "pop3s")):
                servers.append(srv)
                for sock in srv.sockets:
                    log.info("listening on %s (pop3s, implicit TLS)",
                             format_sockname(sock.getsockname()))
        await stop.wait()
    finally:
        for srv in servers:
            srv.close()
        sessions = list(shared.sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            await asyncio.wait(sessions, timeout=5)
        for srv in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 5)
        shared.throttle.close()
