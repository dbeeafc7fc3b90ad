#!/usr/bin/env python3
"""End-to-end SMTP → queue → LMTP → Maildir throughput of the real mta and mda processes.

Starts ``mailstack serve mda`` and ``mailstack serve mta`` on free ports in a temp directory,
then for each concurrency C submits N messages of 2 KiB over port 25 (PIPELINING like
Postfix's smtp-source; one connection per client, or with ``--connect`` a new connection per
message: greeting, EHLO, MAIL/RCPT/DATA, QUIT, as inbound MX traffic mostly arrives) and prints:

  accepted msg/s (last 250 after DATA), delivered msg/s (last file in Maildir/new),
  p50/p99 transaction latency (MAIL → 250 after DATA; with ``--connect`` connect → 250 after
  DATA), server CPU per message (mta + mda), the benchmark client's own CPU per message, the
  whole machine's busy CPU per message (every process and kernel thread: at C = 1 the chain of
  client, mta and mda is serial, so this bounds the rate), and
  the peak memory (VmHWM) of each daemon.

``--no-copy-log`` sets ``[mda] copy_log = false`` (each copy's file, ``new/`` and journal line
synced before ``250``, as before the copy log).

``--queue`` sets ``[mta] direct_delivery = 0``: every message is queued (fsynced) before
``250`` and the queue runner hands it to the mda afterwards, as before issue 18.

``--sink`` also runs a bare aiosmtpd + uvloop sink (no disk, no delivery: it accepts and
forgets) in its own process, driven by the same client in rounds interleaved with mailstack's,
and prints its accepted/s, its CPU per message and mailstack's delivered/s as a share of it.

``--phases`` (with ``--connect``) also prints each system's p50 per step of a message:
connect to greeting, EHLO, the pipelined MAIL/RCPT/DATA, the message to its ``250``, QUIT.

Usage: python bench/smtp_bench.py [-n 2000] [-c 1 10 50] [--rounds 3] [--connect] [--sink]
       [--queue] [--phases]
Figures of several rounds are reported as medians; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, serve, wait_port

from mailstack.runtime.fsutil import metadata_order

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


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every CPU, every process and the kernel's
    own threads: /proc/stat without idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


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


#: the steps of a message on its own connection, as ``--phases`` prints them
PHASES = ("greeting", "EHLO", "MAIL/RCPT/DATA", "message", "QUIT")


async def connecting_client(port: int, count: int, latencies: list[float],
                            phases: dict[str, list[float]] | None = None) -> None:
    """``count`` messages, each on a new connection (greeting, EHLO, transaction, QUIT);
    ``phases``: where each step's time goes (connect to greeting, EHLO to its reply, ...)."""
    payload = BODY + b".\r\n"
    for _ in range(count):
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_reply(reader)
        t1 = time.perf_counter()
        writer.write(b"EHLO bench.example.org\r\n")
        await read_reply(reader)
        t2 = time.perf_counter()
        writer.write(b"MAIL FROM:<bench@example.org>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n")
        for _ in range(3):
            r = await read_reply(reader)
        if not r.startswith(b"354"):
            raise RuntimeError(f"DATA refused: {r!r}")
        t3 = time.perf_counter()
        writer.write(payload)
        r = await read_reply(reader)
        if not r.startswith(b"250"):
            raise RuntimeError(f"message refused: {r!r}")
        t4 = time.perf_counter()
        latencies.append(t4 - t0)
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
        writer.close()
        if phases is not None:
            t5 = time.perf_counter()
            for name, took in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                  strict=True):
                phases.setdefault(name, []).append(took)


