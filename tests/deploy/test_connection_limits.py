"""Connection limits per client address on every daemon: the next connection gets the
protocol's "busy" answer, the others keep working, and a freed slot is usable again. TLS
handshakes in progress count, and stalled ones time out."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailstack.config import Config, load
from mailstack.runtime.tls import client_context, ensure_tls_files

from ..conftest import add_user, running, write_config
from ..e2e.helpers import cli_env, proc


def mailstack_python(code: str) -> str:
    """Run ``code`` with the interpreter and environment the daemons get."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env(), check=True, timeout=60).stdout

BUSY = {
    ("mta", "smtp"): b"421 4.7.0",
    ("mda", "lmtp"): b"421 4.7.0",
    ("imap", "imap"): b"* BYE [UNAVAILABLE]",
    ("pop3", "pop3"): b"-ERR [SYS/TEMP]",
    ("autoconfig", "http"): b"HTTP/1.1 503",
}
GREETING = {"mta": b"220", "mda": b"220", "imap": b"* OK", "pop3": b"+OK", "autoconfig": b""}


async def _connect_when_free(port: int, daemon: str, timeout: float = 20.0
                             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect until the daemon has noticed a freed slot: a refusal (its busy answer) means
    "not yet"; anything but the greeting or a busy answer fails at once."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if not GREETING[daemon]:  # http: a request gets 503 or a real answer
            w.write(b"GET /ca.pem HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first = await asyncio.wait_for(r.readline(), 10)
        if not first.startswith(BUSY[(daemon, _listener(daemon))]):
            assert first.startswith(GREETING[daemon] or b"HTTP/1.1 200"), first
            return r, w
        w.close()
        assert asyncio.get_running_loop().time() < deadline, "the freed slot never came back"
        await asyncio.sleep(0.05)


def _listener(daemon: str) -> str:
    return next(listener for d, listener in BUSY if d == daemon)


@pytest.mark.parametrize(("daemon", "listener"), list(BUSY))
async def test_per_ip_limit(config_factory, daemon_loop: str, daemon: str,
                            listener: str) -> None:
    """On both event loops: uvloop's transports are no asyncio.WriteTransport, and the busy
    answer used to be dropped there (a silent close) while asyncio sent it."""
    cfg: Config = config_factory("[server]\nmax_connections_per_ip = 3\n" + daemon_loop)
    add_user(cfg, "alice@example.test")
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg) as proc:
        held = []
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            if GREETING[daemon]:
                assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
            held.append((r, w))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(r.read(), 5)
        assert refused.startswith(BUSY[(daemon, listener)]), refused
        await proc.wait_log("too many connections")
        held.pop()[1].close()
        r, w = await _connect_when_free(port, daemon)
        w.close()
        for _, hw in held:
            hw.close()


TLS_LISTENERS = [("mta", "submissions"), ("imap", "imaps"), ("pop3", "pop3s")]


async def _tls_greeting(port: int, ctx: ssl.SSLContext) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                         server_hostname="localhost")
    try:
        return await asyncio.wait_for(r.readline(), 10)
    finally:
        w.close()


