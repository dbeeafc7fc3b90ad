"""Failed logins are delayed across SMTP AUTH, IMAP and POP3 alike: the mta, imap and pop3
daemons (each with its own throttle, as in separate processes) share the counts through the
data directory, per client address and per account, and across a daemon restart."""

from __future__ import annotations

import asyncio
import base64
import ssl
import stat
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from mailstack.accounts.authlimit import db_path
from mailstack.config import Config

from ..conftest import Daemon, running
from .conftest import ALICE, INITIAL_DELAY, PASSWORD  # and the scfg and tls fixtures

T = TypeVar("T")


@dataclass
class Three:
    """The mta, imap and pop3 daemon processes on one data directory."""

    cfg: Config
    daemons: list[Daemon]

    def log(self) -> str:
        return "\n".join(d.log() for d in self.daemons)


@pytest.fixture
async def all_three(scfg: Config) -> AsyncIterator[Three]:
    async with running("mta", scfg) as mta, running("imap", scfg) as imap, \
            running("pop3", scfg) as pop3:
        yield Three(scfg, [mta, imap, pop3])


async def timed(aw: Awaitable[T]) -> tuple[T, float]:
    t0 = time.monotonic()
    result = await aw
    return result, time.monotonic() - t0


class Line:
    """A line-based client connected from a chosen loopback source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str, tls: ssl.SSLContext | None = None) -> Line:
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=tls,
            server_hostname="localhost" if tls else None)
        return cls(r, w)

    async def line(self) -> str:
        return (await asyncio.wait_for(self.reader.readline(), 30)).decode()

    async def send(self, text: str) -> None:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class SMTP(Line):
    async def reply(self) -> str:
        while True:
            line = await self.line()
            if line[3:4] != "-":
                return line

    @classmethod
    async def submission(cls, cfg: Config, source: str, tls: ssl.SSLContext) -> SMTP:
        """587: EHLO, STARTTLS, EHLO."""
        c = await cls.connect(cfg.port("mta", "submission"), source)
        assert (await c.reply()).startswith("220")
        await c.send("EHLO client.example")
        await c.reply()
        await c.send("STARTTLS")
        assert (await c.reply()).startswith("220")
        await c.writer.start_tls(tls, server_hostname="localhost")
        await c.send("EHLO client.example")
        assert (await c.reply()).startswith("250")
        return c

    @classmethod
    async def submissions(cls, cfg: Config, source: str, tls: ssl.SSLContext) -> SMTP:
        """465: implicit TLS, EHLO."""
        c = await cls.connect(cfg.port("mta", "submissions"), source, tls)
        assert (await c.reply()).startswith("220")
        await c.send("EHLO client.example")
        assert (await c.reply()).startswith("250")
        return c

    async def auth(self, user: str, password: str) -> str:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await self.send(f"AUTH PLAIN {blob}")
        return await self.reply()


class IMAP(Line):
    @classmethod
    async def open(cls, cfg: Config, source: str) -> IMAP:
        c = await cls.connect(cfg.port("imap", "imap"), source)  # loopback: LOGIN allowed
        assert (await c.line()).startswith("* OK")
        return c

    async def login(self, user: str, password: str) -> str:
        await self.send(f'a LOGIN "{user}" "{password}"')
        while not (line := await self.line()).startswith("a "):
            pass
        return line


class POP3(Line):
    @classmethod
    async def open(cls, cfg: Config, source: str) -> POP3:
        c = await cls.connect(cfg.port("pop3", "pop3"), source)  # loopback: USER/PASS allowed
        assert (await c.line()).startswith("+OK")
        return c

    async def login(self, user: str, password: str) -> str:
        """USER then PASS; only the PASS is what the caller times."""
        await self.send(f"USER {user}")
        assert (await self.line()).startswith("+OK")
        await self.send(f"PASS {password}")
        return await self.line()


async def test_smtp_failures_delay_imap_and_pop3_from_the_same_client(
        all_three: Three, tls: ssl.SSLContext) -> None:
    cfg, src = all_three.cfg, "127.0.0.2"
    smtp = await SMTP.submission(cfg, src, tls)
    # auth_failures_free = 2 failures over SMTP AUTH (other accounts: only the address counts)
    for n in (1, 2):
        assert (await smtp.auth(f"nobody{n}@example.test", f"wrong-smtp-{n}")).startswith("535")
    smtp.close()
    imap, pop3 = await IMAP.open(cfg, src), await POP3.open(cfg, src)
    reply, imap_took = await timed(imap.login("nobody3@example.test", "wrong-imap-3"))
    assert reply.startswith("a NO [AUTHENTICATIONFAILED]")
    reply, pop3_took = await timed(pop3.login("nobody4@example.test", "wrong-pop3-4"))
    assert reply.startswith("-ERR [AUTH]")
    assert imap_took >= INITIAL_DELAY and pop3_took >= INITIAL_DELAY, (imap_took, pop3_took)

    # a success over IMAP clears the client's count for the other daemons too: pop3 logs the
    # delay it applied (no wall-clock upper bound: a slow machine only makes it longer)
    assert (await imap.login(ALICE, PASSWORD)).startswith("a OK")
    reply = await pop3.login("nobody5@example.test", "wrong-pop3-5")
    assert reply.startswith("-ERR [AUTH]")
    pop3d = all_three.daemons[2]
    await pop3d.wait_log("auth failed for 'nobody5@example.test'")
    assert "auth failed for 'nobody5@example.test' from 127.0.0.2 (delay 0.0s)" in pop3d.log()
    imap.close()
    pop3.close()
    text = all_three.log()

    assert "nobody3@example.test" in text  # the logs were read
    for n in range(1, 6):
        assert f"wrong-smtp-{n}" not in text and f"wrong-imap-{n}" not in text
        assert f"wrong-pop3-{n}" not in text
    assert PASSWORD not in text
    for n in (1, 2):  # nor the AUTH PLAIN argument, which holds the password in base64
        blob = base64.b64encode(f"\0nobody{n}@example.test\0wrong-smtp-{n}".encode())
        assert blob.decode() not in text


async def test_imap_failures_against_an_account_delay_smtp_auth_for_it(
        all_three: Three, tls: ssl.SSLContext) -> None:
    cfg = all_three.cfg
    imap = await IMAP.open(cfg, "127.0.0.3")
    for n in (1, 2):
        assert (await imap.login(ALICE, f"guess-{n}")).startswith("a NO")
    imap.close()
    # from other addresses: only alice's account count can delay these
    smtp = await SMTP.submissions(cfg, "127.0.0.4", tls)
    reply, took = await timed(smtp.auth(ALICE, "guess-3"))
    assert reply.startswith("535") and took >= INITIAL_DELAY, took
    smtp.close()
    # alice logging in does not reset the guessers' count against her account
    imap = await IMAP.open(cfg, "127.0.0.5")
    assert (await imap.login(ALICE, PASSWORD)).startswith("a OK")
    imap.close()
    pop3 = await POP3.open(cfg, "127.0.0.6")
    reply, took = await timed(pop3.login(ALICE, "guess-4"))
    assert reply.startswith("-ERR [AUTH]") and took >= INITIAL_DELAY, took
    pop3.close()
    text = all_three.log()
    assert "auth failed for 'alice@example.test'" in text
    assert "guess-" not in text and PASSWORD not in text


async def test_counts_survive_a_daemon_restart(scfg: Config) -> None:
    async with running("imap", scfg):
        imap = await IMAP.open(scfg, "127.0.0.7")
        for n in (1, 2):
            assert (await imap.login(f"nobody{n}@example.test", "x")).startswith("a NO")
        imap.close()
    async with running("imap", scfg):
        imap = await IMAP.open(scfg, "127.0.0.7")
        reply, took = await timed(imap.login("nobody3@example.test", "x"))
        assert reply.startswith("a NO") and took >= INITIAL_DELAY, took
        imap.close()


async def test_failure_database_is_private(all_three: Three) -> None:
    imap = await IMAP.open(all_three.cfg, "127.0.0.8")
    assert (await imap.login("nobody@example.test", "x")).startswith("a NO")
    imap.close()
    path = db_path(all_three.cfg)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in path.parent.iterdir():  # -wal and -shm take the database's mode
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra
