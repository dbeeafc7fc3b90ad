"""A command whose store write waits for another process's lock on the account's index must
not stall the daemon's event loop: the other sessions are served meanwhile (issue 13: <= 10 ms
of event-loop time per command). POP3's QUIT has its own test in tests/pop3."""

from __future__ import annotations

import asyncio
import imaplib
import sqlite3
import threading

from mailstack.config import Config
from mailstack.store.account import INDEX_FILE, AccountStore
from mailstack.store.maildir import create_user_mailbox

from ..conftest import add_user, running


async def test_imap_subscribe_waiting_for_the_index_lock(cfg: Config) -> None:
    alice = add_user(cfg, "alice@example.test")
    add_user(cfg, "bob@example.test")
    root = create_user_mailbox(cfg.data_dir, alice).root
    AccountStore.open(root).create_mailbox("Lists")
    port = cfg.port("imap", "imap")
    async with running("imap", cfg):
        first = imaplib.IMAP4("127.0.0.1", port, timeout=60)
        first.login("alice@example.test", "secret")
        other = sqlite3.connect(root / INDEX_FILE, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writes to alice's index
        result: list[tuple] = []
        waiting = threading.Thread(target=lambda: result.append(first.subscribe("Lists")))
        waiting.start()
        try:
            def bob() -> None:
                c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
                c.login("bob@example.test", "secret")
                assert c.noop()[0] == "OK"
                c.logout()
            await asyncio.to_thread(bob)  # served while alice's SUBSCRIBE waits
            assert not result, "SUBSCRIBE ended while the index was locked"
        finally:
            other.execute("ROLLBACK")
            other.close()
        await asyncio.to_thread(waiting.join, 60)
        assert result and result[0][0] == "OK"
        assert "Lists" in AccountStore.open(root).subscriptions()
        first.logout()
