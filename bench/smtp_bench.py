#!/usr/bin/env python3
"""End-to-end SMTP → queue → LMTP → Maildir throughput of the real mta and mda processes.

Starts ``mailstack serve mda`` and ``mailstack serve mta`` on free ports in a temp directory,
then for each concurrency C submits N messages of 2 KiB over port 25 (one connection per
client, PIPELINING like Postfix's smtp-source) and prints:

  accepted msg/s (last 250 after DATA), delivered msg/s (last file in Maildir/new),
  p50/p99 transaction latency (MAIL → 250 after DATA), server CPU per message (mta + mda),
  the benchmark client's own CPU per message, and the peak memory (VmHWM) of each daemon.

Usage: python bench/smtp_bench.py [-n 2000] [-c 1 10 50] [--rounds 3]
Figures of several rounds are reported as medians; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_HEAD = b"From: bench@example.org\r\nTo: sink@example.test\r\nSubject: bench\r\n\r\n"
_LINES = b"".join(b"%04d " % i + b"x" * 70 + b"\r\n" for i in range(30))
BODY = (_HEAD + _LINES)[:2046] + b"\r\n"  # 2 KiB, ending in CRLF


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int, which: str = "both") -> float:
    """utime + stime (or one of them) of a process in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    ticks = {"user": user, "system": system}.get(which, user + system)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """The last line of one (possibly multi-line) SMTP reply."""
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            return line


async def client(port: int, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        return await read_reply(reader)

    await reply()
    writer.write(b"EHLO bench.example.org\r\n")
    await reply()
    payload = BODY + b".\r\n"
    for _ in range(count):
        t0 = time.perf_counter()
        writer.write(b"MAIL FROM:<bench@example.org>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n")
        for _ in range(3):
            r = await reply()
        if not r.startswith(b"354"):
            raise RuntimeError(f"DATA refused: {r!r}")
        writer.write(payload)
        r = await reply()
        if not r.startswith(b"250"):
            raise RuntimeError(f"message refused: {r!r}")
        latencies.append(time.perf_counter() - t0)
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


async def run_round(port: int, inbox: Path, n: int, c: int) -> dict[str, float]:
    before = len(os.listdir(inbox))
    latencies: list[float] = []
    per = [n // c + (1 if i < n % c else 0) for i in range(c)]
    t0 = time.perf_counter()
    await asyncio.gather(*(client(port, k, latencies) for k in per if k))
    accepted = time.perf_counter() - t0
    deadline = time.monotonic() + 120
    while len(os.listdir(inbox)) < before + n:
        if time.monotonic() > deadline:
            raise RuntimeError("deliveries did not finish within 120 s")
        await asyncio.sleep(0.005)
    delivered = time.perf_counter() - t0
    latencies.sort()
    return {"accepted": n / accepted, "delivered": n / delivered,
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="messages per round")
    ap.add_argument("-c", type=int, nargs="+", default=[1, 10, 50], help="concurrencies")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mailstack-bench-"))
    smtp, lmtp = free_port(), free_port()
    cfg = tmp / "bench.toml"
    cfg.write_text(f'[server]\nhostname = "mx.example.test"\ndomains = ["example.test"]\n'
                   f'data_dir = "{tmp / "data"}"\nbind = ["127.0.0.1"]\nlog_level = "warning"\n'
                   f"[mta]\nsmtp = {smtp}\nsubmission = 0\nsubmissions = 0\n"
                   f"[mda]\nlmtp = {lmtp}\n[imap]\nimap = 0\nimaps = 0\n[pop3]\npop3 = 0\n"
                   "pop3s = 0\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "mailstack"]
    subprocess.run([*run, "user", "add", "sink@example.test", "--password-stdin", "--config",
                    str(cfg)], input=b"x\n", check=True, env=env, capture_output=True)
    procs = {name: subprocess.Popen([*run, "serve", name, "--config", str(cfg)], env=env)
             for name in ("mda", "mta")}
    try:
        for port in (lmtp, smtp):
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
        inbox = tmp / "data" / "mail" / "example.test" / "sink" / "new"
        print(f"mailstack SMTP→Maildir benchmark: {args.n} messages of {len(BODY)} B per round,"
              f" {args.rounds} rounds, fsync on; medians")
        print(f"{'C':>4} {'accepted/s':>11} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8}"
              f" {'CPU µs/msg':>11} {'client µs':>10}")
        for c in args.c:
            rows, cpu, client_cpu = [], [], []
            for _ in range(args.rounds):
                cpu0, own0 = sum(proc_cpu(p.pid) for p in procs.values()), time.process_time()
                rows.append(asyncio.run(run_round(smtp, inbox, args.n, c)))
                cpu.append((sum(proc_cpu(p.pid) for p in procs.values()) - cpu0) / args.n * 1e6)
                client_cpu.append((time.process_time() - own0) / args.n * 1e6)
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(f"{c:>4} {med['accepted']:>11.0f} {med['delivered']:>12.0f} {med['p50']:>8.1f}"
                  f" {med['p99']:>8.1f} {statistics.median(cpu):>11.0f}"
                  f" {statistics.median(client_cpu):>10.0f}")
        for name, p in procs.items():
            print(f"{name}: peak memory {proc_hwm_mib(p.pid):.1f} MiB, CPU user "
                  f"{proc_cpu(p.pid, 'user'):.1f} s, system {proc_cpu(p.pid, 'system'):.1f} s")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(15)


if __name__ == "__main__":
    main()
