"""OBJECTID (RFC 8474), PREVIEW (RFC 8970) and ENABLE IMAP4rev2 (RFC 9051) over real
sockets."""

from __future__ import annotations

import re

import imapclient
import pytest

from mailstack.store.account import AccountStore
from tests.imap.conftest import PASSWORD, USER, Raw

HTML = (b"From: a@example.test\nSubject: html\nContent-Type: text/html; charset=utf-8\n\n"
        b"<html><head><title>t</title></head><body><p>Caf\xc3\xa9 &amp; cr\xc3\xa8me"
        b"</p>\n<p>" + b"long " * 100 + b"</p></body></html>\n")
REPLY = (b"From: b@example.test\nSubject: Re: html\nIn-Reply-To: <none@x>\n"
         b"References: <h@x>\nMessage-ID: <r@x>\n\nplain reply\n")
ORIGINAL = b"From: c@example.test\nSubject: orig\nMessage-ID: <h@x>\n\nthe original\n"


@pytest.fixture
async def client(imap):
    for m in (HTML, ORIGINAL, REPLY):
        imap.deliver(m)
    c = await Raw.connect(imap)
    await c.cmd("L", f"LOGIN {USER} {PASSWORD}")
    yield c
    await c.close()


async def test_objectid_items_keys_and_mailboxid(client, imap) -> None:
    r = await client.cmd("s", "SELECT INBOX")
    snap = AccountStore.open(imap.inbox.root).sync("INBOX")[0]
    assert f"* OK [MAILBOXID ({snap.mailbox_id})]".encode() in b"".join(r)
    r = await client.cmd("f", "FETCH 1:3 (EMAILID THREADID)")
    assert r[-1].startswith(b"f OK")
    got = [re.search(rb"EMAILID \((\w+)\) THREADID \((\w+)\)", x).groups() for x in r[:3]]
    assert [(e.encode(), t.encode()) for e, t in
            ((e.emailid, e.threadid) for e in snap.entries)] == got
    assert got[1][1] == got[2][1] != got[0][1]  # the reply is in the original's thread
    r = await client.cmd("e", f"SEARCH EMAILID {got[0][0].decode()}")
    assert r[0] == b"* SEARCH 1\r\n"
    r = await client.cmd("t", f"UID SEARCH THREADID {got[1][1].decode()}")
    assert r[0] == b"* SEARCH 2 3\r\n"
    r = await client.cmd("u", "STATUS INBOX (MESSAGES MAILBOXID)")
    assert r[0] == f"* STATUS INBOX (MESSAGES 3 MAILBOXID ({snap.mailbox_id}))\r\n".encode()
    r = await client.cmd("c", "CREATE Other")
    created = re.findall(rb"^c OK \[MAILBOXID \((\w+)\)\]", r[-1])
    r = await client.cmd("v", 'LIST "" Other RETURN (STATUS (MAILBOXID))')
    ids = re.findall(rb"MAILBOXID \((\w+)\)", b"".join(r))
    assert len(ids) == 1 and ids[0] != str(snap.mailbox_id).encode()
    assert created == ids
    r = await client.cmd("w", "RENAME Other Renamed")
    r = await client.cmd("x", "STATUS Renamed (MAILBOXID)")
    assert re.findall(rb"MAILBOXID \((\w+)\)", r[0]) == ids  # a rename keeps the id


async def test_preview(client) -> None:
    await client.cmd("s", "SELECT INBOX")
    r = await client.cmd("p", "FETCH 1:3 (PREVIEW)")
    assert r[-1].startswith(b"p OK")
    first = r[0]
    text = first.split(b"PREVIEW ", 1)[1]
    if text.startswith(b"{"):
        text = text.split(b"}\r\n", 1)[1]
    text = text.strip(b'")\r\n')
    assert text.startswith("Café & crème long long".encode())
    assert len(text.decode()) == 256
    assert b'PREVIEW "plain reply"' in r[2]
    r = await client.cmd("l", "UID FETCH 2 (UID PREVIEW (LAZY) FLAGS)")
    assert b'PREVIEW "the original"' in r[0] and b"FLAGS (" in r[0]
    r = await client.cmd("b", "FETCH 1 (PREVIEW (FUZZY))")
    assert r[-1].startswith(b"b BAD")
    # PREVIEW does not set \Seen
    r = await client.cmd("f", "FETCH 1:3 (FLAGS)")
    assert all(b"\\Seen" not in x for x in r)


