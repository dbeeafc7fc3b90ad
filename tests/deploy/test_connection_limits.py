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


async def _connect_when_free(port: int, daemon: str, timeout: float = 20.0
                             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect until the daemon has noticed a freed slot: a refusal (its busy answer) means
    "not yet"; anything but the greeting or a busy answer fails at once."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if not GREETING[daemon]:  # http: a request gets 503 or a real answer
            w.write(b"GET /ca.pem HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first = await asyncio.wait_for(r.readline(), 10)
        if not first.startswith(BUSY[(daemon, _listener(daemon))]):
            assert first.startswith(GREETING[daemon] or b"HTTP/1.1 200"), first
            return r, w
        w.close()
        assert asyncio.get_running_loop().time() < deadline, "the freed slot never came back"
        await asyncio.sleep(0.05)


def _listener(daemon: str) -> str:
    return next(listener for d, listener in BUSY if d == daemon)


@pytest.mark.parametrize(("daemon", "listener"), list(BUSY))
async def test_per_ip_limit(config_factory, daemon_loop: str, daemon: str,
                            listener: str) -> None:
    """On both event loops: uvloop's transports are no asyncio.WriteTransport, and the busy
    answer used to be dropped there (a silent close) while asyncio sent it."""
    cfg: Config = config_factory("[server]\nmax_connections_per_ip = 3\n" + daemon_loop)
    add_user(cfg, "alice@example.test")
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg) as proc:
        held = []
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            if GREETING[daemon]:
                assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
            held.append((r, w))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(r.read(), 5)
        assert refused.startswith(BUSY[(daemon, listener)]), refused
        await proc.wait_log("too many connections")
        held.pop()[1].close()
        r, w = await _connect_when_free(port, daemon)
        w.close()
        for _, hw in held:
            hw.close()


@pytest.mark.parametrize(("daemon", "listener"), [("imap", "imap"), ("mta", "smtp")])
async def test_total_limit_counts_every_client_address(config_factory, daemon: str,
                                                       listener: str) -> None:
    """[server] max_connections: three clients from three addresses fill the daemon; a fourth
    address (under its own per-address limit) is refused; a freed slot serves it again."""
    cfg: Config = config_factory("[server]\nmax_connections = 3\n")
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg) as proc:
        held = []
        for n in (2, 3, 4):
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{n}", 0))
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
            held.append(w)
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0))
        refused = await asyncio.wait_for(r.read(), 5)
        assert refused.startswith(BUSY[(daemon, listener)]), refused
        await proc.wait_log("refused 127.0.0.5: too many connections (0 from it, 3 in all)")
        held.pop().close()
        r, w = await _connect_when_free(port, daemon)
        w.close()
        for hw in held:
            hw.close()
