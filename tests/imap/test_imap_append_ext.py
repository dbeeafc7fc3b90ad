"""APPEND extensions over real sockets: MULTIAPPEND (RFC 3502, with imapclient), APPENDUID
with a UID set, APPENDLIMIT (7889), literal8 (3516) and CATENATE (4469), and their bad input."""

from __future__ import annotations

import asyncio
import os
import re

from imapclient import IMAPClient

from tests.imap.conftest import PASSWORD, USER, Raw, message


def _files(imap, folder: str = "INBOX") -> list[str]:
    box = imap.folder(folder)
    return sorted(os.listdir(box.root / "new") + os.listdir(box.root / "cur"))


async def _login(imap) -> Raw:
    c = await Raw.connect(imap)
    assert (await c.cmd("a", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"a OK")
    return c


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


async def test_multiappend_with_imapclient(imap):
    msgs = [_crlf(message(f"multi {i}")) for i in range(3)]

    def go() -> bytes:
        with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
            c.login(USER, PASSWORD)
            caps = c.capabilities()
            assert b"MULTIAPPEND" in caps and b"CATENATE" in caps and b"BINARY" in caps
            assert f"APPENDLIMIT={imap.cfg.imap.max_literal}".encode() in caps
            reply = c.multiappend("INBOX", [msgs[0], {"msg": msgs[1], "flags": [b"\\Seen"]},
                                            msgs[2]])
            c.select_folder("INBOX")
            got = c.fetch([1, 2, 3], ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
            assert [got[u][b"BODY[HEADER.FIELDS (SUBJECT)]"] for u in sorted(got)] == [
                f"Subject: multi {i}\r\n\r\n".encode() for i in range(3)]
            assert b"\\Seen" in got[2][b"FLAGS"] and b"\\Seen" not in got[1][b"FLAGS"]
            c.logout()
            return reply

    reply = await asyncio.to_thread(go)  # (typ, [text])
    assert re.search(rb"\[APPENDUID \d+ 1:3\]", reply[1][0]), reply


async def test_multiappend_is_all_or_none(imap):
    """The third message is refused (empty): nothing of the first two is stored."""
    c = await _login(imap)
    one, two = _crlf(message("one")), _crlf(message("two"))
    before = _files(imap)
    cmd = (b"m1 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {0+}\r\n\r\n"
           % (len(one), one, len(two), two))
    await c.send(cmd)
    reply = (await c.until("m1"))[-1]
    assert reply.startswith(b"m1 NO"), reply
    assert _files(imap) == before
    # one with a bad date: BAD, and nothing stored either
    await c.send(b'm2 APPEND INBOX {%d+}\r\n%s "31-Feb-2026 10:00:00 +0000" {%d+}\r\n%s\r\n'
                 % (len(one), one, len(two), two))
    reply = (await c.until("m2"))[-1]
    assert reply.startswith(b"m2 BAD"), reply
    assert _files(imap) == before
    status = await c.cmd("s", "STATUS INBOX (MESSAGES UIDNEXT)")
    assert b"MESSAGES 0 UIDNEXT 1" in status[0]
    await c.close()


async def test_multiappend_over_quota_stores_nothing(imap_quota):
    imap = imap_quota
    c = await _login(imap)
    big = _crlf(message("big", body="x" * 7000 + "\n"))
    await c.send(b"q1 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(big), big, len(big), big))
    reply = (await c.until("q1"))[-1]
    assert reply.startswith(b"q1 NO [OVERQUOTA]"), reply
    assert _files(imap) == []
    await c.close()


async def test_literal8_append_and_unstorable_binary(imap):
    c = await _login(imap)
    good = b"Subject: bin\r\nContent-Transfer-Encoding: binary\r\n\r\nA\x00B\xff\r\n"
    await c.send(b"b1 APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(good), good))
    assert (await c.until("b1"))[-1].startswith(b"b1 OK [APPENDUID")
    bad = b"Subject: bin\r\nContent-Transfer-Encoding: binary\r\n\r\nA\nB\rC\r\n"
    await c.send(b"b2 APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(bad), bad))
    reply = (await c.until("b2"))[-1]
    assert reply.startswith(b"b2 NO [UNKNOWN-CTE]"), reply
    await c.send(b"b3 APPEND INBOX ~x{3}\r\nabc\r\n")
    assert (await c.until("b3"))[-1].startswith(b"b3 BAD")
    await c.cmd("s", "SELECT INBOX")
    got = b"".join(await c.cmd("f", "FETCH 1:* BODY.PEEK[TEXT]"))
    assert b"A\x00B\xff" in got and b"* 2 FETCH" not in got
    await c.close()


async def test_appendlimit_in_status_and_toobig(imap):
    c = await _login(imap)
    limit = imap.cfg.imap.max_literal
    status = await c.cmd("s", "STATUS INBOX (APPENDLIMIT MESSAGES)")
    assert f"APPENDLIMIT {limit} MESSAGES 0".encode() in status[0], status
    await c.close()


async def test_catenate_text_and_urls(imap):
    imap.deliver(message("source", body="the body of the source\n"))
    multipart = (b"Subject: mp\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
                 b"Content-Type: text/plain\n\nfirst part\n--b\nContent-Type: text/html\n\n"
                 b"<p>second</p>\n--b--\n")
    imap.deliver(multipart, folder="Sent")
    c = await _login(imap)
    status = (await c.cmd("s", "STATUS INBOX (UIDVALIDITY)"))[0]
    validity = int(re.search(rb"UIDVALIDITY (\d+)", status).group(1))
    head = b"Subject: built\r\nFrom: me@example.test\r\n\r\n"
    await c.send(b'c1 APPEND Drafts (\\Draft) CATENATE (TEXT {%d+}\r\n%s URL '
                 b'"/INBOX;UIDVALIDITY=%d/;UID=1/;SECTION=TEXT" TEXT {7+}\r\n--sep\r\n'
                 b' URL "imap://%s@localhost/Sent/;UID=1/;SECTION=2" URL '
                 b'"/Sent/;UID=1/;SECTION=1/;PARTIAL=0.5")\r\n'
                 % (len(head), head, validity, USER.replace("@", "%40").encode()))
    reply = (await c.until("c1"))[-1]
    assert reply.startswith(b"c1 OK [APPENDUID"), reply
    await c.cmd("x", "SELECT Drafts")
    got = b"".join(await c.cmd("f", "FETCH 1 (FLAGS BODY.PEEK[])"))
    expected = head + b"the body of the source\r\n--sep\r\n<p>second</p>first"
    assert b"{%d}\r\n%s)" % (len(expected), expected) in got, got
    assert b"\\Draft" in got
    await c.close()


async def test_catenate_bad_urls_are_refused(imap):
    imap.deliver(message("mine"))
    c = await _login(imap)
    status = (await c.cmd("s", "STATUS INBOX (UIDVALIDITY)"))[0]
    validity = int(re.search(rb"UIDVALIDITY (\d+)", status).group(1))
    bad_urls = [
        "imap://bob%40example.test@localhost/INBOX/;UID=1",  # someone else's mailbox
        "imap://alice@example.test@evil.example/INBOX/;UID=1",  # another server
        "/INBOX/;UID=9",  # no such message
        f"/INBOX;UIDVALIDITY={validity + 1}/;UID=1",  # another UIDVALIDITY
        "/Nope/;UID=1",  # no such mailbox
        "/INBOX/;UID=1/;SECTION=7",  # no such part
        "/INBOX/;UID=1/;URLAUTH=anonymous:internal:abc",  # URLAUTH is not offered
        "/INBOX",  # no message
        "/../../etc/passwd/;UID=1",  # outside the account
        "http://localhost/INBOX/;UID=1",
        "/INBOX/;UID=1]x",
    ]
    before = _files(imap, "Drafts")
    for n, url in enumerate(bad_urls):
        await c.send(f'u{n} APPEND Drafts CATENATE (TEXT {{3+}}\r\nab\n URL "{url}")\r\n')
        reply = (await c.until(f"u{n}"))[-1]
        assert reply.startswith(f"u{n} NO [BADURL ".encode()), (url, reply)
        assert b"]x" not in reply.split(b"]", 1)[0]
    assert _files(imap, "Drafts") == before
    # malformed CATENATE: BAD
    for n, text in enumerate(["CATENATE ()", "CATENATE (FOO x)", "CATENATE TEXT {1+}\r\nx"]):
        await c.send(f"v{n} APPEND Drafts {text}\r\n")
        assert (await c.until(f"v{n}"))[-1].startswith(f"v{n} BAD".encode())
    await c.close()


async def test_savedate_fetch_and_search(imap):
    """SAVEDATE (RFC 8514): when the message was stored, not its INTERNALDATE."""
    import datetime as dt

    c = await _login(imap)
    msg = _crlf(message("old"))
    await c.send(b'a APPEND INBOX "01-Jan-2001 10:00:00 +0000" {%d+}\r\n%s\r\n' % (len(msg), msg))
    assert (await c.until("a"))[-1].startswith(b"a OK")
    await c.cmd("s", "SELECT INBOX")
    got = (await c.cmd("f", "FETCH 1 (INTERNALDATE SAVEDATE)"))[0]
    saved = re.search(rb'SAVEDATE "([^"]+)"', got).group(1).decode()
    assert b"2001" in got.split(b"SAVEDATE")[0]  # INTERNALDATE as APPEND gave it
    when = dt.datetime.strptime(saved.strip(), "%d-%b-%Y %H:%M:%S %z")
    assert abs((when - dt.datetime.now(dt.UTC)).total_seconds()) < 3600
    today = dt.date.today().strftime("%d-%b-%Y")
    assert (await c.cmd("x", f"SEARCH SAVEDON {today}"))[0] == b"* SEARCH 1\r\n"
    assert (await c.cmd("y", f"SEARCH SAVEDBEFORE {today}"))[0] == b"* SEARCH\r\n"
    assert (await c.cmd("z", "SEARCH SAVEDATESUPPORTED SAVEDSINCE 1-Jan-2001"))[0] == \
        b"* SEARCH 1\r\n"
    assert (await c.cmd("w", "SEARCH ON 1-Jan-2001"))[0] == b"* SEARCH 1\r\n"
    await c.close()


async def test_catenate_beyond_the_appendlimit_is_toobig(config_factory, client_ssl):
    from tests.conftest import add_user, running
    from tests.imap.conftest import Server

    cfg = config_factory('[imap]\nmax_literal = "4KiB"')
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg) as daemon:
        imap = Server(cfg, cfg.port("imap", "imap"), cfg.port("imap", "imaps"), client_ssl,
                      daemon=daemon)
        imap.deliver(message("three k", body="z" * 3000 + "\n"))
        c = await _login(imap)
        caps = b"".join(await c.cmd("c", "CAPABILITY"))
        assert b" APPENDLIMIT=4096" in caps
        await c.send(b'a APPEND Drafts CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1")\r\n')
        reply = (await c.until("a"))[-1]
        assert reply.startswith(b"a NO [TOOBIG]"), reply
        await c.send(b'b APPEND Drafts CATENATE (URL "/INBOX/;UID=1" TEXT {2000+}\r\n'
                     + b"y" * 2000 + b")\r\n")
        assert (await c.until("b"))[-1].startswith(b"b NO [TOOBIG]")
        await c.send(b'c APPEND Drafts CATENATE (URL "/INBOX/;UID=1/;PARTIAL=0.100" '
                     b'URL "/INBOX/;UID=1/;PARTIAL=3000")\r\n')
        assert (await c.until("c"))[-1].startswith(b"c OK")
        assert _files(imap, "Drafts") and len(_files(imap, "Drafts")) == 1
        await c.close()
