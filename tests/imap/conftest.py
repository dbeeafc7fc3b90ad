"""Fixtures for the IMAP tests: an imap daemon process (uvloop, as in production) on free ports
with one user."""

from __future__ import annotations

import asyncio
import imaplib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from mailstack.config import Config
from mailstack.store.maildir import Maildir, MaildirMessage, mailbox_path
from tests.conftest import Daemon, add_user, running

USER = "alice@example.test"
PASSWORD = "wonderland"


@dataclass
class Server:
    cfg: Config
    port: int
    tls_port: int
    ssl: ssl.SSLContext
    user: str = USER
    password: str = PASSWORD
    daemon: Daemon | None = None

    def log(self) -> str:
        """The imap daemon's log so far."""
        assert self.daemon is not None, "started without running()"
        return self.daemon.log()

    @property
    def inbox(self) -> Maildir:
        return Maildir(mailbox_path(self.cfg.data_dir, self.user))

    def folder(self, name: str) -> Maildir:
        return self.inbox.folder(name)

    def deliver(self, data: bytes | str, folder: str = "INBOX", flags: str = "") -> MaildirMessage:
        """Store a message the way the mda does."""
        if isinstance(data, str):
            data = data.encode()
        return self.folder(folder).deliver(data, flags=flags)

    def client(self) -> imaplib.IMAP4:
        """A logged-in imaplib client over plain loopback."""
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        c.login(self.user, self.password)
        return c

    def tls_client(self) -> imaplib.IMAP4_SSL:
        c = imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=self.ssl, timeout=10)
        c.login(self.user, self.password)
        return c

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def message(subject: str = "Hello", body: str = "Hi there.\n", sender: str = "bob@example.test",
            to: str = USER, extra: str = "") -> bytes:
    return (f"From: Bob <{sender}>\nTo: {to}\nSubject: {subject}\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\nMessage-ID: <{subject.replace(' ', '.')}"
            f"@example.test>\n{extra}\n{body}").encode()


@pytest.fixture
async def imap(cfg: Config, client_ssl: ssl.SSLContext) -> AsyncIterator[Server]:
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg) as daemon:
        yield Server(cfg, cfg.port("imap", "imap"), cfg.port("imap", "imaps"), client_ssl,
                     daemon=daemon)


@pytest.fixture
async def imap_on_each_loop(config_factory, daemon_loop: str,
                            client_ssl: ssl.SSLContext) -> AsyncIterator[Server]:
    """``imap`` on uvloop and on plain asyncio (for STARTTLS and other transport details)."""
    cfg = config_factory(daemon_loop)
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg) as daemon:
        yield Server(cfg, cfg.port("imap", "imap"), cfg.port("imap", "imaps"), client_ssl,
                     daemon=daemon)


@pytest.fixture
async def imap_quota(config_factory, client_ssl: ssl.SSLContext) -> AsyncIterator[Server]:
    """``imap`` with ``[mda] quota`` of 10 KiB and a 3-message limit."""
    cfg = config_factory('[mda]\nquota = "10KiB"\nquota_messages = 3')
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg) as daemon:
        yield Server(cfg, cfg.port("imap", "imap"), cfg.port("imap", "imaps"), client_ssl,
                     daemon=daemon)


class Raw:
    """A line-oriented raw IMAP client for exact-sequence tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, srv: Server, tls: bool = False) -> Raw:
        if tls:
            r, w = await asyncio.open_connection("127.0.0.1", srv.tls_port, ssl=srv.ssl)
        else:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        raw = cls(r, w)
        greeting = await raw.line()
        assert greeting.startswith(b"* OK"), greeting
        raw.greeting = greeting
        return raw

    async def line(self, timeout: float = 10) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, tag: str, text: str | bytes, timeout: float = 10) -> list[bytes]:
        """Send ``tag text`` and collect every response line up to the tagged one (literals
        are inlined)."""
        if isinstance(text, str):
            text = text.encode()
        await self.send(tag.encode() + b" " + text + b"\r\n")
        return await self.until(tag, timeout)

    async def until(self, tag: str, timeout: float = 10) -> list[bytes]:
        out = []
        while True:
            line = await self.line(timeout)
            if not line:
                raise ConnectionError("closed: " + repr(out))
            while line.rstrip(b"\r\n").endswith(b"}") and b"{" in line:
                size = int(line.rstrip(b"\r\n").rsplit(b"{", 1)[1][:-1].rstrip(b"+"))
                data = await asyncio.wait_for(self.reader.readexactly(size), timeout)
                line = line + data + await self.line(timeout)
            out.append(line)
            if line.startswith(tag.encode() + b" "):
                return out

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def ok(lines: list[bytes], tag: str) -> list[bytes]:
    """``lines`` (a response), after checking that it ends with ``tag OK``."""
    assert lines[-1].startswith(f"{tag} OK".encode()), lines
    return lines


async def login(srv: Server, *enable: str, port: int | None = None) -> Raw:
    """A raw session logged in as the test user (on ``port`` when given: another daemon of
    the same data), with ``ENABLE`` of the extensions named."""
    if port is None:
        c = await Raw.connect(srv)
    else:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        c = Raw(r, w)
        assert (await c.line()).startswith(b"* OK")
    ok(await c.cmd("L", f"LOGIN {srv.user} {srv.password}"), "L")
    if enable:
        lines = ok(await c.cmd("E", "ENABLE " + " ".join(enable)), "E")
        enabled = next(x for x in lines if x.startswith(b"* ENABLED")).upper().split()
        assert all(e.upper().encode() in enabled for e in enable), lines
    return c


async def session(srv: Server, box: str = "INBOX", port: int | None = None) -> Raw:
    """A raw session logged in with ``box`` selected."""
    c = await login(srv, port=port)
    ok(await c.cmd("S", f"SELECT {box}"), "S")
    return c
