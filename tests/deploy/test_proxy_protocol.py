"""PROXY protocol (v1, v2) from trusted proxies, against the real mta, imap and pop3 daemons.

The tests connect from 127.0.0.1 (trusted: ``[server] proxy_networks``) or from 127.0.0.2
(not trusted) with raw sockets. The header's client address is the one the per-IP connection
limit counts, the header's destination the one ``plaintext_login_networks`` is checked against;
a malformed, missing or slow header from a trusted peer, and any header from another peer,
close the connection while the daemon keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import socket
import ssl
import struct
import time
from collections.abc import Iterator

import pytest

from mailstack.config import Config
from mailstack.runtime.proxyproto import V2_SIGNATURE
from mailstack.runtime.tls import client_context, ensure_tls_files

from ..conftest import add_user, running

GREETING = {"mta": b"220 ", "imap": b"* OK", "pop3": b"+OK"}
BUSY = {"mta": b"421 4.7.0", "imap": b"* BYE", "pop3": b"-ERR [SYS/TEMP]"}
LISTENER = {"mta": "smtp", "imap": "imap", "pop3": "pop3"}
TLS_LISTENER = {"mta": "submissions", "imap": "imaps", "pop3": "pop3s"}


def v1(client: str, dest: str = "192.0.2.1", dport: int = 143) -> bytes:
    return f"PROXY TCP4 {client} {dest} 40000 {dport}\r\n".encode()


def v2(client: str, dest: str = "192.0.2.1", dport: int = 993) -> bytes:
    block = socket.inet_aton(client) + socket.inet_aton(dest) + struct.pack("!HH", 40000, dport)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block)) + block


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    _OPEN.append(s)
    s.settimeout(15)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def first_line(s: socket.socket) -> bytes:
    """The next line (read an octet at a time: nothing after it is consumed)."""
    buf = b""
    while not buf.endswith(b"\n"):
        piece = s.recv(1)
        if not piece:
            break
        buf += piece
    return buf


def closed_without_reply(s: socket.socket) -> bool:
    """True when the daemon closes the connection having sent nothing."""
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True


def proxy_config(config_factory, extra: str = "") -> Config:
    cfg = config_factory('[server]\nproxy_networks = ["127.0.0.1/32"]\n'
                         'max_connections_per_ip = 2\ntls_handshake_timeout = "2s"\n' + extra)
    add_user(cfg, "alice@example.test")
    return cfg


@pytest.mark.parametrize("daemon", ["mta", "imap", "pop3"])
async def test_limits_count_the_client_of_the_header(config_factory, daemon_loop: str,
                                                     daemon: str) -> None:
    cfg = proxy_config(config_factory, daemon_loop)
    port = cfg.port(daemon, LISTENER[daemon])
    async with running(daemon, cfg) as proc:
        held = []
        for header in (v1("203.0.113.7"), v2("203.0.113.7")):  # two from one client
            s = connect(port)
            s.sendall(header)
            assert first_line(s).startswith(GREETING[daemon])
            held.append(s)
        s = connect(port)
        s.sendall(v1("203.0.113.7"))  # its third: over max_connections_per_ip
        assert first_line(s).startswith(BUSY[daemon])
        await proc.wait_log("refused 203.0.113.7: too many connections (2 from it")
        other = connect(port)  # another client behind the same proxy is served
        other.sendall(v1("198.51.100.9"))
        assert first_line(other).startswith(GREETING[daemon])
        for s in (*held, other):
            s.close()


@pytest.mark.parametrize("daemon", ["mta", "imap", "pop3"])
async def test_implicit_tls_behind_a_proxy(config_factory, daemon: str) -> None:
    """A v2 header and the ClientHello in one segment (as a proxy forwards them): the bytes
    after the header reach the TLS layer; the limit counts the header's client."""
    cfg = proxy_config(config_factory)
    port = cfg.port(daemon, TLS_LISTENER[daemon])
    ctx = client_context(ensure_tls_files(cfg).ca)
    async with running(daemon, cfg) as proc:
        def tls_greeting(client: str) -> bytes:
            s = connect(port)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
            first = v2(client)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    s.sendall(first + outgoing.read())
                    first = b""
                    data = s.recv(65536)
                    if not data:
                        s.close()
                        return b""
                    incoming.write(data)
            s.sendall(outgoing.read())
            while True:
                try:
                    line = tls.read(4096)
                    break
                except ssl.SSLWantReadError:
                    incoming.write(s.recv(65536))
            held.append(s)
            return line
        held: list[socket.socket] = []
        assert tls_greeting("203.0.113.8").startswith(GREETING[daemon])
        assert tls_greeting("203.0.113.8").startswith(GREETING[daemon])
        assert tls_greeting("203.0.113.8") == b""  # its third: refused (no plaintext reply)
        await proc.wait_log("refused 203.0.113.8: too many connections (2 from it")
        assert tls_greeting("203.0.113.9").startswith(GREETING[daemon])
        for s in held:
            s.close()


