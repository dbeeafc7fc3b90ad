"""Memory stays bounded under abusive input: an endless command line, an endless DATA and an
announced 2 GB literal, against the real daemons started as subprocesses.

Each case streams ``STREAM`` octets (100 MiB) as fast as the socket takes them while a thread
samples the daemon's VmRSS from /proc; the peak may exceed the RSS measured just before by at
most ``BOUND`` (48 MiB). A daemon that kept the stream would grow by at least the full 100 MiB
(more, counting copies), while the legitimate cost is a few 64 KiB-1 MiB read buffers plus
allocator slack (see the figures printed under ``pytest -s``); 48 MiB leaves room for that and
still catches keeping even half of the stream.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailstack.config import Config, load
from mailstack.runtime.tls import ensure_tls_files

from ..conftest import add_user, write_config
from ..e2e.helpers import Proc, maildir_files, wait_port

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
STREAM = 100 * MiB
BOUND = 48 * MiB
SIZE_LIMIT = 1 * MiB  # [mta] max_message_size
ALICE, PASSWORD = "alice@example.test", "alice-pw"
LINE_CHUNK = b"x" * MiB  # no LF anywhere: one endless line
DATA_CHUNK = (b"y" * 76 + b"\r\n") * (MiB // 78)  # well-formed text lines, never a lone dot


@dataclass
class Stack:
    cfg: Config
    procs: dict[str, Proc]
    ca: Path

    def pid(self, daemon: str) -> int:
        return self.procs[daemon].popen.pid

    def port(self, daemon: str, listener: str) -> int:
        return self.cfg.port(daemon, listener)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("membound")
    path = write_config(tmp, f"[mta]\nmax_message_size = {SIZE_LIMIT}\n")
    cfg = load(path, env={})
    add_user(cfg, ALICE, PASSWORD)
    ca = ensure_tls_files(cfg).ca
    procs = {name: Proc("serve", name, "--config", str(path))
             for name in ("mda", "mta", "imap", "pop3")}
    try:
        for name, listener in (("mda", "lmtp"), ("mta", "smtp"), ("mta", "submission"),
                               ("imap", "imap"), ("pop3", "pop3")):
            wait_port(cfg.port(name, listener))
        yield Stack(cfg, procs, ca)
    finally:
        for p in procs.values():
            p.terminate()


# -- measuring ---------------------------------------------------------------------------------
def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Meter:
    before: int = 0
    peak: int = 0
    after: int = 0

    @property
    def growth(self) -> int:
        return self.peak - self.before


@contextlib.contextmanager
def measure(stack: Stack, daemon: str, label: str) -> Iterator[Meter]:
    """Sample the daemon's RSS every 5 ms while the block runs; print the figures."""
    pid = stack.pid(daemon)
    m = Meter(rss(pid))
    m.peak = m.before
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                m.peak = max(m.peak, rss(pid))
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield m
    finally:
        done.set()
        sampler.join()
    m.after = rss(pid)
    print(f"\n{label}: {daemon} RSS before {m.before / MiB:.1f} MiB, peak {m.peak / MiB:.1f} "
          f"MiB, after {m.after / MiB:.1f} MiB (growth {m.growth / MiB:+.1f} MiB)")
    assert stack.procs[daemon].popen.poll() is None, stack.procs[daemon].output[-2000:]


@contextlib.contextmanager
def bounded(stack: Stack, daemon: str, label: str) -> Iterator[None]:
    """Assert the daemon's peak RSS during the block grew by less than BOUND."""
    with measure(stack, daemon, label) as m:
        yield
    assert m.growth < BOUND, f"{label}: {daemon} grew by {m.growth / MiB:.1f} MiB"


# -- raw client --------------------------------------------------------------------------------
class Raw:
    """A blocking socket client that can stream without reading replies."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), 10)
        self.buf = b""

    def line(self) -> bytes:
        """One reply line with its CRLF; b"" once the server has closed."""
        while b"\n" not in self.buf:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                line, self.buf = self.buf, b""
                return line
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, data: bytes) -> bytes:
        self.send(data + b"\r\n")
        return self.line()

    def smtp_reply(self) -> bytes:
        """The last line of a (multi-line) SMTP reply."""
        while True:
            line = self.line()
            if line[3:4] != b"-":
                return line

    def stream(self, total: int, chunk: bytes,
               midway: Callable[[], None] | None = None) -> int:
        """Send ``total`` octets of ``chunk`` unless the server closes first; octets sent."""
        sent = 0
        try:
            while sent < total:
                self.sock.sendall(chunk)
                sent += len(chunk)
                if midway is not None and sent >= total // 2:
                    midway()
                    midway = None
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def smtp_session(port: int) -> None:
    """A legitimate SMTP client gets through a transaction up to RCPT (no wall-clock bound: the
    abuse runs meanwhile on a machine that may be busy; each reply has a 30 s ceiling)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        assert s.ehlo("legit.example")[0] == 250
        assert s.mail("bob@example.org")[0] == 250
        assert s.rcpt(ALICE)[0] == 250
        assert s.rset()[0] == 250


