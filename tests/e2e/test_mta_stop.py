"""The mta's stop path: clients get ``421``, deliveries in flight drain within the grace period.

docker-compose and `mailstack up` send SIGTERM and wait (30 s and 10 s) before SIGKILL; the mta
must be gone well before that, log ``stopped`` and exit 0, and a message whose delivery it gave
up on stays queued and arrives once after the restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

from mailstack.config import load
from mailstack.mta.runner import STOP_DRAIN
from mailstack.runtime.supervisor import STOP_GRACE

from ..conftest import add_user, running


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_drain_is_shorter_than_every_grace_period() -> None:
    import yaml

    from .helpers import ROOT

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grace = compose["services"]["mta"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= 2 * STOP_DRAIN
    assert STOP_GRACE >= 2 * STOP_DRAIN


async def test_client_mid_data_gets_421_when_the_mta_stops(config_factory) -> None:
    cfg = config_factory()
    add_user(cfg, "bob@example.test")
    async with running("mta", cfg) as mta:
        sock = socket.create_connection(("127.0.0.1", cfg.port("mta", "smtp")), timeout=10)
        with sock:
            assert _reply(sock).startswith(b"220")
            for cmd, code in ((b"EHLO client.test", b"250"),
                              (b"MAIL FROM:<a@remote.test>", b"250"),
                              (b"RCPT TO:<bob@example.test>", b"250"), (b"DATA", b"354")):
                sock.sendall(cmd + b"\r\n")
                assert _reply(sock).startswith(code), cmd
            sock.sendall(b"Subject: half\r\n\r\nthe first half of the message\r\n")
            os.kill(mta.pid, signal.SIGTERM)
            reply = await asyncio.to_thread(_reply, sock)
            assert reply.startswith(b"421 4.3.2"), reply
            assert sock.recv(100) == b""  # and the connection is closed
        await mta.wait_log("mta stopping: 421 to the client")
        await mta.wait_log("stopped")
    assert not list((cfg.data_dir / "queue").glob("*.msg")), "half a message was queued"


async def test_stop_with_a_delivery_in_flight_is_clean_and_delivers_once(config_factory,
                                                                         tmp_path) -> None:
    # the mda "hangs": a listener that accepts and never greets, so the delivery is in flight
    hang = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_path = tmp_path / "hang.sock"
    hang.bind(str(sock_path))
    hang.listen(16)
    cfg = config_factory(f'[mta]\nlmtp = "unix:{sock_path}"\n')
    add_user(cfg, "bob@example.test")
    try:
        async with running("mta", cfg) as mta:
            with socket.create_connection(("127.0.0.1", cfg.port("mta", "smtp")),
                                          timeout=10) as c:
                _reply(c)
                c.sendall(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n"
                          b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
                while b"354" not in _reply(c):
                    pass
                c.sendall(b"Subject: in flight\r\n\r\nbody\r\n.\r\nQUIT\r\n")
                assert b"250" in _reply(c)
            conn, _ = await asyncio.to_thread(hang.accept)  # the mta dialled: in flight
            os.kill(mta.pid, signal.SIGTERM)
            # it gives up on the delivery after STOP_DRAIN and exits by itself: `running()`
            # waits 10 s (as the supervisor does) before SIGKILL, which would fail exit_code
            await mta.wait_log("stopped", timeout=30)
            conn.close()
        assert mta.exit_code == 0
        assert len(list((cfg.data_dir / "queue").glob("*.msg"))) == 1
    finally:
        hang.close()
    # restarted with the real mda: the message arrives exactly once
    conf = Path(cfg.source)
    conf.write_text(conf.read_text().replace(f'lmtp = "unix:{sock_path}"', 'lmtp = ""'))
    cfg2 = load(conf, env={})
    async with running("mda", cfg2), running("mta", cfg2) as mta2:
        box = cfg2.data_dir / "mail" / "example.test" / "bob" / "new"
        deadline = time.monotonic() + 60
        while not list(box.iterdir()):
            assert time.monotonic() < deadline, mta2.log()
            await asyncio.sleep(0.05)
        await mta2.wait_log("removed")
    assert len(list(box.iterdir())) == 1


async def test_mail_taken_before_the_mda_listens_is_retried_every_second(config_factory) -> None:
    # docker-compose starts the mta with the mda container, not after its health check
    cfg = config_factory('[mta]\nretry_initial = "1h"\nretry_max = "1h"\n')
    add_user(cfg, "bob@example.test")
    async with running("mta", cfg) as mta:
        with socket.create_connection(("127.0.0.1", cfg.port("mta", "smtp")),
                                      timeout=10) as c:
            _reply(c)
            c.sendall(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n"
                      b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
            while b"354" not in _reply(c):
                pass
            c.sendall(b"Subject: early\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            assert b"250" in _reply(c)
        await mta.wait_log("next attempt in 1s")
        async with running("mda", cfg):
            box = cfg.data_dir / "mail" / "example.test" / "bob" / "new"
            await mta.wait_log("status=sent", timeout=30)
            assert len(list(box.iterdir())) == 1
