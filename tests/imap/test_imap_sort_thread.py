"""SORT (RFC 5256, 5957), THREAD=REFERENCES/ORDEREDSUBJECT, ESEARCH (4731), ESORT and PARTIAL
(5267, 9394) and SEARCHRES (5182) over real sockets, with a raw client and imapclient."""

from __future__ import annotations

import asyncio
import os
import time

import imapclient
import pytest

from tests.imap.conftest import PASSWORD, USER, Raw, session

# (from, to, subject, Date, message-id, references, body)
MSGS = [
    ("Zed <zed@a.test>", "amy@b.test", "Planning", "Mon, 02 Nov 2026 10:00:00 +0000",
     "p1@x", "", "short\n"),
    ("adam@c.test", "Bob <bob@b.test>", "Re: Planning", "Mon, 02 Nov 2026 12:00:00 +0000",
     "p2@x", "<p1@x>", "a somewhat longer body\n" * 5),
    ("Carl <carl@d.test>", "zoe@b.test", "[team] Budget", "Sun, 01 Nov 2026 09:00:00 +0000",
     "b1@x", "", "budget\n"),
    ("Beth <beth@e.test>", "amy@b.test", "Re: Re: Planning", "Tue, 03 Nov 2026 08:00:00 +0000",
     "p3@x", "<p1@x> <p2@x>", "x\n"),
    ("dora@f.test", "carl@d.test", "Re: Budget", "Wed, 04 Nov 2026 08:00:00 -0500",
     "b2@x", "", "y\n" * 40),
    ("Eve <eve@g.test>", "", "Lonely", "", "l1@x", "<missing@x>", "z\n"),
]


def _build(frm, to, subject, date, mid, refs, body) -> bytes:
    head = f"From: {frm}\n" + (f"To: {to}\n" if to else "") + f"Subject: {subject}\n"
    head += (f"Date: {date}\n" if date else "") + f"Message-ID: <{mid}>\n"
    head += f"References: {refs}\n" if refs else ""
    return (head + "\n" + body).encode()


@pytest.fixture
async def box(imap):
    for i, m in enumerate(MSGS):
        msg = imap.deliver(_build(*m))
        ts = time.mktime((2026, 11, 20 - i, 12, 0, 0, 0, 0, -1))  # arrival: newest first
        os.utime(msg.path(imap.inbox.root), (ts, ts))
    c = await session(imap)
    yield c
    await c.close()


def _untagged(r: list[bytes], word: bytes) -> bytes:
    lines = [x for x in r if x.startswith(b"* " + word)]
    assert len(lines) == 1, r
    return lines[0].rstrip(b"\r\n")


async def _sort(c: Raw, query: str) -> list[int]:
    r = await c.cmd("s", query)
    assert r[-1].startswith(b"s OK"), r
    return [int(n) for n in _untagged(r, b"SORT").split()[2:]]


async def test_capabilities(box) -> None:
    r = await box.cmd("c", "CAPABILITY")
    caps = _untagged(r, b"CAPABILITY").split()
    for cap in (b"ESEARCH", b"SEARCHRES", b"SORT", b"SORT=DISPLAY", b"ESORT",
                b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT", b"CONTEXT=SEARCH",
                b"CONTEXT=SORT", b"OBJECTID", b"PREVIEW", b"IMAP4rev2"):
        assert cap in caps


