#!/usr/bin/env python3
"""Soak run: mixed SMTP, IMAP and POP3 load at a fixed rate against a real ``mailstack up``.

Starts ``mailstack up`` in a temporary directory with every listener on a free loopback port,
adds ``--users`` accounts with ``mailstack user add`` (half read over IMAP, half over POP3) and
for ``--duration`` seconds offers ``--rate`` messages/s, open loop (the schedule does not slow
down when the stack does):

- SMTP: 50 % on 587 (STARTTLS + AUTH PLAIN, connections reused, ~1 in 20 messages reconnects),
  10 % on 465 (implicit TLS + AUTH, a new connection for every other message), 40 % on 25
  (inbound MX traffic, no AUTH, 1-5 messages a connection). Each message carries a unique
  number (``X-Soak-Seq``, also in the Subject) and a digest of its body; sizes 0.5-16 KiB,
  some lines start with a dot.
- IMAP: one session per IMAP user (imaps or 143 + STARTTLS, reconnecting every 10-40 polls)
  that polls NOOP, ``UID SEARCH UNSEEN``, ``UID FETCH BODY.PEEK[]``, ``UID STORE +FLAGS
  (\\Seen)`` and, one poll in five, deletes the seen messages and EXPUNGEs.
- POP3: one client per POP3 user that logs in every 0.5-1.5 s (pop3s, or 110 + STLS) and does
  STAT, RETR + DELE of each message, QUIT.

A message counts as *in* at the 250 after DATA and as *out* when its reader committed it
(IMAP: the ``\\Seen`` STORE succeeded; POP3: ``+OK`` to QUIT). After the load the run drains
until every accepted message was read, then checks that each was read exactly once, by its
recipient, with an intact body.

Memory is the VmRSS of each daemon process, the minimum of 5 samples 0.2 s apart (password
checks allocate 19 MiB of argon2 memory for a moment; the minimum drops such transients), taken
after ``--warmup`` seconds of load and again at the end of the load. Before the load, 8
concurrent logins on each daemon make every worker thread run argon2 once: glibc keeps those
19 MiB in each thread's malloc arena, which otherwise shows up as a step of ~20 MiB whenever
the load first reaches a new level of concurrent logins. The limit on growth is
max(16 MiB, 20 % of the start): after warm-up a Python daemon's RSS still moves by a few MiB
as pymalloc and malloc arenas fill and fragment, and IMAP's per-folder caches follow the folder
size. A leak of 1.4 KiB per message at the default 20 messages/s passes 16 MiB within the
default 600 s. The summary also shows the growth in each half of the measured window and per
message, and notes a daemon that grew by more than 1 MiB in both halves (steady growth that is
still within the limit).

PASS needs: no client errors (any exception or unexpected reply), no message lost, duplicated,
misdelivered or corrupted, no daemon restarted, and memory growth within the limit.
Exit code 0 on PASS, 1 on FAIL.

Usage: python bench/soak.py [--duration 600] [--rate 20] [--users 8] [--warmup SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imap_bench import Client as ImapClient  # also puts the repository on sys.path
from imap_bench import proc_rss_mib
from pop3_bench import Client as Pop3Client
from smtp_bench import ROOT, free_port, read_reply

from mailstack.config import load
from mailstack.runtime.banner import listeners
from mailstack.runtime.tls import client_context, ensure_tls_files

DOMAIN = "example.test"
PROTOCOLS = ("smtp", "imap", "pop3")
#: SMTP listener → (share of the messages, chance to reconnect after a message)
SMTP_MIX = {"submission": (0.5, 0.05), "submissions": (0.1, 0.5), "smtp": (0.4, 0.3)}
TIMEOUT = 30.0  # seconds for any one client operation
MEM_FLOOR_MIB, MEM_RATIO = 16.0, 0.20
WORDS = b"alpha beta gamma delta soak queue mailbox fetch retry fsync spool relay".split()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values in milliseconds; 0 when empty."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000


def normalize(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def make_message(seq: int, sender: str, rcpt: str, rng: random.Random) -> bytes:
    """A message with CRLF line ends, its number and a digest of its body in the header."""
    lines, size = [], rng.choice((512, 2048, 2048, 4096, 16384))
    while sum(map(len, lines)) < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        lines.append((b"." if rng.random() < 0.05 else b"") + line + b"\r\n")
    body = b"".join(lines)
    digest = hashlib.sha256(normalize(body)).hexdigest()[:32]
    head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: soak #{seq}\r\n"
            f"Message-ID: <{seq}.{secrets.token_hex(4)}@soak.example>\r\n"
            f"X-Soak-Seq: {seq}\r\nX-Soak-Digest: {digest}\r\n\r\n")
    return head.encode() + body


_SEQ = re.compile(rb"^X-Soak-Seq: (\d+)$", re.M)
_DIGEST = re.compile(rb"^X-Soak-Digest: ([0-9a-f]+)$", re.M)
_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


def check_message(data: bytes) -> int:
    """The message's number; ValueError when the number is missing or the body was altered."""
    head, sep, body = normalize(data).partition(b"\n\n")
    seq, digest = _SEQ.search(head), _DIGEST.search(head)
    if not (sep and seq and digest):
        raise ValueError(f"not a soak message: {data[:80]!r}")
    if hashlib.sha256(body).hexdigest()[:32] != digest.group(1).decode():
        raise ValueError(f"body of message {int(seq.group(1))} altered")
    return int(seq.group(1))


