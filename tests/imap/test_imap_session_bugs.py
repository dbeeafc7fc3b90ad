"""Session bugs found by third-party checkers: new keywords announced before a FETCH uses
them, FETCH of a message another session expunged (RFC 2180 4.1), ``FETCH 1:*`` on an empty
mailbox (RFC 9051), and a client that closes its socket in the middle of a response."""

from __future__ import annotations

import socket
import struct

from tests.imap.conftest import message, ok, session


def _index(lines: list[bytes], prefix: bytes) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


async def test_new_keyword_is_announced_to_every_selected_session_before_fetch(imap) -> None:
    imap.deliver(message("kw"))
    a = await session(imap)
    b = await session(imap)
    c = await session(imap)
    ok(await b.cmd("s", "STORE 1 +FLAGS (Project-X)"), "s")
    lines = ok(await a.cmd("f", "FETCH 1 (FLAGS)"), "f")
    flags = _index(lines, b"* FLAGS (")
    perm = _index(lines, b"* OK [PERMANENTFLAGS (")
    fetch = _index(lines, b"* 1 FETCH")
    assert flags < fetch and perm < fetch, lines
    assert b"Project-X" in lines[flags] and b"Project-X" in lines[perm], lines
    assert b"Project-X" in lines[fetch], lines
    # a session that only idles hears of it too, before the FETCH with the keyword
    lines = ok(await c.cmd("n", "NOOP"), "n")
    assert _index(lines, b"* FLAGS (") < _index(lines, b"* 1 FETCH"), lines
    assert any(line.startswith(b"* OK [PERMANENTFLAGS (") and b"Project-X" in line
               for line in lines), lines


async def test_fetch_of_a_message_expunged_elsewhere_follows_rfc_2180(imap) -> None:
    for n in range(2):
        imap.deliver(message(f"gone{n}"))
    a = await session(imap)
    b = await session(imap)
    ok(await b.cmd("x", "STORE 1 +FLAGS (\\Deleted)"), "x")
    ok(await b.cmd("y", "EXPUNGE"), "y")
    lines = await a.cmd("f", "FETCH 1:2 (BODY[])")
    tagged = lines[-1]
    assert tagged.startswith(b"f NO"), lines
    assert b"SERVERBUG" not in tagged and b"no longer exist" in tagged.lower(), tagged
    assert any(line.startswith(b"* 2 FETCH") for line in lines), lines  # the rest is sent
    for n, atts in enumerate(("ENVELOPE", "BODYSTRUCTURE", "RFC822.HEADER", "BODY[TEXT]",
                              "RFC822.SIZE FLAGS")):
        lines = await a.cmd(f"g{n}", f"FETCH 1 ({atts})")
        assert not lines[-1].startswith(f"g{n} BAD".encode()), lines
        assert b"SERVERBUG" not in lines[-1], lines
        if lines[-1].startswith(f"g{n} NO".encode()):
            assert b"no longer exist" in lines[-1], lines
    lines = ok(await a.cmd("n", "NOOP"), "n")
    assert b"* 1 EXPUNGE\r\n" in lines
    log = imap.log()
    assert "SERVERBUG" not in log and "Traceback" not in log, log


async def test_store_on_a_message_expunged_elsewhere(imap) -> None:
    for n in range(2):
        imap.deliver(message(f"st{n}"))
    a = await session(imap)
    b = await session(imap)
    ok(await b.cmd("x", "STORE 1 +FLAGS (\\Deleted)"), "x")
    ok(await b.cmd("y", "EXPUNGE"), "y")
    lines = await a.cmd("s", "STORE 1:2 +FLAGS (\\Seen)")
    assert lines[-1].startswith(b"s NO [EXPUNGEISSUED]"), lines
    assert b"no longer exist" in lines[-1], lines
    fetches = [x for x in lines if b" FETCH (" in x]
    assert len(fetches) == 1 and fetches[0].startswith(b"* 2 FETCH (FLAGS (\\Seen"), lines
    lines = ok(await a.cmd("u", "UID STORE 1:2 +FLAGS (\\Answered)"), "u")  # UIDs: just not there
    fetches = [x for x in lines if b" FETCH (" in x]
    assert len(fetches) == 1 and fetches[0].startswith(b"* 2 FETCH (UID 2 FLAGS ("), lines
    assert b"* 1 EXPUNGE\r\n" in lines, lines


async def test_fetch_all_on_an_empty_mailbox_is_not_bad(imap) -> None:
    c = await session(imap)
    for tag, command in (("a", "FETCH 1:* (FLAGS)"), ("b", "FETCH * (UID)"),
                         ("c", "STORE 1:* +FLAGS (\\Seen)"), ("d", "UID FETCH 1:* (FLAGS)")):
        lines = ok(await c.cmd(tag, command), tag)
        assert not any(b" FETCH (" in line for line in lines), lines
    assert (await c.cmd("e", "FETCH 1 (FLAGS)"))[-1].startswith(b"e BAD")  # no message 1


async def test_socket_closed_mid_write_is_a_plain_disconnect(imap) -> None:
    big = "x" * 400 + "\n"
    for n in range(8):
        imap.deliver(message(f"big{n}", body=big * 2000))
    for _ in range(3):
        c = await session(imap)
        await c.send("f FETCH 1:* (BODY.PEEK[])\r\n")
        await c.reader.readexactly(1000)  # the response has started
        sock = c.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.writer.transport.abort()  # RST with unread data: the server's writes fail
    d = await session(imap)  # the daemon goes on serving
    ok(await d.cmd("n", "NOOP"), "n")
    await imap.daemon.wait_log("disconnected", count=1)
    log = imap.log()
    assert imap.daemon.errors() == [] and "Traceback" not in log, log
