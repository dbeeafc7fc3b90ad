"""Files placed in a Maildir by hand, and the quota on IMAP's own writes (issue 13: 6, 14)."""

from __future__ import annotations

import os
import re

from mailstack.store.maildir import mailbox_path
from tests.store.conftest import USER, Stack


def test_fifo_symlink_and_odd_names_are_skipped(stack: Stack, tmp_path) -> None:
    root = mailbox_path(stack.cfg.data_dir, USER)
    secret = tmp_path / "secret"
    secret.write_text("Subject: root only\n\nTOP-SECRET-CONTENT\n")
    secret.chmod(0o600)
    os.mkfifo(root / "new" / "1700000000.fifo.host")
    os.symlink(secret, root / "new" / "1700000001.link.host")
    os.symlink(secret, root / "cur" / "1700000002.link.host:2,S")
    (root / "new" / "1700000003.nl\nname.host").write_bytes(b"Subject: nl\n\nx\n")
    (root / "new" / os.fsdecode(b"1700000004.bad\xff.host")).write_bytes(b"Subject: b\n\nx\n")
    (root / "new" / "1700000005.good.host").write_bytes(b"Subject: good\n\nfine\n")
    c = stack.imap(0)  # SELECT must neither hang on the FIFO nor fail on the names
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    blob = b"".join(x[1] for x in data if isinstance(x, tuple))
    assert b"fine" in blob and b"TOP-SECRET" not in blob
    assert b"Subject: nl" not in blob and b"Subject: b\r\n" not in blob
    assert len([x for x in data if isinstance(x, tuple)]) == 1
    p = stack.pop3()
    count, _ = p.stat()
    assert count == 1 or all(b"TOP-SECRET" not in b"".join(p.retr(i + 1)[1])
                             for i in range(count))
    p.quit()
    uidlist_like = [n for n in os.listdir(root) if "\n" in n]
    assert not uidlist_like


def test_append_copy_move_respect_the_quota(tmp_path) -> None:
    from mailstack.config import load
    from tests.conftest import add_user, write_config
    from tests.e2e.helpers import Proc
    from tests.store.conftest import PASSWORD, wait_port

    cfg = load(write_config(tmp_path, '[mda]\nquota = "20KiB"'), env={})
    add_user(cfg, USER, PASSWORD)
    proc = Proc("serve", "imap", "--config", str(tmp_path / "mailstack.toml"))
    try:
        wait_port(cfg.port("imap", "imap"), proc)
        import imaplib
        c = imaplib.IMAP4("127.0.0.1", cfg.port("imap", "imap"), timeout=30)
        c.login(USER, PASSWORD)
        body = b"Subject: big\r\n\r\n" + b"x" * 8000 + b"\r\n"
        assert c.append("INBOX", None, None, body)[0] == "OK"
        assert c.append("INBOX", None, None, body)[0] == "OK"
        typ, data = c.append("INBOX", None, None, body)
        assert typ == "NO" and b"[OVERQUOTA]" in data[0]
        c.select("INBOX")
        typ, data = c.uid("COPY", "1:*", "Trash")
        assert typ == "NO" and b"[OVERQUOTA]" in data[0]
        assert c.uid("MOVE", "1", "Trash")[0] == "OK"  # moving takes no more room
        assert re.findall(rb"\d+", c.status("INBOX", "(MESSAGES)")[1][0])[-1] == b"1"
    finally:
        proc.terminate()
    assert "Traceback" not in proc.output
