"""Connection limits per client address on every daemon: the next connection gets the
protocol's "busy" answer, the others keep working, and a freed slot is usable again."""

from __future__ import annotations

import asyncio

import pytest

from mailstack.config import Config

from ..conftest import add_user, running

BUSY = {
    ("mta", "smtp"): b"421 4.7.0",
    ("mda", "lmtp"): b"421 4.7.0",
    ("imap", "imap"): b"* BYE [UNAVAILABLE]",
    ("pop3", "pop3"): b"-ERR [SYS/TEMP]",
    ("autoconfig", "http"): b"HTTP/1.1 503",
}
GREETING = {"mta": b"220", "mda": b"220", "imap": b"* OK", "pop3": b"+OK", "autoconfig": b""}


@pytest.mark.parametrize(("daemon", "listener"), list(BUSY))
async def test_per_ip_limit(config_factory, daemon: str, listener: str) -> None:
    cfg: Config = config_factory("[server]\nmax_connections_per_ip = 3\n")
    add_user(cfg, "alice@example.test")
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg):
        held = []
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            if GREETING[daemon]:
                assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
            held.append((r, w))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(r.read(), 5)
        assert refused.startswith(BUSY[(daemon, listener)]), refused
        held.pop()[1].close()
        await asyncio.sleep(0.2)  # the server notices the close
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if GREETING[daemon]:
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
        w.close()
        for _, hw in held:
            hw.close()
