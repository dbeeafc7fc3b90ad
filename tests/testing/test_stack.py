"""MailStack outside pytest fixtures: start-up, reset, capture mode, faults, config checks."""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailstack.config import ConfigError, load
from mailstack.mta.queue import Envelope, Spool
from mailstack.testing import AsyncMailStack, MailStack
from mailstack.testing.launcher import child_env


def _smtp_send(stack: MailStack, rcpts: list[str], subject: str,
               sender: str = "app@example.test") -> None:
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.sendmail(sender, rcpts, f"Subject: {subject}\r\n\r\nbody\r\n")


def _mta_log(stack: MailStack) -> str:
    assert stack.base is not None
    return (stack.base / "logs" / "mta.log").read_text()


def _flushes(stack: MailStack) -> int:
    return _mta_log(stack).count("flush requested")


def _wait_flushes(stack: MailStack, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _flushes(stack) < n:
        assert time.monotonic() < deadline, _mta_log(stack)
        time.sleep(0.01)


def _smtp_send_qid(stack: MailStack, rcpt: str, subject: str) -> str:
    """Send over port 25; the queue id from the 250 reply."""
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("app@example.test")
        s.rcpt(rcpt)
        code, reply = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def test_context_manager_contract(stack: MailStack) -> None:
    stack.reset()
    carol = stack.add_user("carol@example.test")
    assert stack.host == "127.0.0.1"
    assert {"smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s",
            "lmtp"} <= set(stack.ports)
    with smtplib.SMTP_SSL(stack.host, stack.ports["submissions"], context=stack.ssl_context,
                          timeout=10) as s:
        s.login(carol.address, carol.password)
        s.sendmail(carol.address, [carol.address], "Subject: Welcome!\r\n\r\nhi\r\n")
    msg = stack.wait_for_message(carol.address, subject="welcome", timeout=10)
    assert msg["Subject"] == "Welcome!"
    assert msg["Delivered-To"] == carol.address
    with pytest.raises(TimeoutError, match="Welcome"):
        stack.wait_for_message(carol.address, subject="nothing like it", timeout=0.2)


def test_reset_empties_mailboxes_queue_and_users(stack: MailStack) -> None:
    stack.reset()
    alice = stack.add_user("alice@example.test")
    stack.deliver(b"Subject: old\r\n\r\nold\r\n", to=alice.address)
    stack.deliver(b"Subject: old draft\r\n\r\n", to=alice.address)
    with imaplib.IMAP4_SSL(stack.host, stack.ports["imaps"],
                           ssl_context=stack.ssl_context) as imap:
        imap.login(alice.address, alice.password)
        imap.create("Projects")
        imap.select("INBOX")
        assert imap.search(None, "ALL")[1][0].split() == [b"1", b"2"]
        imap.logout()
    # a queued entry the mta has not picked up yet
    Spool(stack.data_dir / "queue").put(b"Subject: queued\r\n\r\n",
                                        Envelope(sender="", recipients=[alice.address], size=9))
    assert list((stack.data_dir / "queue").iterdir())
    flushes = _flushes(stack)
    stack.reset()  # its time is a figure of bench/testing_bench.py
    assert not [p for p in (stack.data_dir / "queue").iterdir() if p.is_file()]
    assert stack.users() == []
    assert all(p.stat().st_size == 0 for p in (stack.data_dir / "mda" / "delivered").iterdir())
    # the running daemons carry on: same address, new password, only the new mail
    alice = stack.add_user("alice@example.test")
    assert stack.messages(alice.address) == []
    _smtp_send(stack, [alice.address], "after reset")
    stack.wait_for_message(alice.address, subject="after reset", timeout=10)
    with imaplib.IMAP4_SSL(stack.host, stack.ports["imaps"],
                           ssl_context=stack.ssl_context) as imap:
        imap.login(alice.address, alice.password)
        folders = b" ".join(imap.list()[1])
        assert b"Projects" not in folders
        imap.select("INBOX")
        nums = imap.search(None, "ALL")[1][0].split()
        assert nums == [b"1"]
        data = imap.fetch(b"1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
        assert b"after reset" in data[0][1]
        imap.logout()
    # the mta handled reset's flush, so it knows the removed entry is gone: it cannot show up
    _wait_flushes(stack, flushes + 1)
    assert [m["Subject"] for m in stack.messages(alice.address)] == ["after reset"]


def test_capture_mode_stores_everything_relays_nothing() -> None:
    with MailStack(capture=True) as stack:
        assert stack.capture_user is not None
        _smtp_send(stack, ["bob@unknown-domain.test", "Carol@Elsewhere.example"], "captured",
                   sender="noreply@myapp.example")
        msg = stack.wait_for_message("bob@unknown-domain.test", timeout=10)
        assert msg["Subject"] == "captured"
        assert stack.wait_for_message("carol@elsewhere.example")["Subject"] == "captured"
        assert msg.get_all("X-Original-To") == ["bob@unknown-domain.test",
                                                 "Carol@Elsewhere.example"]
        assert len(stack.captured()) == 1
        # an authenticated client may use any sender; nothing is relayed or bounced
        user = stack.add_user("dev@example.test")
        with smtplib.SMTP(stack.host, stack.ports["submission"], timeout=10) as s:
            s.starttls(context=stack.ssl_context)
            s.login(user.address, user.password)
            s.sendmail("billing@myapp.example", ["customer@gmail.example"],
                       "Subject: invoice\r\n\r\n")
        stack.wait_for_message("customer@gmail.example", subject="invoice", timeout=10)
        _smtp_send(stack, [user.address], "to a local account")  # captured like the rest
        assert stack.wait_for_message(user.address)["Subject"] == "to a local account"
        deadline = time.monotonic() + 5
        while [p for p in (stack.data_dir / "queue").iterdir() if p.is_file()]:
            assert time.monotonic() < deadline, "the queue did not drain"
            time.sleep(0.02)
        assert len(stack.captured()) == 3
        assert "relay=mda[" in (stack.base / "logs" / "mta.log").read_text()
        assert "relay=none" not in (stack.base / "logs" / "mta.log").read_text()
        # the catch-all account is readable over POP3 with the known password
        pop = poplib.POP3_SSL(stack.host, stack.ports["pop3s"], context=stack.ssl_context)
        pop.user("capture@capture.test")
        pop.pass_("capture")
        assert pop.stat()[0] == 3
        pop.quit()
        stack.reset()
        assert stack.captured() == []
        assert stack.users() == ["capture@capture.test"]


FAULTS = [
    {"match": "*@later.test", "at": "rcpt", "reply": "451 4.3.0 try again later"},
    {"match": "nobody@*", "at": "rcpt", "reply": "550 5.1.1 no such mailbox"},
    {"match": "*@data.test", "at": "data", "reply": "554 5.6.0 content rejected"},
    {"match": "*@slow.test", "at": "rcpt", "stall": "2s"},
    {"match": "dropme@example.test", "at": "fetch"},
]


@pytest.fixture(scope="module")
def faulty() -> MailStack:
    with MailStack(faults=FAULTS, domains=("example.test", "later.test", "data.test",
                                           "slow.test")) as s:
        yield s


def test_fault_replies(faulty: MailStack) -> None:
    faulty.reset()
    ok = faulty.add_user("ok@example.test")
    faulty.add_user("x@data.test")
    with smtplib.SMTP(faulty.host, faulty.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("app@example.test")
        assert s.rcpt("a@later.test") == (451, b"4.3.0 try again later")
        assert s.rcpt("nobody@example.test")[0] == 550
        assert s.rcpt(ok.address)[0] == 250
        s.rset()
        s.mail("app@example.test")
        assert s.rcpt("x@data.test")[0] == 250
        assert s.data(b"Subject: refused\r\n\r\n") == (554, b"5.6.0 content rejected")
        s.mail("app@example.test")
        assert s.rcpt(ok.address)[0] == 250
        assert s.data(b"Subject: fine\r\n\r\n")[0] == 250
    assert faulty.wait_for_message(ok.address)["Subject"] == "fine"
    assert "fault injected at RCPT" in (faulty.base / "logs" / "mta.log").read_text()


def test_fault_stall(faulty: MailStack) -> None:
    faulty.reset()
    faulty.add_user("s@slow.test")
    with smtplib.SMTP(faulty.host, faulty.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("app@example.test")
        s.sock.settimeout(0.5)
        with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
            s.rcpt("s@slow.test")
    with smtplib.SMTP(faulty.host, faulty.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("app@example.test")
        started = time.monotonic()
        assert s.rcpt("s@slow.test")[0] == 250  # a stall without a reply: then the normal one
        assert time.monotonic() - started >= 1.9


def test_fault_imap_drops_mid_fetch(faulty: MailStack) -> None:
    faulty.reset()
    victim = faulty.add_user("dropme@example.test")
    other = faulty.add_user("ok@example.test")
    for user in (victim, other):
        faulty.deliver(b"Subject: big\r\n\r\n" + b"line of text\r\n" * 2000, to=user.address)
    for user, drops in ((victim, True), (other, False)):
        imap = imaplib.IMAP4_SSL(faulty.host, faulty.ports["imaps"],
                                 ssl_context=faulty.ssl_context, timeout=10)
        imap.login(user.address, user.password)
        imap.select("INBOX")
        if drops:
            with pytest.raises((imaplib.IMAP4.abort, OSError)):
                imap.fetch("1", "(RFC822)")
            imap.shutdown()
        else:
            assert len(imap.fetch("1", "(RFC822)")[1][0][1]) > 20000
            imap.logout()


async def test_async_mail_stack() -> None:
    async with AsyncMailStack() as stack:
        user = stack.add_user("eve@example.test")
        await stack.deliver(b"Subject: async hello\r\n\r\n", to=[user.address])
        msg = await stack.wait_for_message(user.address, subject="hello", timeout=5)
        assert msg["Subject"] == "async hello"
        await stack.reset()
        assert stack.users() == []


@pytest.mark.parametrize("toml, error", [
    ('[[faults]]\nmatch = "*@x.test"\nat = "rcpt"\nwhen = 1\n', "unknown key [[faults]].when"),
    ('[[faults]]\nmatch = "*@x.test"\nat = "quit"\nreply = "451 4.3.0 x"\n', "[[faults]].at"),
    ('[[faults]]\nmatch = "*@x.test"\nat = "rcpt"\nreply = "250 ok"\n', "[[faults]].reply"),
    ('[[faults]]\nmatch = "*@x.test"\nat = "data"\n', "needs reply or stall"),
    ('[capture]\nenable = true\n', "unknown key [capture].enable"),
    ('[capture]\nenabled = "yes"\n', "[capture].enabled"),
    ('[capture]\naddress = "nobody"\n', "[capture].address"),
    ('[capture]\noutbound = "yes"\n', "[capture].outbound"),
    ('[chaos]\nfiles = "run/chaos.json"\n', "unknown key [chaos].files"),
    ('[chaos]\nseed = "x"\n', "[chaos].seed"),
])
def test_config_errors(tmp_path: Path, toml: str, error: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load(path, env={})
    assert str(path) in str(exc.value) and error in str(exc.value)


def test_cli_capture_flag(tmp_path: Path) -> None:
    """``--capture`` is in the help; ``config check`` accepts the new keys in a file."""
    env = child_env()
    out = subprocess.run([sys.executable, "-m", "mailstack", "up", "--help"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "--capture" in out
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path}"\n[capture]\nenabled = true\n'
                    '[[faults]]\nmatch = "*@fail.test"\nat = "rcpt"\nreply = "451 4.3.0 x"\n')
    res = subprocess.run([sys.executable, "-m", "mailstack", "config", "check", "--config",
                          str(path)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "capture.test" in res.stdout


def test_reset_right_after_sending(stack: MailStack) -> None:
    """Mail still on its way when reset() runs does not turn up in the next test."""
    stack.reset()
    alice = stack.add_user("alice@example.test")
    qids = [_smtp_send_qid(stack, alice.address, f"in flight {i}") for i in range(5)]
    stack.reset()
    alice = stack.add_user("alice@example.test")
    # wait until the mta is done with every message (delivered inside the transaction, or
    # queued and then delivered and removed, or found gone): after that nothing of them can
    # arrive; then look
    deadline = time.monotonic() + 30
    while not all(re.search(rf"{qid}: (removed|client=.*\(delivered\))", _mta_log(stack))
                  for qid in qids):
        assert time.monotonic() < deadline, _mta_log(stack)
        time.sleep(0.02)
    assert stack.messages(alice.address) == []


def test_daemons_end_with_the_test_process(tmp_path: Path) -> None:
    """A stack never closed (the test process crashed) does not outlive its process."""
    script = ("import os\nfrom mailstack.testing import MailStack\n"
              "s = MailStack().start()\nprint(' '.join(map(str, s.pids.values())), flush=True)\n"
              "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    pids = [int(p) for p in out.split()]
    assert len(pids) == 4
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids):
        assert time.monotonic() < deadline, "daemons still running"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_an_account_removed_by_reset_is_refused_at_once(stack: MailStack) -> None:
    stack.reset()
    dora = stack.add_user("dora@example.test")
    _smtp_send(stack, [dora.address], "before")  # the mta has the account in memory now
    stack.reset()
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("app@example.test")
        code, _ = s.rcpt(dora.address)
    assert code == 550


def test_extra_config_overrides_generated_tables_and_data_dir_is_kept(tmp_path: Path) -> None:
    """extra_config may set keys of tables the stack writes itself ([mta] here); data_dir=
    puts the stack in a directory of the caller's that close() leaves in place; logs() has
    every daemon's output."""
    base = tmp_path / "my-stack"
    extra = '[mta]\nmax_message_size = 2000\n[pop3]\nlogin_delay = "30s"\n'
    with MailStack(data_dir=base, extra_config=extra) as stack:
        assert stack.config.mta.max_message_size == 2000
        assert stack.config.pop3.login_delay == 30
        assert stack.data_dir == base / "data" and stack.config_file.parent == base
        alice = stack.add_user("alice@example.test")
        with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
            s.ehlo()
            assert "2000" in s.esmtp_features["size"]
            with pytest.raises(smtplib.SMTPSenderRefused):
                s.sendmail("a@example.org", [alice.address], "Subject: big\r\n\r\n" + "x" * 3000)
        logs = stack.logs()
        for name in ("mda", "mta", "imap", "pop3"):
            assert f"--- {name} ---" in logs
            assert f"{name}[{stack.pids[name]}] INFO: listening on 127.0.0.1:" in logs
    assert (base / "data" / "users").exists(), "close() removed the caller's data_dir"
    assert "alice@example.test" in (base / "data" / "users").read_text()


def test_messages_in_a_folder_and_deliver_with_a_sender(stack: MailStack) -> None:
    stack.reset()
    alice = stack.add_user("alice@example.test")
    stack.deliver("Subject: bounce-like\n\nx\n", to=alice.address)
    stack.deliver("Subject: from bob\n\nx\n", to=alice.address, sender="bob@example.org")
    null, bob = stack.messages(alice.address)
    assert null["Return-Path"] == "<>" and bob["Return-Path"] == "<bob@example.org>"
    with imaplib.IMAP4_SSL(stack.host, stack.ports["imaps"],
                           ssl_context=stack.ssl_context) as imap:
        imap.login(alice.address, alice.password)
        imap.append("Sent", None, None, b"Subject: sent by alice\r\n\r\nhello\r\n")
        imap.logout()
    assert [m["Subject"] for m in stack.messages(alice.address, folder="Sent")] == [
        "sent by alice"]
    assert stack.find_message(alice.address, subject="sent by", folder="Sent") is not None
    assert stack.find_message(alice.address, subject="sent by") is None  # not in INBOX
    msg = stack.wait_for_message(alice.address, subject="SENT BY", folder="Sent", timeout=5)
    assert msg["Subject"] == "sent by alice"
    with pytest.raises(ValueError):
        stack.messages(alice.address, folder="No.Such/../Folder")
