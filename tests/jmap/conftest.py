"""Fixtures for the JMAP tests: the http daemon and an imap daemon as separate processes over
one data directory (``mailstack serve``, uvloop), two users, real HTTP clients."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from mailstack.config import Config
from mailstack.jmap.account import account_id
from mailstack.runtime.tls import client_context, ensure_tls_files
from mailstack.store.maildir import Maildir, MaildirMessage, mailbox_path
from tests.conftest import Daemon, add_user, running

ALICE, BOB = "alice@example.test", "bob@example.test"
PASSWORD = "wonderland"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


def message(subject: str = "hello", body: str = "some body text", *, frm: str = BOB,
            extra: str = "") -> bytes:
    return (f"From: Bob <{frm}>\nTo: {ALICE}\nSubject: {subject}\n"
            f"Date: Fri, 27 Nov 2026 10:00:00 +0000\nMessage-ID: <{abs(hash(subject))}@x>\n"
            f"{extra}\n{body}\n").encode()


@dataclass
class JMAP:
    cfg: Config
    http: Daemon
    ssl: ssl.SSLContext

    @property
    def base(self) -> str:
        return f"https://localhost:{self.cfg.port('http', 'https')}"

    @property
    def plain(self) -> str:
        return f"http://127.0.0.1:{self.cfg.port('http', 'http')}"

    def client(self, user: str = ALICE, password: str = PASSWORD, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, verify=self.ssl, auth=(user, password),
                                 timeout=30, **kw)

    def account(self, user: str = ALICE) -> str:
        return account_id(user)

    def inbox(self, user: str = ALICE) -> Maildir:
        return Maildir(mailbox_path(self.cfg.data_dir, user))

    def deliver(self, data: bytes, user: str = ALICE, folder: str = "INBOX") -> MaildirMessage:
        """Store a message the way the mda does (a file in new/)."""
        box = self.inbox(user)
        return (box if folder == "INBOX" else box.folder(folder)).deliver(data)

    async def call(self, calls: list[list[Any]], user: str = ALICE,
                   client: httpx.AsyncClient | None = None) -> list[list[Any]]:
        """POST one request; returns methodResponses (asserting HTTP 200)."""
        own = client is None
        c = client or self.client(user)
        try:
            r = await c.post("/jmap/api", json={"using": USING, "methodCalls": calls})
        finally:
            if own:
                await c.aclose()
        assert r.status_code == 200, r.text
        return r.json()["methodResponses"]

    async def one(self, name: str, args: dict[str, Any], user: str = ALICE) -> dict[str, Any]:
        args = {"accountId": self.account(user), **args}
        (resp,) = await self.call([[name, args, "c"]], user)
        assert resp[0] == name, resp
        return resp[1]

    async def wait_for(self, check: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = await check()
            if got:
                return got
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.05)


@pytest.fixture
async def jmap(config_factory) -> AsyncIterator[JMAP]:
    cfg: Config = config_factory('[http]\nidle_timeout = "3s"\nmax_size_request = 100000\n'
                                 'max_size_upload = 200000\nmax_calls_in_request = 8\n')
    add_user(cfg, ALICE, PASSWORD)
    add_user(cfg, BOB, PASSWORD)
    files = ensure_tls_files(cfg)
    async with running("http", cfg) as daemon:
        yield JMAP(cfg, daemon, client_context(files.ca))


@pytest.fixture
async def imap_daemon(jmap: JMAP) -> AsyncIterator[Daemon]:
    async with running("imap", jmap.cfg) as daemon:
        yield daemon
