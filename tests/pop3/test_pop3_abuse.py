"""Bad input against the real daemon over raw sockets: each case must get -ERR or be closed
without harm, and the server must keep serving."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import struct
import time

import pytest

from mailstack.config import Config
from mailstack.store.maildir import Maildir

from ..conftest import NON_LOOPBACK, NON_LOOPBACK_EXTRA, running
from .pop3_helpers import ALICE, PASSWORD, RawPOP3, make_alice


@pytest.fixture
def alice(cfg: Config) -> Maildir:
    return make_alice(cfg, messages=3)


def port(cfg: Config) -> int:
    return cfg.port("pop3", "pop3")


async def still_serving(cfg: Config) -> None:
    c = await RawPOP3.connect(port(cfg))
    assert (await c.login()).startswith("+OK Logged in")
    assert (await c.cmd("QUIT")).startswith("+OK")
    await c.close()


async def test_unknown_commands_and_wrong_state(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        for line in ("HELO x", "XYZZY", "", "RETR1", "\x00NOOP"):
            assert (await c.cmd(line)).startswith("-ERR"), line
        for line in ("STAT", "LIST", "RETR 1", "DELE 1", "TOP 1 1", "UIDL", "NOOP", "RSET"):
            assert (await c.cmd(line)) == \
                f"-ERR {line.split()[0]} is not valid in the AUTHORIZATION state"
        assert (await c.login()).startswith("+OK")
        for line in (f"USER {ALICE}", f"PASS {PASSWORD}", "STLS", "AUTH PLAIN"):
            assert "not valid in the TRANSACTION state" in await c.cmd(line), line
        assert (await c.cmd("NOOP")) == "+OK"
        await c.cmd("QUIT")
        await c.close()
    assert len(alice.scan()) == 3


async def test_bad_message_numbers(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        await c.login()
        for line in ("RETR 0", "RETR 4", "RETR 99999999", "RETR -1", "RETR one", "RETR 1 2",
                     "LIST 0", "UIDL 4", "TOP 4 1", "TOP 1 -1", "TOP 1", "DELE 0", "DELE 4",
                     "RETR 1234567890123", "LIST \u0663"):
            assert (await c.cmd(line)).startswith("-ERR"), line
        assert (await c.cmd("DELE 2")).startswith("+OK")
        for line in ("DELE 2", "RETR 2", "LIST 2", "UIDL 2", "TOP 2 0"):
            assert (await c.cmd(line)).startswith("-ERR"), line
        assert (await c.cmd("LIST")).startswith("+OK 2 messages")
        assert [x.split()[0] for x in await c.multi()] == [b"1", b"3"]
        await c.close()  # no QUIT: nothing deleted
    assert len(alice.scan()) == 3


async def test_overlong_lines(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        # 255 octets with CRLF is a command line; 256 is one too many (RFC 2449)
        assert (await c.cmd("X" * 253)) == "-ERR Unknown command"
        assert (await c.cmd("X" * 254)).startswith("-ERR Line too long")
        assert (await c.cmd("USER " + "a" * 100_000)).startswith("-ERR Line too long")
        assert (await c.login()).startswith("+OK Logged in")
        assert (await c.cmd("RETR " + "1" * 1000)).startswith("-ERR Line too long")
        assert (await c.cmd("STAT")).startswith("+OK 3 ")
        await c.cmd("QUIT")
        await c.close()


async def test_too_many_bad_commands_close_the_connection(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        await c.send("BOGUS\r\n" * 25)
        replies = [await c.line() for _ in range(21)]
        assert replies[-1] == "-ERR Too many bad commands, closing"
        assert await c.closed()
        await c.close()
        await still_serving(cfg)


async def test_wrong_passwords_growing_delay(config_factory) -> None:
    cfg = config_factory("[server]\nauth_failures_free = 0\nauth_max_delay = 5\n")
    make_alice(cfg, messages=3)
    async with running("pop3", cfg) as daemon:
        c = await RawPOP3.connect(port(cfg))
        delays = []
        for user, password in (("nobody@example.test", "x"), (ALICE, "wrong-1"),
                               (ALICE, "wrong-2")):
            t0 = time.monotonic()
            # an unknown user and a wrong password get the same answer
            assert (await c.login(user, password)) == "-ERR [AUTH] Authentication failed"
            delays.append(time.monotonic() - t0)
        # with no free failure the delays are 0.5 s, 1 s, 2 s (from this client address)
        assert delays[0] >= 0.45 and delays[1] >= 0.95 and delays[2] >= 1.95
        assert (await c.login()).startswith("+OK Logged in")  # right password still works
        await c.cmd("QUIT")
        await c.close()
        await daemon.wait_log("session end: user=alice@example.test ip=127.0.0.1 tls=no retr=0/0")
    log = daemon.log()
    assert "pop3 auth failed for 'alice@example.test'" in log
    assert "wrong-" not in log and PASSWORD not in log


async def test_stls_injection_is_discarded(config_factory, daemon_loop: str,
                                           client_ssl: ssl.SSLContext) -> None:
    cfg = config_factory(daemon_loop)
    make_alice(cfg, messages=3)
    async with running("pop3", cfg) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", port(cfg))
        assert (await reader.readline()).startswith(b"+OK")
        # the plaintext after STLS arrives in the same segment as STLS itself
        writer.write(f"STLS\r\nUSER {ALICE}\r\nPASS {PASSWORD}\r\nQUIT\r\n".encode())
        await writer.drain()
        assert await reader.readline() == b"+OK Begin TLS negotiation\r\n"
        await writer.start_tls(client_ssl, server_hostname="localhost")
        c = RawPOP3(reader, writer)
        # had the injected USER/PASS/QUIT been executed we would be logged in or closed
        assert (await c.cmd("STAT")).startswith("-ERR STAT is not valid in the AUTHORIZATION")
        assert (await c.cmd(f"PASS {PASSWORD}")) == "-ERR USER first"
        injected = len(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nQUIT\r\n")
        await daemon.wait_log(f"discarded {injected} octets pipelined after STLS")
        assert (await c.login()).startswith("+OK Logged in")
        await c.cmd("QUIT")
        await c.close()


async def _plaintext_refused_then_tls(cfg: Config, ip: str, client_ssl: ssl.SSLContext) -> None:
    c = await RawPOP3.connect(port(cfg), host=ip)
    assert (await c.cmd("CAPA")).startswith("+OK")
    caps = [x.decode() for x in await c.multi()]
    assert "STLS" in caps and "USER" not in caps and "SASL PLAIN" not in caps
    assert (await c.cmd(f"USER {ALICE}")).startswith("-ERR [AUTH]")
    assert (await c.cmd(f"PASS {PASSWORD}")).startswith("-ERR [AUTH]")
    assert (await c.cmd("AUTH PLAIN AGFAYgBj")).startswith("-ERR [AUTH]")
    assert await c.cmd("STLS") == "+OK Begin TLS negotiation"
    await c.writer.start_tls(client_ssl, server_hostname="localhost")
    assert (await c.login()).startswith("+OK Logged in")
    await c.cmd("QUIT")
    await c.close()
    # implicit TLS on the same address allows the login at once
    c = await RawPOP3.connect(cfg.port("pop3", "pop3s"), host=ip, ssl_context=client_ssl)
    assert (await c.login()).startswith("+OK Logged in")
    await c.close()


async def test_plaintext_login_refused_off_the_plaintext_networks(
        config_factory, daemon_loop: str, client_ssl: ssl.SSLContext) -> None:
    """127.0.0.2 outside [server] plaintext_login_networks stands in for a network interface
    (unprivileged, offline); 127.0.0.1 inside them still allows USER/PASS."""
    cfg = config_factory(NON_LOOPBACK_EXTRA + daemon_loop)
    make_alice(cfg, messages=1)
    async with running("pop3", cfg):
        await _plaintext_refused_then_tls(cfg, NON_LOOPBACK, client_ssl)
        c = await RawPOP3.connect(port(cfg))
        assert (await c.cmd("CAPA")).startswith("+OK")
        assert b"USER" in await c.multi()
        assert (await c.login()).startswith("+OK Logged in")
        await c.close()


async def test_plaintext_login_refused_on_a_real_interface(config_factory,
                                                           client_ssl: ssl.SSLContext) -> None:
    """With the default plaintext_login_networks, a real interface address refuses it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
            ip = s.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    if ip.startswith("127."):
        pytest.skip("no non-loopback IPv4 address on this host (the 127.0.0.2 variant covers "
                    "the behaviour)")
    cfg = config_factory(f'[server]\nbind = ["127.0.0.1", "{ip}"]\n')
    make_alice(cfg, messages=1)
    async with running("pop3", cfg):
        await _plaintext_refused_then_tls(cfg, ip, client_ssl)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, like a crashed client."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def login_when_unlocked(cfg: Config) -> RawPOP3:
    """The server notices a dropped client soon; until then the mailbox stays IN-USE."""
    for _ in range(100):
        c = await RawPOP3.connect(port(cfg))
        reply = await c.login()
        if reply.startswith("+OK"):
            return c
        assert reply.startswith("-ERR [IN-USE]")
        await c.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the mailbox stayed locked")


