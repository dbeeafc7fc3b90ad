"""Runtime faults on a running stack: every point, times, probability under a seed, latency,
removal, and a delivery inside the stack that fails once and then succeeds."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import time

import pytest

from mailstack.runtime.chaos import FaultError
from mailstack.testing import MailStack

from .conftest import rcpt_code


def test_rcpt_fault_fires_times_then_goes(stack: MailStack) -> None:
    stack.reset()
    bob = stack.add_user("bob@example.test")
    fault = stack.add_fault("rcpt", "bob@*", reply="451 4.3.0 try again later", times=2)
    assert fault.spec["at"] == "smtp.rcpt"
    assert rcpt_code(stack, "someone@example.test") == 550  # no match: the normal answer
    assert [rcpt_code(stack, bob.address) for _ in range(3)] == [451, 451, 250]
    assert fault.hits == 2
    other = stack.add_fault("smtp.rcpt", "BOB@EXAMPLE.TEST", reply="550 5.1.1 gone")
    assert rcpt_code(stack, bob.address) == 550  # globs ignore case
    other.remove()
    assert rcpt_code(stack, bob.address) == 250 and stack.active_faults == [fault]
    with stack.add_fault("rcpt", reply="452 4.5.3 later") as temp:
        assert rcpt_code(stack, bob.address) == 452
    assert temp not in stack.active_faults and rcpt_code(stack, bob.address) == 250
    stack.add_fault("rcpt", reply="451 4.3.0 x")
    stack.reset()
    bob = stack.add_user("bob@example.test")
    assert stack.active_faults == [] and rcpt_code(stack, bob.address) == 250
    assert "fault injected at smtp.rcpt (id 1, 1/2) for <bob@example.test>" in stack.logs()


def test_smtp_points(stack: MailStack) -> None:
    stack.reset()
    app = stack.add_user("app@example.test")
    host, port = stack.host, stack.ports["submission"]
    with stack.add_fault("smtp.connect", reply="421 4.3.2 not now", times=1), \
            pytest.raises(smtplib.SMTPConnectError) as exc:
        smtplib.SMTP(host, port, timeout=10)
    assert exc.value.smtp_code == 421
    with stack.add_fault("smtp.connect", drop=True), \
            pytest.raises(smtplib.SMTPServerDisconnected):
        smtplib.SMTP(host, port, timeout=10)
    with stack.add_fault("smtp.ehlo", "laptop.*", reply="550 5.7.1 go away"), \
            smtplib.SMTP(host, port, timeout=10, local_hostname="laptop.example") as s:
        assert s.ehlo()[0] == 550
    with stack.add_fault("smtp.starttls", reply="454 4.7.0 TLS not available now"), \
            smtplib.SMTP(host, port, timeout=10) as s, \
            pytest.raises(smtplib.SMTPResponseException) as exc:
        s.starttls(context=stack.ssl_context)
    assert exc.value.smtp_code == 454
    with stack.add_fault("smtp.auth", "app@*", reply="454 4.7.0 auth backend down"), \
            smtplib.SMTP(host, port, timeout=10) as s:
        s.starttls(context=stack.ssl_context)
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            s.login(app.address, app.password)
    assert exc.value.smtp_code == 454
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.starttls(context=stack.ssl_context)
        s.login(app.address, app.password)
        with stack.add_fault("smtp.mail", "app@*", reply="451 4.3.0 sender check failed"), \
                pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail(app.address, [app.address], "Subject: a\r\n\r\n")
        with stack.add_fault("smtp.data", "app@*", reply="554 5.6.0 content rejected") as f, \
                pytest.raises(smtplib.SMTPDataError) as exc:
            s.sendmail(app.address, [app.address], "Subject: b\r\n\r\n" + "x\r\n" * 500)
        assert exc.value.smtp_code == 554 and f.hits == 1  # refused after the message
        s.sendmail(app.address, [app.address], "Subject: c\r\n\r\n")
    assert [m["Subject"] for m in stack.wait_for_messages(app.address, 1)] == ["c"]


def test_latency(stack: MailStack) -> None:
    stack.reset()
    stack.add_fault("smtp.mail", latency="300ms")
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.ehlo()
        started = time.monotonic()
        assert s.mail("a@example.test")[0] == 250  # late, then the normal answer
        assert time.monotonic() - started >= 0.3


def test_imap_points(stack: MailStack) -> None:
    stack.reset()
    eve = stack.add_user("eve@example.test")
    stack.deliver(b"Subject: one\r\n\r\n" + b"text\r\n" * 100, to=eve.address)

    def imap() -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(stack.host, stack.ports["imaps"],
                                 ssl_context=stack.ssl_context, timeout=10)

    with stack.add_fault("imap.connect", reply="BYE maintenance"), pytest.raises(
            (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
        imap()
    with stack.add_fault("imap.login", "eve@*", reply="NO [UNAVAILABLE] try later", times=1):
        c = imap()
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            c.login(eve.address, eve.password)
        c.login(eve.address, eve.password)  # fired once: now it works
    with stack.add_fault("imap.select", "eve@*", reply="NO [SERVERBUG] oops"):
        typ, data = c.select("INBOX")
        assert (typ, data) == ("NO", [b"[SERVERBUG] oops"])
    assert c.select("INBOX")[0] == "OK"
    with stack.add_fault("imap.append", reply="NO [OVERQUOTA] full"):
        assert c.append("INBOX", None, None, b"Subject: x\r\n\r\n")[0] == "NO"
    with stack.add_fault("imap.fetch", "eve@example.test", drop=True):
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            c.fetch("1", "(RFC822)")
        c.shutdown()
    c = imap()
    c.login(eve.address, eve.password)
    c.select("INBOX")
    assert b"Subject: one" in c.fetch("1", "(RFC822)")[1][0][1]
    c.logout()


def test_pop3_points(stack: MailStack) -> None:
    stack.reset()
    fay = stack.add_user("fay@example.test")
    stack.deliver(b"Subject: pop\r\n\r\nbody\r\n", to=fay.address)
    with stack.add_fault("pop3.connect", drop=True), pytest.raises(
            (poplib.error_proto, OSError, EOFError)):
        poplib.POP3_SSL(stack.host, stack.ports["pop3s"], context=stack.ssl_context,
                        timeout=10)
    pop = poplib.POP3_SSL(stack.host, stack.ports["pop3s"], context=stack.ssl_context,
                          timeout=10)
    pop.user(fay.address)
    pop.pass_(fay.password)
    with stack.add_fault("pop3.retr", "fay@*", reply="[SYS/TEMP] disk hiccup", times=1) as f:
        with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\] disk hiccup"):
            pop.retr(1)
        assert b"Subject: pop" in b"\r\n".join(pop.retr(1)[1])
        assert f.hits == 1
    pop.quit()


def test_delivery_inside_the_stack_fails_once_then_succeeds(stack: MailStack) -> None:
    """lmtp.data: the mda refuses the mta's first delivery (451), the mta retries."""
    stack.reset()
    gus = stack.add_user("gus@example.test")
    fault = stack.add_fault("lmtp.data", "gus@*", reply="451 4.3.0 mailbox busy", times=1)
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.sendmail("a@example.test", [gus.address], "Subject: retried\r\n\r\nx\r\n")
    msg = stack.wait_for_message(gus.address, subject="retried", timeout=30)
    assert msg is not None and fault.hits == 1
    assert "status=deferred (451 4.3.0 mailbox busy)" in stack.logs()
    assert len(stack.messages(gus.address)) == 1


