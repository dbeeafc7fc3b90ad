#!/usr/bin/env python3
"""Relay throughput between two mailstack stacks (example.test → example.net) on one machine.

Starts mda+mta for both domains, each with a transport to the other's port 25. Clients submit
2 KiB messages on stack A's 465 (implicit TLS + AUTH) for bob@example.net; the figure is the
rate at which they land in bob's Maildir on stack B (relayed over SMTP with STARTTLS).

Usage: python bench/relay_bench.py [-n 1000] [-c 1 10 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smtp_bench import BODY, ROOT, free_port, proc_cpu, read_reply


async def client(port: int, ctx: ssl.SSLContext, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")

    async def reply() -> bytes:
        return await read_reply(reader)

    await reply()
    writer.write(b"EHLO bench\r\n")
    await reply()
    token = base64.b64encode(b"\0alice@example.test\0pw").decode()
    writer.write(f"AUTH PLAIN {token}\r\n".encode())
    assert (await reply()).startswith(b"235")
    for _ in range(count):
        writer.write(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
        for _ in range(3):
            r = await reply()
        assert r.startswith(b"354"), r
        writer.write(BODY + b".\r\n")
        r = await reply()
        assert r.startswith(b"250"), r
    writer.write(b"QUIT\r\n")
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("-c", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mailstack-relay-bench-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "mailstack"]
    ports = {s: {k: free_port() for k in ("smtp", "submissions", "lmtp")} for s in "ab"}
    cfgs = {}
    for s, dom, other, user in (("a", "example.test", "example.net", "alice"),
                                ("b", "example.net", "example.test", "bob")):
        o = "b" if s == "a" else "a"
        cfg = tmp / f"{s}.toml"
        cfg.write_text(
            f'[server]\nhostname = "mail.{dom}"\ndomains = ["{dom}"]\n'
            f'data_dir = "{tmp / s}"\nbind = ["127.0.0.1"]\nlog_level = "warning"\n'
            f"[mta]\nsmtp = {ports[s]['smtp']}\nsubmission = 0\n"
            f"submissions = {ports[s]['submissions']}\n"
            f"[mda]\nlmtp = {ports[s]['lmtp']}\n"
            f'[mta.transport]\n"{other}" = "127.0.0.1:{ports[o]["smtp"]}"\n')
        subprocess.run([*run, "user", "add", f"{user}@{dom}", "--password-stdin", "--config",
                        str(cfg)], input=b"pw\n", check=True, env=env, capture_output=True)
        cfgs[s] = cfg
    procs = [subprocess.Popen([*run, "serve", d, "--config", str(cfgs[s])], env=env)
             for s in "ab" for d in ("mda", "mta")]
    try:
        time.sleep(2.5)
        ctx = ssl.create_default_context(cafile=str(tmp / "a" / "tls" / "ca.pem"))
        inbox = tmp / "b" / "mail" / "example.net" / "bob" / "new"
        print(f"mailstack relay benchmark: stack A → SMTP+STARTTLS → stack B, {args.n} messages"
              f" of {len(BODY)} B per round, medians of {args.rounds}")
        print(f"{'C':>4} {'relayed/s':>10} {'CPU µs/msg (4 daemons)':>24}")
        for c in args.c:
            rates, cpus = [], []
            for _ in range(args.rounds):
                before = len(os.listdir(inbox)) if inbox.exists() else 0
                cpu0 = sum(proc_cpu(p.pid) for p in procs)
                t0 = time.perf_counter()
                per = [args.n // c + (1 if i < args.n % c else 0) for i in range(c)]

                async def burst(per: list[int] = per) -> None:
                    await asyncio.gather(*(client(ports["a"]["submissions"], ctx, k)
                                           for k in per if k))
                asyncio.run(burst())
                deadline = time.monotonic() + 300
                while (len(os.listdir(inbox)) if inbox.exists() else 0) < before + args.n:
                    if time.monotonic() > deadline:
                        raise SystemExit("relay did not finish within 300 s")
                    time.sleep(0.01)
                rates.append(args.n / (time.perf_counter() - t0))
                cpus.append((sum(proc_cpu(p.pid) for p in procs) - cpu0) / args.n * 1e6)
            print(f"{c:>4} {statistics.median(rates):>10.0f} {statistics.median(cpus):>24.0f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


if __name__ == "__main__":
    main()
