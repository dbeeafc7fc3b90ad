"""The pytest plugin, run by pytester in fresh pytest processes: every fixture, isolation."""

from __future__ import annotations

import threading

import pytest

from .conftest import plugin_args

FIXTURES_TEST = '''
import imaplib
import poplib
import smtplib

import pytest


def send(stack, user, to, subject):
    with smtplib.SMTP(stack.host, stack.ports["submission"], timeout=10) as s:
        s.starttls(context=stack.ssl_context)
        s.login(user.address, user.password)
        s.sendmail(user.address, [to], f"Subject: {subject}\\r\\n\\r\\nhello\\r\\n")


def test_submission_and_wait(mailstack):
    alice = mailstack.add_user("alice@example.test")
    send(mailstack, alice, alice.address, "welcome alice")
    msg = mailstack.wait_for_message(alice.address, subject="welcome", timeout=10)
    assert msg["Subject"] == "welcome alice"
    assert mailstack.ca_file.exists()


def test_fresh_for_each_test(mailstack):
    assert mailstack.users() == []
    alice = mailstack.add_user("alice@example.test")
    assert mailstack.messages(alice.address) == []


def test_user_fixture_and_imap(mailstack, mailstack_user):
    mailstack.deliver(b"Subject: preloaded\\r\\n\\r\\nbody\\r\\n", to=mailstack_user.address)
    with imaplib.IMAP4_SSL(mailstack.host, mailstack.ports["imaps"],
                           ssl_context=mailstack.ssl_context) as imap:
        imap.login(mailstack_user.address, mailstack_user.password)
        imap.select("INBOX")
        typ, data = imap.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        assert b"preloaded" in data[0][1]


def test_pop3(mailstack, mailstack_user):
    mailstack.deliver("Subject: pop me\\n\\nbody\\n", to=mailstack_user.address)
    pop = poplib.POP3_SSL(mailstack.host, mailstack.ports["pop3s"],
                          context=mailstack.ssl_context)
    pop.user(mailstack_user.address)
    pop.pass_(mailstack_user.password)
    assert pop.stat()[0] == 1
    assert b"Subject: pop me" in b"\\r\\n".join(pop.retr(1)[1])
    pop.quit()


def test_capture(mailstack_capture):
    with smtplib.SMTP(mailstack_capture.host, mailstack_capture.ports["smtp"]) as s:
        s.sendmail("app@myapp.test", ["someone@anywhere.test"],
                   "Subject: caught\\r\\n\\r\\nx\\r\\n")
    msg = mailstack_capture.wait_for_message("someone@anywhere.test", timeout=10)
    assert msg["Subject"] == "caught"


def test_factory(mailstack, mailstack_factory):
    other = mailstack_factory(domains=["other.test"])
    assert other.ports["smtp"] != mailstack.ports["smtp"]
    bob = other.add_user("bob@other.test")
    other.deliver(b"Subject: there\\r\\n\\r\\n", to=bob.address)
    assert other.wait_for_message(bob.address)["Subject"] == "there"


@pytest.mark.mailstack(faults=[{"match": "*@fail.test", "at": "rcpt",
                                "reply": "451 4.3.0 try later"}])
def test_marker(mailstack):
    with smtplib.SMTP(mailstack.host, mailstack.ports["smtp"]) as s:
        s.ehlo()
        s.mail("a@example.test")
        assert s.rcpt("x@fail.test")[0] == 451


def test_async_fixture(amailstack):
    import asyncio

    async def main():
        user = amailstack.add_user("dora@example.test")
        await amailstack.deliver(b"Subject: async\\r\\n\\r\\n", to=user.address)
        return await amailstack.wait_for_message(user.address, subject="async")

    assert asyncio.run(main())["Subject"] == "async"
'''


def test_every_fixture(pytester: pytest.Pytester, plugin_env: None) -> None:
    pytester.makepyfile(test_generated=FIXTURES_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)


def test_fixture_scope_function(pytester: pytest.Pytester, plugin_env: None) -> None:
    pytester.makepyfile(test_scoped='''
        seen = []

        def test_one(mailstack):
            seen.append(mailstack.ports["smtp"])
            mailstack.add_user("a@example.test")

        def test_two(mailstack):
            assert mailstack.ports["smtp"] != seen[0]
            assert mailstack.users() == []
    ''')
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "--mailstack-scope=function",
                                           "--mailstack-launcher=subprocess")
    result.assert_outcomes(passed=2)


