"""Two mailstack instances on one machine exchange mail as two providers on the Internet do."""

from __future__ import annotations

import email
import imaplib
import ssl
from pathlib import Path

import pytest

from ..conftest import free_port
from .helpers import mailstack, proc, submit, wait_files, wait_port

pytestmark = pytest.mark.e2e


def stack_config(tmp: Path, domain: str, other_domain: str, other_smtp: int,
                 ports: dict[str, int]) -> Path:
    ports.setdefault("imaps", free_port())
    tmp.mkdir()
    cfg = tmp / "mailstack.toml"
    cfg.write_text(
        f'[server]\nhostname = "mail.{domain}"\ndomains = ["{domain}"]\n'
        f'data_dir = "{tmp / "data"}"\nbind = ["127.0.0.1"]\n'
        f"[mta]\nsmtp = {ports['smtp']}\nsubmission = {ports['submission']}\n"
        f"submissions = {ports['submissions']}\n"
        'retry_initial = "1s"\n'
        f"[mda]\nlmtp = {ports['lmtp']}\n"
        f"[imap]\nimap = {free_port()}\nimaps = {ports['imaps']}\n"
        f"[pop3]\npop3 = {free_port()}\npop3s = {free_port()}\n"
        f"[autoconfig]\nhttp = {free_port()}\nhttps = {free_port()}\n"
        f'[mta.transport]\n"{other_domain}" = "127.0.0.1:{other_smtp}"\n')
    return cfg


def test_two_stacks_mail_each_other(tmp_path: Path) -> None:
    pa = {k: free_port() for k in ("smtp", "submission", "submissions", "lmtp")}
    pb = {k: free_port() for k in ("smtp", "submission", "submissions", "lmtp")}
    cfg_a = stack_config(tmp_path / "a", "example.test", "example.net", pb["smtp"], pa)
    cfg_b = stack_config(tmp_path / "b", "example.net", "example.test", pa["smtp"], pb)
    mailstack("user", "add", "alice@example.test", "--password-stdin", "--config", str(cfg_a),
              input="alice-pw\n")
    mailstack("user", "add", "bob@example.net", "--password-stdin", "--config", str(cfg_b),
              input="bob-pw\n")
    data_a, data_b = tmp_path / "a" / "data", tmp_path / "b" / "data"
    with proc("up", "--config", str(cfg_a)) as a, proc("up", "--config", str(cfg_b)) as b:
        a.wait_for_output("mailstack is up")
        b.wait_for_output("mailstack is up")
        wait_port(pa["submission"])
        submit(pa["submission"], data_a / "tls" / "ca.pem", "alice@example.test", "alice-pw",
               ["bob@example.net"], "From: alice@example.test\r\nTo: bob@example.net\r\n"
               "Subject: hello bob\r\n\r\nacross the Internet\r\n")
        [got] = wait_files(data_b, "bob@example.net", 1)
        msg = email.message_from_bytes(got.read_bytes())
        assert msg["Subject"] == "hello bob"
        received = msg.get_all("Received")
        assert len(received) == 2, received  # alice's mta, then bob's MX
        assert "by mail.example.net" in received[0] and "by mail.example.test" in received[1]
        assert "using TLS" in received[0], "the hop between the stacks used STARTTLS"
        imap = imaplib.IMAP4_SSL("127.0.0.1", pb["imaps"], timeout=10, ssl_context=ssl.
                                 create_default_context(cafile=str(data_b / "tls" / "ca.pem")))
        imap.login("bob@example.net", "bob-pw")
        imap.select("INBOX", readonly=True)
        typ, fetched = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"hello bob" in fetched[0][1], "bob reads it over IMAP"
        imap.logout()
        submit(pb["submission"], data_b / "tls" / "ca.pem", "bob@example.net", "bob-pw",
               ["alice@example.test"], "From: bob@example.net\r\nTo: alice@example.test\r\n"
               f"Subject: Re: hello bob\r\nIn-Reply-To: {msg['Message-ID']}\r\n\r\nhi!\r\n")
        [reply] = wait_files(data_a, "alice@example.test", 1)
        assert email.message_from_bytes(reply.read_bytes())["Subject"] == "Re: hello bob"
        assert "relay=" in a.output and "status=sent" in a.output
