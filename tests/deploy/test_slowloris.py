"""A slowloris client (one byte at a time, never finishing a command) is cut off by the idle
timeout on every protocol, while the daemon keeps serving others."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailstack.config import Config

from ..conftest import add_user, running

CASES = {"mta": ("smtp", "[mta]\nidle_timeout = \"1s\"\n"),
         "imap": ("imap", "[imap]\nidle_timeout = \"1s\"\n"),
         "pop3": ("pop3", "[pop3]\nidle_timeout = \"1s\"\n"),
         "mda": ("lmtp", "[mta]\nidle_timeout = \"1s\"\n")}


@pytest.mark.parametrize("daemon", list(CASES))
async def test_slowloris_is_cut_off(config_factory, daemon: str) -> None:
    listener, extra = CASES[daemon]
    cfg: Config = config_factory(extra)
    add_user(cfg, "alice@example.test")
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await r.readline()  # greeting
        t0 = time.monotonic()
        closed = False
        for byte in b"NOOP-never-ending-" * 20:
            try:
                w.write(bytes([byte]))
                await w.drain()
            except ConnectionError:
                closed = True
                break
            try:
                if await asyncio.wait_for(r.read(1024), 0.3) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionError:
                closed = True
                break
            if time.monotonic() - t0 > 10:
                break
        assert closed, "the slow client was never disconnected"
        assert time.monotonic() - t0 < 6
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r2.readline(), 5)  # others are still served
        w2.close()
