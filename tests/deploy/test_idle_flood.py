"""1,000 idle unauthenticated connections from one address do not stop a legitimate client
from another address from logging in and fetching (IMAP, POP3, SMTP). How long the legitimate
client takes is a figure for bench/flood_bench.py, not an assertion: on a loaded CI machine any
wall-clock bound is either flaky or too loose to mean anything."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time

import pytest

from mailstack.config import Config
from mailstack.store.maildir import Maildir, mailbox_path

from ..conftest import add_user, running

FLOOD = 1000


@pytest.fixture(autouse=True)
def enough_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 3 * FLOOD:
        pytest.skip("not enough file descriptors for the flood")


async def _flood(port: int) -> list[asyncio.StreamWriter]:
    """FLOOD connections from 127.0.0.2 that say nothing (some may be refused)."""
    writers = []
    for _ in range(FLOOD):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port,
                                                 local_addr=("127.0.0.2", 0))
            writers.append(w)
    return writers


async def _legit(port: int, script: list[tuple[bytes, bytes]]) -> float:
    """The legitimate client's session; returns how long it took (for the benchmark)."""
    t0 = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    greeting = await asyncio.wait_for(r.readline(), 30)
    assert greeting[:1] in (b"*", b"+", b"2"), greeting
    for line, expect in script:
        w.write(line + b"\r\n")
        while True:
            got = await asyncio.wait_for(r.readline(), 30)
            assert got, f"connection closed after {line!r}"
            if got.startswith(expect):
                break
            assert not got.startswith(b"-ERR") and got[2:5] not in (b"NO ", b"BAD"), got
    w.close()
    return time.monotonic() - t0


@pytest.mark.parametrize("daemon", ["imap", "pop3", "mta"])
async def test_idle_flood_does_not_lock_out_a_real_client(config_factory, daemon: str) -> None:
    cfg: Config = config_factory("[server]\nmax_connections_per_ip = 1000\n")
    add_user(cfg, "alice@example.test", "pw")
    Maildir(mailbox_path(cfg.data_dir, "alice@example.test")).deliver(
        b"Subject: hello\r\n\r\nbody\r\n")
    port, script = {
        "imap": (cfg.port("imap", "imap"), [(b"a LOGIN alice@example.test pw", b"a OK"),
                                            (b"b SELECT INBOX", b"b OK"),
                                            (b"c FETCH 1 BODY[]", b"c OK")]),
        "pop3": (cfg.port("pop3", "pop3"), [(b"USER alice@example.test", b"+OK"),
                                            (b"PASS pw", b"+OK"), (b"RETR 1", b".\r\n"),
                                            (b"QUIT", b"+OK")]),
        "mta": (cfg.port("mta", "smtp"), [(b"EHLO legit.example", b"250 "),
                                          (b"MAIL FROM:<a@example.org>", b"250"),
                                          (b"RCPT TO:<alice@example.test>", b"250")]),
    }[daemon]
    async with running(daemon, cfg):
        flood = await _flood(port)
        assert len(flood) >= 900
        await _legit(port, script)  # served to the end while the flood holds its slots
        assert not [w for w in flood if w.is_closing()], "the flood was not held open"
        for w in flood:
            w.close()