def queue_files(stack: Stack) -> set[str]:
    q = stack.cfg.data_dir / "queue"
    return {p.name for p in q.iterdir()} if q.exists() else set()


# -- SMTP and LMTP -----------------------------------------------------------------------------
@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_smtp_endless_command_line(stack: Stack, listener: str) -> None:
    port = stack.port("mta", listener)
    c = Raw(port)
    assert c.smtp_reply().startswith(b"220")
    if listener == "submission":  # 587: the endless line comes after STARTTLS
        c.send(b"EHLO abuser.example\r\n")
        assert c.smtp_reply().startswith(b"250")
        assert c.cmd(b"STARTTLS").startswith(b"220")
        ctx = ssl.create_default_context(cafile=str(stack.ca))
        c.sock = ctx.wrap_socket(c.sock, server_hostname=stack.cfg.server.hostname)
    legit = stack.port("mta", "smtp")  # 587 would want STARTTLS and AUTH first
    with bounded(stack, "mta", f"SMTP {listener} endless line"):
        sent = c.stream(STREAM, LINE_CHUNK, midway=lambda: smtp_session(legit))
        reply = c.cmd(b"") if sent >= STREAM else b""  # answered at the CRLF, or closed
        assert reply == b"" or reply.startswith(b"500 5.5.2"), reply
    if reply:
        c.send(b"NOOP\r\n")
        assert c.smtp_reply().startswith(b"250")
    c.close()
    smtp_session(legit)


def open_data(c: Raw, greeting: bytes) -> None:
    """EHLO/LHLO, MAIL, RCPT and DATA for alice, each accepted."""
    c.send(greeting + b"\r\n")
    assert c.smtp_reply().startswith(b"250")
    assert c.cmd(b"MAIL FROM:<bob@example.org>").startswith(b"250")
    assert c.cmd(f"RCPT TO:<{ALICE}>".encode()).startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")


def test_smtp_endless_data(stack: Stack) -> None:
    queued = queue_files(stack)
    c = Raw(stack.port("mta", "smtp"))
    assert c.smtp_reply().startswith(b"220")
    open_data(c, b"EHLO abuser.example")
    with bounded(stack, "mta", "SMTP endless DATA"):
        sent = c.stream(STREAM, DATA_CHUNK, midway=lambda: smtp_session(stack.port("mta", "smtp")))
        assert sent >= STREAM, "the mta closed the connection mid-DATA"
        reply = c.cmd(b".")
    assert reply.startswith(b"552 5.3.4"), reply
    assert c.cmd(b"NOOP").startswith(b"250")  # the session goes on
    c.close()
    time.sleep(0.3)
    assert queue_files(stack) == queued, "the oversized message was queued"
    assert not maildir_files(stack.cfg.data_dir, ALICE)


def test_lmtp_endless_line_and_data(stack: Stack) -> None:
    port = stack.port("mda", "lmtp")
    c = Raw(port)
    assert c.smtp_reply().startswith(b"220")
    with bounded(stack, "mda", "LMTP endless line"):
        assert c.stream(STREAM, LINE_CHUNK) >= STREAM
        assert c.cmd(b"").startswith(b"500 5.5.2")
    open_data(c, b"LHLO mta.example")
    with bounded(stack, "mda", "LMTP endless DATA"):
        assert c.stream(STREAM, DATA_CHUNK) >= STREAM
        reply = c.cmd(b".")
    assert reply.startswith(b"552 5.3.4"), reply
    c.close()
    assert not maildir_files(stack.cfg.data_dir, ALICE)


# -- IMAP --------------------------------------------------------------------------------------
def imap_connect(stack: Stack, login: bool) -> Raw:
    c = Raw(stack.port("imap", "imap"))
    assert c.line().startswith(b"* OK")
    if login:
        reply = c.cmd(f"L LOGIN {ALICE} {PASSWORD}".encode())
        assert reply.startswith(b"L OK"), reply
    return c


