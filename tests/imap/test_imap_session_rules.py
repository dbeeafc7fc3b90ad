"""Session rules with no test before: CHECK, the IDLE timeout, EXPUNGE held back during
FETCH, STORE and SEARCH (RFC 3501 7.4.1), and $Forwarded kept as a Maildir flag."""

from __future__ import annotations

import pytest

from mailstack.config import Config
from tests.conftest import add_user, running
from tests.imap.conftest import PASSWORD, USER, login, message, ok, session


async def test_check_is_answered_in_selected_state_only(imap) -> None:
    c = await login(imap)
    assert (await c.cmd("b", "CHECK"))[-1].startswith(b"b BAD")
    ok(await c.cmd("c", "SELECT INBOX"), "c")
    assert ok(await c.cmd("d", "CHECK"), "d")[-1] == b"d OK CHECK completed\r\n"


async def test_expunge_is_held_back_during_fetch_store_and_search(imap) -> None:
    for n in range(3):
        imap.deliver(message(f"m{n}"))
    a = await session(imap)
    b = await session(imap)
    ok(await b.cmd("x", "STORE 2 +FLAGS (\\Deleted)"), "x")
    ok(await b.cmd("y", "EXPUNGE"), "y")
    for tag, command in (("f", "FETCH 1:* (FLAGS)"), ("s", "STORE 3 +FLAGS (\\Flagged)"),
                         ("q", "SEARCH ALL")):
        lines = ok(await a.cmd(tag, command), tag)
        assert not any(line.endswith(b"EXPUNGE\r\n") for line in lines), (command, lines)
    lines = ok(await a.cmd("q2", "SEARCH ALL"), "q2")
    assert b"* SEARCH 1 2 3\r\n" in lines  # numbers stay valid until the EXPUNGE is sent
    lines = ok(await a.cmd("n", "NOOP"), "n")
    assert b"* 2 EXPUNGE\r\n" in lines
    lines = ok(await a.cmd("q3", "SEARCH ALL"), "q3")
    assert b"* SEARCH 1 2\r\n" in lines


async def test_uid_commands_may_report_expunges(imap) -> None:
    for n in range(2):
        imap.deliver(message(f"m{n}"))
    a = await session(imap)
    b = await session(imap)
    ok(await b.cmd("x", "STORE 1 +FLAGS (\\Deleted)"), "x")
    ok(await b.cmd("y", "EXPUNGE"), "y")
    lines = ok(await a.cmd("f", "UID FETCH 1:* (FLAGS)"), "f")
    assert b"* 1 EXPUNGE\r\n" in lines


async def test_forwarded_is_a_maildir_flag(imap) -> None:
    imap.deliver(message("fwd"))
    c = await session(imap)
    lines = ok(await c.cmd("s", "STORE 1 +FLAGS ($Forwarded)"), "s")
    assert b"$Forwarded" in lines[0]
    names = [p.name for p in (imap.inbox.root / "cur").iterdir()]
    assert len(names) == 1 and names[0].endswith(":2,P"), names
    c2 = await session(imap)
    lines = ok(await c2.cmd("f", "FETCH 1 (FLAGS)"), "f")
    assert b"FLAGS ($Forwarded" in lines[0]


@pytest.fixture
async def short_idle(config_factory) -> Config:
    return config_factory('[imap]\nidle_timeout = "1s"\n')


async def test_idle_timeout_ends_with_bye(short_idle: Config) -> None:
    from mailstack.runtime.tls import client_context, ensure_tls_files
    client_ssl = client_context(ensure_tls_files(short_idle).ca)
    add_user(short_idle, USER, PASSWORD)
    async with running("imap", short_idle):
        from tests.imap.conftest import Server
        srv = Server(short_idle, short_idle.port("imap", "imap"),
                     short_idle.port("imap", "imaps"), client_ssl)
        c = await session(srv)
        await c.send("i IDLE\r\n")
        assert (await c.line()).startswith(b"+")
        line = await c.line(timeout=30)
        assert line.startswith(b"* BYE"), line
        assert await c.line(timeout=30) == b""  # and the connection is closed
