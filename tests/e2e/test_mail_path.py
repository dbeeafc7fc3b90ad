"""The whole path through `mailstack up`: MUA → mta → mda → Maildir → POP3/IMAP → MUA."""

from __future__ import annotations

import email
import imaplib
import poplib
import ssl
from pathlib import Path

import pytest

from mailstack.runtime.daemon import available_daemons

from .helpers import free_offset, mailstack, proc, submit, wait_files

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path):
    cfg = tmp_path / "m.toml"
    data = tmp_path / "data"
    cfg.write_text('[server]\nhostname = "mail.example.test"\ndomains = ["example.test"]\n'
                   f'data_dir = "{data}"\n')
    for user in ("alice", "bob"):
        mailstack("user", "add", f"{user}@example.test", "--password-stdin", "--config",
                  str(cfg), input=f"{user}-pw\n")
    off = free_offset()
    with proc("up", "--config", str(cfg), "--port-offset", str(off)) as up:
        up.wait_for_output("mailstack is up")
        yield off, data, ssl.create_default_context(cafile=str(data / "tls" / "ca.pem")), up


@pytest.mark.skipif("pop3" not in available_daemons(), reason="no pop3 daemon")
def test_submit_then_pop3_moves_mail_to_the_client(stack) -> None:
    off, data, ctx, _ = stack
    for i in range(3):
        submit(587 + off, data / "tls" / "ca.pem", "alice@example.test", "alice-pw",
               ["bob@example.test"], f"Subject: pop {i}\r\n\r\nbody {i}\r\n")
    assert len(wait_files(data, "bob@example.test", 3)) == 3
    pop = poplib.POP3_SSL("127.0.0.1", 995 + off, context=ctx, timeout=10)
    pop.user("bob@example.test")
    pop.pass_("bob-pw")
    count, _ = pop.stat()
    assert count == 3
    subjects = []
    for n in range(1, count + 1):
        lines = pop.retr(n)[1]
        subjects.append(email.message_from_bytes(b"\r\n".join(lines))["Subject"])
        pop.dele(n)
    pop.quit()
    assert sorted(subjects) == ["pop 0", "pop 1", "pop 2"]
    assert wait_files(data, "bob@example.test", 0) == [], "POP3 moved the mail off the server"


@pytest.mark.skipif("imap" not in available_daemons(), reason="no imap daemon")
def test_submit_then_imap_keeps_mail_on_the_server(stack) -> None:
    off, data, ctx, _ = stack
    submit(465 + off, data / "tls" / "ca.pem", "alice@example.test", "alice-pw",
           ["bob@example.test"], "Subject: imap\r\n\r\nkept\r\n", implicit=True)
    assert len(wait_files(data, "bob@example.test", 1)) == 1
    imap = imaplib.IMAP4_SSL("127.0.0.1", 993 + off, ssl_context=ctx, timeout=10)
    imap.login("bob@example.test", "bob-pw")
    imap.select("INBOX")
    typ, data_ = imap.fetch("1", "(BODY[])")
    assert typ == "OK" and b"Subject: imap" in data_[0][1]
    imap.logout()
    assert len(wait_files(data, "bob@example.test", 1)) == 1, "IMAP leaves mail on the server"


@pytest.mark.skipif("imap" not in available_daemons(), reason="no imap daemon")
def test_idle_sees_mail_submitted_over_smtp(stack) -> None:
    import socket

    off, data, ctx, _ = stack
    raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 993 + off), 10),
                          server_hostname="localhost")
    f = raw.makefile("rb")

    def cmd(line: bytes, tag: bytes) -> list[bytes]:
        raw.sendall(line + b"\r\n")
        out = []
        while True:
            got = f.readline()
            out.append(got)
            if got.startswith(tag + b" ") or got.startswith(b"+"):
                return out

    f.readline()
    cmd(b"a LOGIN bob@example.test bob-pw", b"a")
    cmd(b"b SELECT INBOX", b"b")
    assert cmd(b"c IDLE", b"c")[-1].startswith(b"+")
    submit(587 + off, data / "tls" / "ca.pem", "alice@example.test", "alice-pw",
           ["bob@example.test"], "Subject: idle\r\n\r\nwake up\r\n")
    assert f.readline().strip() == b"* 1 EXISTS"  # pushed: IDLE's latency is a benchmark's
    raw.sendall(b"DONE\r\n")
    while (line := f.readline()).startswith(b"* "):
        pass  # e.g. * 1 RECENT
    assert line.startswith(b"c OK")
    raw.close()
