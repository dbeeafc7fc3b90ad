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
from mailstack.tls import client_context, ensure_tls_files

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


@pytest.mark.parametrize(("daemon", "listener"), list(BUSY))
async def test_per_ip_limit(config_factory, daemon: str, listener: str) -> None:
    cfg: Config = config_factory("[server]\nmax_connections_per_ip = 3\n")
    add_user(cfg, "alice@example.test")
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg):
        held = []
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            if GREETING[daemon]:
                assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
            held.append((r, w))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(r.read(), 5)
        assert refused.startswith(BUSY[(daemon, listener)]), refused
        held.pop()[1].close()
        await asyncio.sleep(0.2)  # the server notices the close
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if GREETING[daemon]:
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(GREETING[daemon])
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
        await asyncio.sleep(0.2)  # the server accepts them
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _tls_greeting(port, ctx)
        r, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r.read(), 20) == b"", "closed without a handshake"
        held.pop()[1].close()
        await asyncio.sleep(0.2)  # the server notices the close
        assert (await _tls_greeting(port, ctx)).startswith(GREETING[daemon])
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
