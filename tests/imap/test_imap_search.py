"""SEARCH with every RFC 3501 key, CHARSET UTF-8, nested OR/NOT, sequence sets with ``*``."""

from __future__ import annotations

import os
import time

import pytest

from tests.imap.conftest import PASSWORD, USER, Raw

MSGS = [
    # subject, from, to, cc, date, body, flags, extra headers
    ("Lunch plans", "bob@example.test", "alice@example.test", "carol@example.test",
     "Mon, 02 Nov 2026 12:00:00 +0000", "Pizza at noon?\n", "S", ""),
    ("Quarterly report", "boss@corp.test", "alice@example.test", "",
     "Tue, 10 Nov 2026 09:00:00 +0000", "Numbers attached.\n" + "x" * 3000 + "\n", "FR",
     "X-Priority: 1\n"),
    ("=?UTF-8?B?R3LDvMOfZQ==?= aus Köln", "dieter@example.test", "alice@example.test", "",
     "Wed, 18 Nov 2026 18:30:00 +0100", "Schöne Grüße\n", "", "Bcc: hidden@example.test\n"),
    ("Draft idea", "alice@example.test", "dave@example.test", "",
     "Thu, 19 Nov 2026 07:00:00 +0000", "=48ello quoted\n", "DT",
     "Content-Transfer-Encoding: quoted-printable\n"),
]


def build(subject, frm, to, cc, date, body, extra) -> bytes:
    text = (f"From: {frm}\nTo: {to}\n" + (f"Cc: {cc}\n" if cc else "")
            + f"Subject: {subject}\nDate: {date}\n"
            + f"Content-Type: text/plain; charset=utf-8\n{extra}\n{body}")
    return text.encode()


@pytest.fixture
async def searcher(imap):
    # internal dates: 1, 5, 10, 20 November
    for (subject, frm, to, cc, date, body, flags, extra), day in zip(MSGS, (1, 5, 10, 20),
                                                                     strict=True):
        msg = imap.deliver(build(subject, frm, to, cc, date, body, extra), flags=flags)
        ts = time.mktime((2026, 11, day, 12, 0, 0, 0, 0, -1))
        os.utime(msg.path(imap.inbox.root), (ts, ts))
    c = await Raw.connect(imap)
    await c.cmd("L", f"LOGIN {USER} {PASSWORD}")
    await c.cmd("S", "SELECT INBOX")
    yield c
    await c.close()


async def search(c: Raw, query: str | bytes, uid: bool = False) -> list[int]:
    if isinstance(query, str):
        query = query.encode()
    r = await c.cmd("s", (b"UID " if uid else b"") + b"SEARCH " + query)
    assert r[-1].startswith(b"s OK"), r
    line = next(x for x in r if x.startswith(b"* SEARCH"))
    return [int(n) for n in line.split()[2:]]


CASES = [
    ("ALL", [1, 2, 3, 4]),
    ("ANSWERED", [2]), ("UNANSWERED", [1, 3, 4]),
    ("DELETED", [4]), ("UNDELETED", [1, 2, 3]),
    ("DRAFT", [4]), ("UNDRAFT", [1, 2, 3]),
    ("FLAGGED", [2]), ("UNFLAGGED", [1, 3, 4]),
    ("SEEN", [1]), ("UNSEEN", [2, 3, 4]),
    ("RECENT", [1, 2, 3, 4]), ("NEW", [2, 3, 4]), ("OLD", []),
    ("FROM boss", [2]), ("TO dave", [4]), ("CC carol", [1]), ("BCC hidden", [3]),
    ("SUBJECT lunch", [1]), ('SUBJECT "quarterly REPORT"', [2]),
    ("HEADER X-Priority 1", [2]), ('HEADER X-Priority ""', [2]),
    ("BODY pizza", [1]), ("BODY hello", [4]), ("TEXT boss", [2]), ("TEXT noon", [1]),
    ("LARGER 1000", [2]), ("SMALLER 1000", [1, 3, 4]),
    ("BEFORE 5-Nov-2026", [1]), ("ON 10-Nov-2026", [3]), ("SINCE 10-Nov-2026", [3, 4]),
    ("SENTBEFORE 10-Nov-2026", [1]), ("SENTON 18-Nov-2026", [3]),
    ('SENTSINCE "18-Nov-2026"', [3, 4]),
    ("2:*", [2, 3, 4]), ("*", [4]), ("1,3", [1, 3]), ("*:3", [3, 4]),
    ("UID 2:3", [2, 3]), ("UID *", [4]),
    ("3:2,1:2,4:9", [1, 2, 3, 4]), ("5:9", []), ("2,2,1", [1, 2]), ("9:*", [4]),
    ("UID 4:2,1", [1, 2, 3, 4]), ("UID 9:*", [4]), ("UID 5:7", []), ("UID 3,1:2,2", [1, 2, 3]),
    ("NOT SEEN", [2, 3, 4]), ("OR SEEN FLAGGED", [1, 2]),
    ("OR (SEEN FROM bob) (NOT OR DRAFT FLAGGED)", [1, 3]),
    ("NOT (OR SEEN (OR FLAGGED DRAFT))", [3]),
    ("UNSEEN UNDELETED SINCE 1-Nov-2026", [2, 3]),
    ("KEYWORD $Junk", []), ("UNKEYWORD $Junk", [1, 2, 3, 4]),
]


async def test_search_keys(searcher):
    """Every key on one session (one daemon start for the whole table)."""
    wrong = []
    for query, expected in CASES:
        got = await search(searcher, query)
        if got != expected:
            wrong.append((query, got, expected))
    assert not wrong


async def test_search_charset_utf8_and_uid(searcher):
    word = "grüße".encode()
    await searcher.send(b"a SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len(word))
    assert (await searcher.line()).startswith(b"+ ")
    await searcher.send(word + b"\r\n")
    r = await searcher.until("a")
    assert r[0] == b"* SEARCH 3\r\n"
    assert await search(searcher, 'CHARSET UTF-8 BODY "Schöne"') == [3]
    assert await search(searcher, "CHARSET US-ASCII FLAGGED") == [2]
    assert await search(searcher, "SEEN", uid=True) == [1]
    ok = await searcher.cmd("b", "STORE 3 +FLAGS (Urgent)")
    assert ok[-1].startswith(b"b OK")
    assert await search(searcher, "KEYWORD urgent") == [3]


async def test_number_sets_after_an_expunge(searcher):
    """Sequence and UID sets alone are answered by bisection: a UID gap, overlapping
    ranges and numbers past the end."""
    r = await searcher.cmd("d", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert r[-1].startswith(b"d OK")
    r = await searcher.cmd("e", "EXPUNGE")  # 2 and 4 (\\Deleted already) go
    assert r[-1].startswith(b"e OK")
    assert await search(searcher, "UID 2:3") == [2]  # UID 3 is now message 2
    assert await search(searcher, "UID 2:3", uid=True) == [3]
    assert await search(searcher, "3:2,1", uid=True) == [1, 3]
    assert await search(searcher, "UID 1:*,3") == [1, 2]
    assert await search(searcher, "UID 2", uid=True) == []
    assert await search(searcher, "UID 4:*", uid=True) == [3]  # * is the largest UID
