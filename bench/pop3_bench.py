"""POP3 benchmark: login time on a 10,000-message maildrop, RETR messages/s, server CPU per RETR.

Runs ``python -m mailstack serve pop3`` as a subprocess on free loopback ports with a throwaway
data directory, fills alice's INBOX with 10,000 messages of 2 KiB, and measures from a plain
blocking socket client:

- login: time from sending ``USER`` to the ``+OK`` after ``PASS`` (the maildrop snapshot is
  taken there), on the 10,000-message maildrop and on an empty one (the difference is the cost
  of the snapshot; the rest is the argon2 password check); the first login after the daemon
  started is shown apart, as only it indexes the mailbox (the account store's first sync);
- RETR: every message once per round, one command at a time (like poplib) and pipelined
  (100 commands in flight); server CPU is the daemon's utime+stime from /proc/PID/stat.
  Between rounds the messages are moved back to new/ so every RETR also sets the seen flag.

Targets (issue 4): login < 200 ms; <= 100 us server CPU per RETR of a 2 KiB message.

Usage: python bench/pop3_bench.py [--messages 10000] [--rounds 5] [--logins 15]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailstack.accounts.users import UserDB  # noqa: E402
from mailstack.pop3.maildrop import Maildrop, SnapshotCache  # noqa: E402
from mailstack.store.maildir import INFO_SEP, Maildir, create_user_mailbox  # noqa: E402

ALICE, EMPTY, PASSWORD = "alice@example.test", "empty@example.test", "bench-password"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message(n: int, size: int = 2048) -> bytes:
    head = (f"From: Bob <bob@example.test>\nTo: Alice <{ALICE}>\nSubject: benchmark {n}\n"
            f"Date: Thu, 26 Nov 2026 12:00:00 +0000\nMessage-ID: <bench{n}@example.test>\n\n"
            ".a line that needs dot-stuffing\n")
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\n"
    body = head + line * ((size - len(head)) // len(line))
    return (body + "x" * (size - len(body) - 1) + "\n").encode()


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        assert self.line().startswith(b"+OK")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        out, self.buf = self.buf[:i], self.buf[i + 2:]
        return out

    def multi(self) -> bytes:
        """Status line plus body of a multi-line reply; returns the body."""
        status = self.line()
        assert status.startswith(b"+OK"), status
        while (i := self.buf.find(b"\r\n.\r\n")) < 0 and not self.buf.startswith(b".\r\n"):
            self._fill()
        if self.buf.startswith(b".\r\n"):
            self.buf = self.buf[3:]
            return b""
        out, self.buf = self.buf[:i + 2], self.buf[i + 5:]
        return out

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.sock.close()


def login_ms(port: int, user: str) -> float:
    c = Client(port)
    t0 = time.perf_counter()
    c.sock.sendall(f"USER {user}\r\n".encode())
    assert c.line().startswith(b"+OK")
    c.sock.sendall(f"PASS {PASSWORD}\r\n".encode())
    reply = c.line()
    elapsed = (time.perf_counter() - t0) * 1000
    assert reply.startswith(b"+OK Logged in"), reply
    c.cmd("QUIT")
    c.close()
    return elapsed


def open_ms(box: Maildir, runs: int = 9) -> tuple[float, float]:
    """In-process medians (ms) of Maildrop.open: parsing every name (a cold cache), and with
    the daemon's snapshot cache warm (a repeat login, or one whose cache was warmed while the
    password was checked)."""
    cold, warm = [], []
    for _ in range(runs):
        cache = SnapshotCache()
        t0 = time.perf_counter()
        Maildrop.open(box, cache).close()
        t1 = time.perf_counter()
        Maildrop.open(box, cache).close()
        t2 = time.perf_counter()
        assert cache.hits == 1
        cold.append(t1 - t0)
        warm.append(t2 - t1)
    return statistics.median(cold) * 1000, statistics.median(warm) * 1000


def retr_round(port: int, count: int, pipeline: int, pid: int) -> tuple[float, float]:
    """RETR 1..count in one session; returns wall and server CPU seconds for the RETRs alone
    (the login's password check and snapshot are not counted)."""
    c = Client(port)
    c.cmd(f"USER {ALICE}")
    assert c.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    time.sleep(0.05)  # let the server finish the login's bookkeeping
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    n = 1
    while n <= count:
        batch = range(n, min(count, n + pipeline - 1) + 1)
        c.sock.sendall(b"".join(f"RETR {i}\r\n".encode() for i in batch))
        for _ in batch:
            body = c.multi()
            assert len(body) >= 2048, len(body)
        n = batch[-1] + 1
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    c.cmd("QUIT")
    c.close()
    return wall, cpu


def unsee(box_root: Path) -> None:
    """Move every message back to new/ without flags (undo RETR's seen flag)."""
    cur = box_root / "cur"
    for name in os.listdir(cur):
        os.rename(cur / name, box_root / "new" / name.split(INFO_SEP, 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--logins", type=int, default=15)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pop3-bench-"))
    data = tmp / "data"
    port, tls_port = free_port(), free_port()
    cfg = tmp / "mailstack.toml"
    cfg.write_text(f'[server]\ndomains = ["example.test"]\ndata_dir = "{data}"\n'
                   f'bind = ["127.0.0.1"]\n[pop3]\npop3 = {port}\npop3s = {tls_port}\n')
    users = UserDB(data / "users")
    users.add(ALICE, PASSWORD)
    users.add(EMPTY, PASSWORD)
    box = create_user_mailbox(data, ALICE)
    create_user_mailbox(data, EMPTY)
    t0 = time.perf_counter()
    for n in range(args.messages):
        box.deliver(message(n), sync=False)
    print(f"filled the maildrop with {args.messages} messages of 2 KiB "
          f"in {time.perf_counter() - t0:.1f} s")

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MAILSTACK_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", "pop3",
                             "--config", str(cfg)], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        login_ms(port, EMPTY)  # warm-up (imports, thread pool)

        first = login_ms(port, ALICE)  # the daemon has not seen this maildrop yet
        full, empty = [], []
        for _ in range(args.logins):  # interleaved, so that load changes hit both alike
            full.append(login_ms(port, ALICE))
            empty.append(login_ms(port, EMPTY))
        print(f"\nlogin (USER .. +OK after PASS), median of {args.logins}:")
        print(f"  {args.messages}-message maildrop: {statistics.median(full):6.1f} ms "
              f"(min {min(full):.1f}, max {max(full):.1f})   target < 200 ms")
        print(f"  first login to it after the daemon started (nothing cached): {first:.1f} ms")
        print(f"  empty maildrop:          {statistics.median(empty):6.1f} ms "
              f"(the argon2 password check)")
        snap = statistics.median(full) - statistics.median(empty)
        print(f"  difference (maildrop cost as seen by the client): {snap:.1f} ms")
        cold, warm = open_ms(box)
        print(f"  maildrop lock + snapshot, in-process: {cold:.1f} ms with a cold cache, "
              f"{warm:.1f} ms with a warm one")

        for label, pipeline in (("one at a time", 1), ("pipelined, 100 in flight", 100)):
            rates, cpus = [], []
            for _ in range(args.rounds):
                unsee(box.root)
                wall, cpu = retr_round(port, args.messages, pipeline, proc.pid)
                rates.append(args.messages / wall)
                cpus.append(cpu / args.messages * 1e6)
            print(f"\nRETR of 2 KiB messages, {label}, median of {args.rounds} rounds "
                  f"of {args.messages}:")
            print(f"  {statistics.median(rates):8.0f} messages/s "
                  f"(min {min(rates):.0f}, max {max(rates):.0f})")
            print(f"  {statistics.median(cpus):8.1f} us server CPU per RETR "
                  f"(min {min(cpus):.1f}, max {max(cpus):.1f})   target <= 100 us")
    finally:
        proc.terminate()
        proc.wait(10)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