ISOLATION_TEST = '''
import pathlib
import smtplib
import time


def test_only_my_mail(mailstack):
    alice = mailstack.add_user("alice@example.test")
    with smtplib.SMTP(mailstack.host, mailstack.ports["smtp"]) as s:
        s.sendmail("x@example.test", [alice.address], "Subject: {token}\\r\\n\\r\\n.\\r\\n")
    mailstack.wait_for_message(alice.address, subject="{token}", timeout=10)
    # a barrier, not a sleep: the other run's mail is in its mailbox too before we look
    barrier = pathlib.Path({barrier!r})
    (barrier / "{token}.delivered").touch()
    deadline = time.monotonic() + 90
    while len(list(barrier.glob("*.delivered"))) < 2:
        assert time.monotonic() < deadline, "the other run never delivered its mail"
        time.sleep(0.05)
    assert [m["Subject"] for m in mailstack.messages(alice.address)] == ["{token}"]
'''


def test_parallel_runs_are_isolated(pytester: pytest.Pytester, plugin_env: None) -> None:
    """Two pytest processes at once (as with xdist workers): each sees only its own mail."""
    dirs = []
    for token in ("run-one", "run-two"):
        d = pytester.mkdir(token)
        (d / "test_iso.py").write_text(ISOLATION_TEST.replace("{token}", token).replace(
            "{barrier!r}", repr(str(pytester.path))))
        dirs.append(d)
    results: dict[str, pytest.RunResult] = {}

    def run(d) -> None:
        results[d.name] = pytester.runpytest_subprocess(*plugin_args(), "-q", str(d),
                                                        "-p", "no:cacheprovider")

    threads = [threading.Thread(target=run, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for d in dirs:
        results[d.name].assert_outcomes(passed=1)


DEAD_DAEMON_TEST = '''
import os
import signal
import smtplib
import time


def test_kills_the_mta(mailstack):
    os.kill(mailstack.pids["mta"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while mailstack.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_next_test_gets_a_working_stack(mailstack):
    bob = mailstack.add_user("bob@example.test")
    with smtplib.SMTP(mailstack.host, mailstack.ports["smtp"], timeout=10) as s:
        s.sendmail("a@example.test", [bob.address], "Subject: alive\\r\\n\\r\\n")
    assert mailstack.wait_for_message(bob.address, timeout=10)["Subject"] == "alive"
'''


def test_stack_with_a_dead_daemon_is_replaced(pytester: pytest.Pytester,
                                              plugin_env: None) -> None:
    pytester.makepyfile(test_dead=DEAD_DAEMON_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_plugin_can_be_disabled(pytester: pytest.Pytester, plugin_env: None) -> None:
    """`-p no:mailstack` turns the plugin off: no fixtures, no options, no fork server."""
    pytester.makepyfile(test_off='''
        def test_wants_a_stack(mailstack):
            pass

        def test_plain():
            pass
    ''')
    installed = not plugin_args()  # loaded by its pytest11 entry point, named "mailstack"
    off = ["-p", "no:mailstack"] if installed else []
    result = pytester.runpytest_subprocess(*off, "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mailstack' not found*"])
    result = pytester.runpytest_subprocess(*off, "-q", "--mailstack-scope=function")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --mailstack-scope*"])


def test_ini_keys_scope_and_launcher(pytester: pytest.Pytester, plugin_env: None) -> None:
    """mailstack_scope = function and mailstack_launcher = subprocess in the ini file: a new
    stack per test, its daemons children of the test process (`python -m mailstack serve`)
    rather than of the fork server."""
    pytester.makeini("[pytest]\nmailstack_scope = function\nmailstack_launcher = subprocess\n")
    pytester.makepyfile(test_ini='''
        import os
        from pathlib import Path

        seen = []

        def parent(pid):
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

        def test_one(mailstack):
            seen.append(mailstack.ports["smtp"])
            assert {parent(pid) for pid in mailstack.pids.values()} == {os.getpid()}
            cmdline = Path(f"/proc/{mailstack.pids['mta']}/cmdline").read_bytes().split(b"\\0")
            assert cmdline[1:4] == [b"-m", b"mailstack", b"serve"], cmdline

        def test_two(mailstack):
            assert mailstack.ports["smtp"] != seen[0]
    ''')
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
