"""NOTIFY (RFC 5465) over real sockets: events for the selected mailbox with no command in
progress, SELECTED-DELAYED holding expunges back, STATUS for other mailboxes (also inside
IDLE), LIST for mailbox names and subscriptions, NOTIFY NONE, and the bad input around it."""

from __future__ import annotations

import pytest

from tests.imap.conftest import Raw, login, message, ok, session

ALL_MESSAGE = "(MessageNew MessageExpunge FlagChange)"


async def lines_until(c: Raw, wanted: bytes, timeout: float = 15) -> list[bytes]:
    """Unsolicited lines up to and including the first that contains ``wanted``."""
    out = []
    while True:
        line = await c.line(timeout)
        assert line, out
        out.append(line)
        if wanted in line:
            return out


@pytest.mark.parametrize("spec", [
    "SET (SELECTED (MessageNew))",  # MessageNew without MessageExpunge
    "SET (SELECTED (MessageExpunge))",
    "SET (SELECTED (FlagChange))",  # FlagChange without MessageNew/MessageExpunge
    "SET (SELECTED (MailboxName))",  # only message events with SELECTED
    f"SET (SELECTED {ALL_MESSAGE}) (SELECTED-DELAYED {ALL_MESSAGE})",
    "SET ((MAILBOXES ()) (MessageNew MessageExpunge))",  # a specifier naming nothing
    "SET ((MAILBOXES) (MessageNew MessageExpunge))",
    "SET ((SUBTREE) (MessageNew MessageExpunge))",
    "SET (MAILBOXES (MessageNew MessageExpunge))",  # RFC 5465 form, no mailbox
    "SET (SUBTREE Work)",
    "SET (MAILBOXES () (MessageNew MessageExpunge))",
    "SET ((FOLDERS x) (MessageNew MessageExpunge))",
    "SET (EVERYTHING (MessageNew MessageExpunge))",
    "SET (PERSONAL ())",
    "SET",
    "SET STATUS",
    "FROB",
    "NONE extra",
    "SET (PERSONAL (MessageNew (BODY[]) MessageExpunge))",  # fetch-atts only with SELECTED
    "SET (SELECTED (MessageNew (BODY[TEXT]) MessageExpunge))",  # would set \\Seen
])
async def test_bad_notify_commands_are_bad(imap, spec: str) -> None:
    c = await login(imap)
    r = await c.cmd("n", f"NOTIFY {spec}")
    assert r[-1].startswith(b"n BAD"), (spec, r)
    ok(await c.cmd("o", "NOOP"), "o")


@pytest.mark.parametrize("spec", [
    "SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))",
    "SET (PERSONAL (MailboxMetadataChange))",
    "SET (INBOXES (FrobnicateEvent))",
])
async def test_unsupported_events_get_badevent(imap, spec: str) -> None:
    c = await login(imap)
    r = await c.cmd("n", f"NOTIFY {spec}")
    assert r[-1].startswith(b"n NO [BADEVENT (MessageNew MessageExpunge FlagChange "
                            b"MailboxName SubscriptionChange)]"), r


async def test_selected_events_arrive_with_no_command_in_progress(imap) -> None:
    imap.deliver(message("first"))
    c = await session(imap)
    assert b" NOTIFY" in ok(await c.cmd("c", "CAPABILITY"), "c")[0]
    ok(await c.cmd("n", "NOTIFY SET (SELECTED (MessageNew (UID FLAGS ENVELOPE) "
                        "MessageExpunge FlagChange))"), "n")
    imap.deliver(message("second"))
    got = await lines_until(c, b"* 2 FETCH")
    assert b"* 2 EXISTS\r\n" in got, got
    assert b"UID 2" in got[-1] and b'"second"' in got[-1], got
    other = await session(imap)
    ok(await other.cmd("f", "STORE 1 +FLAGS (\\Flagged)"), "f")
    got = await lines_until(c, b"* 1 FETCH")
    assert b"\\Flagged" in got[-1] and b"UID 1" in got[-1], got
    ok(await other.cmd("d", "STORE 1 +FLAGS (\\Deleted)"), "d")
    ok(await other.cmd("x", "EXPUNGE"), "x")
    got = await lines_until(c, b"EXPUNGE")
    assert got[-1] == b"* 1 EXPUNGE\r\n", got
    ok(await c.cmd("u", "UID FETCH 2 (FLAGS)"), "u")  # the session is in step


async def test_selected_delayed_holds_expunges_until_a_command(imap) -> None:
    for n in range(2):
        imap.deliver(message(f"d{n}"))
    c = await session(imap)
    ok(await c.cmd("n", f"NOTIFY SET (SELECTED-DELAYED {ALL_MESSAGE})"), "n")
    other = await session(imap)
    ok(await other.cmd("d", "STORE 1 +FLAGS (\\Deleted)"), "d")
    ok(await other.cmd("x", "EXPUNGE"), "x")
    imap.deliver(message("after the expunge"))
    got = await lines_until(c, b"EXISTS")
    assert not any(b"EXPUNGE" in x for x in got), got
    lines = ok(await c.cmd("o", "NOOP"), "o")
    assert b"* 1 EXPUNGE\r\n" in lines, lines