async def test_disconnect_mid_retr_deletes_nothing(config_factory, daemon_loop: str) -> None:
    cfg = config_factory(daemon_loop)
    alice = make_alice(cfg, messages=3)
    # 8 MB of dot-led lines, far more than the socket buffers hold
    alice.deliver(b"Subject: big\n\n" + (b"." + b"z" * 77 + b"\n") * 100_000)
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        await c.login()
        assert (await c.cmd("LIST")).startswith("+OK 4 messages")
        sizes = {int(n): int(size) for n, size in (x.split() for x in await c.multi())}
        big = max(sizes, key=sizes.__getitem__)  # numbering follows the store's scan order
        for n in sizes.keys() - {big}:
            assert (await c.cmd(f"DELE {n}")).startswith("+OK")
        await c.send(f"RETR {big}\r\n")
        assert (await c.line()) == f"+OK {sizes[big]} octets"
        # read part of the message, then the client dies
        await asyncio.wait_for(c.reader.readexactly(10_000), 10)
        _abort(c.writer)
        c2 = await login_when_unlocked(cfg)
        assert (await c2.cmd("STAT")).startswith("+OK 4 ")
        await c2.close()  # and a plain close before QUIT deletes nothing either
    assert len(alice.scan()) == 4


async def test_quit_without_line_end_then_eof_deletes_nothing(cfg: Config,
                                                              alice: Maildir) -> None:
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        await c.login()
        await c.cmd("DELE 1")
        await c.send("QUIT")  # no CRLF: half a command
        c.writer.write_eof()
        assert await c.closed()
        await c.close()
    assert len(alice.scan()) == 3


