"""Store soak: sessions on two imap processes do random operations on one mailbox for a while.

Starts two ``mailstack serve imap`` processes over one temporary data directory; N sessions
(half on each) issue random STORE, EXPUNGE, APPEND, COPY, MOVE, FETCH and SEARCH for
``--duration`` seconds. Prints operations per second, errors (any NO other than FETCH's
``[EXPUNGEISSUED]``, any BAD, any traceback or SERVERBUG in the logs), messages lost without
``\\Deleted``, and the RSS of both daemons sampled every 10 s; ends with PASS or FAIL (errors,
lost mail, or memory growing more than max(16 MiB, 20 %) after the first minute). Usage::

    python bench/store_soak.py [--duration 600] [--sessions 8]
"""

from __future__ import annotations

import argparse
import imaplib
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from argon2 import PasswordHasher

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import serve  # noqa: E402

from mailstack.store.maildir import create_user_mailbox  # noqa: E402

USER, PASSWORD = "soak@example.test", "soak-password"
FLAGS = ["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "$Work", "$Later"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Shared:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.appended: dict[str, int] = {}
        self.deleted_uids: set[int] = set()
        self.errors: list[str] = []
        self.ops = 0


def session(port: int, which: int, shared: Shared, stop: float) -> None:
    rnd = random.Random(which)
    c = imaplib.IMAP4("127.0.0.1", port, timeout=60)
    c.login(USER, PASSWORD)
    c.select("INBOX")
    n = 0

    def check(typ: str, data: list, what: str) -> None:
        if typ == "NO" and what == "FETCH" and b"[EXPUNGEISSUED]" in data[-1]:
            return
        if typ != "OK":
            with shared.lock:
                shared.errors.append(f"session {which}: {what}: {typ} {data!r}"[:300])

    while time.monotonic() < stop:
        op = rnd.choice(["append", "store", "store", "expunge", "fetch", "copy", "move",
                         "search"])
        with shared.lock:
            shared.ops += 1
        if op == "append" or len(shared.appended) < 20:
            n += 1
            mid = f"s{which}-{n}@soak.test"
            body = f"Subject: {mid}\r\nMessage-ID: <{mid}>\r\n\r\n{'soak ' * 200}\r\n".encode()
            typ, data = c.append("INBOX", None, None, body)
            check(typ, data, "APPEND")
            m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"") if typ == "OK" else None
            if m:
                with shared.lock:
                    shared.appended[mid] = int(m.group(1))
            continue
        typ, data = c.uid("SEARCH", "ALL")
        check(typ, data, "SEARCH")
        uids = [int(x) for x in data[0].split()] if typ == "OK" and data[0] else []
        if not uids:
            continue
        pick = ",".join(map(str, rnd.sample(uids, min(len(uids), 3))))
        if op == "store":
            flags = rnd.sample(FLAGS, 2)
            mode = rnd.choice(["+FLAGS", "-FLAGS"])
            if "\\Deleted" in flags and mode == "+FLAGS":
                with shared.lock:
                    shared.deleted_uids.update(int(u) for u in pick.split(","))
            check(*c.uid("STORE", pick, mode, f"({' '.join(flags)})"), "STORE")
        elif op == "expunge":
            check(*c.expunge(), "EXPUNGE")
        elif op == "fetch":
            check(*c.uid("FETCH", pick, "(FLAGS BODY.PEEK[])"), "FETCH")
        elif op == "copy":
            check(*c.uid("COPY", pick, "Archive"), "COPY")
        elif op == "move":
            with shared.lock:  # moved messages count as gone from INBOX on purpose
                shared.deleted_uids.update(int(u) for u in pick.split(","))
            check(*c.uid("MOVE", pick, "Archive"), "MOVE")
        else:
            check(*c.uid("SEARCH", "TEXT", "soak"), "SEARCH TEXT")
        c.untagged_responses.clear()
    c.logout()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--sessions", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="store-soak-"))
    data = tmp / "data"
    data.mkdir()
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    (data / "users").write_text(f"{USER}:{cheap.hash(PASSWORD)}\n")
    create_user_mailbox(data, USER)
    procs, ports, logs = [], [], []
    for i in range(2):
        port = free_port()
        conf = tmp / f"imap{i}.toml"
        conf.write_text(f'[server]\ndomains = ["example.test"]\ndata_dir = "{data}"\n'
                        f'bind = ["127.0.0.1"]\n[imap]\nimap = {port}\nimaps = {free_port()}\n')
        log = open(tmp / f"imap{i}.log", "w")  # noqa: SIM115
        logs.append(log)
        procs.append(serve("imap", conf, port, stdout=log, stderr=subprocess.STDOUT))
        ports.append(port)
    c = imaplib.IMAP4("127.0.0.1", ports[0])
    c.login(USER, PASSWORD)
    c.create("Archive")
    c.logout()
    shared = Shared()
    start = time.monotonic()
    stop = start + args.duration
    threads = [threading.Thread(target=session, args=(ports[i % 2], i, shared, stop),
                                daemon=True) for i in range(args.sessions)]
    for t in threads:
        t.start()
    samples: list[tuple[float, float, float]] = []
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - start, rss_mib(procs[0].pid), rss_mib(procs[1].pid)))
        print(f"{samples[-1][0]:6.0f} s  {shared.ops:8,} operations  "
              f"rss {samples[-1][1]:.1f} / {samples[-1][2]:.1f} MiB  "
              f"errors {len(shared.errors)}", flush=True)
        for t in threads:
            t.join(10 / len(threads))
    elapsed = time.monotonic() - start
    c = imaplib.IMAP4("127.0.0.1", ports[1])
    c.login(USER, PASSWORD)
    present: set[str] = set()
    for box in ("INBOX", "Archive"):
        c.select(box)
        data_ = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")[1]
        present |= {m.decode() for m in re.findall(
            rb"<([^>]+@soak\.test)>", b"".join(x[1] for x in data_ if isinstance(x, tuple)))}
    c.logout()
    for p in procs:
        p.terminate()
        p.wait(20)
    for log in logs:
        log.close()
    text = "".join((tmp / f"imap{i}.log").read_text() for i in range(2))
    lost = {m for m, u in shared.appended.items() if u not in shared.deleted_uids} - present
    warm = [s for s in samples if s[0] >= 60] or samples
    growth = [warm[-1][i] - warm[0][i] for i in (1, 2)]
    grew = [g > max(16, 0.2 * warm[0][i + 1]) for i, g in enumerate(growth)]
    print(f"{shared.ops:,} operations in {elapsed:.0f} s ({shared.ops / elapsed:,.0f}/s), "
          f"{len(shared.appended):,} appended, errors {len(shared.errors)}, "
          f"tracebacks {text.count('Traceback')}, SERVERBUG {text.count('SERVERBUG')}, "
          f"lost {len(lost)}")
    print(f"RSS after warm-up: imap0 {warm[0][1]:.1f} → {warm[-1][1]:.1f} MiB, "
          f"imap1 {warm[0][2]:.1f} → {warm[-1][2]:.1f} MiB")
    for e in shared.errors[:10]:
        print("  ", e)
    ok = not shared.errors and not lost and "Traceback" not in text and not any(grew)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
