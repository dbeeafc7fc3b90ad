"""The mda's LMTP listener is a unix socket (0600) by default and the mta delivers through it;
TCP LMTP only when configured. Real daemons, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailstack.config import Config, load
from mailstack.runtime import unixsock
from mailstack.runtime.banner import listeners
from mailstack.runtime.daemon import load_serve
from mailstack.runtime.netserver import BindError

from ..conftest import add_user, running, write_config
from ..e2e.helpers import mailstack
from .conftest import make_stack
from .test_bad_input import Client

SOCKET_ONLY = "[mda]\nlmtp = 0\n"


@contextlib.asynccontextmanager
async def mda_on_socket(cfg: Config) -> AsyncIterator[Path]:
    """Run the mda as its own process (as production does) until the block ends; yields its
    socket once it answers."""
    path = cfg.lmtp_socket
    assert path is not None
    async with running("mda", cfg):
        for _ in range(300):
            with contextlib.suppress(OSError):
                _, w = await unixsock.open_connection(path)
                w.close()
                break
            await asyncio.sleep(0.05)
        yield path


async def _lhlo(path: Path) -> str:
    r, w = await unixsock.open_connection(path)
    c = Client(r, w)
    assert (await c.reply()).startswith("220")
    reply = await c.cmd("LHLO test.example")
    c.close()
    return reply


async def test_default_is_a_private_socket_and_the_mta_delivers_through_it(
        config_factory) -> None:
    cfg: Config = config_factory(SOCKET_ONLY)
    st = make_stack(cfg)
    assert cfg.lmtp_target == cfg.data_dir / "run" / "lmtp.sock"
    assert [lst.path for lst in listeners(cfg) if lst.daemon == "mda"] == [str(cfg.lmtp_target)]
    async with mda_on_socket(cfg) as path, running("mta", cfg) as mta:
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert (await _lhlo(path)).startswith("250")
        await asyncio.to_thread(_send, cfg.port("mta", "smtp"), "alice@example.test")
        [raw] = await st.wait_messages("alice@example.test", 1)
        assert b"Subject: over the socket" in raw
        await mta.wait_log(f"relay=mda[unix:{path}]")
    assert not path.exists(), "the socket file is removed at stop"


def _send(port: int, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("x@example.org", [rcpt], b"Subject: over the socket\r\n\r\nx\r\n")


async def test_tcp_lmtp_only_when_configured(config_factory) -> None:
    """With [mda] lmtp set (docker-compose) the TCP listener speaks LMTP beside the socket."""
    cfg: Config = config_factory()  # the fixture's config names a TCP port
    assert cfg.port("mda", "lmtp")
    async with mda_on_socket(cfg) as path:
        r, w = await asyncio.open_connection("127.0.0.1", cfg.port("mda", "lmtp"))
        assert (await Client(r, w).reply()).startswith("220")
        w.close()
        assert (await _lhlo(path)).startswith("250")


async def test_stale_socket_is_replaced_and_a_live_one_refused(config_factory) -> None:
    cfg: Config = config_factory(SOCKET_ONLY)
    path = cfg.lmtp_socket
    assert path is not None
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a crashed mda's file: nobody listens
    async with mda_on_socket(cfg):
        assert (await _lhlo(path)).startswith("250")
        with pytest.raises(BindError, match="another server is listening"):
            await load_serve("mda")(cfg, asyncio.Event())
    path.write_text("not a socket")
    with pytest.raises(BindError, match="not a socket"):
        await load_serve("mda")(cfg, asyncio.Event())


async def test_a_long_socket_path_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    cfg = load(write_config(deep, SOCKET_ONLY), env={})
    assert len(str(cfg.lmtp_socket)) > 108
    add_user(cfg, "alice@example.test")
    async with mda_on_socket(cfg) as path:
        assert (await _lhlo(path)).startswith("250")


def test_health_check_uses_the_socket(tmp_path: Path) -> None:
    from ..e2e.helpers import proc

    config = write_config(tmp_path, SOCKET_ONLY)
    r = mailstack("health", "mda", "--config", str(config), check=False)
    assert r.returncode == 1 and "unix:" in r.stderr
    with proc("serve", "mda", "--config", str(config)) as p:
        p.wait_for_output("listening on unix:")
        r = mailstack("health", "mda", "--config", str(config))
        assert "unix:" in r.stdout and "220" in r.stdout