async def test_idle_timeout_closes_without_deleting(config_factory) -> None:
    cfg = config_factory('[pop3]\nidle_timeout = "2s"')
    box = make_alice(cfg, messages=2)
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        await c.login()
        await c.cmd("DELE 1")
        for _ in range(5):  # activity keeps the session open past the timeout
            await asyncio.sleep(0.6)
            assert await c.cmd("NOOP") == "+OK"
        t0 = time.monotonic()
        assert await c.closed(timeout=10)  # RFC 1939: closed without a response
        assert time.monotonic() - t0 >= 1.9
        await c.close()
        await still_serving(cfg)
    assert len(box.scan()) == 2


async def test_plaintext_on_the_tls_port(cfg: Config, alice: Maildir) -> None:
    async with running("pop3", cfg):
        reader, writer = await asyncio.open_connection("127.0.0.1", cfg.port("pop3", "pop3s"))
        writer.write(b"USER alice\r\nPASS x\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # handshake fails: closed, no +OK
        assert not data.startswith(b"+OK")
        writer.close()
        await still_serving(cfg)


async def test_login_delay(config_factory) -> None:
    cfg = config_factory('[pop3]\nlogin_delay = "30s"')
    make_alice(cfg)
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        assert (await c.cmd("CAPA")).startswith("+OK")
        assert b"LOGIN-DELAY 30" in await c.multi()
        assert (await c.login()).startswith("+OK Logged in")
        await c.cmd("QUIT")
        await c.close()
        c = await RawPOP3.connect(port(cfg))
        assert (await c.login()).startswith("-ERR [LOGIN-DELAY]")
        await c.close()


async def test_the_mailbox_lock_dies_with_the_daemon(cfg: Config, alice: Maildir) -> None:
    """docs/pop3.md: the kernel releases the session's flock when the daemon dies, so a killed
    daemon never leaves a mailbox IN-USE for its successor; nothing marked is deleted."""
    async with running("pop3", cfg, expect_exit=-signal.SIGKILL) as daemon:
        c = await RawPOP3.connect(port(cfg))
        assert (await c.login()).startswith("+OK Logged in")
        assert (await c.cmd("DELE 1")).startswith("+OK")
        other = await RawPOP3.connect(port(cfg))
        assert (await other.login()).startswith("-ERR [IN-USE]")  # the lock is held
        await other.close()
        os.kill(daemon.pid, signal.SIGKILL)
        assert await c.closed()
        await c.close()
    async with running("pop3", cfg):
        c = await RawPOP3.connect(port(cfg))
        assert (await c.login()).startswith("+OK Logged in")
        assert (await c.cmd("STAT")).startswith("+OK 3 ")
        await c.cmd("QUIT")
        await c.close()
    assert len(alice.scan()) == 3
