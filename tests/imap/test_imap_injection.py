"""CR/LF inside IMAP strings never turns into a second command, and a string the server echoes
back (however it arrived) goes out as an atom, quoted string or literal, never raw."""

from __future__ import annotations

import pytest

from tests.imap.conftest import PASSWORD, USER, Raw, message

from .test_imap_badinput import login, ok


async def drain_after(c: Raw, lines: list[bytes]) -> list[bytes]:
    """``lines`` plus everything up to the reply to a fresh NOOP: a command smuggled in by the
    previous one would have answered before that."""
    return lines + await c.cmd("Z9", "NOOP")


def tags(lines: list[bytes]) -> list[bytes]:
    return [line.split(b" ", 1)[0] for line in lines if not line.startswith((b"*", b"+"))]


@pytest.mark.parametrize("payload", [
    b'A1 LOGIN "alice\r\nA2 DELETE Trash" x\r\n',
    b'A1 LOGIN "alice\rA2 DELETE Trash" x\r\n',
    b'A1 LOGIN "alice\nA2 DELETE Trash" x\r\n',
    b'A1 CREATE "foo\r\nA2 DELETE Trash"\r\n',
], ids=["crlf", "bare-cr", "bare-lf", "create-crlf"])
async def test_cr_lf_in_a_quoted_string(imap, payload: bytes) -> None:
    folders = sorted(imap.inbox.list_folders())
    assert "Trash" in folders
    c = await login(imap)
    await c.send(payload)
    lines = await drain_after(c, await c.until("A1"))
    assert lines[0].startswith(b"A1 BAD"), lines
    assert all(not line.startswith(b"A2 OK") for line in lines), lines
    assert tags(lines) in ([b"A1", b"Z9"], [b"A1", b"A2", b"Z9"]), lines
    assert sorted(imap.inbox.list_folders()) == folders
    await c.close()


@pytest.mark.parametrize("plus", [b"", b"+"], ids=["synchronising", "non-synchronising"])
async def test_literal_with_crlf_as_a_mailbox_name(imap, plus: bytes) -> None:
    name = b"foo\r\nA2 NOOP"
    folders = sorted(imap.inbox.list_folders())
    c = await login(imap)
    for tag, cmd in ((b"A1", b"CREATE"), (b"B1", b"SELECT"), (b"C1", b"SUBSCRIBE")):
        await c.send(tag + b" " + cmd + b" {%d%s}\r\n" % (len(name), plus))
        if not plus:
            assert (await c.line()).startswith(b"+")
        await c.send(name + b"\r\n")
        lines = await drain_after(c, await c.until(tag.decode()))
        assert lines[-2].startswith(tag + b" NO"), (cmd, lines)
        assert tags(lines) == [tag, b"Z9"], (cmd, lines)
    assert sorted(imap.inbox.list_folders()) == folders
    lines = ok(await c.cmd("L", 'LSUB "" *'), "L")  # nothing was subscribed
    assert all(b"foo" not in line for line in lines), lines
    await c.close()


async def test_literal_with_crlf_as_a_search_string(imap) -> None:
    imap.deliver(message("foo"))
    c = await login(imap)
    ok(await c.cmd("S", "SELECT INBOX"), "S")
    text = b"foo\r\nA2 EXPUNGE"
    await c.send(b"A1 SEARCH SUBJECT {%d+}\r\n%s\r\n" % (len(text), text))
    lines = await drain_after(c, await c.until("A1"))
    assert lines[0] == b"* SEARCH\r\n", lines  # the whole literal is the search string
    assert tags(lines) == [b"A1", b"Z9"], lines
    await c.close()


async def test_literal_with_crlf_as_the_login_name(imap) -> None:
    user = f"{USER}\r\nA2 NOOP".encode()
    c = await Raw.connect(imap)
    await c.send(b"A1 LOGIN {%d}\r\n" % len(user))
    assert (await c.line()).startswith(b"+")
    await c.send(user + b" " + PASSWORD.encode() + b"\r\n")
    lines = await drain_after(c, await c.until("A1"))
    assert lines[0].startswith(b"A1 NO [AUTHENTICATIONFAILED]"), lines
    assert tags(lines) == [b"A1", b"Z9"], lines
    assert (await c.cmd("A3", "SELECT INBOX"))[-1].startswith(b"A3 BAD"), "logged in anyway"
    await c.close()


async def test_echoed_header_field_name_from_a_literal_is_sent_as_a_literal(imap) -> None:
    imap.deliver(message("echo"))
    c = await login(imap)
    ok(await c.cmd("S", "SELECT INBOX"), "S")
    field = b"Subject\r\nA2 OK injected"
    await c.send(b"A1 FETCH 1 (BODY.PEEK[HEADER.FIELDS (From {%d+}\r\n%s)])\r\n"
                 % (len(field), field))
    lines = await drain_after(c, await c.until("A1"))  # Raw inlines the literals it reads
    assert tags(lines) == [b"A1", b"Z9"], lines
    assert lines[0].startswith(b"* 1 FETCH (BODY[HEADER.FIELDS (From {%d}\r\n%s)] {"
                               % (len(field), field)), lines
    assert b"From: Bob <bob@example.test>\r\n" in lines[0]
    assert b"Subject:" not in lines[0]  # the name with CR LF in it matches no field
    await c.close()
