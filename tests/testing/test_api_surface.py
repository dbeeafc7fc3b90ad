"""The parts of the testing API docs/testing.md documents that no other test calls: ``url``,
``all_messages``, ``adeliver``, ``remove_fault``/``clear_faults``, the ``lmtp.*`` fault points
(``lmtp.reply`` with ``drop``: a connection lost just after delivery), ``log_level``,
``start_timeout`` and ``close(wait=False)``."""

from __future__ import annotations

import asyncio
import os
import smtplib
import socket
import time

import pytest

from mailstack.testing import MailStack, MailStackError

from .conftest import rcpt_code


def _send(stack: MailStack, rcpt: str, subject: str, port: str = "smtp") -> None:
    with smtplib.SMTP(stack.host, stack.ports[port], timeout=30) as s:
        if port == "submission":
            s.starttls(context=stack.ssl_context)
            s.login("alice@example.test", "alice-pw")
        s.sendmail("alice@example.test", [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_url_all_messages_and_adeliver(stack: MailStack) -> None:
    stack.reset()
    assert stack.url("smtp") == f"127.0.0.1:{stack.ports['smtp']}"
    assert stack.url("imaps") == f"127.0.0.1:{stack.ports['imaps']}"
    stack.add_user("bob@example.test")
    stack.add_user("alice@example.test")

    async def deliver() -> None:  # from code already inside an event loop
        await stack.adeliver(b"Subject: for bob\r\n\r\nb\r\n", "bob@example.test")
        await stack.adeliver("Subject: for alice\n\na\n", ["alice@example.test"])
    asyncio.run(deliver())
    got = [m["Subject"] for m in stack.all_messages()]
    assert got == ["for alice", "for bob"]  # account by account (sorted), each oldest first


def test_remove_fault_and_clear_faults(stack: MailStack) -> None:
    stack.reset()
    stack.add_user("bob@example.test")
    stack.add_user("carol@example.test")
    f1 = stack.add_fault("rcpt", "bob@*", reply="451 4.3.0 one")
    f2 = stack.add_fault("rcpt", "carol@*", reply="452 4.3.1 two")
    f3 = stack.add_fault("rcpt", "dave@*", reply="451 4.3.0 three")
    stack.remove_fault(f1)
    stack.remove_fault(f3.id)  # by id too
    assert stack.active_faults == [f2]
    assert rcpt_code(stack, "bob@example.test") == 250
    assert rcpt_code(stack, "carol@example.test") == 452
    stack.clear_faults()
    assert stack.active_faults == [] and f2.hits == 0
    assert rcpt_code(stack, "carol@example.test") == 250


def test_lmtp_points_fail_once_then_the_mail_arrives_once(stack: MailStack) -> None:
    stack.reset()
    stack.add_user("bob@example.test")
    faults = [stack.add_fault(at, match, reply="451 4.3.0 not now", times=1)
              for at, match in (("lmtp.connect", "*"), ("lmtp.ehlo", "*"),
                                ("lmtp.mail", "alice@*"), ("lmtp.rcpt", "bob@*"))]
    _send(stack, "bob@example.test", "through four faults")
    msg = stack.wait_for_message("bob@example.test", subject="through four faults",
                                 timeout=60)
    assert msg is not None and [f.hits for f in faults] == [1, 1, 1, 1]
    assert len(stack.messages("bob@example.test")) == 1


def test_lmtp_reply_drop_delivers_exactly_once(stack: MailStack) -> None:
    stack.reset()
    stack.add_user("alice@example.test", "alice-pw")
    stack.add_user("bob@example.test")
    fault = stack.add_fault("lmtp.reply", "bob@*", drop=True, times=1)
    _send(stack, "bob@example.test", "dropped reply", port="submission")
    stack.wait_for_message("bob@example.test", subject="dropped reply", timeout=60)
    assert fault.hits == 1
    # the mta did not hear the mda's answer: it retries until the mda says it has the copy
    _until(lambda: "already delivered" in stack.logs() and not any(
        (stack.data_dir / "queue").glob("*.msg")), 60)
    assert len(stack.messages("bob@example.test")) == 1


def test_log_level_start_timeout_and_close_without_waiting(tmp_path) -> None:
    with pytest.raises(MailStackError):
        MailStack(start_timeout=0.001).start()
    stack = MailStack(log_level="debug").start()
    try:
        with socket.create_connection((stack.host, stack.ports["pop3"]), 10) as probe:
            probe.recv(100)  # a session without a command: logged at debug only
        _until(lambda: " DEBUG: session end" in stack.logs())
        pids = list(stack.pids.values())
    finally:
        stack.close(wait=False)
    assert not stack.running and stack.pids == {}
    _until(lambda: all(_gone(p) for p in pids))