async def run_round(port: int, inbox: Path | None, n: int, c: int, connect: bool = False,
                    phases: dict[str, list[float]] | None = None) -> dict[str, float]:
    """One round; ``inbox`` None: a sink, where accepted is all there is to wait for;
    ``phases`` (with ``connect``): each step's times go there."""
    before = len(os.listdir(inbox)) if inbox else 0
    latencies: list[float] = []
    per = [n // c + (1 if i < n % c else 0) for i in range(c)]
    t0 = time.perf_counter()
    if connect:
        await asyncio.gather(*(connecting_client(port, k, latencies, phases)
                               for k in per if k))
    else:
        await asyncio.gather(*(client(port, k, latencies) for k in per if k))
    accepted = time.perf_counter() - t0
    deadline = time.monotonic() + 120
    while inbox and len(os.listdir(inbox)) < before + n:
        if time.monotonic() > deadline:
            raise RuntimeError("deliveries did not finish within 120 s")
        await asyncio.sleep(0.005)
    delivered = time.perf_counter() - t0
    latencies.sort()
    return {"accepted": n / accepted, "delivered": n / delivered,
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000}


class _SinkHandler:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def serve_sink(port: int) -> None:
    """The reference: aiosmtpd's SMTP on uvloop, accepting every message and keeping none."""
    import uvloop
    from aiosmtpd.smtp import SMTP

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(_SinkHandler(), hostname="sink"),
                                          "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


def print_phases(steps: dict[str, dict[str, list[float]]]) -> None:
    """Each system's p50 per step of a message on its own connection, in µs."""
    print("      p50 µs    " + " ".join(f"{name:>15}" for name in PHASES))
    for system, times in steps.items():
        if times:
            print(f"      {system:<10}" + " ".join(
                f"{statistics.median(times[name]) * 1e6:>15.0f}" for name in PHASES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="messages per round")
    ap.add_argument("-c", type=int, nargs="+", default=[1, 10, 50], help="concurrencies")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connect", action="store_true", help="a new connection per message")
    ap.add_argument("--queue", action="store_true",
                    help="queue every message first ([mta] direct_delivery = 0)")
    ap.add_argument("--no-copy-log", action="store_true",
                    help="sync each copy's file, new/ and journal line instead of the copy log "
                         "([mda] copy_log = false)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the stack's temporary data directory goes (its file system "
                         "decides whether the mda's copy log is used)")
    ap.add_argument("--sink", action="store_true",
                    help="also drive a bare aiosmtpd + uvloop sink, interleaved, as a reference")
    ap.add_argument("--phases", action="store_true",
                    help="with --connect: also print where a message's time goes, step by step "
                         "(connect to greeting, EHLO, MAIL/RCPT/DATA, the message, QUIT)")
    ap.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return

    tmp = Path(tempfile.mkdtemp(prefix="mailstack-bench-", dir=args.dir))
    smtp, lmtp = free_port(), free_port()
    cfg = tmp / "bench.toml"
    cfg.write_text(f'[server]\nhostname = "mx.example.test"\ndomains = ["example.test"]\n'
                   f'data_dir = "{tmp / "data"}"\nbind = ["127.0.0.1"]\nlog_level = "warning"\n'
                   f"[mta]\nsmtp = {smtp}\nsubmission = 0\nsubmissions = 0\n"
                   + ("direct_delivery = 0\n" if args.queue else "") +
                   f"[mda]\nlmtp = {lmtp}\n"
                   + ("copy_log = false\n" if args.no_copy_log else "")
                   + "[imap]\nimap = 0\nimaps = 0\n[pop3]\npop3 = 0\npop3s = 0\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "mailstack"]
    subprocess.run([*run, "user", "add", "sink@example.test", "--password-stdin", "--config",
                    str(cfg)], input=b"x\n", check=True, env=env, capture_output=True)
    procs: dict[str, subprocess.Popen] = {}
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, __file__, "--serve-sink", str(sink_port)],
                            env=env) if args.sink else None
    try:
        for name, port in (("mda", lmtp), ("mta", smtp)):
            procs[name] = serve(name, cfg, port)
        if sink:
            wait_port(sink_port, sink)
        inbox = tmp / "data" / "mail" / "example.test" / "sink" / "new"
        mode = ("a new connection per message" if args.connect else "connections reused") \
            + (", queued first" if args.queue else "") \
            + (", no copy log" if args.no_copy_log else "")
        print(f"mailstack SMTP→Maildir benchmark: {args.n} messages of {len(BODY)} B per round,"
              f" {mode}, {args.rounds} rounds, fsync on; medians")
        print(f"{'C':>4} {'accepted/s':>11} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8}"
              f" {'CPU µs/msg':>11} {'mta µs':>7} {'mda µs':>7} {'client µs':>10}"
              f" {'busy µs':>8}"
              + (f" {'sink/s':>8} {'sink µs':>8} {'ratio':>6}" if sink else ""))
        for c in args.c:
            rows, cpu, client_cpu, busy, sink_rows, sink_cpu = [], [], [], [], [], []
            split: dict[str, list[float]] = {name: [] for name in procs}
            steps: dict[str, dict[str, list[float]]] = {"mailstack": {}, "sink": {}}
            watch = args.phases and args.connect
            for _ in range(args.rounds):
                each0 = {name: proc_cpu(p.pid) for name, p in procs.items()}
                cpu0, own0 = sum(each0.values()), time.process_time()
                busy0 = machine_busy()
                rows.append(asyncio.run(run_round(smtp, inbox, args.n, c, args.connect,
                                                  steps["mailstack"] if watch else None)))
                cpu.append((sum(proc_cpu(p.pid) for p in procs.values()) - cpu0) / args.n * 1e6)
                client_cpu.append((time.process_time() - own0) / args.n * 1e6)
                busy.append((machine_busy() - busy0) / args.n * 1e6)
                for name, p in procs.items():
                    split[name].append((proc_cpu(p.pid) - each0[name]) / args.n * 1e6)
                if sink:
                    cpu0 = proc_cpu(sink.pid)
                    sink_rows.append(asyncio.run(run_round(
                        sink_port, None, args.n, c, args.connect,
                        steps["sink"] if watch else None))["accepted"])
                    sink_cpu.append((proc_cpu(sink.pid) - cpu0) / args.n * 1e6)
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            line = (f"{c:>4} {med['accepted']:>11.0f} {med['delivered']:>12.0f}"
                    f" {med['p50']:>8.1f} {med['p99']:>8.1f} {statistics.median(cpu):>11.0f}"
                    f" {statistics.median(split['mta']):>7.0f}"
                    f" {statistics.median(split['mda']):>7.0f}"
                    f" {statistics.median(client_cpu):>10.0f} {statistics.median(busy):>8.0f}")
            if sink:
                ratios = [r["delivered"] / s for r, s in zip(rows, sink_rows, strict=True)]
                line += (f" {statistics.median(sink_rows):>8.0f}"
                         f" {statistics.median(sink_cpu):>8.0f}"
                         f" {statistics.median(ratios):>6.2f}")
            print(line, flush=True)
            if watch:
                print_phases(steps)
        used = (tmp / "data" / "mda" / "copies" / "0.seg").exists()
        print(f"copy log: {'used' if used else 'not used'} ({tmp})")
        journaled, what = metadata_order(tmp)
        if not journaled and what.startswith("ext"):
            print(f"file system: {what}: for a minute or so after many deletions (another "
                  "run's clean-up, a test run) creating a file costs ~10x more there; let it "
                  "rest between runs, or measure with --dir on a journaled file system")
        for name, p in procs.items():
            print(f"{name}: peak memory {proc_hwm_mib(p.pid):.1f} MiB, CPU user "
                  f"{proc_cpu(p.pid, 'user'):.1f} s, system {proc_cpu(p.pid, 'system'):.1f} s")
    finally:
        for p in [*procs.values(), *([sink] if sink else [])]:
            p.terminate()
        for p in [*procs.values(), *([sink] if sink else [])]:
            p.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)  # the run's mail and queue


if __name__ == "__main__":
    main()
