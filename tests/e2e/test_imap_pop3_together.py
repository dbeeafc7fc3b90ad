"""IMAP and POP3 on one mailbox at once, as the real daemons (in this test's event loop)."""

from __future__ import annotations

import asyncio
import imaplib
import poplib

from mailstack.config import Config
from mailstack.store.maildir import Maildir, mailbox_path

from ..conftest import add_user, running


def _msg(n: int) -> bytes:
    return f"From: bob@example.test\r\nSubject: both {n}\r\n\r\nbody {n}\r\n".encode()


async def test_pop3_retr_and_dele_show_up_in_a_selected_imap_session(cfg: Config) -> None:
    add_user(cfg, "alice@example.test", "pw")
    box = Maildir(mailbox_path(cfg.data_dir, "alice@example.test"))
    for n in range(3):
        box.deliver(_msg(n))
    async with running("imap", cfg), running("pop3", cfg):
        def imap_open() -> imaplib.IMAP4:
            c = imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=10)
            c.login("alice@example.test", "pw")
            c.select("INBOX")
            return c
        imap = await asyncio.to_thread(imap_open)

        def pop_session() -> list[bytes]:
            p = poplib.POP3("127.0.0.1", cfg.port("pop3", "pop3"), timeout=10)
            p.user("alice@example.test")
            p.pass_("pw")
            uidls = p.uidl()[1]
            p.retr(1)  # marks it \\Seen for IMAP
            p.dele(2)
            p.quit()  # UPDATE: message 2 is removed
            return uidls
        uidls = await asyncio.to_thread(pop_session)
        assert len(uidls) == 3

        def imap_view() -> list[tuple[bytes, bytes]]:
            imap.noop()  # changes made elsewhere arrive at the next command
            typ, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            return [d for d in data if isinstance(d, tuple)]
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            parts = await asyncio.to_thread(imap_view)
            if len(parts) == 2 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        subjects = [p[1].decode().strip() for p in parts]
        assert subjects == ["Subject: both 0", "Subject: both 2"]
        assert b"\\Seen" in parts[0][0] and b"\\Seen" not in parts[1][0]
        await asyncio.to_thread(imap.logout)
