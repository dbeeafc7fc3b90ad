"""Test-harness benchmark: what a test suite pays for real mail stacks.

Targets (issue 14), each printed with its figure:

- first stack up: ``MailStack().start()`` in a fresh process, fork server not yet started
  (what the first test of a session waits for at most; the plugin starts the fork server
  during collection, so part of it overlaps) — target <= 0.5 s;
- session scope: the fixture's work before a test (``reset()``) after a test that sent a
  message over 587 (STARTTLS + AUTH) and waited for it — target <= 5 ms;
- function scope: a fresh stack per test, measured as a loop of trivial tests (start, add a
  user, ``close(wait=False)`` as the plugin does: the old stack ends in the background while
  the next one starts) — target <= 80 ms a test;
- eight failed-login tests: eight times ``reset()``, add a user, one wrong password over 587
  (smtplib tries PLAIN and LOGIN: two failures) — target <= 1 s in all (they took 151 s when
  the counts survived reset()).

Then, per launcher (``fork``, the default, and ``subprocess``): start, first mail, reset, stop.

Usage: python bench/testing_bench.py [--rounds 10] [--launcher fork|subprocess|both]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailstack.testing import MailStack  # noqa: E402
from mailstack.testing.launcher import child_env  # noqa: E402

COLD = """
import time
t0 = time.perf_counter()
from mailstack.testing import MailStack
t1 = time.perf_counter()
s = MailStack().start()
t2 = time.perf_counter()
s.close()
print(t1 - t0, t2 - t1)
"""


def send(stack: MailStack) -> None:
    user = stack.add_user("alice@example.test")
    with smtplib.SMTP(stack.host, stack.ports["submission"], timeout=10) as s:
        s.starttls(context=stack.ssl_context)
        s.login(user.address, user.password)
        s.sendmail(user.address, [user.address], "Subject: bench\r\n\r\nhello\r\n")
    stack.wait_for_message(user.address, subject="bench", timeout=10)


def first_stack(rounds: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(rounds):
        res = subprocess.run([sys.executable, "-c", COLD], env=child_env(), cwd=REPO,
                             capture_output=True, text=True, check=True)
        imp, start = map(float, res.stdout.split())
        out.append((imp, start))
    return out


def session_overhead(rounds: int) -> list[float]:
    with MailStack() as stack:
        times = []
        for _ in range(rounds):
            send(stack)  # the test
            t0 = time.perf_counter()
            stack.reset()  # the next test's fixture
            times.append(time.perf_counter() - t0)
        return times


def function_scope(rounds: int) -> list[float]:
    MailStack().start().close()  # the fork server is up, as after the first test
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        stack = MailStack().start()
        stack.add_user("alice@example.test")  # the test
        stack.close(wait=False)
        times.append(time.perf_counter() - t0)
    return times


def failed_logins(tests: int = 8) -> float:
    with MailStack() as stack:
        t0 = time.perf_counter()
        for _ in range(tests):
            stack.reset()
            user = stack.add_user("alice@example.test")
            with smtplib.SMTP(stack.host, stack.ports["submission"], timeout=60) as s:
                s.starttls(context=stack.ssl_context)
                try:
                    s.login(user.address, "wrong password")
                except smtplib.SMTPAuthenticationError:
                    pass
                else:
                    raise AssertionError("the wrong password was accepted")
        return time.perf_counter() - t0


def one_round(launcher: str) -> dict[str, float]:
    t0 = time.perf_counter()
    stack = MailStack(launcher=launcher).start()
    t1 = time.perf_counter()
    send(stack)
    t2 = time.perf_counter()
    stack.reset()
    t3 = time.perf_counter()
    stack.close()
    t4 = time.perf_counter()
    return {"start": t1 - t0, "first mail": t2 - t1, "reset": t3 - t2, "stop": t4 - t3}


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} {max(values) * 1000:7.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--launcher", choices=("fork", "subprocess", "both"), default="both")
    args = ap.parse_args()
    n = args.rounds
    print(f"{'target':<44} {'p50 ms':>7} {'max ms':>7}")
    cold = first_stack(max(3, n // 3))
    print(f"{'first stack up (cold fork server; <= 500)':<44} {ms([c[1] for c in cold])}"
          f"   (import: {statistics.median(c[0] for c in cold) * 1000:.0f} ms)")
    print(f"{'session scope, reset after mail (<= 5)':<44} {ms(session_overhead(3 * n))}")
    fn = function_scope(2 * n)
    print(f"{'function scope, per test (<= 80)':<44} {ms(fn)}"
          f"   (mean {statistics.mean(fn) * 1000:.1f})")
    print(f"{'eight failed-login tests, total (<= 1000)':<44} {failed_logins() * 1000:7.1f}")
    print()
    launchers = ["fork", "subprocess"] if args.launcher == "both" else [args.launcher]
    print(f"{'launcher':<11} {'step':<11} {'p50 ms':>7} {'max ms':>7}")
    for launcher in launchers:
        rounds = [one_round(launcher) for _ in range(n)]
        for step in ("start", "first mail", "reset", "stop"):
            print(f"{launcher:<11} {step:<11} {ms([r[step] for r in rounds])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