async def test_rfc_filter_syntax_and_highestmodseq_with_flagchange(imap) -> None:
    """``(MAILBOXES name events)`` as RFC 5465 §8 writes it (the filter in parentheses is
    taken too); without CONDSTORE a mailbox watched for FlagChange still gets HIGHESTMODSEQ
    in its STATUS (else a flag change would not show), one without FlagChange does not."""
    for box in ("Work", "Play"):
        imap.folder(box).create(folder=True)
        imap.deliver(message(box), folder=box)
    c = await login(imap)
    lines = ok(await c.cmd("n", "NOTIFY SET STATUS (MAILBOXES Work (MessageNew MessageExpunge))"
                                " (SUBTREE (Play) (MessageNew MessageExpunge FlagChange))"), "n")
    work = next(x for x in lines if x.startswith(b"* STATUS Work "))
    play = next(x for x in lines if x.startswith(b"* STATUS Play "))
    assert b"HIGHESTMODSEQ" not in work and b" HIGHESTMODSEQ " in play, lines
    ok(await c.cmd("m", "NOTIFY SET ((MAILBOXES Work) (MessageNew MessageExpunge FlagChange))"),
       "m")
    other = await session(imap, "Work")
    ok(await other.cmd("s", "STORE 1 +FLAGS (\\Flagged)"), "s")
    got = await lines_until(c, b"* STATUS Work")
    assert b" HIGHESTMODSEQ " in got[-1], got


async def test_status_for_other_mailboxes_also_in_idle(imap) -> None:
    imap.folder("Work").create(folder=True)
    imap.deliver(message("w0"), folder="Work")
    c = await session(imap)
    ok(await c.cmd("e", "ENABLE CONDSTORE"), "e")
    lines = ok(await c.cmd("n", f"NOTIFY SET STATUS (SELECTED {ALL_MESSAGE}) "
                                f"(PERSONAL {ALL_MESSAGE})"), "n")
    status = [x for x in lines if x.startswith(b"* STATUS Work ")]
    assert len(status) == 1 and status[0].startswith(b"* STATUS Work (MESSAGES 1 "), lines
    assert not any(x.startswith(b"* STATUS INBOX") for x in lines), lines  # the selected one
    assert b"HIGHESTMODSEQ" in status[0]
    imap.deliver(message("w1"), folder="Work")
    got = await lines_until(c, b"* STATUS Work")
    assert b"MESSAGES 2 " in got[-1] and b"UNSEEN 2" in got[-1], got
    await c.send("i IDLE\r\n")
    assert (await c.line()).startswith(b"+ ")
    imap.deliver(message("w2"), folder="Work")
    got = await lines_until(c, b"* STATUS Work")
    assert b"MESSAGES 3 " in got[-1], got
    await c.send("DONE\r\n")
    assert (await lines_until(c, b"i OK"))[-1].startswith(b"i OK")


async def test_mailbox_names_and_subscriptions(imap) -> None:
    c = await login(imap)
    ok(await c.cmd("n", "NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))"), "n")
    other = await login(imap)
    ok(await other.cmd("a", "CREATE Projects"), "a")
    got = await lines_until(c, b"Projects")
    assert got[-1] == b'* LIST (\\HasNoChildren) "." Projects\r\n', got
    ok(await other.cmd("b", "SUBSCRIBE Projects"), "b")
    got = await lines_until(c, b"Projects")
    assert got[-1] == b'* LIST (\\HasNoChildren \\Subscribed) "." Projects\r\n', got
    ok(await other.cmd("c", "RENAME Projects Archive"), "c")
    got = await lines_until(c, b"Archive")
    assert b'"." Archive ("OLDNAME" (Projects))' in got[-1], got
    ok(await other.cmd("d", "DELETE Archive"), "d")
    got = await lines_until(c, b"Archive")
    assert got[-1] == b'* LIST (\\NonExistent) "." Archive\r\n', got


async def test_notify_none_and_unknown_mailboxes(imap) -> None:
    imap.folder("Work").create(folder=True)
    quiet = await session(imap)
    ok(await quiet.cmd("n", "NOTIFY SET ((MAILBOXES (Work nosuch)) (MessageNew MessageExpunge))"),
       "n")  # a mailbox that does not exist is ignored
    ok(await quiet.cmd("m", "NOTIFY NONE"), "m")
    loud = await session(imap)
    ok(await loud.cmd("n", "NOTIFY SET ((SUBTREE Work) (MessageNew MessageExpunge))"), "n")
    imap.deliver(message("w"), folder="Work")
    await lines_until(loud, b"* STATUS Work")  # the event has happened and was reported
    lines = ok(await quiet.cmd("o", "NOOP"), "o")
    assert not any(b"STATUS" in x for x in lines), lines