async def test_sort_keys(box) -> None:
    assert await _sort(box, "SORT (ARRIVAL) UTF-8 ALL") == [6, 5, 4, 3, 2, 1]
    assert await _sort(box, "SORT (REVERSE ARRIVAL) UTF-8 ALL") == [1, 2, 3, 4, 5, 6]
    # DATE: the Date header in UTC; no Date: the internal date (20 - 5 = 15 Nov)
    assert await _sort(box, "SORT (DATE) UTF-8 ALL") == [3, 1, 2, 4, 5, 6]
    # SUBJECT: base subjects "Budget" x2, "Lonely", "Planning" x3; ties in mailbox order
    assert await _sort(box, "SORT (SUBJECT) UTF-8 ALL") == [3, 5, 6, 1, 2, 4]
    assert await _sort(box, "SORT (SUBJECT REVERSE DATE) UTF-8 ALL") == [5, 3, 6, 4, 2, 1]
    # FROM: the local part, ASCII case-insensitive
    assert await _sort(box, "SORT (FROM) UTF-8 ALL") == [2, 4, 3, 5, 6, 1]
    # DISPLAYFROM: the display name, else the address
    assert await _sort(box, "SORT (DISPLAYFROM) UTF-8 ALL") == [2, 4, 3, 5, 6, 1]
    assert await _sort(box, "SORT (DISPLAYTO) UTF-8 ALL") == [6, 1, 4, 2, 5, 3]
    assert await _sort(box, "SORT (TO) UTF-8 ALL") == [6, 1, 4, 2, 5, 3]
    assert await _sort(box, "SORT (CC) UTF-8 ALL") == [1, 2, 3, 4, 5, 6]
    assert await _sort(box, "SORT (SIZE) UTF-8 ALL") == [6, 1, 3, 4, 5, 2]
    # with search keys, and as UID SORT
    assert await _sort(box, "SORT (SUBJECT) UTF-8 FROM carl") == [3]
    r = await box.cmd("u", "UID SORT (REVERSE SIZE) US-ASCII NOT SUBJECT budget")
    assert _untagged(r, b"SORT").split()[2:] == [b"2", b"4", b"1", b"6"]


async def test_esort_and_partial(box) -> None:
    r = await box.cmd("e", "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "e") MIN 3 MAX 6 COUNT 6 ALL 3,1:2,4:6'
    r = await box.cmd("p", "UID SORT RETURN (PARTIAL 2:3) (DATE) UTF-8 ALL")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "p") UID PARTIAL (2:3 1:2)'
    r = await box.cmd("q", "SORT RETURN (PARTIAL -1:-2) (DATE) UTF-8 ALL")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "q") PARTIAL (-1:-2 5:6)'
    r = await box.cmd("r", "SEARCH RETURN (PARTIAL 4:2) ALL")  # the range comes back ordered
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "r") PARTIAL (2:4 2:4)'
    r = await box.cmd("s", "SEARCH RETURN (PARTIAL 5:9) ALL")  # partly past the end
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "s") PARTIAL (5:9 5:6)'


async def test_sort_return_after_the_charset(box) -> None:
    """RETURN written after the charset (imaptest's sort-partial does; RFC 5267 puts it
    right after SORT) is taken the same way; RETURN in both places is BAD."""
    for where in ("SORT RETURN (PARTIAL 4:2 COUNT) (DATE) UTF-8 ALL",
                  "SORT (DATE) UTF-8 RETURN (PARTIAL 4:2 COUNT) ALL"):
        r = await box.cmd("p", where)
        assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "p") COUNT 6 PARTIAL (2:4 1:2,4)', r
    r = await box.cmd("u", "UID SORT (REVERSE DATE) us-ascii RETURN (MIN) NOT SUBJECT budget")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "u") UID MIN 6', r
    for bad in ("SORT RETURN (MIN) (DATE) UTF-8 RETURN (MAX) ALL",
                "SORT (DATE) UTF-8 RETURN (PARTIAL 1) ALL", "SORT (DATE) UTF-8 RETURN ALL",
                "SORT (DATE) RETURN (MIN) UTF-8 ALL", "SORT (DATE) UTF-8 ALL RETURN (MIN)"):
        r = await box.cmd("b", bad)
        assert r[-1].startswith(b"b BAD"), (bad, r)


