"""JMAP (http daemon) benchmark: the issue's targets, against a real ``mailstack serve http``.

Fills an INBOX with N messages (default 10,000) the way the mda stores them, starts the http
daemon on free ports and prints:

- session + ``Mailbox/get`` (two requests) latency, median;
- ``Email/query`` (inMailbox, receivedAt desc, limit 50) + ``Email/get`` of those 50 (from,
  subject, preview, keywords, receivedAt) in one request: latency, first and median;
- text search (``Email/query`` with a ``text`` filter): median;
- delivery (a file in new/, as the mda writes it) → EventSource ``state`` event: p50/p99;
- server memory (RSS) with S open event streams (default 1,000);
- ``Core/echo`` with Basic auth on keep-alive connections: requests/s.

Latencies are measured by a minimal HTTP/1.1 client over plain HTTP on loopback (logins are
allowed there), so they include a little client time. Usage::

    python bench/jmap_bench.py [--messages 10000] [--streams 1000] [--deliveries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import account, serve  # noqa: E402

from bench.imap_bench import PASSWORD, USER, make_message, proc_cpu, proc_rss_mib  # noqa: E402
from mailstack.jmap.account import account_id  # noqa: E402

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HTTP:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    @classmethod
    async def connect(cls, port: int) -> HTTP:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        return cls(r, w)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.w.write(head.encode() + body)
        status_line = await self.r.readline()
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        data = await self.r.readexactly(length)
        return int(status_line.split()[1]), data

    async def api(self, calls: list) -> list:
        status, data = await self.request("POST", "/jmap/api", json.dumps(
            {"using": USING, "methodCalls": calls}).encode())
        assert status == 200, data[:200]
        return json.loads(data)["methodResponses"]


async def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jmap-bench-"))
    plain, tls = free_port(), free_port()
    conf, inbox = account(  # thousands of event streams come from one address
        tmp, f"[http]\nhttp = {plain}\nhttps = {tls}\nmax_concurrent_requests = 64\n",
        USER, PASSWORD, server="max_connections = 100000\nmax_connections_per_ip = 100000\n")
    rng = random.Random(1)
    for i in range(args.messages):
        inbox.deliver(make_message(i, rng), flags="S" if i % 3 else "", sync=False)
    print(f"INBOX: {args.messages} messages")
    server = serve("http", conf, plain)
    aid = account_id(USER)
    try:
        pid = server.pid
        print(f"RSS at start: {proc_rss_mib(pid):.0f} MiB")
        c = await HTTP.connect(plain)
        t = time.perf_counter()
        boxes = await c.api([["Mailbox/get", {"accountId": aid}, "0"]])
        print(f"first Mailbox/get (indexes the folder): {(time.perf_counter() - t) * 1000:.0f} ms")
        inbox_id = next(m["id"] for m in boxes[0][1]["list"] if m["role"] == "inbox")

        async def session_and_mailboxes() -> None:
            status, _ = await c.request("GET", "/.well-known/jmap")
            assert status == 200
            await c.api([["Mailbox/get", {"accountId": aid}, "0"]])
        print(f"session + Mailbox/get: {ms(await timed(session_and_mailboxes, 50))} "
              "(target ≤ 5 ms)")

        page = [["Email/query", {"accountId": aid, "filter": {"inMailbox": inbox_id},
                                 "sort": [{"property": "receivedAt", "isAscending": False}],
                                 "limit": 50}, "q"],
                ["Email/get", {"accountId": aid, "#ids": {"resultOf": "q", "name": "Email/query",
                                                          "path": "/ids"},
                               "properties": ["from", "subject", "preview", "keywords",
                                              "receivedAt"]}, "g"]]

        async def first_page() -> None:
            resp = await c.api(page)
            assert len(resp[1][1]["list"]) == 50
        first = await timed(first_page, 1)
        print(f"Email/query + Email/get of 50: first {first[0] * 1000:.0f} ms, "
              f"then {ms(await timed(first_page, 30))} (target ≤ 10 ms)")

        # text search: no hit, a few hits, (almost) every message; the window the bench's
        # first page asks (limit 50), then the same with calculateTotal (every hit checked)
        for label, word in [("no hit", "zzz-nothing"), ("104 hits", "sender 5 <"),
                            ("8,775 hits", "release notes"), ("9,996 hits", "quarterly")]:
            for total in (False, True):
                async def search(word: str = word, total: bool = total) -> None:
                    await c.api([["Email/query", {"accountId": aid, "filter": {"text": word},
                                                  "limit": 50, "calculateTotal": total}, "s"]])
                cpu0 = proc_cpu(pid)
                lat = await timed(search, 20)
                cpu = (proc_cpu(pid) - cpu0) / 20
                print(f"text search, {label}{', calculateTotal' if total else ''}: {ms(lat)}, "
                      f"server CPU {cpu * 1000:.1f} ms (target ≤ 50 ms)")

        # delivery → event
        sr, sw = await asyncio.open_connection("127.0.0.1", plain)
        sw.write(f"GET /jmap/eventsource?types=Email&closeafter=no&ping=0 HTTP/1.1\r\n"
                 f"Host: localhost\r\nAuthorization: {AUTH}\r\n\r\n".encode())
        while b"mailstack event stream" not in await sr.readline():
            pass
        lat = []
        for i in range(args.deliveries):
            t = time.perf_counter()
            inbox.deliver(make_message(args.messages + i, rng))
            while b"event: state" not in await sr.readline():
                pass
            lat.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
        lat.sort()
        print(f"delivery → event: p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
              f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms (target p99 ≤ 100 ms)")
        sw.close()

        # memory of open event streams
        before = proc_rss_mib(pid)
        streams = []
        for _ in range(args.streams):
            r, w = await asyncio.open_connection("127.0.0.1", plain)
            w.write(f"GET /jmap/eventsource?types=*&closeafter=no&ping=0 HTTP/1.1\r\n"
                    f"Host: localhost\r\nAuthorization: {AUTH}\r\n\r\n".encode())
            streams.append((r, w))
        for r, _ in streams:
            while b"mailstack event stream" not in await r.readline():
                pass
        after = proc_rss_mib(pid)
        print(f"{args.streams} open event streams: RSS {before:.0f} → {after:.0f} MiB "
              f"(+{after - before:.0f} MiB; target ≤ 100 MiB)")
        for _, w in streams:
            w.close()

        # Core/echo throughput
        conns = [await HTTP.connect(plain) for _ in range(args.connections)]
        echo = json.dumps({"using": USING, "methodCalls": [["Core/echo", {"x": 1}, "0"]]}
                          ).encode()
        count = 0
        stop = time.perf_counter() + args.seconds

        async def worker(h: HTTP) -> None:
            nonlocal count
            while time.perf_counter() < stop:
                status, _ = await h.request("POST", "/jmap/api", echo)
                assert status == 200
                count += 1
        cpu0, t = proc_cpu(pid), time.perf_counter()
        await asyncio.gather(*(worker(h) for h in conns))
        wall, cpu = time.perf_counter() - t, proc_cpu(pid) - cpu0
        print(f"Core/echo, Basic auth, {args.connections} keep-alive connections: "
              f"{count / wall:,.0f} requests/s, server CPU {cpu / count * 1e6:.0f} µs/request "
              "(target ≥ 3,000/s)")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)  # the run's ~200 MB of mail and index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--deliveries", type=int, default=200)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(bench(p.parse_args()))


if __name__ == "__main__":
    main()
