"""IMAP resync benchmark: what QRESYNC and COMPRESS=DEFLATE save on the wire.

Runs a real ``mailstack serve imap`` process on free ports over a temporary data directory with
an N-message INBOX (default 10,000, as ``imap_bench.py`` fills it) and prints:

- a reconnecting client's resync after another client made C changes (default 100: half flag
  changes, half expunges): ``SELECT ... (QRESYNC (uidvalidity modseq))`` against a plain SELECT
  followed by ``UID FETCH 1:* (FLAGS)`` (how a client without QRESYNC learns the same), in
  octets on the wire and milliseconds (median of 5);
- a full-header sync (Thunderbird's header FETCH of every message) with and without
  ``COMPRESS DEFLATE``: octets on the wire, ratio, time and server CPU.

Usage::

    python bench/imap_sync_bench.py [--messages 10000] [--changes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import account, serve
from imap_bench import (
    PASSWORD,
    USER,
    Client,
    free_port,
    make_message,
    proc_cpu,
)

HEADER_FETCH = ("UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
                "Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
                "Content-Type Reply-To Received)])")


class DeflateClient:
    """A client after COMPRESS DEFLATE: counts compressed octets received."""

    def __init__(self, c: Client) -> None:
        self.reader, self.writer = c.reader, c.writer
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.n = 0

    async def cmd(self, text: str) -> tuple[bytes, int]:
        """(inflated response, compressed octets received)."""
        self.n += 1
        tag = f"z{self.n}".encode()
        self.writer.write(self.deflate.compress(tag + b" " + text.encode() + b"\r\n")
                          + self.deflate.flush(zlib.Z_SYNC_FLUSH))
        got, wire = bytearray(), 0
        end = re.compile(rb"(^|\r\n)" + tag + rb" (OK|NO|BAD)[^\r\n]*\r\n$")
        while not end.search(got[-300:]):
            chunk = await self.reader.read(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            wire += len(chunk)
            got += self.inflate.decompress(chunk)
        return bytes(got), wire


def code(lines: list[bytes], name: str) -> int:
    for line in lines:
        m = re.search(rb"\[" + name.encode() + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no {name}")


async def resync(port: int, messages: int, changes: int) -> None:
    a = await Client.connect(port)
    await a.cmd(f"LOGIN {USER} {PASSWORD}")
    await a.cmd("ENABLE QRESYNC")
    lines, _ = await a.cmd("SELECT INBOX")
    validity, modseq = code(lines, "UIDVALIDITY"), code(lines, "HIGHESTMODSEQ")
    await a.cmd("UNSELECT")
    b = await Client.connect(port)
    await b.cmd(f"LOGIN {USER} {PASSWORD}")
    await b.cmd("SELECT INBOX")
    rng = random.Random(7)
    picked = rng.sample(range(1, messages + 1), changes)
    flagged, expunged = picked[:changes // 2], sorted(picked[changes // 2:])
    for uid in flagged:
        await b.cmd(f"UID STORE {uid} +FLAGS.SILENT (\\Flagged)")
    await b.cmd(f"UID STORE {','.join(map(str, expunged))} +FLAGS.SILENT (\\Deleted)")
    await b.cmd(f"UID EXPUNGE {','.join(map(str, expunged))}")
    q_bytes, q_times, p_bytes, p_times = [], [], [], []
    for _ in range(5):
        t = time.perf_counter()
        lines, got = await a.cmd(f"SELECT INBOX (QRESYNC ({validity} {modseq}))")
        q_times.append(time.perf_counter() - t)
        q_bytes.append(got)
        fetched = sum(1 for x in lines if b" FETCH (UID " in x)
        vanished = next((x for x in lines if x.startswith(b"* VANISHED")), b"")
        await a.cmd("UNSELECT")
        t = time.perf_counter()
        _, got1 = await a.cmd("SELECT INBOX")
        _, got2 = await a.cmd("UID FETCH 1:* (FLAGS)")
        p_times.append(time.perf_counter() - t)
        p_bytes.append(got1 + got2)
        await a.cmd("UNSELECT")
    print(f"resync of {messages} messages after {changes} changes ({len(flagged)} flag changes, "
          f"{len(expunged)} expunges):")
    print(f"  SELECT (QRESYNC): {statistics.median(q_bytes):,.0f} octets, "
          f"{statistics.median(q_times) * 1000:.1f} ms; {fetched} FETCH, "
          f"VANISHED (EARLIER) of {len(expunged)} UIDs in {len(vanished)} octets")
    print(f"  SELECT + UID FETCH 1:* (FLAGS): {statistics.median(p_bytes):,.0f} octets, "
          f"{statistics.median(p_times) * 1000:.1f} ms "
          f"({statistics.median(p_bytes) / statistics.median(q_bytes):.0f}x the octets)")


async def compressed_sync(port: int, pid: int) -> None:
    c = await Client.connect(port)
    await c.cmd(f"LOGIN {USER} {PASSWORD}")
    await c.cmd("SELECT INBOX")
    await c.cmd(HEADER_FETCH)  # warm the header cache: both runs below read it alike
    cpu0, t = proc_cpu(pid), time.perf_counter()
    lines, plain = await c.cmd(HEADER_FETCH)
    plain_time, plain_cpu = time.perf_counter() - t, proc_cpu(pid) - cpu0
    n = len(lines) - 1
    await c.cmd("COMPRESS DEFLATE")
    z = DeflateClient(c)
    cpu0, t = proc_cpu(pid), time.perf_counter()
    data, wire = await z.cmd(HEADER_FETCH)
    z_time, z_cpu = time.perf_counter() - t, proc_cpu(pid) - cpu0
    print(f"full-header sync of {n} messages (Thunderbird's header FETCH):")
    print(f"  plain: {plain:,} octets, {plain_time * 1000:.0f} ms, server CPU "
          f"{plain_cpu * 1000:.0f} ms")
    print(f"  COMPRESS=DEFLATE: {wire:,} octets on the wire ({len(data):,} inflated), "
          f"{z_time * 1000:.0f} ms, server CPU {z_cpu * 1000:.0f} ms; "
          f"{plain / wire:.1f}x fewer octets")


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="imap-sync-bench-"))
    plain, tls = free_port(), free_port()
    conf, inbox = account(tmp, f"[imap]\nimap = {plain}\nimaps = {tls}\n", USER, PASSWORD)
    rng = random.Random(1)
    for i in range(args.messages):
        inbox.deliver(make_message(i, rng), flags="S" if i % 3 else "", sync=False)
    server = serve("imap", conf, plain)
    try:
        await compressed_sync(plain, server.pid)
        await resync(plain, args.messages, args.changes)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=100)
    asyncio.run(bench(ap.parse_args()))


if __name__ == "__main__":
    main()