def _outcomes(stack: MailStack, n: int) -> list[int]:
    """One session per RCPT: the mta slows a session down that collects errors."""
    return [rcpt_code(stack, "x@example.test") for _ in range(n)]


def test_probability_is_deterministic_under_a_seed(stack: MailStack) -> None:
    stack.reset()
    stack.add_user("x@example.test")
    stack.add_fault("rcpt", reply="451 4.3.0 flaky", probability=0.5)
    first = _outcomes(stack, 24)
    assert set(first) == {250, 451}
    stack.reset()
    stack.add_user("x@example.test")
    stack.add_fault("rcpt", reply="451 4.3.0 flaky", probability=0.5)
    assert _outcomes(stack, 24) == first  # same seed, same fault: the same draws
    with MailStack(seed=7) as other:
        other.add_user("x@example.test")
        other.add_fault("rcpt", reply="451 4.3.0 flaky", probability=0.5)
        assert _outcomes(other, 24) != first


@pytest.mark.parametrize("kwargs, error", [
    ({"at": "smtp.helo2", "reply": "451 4.3.0 x"}, "unknown point"),
    ({"at": "nntp.post", "reply": "x"}, "unknown service"),
    ({"at": "rcpt", "reply": "250 fine"}, "reply: expected a 4xx or 5xx"),
    ({"at": "rcpt", "reply": "451 4.3.0 x", "probability": 2}, "probability"),
    ({"at": "rcpt", "reply": "451 4.3.0 x", "times": 0}, "times"),
    ({"at": "rcpt", "latency": "soon"}, "latency"),
    ({"at": "rcpt", "reply": "451 4.3.0 x", "drop": True}, "exclude"),
])
def test_bad_faults_name_the_key(stack: MailStack, kwargs: dict, error: str) -> None:
    stack.reset()
    with pytest.raises(FaultError, match=error):
        stack.add_fault(**kwargs)
    assert stack.active_faults == [] and not stack.chaos_file.exists()