async def test_esearch(box) -> None:
    r = await box.cmd("a", "SEARCH RETURN (MIN MAX COUNT) SUBJECT planning")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "a") MIN 1 MAX 4 COUNT 3'
    r = await box.cmd("b", "UID SEARCH RETURN () ALL")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "b") UID ALL 1:6'
    r = await box.cmd("c", "SEARCH RETURN (MIN MAX ALL COUNT) SUBJECT nothing-like-this")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "c") COUNT 0'
    r = await box.cmd("d", "SEARCH RETURN (PARTIAL 1:2) NOT SUBJECT planning")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "d") PARTIAL (1:2 3,5)'
    r = await box.cmd("f", "SEARCH RETURN (COUNT) MODSEQ 1")
    assert _untagged(r, b"ESEARCH").startswith(b'* ESEARCH (TAG "f") COUNT 6 MODSEQ ')
    assert not [x for x in r if x.startswith(b"* SEARCH")]


async def test_searchres(box) -> None:
    # before any SEARCH ... SAVE, $ is empty: not an error
    r = await box.cmd("a", "SEARCH $")
    assert _untagged(r, b"SEARCH") == b"* SEARCH" and r[-1].startswith(b"a OK")
    r = await box.cmd("b", "FETCH $ (FLAGS)")
    assert r[-1].startswith(b"b OK") and not [x for x in r if b"FETCH (" in x]
    r = await box.cmd("c", "SEARCH RETURN (SAVE) SUBJECT budget")
    assert r[-1].startswith(b"c OK") and not [x for x in r if x.startswith(b"* ")]
    r = await box.cmd("d", "UID SEARCH UID $")
    assert _untagged(r, b"SEARCH") == b"* SEARCH 3 5"
    r = await box.cmd("e", "STORE $ +FLAGS (\\Flagged)")
    assert sorted(x.split()[1] for x in r if b"FETCH" in x) == [b"3", b"5"]
    r = await box.cmd("f", "SEARCH OR $ SUBJECT lonely")
    assert _untagged(r, b"SEARCH") == b"* SEARCH 3 5 6"
    # SAVE with MIN alone keeps only the minimum (RFC 5182 §2.4), and ESEARCH still answers
    r = await box.cmd("g", "SEARCH RETURN (SAVE MIN) SUBJECT planning")
    assert _untagged(r, b"ESEARCH") == b'* ESEARCH (TAG "g") MIN 1'
    r = await box.cmd("h", "UID FETCH $ (UID)")
    assert [x for x in r if b"FETCH (" in x] == [b"* 1 FETCH (UID 1)\r\n"]
    r = await box.cmd("i", "SORT RETURN (SAVE) (REVERSE DATE) UTF-8 SUBJECT budget")
    r = await box.cmd("j", "SEARCH $")
    assert _untagged(r, b"SEARCH") == b"* SEARCH 3 5"


async def test_thread_references(box) -> None:
    r = await box.cmd("t", "THREAD REFERENCES UTF-8 ALL")
    assert r[-1].startswith(b"t OK"), r
    # 1 <- 2 <- 4 by References; 5 "Re: Budget" joins 3 "[team] Budget" by subject;
    # 6 names a missing parent (a dummy with one child: promoted)
    assert _untagged(r, b"THREAD") == b"* THREAD (3 5)(1 2 4)(6)"
    r = await box.cmd("u", "UID THREAD REFERENCES UTF-8 NOT FROM adam")
    assert _untagged(r, b"THREAD") == b"* THREAD (3 5)(1 4)(6)"
    # ORDEREDSUBJECT: the first message of a subject is the parent of all the others
    r = await box.cmd("o", "THREAD ORDEREDSUBJECT UTF-8 ALL")
    assert _untagged(r, b"THREAD") == b"* THREAD (3 5)(1 (2)(4))(6)"
    r = await box.cmd("n", "THREAD REFERENCES UTF-8 SUBJECT nothing-like-this")
    assert _untagged(r, b"THREAD") == b"* THREAD"


