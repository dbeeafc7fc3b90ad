"""Probes are logged at debug only (README: "a session without a command"): a connection to an
implicit-TLS port that closes before sending anything (a port check, a load balancer's TCP
probe), and an IMAP session that ends without a command (the health probe); a client that
speaks something other than TLS there, or leaves after a command, is still logged at info."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from ..conftest import add_user, running
from ..e2e.helpers import cli_env


def _knock(port: int, data: bytes = b"") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        if data:
            s.sendall(data)
            s.recv(64)  # the server's alert or close


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_a_tcp_probe_of_a_tls_port_is_logged_at_debug(config_factory, level: str) -> None:
    cfg = config_factory(f'[server]\nlog_level = "{level}"\n')
    add_user(cfg, "alice@example.test")
    async with running("pop3", cfg) as pop3:
        port = cfg.port("pop3", "pop3s")
        for _ in range(3):
            await asyncio.to_thread(_knock, port)
        await asyncio.to_thread(_knock, port, b"USER alice\r\n")  # not TLS
        log = await pop3.wait_log("TLS handshake failed")
        if level == "debug":
            await pop3.wait_log("closed before the TLS handshake", count=3)
    log = pop3.log()
    failed = [x for x in log.splitlines() if "TLS handshake failed" in x]
    assert len(failed) == 1 and " INFO: " in failed[0], failed
    probes = [x for x in log.splitlines() if "closed before the TLS handshake" in x]
    assert len(probes) == (3 if level == "debug" else 0), probes
    assert all(" DEBUG: " in x for x in probes), probes


async def test_an_imap_session_without_a_command_is_logged_at_debug(config_factory) -> None:
    cfg = config_factory('[server]\nlog_level = "debug"\n')
    port = cfg.port("imap", "imap")
    async with running("imap", cfg) as imap:
        for _ in range(2):  # the health probe: reads the greeting, leaves
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "mailstack.runtime.probe", str(port)],
                check=True, env=cli_env(), timeout=60)
        await asyncio.to_thread(_knock, port)  # connects and closes at once
        await asyncio.to_thread(_knock, port, b"a NOOP\r\n")  # one command, then gone
        await imap.wait_log("imap 127.0.0.1: disconnected", count=4)
    lines = [x for x in imap.log().splitlines() if "imap 127.0.0.1: disconnected" in x]
    assert sorted(" INFO: " in x for x in lines) == [False, False, False, True], lines
    assert [" DEBUG: " in x for x in lines].count(True) == 3, lines
