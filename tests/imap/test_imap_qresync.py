"""QRESYNC (RFC 7162): ENABLE, SELECT/EXAMINE with the QRESYNC parameter, VANISHED (EARLIER)
from the store's log of expunged UIDs, untagged VANISHED instead of EXPUNGE, UID FETCH
(CHANGEDSINCE n VANISHED), [CLOSED], HIGHESTMODSEQ, and the bad input around them."""

from __future__ import annotations

import asyncio
import re

from imapclient import IMAPClient

from tests.imap.conftest import PASSWORD, USER, login, message, ok


def code(lines: list[bytes], name: str) -> int:
    for line in lines:
        m = re.search(rb"\[" + name.encode() + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name} in {lines}")


async def test_qresync_is_announced_and_enabled(imap) -> None:
    c = await login(imap)
    caps = ok(await c.cmd("c", "CAPABILITY"), "c")[0]
    assert b" QRESYNC" in caps and b" CONDSTORE" in caps, caps
    lines = ok(await c.cmd("e", "ENABLE QRESYNC CONDSTORE"), "e")
    assert b"* ENABLED QRESYNC\r\n" in lines or b"* ENABLED CONDSTORE QRESYNC\r\n" in lines \
        or b"* ENABLED QRESYNC CONDSTORE\r\n" in lines, lines


async def test_select_with_qresync_reports_only_what_changed(imap) -> None:
    for n in range(6):
        imap.deliver(message(f"q{n}"))
    c = await login(imap, "QRESYNC")
    lines = ok(await c.cmd("s", "SELECT INBOX"), "s")
    validity, modseq = code(lines, "UIDVALIDITY"), code(lines, "HIGHESTMODSEQ")
    ok(await c.cmd("u", "UNSELECT"), "u")
    other = await login(imap)
    ok(await other.cmd("s", "SELECT INBOX"), "s")
    ok(await other.cmd("f", "STORE 2 +FLAGS (\\Flagged)"), "f")
    ok(await other.cmd("d", "STORE 4:5 +FLAGS (\\Deleted)"), "d")
    ok(await other.cmd("x", "EXPUNGE"), "x")
    lines = ok(await c.cmd("q", f"SELECT INBOX (QRESYNC ({validity} {modseq}))"), "q")
    assert b"* VANISHED (EARLIER) 4:5\r\n" in lines, lines
    fetches = [line for line in lines if line.startswith(b"* ") and b" FETCH (" in line]
    assert len(fetches) == 1 and fetches[0].startswith(b"* 2 FETCH (UID 2 FLAGS (\\Flagged) "
                                                       b"MODSEQ ("), lines
    assert b"* 4 EXISTS\r\n" in lines
    # known UIDs narrow VANISHED, in whatever order the client lists them
    lines = ok(await c.cmd("k", f"EXAMINE INBOX (QRESYNC ({validity} {modseq} 5,1:3))"), "k")
    assert b"* OK [CLOSED]" in lines[0], lines
    assert b"* VANISHED (EARLIER) 5\r\n" in lines, lines
    # seq-match-data is accepted (every expunge is logged, so it is not needed)
    lines = ok(await c.cmd("m", f"EXAMINE INBOX (QRESYNC ({validity} {modseq} 1:6 (1:2 1:2)))"),
               "m")
    assert b"* VANISHED (EARLIER) 4:5\r\n" in lines, lines
    # up to date: nothing but the usual responses
    now = code(lines, "HIGHESTMODSEQ")
    lines = ok(await c.cmd("n", f"EXAMINE INBOX (QRESYNC ({validity} {now}))"), "n")
    assert not any(b"VANISHED" in line or b" FETCH " in line for line in lines), lines


