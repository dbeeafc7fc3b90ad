"""How long a legitimate client takes while 1,000 idle connections hold slots (the figure that
tests/deploy/test_idle_flood.py used to assert as "within a second").

For each daemon (imap, pop3, mta) a real stack is started (:class:`mailstack.testing.MailStack`:
one process per daemon, uvloop), 1,000 silent connections are opened from 127.0.0.2, then a
client from 127.0.0.1 logs in and fetches (imap, pop3) or gets through RCPT (smtp); its time is
printed, median of ``--rounds``.

Usage: python bench/flood_bench.py [--flood 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailstack.testing import MailStack  # noqa: E402


async def flood(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            writers.append(w)
    return writers


async def legit(port: int, script: list[tuple[bytes, bytes]]) -> float:
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await r.readline()
    for line, expect in script:
        w.write(line + b"\r\n")
        while not (await r.readline()).startswith(expect):
            pass
    w.close()
    return time.perf_counter() - t0


async def one(stack: MailStack, daemon: str, n: int) -> float:
    user = stack.add_user("alice@example.test", "pw")
    stack.deliver(b"Subject: hello\r\n\r\nbody\r\n", to=user.address)
    port, script = {
        "imap": (stack.ports["imap"], [(b"a LOGIN alice@example.test pw", b"a OK"),
                                       (b"b SELECT INBOX", b"b OK"),
                                       (b"c FETCH 1 BODY[]", b"c OK")]),
        "pop3": (stack.ports["pop3"], [(b"USER alice@example.test", b"+OK"),
                                       (b"PASS pw", b"+OK"), (b"RETR 1", b".\r\n"),
                                       (b"QUIT", b"+OK")]),
        "mta": (stack.ports["smtp"], [(b"EHLO legit.example", b"250 "),
                                      (b"MAIL FROM:<a@example.org>", b"250"),
                                      (b"RCPT TO:<alice@example.test>", b"250")]),
    }[daemon]
    writers = await flood(port, n)
    took = await legit(port, script)
    for w in writers:
        w.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flood", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    with MailStack(extra_config="[server]\nmax_connections_per_ip = 5000\n") as stack:
        for daemon in ("imap", "pop3", "mta"):
            times = []
            for _ in range(args.rounds):
                stack.reset()
                times.append(asyncio.run(one(stack, daemon, args.flood)))
            print(f"{daemon:5} legitimate client behind {args.flood} idle connections: "
                  f"median {statistics.median(times) * 1000:.0f} ms, "
                  f"max {max(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
