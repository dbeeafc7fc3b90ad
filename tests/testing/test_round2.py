"""Issue 14 on MailStack itself: reset() forgets failed logins, config merging and MAILSTACK_*
variables, nothing relayed unless asked, message helpers and waits."""

from __future__ import annotations

import asyncio
import imaplib
import logging
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailstack.config import ConfigError
from mailstack.testing import AsyncMailStack, MailStack

from ..relay.sink import Sink


def _log(stack: MailStack, name: str) -> str:
    assert stack.base is not None
    return (stack.base / "logs" / f"{name}.log").read_text()


def _wait_log(stack: MailStack, name: str, text: str, count: int = 1,
              timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while _log(stack, name).count(text) < count:
        assert time.monotonic() < deadline, _log(stack, name)
        time.sleep(0.005)
    return _log(stack, name)


def _bad_login(stack: MailStack, address: str) -> None:
    with imaplib.IMAP4(stack.host, stack.ports["imap"], timeout=30) as imap, \
            pytest.raises(imaplib.IMAP4.error):
        imap.login(address, "wrong password")


# -- failed logins -----------------------------------------------------------------------------
def test_reset_forgets_failed_logins(stack: MailStack) -> None:
    """Failed-login counts of 127.0.0.1 survived reset(): each later test's first failure was
    delayed longer (0.5, 1, 2 ... 15 s). After reset() the count starts again at one."""
    stack.reset()
    user = stack.add_user("alice@example.test")
    for _ in range(4):  # three free failures, the fourth is answered after 0.5 s
        _bad_login(stack, user.address)
    _wait_log(stack, "imap", "(delay 0.5s)")
    stack.reset()
    user = stack.add_user("alice@example.test")
    before = _log(stack, "imap").count("auth failed")
    _bad_login(stack, user.address)
    text = _wait_log(stack, "imap", "auth failed", before + 1)
    last = [line for line in text.splitlines() if "auth failed" in line][-1]
    assert last.endswith("(delay 0.0s)"), last


def test_throttle_off_through_config() -> None:
    """A test stack may turn the delay off: [server] auth_max_delay = 0."""
    with MailStack(extra_config={"server": {"auth_max_delay": 0}}) as stack:
        assert float(stack.config.server.auth_max_delay) == 0
        user = stack.add_user("bob@example.test")
        for _ in range(6):
            _bad_login(stack, user.address)
        text = _wait_log(stack, "imap", "auth failed", 6)
        delays = [line.rsplit("(", 1)[1] for line in text.splitlines() if "auth failed" in line]
        assert delays == ["delay 0.0s)"] * 6


# -- config: extra_config, MAILSTACK_* variables, errors ----------------------------------------
@pytest.mark.parametrize("launcher", ["fork", "subprocess"])
def test_mailstack_variables_reach_the_daemons(launcher: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """MAILSTACK_<SECTION>_<KEY> variables apply to the daemons of either launcher (the fork
    server's children ignored them); keys the stack owns (its ports) are not taken."""
    env = {"MAILSTACK_MTA_MAX_MESSAGE_SIZE": "3000", "MAILSTACK_MTA_SMTP": "25",
           "MAILSTACK_CONFIG": "/nonexistent.toml", "PATH": "/bin"}
    with caplog.at_level(logging.WARNING, "mailstack.testing"), \
            MailStack(env=env, launcher=launcher,
                      extra_config='[pop3]\nlogin_delay = "7s"\n') as stack:
        assert stack.config.mta.max_message_size == 3000
        assert stack.config.pop3.login_delay == 7
        assert stack.ports["smtp"] != 25
        with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
            s.ehlo()
            assert s.esmtp_features["size"] == "3000"  # the running mta has it
    assert "MAILSTACK_MTA_SMTP ignored" in caplog.text


@pytest.mark.parametrize("options, key", [
    ({"extra_config": "[mta]\nmax_mesage_size = 5\n"}, "[mta].max_mesage_size"),
    ({"extra_config": {"imap": {"idle_timeout": "soon"}}}, "[imap].idle_timeout"),
    ({"extra_config": "[nosuch]\nx = 1\n"}, "[nosuch]"),
    ({"env": {"MAILSTACK_POP3_IDLE_TIMEOUTS": "5"}}, "[pop3].idle_timeouts"),
])
def test_invalid_keys_name_the_key(options: dict, key: str) -> None:
    stack = MailStack(**options)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        stack.start()
    assert not stack.running and not stack.base.exists()  # nothing started, nothing left


# -- nothing leaves the machine -------------------------------------------------------------------
async def test_mail_for_other_domains_is_captured_unless_relay_is_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """Mail to a domain the stack does not serve is kept in the catch-all account, even with
    a transport configured; relay=True relays it (to a sink here) and logs a warning."""
    sink = await Sink().start()
    transport = {"mta": {"transport": {"*": {"host": f"127.0.0.1:{sink.port}",
                                             "tls": "none"}}}}
    try:
        async with AsyncMailStack(extra_config=transport) as stack:
            app = stack.add_user("app@example.test")
            local = stack.add_user("ops@example.test")
            await asyncio.to_thread(_submit, stack.stack, app.address, app.password,
                                    ["someone@gmail.example", local.address], "order 1")
            msg = await stack.wait_for_message("someone@gmail.example", timeout=10)
            assert msg["Subject"] == "order 1"
            assert msg.envelope_recipients == ["someone@gmail.example"]
            ops = await stack.wait_for_message(local.address, timeout=10)
            assert "X-Original-To" not in ops  # local mail is delivered as usual
            assert [m["Subject"] for m in stack.captured()] == ["order 1"]
            assert stack.users() == ["app@example.test", "ops@example.test"]
            await stack.deliver("Subject: preloaded\n\nx\n", to="x@elsewhere.example")
            assert stack.messages("x@elsewhere.example")[0]["Subject"] == "preloaded"
            await stack.reset()
            assert stack.captured() == [] and stack.users() == []
            mta = _log(stack.stack, "mta")
            assert "relay=mda[" in mta and f"127.0.0.1]:{sink.port}" not in mta
        assert sink.messages == [] and sink.handler.connections == 0
        with caplog.at_level(logging.WARNING, "mailstack.testing"):
            async with AsyncMailStack(extra_config=transport, relay=True) as stack:
                app = stack.add_user("app@example.test")
                await asyncio.to_thread(_submit, stack.stack, app.address, app.password,
                                        ["someone@gmail.example"], "order 2")
                got = await sink.wait(1)
                assert b"Subject: order 2" in got[0].data
                with pytest.raises(Exception, match="relays"):
                    stack.captured()
        assert "relays mail for other domains" in caplog.text
    finally:
        await sink.stop()


def _submit(stack: MailStack, login: str, password: str, rcpts: list[str],
            subject: str) -> None:
    with smtplib.SMTP(stack.host, stack.ports["submission"], timeout=10) as s:
        s.starttls(context=stack.ssl_context)
        s.login(login, password)
        s.sendmail(login, rcpts, f"Subject: {subject}\r\nTo: {', '.join(rcpts)}\r\n\r\nhi\r\n")


# -- message helpers and waits ------------------------------------------------------------------
def _newsletter() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.test>"
    msg["To"] = "Alice <Alice@example.test>, bob@example.test"
    msg["Cc"] = "carol@example.test"
    msg["Subject"] = "Reset your password"
    msg["X-Campaign"] = "spring-2026"
    msg.set_content("Hello Alice,\nreset it here: https://shop.example/reset?t=abc123.\n")
    msg.add_alternative('<p>Hello Alice, <a href="https://shop.example/reset?t=abc123&amp;'
                        'u=1">reset</a> or <a href="https://shop.example/help">help</a></p>',
                        subtype="html")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                       filename="invoice.pdf")
    msg.add_attachment(b"\x89PNG\r\n", maintype="image", subtype="png", filename="logo.png")
    return msg


def test_message_helpers(stack: MailStack) -> None:
    """text, html, links, attachments and recipients of a text+HTML mail with attachments:
    the README's ``msg.get_content()`` raised KeyError on such mail."""
    stack.reset()
    alice = stack.add_user("alice@example.test")
    stack.deliver(_newsletter(), to=alice.address)
    msg = stack.wait_for_message(alice.address)
    assert msg.text == "Hello Alice,\nreset it here: https://shop.example/reset?t=abc123.\n"
    assert '<a href="https://shop.example/help">' in msg.html
    assert msg.links == ["https://shop.example/reset?t=abc123&u=1", "https://shop.example/help",
                         "https://shop.example/reset?t=abc123"]
    assert [(a.name, a.type, a.bytes) for a in msg.attachments] == [
        ("invoice.pdf", "application/pdf", b"%PDF-1.4 fake"),
        ("logo.png", "image/png", b"\x89PNG\r\n")]
    assert msg.attachments[0].size == 13
    assert msg.recipients == ["alice@example.test", "bob@example.test", "carol@example.test"]
    assert msg.envelope_recipients == ["alice@example.test"]
    assert msg.sender == "shop@example.test"
    stack.deliver("Subject: plain\n\nonly text http://x.example/a\n", to=alice.address)
    plain = stack.wait_for_message(alice.address, subject="plain")
    assert (plain.text, plain.html, plain.links, plain.attachments) == (
        "only text http://x.example/a\n", "", ["http://x.example/a"], [])
    html_only = EmailMessage()
    html_only["Subject"] = "html only"
    html_only.set_content("<b>bold</b>", subtype="html")
    stack.deliver(html_only, to=alice.address)
    got = stack.wait_for_message(alice.address, subject="html only")
    assert (got.text, got.html) == ("", "<b>bold</b>\n")


def test_waits_and_filters(stack: MailStack) -> None:
    stack.reset()
    alice = stack.add_user("alice@example.test")
    bob = stack.add_user("bob@example.test")
    stack.deliver(_newsletter(), to=[alice.address, bob.address], sender="shop@example.test")
    for i in range(3):
        _send(stack, "billing@example.test", bob.address, f"invoice {i}", f"amount {i}0 EUR")
    assert len(stack.wait_for_messages(bob.address, 4, timeout=10)) == 4
    invoices = stack.wait_for_messages(None, 3, subject="invoice", timeout=10)
    assert [m["Subject"] for m in invoices] == ["invoice 0", "invoice 1", "invoice 2"]
    assert stack.wait_for_message(text="amount 20")["Subject"] == "invoice 2"
    assert stack.wait_for_message(sender="billing@")["Subject"] == "invoice 0"
    assert stack.wait_for_message(to="carol@example.test").recipients[-1] == "carol@example.test"
    assert stack.wait_for_message(headers={"X-Campaign": "SPRING"})["Subject"].startswith("Reset")
    assert stack.wait_for_message(bob.address, where=lambda m: len(m.attachments) == 2)
    assert len(stack.find_messages(None, subject="reset your")) == 2  # alice's and bob's
    with pytest.raises(TimeoutError, match=r"3 messages for alice@example.test with subject "
                                           r"containing 'invoice'"):
        stack.wait_for_messages(alice.address, 3, subject="invoice", timeout=0.1)
    stack.assert_no_mail(alice.address, subject="invoice", timeout=0.2)
    with pytest.raises(AssertionError, match=r"unexpected mail for bob@example\.test"):
        stack.assert_no_mail(bob.address, text="amount 10", timeout=5)
    assert stack.messages("nobody@example.test") == []  # no such account: nothing, no error


def test_assert_no_mail_sees_mail_that_arrives_late(stack: MailStack) -> None:
    """assert_no_mail keeps looking for its whole timeout."""
    stack.reset()
    carol = stack.add_user("carol@example.test")
    stack.add_fault("smtp.data", latency=0.3)  # the mail arrives after assert_no_mail began
    import threading

    sender = threading.Thread(target=_send, args=(stack, "a@example.test", carol.address,
                                                  "late", "x"))
    sender.start()
    try:
        with pytest.raises(AssertionError, match="late"):
            stack.assert_no_mail(carol.address, timeout=10)
    finally:
        sender.join()


async def test_async_waits() -> None:
    async with AsyncMailStack() as stack:
        dora = stack.add_user("dora@example.test")
        await stack.deliver(_newsletter(), to=dora.address)
        await stack.deliver("Subject: second\n\nx\n", to=dora.address)
        msgs = await stack.wait_for_messages(dora.address, 2, timeout=5)
        assert msgs[0].links[0].startswith("https://shop.example/reset")
        assert (await stack.wait_for_message(text="hello alice")).attachments
        await stack.assert_no_mail(dora.address, subject="third", timeout=0.1)
        with pytest.raises(AssertionError):
            await stack.assert_no_mail(subject="second", timeout=1)
        with pytest.raises(TimeoutError, match="in any account with subject"):
            await stack.wait_for_message(subject="never", timeout=0.05)


def _send(stack: MailStack, sender: str, to: str, subject: str, body: str) -> None:
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.sendmail(sender, [to], f"From: {sender}\r\nSubject: {subject}\r\n\r\n{body}\r\n")


def test_readme_fix_for_multipart(tmp_path: Path) -> None:
    """The README no longer calls msg.get_content() on what may be multipart mail."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Testing your application against mailstack", 1)[1]
    assert "msg.get_content()" not in section.split("\n## ", 1)[0]
