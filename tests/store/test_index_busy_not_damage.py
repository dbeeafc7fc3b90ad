"""A locked account index is busy, not damaged: it is never moved aside and rebuilt (which
would change UIDVALIDITY and lose the keywords beyond the 26 Maildir letters and the stored
time zones). The command that meets the lock answers ``NO [UNAVAILABLE]`` and a later one
sees the account unchanged.

Another process holds the index with ``PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE`` (as a
backup tool or a stuck process would); the imap daemon's 30 s busy timeout is shortened with
the test hook ``MAILSTACK_TEST_INDEX_BUSY_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailstack.config import Config
from mailstack.runtime.testhooks import INDEX_BUSY_ENV as ENV
from mailstack.store import account
from mailstack.store.account import INDEX_FILE, AccountStore
from mailstack.store.maildir import Maildir, mailbox_path
from tests.conftest import add_user, running

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice@example.test", "wonderland"
WORDS = [f"$kw{i}" for i in range(30)]  # more than the 26 Maildir keyword letters
MESSAGE = (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: keep me\r\n"
           b"Date: Thu, 26 Nov 2026 10:00:00 +0530\r\n\r\nbody\r\n")
INTERNALDATE = '"26-Nov-2026 10:00:00 +0530"'

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@contextmanager
def index_held(path: Path) -> Iterator[None]:
    """Hold ``path`` exclusively from another process until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)


def state(c: imaplib.IMAP4) -> tuple[int, set[str], str]:
    """(UIDVALIDITY of INBOX, keywords of its one message, its INTERNALDATE)."""
    typ, _ = c.select("INBOX")
    assert typ == "OK"
    validity = int(c.untagged_responses["UIDVALIDITY"][-1])
    typ, data = c.fetch("1", "(FLAGS INTERNALDATE)")
    assert typ == "OK", data
    line = data[0].decode()
    flags = set(re.search(r"FLAGS \(([^)]*)\)", line).group(1).split())  # type: ignore[union-attr]
    date = re.search(r'INTERNALDATE ("[^"]+")', line).group(1)  # type: ignore[union-attr]
    return validity, {f for f in flags if f.startswith("$kw")}, date


def login(cfg: Config) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=60)
    c.login(USER, PASSWORD)
    return c


async def test_a_locked_index_answers_unavailable_and_is_never_moved_aside(config_factory):
    cfg = config_factory()
    add_user(cfg, USER, PASSWORD)
    root = mailbox_path(cfg.data_dir, USER)
    async with running("imap", cfg):
        c = login(cfg)
        assert c.append("INBOX", None, INTERNALDATE, MESSAGE)[0] == "OK"
        c.select("INBOX")
        assert c.store("1", "+FLAGS", f"({' '.join(WORDS)})")[0] == "OK"
        before = state(c)
        c.logout()
    assert before[1] == set(WORDS) and before[2] == INTERNALDATE

    # a fresh daemon: this process has never opened the account, so the lock meets _connect
    async with running("imap", cfg, env={ENV: "1"}) as imap:
        assert "test hook: the account index busy timeout is 1s" in imap.log()
        with index_held(root / INDEX_FILE):
            c = login(cfg)
            typ, data = await asyncio.to_thread(c.select, "INBOX")
            assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), (typ, data)
            await imap.wait_log("mailbox index unavailable")
        assert not list(root.glob(f"{INDEX_FILE}.corrupt-*"))
        assert "is damaged" not in imap.log()
        assert await asyncio.to_thread(state, c) == before  # the same session, lock released
        c.logout()
        assert await asyncio.to_thread(lambda: state(login(cfg))) == before
    assert not list(root.glob(f"{INDEX_FILE}.corrupt-*"))


def test_store_twin_a_busy_index_raises_and_stays(tmp_path, monkeypatch, caplog):
    """The same at the store: ``AccountStore`` raises ``OperationalError`` for a locked index
    and leaves the file where it is (a fast regression check beside the daemon test)."""
    md = Maildir(tmp_path / "box")
    md.create()
    md.deliver(b"Subject: a\n\na\n")
    store = AccountStore(md.root)
    validity = store.sync("INBOX")[0].uidvalidity
    store._conn.close()
    monkeypatch.setattr(account, "BUSY_TIMEOUT", 0.2)
    with index_held(md.root / INDEX_FILE), \
            pytest.raises(sqlite3.OperationalError, match="locked"):
        AccountStore(md.root)
    assert not list(md.root.glob(f"{INDEX_FILE}.corrupt-*"))
    assert not [r for r in caplog.records if "is damaged" in r.getMessage()]
    assert AccountStore(md.root).sync("INBOX")[0].uidvalidity == validity
