"""Helpers for the POP3 tests: a user with a mailbox, and a raw line-level POP3 client.

(Not a conftest.py: a second conftest module would shadow ``from conftest import running``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from mailstack.accounts.users import UserDB
from mailstack.config import Config
from mailstack.store.maildir import Maildir, create_user_mailbox

ALICE = "alice@example.test"
PASSWORD = "correct horse"


def message(n: int, body_lines: int = 3) -> bytes:
    """A small LF message whose body has a line starting with a dot."""
    body = "".join(f"line {i} of message {n}\n" for i in range(body_lines))
    return (f"From: bob@example.test\nTo: {ALICE}\nSubject: message {n}\n"
            f"Message-ID: <m{n}@example.test>\n\n.leading dot {n}\n{body}").encode()


def make_alice(cfg: Config, messages: int = 0) -> Maildir:
    """alice@example.test with password PASSWORD and ``messages`` messages in her INBOX."""
    UserDB(cfg.data_dir / "users").add(ALICE, PASSWORD)
    box = create_user_mailbox(cfg.data_dir, ALICE)
    for n in range(1, messages + 1):
        box.deliver(message(n), sync=False)
    return box


class RawPOP3:
    """A line-level POP3 client on asyncio streams for the abuse tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1",
                      ssl_context: ssl.SSLContext | None = None) -> RawPOP3:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname="localhost" if ssl_context else None)
        client = cls(reader, writer)
        greeting = await client.line()
        assert greeting.startswith("+OK"), greeting
        return client

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def line(self, timeout: float = 10) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), timeout)
        if not raw:
            raise EOFError("server closed the connection")
        assert raw.endswith(b"\r\n"), raw
        return raw[:-2].decode()

    async def cmd(self, line: str) -> str:
        await self.send(line + "\r\n")
        return await self.line()

    async def multi(self, timeout: float = 10) -> list[bytes]:
        """The body of a multi-line reply (after its +OK line), un-stuffed."""
        out = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            assert raw.endswith(b"\r\n"), raw
            if raw == b".\r\n":
                return out
            out.append(raw[1:-2] if raw.startswith(b".") else raw[:-2])

    async def login(self, user: str = ALICE, password: str = PASSWORD) -> str:
        assert (await self.cmd(f"USER {user}")).startswith("+OK")
        return await self.cmd(f"PASS {password}")

    async def closed(self, timeout: float = 10) -> bool:
        """True when the server has closed the connection (reads EOF)."""
        return await asyncio.wait_for(self.reader.read(1), timeout) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
