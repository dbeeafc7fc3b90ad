"""Event-loop stalls per IMAP and POP3 command on a big mailbox (issue 13: <= 10 ms each).

Runs real ``mailstack serve imap`` and ``mailstack serve pop3`` processes (uvloop) with
``MAILSTACK_LOOP_WATCH`` set (``mailstack/runtime/loopwatch.py``: a 1 ms heartbeat on the
event loop; a late heartbeat is a stretch the loop ran without yielding), over a temporary data
directory whose INBOX holds ``--messages`` messages (default 10,000). It drives every command
one at a time with imaplib and poplib, notes when each was sent and answered
(``time.monotonic``, the daemons' clock too), and prints per command its time over the socket
and the longest stall of the daemon's loop while it ran. A stall over 10 ms keeps every other
session of that daemon waiting that long.

Usage: python bench/loop_stall.py [--messages 10000] [--big-mib 10] [--runs 3]
(with ``LOOP_STALL_STACKS=1`` it also prints, for each stall over the target, where the loop
was when a watchdog thread sampled it)
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import poplib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import account, serve

from mailstack.testing.ports import free_port

USER, PASSWORD = "bench@example.test", "bench-password"
WORDS = ["alpha", "beta", "gamma", "delta", "report", "meeting", "lunch", "invoice", "project",
         "status", "update", "quarterly", "review", "release", "notes", "draft"]
TARGET_MS = 10.0


def make_message(i: int, rng: random.Random) -> bytes:
    subject = " ".join(rng.choice(WORDS) for _ in range(5))
    body = "".join(" ".join(rng.choice(WORDS) for _ in range(10)) + "\n"
                   for _ in range(rng.randint(5, 60)))
    return (f"From: Sender {i % 97} <sender{i % 97}@example.net>\nTo: {USER}\n"
            f"Subject: {subject} #{i}\nDate: Thu, 26 Nov 2026 10:{i % 60:02d}:00 +0000\n"
            f"Message-ID: <{i}.stall@example.net>\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}").encode()


class Timeline:
    """(label, daemon, sent, answered) per command, on the monotonic clock."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float]] = []

    def run(self, daemon: str, label: str, fn: Callable[[], object]) -> object:
        t0 = time.monotonic()
        result = fn()
        self.rows.append((label, daemon, t0, time.monotonic()))
        return result


def imap_ok(result: tuple[str, list]) -> tuple[str, list]:
    if result[0] != "OK":
        raise RuntimeError(result)
    return result


def drive_pop3(port: int, t: Timeline, n: int) -> None:
    pop = poplib.POP3("127.0.0.1", port, timeout=600)
    t.run("pop3", "pop3 USER+PASS (snapshot)",
          lambda: (pop.user(USER), pop.pass_(PASSWORD)))
    t.run("pop3", "pop3 STAT", pop.stat)
    t.run("pop3", f"pop3 LIST ({n})", pop.list)
    t.run("pop3", f"pop3 UIDL ({n})", pop.uidl)
    t.run("pop3", "pop3 RETR 1", lambda: pop.retr(1))
    t.run("pop3", f"pop3 RETR {n}", lambda: pop.retr(n))
    t.run("pop3", "pop3 TOP 5 10", lambda: pop.top(5, 10))
    t.run("pop3", "pop3 RETR x200", lambda: [pop.retr(i) for i in range(2, 202)])
    t.run("pop3", "pop3 QUIT (200 seen)", pop.quit)


