"""SORT, THREAD and ESEARCH on a big folder, through a real ``mailstack serve imap`` process.

Fills an INBOX with N messages (default 10,000; a third of them replies, so threads form),
then times each command from the client (send to tagged OK, response read whole) and prints
the median of R runs (default 15) after one warm-up, plus the first run after the daemon
started (the summaries are read from the index then). A thread list is kept per matching set
of messages, so THREAD is timed both repeated and computed afresh (a different set each
run). Usage::

    python bench/imap_sort_bench.py [--messages 10000] [--runs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchlib import account, serve  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))

from imap_bench import USER, WORDS, Client, free_port, proc_cpu  # noqa: E402

PASSWORD = "bench-password"
NAMES = ["Ann", "bob", "Carl", "dora", "Eve", "Fritz", "gina", "Hal"]
QUERIES = [
    ("SORT (REVERSE ARRIVAL)", "SORT (REVERSE ARRIVAL) UTF-8 ALL"),
    ("SORT (REVERSE DATE)", "SORT (REVERSE DATE) UTF-8 ALL"),
    ("SORT (SUBJECT)", "SORT (SUBJECT) UTF-8 ALL"),
    ("SORT (FROM)", "SORT (FROM) UTF-8 ALL"),
    ("SORT (DISPLAYFROM)", "SORT (DISPLAYFROM) UTF-8 ALL"),
    ("UID SORT (REVERSE DATE) UNSEEN", "UID SORT (REVERSE DATE) UTF-8 UNSEEN"),
    ("ESORT RETURN (PARTIAL 1:50) (REVERSE DATE)",
     "SORT RETURN (PARTIAL 1:50) (REVERSE DATE) UTF-8 ALL"),
    ("THREAD REFERENCES", "THREAD REFERENCES UTF-8 ALL"),
    ("THREAD REFERENCES (computed: a new set each run)", "THREAD REFERENCES UTF-8 UID 1:{n}"),
    ("THREAD ORDEREDSUBJECT", "THREAD ORDEREDSUBJECT UTF-8 ALL"),
    ("THREAD ORDEREDSUBJECT (computed)", "THREAD ORDEREDSUBJECT UTF-8 UID 1:{n}"),
    ("ESEARCH RETURN (MIN MAX COUNT) ALL", "SEARCH RETURN (MIN MAX COUNT) ALL"),
    ("ESEARCH RETURN (MIN MAX COUNT) UNSEEN", "SEARCH RETURN (MIN MAX COUNT) UNSEEN"),
    ("UID SEARCH UNSEEN (plain)", "UID SEARCH UNSEEN"),
]


def make_message(i: int, rng: random.Random) -> bytes:
    name = NAMES[i % len(NAMES)]
    words = " ".join(rng.choice(WORDS) for _ in range(3))
    refs = ""
    subject = f"{words} {i // 3}"
    if i % 3:  # a reply to the message before it
        subject = f"Re: {subject}"
        refs = f"In-Reply-To: <{i - 1}.sort@example.net>\nReferences: <{i - 1}.sort@example.net>\n"
    body = "".join(" ".join(rng.choice(WORDS) for _ in range(10)) + "\n"
                   for _ in range(rng.randint(3, 30)))
    day, minute = 1 + (i * 7919) % 28, (i * 104729) % 1440
    return (f"From: {name} <{name.lower()}{i % 13}@example.net>\nTo: {USER}\n"
            f"Subject: {subject}\nDate: {day:02d} Nov 2026 {minute // 60:02d}:{minute % 60:02d}:00"
            f" +0000\nMessage-ID: <{i}.sort@example.net>\n{refs}"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}").encode()


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="imap-sort-bench-"))
    plain, tls = free_port(), free_port()
    conf, inbox = account(tmp, f"[imap]\nimap = {plain}\nimaps = {tls}\n", USER, PASSWORD)
    rng = random.Random(1)
    for i in range(args.messages):
        inbox.deliver(make_message(i, rng), flags="S" if i % 4 else "", sync=False)
    server = serve("imap", conf, plain)
    try:
        c = await Client.connect(plain)
        await c.cmd(f"LOGIN {USER} {PASSWORD}")
        t = time.perf_counter()
        await c.cmd("SELECT INBOX")
        print(f"{args.messages} messages; SELECT (indexing them) {time.perf_counter() - t:.1f} s")
        # the daemon again, now over a filled index: the first SORT reads the summaries
        server.terminate()
        server.wait()
        server = serve("imap", conf, plain)
        c = await Client.connect(plain)
        await c.cmd(f"LOGIN {USER} {PASSWORD}")
        await c.cmd("SELECT INBOX")
        t = time.perf_counter()
        await c.cmd("SORT (SUBJECT) UTF-8 ALL")
        print(f"first SORT (SUBJECT) after a restart: {(time.perf_counter() - t) * 1000:.0f} ms")
        print(f"{'command':48} {'median':>9} {'p90':>9} {'server CPU':>11}  bytes")
        for label, query in QUERIES:
            await c.cmd(query.format(n=args.messages + 1))  # warm-up
            times, cpus = [], []
            size = 0
            for run in range(args.runs):
                text = query.format(n=args.messages - run)
                cpu0, t = proc_cpu(server.pid), time.perf_counter()
                _, size = await c.cmd(text)
                times.append(time.perf_counter() - t)
                cpus.append(proc_cpu(server.pid) - cpu0)
            times.sort()
            print(f"{label:48} {statistics.median(times) * 1000:7.1f} ms "
                  f"{times[int(len(times) * 0.9) - 1] * 1000:7.1f} ms "
                  f"{statistics.mean(cpus) * 1000:8.1f} ms  {size:,}")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=15)
    asyncio.run(bench(ap.parse_args()))


if __name__ == "__main__":
    main()