@dataclass
class Stats:
    """Counters shared by every client task (all on one event loop)."""

    lat: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_errors: list[str] = field(default_factory=list)
    sent: dict[int, str] = field(default_factory=dict)  # number → recipient, at 250
    sent_by: collections.Counter[str] = field(default_factory=collections.Counter)
    reads: dict[int, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    read_by: collections.Counter[str] = field(default_factory=collections.Counter)

    recent: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list))  # since the last progress line

    def record(self, proto: str, op: str, seconds: float) -> None:
        self.lat[proto][op].append(seconds)
        self.recent[proto].append(seconds)

    @contextlib.contextmanager
    def timed(self, proto: str, op: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.record(proto, op, time.perf_counter() - t0)

    def error(self, proto: str, what: str, exc: BaseException) -> None:
        self.errors[proto] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{proto} {what}: {exc!r}"[:300])

    def read(self, proto: str, user: str, seqs: list[int]) -> None:
        for seq in seqs:
            self.reads[seq].append(user)
        self.read_by[proto] += len(seqs)

    def all_latencies(self, proto: str) -> list[float]:
        return [x for v in self.lat[proto].values() for x in v]


def literal(line: bytes) -> bytes:
    """The first literal of a response line as collected by the IMAP client."""
    m = _LITERAL.search(line)
    if not m:
        raise UnexpectedReply(f"no literal in {line[:80]!r}")
    return line[m.end():m.end() + int(m.group(1))]


class UnexpectedReply(Exception):
    pass


class SmtpSession:
    """One SMTP connection: plain (25), STARTTLS + AUTH (587) or implicit TLS + AUTH (465)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 user: str) -> None:
        self.reader, self.writer, self.user = reader, writer, user

    async def command(self, line: bytes, want: bytes, replies: int = 1) -> None:
        self.writer.write(line)
        for _ in range(replies):
            reply = await read_reply(self.reader)
            if not reply.startswith(want):
                raise UnexpectedReply(f"{line[:40]!r} → {reply!r}")

    @classmethod
    async def open(cls, port: int, kind: str, ctx: ssl.SSLContext, user: str,
                   password: str) -> SmtpSession:
        implicit = kind == "submissions"
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx if implicit else None,
                                             server_hostname="localhost" if implicit else None)
        s = cls(r, w, user)
        if not (await read_reply(r)).startswith(b"220"):
            raise UnexpectedReply("no 220 greeting")
        await s.command(b"EHLO soak.example\r\n", b"250")
        if kind == "submission":
            await s.command(b"STARTTLS\r\n", b"220")
            await w.start_tls(ctx, server_hostname="localhost")
            await s.command(b"EHLO soak.example\r\n", b"250")
        if kind != "smtp":
            token = base64.b64encode(f"\0{user}\0{password}".encode())
            await s.command(b"AUTH PLAIN " + token + b"\r\n", b"235")
        return s

    async def send(self, sender: str, rcpt: str, message: bytes) -> None:
        """One pipelined transaction (PIPELINING); returns after the 250 to the final dot."""
        self.writer.write(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\n".encode())
        await self.command(b"DATA\r\n", b"", replies=0)
        for want in (b"250", b"250", b"354"):
            reply = await read_reply(self.reader)
            if not reply.startswith(want):
                raise UnexpectedReply(f"transaction: {reply!r}")
        stuffed = re.sub(rb"(?m)^\.", b"..", message)
        await self.command(stuffed + b".\r\n", b"250")

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command(b"QUIT\r\n", b"221"), 5)
        self.writer.close()


@dataclass
class Soak:
    args: argparse.Namespace
    ports: dict[str, int]
    ctx: ssl.SSLContext
    imap_users: list[str]
    pop3_users: list[str]
    password: str
    stats: Stats = field(default_factory=Stats)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    queues: dict[str, asyncio.Queue[tuple[int, str] | None]] = field(default_factory=dict)
    reading: bool = True  # readers poll while this is true
    offered: int = 0

    async def prime(self, logins: int = 8) -> None:
        """Concurrent logins on every daemon before the load, so that each of a daemon's worker
        threads has run an argon2 check: the memory glibc then keeps in those threads' malloc
        arenas (19 MiB each) is part of the start figure rather than counted as growth."""
        users = self.imap_users + self.pop3_users

        async def smtp(user: str) -> None:
            await (await SmtpSession.open(self.ports["submission"], "submission", self.ctx,
                                          user, self.password)).quit()

        async def imap(user: str) -> None:
            c = await self.imap_login(user)
            await c.cmd("LOGOUT")
            c.writer.close()

        jobs = [("smtp", smtp(users[i % len(users)])) for i in range(logins)]
        jobs += [("imap", imap(users[i % len(users)])) for i in range(logins)]
        jobs += [("pop3", asyncio.to_thread(self.pop3_session, u, False)) for u in users]
        results = await asyncio.gather(*(asyncio.wait_for(j, TIMEOUT) for _, j in jobs),
                                       return_exceptions=True)
        for (proto, _), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                self.stats.error(proto, "priming login", result)

    # -- SMTP ------------------------------------------------------------------------------
    async def smtp_worker(self, kind: str) -> None:
        queue, reconnect = self.queues[kind], SMTP_MIX[kind][1]
        session: SmtpSession | None = None
        while (job := await queue.get()) is not None:
            seq, rcpt = job
            try:
                if session is None:
                    user = self.rng.choice(self.imap_users + self.pop3_users)
                    with self.stats.timed("smtp", f"connect {kind}"):
                        session = await asyncio.wait_for(SmtpSession.open(
                            self.ports[kind], kind, self.ctx, user, self.password), TIMEOUT)
                # 587/465 may only send as the authenticated user; 25 is mail from outside
                sender = f"peer{seq % 50}@example.net" if kind == "smtp" else session.user
                message = make_message(seq, sender, rcpt, self.rng)
                with self.stats.timed("smtp", f"send {kind}"):
                    await asyncio.wait_for(session.send(sender, rcpt, message), TIMEOUT)
                self.stats.sent[seq] = rcpt
                self.stats.sent_by[kind] += 1
                if self.rng.random() < reconnect:
                    await session.quit()
                    session = None
            except Exception as exc:
                self.stats.error("smtp", f"{kind} #{seq}", exc)
                if session is not None:
                    session.writer.transport.abort()
                session = None
        if session is not None:
            await session.quit()

    async def dispatch(self, duration: float) -> None:
        """Offer one message every 1/rate seconds, open loop, to a random listener."""
        kinds = list(SMTP_MIX)
        weights = [SMTP_MIX[k][0] for k in kinds]
        users = self.imap_users + self.pop3_users
        t0, seq = time.monotonic(), 0
        while (due := t0 + seq / self.args.rate) < t0 + duration:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            seq += 1
            kind = self.rng.choices(kinds, weights)[0]
            self.queues[kind].put_nowait((seq, self.rng.choice(users)))
        self.offered = seq

    # -- IMAP ------------------------------------------------------------------------------
    async def imap_login(self, user: str) -> ImapClient:
        if self.rng.random() < 0.5:
            c = await ImapClient.connect(self.ports["imaps"], self.ctx)
        else:
            c = await ImapClient.connect(self.ports["imap"])
            await c.cmd("STARTTLS")
            await c.writer.start_tls(self.ctx, server_hostname="localhost")
        await c.cmd(f"LOGIN {user} {self.password}")
        await c.cmd("SELECT INBOX")
        return c

    async def imap_poll(self, c: ImapClient, user: str) -> None:
        st = self.stats
        with st.timed("imap", "noop"):
            await c.cmd("NOOP")
        with st.timed("imap", "search"):
            lines, _ = await c.cmd("UID SEARCH UNSEEN")
        uids = [int(u) for line in lines if line.startswith(b"* SEARCH")
                for u in line.split()[2:]][:100]
        if uids:
            uid_set = ",".join(map(str, uids))
            with st.timed("imap", "fetch"):
                lines, _ = await c.cmd(f"UID FETCH {uid_set} (UID BODY.PEEK[])")
            seqs = [check_message(literal(line)) for line in lines
                    if b" FETCH " in line and b"}\r\n" in line]
            if len(seqs) != len(uids):
                raise UnexpectedReply(f"FETCH of {len(uids)} UIDs returned {len(seqs)}")
            with st.timed("imap", "store"):
                await c.cmd(f"UID STORE {uid_set} +FLAGS.SILENT (\\Seen)")
            st.read("imap", user, seqs)
        if self.rng.random() < 0.2:
            lines, _ = await c.cmd("UID SEARCH SEEN")
            seen = [u.decode() for line in lines if line.startswith(b"* SEARCH")
                    for u in line.split()[2:]]
            if seen:
                with st.timed("imap", "expunge"):
                    await c.cmd(f"UID STORE {','.join(seen)} +FLAGS.SILENT (\\Deleted)")
                    await c.cmd("EXPUNGE")

    async def imap_reader(self, user: str) -> None:
        c: ImapClient | None = None
        polls = 0
        while self.reading:
            try:
                if c is None:
                    with self.stats.timed("imap", "connect+login+select"):
                        c = await asyncio.wait_for(self.imap_login(user), TIMEOUT)
                    polls = self.rng.randint(10, 40)
                await asyncio.wait_for(self.imap_poll(c, user), TIMEOUT)
                polls -= 1
                if polls <= 0:
                    with self.stats.timed("imap", "logout"):
                        await asyncio.wait_for(c.cmd("LOGOUT"), TIMEOUT)
                    c.writer.close()
                    c = None
            except Exception as exc:
                self.stats.error("imap", user, exc)
                if c is not None:
                    c.writer.transport.abort()
                c = None
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
        if c is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.cmd("LOGOUT"), 5)
            c.writer.close()

    # -- POP3 ------------------------------------------------------------------------------
    def pop3_session(self, user: str, stls: bool) -> tuple[list[int], list[tuple[str, float]]]:
        """One POP3 session in a thread: returns the numbers committed by QUIT and latencies."""
        lat: list[tuple[str, float]] = []
        t0 = time.perf_counter()
        port = self.ports["pop3" if stls else "pop3s"]
        if stls:
            c = Pop3Client(port)
            if not c.cmd("STLS").startswith(b"+OK"):
                raise UnexpectedReply("STLS refused")
            c.sock = self.ctx.wrap_socket(c.sock, server_hostname="localhost")
        else:
            c = Pop3Client.__new__(Pop3Client)
            c.sock = self.ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                          server_hostname="localhost")
            c.buf = b""
            if not c.line().startswith(b"+OK"):
                raise UnexpectedReply("no +OK greeting")
        try:
            for line, want in ((f"USER {user}", b"+OK"), (f"PASS {self.password}", b"+OK")):
                if not (reply := c.cmd(line)).startswith(want):
                    raise UnexpectedReply(f"{line.split()[0]} → {reply!r}")
            lat.append(("connect+login", time.perf_counter() - t0))
            t = time.perf_counter()
            stat = c.cmd("STAT")
            lat.append(("stat", time.perf_counter() - t))
            if not stat.startswith(b"+OK"):
                raise UnexpectedReply(f"STAT → {stat!r}")
            seqs = []
            for n in range(1, min(int(stat.split()[1]), 100) + 1):
                t = time.perf_counter()
                c.sock.sendall(b"RETR %d\r\n" % n)
                body = re.sub(rb"(?m)^\.", b"", c.multi())
                lat.append(("retr", time.perf_counter() - t))
                seqs.append(check_message(body))
                t = time.perf_counter()
                if not (reply := c.cmd(f"DELE {n}")).startswith(b"+OK"):
                    raise UnexpectedReply(f"DELE → {reply!r}")
                lat.append(("dele", time.perf_counter() - t))
            t = time.perf_counter()
            if not (reply := c.cmd("QUIT")).startswith(b"+OK"):
                raise UnexpectedReply(f"QUIT → {reply!r}")
            lat.append(("quit", time.perf_counter() - t))
            return seqs, lat
        finally:
            c.close()

    async def pop3_reader(self, user: str) -> None:
        while self.reading:
            try:
                seqs, lat = await asyncio.wait_for(asyncio.to_thread(
                    self.pop3_session, user, self.rng.random() < 0.5), TIMEOUT * 2)
                for op, seconds in lat:
                    self.stats.record("pop3", op, seconds)
                self.stats.read("pop3", user, seqs)
            except Exception as exc:
                self.stats.error("pop3", user, exc)
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))


# -- the stack ---------------------------------------------------------------------------------
def daemon_pids(up_pid: int) -> dict[str, int]:
    """{daemon name: pid} of the ``mailstack serve NAME`` children of ``mailstack up``."""
    out = {}
    for task in Path(f"/proc/{up_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"serve" in argv:
                    out[argv[argv.index(b"serve") + 1].decode()] = int(pid)
    return out


async def rss_mib(pids: dict[str, int], samples: int = 5) -> dict[str, float]:
    """Per daemon, the least of a few VmRSS samples 0.2 s apart (drops short-lived
    allocations)."""
    least = {name: proc_rss_mib(pid) for name, pid in pids.items()}
    for _ in range(samples - 1):
        await asyncio.sleep(0.2)
        least = {name: min(v, proc_rss_mib(pids[name])) for name, v in least.items()}
    return least


def write_config(tmp: Path) -> Path:
    ports = {section: {key: free_port() for key in keys} for section, keys in (
        ("mta", ("smtp", "submission", "submissions")), ("mda", ("lmtp",)),
        ("imap", ("imap", "imaps")), ("pop3", ("pop3", "pop3s")), ("autoconfig", ("http",)))}
    cfg = tmp / "soak.toml"
    cfg.write_text(
        f'[server]\nhostname = "mail.{DOMAIN}"\ndomains = ["{DOMAIN}"]\n'
        f'data_dir = "{tmp / "data"}"\nbind = ["127.0.0.1"]\nlog_level = "warning"\n'
        + "".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                  for section, keys in ports.items()))
    return cfg


def add_users(cfg: Path, users: list[str], password: str, env: dict[str, str]) -> None:
    """``mailstack user add`` for every user, run side by side."""
    procs = [subprocess.Popen([sys.executable, "-m", "mailstack", "user", "add", u,
                               "--password-stdin", "--config", str(cfg)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for u in users]
    for u, p in zip(users, procs, strict=True):
        _, err = p.communicate(password.encode() + b"\n", timeout=60)
        if p.returncode:
            raise RuntimeError(f"user add {u} failed: {err.decode()}")


def wait_listening(cfg_path: Path, up: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for lst in listeners(load(cfg_path, env={})):
        if lst.path:  # the mda's unix socket: its TCP port is checked as well
            continue
        while True:
            try:
                socket.create_connection(("127.0.0.1", lst.port), 0.5).close()
                break
            except OSError:
                if up.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{lst.daemon} {lst.name} on port {lst.port} did not "
                                       "answer") from None
                time.sleep(0.05)


# -- the run ------------------------------------------------------------------------------------
def progress(soak: Soak, elapsed: float, rss: dict[str, float]) -> str:
    """One line: totals so far, p99 since the last line, each daemon's VmRSS."""
    st = soak.stats
    p99 = [f"{proto} {pct(st.recent.pop(proto, []), 0.99):.0f}" for proto in PROTOCOLS]
    backlog = sum(q.qsize() for q in soak.queues.values())
    return (f"[{elapsed:5.0f}s] in {len(st.sent)} out {len(st.reads)} backlog {backlog} | errors "
            + " ".join(f"{p} {st.errors[p]}" for p in PROTOCOLS)
            + " | p99 ms " + " ".join(p99)
            + " | RSS MiB " + " ".join(f"{n} {v:.0f}" for n, v in rss.items()))


async def run(args: argparse.Namespace, cfg_path: Path, up: subprocess.Popen[bytes],
              users: list[str], password: str) -> bool:
    cfg = load(cfg_path, env={})
    ports = {lst.name: lst.port for lst in listeners(cfg) if lst.port}
    half = max(1, len(users) // 2)
    soak = Soak(args, ports, client_context(ensure_tls_files(cfg).ca), users[:half],
                users[half:], password)
    pids = daemon_pids(up.pid)
    await soak.prime()
    per_kind = {kind: 2 + int(args.rate * share / 10) for kind, (share, _) in SMTP_MIX.items()}
    soak.queues = {kind: asyncio.Queue() for kind in SMTP_MIX}
    workers = [asyncio.create_task(soak.smtp_worker(kind))
               for kind, n in per_kind.items() for _ in range(n)]
    readers = [asyncio.create_task(soak.imap_reader(u)) for u in soak.imap_users]
    readers += [asyncio.create_task(soak.pop3_reader(u)) for u in soak.pop3_users]
    t0 = time.monotonic()
    dispatcher = asyncio.create_task(soak.dispatch(args.duration))
    mem_start: dict[str, float] = {}
    samples: list[dict[str, float]] = []  # at each progress line after the warm-up
    in_at_start = 0
    next_report = t0 + args.progress
    while not dispatcher.done():
        await asyncio.wait({dispatcher}, timeout=0.5)
        now = time.monotonic()
        if not mem_start and now - t0 >= args.warmup:
            mem_start = await rss_mib(pids)
            in_at_start = len(soak.stats.sent)
            print(f"[{now - t0:5.0f}s] warm-up done; start memory taken")
        if now >= next_report:
            next_report = max(next_report + args.progress, now + 1)
            rss = {n: proc_rss_mib(p) for n, p in pids.items()}
            if mem_start:
                samples.append(rss)
            print(progress(soak, now - t0, rss), flush=True)
    mem_end = await rss_mib(pids)
    mem_start = mem_start or mem_end
    load_time = time.monotonic() - t0
    for kind, n in per_kind.items():
        for _ in range(n):
            soak.queues[kind].put_nowait(None)
    await asyncio.gather(*workers)
    sent_at_end = time.monotonic()
    print(f"[{sent_at_end - t0:5.0f}s] load stopped; draining (up to {args.drain:.0f} s)")
    drain_deadline = sent_at_end + args.drain
    while (set(soak.stats.sent) - set(soak.stats.reads)) and time.monotonic() < drain_deadline:
        await asyncio.sleep(0.25)
    drained = time.monotonic() - sent_at_end
    soak.reading = False
    await asyncio.gather(*readers)
    restarted = [n for n, p in daemon_pids(up.pid).items() if pids.get(n) != p]
    mem_mid = samples[len(samples) // 2] if samples else mem_end
    window = len(soak.stats.sent) - in_at_start
    return report(soak, load_time, drained, (mem_start, mem_mid, mem_end), window, restarted)


def report(soak: Soak, load_time: float, drained: float,
           mem: tuple[dict[str, float], dict[str, float], dict[str, float]], window: int,
           restarted: list[str]) -> bool:
    """Print the summary and the verdict; True on PASS."""
    mem_start, mem_mid, mem_end = mem
    st = soak.stats
    print(f"\nsummary: {load_time:.0f} s of load at {soak.args.rate:g} msg/s offered "
          f"({soak.offered} messages), drained in {drained:.1f} s")
    print(f"{'protocol':<10} {'operation':<28} {'count':>7} {'errors':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8}")
    for proto in PROTOCOLS:
        values = st.all_latencies(proto)
        print(f"{proto:<10} {'(all)':<28} {len(values):>7} {st.errors[proto]:>6} "
              f"{pct(values, 0.5):>8.1f} {pct(values, 0.99):>8.1f} {pct(values, 1):>8.1f}")
        for op, v in sorted(st.lat[proto].items()):
            print(f"{'':<10} {op:<28} {len(v):>7} {'':>6} {pct(v, 0.5):>8.1f} "
                  f"{pct(v, 0.99):>8.1f} {pct(v, 1):>8.1f}")
    sent, reads = st.sent, st.reads
    lost = sorted(set(sent) - set(reads))
    dups = sorted(s for s, who in reads.items() if len(who) > 1)
    wrong = sorted(s for s, who in reads.items() if s in sent and who[0] != sent[s])
    unacked = sorted(set(reads) - set(sent))
    print(f"messages in {len(sent)} (" + ", ".join(f"{k} {st.sent_by[k]}" for k in SMTP_MIX)
          + f"), out {sum(len(w) for w in reads.values())} ("
          + ", ".join(f"{p} {st.read_by[p]}" for p in ("imap", "pop3"))
          + f"); lost {len(lost)}, duplicated {len(dups)}, misdelivered {len(wrong)}, "
          f"read without a 250 {len(unacked)}")
    print(f"memory (VmRSS) over the {window} messages after the warm-up; halves: growth in "
          "each half of that window")
    print(f"{'daemon':<12} {'start MiB':>10} {'end MiB':>10} {'growth':>8} {'limit':>8} "
          f"{'halves':>13} {'KiB/msg':>8}")
    grown, steady = [], []
    for name in mem_end:
        end = mem_end[name]
        start, mid = mem_start.get(name, end), mem_mid.get(name, end)
        limit = max(MEM_FLOOR_MIB, MEM_RATIO * start)
        per_msg = (end - start) * 1024 / window if window else 0.0
        halves = f"{mid - start:+.1f}/{end - mid:+.1f}"
        print(f"{name:<12} {start:>10.1f} {end:>10.1f} {end - start:>+8.1f} {limit:>8.1f} "
              f"{halves:>13} {per_msg:>8.2f}")
        if end - start > limit:
            grown.append(f"{name} +{end - start:.1f} MiB")
        elif min(mid - start, end - mid) > 1.0:
            steady.append(name)
    if steady:
        print(f"note: {', '.join(steady)} grew by more than 1 MiB in each half of the window: "
              "within the limit, but steady growth rather than noise; a longer run tells")
    for line in st.first_errors:
        print(f"  error: {line}")
    reasons = []
    if sum(st.errors.values()):
        reasons.append("client errors: " + ", ".join(f"{p} {n}" for p, n in st.errors.items()))
    for label, items in (("lost", lost), ("duplicated", dups), ("misdelivered", wrong)):
        if items:
            reasons.append(f"{len(items)} {label} (e.g. #{', #'.join(map(str, items[:5]))})")
    if grown:
        reasons.append("memory growth over the limit: " + ", ".join(grown))
    if restarted:
        reasons.append("daemon restarted: " + ", ".join(restarted))
    if not sent:
        reasons.append("no message accepted")
    if reasons:
        print("FAIL: " + "; ".join(reasons))
        return False
    print(f"PASS: {len(sent)} messages in and out exactly once, no errors, memory growth within "
          f"max({MEM_FLOOR_MIB:.0f} MiB, {MEM_RATIO:.0%}) per daemon")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds of load")
    ap.add_argument("--rate", type=float, default=20, help="messages/s offered over SMTP")
    ap.add_argument("--users", type=int, default=8, help="accounts (half IMAP, half POP3)")
    ap.add_argument("--warmup", type=float, help="seconds of load before the start memory is "
                    "taken (default 10 %% of --duration, 2-60 s)")
    ap.add_argument("--drain", type=float, default=60, help="seconds to wait for the last "
                    "messages to be read after the load")
    ap.add_argument("--progress", type=float, default=10, help="seconds between progress lines")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.users < 2:
        ap.error("--users must be at least 2 (one IMAP and one POP3 reader)")
    if args.warmup is None:
        args.warmup = min(60.0, max(2.0, args.duration / 10))

    tmp = Path(tempfile.mkdtemp(prefix="mailstack-soak-"))
    cfg = write_config(tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MAILSTACK_CONFIG", None)
    password = secrets.token_urlsafe(12)
    users = [f"soak{i}@{DOMAIN}" for i in range(args.users)]
    add_users(cfg, users, password, env)
    log = (tmp / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "mailstack", "up", "--config", str(cfg)],
                          env=env, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    ok = False
    try:
        wait_listening(cfg, up)
        print(f"mailstack soak: {args.duration:g} s at {args.rate:g} msg/s, {args.users} users, "
              f"warm-up {args.warmup:g} s; stack in {tmp}", flush=True)
        ok = asyncio.run(run(args, cfg, up, users, password))
    finally:
        children = list(daemon_pids(up.pid).values()) if up.poll() is None else []
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        log.close()
        text = (tmp / "up.log").read_text(errors="replace")
        problems = [line for line in text.splitlines()
                    if "Traceback" in line or "ERROR" in line or "exited with code" in line]
        if problems:
            print(f"daemon log: {len(problems)} error line(s), e.g.:")
            for line in problems[:5]:
                print(f"  {line}")
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp} (up.log has the daemons' output)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