async def test_plaintext_login_follows_the_header_destination(config_factory) -> None:
    """The connection arrives on 127.0.0.1 (a plaintext-login network); the header says the
    client connected to 192.0.2.1, so LOGIN waits for TLS — and the other way round."""
    cfg = proxy_config(config_factory)
    async with running("imap", cfg):
        s = connect(cfg.port("imap", "imap"))
        s.sendall(v1("203.0.113.7", "192.0.2.1") + b"a CAPABILITY\r\n")  # pipelined behind
        assert first_line(s).startswith(b"* OK")
        assert b"LOGINDISABLED" in first_line(s)
        s.close()
        s = connect(cfg.port("imap", "imap"))
        s.sendall(v1("203.0.113.7", "127.0.0.1") + b"a CAPABILITY\r\n")
        assert first_line(s).startswith(b"* OK")
        caps = first_line(s)
        assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps
        s.close()
    async with running("pop3", cfg):
        s = connect(cfg.port("pop3", "pop3"))
        s.sendall(v2("203.0.113.7", "192.0.2.1", 110))
        assert first_line(s).startswith(b"+OK")
        s.sendall(b"USER alice@example.test\r\n")
        assert first_line(s).startswith(b"-ERR")
        s.close()


async def test_failed_logins_are_logged_and_throttled_under_the_client(config_factory) -> None:
    cfg = proxy_config(config_factory)
    async with running("imap", cfg) as proc:
        s = connect(cfg.port("imap", "imap"))
        s.sendall(v1("203.0.113.66", "127.0.0.1"))
        assert first_line(s).startswith(b"* OK")
        s.sendall(b"a LOGIN alice@example.test wrong\r\n")
        assert first_line(s).startswith(b"a NO")
        s.close()
        log = await proc.wait_log("203.0.113.66")
        assert "127.0.0.1" not in log.split("203.0.113.66")[0].splitlines()[-1]


@pytest.mark.parametrize("daemon", ["mta", "imap", "pop3"])
async def test_bad_missing_slow_or_untrusted_headers_close(config_factory, daemon: str) -> None:
    cfg = proxy_config(config_factory, '[server]\nbind = ["127.0.0.1"]\n')
    port = cfg.port(daemon, LISTENER[daemon])
    async with running(daemon, cfg) as proc:
        s = connect(port)  # malformed: closed at once, nothing said
        s.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n")
        assert closed_without_reply(s)
        s = connect(port)  # the client's own first command instead of a header
        s.sendall(b"EHLO x\r\n" if daemon == "mta" else b"a CAPABILITY\r\n")
        assert closed_without_reply(s)
        t0 = time.monotonic()
        s = connect(port)  # half a header, then silence: closed after the time limit
        s.sendall(b"PROXY TCP4 203.0.1")
        assert closed_without_reply(s)
        assert time.monotonic() - t0 >= 1.5, "closed before the time limit"
        await proc.wait_log("no complete PROXY header within 2s")
        s = connect(port)  # a peer outside proxy_networks: served directly ...
        s.close()
        s = connect(port, source="127.0.0.2")
        assert first_line(s).startswith(GREETING[daemon])
        s.sendall(v1("203.0.113.7"))  # ... and a header from it closes the connection
        assert closed_without_reply(s)
        await proc.wait_log("PROXY header from a peer outside the trusted proxy networks")
        s = connect(port)  # the daemon still serves
        s.sendall(v1("203.0.113.7"))
        assert first_line(s).startswith(GREETING[daemon])
        s.close()
        assert "203.0.1" not in proc.log().split("no complete PROXY header")[0][-200:]