def imap_still_serves(c: Raw) -> None:
    assert c.cmd(b"Z NOOP").startswith(b"Z OK")


@pytest.mark.parametrize("login", [False, True], ids=["before-login", "after-login"])
def test_imap_endless_line(stack: Stack, login: bool) -> None:
    c = imap_connect(stack, login)
    c.send(b"A1 NOOP ")
    with bounded(stack, "imap", f"IMAP endless line {'after' if login else 'before'} login"):
        assert c.stream(STREAM, LINE_CHUNK) >= STREAM
        assert c.cmd(b"").startswith(b"A1 BAD line too long")  # the tag from the line's start
    imap_still_serves(c)
    c.close()


@pytest.mark.parametrize("command", [b"A1 APPEND INBOX {2147483648}",
                                     b"A1 LOGIN {2147483648}"], ids=["APPEND", "LOGIN"])
def test_imap_2gb_synchronising_literal(stack: Stack, command: bytes) -> None:
    c = imap_connect(stack, login=b"APPEND" in command)
    reply = c.cmd(command)
    assert reply.startswith(b"A1 BAD [TOOBIG]"), reply  # and no "+" continuation before it
    with bounded(stack, "imap", f"IMAP {command.decode()} then 100 MiB"):
        assert c.stream(STREAM, LINE_CHUNK) >= STREAM  # a client that sends it anyway
        # a line without a tag: nobody can be waiting for an answer to it, so BYE and close
        assert c.cmd(b"").startswith(b"* BYE line too long")
        assert c.line() == b""
    c.close()
    c = imap_connect(stack, login=True)
    imap_still_serves(c)
    c.close()
    assert not maildir_files(stack.cfg.data_dir, ALICE)


def test_imap_2gb_non_synchronising_literal(stack: Stack) -> None:
    c = imap_connect(stack, login=True)
    with bounded(stack, "imap", "IMAP APPEND {2147483648+}"):
        c.send(b"A1 APPEND INBOX {2147483648+}\r\n" + LINE_CHUNK)
        replies = [c.line() for _ in range(3)]
        assert replies[0].startswith(b"A1 BAD [TOOBIG]"), replies
        assert replies[1].startswith(b"* BYE"), replies
        assert replies[2] == b"", replies  # closed: the literal's bytes are not read
        sent = c.stream(STREAM, LINE_CHUNK)
    assert sent < STREAM, "the server kept reading a refused non-synchronising literal"
    c.close()
    assert not maildir_files(stack.cfg.data_dir, ALICE)


# -- POP3 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("login", [False, True], ids=["before-login", "after-login"])
def test_pop3_endless_line(stack: Stack, login: bool) -> None:
    c = Raw(stack.port("pop3", "pop3"))
    assert c.line().startswith(b"+OK")
    if login:
        assert c.cmd(f"USER {ALICE}".encode()).startswith(b"+OK")
        assert c.cmd(f"PASS {PASSWORD}".encode()).startswith(b"+OK")
    c.send(b"USER " if not login else b"NOOP ")
    with bounded(stack, "pop3", f"POP3 endless line {'after' if login else 'before'} login"):
        assert c.stream(STREAM, LINE_CHUNK) >= STREAM
        assert c.cmd(b"").startswith(b"-ERR Line too long")
    assert c.cmd(b"STAT" if login else b"CAPA").startswith(b"+OK")
    c.close()


# -- the meter itself --------------------------------------------------------------------------
def test_meter_sees_a_literal_the_server_does_buffer(stack: Stack) -> None:
    """Control: a legitimate 40 MiB APPEND literal (under max_literal) is held in memory while
    it is read, and the sampler sees it, so the bounds above are not vacuous. It costs about
    twice its size (the command buffer, then the message; it is converted and written in
    pieces): 3.4 times before the literal was read in pieces and stored from a view."""
    add_user(stack.cfg, "carol@example.test", PASSWORD)
    c = Raw(stack.port("imap", "imap"))
    assert c.line().startswith(b"* OK")
    assert c.cmd(f"L LOGIN carol@example.test {PASSWORD}".encode()).startswith(b"L OK")
    size = 40 * MiB
    assert c.cmd(b"A1 APPEND INBOX {%d}" % size).startswith(b"+")
    with measure(stack, "imap", "control: a legitimate 40 MiB literal") as m:
        c.stream(size, LINE_CHUNK)
        assert c.cmd(b"").startswith(b"A1 OK"), "APPEND of the control message failed"
    assert size <= m.growth <= 2.5 * size, m.growth / MiB
    c.close()
