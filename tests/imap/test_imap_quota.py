"""QUOTA (RFC 9208) with imapclient, STATUS=SIZE (8438) and the STATUS items of QUOTA."""

from __future__ import annotations

import asyncio
import re

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.imapclient import Quota

from tests.imap.conftest import PASSWORD, USER, Raw, message


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


async def test_quota_with_imapclient(imap_quota):
    imap = imap_quota
    first = imap.deliver(message("one", body="a" * 3000 + "\n"))
    second = imap.deliver(message("two"), folder="Sent")

    def go() -> None:
        with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
            c.login(USER, PASSWORD)
            assert b"QUOTA=RES-STORAGE" in c.capabilities()
            roots, quotas = c.get_quota_root("INBOX")
            assert roots.quota_roots == [""]
            by_resource = {q.resource: q for q in quotas}
            assert by_resource["MESSAGE"].usage == 2 and by_resource["MESSAGE"].limit == 3
            assert by_resource["STORAGE"].limit == 10
            assert by_resource["STORAGE"].usage == -(-(first.vsize + second.vsize) // 1024)
            assert {q.resource for q in c.get_quota("INBOX")} == {"STORAGE", "MESSAGE"}
            with pytest.raises(IMAPClientError, match="NOPERM"):
                c.set_quota([Quota("", "STORAGE", 0, 100000)])
            c.logout()

    await asyncio.to_thread(go)


async def test_getquota_and_setquota_raw(imap_quota):
    c = await Raw.connect(imap_quota)
    await c.cmd("l", f"LOGIN {USER} {PASSWORD}")
    got = await c.cmd("q", 'GETQUOTA ""')
    assert got[0] == b'* QUOTA "" (STORAGE 0 10 MESSAGE 0 3)\r\n', got
    assert (await c.cmd("n", "GETQUOTA other"))[-1].startswith(b"n NO [NONEXISTENT]")
    assert (await c.cmd("r", "GETQUOTAROOT Nope"))[-1].startswith(b"r NO")
    assert (await c.cmd("s", 'SETQUOTA "" (STORAGE 100)'))[-1].startswith(b"s NO [NOPERM]")
    assert (await c.cmd("b", "SETQUOTA")).__getitem__(-1).startswith(b"b BAD")
    await c.close()


async def test_message_quota_limits_append_and_copy(imap_quota):
    imap = imap_quota
    for i in range(2):
        imap.deliver(message(f"m{i}"))
    c = await Raw.connect(imap)
    await c.cmd("l", f"LOGIN {USER} {PASSWORD}")
    one = _crlf(message("three"))
    await c.send(b"a1 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(one), one, len(one), one))
    assert (await c.until("a1"))[-1].startswith(b"a1 NO [OVERQUOTA]")
    await c.send(b"a2 APPEND INBOX {%d+}\r\n%s\r\n" % (len(one), one))
    assert (await c.until("a2"))[-1].startswith(b"a2 OK")
    await c.cmd("s", "SELECT INBOX")
    assert (await c.cmd("c", "COPY 1 Trash"))[-1].startswith(b"c NO [OVERQUOTA]")
    assert (await c.cmd("m", "MOVE 1 Trash"))[-1].startswith(b"m OK")  # takes no more room
    await c.close()


async def test_status_size_and_deleted(imap):
    a = imap.deliver(message("one", body="x" * 100 + "\n"))
    b = imap.deliver(message("two"), flags="T")  # \Deleted
    c = await Raw.connect(imap)
    await c.cmd("l", f"LOGIN {USER} {PASSWORD}")
    line = (await c.cmd("s", "STATUS INBOX (SIZE DELETED DELETED-STORAGE MESSAGES)"))[0]
    m = re.search(rb"SIZE (\d+) DELETED (\d+) DELETED-STORAGE (\d+) MESSAGES 2", line)
    assert m, line
    assert int(m.group(1)) == a.vsize + b.vsize
    assert int(m.group(2)) == 1 and int(m.group(3)) == -(-b.vsize // 1024)
    # no quota configured: a QUOTAROOT with no root, and GETQUOTA of "" is NO
    got = await c.cmd("r", "GETQUOTAROOT INBOX")
    assert got[0] == b"* QUOTAROOT INBOX\r\n" and got[-1].startswith(b"r OK")
    assert (await c.cmd("q", 'GETQUOTA ""'))[-1].startswith(b"q NO")
    # LIST-STATUS with the new items
    got = await c.cmd("x", 'LIST "" INBOX RETURN (STATUS (SIZE APPENDLIMIT))')
    assert any(b"STATUS INBOX (SIZE" in g and b"APPENDLIMIT" in g for g in got), got
    await c.close()
