"""POP3 login rules: PASS only directly after USER (RFC 1939), padded names never log in and
count against the account they spell."""

from __future__ import annotations

import base64

from mailstack.accounts.authlimit import AuthThrottle, db_path
from mailstack.config import Config
from mailstack.pop3.protocol import Pass, POP3Protocol, Reply

from ..conftest import running
from .pop3_helpers import ALICE, PASSWORD, RawPOP3, make_alice


def test_pass_after_an_intervening_refused_line_is_refused() -> None:
    for between in (b"FROB", b"STAT", b"LIST 1", b"USER a b", b"\xff", b"CAPA"):
        proto = POP3Protocol(tls=True, tls_available=False, plaintext_auth=True)
        assert proto.receive_line(b"USER alice@example.test\r\n") == Reply(b"+OK Send PASS\r\n")
        proto.receive_line(between + b"\r\n")
        event = proto.receive_line(b"PASS secret\r\n")
        assert isinstance(event, Reply) and event.data.startswith(b"-ERR"), (between, event)
    proto = POP3Protocol(tls=True, tls_available=False, plaintext_auth=True)
    proto.receive_line(b"USER alice@example.test\r\n")
    assert proto.line_too_long().data.startswith(b"-ERR")
    assert isinstance(proto.receive_line(b"PASS secret\r\n"), Reply)
    proto.receive_line(b"USER alice@example.test\r\n")
    assert proto.receive_line(b"PASS secret\r\n") == Pass("alice@example.test", "secret")


async def test_pass_after_a_failed_command_against_the_daemon(cfg: Config) -> None:
    make_alice(cfg)
    async with running("pop3", cfg):
        c = await RawPOP3.connect(cfg.port("pop3", "pop3"))
        assert (await c.cmd(f"USER {ALICE}")).startswith("+OK")
        assert (await c.cmd("FROB")).startswith("-ERR")
        assert (await c.cmd(f"PASS {PASSWORD}")).startswith("-ERR USER first")
        assert (await c.login()).startswith("+OK Logged in")
        await c.close()


async def test_padded_names_never_log_in_and_count_against_the_account(cfg: Config) -> None:
    make_alice(cfg)
    async with running("pop3", cfg):
        c = await RawPOP3.connect(cfg.port("pop3", "pop3"))
        assert (await c.cmd(f"USER  {ALICE}")).startswith("+OK")
        assert (await c.cmd(f"PASS {PASSWORD}")).startswith("-ERR [AUTH]")
        plain = base64.b64encode(f"\0{ALICE} \0{PASSWORD}".encode()).decode()
        assert (await c.cmd(f"AUTH PLAIN {plain}")).startswith("-ERR [AUTH]")
        assert (await c.login()).startswith("+OK Logged in")
        await c.close()
    throttle = AuthThrottle(path=db_path(cfg))
    try:
        assert throttle.failures("user:" + ALICE) == 2
    finally:
        throttle.close()
