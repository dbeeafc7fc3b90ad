"""Replay of Thunderbird 153's connect-and-sync sequence (exact commands, raw socket)."""

from __future__ import annotations

import base64
import re

from tests.imap.conftest import PASSWORD, USER, Raw, message

HEADER_FIELDS = ("From To Cc Bcc Subject Date Message-ID Priority X-Priority References "
                 "Newsgroups In-Reply-To Content-Type Reply-To Received")


def ok(lines: list[bytes], tag: str) -> list[bytes]:
    assert lines[-1].startswith(f"{tag} OK".encode()), lines
    return lines


async def login_starttls(imap) -> Raw:
    c = await Raw.connect(imap)
    assert b"STARTTLS" in c.greeting and b"IMAP4rev1" in c.greeting
    ok(await c.cmd("1", "STARTTLS"), "1")
    await c.writer.start_tls(imap.ssl, server_hostname="localhost")
    caps = ok(await c.cmd("2", "CAPABILITY"), "2")
    assert b"AUTH=PLAIN" in caps[0] and b"STARTTLS" not in caps[0]
    await c.send("3 AUTHENTICATE PLAIN\r\n")
    assert (await c.line()).startswith(b"+")
    await c.send(base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
    done = await c.until("3")
    assert done[-1].startswith(b"3 OK [CAPABILITY IMAP4rev1"), done
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"LITERAL+", b"SPECIAL-USE", b"LIST-EXTENDED",
                b"NAMESPACE", b"ID", b"CONDSTORE"):
        assert cap in done[-1]
    return c


async def login_tls(imap) -> Raw:
    c = await Raw.connect(imap, tls=True)
    await c.send("1 AUTHENTICATE PLAIN\r\n")
    assert (await c.line()).startswith(b"+")
    await c.send(base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
    ok(await c.until("1"), "1")
    return c


async def test_thunderbird_connect_and_sync(imap):
    for i in range(4):
        imap.deliver(message(f"msg {i}", body="line\n" * 20000 if i == 3 else "short\n"))
    c = await login_starttls(imap)
    ns = ok(await c.cmd("4", "NAMESPACE"), "4")
    assert ns[0] == b'* NAMESPACE (("" ".")) NIL NIL\r\n'
    idl = ok(await c.cmd("5", 'ID ("name" "Thunderbird" "version" "153.7.0")'), "5")
    assert idl[0].startswith(b"* ID (")
    lst = ok(await c.cmd("6", 'LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)'), "6")
    text = b"".join(lst)
    for name, use in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                      ("Junk", "\\Junk")):
        assert re.search(rb"\* LIST \([^)]*" + re.escape(use.encode()) + rb"[^)]*\\Subscribed\) "
                         rb'"\." ' + name.encode(), text), text
    inbox = ok(await c.cmd("7", 'LIST "" "INBOX"'), "7")
    assert inbox[0].startswith(b"* LIST (") and inbox[0].rstrip().endswith(b'"." INBOX')
    sel = ok(await c.cmd("8", 'SELECT "INBOX"'), "8")
    st = b"".join(sel)
    assert b"* 4 EXISTS" in st and b"[UIDVALIDITY " in st and b"[UIDNEXT 5]" in st
    assert sel[-1].startswith(b"8 OK [READ-WRITE]")
    flags = ok(await c.cmd("9", "UID FETCH 1:* (FLAGS)"), "9")
    assert len(flags) == 5 and all(b"FETCH (UID" in f and b"FLAGS (" in f for f in flags[:-1])
    hdr = ok(await c.cmd("10", "UID FETCH 1:4 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS "
                               f"({HEADER_FIELDS})])"), "10")
    assert len(hdr) == 5
    assert b"Subject: msg 0\r\n" in hdr[0] and b"RFC822.SIZE " in hdr[0]
    assert b"\\Seen" not in b"".join(hdr)
    body = ok(await c.cmd("11", "UID FETCH 1:4 (UID RFC822.SIZE BODY.PEEK[])"), "11")
    sizes = [int(re.search(rb"RFC822.SIZE (\d+)", b).group(1)) for b in body[:-1]]
    lits = [int(re.search(rb"BODY\[\] \{(\d+)\}", b).group(1)) for b in body[:-1]]
    assert sizes == lits
    chunks = []
    for n in range(3):
        got = ok(await c.cmd(f"12{n}", f"UID FETCH 4 (UID RFC822.SIZE BODY.PEEK[]<{n * 65536}"
                                       ".65536>)"), f"12{n}")
        chunks.append(got[0].split(b"}\r\n", 1)[1].rsplit(b")", 1)[0])
    assert sizes[3] > 120000 and b"".join(chunks) == body[3].split(b"}\r\n", 1)[1][:sizes[3]]
    # IDLE, a delivery, DONE, NOOP, fetch the new message
    await c.send("13 IDLE\r\n")
    assert (await c.line()).startswith(b"+ ")
    imap.deliver(message("new one"))
    assert await c.line(timeout=2) == b"* 5 EXISTS\r\n"
    assert (await c.line()) == b"* 5 RECENT\r\n"  # all five are \\Recent here
    await c.send("DONE\r\n")
    ok(await c.until("13"), "13")
    ok(await c.cmd("14", "NOOP"), "14")
    new = ok(await c.cmd("15", "UID FETCH 5:* (FLAGS)"), "15")
    assert new[0].startswith(b"* 5 FETCH (UID 5 FLAGS (")
    # delete = MOVE to Trash
    mv = ok(await c.cmd("16", "UID MOVE 1 Trash"), "16")
    assert re.match(rb"\* OK \[COPYUID \d+ 1 1\]", mv[0]), mv
    assert b"* 1 EXPUNGE\r\n" in mv
    # sent mail: APPEND with LITERAL+
    msg = message("sent").replace(b"\n", b"\r\n")
    await c.send(b'17 APPEND "Sent" (\\Seen) {%d+}\r\n' % len(msg) + msg + b"\r\n")
    ap = ok(await c.until("17"), "17")
    assert re.match(rb"17 OK \[APPENDUID \d+ 1\]", ap[-1])
    assert not any(line.startswith(b"+") for line in ap)
    # five concurrent connections on one account: STATUS, SELECT, IDLE
    others = [await login_tls(imap) for _ in range(4)]
    for i, (o, box) in enumerate(zip(others, ("Sent", "Drafts", "Trash", "Junk"), strict=True)):
        status = ok(await o.cmd("a", f'STATUS "{box}" (UIDNEXT MESSAGES UNSEEN RECENT)'), "a")
        assert status[0].startswith(f"* STATUS {box} (UIDNEXT ".encode()), status
        ok(await o.cmd("b", f'SELECT "{box}"'), "b")
        ok(await o.cmd("c", "UID FETCH 1:* (FLAGS)"), "c")
        await o.send("d IDLE\r\n")
        assert (await o.line()).startswith(b"+"), i
    # a MOVE to Trash from the first connection reaches the IDLE on Trash
    ok(await c.cmd("18", "UID MOVE 2 Trash"), "18")
    assert await others[2].line(timeout=2) == b"* 2 EXISTS\r\n"
    # closing sockets without LOGOUT leaves the server healthy
    for o in [c, *others]:
        o.writer.transport.abort()
    again = await login_tls(imap)
    sel = ok(await again.cmd("x", "SELECT INBOX"), "x")
    assert b"* 3 EXISTS\r\n" in sel
    ok(await again.cmd("y", "LOGOUT"), "y")
    await again.close()