async def test_proxy_listeners_limits_the_listeners(config_factory) -> None:
    cfg = proxy_config(config_factory, '[server]\nproxy_listeners = ["imaps"]\n')
    async with running("imap", cfg):
        s = connect(cfg.port("imap", "imap"))  # not a proxied listener: greeted directly
        assert first_line(s).startswith(b"* OK")
        s.close()


async def test_connections_waiting_for_their_header_count_as_the_proxys(config_factory) -> None:
    """A proxy cannot open unlimited connections that never send a header: until the header
    names the client, each counts under the proxy's own address."""
    cfg = proxy_config(config_factory)
    port = cfg.port("imap", "imap")
    async with running("imap", cfg) as proc:
        waiting = [connect(port), connect(port)]  # the proxy's two: no header yet
        third = connect(port)
        assert closed_without_reply(third)
        await proc.wait_log("refused 127.0.0.1: too many connections (2 from it")
        waiting[0].sendall(v1("203.0.113.7"))  # now counted as 203.0.113.7's
        assert first_line(waiting[0]).startswith(b"* OK")
        fourth = connect(port)  # the proxy's slot was freed
        fourth.sendall(v1("203.0.113.8"))
        assert first_line(fourth).startswith(b"* OK")


async def test_autoconfig_behind_a_proxy(config_factory) -> None:
    cfg = proxy_config(config_factory)
    port = cfg.port("autoconfig", "http")
    async with running("autoconfig", cfg) as proc:
        s = connect(port)
        s.sendall(v2("203.0.113.5", dport=80) + b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
                  b"Connection: close\r\n\r\n")
        assert first_line(s).startswith(b"HTTP/1.1 200")
        s = connect(port)  # the access log names the header's client, not the proxy
        s.sendall(v1("203.0.113.6") + b"GET /.well-known/autoconfig/mail/config-v1.1.xml "
                  b"HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert first_line(s).startswith(b"HTTP/1.1 200")
        await proc.wait_log("203.0.113.6 http GET /.well-known/autoconfig/mail/config-v1.1.xml")
        s = connect(port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")  # no header: closed
        assert closed_without_reply(s)
        await proc.wait_log("PROXY header refused: no PROXY protocol signature")


class ProxiedSMTP(smtplib.SMTP):
    """smtplib as a client behind a proxy: the connection starts with the proxy's header."""

    header = b""

    def _get_socket(self, host, port, timeout):  # type: ignore[no-untyped-def]
        s = super()._get_socket(host, port, timeout)
        s.sendall(self.header)
        return s


class ProxiedIMAP(imaplib.IMAP4):
    header = b""

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        s = super()._create_socket(timeout)
        s.sendall(self.header)
        return s


async def test_real_clients_with_starttls_keep_the_client_address(config_factory) -> None:
    """smtplib and imaplib behind a proxy: after STARTTLS the failed logins are still logged
    and counted under the header's client, not the proxy."""
    cfg = proxy_config(config_factory)
    ctx = client_context(ensure_tls_files(cfg).ca)
    async with running("mta", cfg) as proc:
        def smtp() -> None:
            ProxiedSMTP.header = v1("203.0.113.21", dport=587)
            with ProxiedSMTP("127.0.0.1", cfg.port("mta", "submission"), timeout=15) as c:
                c.starttls(context=ctx)
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    c.login("alice@example.test", "wrong")
        await asyncio.to_thread(smtp)
        log = await proc.wait_log("auth failed for 'alice@example.test' from 203.0.113.21")
        assert "from 127.0.0.1" not in log
    async with running("imap", cfg) as proc:
        def imap() -> None:
            ProxiedIMAP.header = v2("203.0.113.22", dport=143)
            c = ProxiedIMAP("127.0.0.1", cfg.port("imap", "imap"), timeout=15)
            c.starttls(ssl_context=ctx)
            with pytest.raises(imaplib.IMAP4.error):
                c.login("alice@example.test", "wrong")
            c.logout()
        await asyncio.to_thread(imap)
        log = await proc.wait_log("auth failed for 'alice@example.test' from 203.0.113.22")
        assert "from 127.0.0.1" not in log
