"""Issue 13 ("security round two") against the real mta and mda: AUTH inside a transaction,
HELO/EHLO header injection, error limits and postmaster."""

from __future__ import annotations

import asyncio
import base64
import email
import smtplib
from collections.abc import AsyncIterator

import pytest

from mailstack.config import Config

from ..conftest import add_user, running
from .conftest import Stack, make_stack
from .test_bad_input import Client


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_auth_inside_a_transaction_is_refused_and_cannot_open_the_relay(
        stack: Stack) -> None:
    """The attack: MAIL FROM a forged sender unauthenticated on 25, then AUTH, then RCPT to
    another domain. RFC 4954 §4: AUTH during a transaction gets 503."""
    c = await Client.connect(stack.smtp)
    await c.cmd("EHLO attacker.test")
    await c.starttls(stack.ssl)
    assert (await c.cmd("EHLO attacker.test")).startswith("250")
    assert (await c.cmd("MAIL FROM:<ceo@bank.test>")).startswith("250")
    reply = await c.cmd("AUTH PLAIN " + _plain("alice@example.test", "alice-pw"))
    assert reply.startswith("503 5.5.1"), reply
    assert (await c.cmd("RCPT TO:<victim@foreign.test>")).startswith("554 5.7.1")
    # after RSET the same client may authenticate, and is then bound to its own address
    assert (await c.cmd("RSET")).startswith("250")
    assert (await c.cmd("AUTH PLAIN " + _plain("alice@example.test", "alice-pw"))
            ).startswith("235")
    assert (await c.cmd("MAIL FROM:<ceo@bank.test>")).startswith("553 5.7.1")
    c.close()


async def test_auth_state_at_mail_decides_relaying_on_submission(stack: Stack) -> None:
    """The relay decision uses the transaction's MAIL-time state: a plain AUTH then MAIL as
    oneself relays (the normal case keeps working)."""
    c = await Client.connect(stack.submission)
    await c.cmd("EHLO client.test")
    await c.starttls(stack.ssl)
    await c.cmd("EHLO client.test")
    assert (await c.cmd("AUTH PLAIN " + _plain("alice@example.test", "alice-pw"))
            ).startswith("235")
    assert (await c.cmd("MAIL FROM:<alice@example.test>")).startswith("250")
    assert (await c.cmd("AUTH PLAIN " + _plain("bob@example.test", "bob-pw"))
            ).startswith("503")
    assert (await c.cmd("RCPT TO:<someone@foreign.test>")).startswith("250")
    c.close()


INJECTED = (b"EHLO mx.evil.test\rAuthentication-Results: mx; dkim=pass\r"
            b"X-Spam-Flag: NO\x1b[2K\x00\r\n")


@pytest.mark.parametrize("line", [
    INJECTED,
    INJECTED.replace(b"EHLO", b"HELO"),
    b"EHLO a\x7fb\r\n",
    b"EHLO a\tb\r\n",
    b"HELO evil\x1b]0;title\x07\r\n",
    b"EHLO x\xe2\x80\xa8Bcc: y\r\n",  # U+2028, a line separator for some parsers
])
async def test_helo_names_with_control_characters_are_refused(stack: Stack, line: bytes) -> None:
    c = await Client.connect(stack.smtp)
    reply = await c.cmd(line)
    assert reply.startswith("501 5.5.4"), reply
    assert "\x1b" not in reply and "\x00" not in reply
    assert (await c.cmd("MAIL FROM:<a@example.org>")).startswith("503"), "no HELO was taken"
    assert (await c.cmd("EHLO good.example.org")).startswith("250")
    c.close()


async def test_no_injected_header_reaches_the_mailbox_or_the_log(stack: Stack) -> None:
    c = await Client.connect(stack.smtp)
    await c.cmd(INJECTED)
    await c.cmd("HELO mx.evil.test")
    await c.cmd("MAIL FROM:<a@example.org>")
    await c.cmd("RCPT TO:<alice@example.test>")
    await c.cmd("DATA")
    assert (await c.cmd(b"Subject: hi\r\n\r\nbody\r\n.\r\n")).startswith("250")
    c.close()
    [raw] = await stack.wait_messages("alice@example.test", 1)
    msg = email.message_from_bytes(raw)
    assert msg["Authentication-Results"] is None and msg["X-Spam-Flag"] is None
    assert msg["Received"].startswith("from mx.evil.test ")
    assert not any(ch in raw for ch in (b"\r", b"\x1b", b"\x00"))
    log = await stack.daemons["mta"].wait_log("helo=mx.evil.test,")  # the daemon's own log
    assert "greeting refused: control characters in name" in log
    assert not any(ch in log for ch in ("\r", "\x1b", "\x00"))


async def test_lhlo_with_control_characters_is_refused(stack: Stack) -> None:
    c = await Client.connect(stack.lmtp)
    assert (await c.cmd(b"LHLO evil\rX-Injected: 1\r\n")).startswith("501 5.5.4")
    assert (await c.cmd("LHLO ok.example.org")).startswith("250")
    c.close()