async def test_flag_changes_and_expunges_in_other_mailboxes(imap) -> None:
    imap.folder("Work").create(folder=True)
    for n in range(2):
        imap.deliver(message(f"w{n}"), folder="Work")
    c = await login(imap)
    ok(await c.cmd("n", f"NOTIFY SET (PERSONAL {ALL_MESSAGE})"), "n")
    other = await session(imap, "Work")  # another process would do the same: same store
    ok(await other.cmd("f", "STORE 1 +FLAGS (\\Seen)"), "f")
    got = await lines_until(c, b"* STATUS Work")
    assert b"MESSAGES 2 " in got[-1] and b"UNSEEN 1" in got[-1], got
    ok(await other.cmd("d", "STORE 2 +FLAGS (\\Deleted)"), "d")
    ok(await other.cmd("x", "EXPUNGE"), "x")
    while b"MESSAGES 1 " not in (got := await lines_until(c, b"* STATUS Work"))[-1]:
        pass  # the \Deleted flag change may come first
    assert b"UNSEEN 0" in got[-1], got


async def test_idle_without_a_selected_mailbox_gets_status(imap) -> None:
    c = await login(imap)
    ok(await c.cmd("n", "NOTIFY SET (INBOXES (MessageNew MessageExpunge))"), "n")
    await c.send("i IDLE\r\n")
    assert (await c.line()).startswith(b"+ ")
    imap.deliver(message("for the inbox"))
    got = await lines_until(c, b"* STATUS INBOX")
    assert b"MESSAGES 1 " in got[-1], got
    await c.send("DONE\r\n")
    assert (await lines_until(c, b"i OK"))[-1].startswith(b"i OK")


async def test_selected_without_flagchange_gets_no_unsolicited_flags(imap) -> None:
    imap.deliver(message("f"))
    imap.folder("Work").create(folder=True)
    c = await session(imap)
    ok(await c.cmd("n", "NOTIFY SET (SELECTED (MessageNew MessageExpunge)) "
                        "(PERSONAL (MessageNew MessageExpunge))"), "n")
    other = await session(imap)
    ok(await other.cmd("f", "STORE 1 +FLAGS (\\Flagged)"), "f")
    imap.deliver(message("w"), folder="Work")
    got = await lines_until(c, b"* STATUS Work")
    assert not any(b"FETCH" in x for x in got), got
    lines = ok(await c.cmd("o", "NOOP"), "o")  # the next command reports it, as usual
    assert any(x.startswith(b"* 1 FETCH") and b"\\Flagged" in x for x in lines), lines


async def test_own_changes_are_not_notified(imap) -> None:
    """RFC 5465 §5: what the client's own APPEND, COPY, CREATE or SUBSCRIBE did is not
    reported back (the tagged response said it); what others do afterwards is, with counts
    that include the client's own messages."""
    for name in ("Work", "Other"):
        imap.folder(name).create(folder=True)
    imap.deliver(message("i0"))
    c = await session(imap)
    ok(await c.cmd("n", f"NOTIFY SET (SELECTED {ALL_MESSAGE}) (PERSONAL (MessageNew "
                        "MessageExpunge FlagChange MailboxName SubscriptionChange))"), "n")
    mine = message("mine")
    await c.send(f"a APPEND Work {{{len(mine)}+}}\r\n".encode() + mine + b"\r\n")
    got = await lines_until(c, b"a OK")
    assert got[-1].startswith(b"a OK [APPENDUID"), got
    got += ok(await c.cmd("y", "COPY 1 Work"), "y")
    got += ok(await c.cmd("k", "CREATE Mine"), "k")
    got += ok(await c.cmd("s", "SUBSCRIBE Mine"), "s")
    imap.deliver(message("other 1"), folder="Other")
    got += await lines_until(c, b"* STATUS Other")
    other = await login(imap)
    ok(await other.cmd("c", "CREATE Theirs"), "c")
    got += await lines_until(c, b"Theirs")
    imap.deliver(message("theirs"), folder="Work")
    got += await lines_until(c, b"* STATUS Work")
    assert [x for x in got if b"Work" in x] == [got[-1]], got  # one STATUS: the delivery's
    assert b"MESSAGES 3 " in got[-1], got  # its own APPEND and COPY are counted
    assert not any(b"Mine" in x for x in got), got


async def test_too_many_mailboxes_overflow(imap) -> None:
    """More mailboxes than one session may watch: ``NO [NOTIFICATIONOVERFLOW]``, nothing
    set, and a narrower NOTIFY still works."""
    from mailstack.imap.notify import MAX_WATCHED
    for n in range(MAX_WATCHED + 1):
        imap.folder(f"Lists.l{n}").create(folder=True)
    c = await login(imap)
    r = await c.cmd("n", "NOTIFY SET ((SUBTREE Lists) (MessageNew MessageExpunge))")
    assert r[-1].startswith(b"n NO [NOTIFICATIONOVERFLOW]"), r[-1]
    ok(await c.cmd("m", "NOTIFY SET ((MAILBOXES Lists.l7) (MessageNew MessageExpunge))"), "m")
    imap.deliver(message("seven"), folder="Lists.l7")
    got = await lines_until(c, b"* STATUS Lists.l7")
    assert b"MESSAGES 1 " in got[-1], got
