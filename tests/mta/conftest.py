"""Fixtures for protocol tests of the mta and mda: both daemons as processes (uvloop), as
production runs them."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.runtime.tls import client_context, ensure_tls_files
from mailstack.store.maildir import delivery_order

from ..conftest import Daemon, add_user, running


@dataclass
class Stack:
    cfg: Config
    ssl: ssl.SSLContext
    ca: Path
    #: the daemon processes by name (their pids and logs), once started
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @property
    def smtp(self) -> int:
        return self.cfg.port("mta", "smtp")

    @property
    def submission(self) -> int:
        return self.cfg.port("mta", "submission")

    @property
    def submissions(self) -> int:
        return self.cfg.port("mta", "submissions")

    @property
    def lmtp(self) -> int:
        return self.cfg.port("mda", "lmtp")

    def inbox(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.cfg.data_dir / "mail" / domain / local

    def messages(self, address: str) -> list[bytes]:
        box = self.inbox(address)
        files = sorted([*(box / "new").iterdir(), *(box / "cur").iterdir()],
                       key=lambda p: delivery_order(p.name))  # by numbers, not as text
        return [f.read_bytes() for f in files]

    async def wait_messages(self, address: str, n: int, timeout: float = 10.0) -> list[bytes]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            msgs = self.messages(address)
            if len(msgs) >= n or asyncio.get_running_loop().time() > deadline:
                return msgs
            await asyncio.sleep(0.05)

    def submit(self, sender: str, rcpts: list[str], body: bytes | str,
               user: str = "alice@example.test", password: str = "alice-pw") -> dict:
        """Blocking: STARTTLS + AUTH on submission (run with asyncio.to_thread)."""
        with smtplib.SMTP("127.0.0.1", self.submission, timeout=10) as s:
            s.starttls(context=self.ssl)
            s.login(user, password)
            return s.sendmail(sender, rcpts, body)


def make_stack(cfg: Config) -> Stack:
    files = ensure_tls_files(cfg)
    add_user(cfg, "alice@example.test", "alice-pw")
    add_user(cfg, "bob@example.test", "bob-pw")
    return Stack(cfg, client_context(files.ca), files.ca)


@pytest.fixture
async def stack_on_each_loop(config_factory, daemon_loop: str) -> AsyncIterator[Stack]:
    """``stack`` with the mta and mda on uvloop and on plain asyncio."""
    cfg = config_factory(daemon_loop)
    st = make_stack(cfg)
    async with running("mda", cfg) as mda, running("mta", cfg) as mta:
        st.daemons.update(mda=mda, mta=mta)
        yield st


@pytest.fixture
async def stack(cfg: Config) -> AsyncIterator[Stack]:
    st = make_stack(cfg)
    async with running("mda", cfg) as mda, running("mta", cfg) as mta:
        st.daemons.update(mda=mda, mta=mta)
        yield st
