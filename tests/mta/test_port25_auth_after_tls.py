"""Port 25 (the public MX port) offers and accepts AUTH only after STARTTLS: a password is
never taken in clear there, and an unauthenticated session cannot relay. On both event loops,
with a raw line client and with smtplib."""

from __future__ import annotations

import asyncio
import base64
import smtplib

from .conftest import Stack
from .test_bad_input import Client

ALICE_BLOB = base64.b64encode(b"\0alice@example.test\0alice-pw").decode()


async def test_auth_on_port_25_only_after_starttls(stack_on_each_loop: Stack) -> None:
    stack = stack_on_each_loop
    c = await Client.connect(stack.smtp)
    ehlo = await c.cmd("EHLO x")
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo, ehlo
    # RFC 4954 section 6: 538 5.7.11, encryption required for the mechanism
    assert (await c.cmd(f"AUTH PLAIN {ALICE_BLOB}")).startswith("538 5.7.11")
    assert (await c.cmd("AUTH LOGIN")).startswith("538 5.7.11")
    # still unauthenticated: no relaying for alice's address
    assert (await c.cmd("MAIL FROM:<alice@example.test>")).startswith("250")
    assert (await c.cmd("RCPT TO:<bob@example.net>")).startswith("554 5.7.1")
    assert (await c.cmd("RSET")).startswith("250")
    await c.starttls(stack.ssl)
    ehlo = await c.cmd("EHLO x")
    assert "AUTH" in ehlo and "PLAIN" in ehlo, ehlo
    assert (await c.cmd(f"AUTH PLAIN {ALICE_BLOB}")).startswith("235")
    assert (await c.cmd("QUIT")).startswith("221")
    c.close()
    log = stack.daemons["mta"].log()
    assert ALICE_BLOB not in log and "alice-pw" not in log


def smtplib_session(stack: Stack) -> tuple[bool, bool]:
    """(AUTH offered before STARTTLS, AUTH offered after) as smtplib sees them; logs in."""
    with smtplib.SMTP("127.0.0.1", stack.smtp, timeout=30) as s:
        s.ehlo()
        before = s.has_extn("auth")
        try:
            s.login("alice@example.test", "alice-pw")
        except smtplib.SMTPNotSupportedError:
            pass
        else:
            raise AssertionError("smtplib logged in over plain port 25")
        s.starttls(context=stack.ssl)
        s.ehlo()
        after = s.has_extn("auth")
        s.login("alice@example.test", "alice-pw")
        return before, after


async def test_smtplib_cannot_log_in_on_port_25_before_starttls(stack: Stack) -> None:
    assert await asyncio.to_thread(smtplib_session, stack) == (False, True)
