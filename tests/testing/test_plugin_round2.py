"""Issue 14's user scenarios as runs of the plugin (pytester, fresh pytest processes): merged
markers, runtime faults from a marker, fast failed-login tests, xdist, function scope with the
subprocess launcher, and many first tests of a session."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import plugin_args

MARKERS_TEST = '''
import pytest

pytestmark = pytest.mark.mailstack(extra_config="[mta]\\nmax_message_size = 5000\\n",
                                   domains=["module.test"])


@pytest.mark.mailstack(extra_config={"pop3": {"login_delay": "3s"}})
class TestMerged:
    @pytest.mark.mailstack(extra_config="[mta]\\nmax_recipients = 7\\n", domains=["fn.test"])
    def test_all_three_tables_and_the_closest_domains(self, mailstack):
        cfg = mailstack.config
        assert cfg.mta.max_message_size == 5000
        assert cfg.mta.max_recipients == 7
        assert cfg.pop3.login_delay == 3
        assert mailstack.domains == ("fn.test",)

    def test_class_and_module(self, mailstack):
        assert mailstack.config.mta.max_message_size == 5000
        assert mailstack.config.mta.max_recipients == 100
        assert mailstack.config.pop3.login_delay == 3
        assert mailstack.domains == ("module.test",)
'''


def test_markers_merge_key_by_key(pytester: pytest.Pytester, plugin_env: None) -> None:
    pytester.makepyfile(test_markers=MARKERS_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


FAULTS_TEST = '''
import smtplib

import pytest

seen = []


def send_with_retry(stack, rcpt, attempts=3):
    """The application under test: retries a temporary failure."""
    codes = []
    for _ in range(attempts):
        with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
            try:
                s.sendmail("app@example.test", [rcpt], "Subject: retried\\r\\n\\r\\nx\\r\\n")
                codes.append(250)
                return codes
            except smtplib.SMTPRecipientsRefused as exc:
                codes.append(exc.recipients[rcpt][0])
    return codes


@pytest.mark.mailstack(faults=[{"at": "rcpt", "match": "bob@*",
                                "reply": "451 4.3.0 try again later", "times": 2}])
def test_retry_then_succeed(mailstack):
    seen.append(mailstack.ports["smtp"])
    bob = mailstack.add_user("bob@example.test")
    assert send_with_retry(mailstack, bob.address) == [451, 451, 250]
    assert mailstack.wait_for_message(bob.address)["Subject"] == "retried"
    assert [f.hits for f in mailstack.active_faults] == [2]


def test_next_test_same_stack_no_faults(mailstack):
    assert mailstack.ports["smtp"] == seen[0]  # the marker's faults made no stack of their own
    assert mailstack.active_faults == []
    bob = mailstack.add_user("bob@example.test")
    assert send_with_retry(mailstack, bob.address) == [250]


def test_fault_added_in_the_test(mailstack):
    bob = mailstack.add_user("bob@example.test")
    with mailstack.add_fault("smtp.data", reply="554 5.6.0 spam", probability=1.0):
        with smtplib.SMTP(mailstack.host, mailstack.ports["smtp"]) as s:
            with pytest.raises(smtplib.SMTPDataError):
                s.sendmail("a@example.test", [bob.address], "Subject: x\\r\\n\\r\\n")
    mailstack.assert_no_mail(bob.address, timeout=0.1)
'''


def test_runtime_faults_from_a_marker(pytester: pytest.Pytester, plugin_env: None) -> None:
    pytester.makepyfile(test_faults=FAULTS_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


FAILED_LOGINS_TEST = '''
import smtplib

import pytest


@pytest.mark.parametrize("n", range(8))
def test_wrong_password(mailstack, mailstack_user, n):
    with smtplib.SMTP(mailstack.host, mailstack.ports["submission"], timeout=30) as s:
        s.starttls(context=mailstack.ssl_context)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(mailstack_user.address, "wrong")
    log = (mailstack.base / "logs" / "mta.log").read_text()
    delays = [line.rsplit("(", 1)[1] for line in log.splitlines() if "auth failed" in line]
    # smtplib tries PLAIN, then LOGIN: two failures a test, both answered without delay
    assert len(delays) == 2 * (n + 1) and delays[-2:] == ["delay 0.0s)"] * 2, delays
'''


def test_eight_failed_login_tests(pytester: pytest.Pytester, plugin_env: None) -> None:
    """Each test starts with no failed-login counts (they grew from test to test: 151 s)."""
    pytester.makepyfile(test_logins=FAILED_LOGINS_TEST)
    pytester.makeini("[pytest]\nmailstack_launcher = fork\n")
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)


XDIST_TEST = '''
import os
import smtplib

import pytest


@pytest.mark.parametrize("n", range(6))
def test_isolated(mailstack, n):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["SEEN_DIR"], f"seen-{worker}-{n}"), "w") as out:
        out.write(f"{worker} {mailstack.ports['smtp']}")
    alice = mailstack.add_user("alice@example.test")
    with smtplib.SMTP(mailstack.host, mailstack.ports["smtp"], timeout=10) as s:
        s.sendmail("x@example.test", [alice.address], f"Subject: n{n}\\r\\n\\r\\nx\\r\\n")
    msg = mailstack.wait_for_message(alice.address, timeout=10)
    assert msg["Subject"] == f"n{n}"
    assert len(mailstack.messages(alice.address)) == 1
    with smtplib.SMTP(mailstack.host, mailstack.ports["submission"], timeout=10) as s:
        s.starttls(context=mailstack.ssl_context)
        s.login(alice.address, alice.password)
        s.sendmail(alice.address, ["partner@elsewhere.example"], f"Subject: out{n}\\r\\n\\r\\n")
    assert mailstack.wait_for_message("partner@elsewhere.example")["Subject"] == f"out{n}"
'''


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None,
                    reason="pytest-xdist is not installed (pip install -e '.[test]')")
def test_xdist_two_workers(pytester: pytest.Pytester, plugin_env: None,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """-n 2: each worker has its own stacks (and fork server); tests see only their mail."""
    seen_dir = pytester.mkdir("seen")
    monkeypatch.setenv("SEEN_DIR", str(seen_dir))
    pytester.makepyfile(test_xdist=XDIST_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-n", "2",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    seen = [f.read_text().split() for f in seen_dir.iterdir()]
    workers = {w: {p for w2, p in seen if w2 == w} for w, _ in seen}
    assert set(workers) == {"gw0", "gw1"}, seen
    assert all(len(ports) == 1 for ports in workers.values())  # one stack per worker
    assert workers["gw0"] != workers["gw1"]


SCOPED_TEST = '''
import os
import smtplib
from pathlib import Path

import pytest

ports = []


def parent(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.mailstack(faults=[{"at": "smtp.mail", "reply": "451 4.3.0 later", "times": 1}])
def test_fresh_stack_with_faults(mailstack):
    ports.append(mailstack.ports["smtp"])
    assert {parent(pid) for pid in mailstack.pids.values()} == {os.getpid()}
    user = mailstack.add_user("u@example.test")
    with smtplib.SMTP(mailstack.host, mailstack.ports["smtp"]) as s:
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail("a@example.test", [user.address], "Subject: x\\r\\n\\r\\n")
        s.sendmail("a@example.test", [user.address, "far@away.example"], "Subject: y\\r\\n\\r\\n")
    assert mailstack.wait_for_message(user.address)["Subject"] == "y"


def test_another_fresh_stack(mailstack):
    assert mailstack.ports["smtp"] != ports[0]
    assert mailstack.active_faults == [] and mailstack.users() == []
'''


def test_function_scope_subprocess_launcher(pytester: pytest.Pytester, plugin_env: None) -> None:
    pytester.makepyfile(test_scoped=SCOPED_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "--mailstack-scope=function",
                                           "--mailstack-launcher=subprocess",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


FIRST_TESTS = '''
import smtplib

import pytest


@pytest.mark.parametrize("n", range(12))
def test_first_test_of_its_stack(request, n):
    # a distinct option set per test: each is the first test of a new session stack, which
    # the plugin starts and resets at once (where the mta used to die of SIGUSR1)
    request.applymarker(pytest.mark.mailstack(domains=[f"d{n}.test"]))
    stack = request.getfixturevalue("mailstack")
    assert stack.alive(), stack.logs()
    user = stack.add_user(f"u@d{n}.test")
    with smtplib.SMTP(stack.host, stack.ports["smtp"], timeout=10) as s:
        s.sendmail("a@x.test", [user.address], "Subject: hi\\r\\n\\r\\n")
    stack.wait_for_message(user.address, timeout=10)
'''


def test_many_first_tests(pytester: pytest.Pytester, plugin_env: None) -> None:
    pytester.makepyfile(test_first=FIRST_TESTS)
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=12)


def test_marker_with_a_bad_fault_errors(pytester: pytest.Pytester, plugin_env: None) -> None:
    pytester.makepyfile(test_bad='''
        import pytest

        @pytest.mark.mailstack(faults=[{"at": "rcpt", "reply": "250 ok"}])
        def test_x(mailstack):
            pass
    ''')
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*FaultError: reply: expected a 4xx or 5xx*"])