async def test_thread_siblings_and_dummies(imap) -> None:
    # two replies to one parent (siblings), and two children of a missing parent at the top
    msgs = [("a@x", "", "Root", "Mon, 02 Nov 2026 10:00:00 +0000", "r@x", "", "."),
            ("b@x", "", "Re: Root", "Mon, 02 Nov 2026 11:00:00 +0000", "c1@x", "<r@x>", "."),
            ("c@x", "", "Re: Root", "Mon, 02 Nov 2026 10:30:00 +0000", "c2@x", "<r@x>", "."),
            ("d@x", "", "Ghost", "Mon, 02 Nov 2026 09:00:00 +0000", "g1@x", "<gone@x>", "."),
            ("e@x", "", "Re: Ghost", "Mon, 02 Nov 2026 09:30:00 +0000", "g2@x", "<gone@x>", ".")]
    for m in msgs:
        imap.deliver(_build(*m))
    c = await session(imap)
    r = await c.cmd("t", "THREAD REFERENCES UTF-8 ALL")
    assert _untagged(r, b"THREAD") == b"* THREAD ((4)(5))(1 (3)(2))"
    await c.close()


@pytest.mark.parametrize("query", [
    "SORT (FOO) UTF-8 ALL", "SORT () UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL",
    "SORT (REVERSE REVERSE DATE) UTF-8 ALL", "SORT DATE UTF-8 ALL", "SORT (DATE) ALL",
    "SORT (DATE)", "SORT (DATE) UTF-8", "THREAD FOO UTF-8 ALL", "THREAD REFERENCES",
    "THREAD REFERENCES UTF-8 BOGUS", "SEARCH RETURN (BOGUS) ALL", "SEARCH RETURN (MIN MIN) ALL",
    "SEARCH RETURN MIN ALL", "SEARCH RETURN (PARTIAL 1:-5) ALL", "SEARCH RETURN (PARTIAL 0:5) ALL",
    "SEARCH RETURN (ALL PARTIAL 1:5) ALL", "SORT RETURN (PARTIAL 1:2 ALL) (DATE) UTF-8 ALL",
    "SEARCH RETURN (PARTIAL 1) ALL", "SEARCH RETURN (PARTIAL 1:*) ALL",
    "SORT (" + "DATE " * 40 + "SIZE) UTF-8 ALL",
])
async def test_bad_criteria(box, query: str) -> None:
    r = await box.cmd("x", query)
    assert r[-1].startswith(b"x BAD"), (query, r)
    r = await box.cmd("y", "NOOP")  # the session goes on
    assert r[-1].startswith(b"y OK")


async def test_unknown_charset(box) -> None:
    for query in ("SORT (DATE) KOI8-R ALL", "THREAD REFERENCES X-UNKNOWN ALL"):
        r = await box.cmd("x", query)
        assert r[-1].startswith(b"x NO [BADCHARSET"), r


def test_imapclient_sort_thread_esearch(imap) -> None:
    for m in MSGS:
        imap.deliver(_build(*m))

    def run() -> None:
        with imapclient.IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
            c.login(USER, PASSWORD)
            c.select_folder("INBOX")
            assert c.has_capability("SORT") and c.has_capability("THREAD=REFERENCES")
            assert c.sort(["SUBJECT", "DATE"]) == [3, 5, 6, 1, 2, 4]
            assert c.sort("REVERSE DATE", ["FROM", "carl"]) == [3]
            assert c.thread("REFERENCES") == ((3, 5), (1, 2, 4), (6,))
            assert c.thread("ORDEREDSUBJECT", ["NOT", "SUBJECT", "budget"]) \
                == ((1, (2,), (4,)), (6,))
            tag = c._imap._new_tag().decode()  # ESEARCH is not wrapped: a raw round trip
            c._imap.send(f"{tag} UID SEARCH RETURN (MIN MAX COUNT) ALL\r\n".encode())
            data = b""
            while not data.endswith(f"{tag} OK".encode()) and tag.encode() + b" " not in data:
                data += c._imap.readline()
            assert b"ESEARCH" in data and b"MIN 1 MAX 6 COUNT 6" in data
    run()