async def _until_tls(port: int, ctx: ssl.SSLContext, *, refused: bool,
                     timeout: float = 30.0) -> bytes:
    """Try TLS connections until one is refused (``refused``) or gets a greeting (not
    ``refused``): a condition to wait for, not a fixed sleep. Returns the greeting."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            greeting = await _tls_greeting(port, ctx)
        except (ssl.SSLError, ConnectionError):
            if refused:
                return b""
        else:
            if not refused:
                return greeting
        assert asyncio.get_running_loop().time() < deadline, \
            f"no {'refusal' if refused else 'greeting'} in {timeout:g} s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("daemon", "listener"), TLS_LISTENERS)
async def test_tls_handshakes_in_progress_count(config_factory, daemon: str,
                                                listener: str) -> None:
    """Connections that never finish their handshake take slots: the next client is refused
    at once (before any TLS work), and a freed slot serves again."""
    cfg: Config = config_factory('[server]\nmax_connections_per_ip = 3\n'
                                 'tls_handshake_timeout = "60s"\n')
    add_user(cfg, "alice@example.test")
    ctx = client_context(ensure_tls_files(cfg).ca)
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg):
        assert (await _tls_greeting(port, ctx)).startswith(GREETING[daemon])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await _until_tls(port, ctx, refused=True)  # once the server has accepted all three
        r, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r.read(), 20) == b"", "closed without a handshake"
        held.pop()[1].close()
        greeting = await _until_tls(port, ctx, refused=False)  # once it noticed the close
        assert greeting.startswith(GREETING[daemon]), greeting
        for _, w in held:
            w.close()


@pytest.mark.parametrize(("daemon", "listener"), TLS_LISTENERS)
async def test_stalled_tls_handshakes_time_out_and_free_their_slot(
        config_factory, daemon: str, listener: str) -> None:
    cfg: Config = config_factory('[server]\nmax_connections_per_ip = 2\n'
                                 'tls_handshake_timeout = "0.5s"\n')
    add_user(cfg, "alice@example.test")
    ctx = client_context(ensure_tls_files(cfg).ca)
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for r, w in held:  # a silent client: no ClientHello, ever
            assert await asyncio.wait_for(r.read(), 20) == b""
            w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01\x02\x00")  # a ClientHello header, and then nothing
        assert await asyncio.wait_for(r.read(), 20) == b""
        w.close()
        for _ in range(3):  # every slot was given back
            assert (await _tls_greeting(port, ctx)).startswith(GREETING[daemon])


@pytest.mark.parametrize(("daemon", "listener"), list(BUSY))
def test_busy_reply_is_sent_by_the_production_process(tmp_path: Path, daemon: str,
                                                      listener: str) -> None:
    """``python -m mailstack serve`` runs under uvloop, whose transports are not
    ``asyncio.WriteTransport``s: the busy reply must still be written."""
    pytest.importorskip("uvloop")
    config = write_config(tmp_path, "[server]\nmax_connections_per_ip = 2\n")
    cfg = load(config, env={})
    add_user(cfg, "alice@example.test")
    port = cfg.port(daemon, listener)
    with proc("serve", daemon, "--config", str(config)) as p:
        p.wait_for_output("listening on")
        assert "uvloop" in mailstack_python("import uvloop; print(uvloop.__name__)")
        held = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", port), 10)
            if GREETING[daemon]:
                assert s.makefile("rb").readline().startswith(GREETING[daemon])
            held.append(s)
        with socket.create_connection(("127.0.0.1", port), 10) as s:
            s.settimeout(10)
            refused = b""
            while chunk := s.recv(4096):
                refused += chunk
        assert refused.startswith(BUSY[(daemon, listener)]), (refused, p.output)
        for s in held:
            s.close()


@pytest.mark.parametrize(("daemon", "listener"), [("mta", "submissions"), ("imap", "imaps")])
def test_tls_handshakes_count_in_the_production_process(tmp_path: Path, daemon: str,
                                                        listener: str) -> None:
    """The same under uvloop (its own TLS layer): counted at accept, refused before TLS."""
    pytest.importorskip("uvloop")
    config = write_config(tmp_path, "[server]\nmax_connections_per_ip = 2\n")
    cfg = load(config, env={})
    ctx = client_context(ensure_tls_files(cfg).ca)
    port = cfg.port(daemon, listener)

    def greeting() -> bytes:
        with socket.create_connection(("127.0.0.1", port), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.makefile("rb").readline()

    with proc("serve", daemon, "--config", str(config)) as p:
        p.wait_for_output("listening on")
        assert greeting().startswith(GREETING[daemon]), p.output
        held = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(2)]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            greeting()
        held.pop().close()
        deadline = 50
        while True:  # the server notices the close
            try:
                assert greeting().startswith(GREETING[daemon])
                break
            except (ssl.SSLError, ConnectionError):
                deadline -= 1
                assert deadline, p.output
                time.sleep(0.1)
        for s in held:
            s.close()


@pytest.mark.parametrize(("daemon", "listener"), [("imap", "imap"), ("mta", "smtp")])
async def test_total_limit_counts_every_client_address(config_factory, daemon: str,
                                                       listener: str) -> None:
    """[server] max_connections: three clients from three addresses fill the daemon; a fourth
    address (under its own per-address limit) is refused; a freed slot serves it again."""
    cfg: Config = config_factory("[server]\nmax_connections = 3\n")
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg) as proc:
        held = []
        for n in (2, 3, 4):
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{n}", 0))
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
            held.append(w)
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0))
        refused = await asyncio.wait_for(r.read(), 5)
        assert refused.startswith(BUSY[(daemon, listener)]), refused
        await proc.wait_log("refused 127.0.0.5: too many connections (0 from it, 3 in all)")
        held.pop().close()
        r, w = await _connect_when_free(port, daemon)
        w.close()
        for hw in held:
            hw.close()