def drive_imap(port: int, t: Timeline, n: int, big: bytes) -> None:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    m._mode_utf8 = False  # imaplib keeps literals as bytes
    cmd = lambda label, fn: t.run("imap", label, fn)  # noqa: E731
    cmd("imap LOGIN", lambda: imap_ok(m.login(USER, PASSWORD)))
    caps = imap_ok(m.capability())[1][0].decode().split()
    cmd("imap SELECT INBOX (first: indexes)", lambda: imap_ok(m.select("INBOX")))
    cmd("imap SELECT INBOX (again)", lambda: imap_ok(m.select("INBOX")))
    cmd("imap CREATE Archive", lambda: imap_ok(m.create("Archive")))
    for i in range(50):
        m.create(f"Folder{i:02d}")
    cmd("imap LIST * (52 folders)", lambda: imap_ok(m.list('""', "*")))
    cmd("imap STATUS INBOX", lambda: imap_ok(m.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)")))
    cmd("imap SEARCH ALL", lambda: imap_ok(m.search(None, "ALL")))
    cmd("imap SEARCH UNSEEN", lambda: imap_ok(m.search(None, "UNSEEN")))
    cmd("imap SEARCH SUBJECT invoice", lambda: imap_ok(m.search(None, "SUBJECT", "invoice")))
    cmd("imap SEARCH TEXT invoice", lambda: imap_ok(m.search(None, "TEXT", "invoice")))
    cmd("imap SEARCH BODY zzz (no hit)", lambda: imap_ok(m.search(None, "BODY", "zzz")))
    if "SORT" in caps:
        cmd("imap SORT (DATE)", lambda: imap_ok(m.sort("(DATE)", "UTF-8", "ALL")))
    cmd("imap FETCH 1:* (FLAGS)", lambda: imap_ok(m.fetch("1:*", "(FLAGS)")))
    cmd("imap FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)",
        lambda: imap_ok(m.fetch("1:*", "(FLAGS RFC822.SIZE ENVELOPE)")))
    cmd("imap FETCH 1:2000 BODY.PEEK[]", lambda: imap_ok(m.fetch("1:2000", "(BODY.PEEK[])")))
    cmd("imap FETCH 1:500 BODYSTRUCTURE", lambda: imap_ok(m.fetch("1:500", "(BODYSTRUCTURE)")))
    cmd("imap STORE 1:* +FLAGS (\\Flagged)",
        lambda: imap_ok(m.store("1:*", "+FLAGS", "(\\Flagged)")))
    cmd("imap STORE 1:* -FLAGS.SILENT (\\Flagged)",
        lambda: imap_ok(m.store("1:*", "-FLAGS.SILENT", "(\\Flagged)")))
    cmd("imap COPY 1:* Archive", lambda: imap_ok(m.copy("1:*", "Archive")))
    cmd("imap STORE 1:1000 +FLAGS.SILENT (\\Deleted)",
        lambda: imap_ok(m.store("1:1000", "+FLAGS.SILENT", "(\\Deleted)")))
    cmd("imap EXPUNGE (1,000)", lambda: imap_ok(m.expunge()))
    cmd(f"imap APPEND ({len(big) >> 20} MiB)",
        lambda: imap_ok(m.append("INBOX", None, None, big)))
    cmd("imap NOOP", lambda: imap_ok(m.noop()))
    if "MOVE" in caps:
        cmd("imap MOVE 1:* Folder00",
            lambda: imap_ok(m._simple_command("MOVE", "1:*", "Folder00")))
    cmd("imap SELECT Archive (first)", lambda: imap_ok(m.select("Archive")))
    cmd("imap LOGOUT", m.logout)


Row = tuple[str, float, float, float, int]  # label, wall ms, stall ms, loop CPU ms, stalls over


def run_once(messages: int, big_mib: int) -> list[Row]:
    """A fresh data directory and daemons; every command once; a row per command."""
    tmp = Path(tempfile.mkdtemp(prefix="loop-stall-"))
    imap_port, pop3_port = free_port(), free_port()
    ports = {"imap": imap_port, "pop3": pop3_port}
    conf, inbox = account(tmp, f"[imap]\nimap = {imap_port}\nimaps = 0\n"
                          f"[pop3]\npop3 = {pop3_port}\npop3s = 0\n", USER, PASSWORD)
    rng = random.Random(1)
    for i in range(messages):
        inbox.deliver(make_message(i, rng), flags="S" if i % 3 else "", sync=False)
    big_line = b"x" * 76 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + big_line * ((big_mib << 20) // len(big_line))
    watch = {d: tmp / f"{d}.stalls" for d in ("imap", "pop3")}
    procs: dict[str, subprocess.Popen] = {}
    t = Timeline()
    try:
        for d in ("imap", "pop3"):
            procs[d] = serve(d, conf, ports[d], env={"MAILSTACK_LOOP_WATCH": str(watch[d])})
        time.sleep(0.5)  # start-up stalls are not the commands'
        drive_pop3(pop3_port, t, messages)
        drive_imap(imap_port, t, messages, big)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(30)
    stalls = {d: [json.loads(line) for line in watch[d].read_text().splitlines()]
              if watch[d].exists() else [] for d in watch}
    if os.environ.get("LOOP_STALL_STACKS"):
        for d, found in stalls.items():
            for s in found:
                if s["cpu"] > TARGET_MS:
                    print(d, s["labels"], f'cpu {s["cpu"]} ms', f'gc {s.get("gc")}',
                          *s.get("stacks", ()), sep="\n   ")
    rows = []
    for label, daemon, t0, t1 in t.rows:
        mine = [s for s in stalls[daemon] if s["start"] < t1 and s["start"] + s["ms"] / 1000 > t0]
        rows.append((label, (t1 - t0) * 1000, max((s["ms"] for s in mine), default=0.0),
                     max((s["cpu"] for s in mine), default=0.0),
                     sum(1 for s in mine if s["cpu"] > TARGET_MS)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--big-mib", type=int, default=10)
    ap.add_argument("--runs", type=int, default=1, help="repeat from scratch; print medians")
    args = ap.parse_args()
    runs = [run_once(args.messages, args.big_mib) for _ in range(args.runs)]
    print(f"{args.messages} messages, {args.runs} run(s); per command the longest stretch the "
          f"daemon's event loop ran without yielding while it was served (target <= "
          f"{TARGET_MS:g} ms)")
    print("stall: its wall-clock length; cpu: the loop thread's CPU time in it (the loop's own "
          "work, without waits for a core or the GIL); medians over the runs, and the largest "
          "cpu")
    print(f"{'command':<46} {'wall ms':>9} {'stall ms':>9} {'cpu ms':>8} {'max cpu':>8}")
    over = 0
    for i, (label, *_) in enumerate(runs[0]):
        col = [[run[i][k] for run in runs] for k in (1, 2, 3)]
        cpu = statistics.median(col[2])
        over += cpu > TARGET_MS
        print(f"{label:<46} {statistics.median(col[0]):>9.1f} {statistics.median(col[1]):>9.1f}"
              f" {cpu:>8.1f} {max(col[2]):>8.1f}{'  OVER' if cpu > TARGET_MS else ''}")
    print(f"{over} of {len(runs[0])} commands over {TARGET_MS:g} ms of loop CPU in one stretch "
          "(median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
