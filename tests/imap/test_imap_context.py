"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4): live results updated with ADDTO and
REMOVEFROM as another client and deliveries change the mailbox; CANCELUPDATE; the limit."""

from __future__ import annotations

import asyncio

import pytest

from tests.imap.conftest import message, session


@pytest.fixture
async def pair(imap):
    for subject in ("delta", "alpha", "charlie"):
        imap.deliver(message(subject))
    a, b = await session(imap), await session(imap)
    yield a, b
    await a.close()
    await b.close()


def _esearch(r: list[bytes]) -> list[bytes]:
    return [x.rstrip(b"\r\n") for x in r if x.startswith(b"* ESEARCH")]


async def test_search_context_follows_flags_deliveries_and_expunges(pair, imap) -> None:
    a, b = pair
    r = await a.cmd("u1", "UID SEARCH RETURN (UPDATE) UNSEEN")
    assert _esearch(r) == [b'* ESEARCH (TAG "u1") UID ALL 1:3']
    r = await a.cmd("s1", "SEARCH RETURN (UPDATE COUNT) NOT SUBJECT alpha")
    assert _esearch(r) == [b'* ESEARCH (TAG "s1") COUNT 2']
    await b.cmd("b1", "STORE 2 +FLAGS (\\Seen)")
    r = await a.cmd("n1", "NOOP")
    assert _esearch(r) == [b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 2)']
    imap.deliver(message("echo"))
    r = await a.cmd("n2", "NOOP")
    assert _esearch(r) == [b'* ESEARCH (TAG "u1") UID ADDTO (0 4)',
                           b'* ESEARCH (TAG "s1") ADDTO (0 4)']
    assert r.index(b"* 4 EXISTS\r\n") < r.index(b'* ESEARCH (TAG "u1") UID ADDTO (0 4)\r\n')
    await b.cmd("b2", "STORE 1 +FLAGS (\\Deleted)")
    await b.cmd("b3", "EXPUNGE")
    r = await a.cmd("n3", "NOOP")
    # removals come first, numbered as before the EXPUNGE
    assert r[:3] == [b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 1)\r\n',
                     b'* ESEARCH (TAG "s1") REMOVEFROM (0 1)\r\n', b"* 1 EXPUNGE\r\n"]
    # this session's own STORE updates its contexts too
    r = await a.cmd("a4", "STORE 1:* +FLAGS (\\Seen)")
    assert b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 3:4)\r\n' in r
    r = await a.cmd("c1", 'CANCELUPDATE "u1"')
    assert r[-1].startswith(b"c1 OK")
    await a.cmd("a5", "STORE 1:* -FLAGS (\\Seen)")
    r = await a.cmd("n4", "NOOP")
    assert _esearch(r) == []
    r = await a.cmd("c2", 'CANCELUPDATE "u1"')
    assert r[-1].startswith(b"c2 NO")


async def test_sort_context_positions(pair, imap) -> None:
    a, _ = pair
    r = await a.cmd("t1", "UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL")
    assert _esearch(r) == [b'* ESEARCH (TAG "t1") UID ALL 2:3,1']
    imap.deliver(message("bravo"))
    imap.deliver(message("zulu"))
    r = await a.cmd("n1", "NOOP")
    # alpha, bravo, charlie, delta, zulu: bravo lands at 2, zulu at 5
    assert _esearch(r) == [b'* ESEARCH (TAG "t1") UID ADDTO (2 4 5 5)']
    await a.cmd("d", "STORE 2,3 +FLAGS (\\Deleted)")
    r = await a.cmd("e", "EXPUNGE")
    # charlie (position 3) and alpha (position 1), last position first
    assert _esearch(r) == [b'* ESEARCH (TAG "t1") UID REMOVEFROM (3 3 1 2)']


async def test_context_limit_and_reselect(pair) -> None:
    a, _ = pair
    for i in range(8):
        r = await a.cmd(f"k{i}", "SEARCH RETURN (UPDATE) ALL")
        assert not any(b"NOUPDATE" in x for x in r)
    r = await a.cmd("k8", "SEARCH RETURN (UPDATE) ALL")
    assert b'* NO [NOUPDATE "k8"]' in r[1] and r[-1].startswith(b"k8 OK")
    await a.cmd("S2", "SELECT INBOX")  # contexts end with the selection
    r = await a.cmd("k9", "SEARCH RETURN (UPDATE) ALL")
    assert not any(b"NOUPDATE" in x for x in r)


async def test_update_with_a_tag_in_use_is_bad(pair, imap) -> None:
    """RFC 5267 §4.3: UPDATE with the tag of a live search is rejected with BAD (nothing is
    searched, the live search goes on); the same tag without UPDATE, or once cancelled, is
    fine."""
    a, _ = pair
    r = await a.cmd("t", "UID SEARCH RETURN (UPDATE) UNSEEN")
    assert _esearch(r) == [b'* ESEARCH (TAG "t") UID ALL 1:3']
    for again in ("SEARCH RETURN (UPDATE COUNT) ALL", "SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL",
                  "SORT (SUBJECT) UTF-8 RETURN (UPDATE) ALL"):
        r = await a.cmd("t", again)
        assert r[-1].startswith(b"t BAD") and _esearch(r) == [], (again, r)
    r = await a.cmd("t", "SEARCH RETURN (COUNT) ALL")
    assert _esearch(r) == [b'* ESEARCH (TAG "t") COUNT 3'] and r[-1].startswith(b"t OK")
    imap.deliver(message("golf"))
    r = await a.cmd("n", "NOOP")
    assert _esearch(r) == [b'* ESEARCH (TAG "t") UID ADDTO (0 4)']  # the first one, alone
    await a.cmd("c", 'CANCELUPDATE "t"')
    r = await a.cmd("t", "SEARCH RETURN (UPDATE COUNT) ALL")
    assert _esearch(r) == [b'* ESEARCH (TAG "t") COUNT 4'] and r[-1].startswith(b"t OK")


async def test_context_update_during_idle(pair, imap) -> None:
    a, _ = pair
    await a.cmd("u", "UID SEARCH RETURN (UPDATE MIN) SUBJECT hotel")
    await a.send("i IDLE\r\n")
    assert (await a.line()).startswith(b"+")
    imap.deliver(message("hotel"))
    lines = []
    while b'ADDTO' not in b"".join(lines):
        lines.append(await asyncio.wait_for(a.line(), 10))
    assert b'* ESEARCH (TAG "u") UID ADDTO (0 4)\r\n' in lines
    await a.send("DONE\r\n")
    r = await a.until("i")
    assert r[-1].startswith(b"i OK")


async def test_sort_context_gains_and_loses_at_once(pair, imap) -> None:
    """A non-UID sorted context: in one update a message leaves (another session expunges
    it), one matches again (its flag is cleared) and one arrives. REMOVEFROM comes first, in
    the numbering before the EXPUNGE and positions of the old result; ADDTO after EXISTS, in
    the new numbering, at ascending final positions (RFC 5267 §4.3)."""
    a, b = pair  # 1 delta, 2 alpha, 3 charlie
    await b.cmd("b0", "STORE 3 +FLAGS (\\Seen)")
    r = await a.cmd("t", "SORT RETURN (UPDATE) (SUBJECT) UTF-8 UNSEEN")
    assert _esearch(r) == [b'* ESEARCH (TAG "t") ALL 2,1']  # alpha, delta
    await b.cmd("b1", "STORE 2 +FLAGS (\\Deleted)")
    await b.cmd("b2", "EXPUNGE")  # alpha goes: delta 1, charlie 2
    await b.cmd("b3", "STORE 2 -FLAGS (\\Seen)")  # charlie matches again
    imap.deliver(message("bravo"))  # message 3
    r = await a.cmd("n", "NOOP")
    lines = [x.rstrip(b"\r\n") for x in r]
    removal = b'* ESEARCH (TAG "t") REMOVEFROM (1 2)'
    addition = b'* ESEARCH (TAG "t") ADDTO (1 3 2 2)'  # bravo, charlie, delta
    assert removal in lines and addition in lines, lines
    assert lines.index(removal) < lines.index(b"* 2 EXPUNGE") < lines.index(b"* 3 EXISTS") \
        < lines.index(addition)
    r = await a.cmd("s", "SORT (SUBJECT) UTF-8 UNSEEN")
    assert any(x.startswith(b"* SORT 3 2 1") for x in r), r


async def test_cancelupdate_several_and_bad_syntax(pair, imap) -> None:
    a, _ = pair
    await a.cmd("x", "SEARCH RETURN (UPDATE) ALL")
    await a.cmd("y", "UID SEARCH RETURN (UPDATE) ALL")
    await a.cmd("z", "SEARCH RETURN (UPDATE COUNT) ALL")
    r = await a.cmd("c1", 'CANCELUPDATE "x" "y"')
    assert r[-1].startswith(b"c1 OK")
    r = await a.cmd("c2", "CANCELUPDATE")
    assert r[-1].startswith(b"c2 BAD"), r
    imap.deliver(message("kilo"))
    r = await a.cmd("n", "NOOP")
    assert _esearch(r) == [b'* ESEARCH (TAG "z") ADDTO (0 4)']
    await a.cmd("u", "UNSELECT")
    r = await a.cmd("s", "SELECT INBOX")
    imap.deliver(message("lima"))
    r = await a.cmd("n2", "NOOP")
    assert _esearch(r) == []  # contexts end when the mailbox is left