async def test_sort_and_thread_see_new_mail(box, imap) -> None:
    r = await box.cmd("t", "THREAD REFERENCES UTF-8 ALL")
    assert _untagged(r, b"THREAD") == b"* THREAD (3 5)(1 2 4)(6)"
    imap.deliver(_build("aaron@z.test", "", "Re: Lonely", "", "n@x", "<l1@x>", "."))
    await asyncio.sleep(0)
    r = await box.cmd("n", "NOOP")
    assert any(b"EXISTS" in x for x in r)
    assert (await _sort(box, "SORT (FROM) UTF-8 ALL"))[0] == 7
    r = await box.cmd("t", "THREAD REFERENCES UTF-8 ALL")  # not the list kept from before
    assert _untagged(r, b"THREAD") == b"* THREAD (3 5)(1 2 4)(6 7)"


async def test_thread_hostile_references(imap) -> None:
    """A 1,500-message reply chain (each naming up to 100 ancestors), delivered newest first,
    plus two messages naming each other and one naming itself: one chain, no loop, the
    session goes on (nothing recursive: the depth is the chain's length)."""
    n = 1500
    for i in reversed(range(n)):
        refs = " ".join(f"<c{j}@x>" for j in range(max(0, i - 100), i))
        imap.deliver(_build("a@x", "", f"Re: chain {i}" if i else "chain 0",
                            f"Mon, 02 Nov 2026 10:{i // 60 % 60:02d}:{i % 60:02d} +0000",
                            f"c{i}@x", refs, "."))
    imap.deliver(_build("b@x", "", "loop a", "", "la@x", "<lb@x>", "."))
    imap.deliver(_build("b@x", "", "loop b", "", "lb@x", "<la@x>", "."))
    imap.deliver(_build("b@x", "", "self", "", "s@x", "<s@x> <s@x>", "."))
    c = await session(imap)
    r = await c.cmd("t", "UID THREAD REFERENCES UTF-8 ALL", timeout=60)
    assert r[-1].startswith(b"t OK"), r[-1]
    line = _untagged(r, b"THREAD")
    chain = "(" + " ".join(str(n - i) for i in range(n)) + ")"
    assert line.startswith(b"* THREAD " + chain.encode()), line[:200]
    assert line.endswith(b"(1501 1502)(1503)") or line.endswith(b"(1502 1501)(1503)"), line[-80:]
    r = await c.cmd("o", "THREAD ORDEREDSUBJECT UTF-8 ALL", timeout=60)
    assert r[-1].startswith(b"o OK")
    await c.close()


def test_gc_pause_nests_and_restores() -> None:
    import gc

    from mailstack.imap.thread import gc_paused
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


async def test_thread_loop_through_a_reference_and_after_an_expunge(imap) -> None:
    """imaptest's ``thread`` case: no Date headers (the internal dates order), message 2
    names 3's id before 1's, and 3 names 2, which would close a loop. 3 stays the root;
    after message 1 is expunged its container is a dummy in the middle and goes."""
    when = [(17, 6, 23), (15, 6, 23), (16, 6, 25)]
    for (mid, refs), (h, m, sec) in zip((("a@b", ""), ("b@b", "<c@b> <a@b>"),
                                         ("c@b", "<b@b>")), when, strict=True):
        head = f"Message-ID: <{mid}>\n" + (f"References: {refs}\n" if refs else "")
        msg = imap.deliver(head + "\nbody\n")
        ts = time.mktime((2008, 2, 22, h, m, sec, 0, 0, -1))
        os.utime(msg.path(imap.inbox.root), (ts, ts))
    c = await session(imap)
    r = await c.cmd("t", "THREAD REFERENCES US-ASCII ALL")
    assert _untagged(r, b"THREAD") == b"* THREAD (3 1 2)"
    await c.cmd("d", "STORE 1 +FLAGS (\\Deleted)")
    await c.cmd("e", "EXPUNGE")
    r = await c.cmd("u", "THREAD REFERENCES US-ASCII ALL")
    assert _untagged(r, b"THREAD") == b"* THREAD (2 1)"
    await c.close()
