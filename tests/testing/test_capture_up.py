"""``mailstack up --capture``: the supervised stack as a mail catcher readable over IMAP."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import time
from pathlib import Path

import pytest

from mailstack.config import load

from ..conftest import write_config
from ..e2e.helpers import proc, wait_files

pytestmark = pytest.mark.e2e


def test_up_capture(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    cfg = load(path, env={})
    with proc("up", "--config", str(path), "--capture") as p:
        p.wait_for_output("mailstack is up")
        assert "capture@capture.test (password: capture)" in p.output
        with smtplib.SMTP("127.0.0.1", cfg.port("mta", "smtp"), timeout=10) as s:
            refused = s.sendmail("shop@myapp.example", ["someone@nowhere.example",
                                                        "ops@example.test"],
                                 "Subject: order shipped\r\n\r\nyour order\r\n")
        assert refused == {}
        files = wait_files(cfg.data_dir, "capture@capture.test", 1, timeout=15)
        assert len(files) == 1
        text = files[0].read_text()
        assert "X-Original-To: someone@nowhere.example\n" in text
        assert "X-Original-To: ops@example.test\n" in text
        ctx = ssl.create_default_context(cafile=str(cfg.data_dir / "tls" /
                                                                  "ca.pem"))
        with imaplib.IMAP4_SSL("127.0.0.1", cfg.port("imap", "imaps"), ssl_context=ctx) as imap:
            imap.login("capture@capture.test", "capture")
            imap.select("INBOX", readonly=True)
            data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
            assert b"order shipped" in data[0][1]
            imap.logout()
        deadline = time.monotonic() + 10  # delivered, not deferred for a relay
        while [f for f in (cfg.data_dir / "queue").iterdir() if f.is_file()]:
            assert time.monotonic() < deadline, p.output
            time.sleep(0.05)
        assert "relay=none" not in p.output
