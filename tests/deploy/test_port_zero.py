"""Port 0 disables a listener, also under ``--port-offset`` (README: "ports (0 disables)")."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
from pathlib import Path

import pytest

from mailstack.config import load

from ..e2e.helpers import free_offset, mailstack, proc, refuses

pytestmark = pytest.mark.e2e

OFF = '[imap]\nimap = 0\n[pop3]\npop3 = 0\n[mta]\nsmtp = 0\n'


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(f'[server]\nhostname = "mail.example.test"\ndomains = ["example.test"]\n'
                    f'data_dir = "{tmp_path / "data"}"\nbind = ["127.0.0.1"]\n' + OFF)
    return path


def test_port_zero_stays_zero_under_an_offset(tmp_path: Path) -> None:
    cfg = load(_config(tmp_path), port_offset=10000, env={})
    assert [cfg.port("imap", "imap"), cfg.port("pop3", "pop3"), cfg.port("mta", "smtp")] == \
        [0, 0, 0]
    assert cfg.port("imap", "imaps") == 10993 and cfg.port("mta", "submission") == 10587


def test_up_opens_no_listener_that_is_set_to_zero(tmp_path: Path) -> None:
    path = _config(tmp_path)
    mailstack("user", "add", "alice@example.test", "--password-stdin", "--config", str(path),
              input="alice-pw\n")
    off = free_offset()
    check = mailstack("config", "check", "--config", str(path), "--port-offset", str(off))
    listed = check.stdout
    assert f"port {993 + off}" in listed and f"port {587 + off}" in listed
    names = {line.split()[1] for line in listed.splitlines() if " port " in line}
    assert names == {"submission", "submissions", "imaps", "pop3s", "http", "https"}, listed
    assert f"port {off} " not in listed and f"port {143 + off} " not in listed
    with proc("up", "--config", str(path), "--port-offset", str(off)) as up:
        up.wait_for_output("mailstack is up", 90)
        for port in (off, off + 143, off + 110, off + 25):
            assert refuses(port), f"something listens on {port}:\n{up.output}"
        ca = tmp_path / "data" / "tls" / "ca.pem"
        ctx = ssl.create_default_context(cafile=str(ca))
        with imaplib.IMAP4_SSL("127.0.0.1", 993 + off, ssl_context=ctx, timeout=15) as imap:
            imap.login("alice@example.test", "alice-pw")
        pop = poplib.POP3_SSL("127.0.0.1", 995 + off, context=ctx, timeout=15)
        pop.user("alice@example.test")
        pop.pass_("alice-pw")
        pop.quit()
        with smtplib.SMTP("127.0.0.1", 587 + off, timeout=15) as s:
            s.starttls(context=ctx)
            s.login("alice@example.test", "alice-pw")
        for daemon in ("imap", "pop3", "mta"):
            health = mailstack("health", daemon, "--config", str(path), "--port-offset",
                               str(off), check=False)
            assert health.returncode == 0, (daemon, health.stdout, health.stderr)
        assert up.terminate() == 0