async def test_wrong_uidvalidity_means_a_plain_select(imap) -> None:
    imap.deliver(message("v"))
    c = await login(imap, "QRESYNC")
    lines = ok(await c.cmd("s", "SELECT INBOX"), "s")
    validity = code(lines, "UIDVALIDITY")
    lines = ok(await c.cmd("q", f"SELECT INBOX (QRESYNC ({validity + 1} 1 1:10))"), "q")
    assert not any(b"VANISHED" in line or b" FETCH " in line for line in lines), lines
    assert b"* 1 EXISTS\r\n" in lines and code(lines, "UIDVALIDITY") == validity


async def test_bad_qresync_input(imap) -> None:
    imap.deliver(message("b"))
    plain = await login(imap)
    r = await plain.cmd("a", "SELECT INBOX (QRESYNC (1 1))")
    assert r[-1].startswith(b"a BAD"), r  # not enabled (RFC 7162 3.2.5)
    r = await plain.cmd("a2", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
    assert r[-1].startswith(b"a2 BAD"), r
    c = await login(imap, "QRESYNC")
    lines = ok(await c.cmd("s", "SELECT INBOX"), "s")
    v = code(lines, "UIDVALIDITY")
    for tag, command in (
            ("b", f"SELECT INBOX (QRESYNC ({v} 1 1:*))"),  # '*' in known UIDs
            ("c", f"SELECT INBOX (QRESYNC ({v} 1 1:9 (3,1 1,3)))"),  # out of order
            ("d", f"SELECT INBOX (QRESYNC ({v} 1 1:9 (1:3 5,4,6)))"),  # out of order
            ("e", f"SELECT INBOX (QRESYNC ({v} 1 1:9 (1:3 1:2)))"),  # sizes differ
            ("f", "SELECT INBOX (QRESYNC (0 1))"),  # UIDVALIDITY is nz-number
            ("g", f"SELECT INBOX (QRESYNC ({v}))"),
            ("h", "SELECT INBOX (FROBNICATE)"),
            ("i", f"SELECT INBOX (QRESYNC ({v} 99999999999999999999))"),
            ("j", "FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)"),  # not a UID FETCH
            ("k", "UID FETCH 1 (FLAGS) (VANISHED)"),  # without CHANGEDSINCE
            ("l", "UID FETCH 1 (FLAGS) (CHANGEDSINCE 1 CHANGEDSINCE 2)"),
    ):
        r = await c.cmd(tag, command)
        assert r[-1].startswith(f"{tag} BAD".encode()), (command, r)
    ok(await c.cmd("z", "NOOP"), "z")  # the session goes on


async def test_vanished_replaces_expunge_once_enabled(imap) -> None:
    for n in range(5):
        imap.deliver(message(f"x{n}"))
    c = await login(imap, "QRESYNC")
    ok(await c.cmd("s", "SELECT INBOX"), "s")
    plain = await login(imap)
    ok(await plain.cmd("s", "SELECT INBOX"), "s")
    ok(await c.cmd("d", "STORE 2:3 +FLAGS.SILENT (\\Deleted)"), "d")
    lines = ok(await c.cmd("x", "EXPUNGE"), "x")
    assert b"* VANISHED 2:3\r\n" in lines and not any(b"EXPUNGE\r\n" in x for x in lines), lines
    assert code(lines, "HIGHESTMODSEQ") > 0  # tagged OK of EXPUNGE carries it
    lines = ok(await plain.cmd("n", "NOOP"), "n")  # a session without QRESYNC: EXPUNGE
    assert lines.count(b"* 2 EXPUNGE\r\n") == 2, lines
    # another session's expunge reaches this one as VANISHED too
    ok(await plain.cmd("d", "STORE 1 +FLAGS.SILENT (\\Deleted)"), "d")
    ok(await plain.cmd("x", "EXPUNGE"), "x")
    lines = ok(await c.cmd("n", "NOOP"), "n")
    assert b"* VANISHED 1\r\n" in lines, lines


async def test_uid_fetch_changedsince_vanished(imap) -> None:
    for n in range(5):
        imap.deliver(message(f"f{n}"))
    c = await login(imap, "QRESYNC")
    lines = ok(await c.cmd("s", "SELECT INBOX"), "s")
    modseq = code(lines, "HIGHESTMODSEQ")
    ok(await c.cmd("d", "UID STORE 1,5 +FLAGS.SILENT (\\Deleted)"), "d")
    ok(await c.cmd("x", "UID EXPUNGE 1,5"), "x")
    ok(await c.cmd("f", "UID STORE 3 +FLAGS.SILENT (\\Seen)"), "f")
    lines = ok(await c.cmd("u", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)"), "u")
    assert lines[0] == b"* VANISHED (EARLIER) 1,5\r\n", lines
    fetches = [x for x in lines if x.startswith(b"* ") and b" FETCH (" in x]
    assert len(fetches) == 1 and fetches[0].startswith(b"* 2 FETCH (UID 3 FLAGS (\\Seen"), lines
    lines = ok(await c.cmd("w", f"UID FETCH 2:4 (FLAGS) (VANISHED CHANGEDSINCE {modseq})"), "w")
    assert not any(b"VANISHED" in x for x in lines), lines  # none of 2:4 was expunged


async def test_imapclient_resyncs_with_qresync(imap) -> None:
    for n in range(4):
        imap.deliver(message(f"ic{n}"))

    def run() -> tuple[dict, list]:
        with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as cl:
            cl.login(USER, PASSWORD)
            assert cl.has_capability("QRESYNC")
            assert cl.enable("QRESYNC") == [b"QRESYNC"]
            info = cl.select_folder("INBOX")
            cl.delete_messages([2])
            cl.add_flags([3], [b"$Work"])
            cl.expunge()
            cl.unselect_folder()
            resp = cl._command_and_check(  # imapclient has no QRESYNC select of its own
                "select", b'"INBOX" (QRESYNC (%d %d))'
                % (info[b"UIDVALIDITY"], info[b"HIGHESTMODSEQ"]), unpack=True)
            return info, [resp, cl._imap.untagged_responses.get("VANISHED"),
                          cl._imap.untagged_responses.get("FETCH")]

    info, (resp, vanished, fetched) = await asyncio.to_thread(run)
    assert info[b"EXISTS"] == 4 and resp is not None
    assert vanished == [b"(EARLIER) 2"], vanished
    assert any(b"$Work" in f and b"UID 3" in f for f in fetched), fetched


async def test_highestmodseq_below_held_back_expunges(imap) -> None:
    """RFC 7162 3.2 (erratum 1810): MODSEQs sent while an expunge waits come with a
    HIGHESTMODSEQ lower than the expunge's."""
    for n in range(3):
        imap.deliver(message(f"h{n}"))
    c = await login(imap, "QRESYNC")
    ok(await c.cmd("s", "SELECT INBOX"), "s")
    other = await login(imap)
    ok(await other.cmd("s", "SELECT INBOX"), "s")
    ok(await other.cmd("d", "STORE 1 +FLAGS.SILENT (\\Deleted)"), "d")
    ok(await other.cmd("x", "EXPUNGE"), "x")
    ok(await other.cmd("f", "STORE 2 +FLAGS.SILENT (\\Flagged)"), "f")
    lines = ok(await c.cmd("q", "FETCH 2 (FLAGS)"), "q")  # by number: the expunge waits
    assert not any(b"VANISHED" in x for x in lines), lines
    sent = int(re.search(rb"MODSEQ \((\d+)\)", b"".join(lines)).group(1))
    held = code(lines, "HIGHESTMODSEQ")
    lines = ok(await c.cmd("n", "NOOP"), "n")
    assert b"* VANISHED 1\r\n" in lines, lines
    lines = ok(await c.cmd("u", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {held} VANISHED)"), "u")
    assert lines[0] == b"* VANISHED (EARLIER) 1\r\n", lines  # resyncing from it finds it
    assert held < sent