async def test_lmtp_replies_never_echo_control_characters(stack: Stack) -> None:
    """An address with a bare CR in it, refused at RCPT: the refusal names it with "?" in its
    place, so no reply line of the attacker's making reaches the client."""
    c = await Client.connect(stack.lmtp)
    assert (await c.cmd("LHLO ok.example.org")).startswith("250")
    assert (await c.cmd("MAIL FROM:<s@example.org>")).startswith("250")
    reply = await c.cmd(b"RCPT TO:<a\rX-Injected: 1@example.test>\r\n")
    assert reply.startswith("550 5.1.1 <a?X-Injected: 1@example.test>") and "\r" not in \
        reply[:-2]
    assert (await c.cmd("NOOP")).startswith("250")
    c.close()


@pytest.fixture
async def strict(config_factory) -> AsyncIterator[Stack]:
    cfg: Config = config_factory("[mta]\nsoft_error_limit = 2\nhard_error_limit = 6\n"
                                 'error_delay = "0.3s"\n')
    st = make_stack(cfg)
    async with running("mda", cfg), running("mta", cfg):
        yield st


async def _timed(c: Client, line: str) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await c.cmd(line)
    return reply, loop.time() - start


async def test_errors_beyond_the_soft_limit_are_delayed_more_and_more(strict: Stack) -> None:
    c = await Client.connect(strict.smtp)
    await c.cmd("EHLO probe.test")
    await c.cmd("MAIL FROM:<a@example.org>")
    for n in (1, 2):  # within the soft limit: answered at once (not timed: no upper bounds)
        assert (await c.cmd(f"RCPT TO:<ghost{n}@example.test>")).startswith("550")
    reply, took = await _timed(c, "RCPT TO:<ghost3@example.test>")
    assert reply.startswith("550") and took >= 0.3
    reply, took = await _timed(c, "RCPT TO:<ghost4@example.test>")
    assert reply.startswith("550") and took >= 0.6
    reply, _ = await _timed(c, "RCPT TO:<alice@example.test>")
    assert reply.startswith("250"), "a good recipient is still accepted, at once"
    c.close()


async def test_hard_error_limit_disconnects_pipelined_probes(strict: Stack) -> None:
    c = await Client.connect(strict.smtp)
    await c.cmd("EHLO probe.test")
    await c.cmd("MAIL FROM:<a@example.org>")
    probes = b"".join(b"RCPT TO:<ghost%d@example.test>\r\n" % i for i in range(500))
    c.writer.write(probes)
    replies = []
    while (line := await asyncio.wait_for(c.reader.readline(), 30)):
        replies.append(line)
    assert len(replies) == 7, replies
    assert all(r.startswith(b"550 5.1.1") for r in replies[:6])
    assert replies[-1].startswith(b"421 4.7.0")
    c.close()


async def test_postmaster_is_accepted_and_delivered(config_factory) -> None:
    cfg: Config = config_factory(domains=("example.test", "shop.test"))
    st = make_stack(cfg)  # alice and bob, no postmaster account
    async with running("mda", cfg), running("mta", cfg):
        def send() -> None:
            with smtplib.SMTP("127.0.0.1", st.smtp) as s:
                s.sendmail("x@example.org", ["postmaster@example.test"],
                           b"Subject: pm1\r\n\r\nx\r\n")
                s.sendmail("x@example.org", ["<postmaster>"], b"Subject: pm2\r\n\r\nx\r\n")
                s.sendmail("x@example.org", ["PostMaster@shop.test"], b"Subject: pm3\r\n\r\nx\r\n")
                code, _ = s.docmd("RCPT TO:<nobody@example.test>")
                assert code == 503  # no MAIL: the transactions above ended
        await asyncio.to_thread(send)
        # no postmaster account: the first account (alphabetically) of the domain gets it
        msgs = await st.wait_messages("alice@example.test", 3)
        subjects = sorted(email.message_from_bytes(m)["Subject"] for m in msgs)
        assert subjects == ["pm1", "pm2", "pm3"]
        # a postmaster account, once it exists, gets it itself
        add_user(cfg, "postmaster@example.test")
        await asyncio.to_thread(_send_to, st.smtp, "postmaster@example.test", "pm4")
        [raw] = await st.wait_messages("postmaster@example.test", 1)
        assert b"Subject: pm4" in raw


def _send_to(port: int, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.sendmail("x@example.org", [rcpt], f"Subject: {subject}\r\n\r\nx\r\n".encode())


async def test_postmaster_key_routes_to_the_configured_account(config_factory) -> None:
    cfg: Config = config_factory('[server]\npostmaster = "bob@example.test"\n')
    st = make_stack(cfg)
    async with running("mda", cfg), running("mta", cfg):
        await asyncio.to_thread(_send_to, st.smtp, "postmaster@example.test", "to bob")
        [raw] = await st.wait_messages("bob@example.test", 1)
        assert b"Subject: to bob" in raw
        assert st.messages("alice@example.test") == []
