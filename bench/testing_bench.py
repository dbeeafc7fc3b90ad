"""Test-harness benchmark: how long a full stack takes to come up and to go away.

For each launcher (``fork``: daemons forked from the warm fork server, the default; and
``subprocess``: ``python -m mailstack serve NAME`` per daemon) it times:

- start: ``MailStack().start()`` until every listener (smtp, submission, submissions, lmtp,
  imap, imaps, pop3, pop3s) accepts connections; the first start of the fork launcher includes
  starting the fork server (once per test session) and is shown apart;
- first mail: add a user, submit one message over 587 (STARTTLS + AUTH) and wait for it in the
  Maildir with ``wait_for_message`` (what the first test of a session pays on top);
- reset: ``stack.reset()`` with a user and a message in place (what each test pays when the
  stack is shared);
- stop: ``stack.close()`` (SIGTERM to every daemon, wait, remove the temp directory).

Target (issue 7): a full stack up and answering in well under a second.

Usage: python bench/testing_bench.py [--rounds 10] [--launcher fork|subprocess|both]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailstack.testing import MailStack  # noqa: E402


def one_round(launcher: str) -> dict[str, float]:
    t0 = time.perf_counter()
    stack = MailStack(launcher=launcher).start()
    t1 = time.perf_counter()
    user = stack.add_user("alice@example.test")
    with smtplib.SMTP(stack.host, stack.ports["submission"], timeout=10) as s:
        s.starttls(context=stack.ssl_context)
        s.login(user.address, user.password)
        s.sendmail(user.address, [user.address], "Subject: bench\r\n\r\nhello\r\n")
    stack.wait_for_message(user.address, subject="bench", timeout=10)
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
    launchers = ["fork", "subprocess"] if args.launcher == "both" else [args.launcher]
    print(f"{'launcher':<11} {'step':<11} {'p50 ms':>7} {'max ms':>7}")
    for launcher in launchers:
        first = one_round(launcher)
        if launcher == "fork":
            print(f"{launcher:<11} {'1st start':<11} {first['start'] * 1000:7.1f}   "
                  "(includes starting the fork server)")
        rounds = [one_round(launcher) for _ in range(args.rounds)]
        for step in ("start", "first mail", "reset", "stop"):
            print(f"{launcher:<11} {step:<11} {ms([r[step] for r in rounds])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
