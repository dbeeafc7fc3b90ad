"""IMAP daemon benchmark: SELECT, metadata and body FETCH, IDLE memory, delivery latency.

Runs a real ``mailstack serve imap`` process on free ports over a temporary data directory,
fills a folder with N messages (default 10,000) the way the mda stores them, and prints:

- SELECT time (cold: first after start; warm: again) of the N-message INBOX;
- ``FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)`` messages/s and server CPU per message;
- full-body ``FETCH BODY.PEEK[]`` messages/s and MB/s, server CPU per message;
- server memory (RSS) with C concurrent IDLE connections over TLS (default 1,000);
- delivery → ``* n EXISTS`` latency p50/p99 for an IDLEing client.

The benchmark account gets a deliberately cheap argon2 hash so that thousands of logins measure
the IMAP server, not password hashing. Usage::

    python bench/imap_bench.py [--messages 10000] [--idle 1000] [--deliveries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

from argon2 import PasswordHasher

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchlib import serve  # noqa: E402

from mailstack.config import load  # noqa: E402
from mailstack.runtime.tls import client_context, ensure_tls_files  # noqa: E402
from mailstack.store.maildir import create_user_mailbox  # noqa: E402

USER, PASSWORD = "bench@example.test", "bench-password"
WORDS = ["alpha", "beta", "gamma", "delta", "report", "meeting", "lunch", "invoice", "project",
         "status", "update", "quarterly", "review", "release", "notes", "draft"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MESSAGE_BYTES = 0  # --message-bytes: about this size (0: 5 to 200 lines of text)


def make_message(i: int, rng: random.Random) -> bytes:
    subject = " ".join(rng.choice(WORDS) for _ in range(5))
    body_lines = max(1, (MESSAGE_BYTES - 480) // 70) if MESSAGE_BYTES else rng.randint(5, 200)
    body = "".join(" ".join(rng.choice(WORDS) for _ in range(10)) + "\n"
                   for _ in range(body_lines))
    return (f"Return-Path: <sender{i % 97}@example.net>\nDelivered-To: {USER}\n"
            f"Received: from mx.example.net by mail.example.test; Thu, 26 Nov 2026 10:00:00 "
            f"+0000\nFrom: Sender {i % 97} <sender{i % 97}@example.net>\nTo: {USER}\n"
            f"Subject: {subject} #{i}\nDate: Thu, 26 Nov 2026 10:{i % 60:02d}:00 +0000\n"
            f"Message-ID: <{i}.bench@example.net>\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}").encode()


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.n = 0

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None = None) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                              server_hostname="localhost" if ctx else None,
                                              limit=1 << 24)
        c = cls(r, w)
        await r.readline()
        return c

    async def cmd(self, text: str) -> tuple[list[bytes], int]:
        """Send a command; returns (response lines with literals, bytes received)."""
        self.n += 1
        tag = f"b{self.n}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        lines, total = [], 0
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("closed")
            total += len(line)
            if line.endswith(b"}\r\n"):
                size = int(line[line.rindex(b"{") + 1:-3].rstrip(b"+"))
                data = await self.reader.readexactly(size)
                total += size
                line += data
                continue_line = await self.reader.readline()
                total += len(continue_line)
                line += continue_line
            lines.append(line)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line)
                return lines, total


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="imap-bench-"))
    plain, tls = free_port(), free_port()
    conf = tmp / "mailstack.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\ndata_dir = "{tmp / "data"}"\n'
                    "max_connections = 100000\nmax_connections_per_ip = 100000\n"
                    f'bind = ["127.0.0.1"]\nlog_level = "warning"\n'
                    f"[imap]\nimap = {plain}\nimaps = {tls}\n")
    cfg = load(conf, env={})
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    (cfg.data_dir).mkdir(parents=True, exist_ok=True)
    (cfg.data_dir / "users").write_text(f"{USER}:{cheap.hash(PASSWORD)}\n")
    inbox = create_user_mailbox(cfg.data_dir, USER)
    rng = random.Random(1)
    t0 = time.perf_counter()
    total_bytes = 0
    for i in range(args.messages):
        data = make_message(i, rng)
        total_bytes += len(data)
        inbox.deliver(data, flags="S" if i % 3 else "", sync=False)
    print(f"filled INBOX with {args.messages} messages ({total_bytes / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.1f} s")
    files = ensure_tls_files(cfg)
    ctx = client_context(files.ca)
    server = serve("imap", conf, plain)
    try:
        pid = server.pid
        c = await Client.connect(plain)
        await c.cmd(f"LOGIN {USER} {PASSWORD}")
        t = time.perf_counter()
        await c.cmd("SELECT INBOX")
        cold = time.perf_counter() - t
        await c.cmd("UNSELECT")
        warm = []
        for _ in range(5):
            t = time.perf_counter()
            await c.cmd("SELECT INBOX")
            warm.append(time.perf_counter() - t)
        print(f"SELECT {args.messages} messages: cold {cold * 1000:.0f} ms, "
              f"warm {statistics.median(warm) * 1000:.1f} ms (median of 5)")
        for label, query in (("FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)",
                              "FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)"),
                             ("UID FETCH 1:* (FLAGS)", "UID FETCH 1:* (FLAGS)"),
                             ("Thunderbird header FETCH",
                              "UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS "
                              "(From To Cc Bcc Subject Date Message-ID Priority X-Priority "
                              "References Newsgroups In-Reply-To Content-Type Reply-To "
                              "Received)])")):
            for run in ("first", "again"):
                cpu0, t = proc_cpu(pid), time.perf_counter()
                lines, _ = await c.cmd(query)
                wall, cpu = time.perf_counter() - t, proc_cpu(pid) - cpu0
                n = len(lines) - 1
                print(f"{label} ({run}): {n / wall:,.0f} msg/s, "
                      f"server CPU {cpu / n * 1e6:.0f} µs/msg")
        n_body = min(args.messages, 2000)
        for run in ("first", "again"):
            cpu0, t = proc_cpu(pid), time.perf_counter()
            lines, received = await c.cmd(f"FETCH 1:{n_body} BODY.PEEK[]")
            wall, cpu = time.perf_counter() - t, proc_cpu(pid) - cpu0
            print(f"full-body FETCH of {n_body} ({run}): {n_body / wall:,.0f} msg/s, "
                  f"{received / wall / 1e6:.1f} MB/s, server CPU {cpu / n_body * 1e6:.0f} µs/msg")
        # STORE on one message, SEARCH TEXT, index size
        store_lat = []
        for i in range(200):
            t = time.perf_counter()
            await c.cmd(f"UID STORE {1 + (i * 37) % args.messages} +FLAGS.SILENT (\\Flagged)"
                        if i % 2 == 0 else
                        f"UID STORE {1 + (i * 37) % args.messages} -FLAGS.SILENT (\\Flagged)")
            store_lat.append(time.perf_counter() - t)
        store_lat.sort()
        noop_lat = []
        for _ in range(200):
            t = time.perf_counter()
            await c.cmd("NOOP")
            noop_lat.append(time.perf_counter() - t)
        noop_lat.sort()
        print(f"STORE on one message over {len(store_lat)}: p50 "
              f"{store_lat[len(store_lat) // 2] * 1000:.2f} ms, p99 "
              f"{store_lat[int(len(store_lat) * 0.99) - 1] * 1000:.2f} ms (NOOP round trip: "
              f"p50 {noop_lat[100] * 1000:.2f} ms, p99 {noop_lat[197] * 1000:.2f} ms)")
        for query in ("SEARCH TEXT quarterly", "SEARCH BODY invoice", "SEARCH TEXT zebra"):
            times = []
            for _ in range(5):
                t = time.perf_counter()
                lines, _ = await c.cmd(query)
                times.append(time.perf_counter() - t)
            hits = len(lines[0].split()) - 2 if lines and lines[0].startswith(b"* SEARCH") else 0
            print(f"{query} over {args.messages}: {statistics.median(times) * 1000:.1f} ms "
                  f"(median of 5), {hits} hits")
        index = inbox.root / "mailstack-index.sqlite"
        size = sum(p.stat().st_size for p in inbox.root.glob("mailstack-index.sqlite*"))
        print(f"index size: {size / 1e6:.1f} MB, {size / args.messages / 1024:.1f} KiB per "
              f"message (messages {total_bytes / args.messages / 1024:.1f} KiB on average)")
        del index
        # delivery → EXISTS latency
        await c.cmd("SELECT INBOX")
        exists = args.messages
        c.writer.write(b"i IDLE\r\n")
        await c.reader.readline()
        lat = []
        for _ in range(args.deliveries):
            await asyncio.sleep(random.uniform(0.01, 0.06))
            t = time.perf_counter()
            inbox.deliver(make_message(exists, rng))
            exists += 1
            while True:
                line = await asyncio.wait_for(c.reader.readline(), 5)
                if line == b"* %d EXISTS\r\n" % exists:
                    break
            lat.append(time.perf_counter() - t)
        c.writer.write(b"DONE\r\n")
        lat.sort()
        print(f"delivery -> EXISTS over {len(lat)} deliveries: p50 "
              f"{lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f}"
              f" ms, max {lat[-1] * 1000:.1f} ms")
        # IDLE connections over TLS
        for target in args.idle:
            base = proc_rss_mib(pid)
            conns: list[Client] = []
            t = time.perf_counter()
            sem = asyncio.Semaphore(100)

            async def one(sem: asyncio.Semaphore = sem) -> Client:
                async with sem:
                    k = await Client.connect(tls, ctx)
                    await k.cmd(f"LOGIN {USER} {PASSWORD}")
                    await k.cmd("SELECT INBOX")
                    k.writer.write(b"i IDLE\r\n")
                    await k.reader.readline()
                    return k
            conns = await asyncio.gather(*(one() for _ in range(target)))
            await asyncio.sleep(1)
            rss = proc_rss_mib(pid)
            print(f"{target} IDLE TLS connections (INBOX of {exists} selected): server RSS "
                  f"{rss:.0f} MiB (was {base:.0f} MiB before; {(rss - base) * 1024 / target:.0f} "
                  f"KiB each), set up in {time.perf_counter() - t:.1f} s")
            fanout = []
            cpu0 = proc_cpu(pid)
            for _ in range(args.fanout):
                t = time.perf_counter()
                inbox.deliver(make_message(exists, rng))
                exists += 1
                want = b"* %d EXISTS\r\n" % exists

                async def seen(k: Client, want: bytes = want) -> float:
                    while await asyncio.wait_for(k.reader.readline(), 30) != want:
                        pass
                    return time.perf_counter()
                done = await asyncio.gather(*(seen(k) for k in conns))
                fanout.append(max(done) - t)
                await asyncio.sleep(0.2)
            if fanout:
                fanout.sort()
                cpu = (proc_cpu(pid) - cpu0) / len(fanout)
                print(f"  delivery -> EXISTS at all {target} IDLE clients: median "
                      f"{fanout[len(fanout) // 2] * 1000:.0f} ms, worst {fanout[-1] * 1000:.0f} ms "
                      f"over {len(fanout)} deliveries; server CPU {cpu * 1000:.0f} ms per "
                      "delivery (the one-process benchmark client is part of the latency)")
            for k in conns:
                k.writer.transport.abort()
            await asyncio.sleep(1)
    finally:
        server.terminate()
        server.wait(10)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--idle", type=int, nargs="*", default=[1000])
    ap.add_argument("--deliveries", type=int, default=200)
    ap.add_argument("--message-bytes", type=int, default=0,
                    help="messages of about this size (default: 5 to 200 lines)")
    ap.add_argument("--fanout", type=int, default=5,
                    help="deliveries timed until every IDLE client has its EXISTS")
    args = ap.parse_args()
    global MESSAGE_BYTES
    MESSAGE_BYTES = args.message_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