async def test_enable_imap4rev2(client, imap) -> None:
    r = await client.cmd("c", "CAPABILITY")
    assert b" IMAP4rev2 " in r[0] and b" IMAP4rev1 " in r[0]
    r = await client.cmd("e", "ENABLE IMAP4rev2")
    assert r[0] == b"* ENABLED IMAP4rev2\r\n"
    r = await client.cmd("s", "SELECT INBOX")
    text = b"".join(r)
    assert b"* 3 EXISTS" in text and b"RECENT" not in text and b"[UNSEEN" not in text
    assert b'* LIST () "." INBOX\r\n' in text
    r = await client.cmd("f", "FETCH 1 (FLAGS)")
    assert r[0] == b"* 1 FETCH (FLAGS ())\r\n"  # no \Recent
    r = await client.cmd("q", "SEARCH FROM example.test")
    assert r[0] == b'* ESEARCH (TAG "q") ALL 1:3\r\n'
    r = await client.cmd("u", "UID SEARCH NOT ALL")
    assert r[0] == b'* ESEARCH (TAG "u") UID\r\n'
    imap.deliver(b"Subject: new\n\nnew\n")
    r = await client.cmd("n", "NOOP")
    assert b"* 4 EXISTS\r\n" in r and not any(b"RECENT" in x for x in r)
    await client.cmd("d", "STORE 1,3 +FLAGS (\\Deleted)")
    r = await client.cmd("st", "STATUS INBOX (MESSAGES DELETED)")
    assert r[0] == b"* STATUS INBOX (MESSAGES 4 DELETED 2)\r\n"
    r = await client.cmd("e2", "ENABLE IMAP4rev2")  # once only
    assert r[0] == b"* ENABLED\r\n"


async def test_rev1_session_unchanged(client) -> None:
    r = await client.cmd("s", "SELECT INBOX")
    assert b"* 3 RECENT\r\n" in r
    r = await client.cmd("q", "SEARCH ALL")
    assert r[0] == b"* SEARCH 1 2 3\r\n"


def test_imapclient_objectid_preview(imap) -> None:
    for m in (HTML, ORIGINAL, REPLY):
        imap.deliver(m)
    with imapclient.IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
        c.login(USER, PASSWORD)
        assert c.has_capability("OBJECTID") and c.has_capability("PREVIEW")
        c.select_folder("INBOX")
        data = c.fetch([2, 3], ["EMAILID", "THREADID", "PREVIEW"])
        assert data[3][b"PREVIEW"] == b"plain reply"
        assert data[2][b"THREADID"] == data[3][b"THREADID"]
        assert data[2][b"EMAILID"] != data[3][b"EMAILID"]


async def test_imap4rev2_mailbox_names_are_utf8(imap) -> None:
    rev2 = await Raw.connect(imap)
    await rev2.cmd("L", f"LOGIN {USER} {PASSWORD}")
    await rev2.cmd("e", "ENABLE IMAP4rev2")
    r = await rev2.cmd("c", 'CREATE "Café.Crème"'.encode())
    assert r[-1].startswith(b"c OK"), r
    r = await rev2.cmd("c2", 'CREATE "R&D"')
    assert r[-1].startswith(b"c2 OK"), r
    r = await rev2.cmd("l", 'LIST "" "Caf*"')
    text = b"".join(r)
    assert "Café".encode() in text and "Café.Crème".encode() in text and b"&AOk" not in text
    r = await rev2.cmd("s", 'SELECT "Café.Crème"'.encode())
    assert "* LIST () \".\" {12}\r\nCafé.Crème".encode() in b"".join(r), r
    r = await rev2.cmd("t", 'STATUS "R&D" (MESSAGES)')
    assert r[0] == b'* STATUS R&D (MESSAGES 0)\r\n'
    rev1 = await Raw.connect(imap)
    await rev1.cmd("L", f"LOGIN {USER} {PASSWORD}")
    r = await rev1.cmd("l", 'LIST "" "*"')
    text = b"".join(r)
    assert b"Caf&AOk-.Cr&AOg-me" in text and b"R&-D" in text
    r = await rev1.cmd("a", 'SELECT "Café"'.encode())  # 8-bit is not modified UTF-7
    assert r[-1].startswith(b"a NO [CANNOT]")
    await rev1.close()
    await rev2.close()
