"""TLS 1.2 offers only ECDHE with AEAD suites on every TLS listener (no CBC); TLS 1.3 as
OpenSSL ships it. Checked with real handshakes against the running daemons."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from mailstack.config import Config

from ..conftest import running
from .conftest import make_stack
from .test_bad_input import Client

CBC_ONLY = ("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:"
            "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
            "ECDHE-RSA-AES128-SHA256:AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256")


def _tls12(ca: Path, ciphers: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers + ":@SECLEVEL=0")  # the client may offer what it likes
    return ctx


async def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, str]:
    """(protocol version, cipher) of an implicit-TLS handshake; a refused one raises
    ssl.SSLError or, when the server closes first, ConnectionResetError."""
    _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                         server_hostname="localhost")
    obj = w.get_extra_info("ssl_object")
    result = obj.version(), obj.cipher()[0]
    w.close()
    return result


@pytest.mark.parametrize(("daemon", "listener"), [("mta", "submissions"), ("imap", "imaps"),
                                                  ("pop3", "pop3s")])
async def test_tls12_cbc_suites_are_refused(config_factory, daemon: str, listener: str) -> None:
    cfg: Config = config_factory()
    ca = make_stack(cfg).ca
    port = cfg.port(daemon, listener)
    async with running(daemon, cfg):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(port, _tls12(ca, CBC_ONLY))
        version, cipher = await _handshake(port, _tls12(ca, "ECDHE+AESGCM"))
        assert version == "TLSv1.2" and "GCM" in cipher
        version, _ = await _handshake(port, ssl.create_default_context(cafile=str(ca)))
        assert version == "TLSv1.3"


async def test_starttls_refuses_cbc_suites(config_factory) -> None:
    cfg: Config = config_factory()
    ca = make_stack(cfg).ca
    async with running("mda", cfg), running("mta", cfg):
        c = await Client.connect(cfg.port("mta", "smtp"))
        await c.cmd("EHLO client.test")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await c.starttls(_tls12(ca, CBC_ONLY))
        c.close()
        c = await Client.connect(cfg.port("mta", "smtp"))
        await c.cmd("EHLO client.test")
        await c.starttls(_tls12(ca, "ECDHE+CHACHA20"))
        assert "CHACHA20" in c.writer.get_extra_info("ssl_object").cipher()[0]
        c.close()
