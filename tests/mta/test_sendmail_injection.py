"""CR/LF tricks in headers given to ``mailstack sendmail -t`` add no recipient and no header
line: a bare CR in the header is refused, and a line a CR LF smuggled in (``RCPT TO:...``,
``DATA``, a lone dot) is body text that the real mta and mda deliver as such, to no one else."""

from __future__ import annotations

import email
import subprocess
import sys

import pytest

from mailstack.config import Config
from mailstack.mta.queue import Spool

from ..conftest import running
from ..e2e.helpers import cli_env
from .conftest import make_stack

EVIL = "evil@elsewhere.test"


def sendmail(cfg: Config, message: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mailstack", "sendmail", *args, "-f",
                           "bob@example.test", "--config", str(cfg.source)], input=message,
                          capture_output=True, env=cli_env(), timeout=30)


@pytest.mark.parametrize(("message", "args"), [
    (b"To: alice@example.test\r\nSubject: hi\rBcc: " + EVIL.encode() + b"\r\n\r\nx\r\n", ["-t"]),
    (b"To: alice@example.test\rCc: " + EVIL.encode() + b"\r\nSubject: hi\r\n\r\nx\r\n", ["-t"]),
    (b"To: alice@example.test,\r\n\tbob@example.test\rBcc: " + EVIL.encode() + b"\r\n\r\nx\r\n",
     ["-t"]),
    (b"Subject: hi\rRCPT TO:<" + EVIL.encode() + b">\r\n\r\nx\r\n", ["alice@example.test"]),
    (b"Subject: hi\r\n\r\nx\r\n", [f"alice@example.test\r\nRCPT TO:<{EVIL}>"]),
], ids=["subject-bare-cr", "to-bare-cr", "folded-bare-cr", "explicit-rcpt", "argv-crlf"])
def test_bare_cr_in_the_header_is_refused(cfg: Config, message: bytes, args: list[str]) -> None:
    r = sendmail(cfg, message, *args)
    assert r.returncode == 65, r.stderr
    assert not Spool(cfg.data_dir / "queue").load_all(), "something was queued"


TRICKS = {
    "to-crlf-rcpt": b"To: alice@example.test>\r\nRCPT TO:<%s>\r\nSubject: hi\r\n" % EVIL.encode(),
    "subject-crlf-rcpt": b"To: alice@example.test\r\nSubject: hi\r\nRCPT TO:<%s>\r\nDATA\r\n"
                         % EVIL.encode(),
    "subject-crlf-dot": b"To: alice@example.test\r\nSubject: hi\r\n.\r\nRCPT TO:<%s>\r\n"
                        b"DATA\r\nBcc: %s\r\n" % (EVIL.encode(), EVIL.encode()),
    "bare-lf-rcpt": b"To: alice@example.test\nSubject: hi\nRCPT TO:<%s>\nBcc: %s\n"
                    % (EVIL.encode(), EVIL.encode()),
}


@pytest.mark.parametrize("trick", list(TRICKS))
async def test_smuggled_lines_are_body_text_for_alice_only(cfg: Config, trick: str) -> None:
    stack = make_stack(cfg)
    r = sendmail(cfg, b"From: bob@example.test\r\n" + TRICKS[trick] + b"\r\nthe end\r\n", "-t")
    assert r.returncode == 0, r.stderr
    [entry] = Spool(cfg.data_dir / "queue").load_all()
    assert entry.envelope.recipients == ["alice@example.test"]
    async with running("mda", cfg), running("mta", cfg):
        [raw] = await stack.wait_messages("alice@example.test", 1)
    assert not Spool(cfg.data_dir / "queue").load_all(), "an entry is left (a relay to evil?)"
    assert not stack.messages("bob@example.test")
    msg = email.message_from_bytes(raw)
    assert not msg.defects, msg.defects
    assert {k.lower() for k in msg} <= {
        "received", "from", "to", "subject", "date", "message-id", "delivered-to",
        "return-path"}, msg.keys()
    body = msg.get_payload()
    assert f"RCPT TO:<{EVIL}>" in body  # delivered as text, not acted upon
    assert body.endswith("the end\r\n") or body.endswith("the end\n")  # not cut at a "." line
