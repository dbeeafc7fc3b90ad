"""Cross-session rules of the one store, with real clients on two imap processes and pop3.

Each test is a sequence that lost or resurrected mail when every session computed changes from
its own snapshot: the store must merge flag changes, expunge only what is \\Deleted now, and
tell every session of new keywords.
"""

from __future__ import annotations

import re
import time

from tests.store.conftest import Stack


def msg(n: int, extra: str = "") -> bytes:
    return (f"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: m{n}\r\n"
            f"Message-ID: <m{n}@example.test>\r\n{extra}\r\nbody {n}\r\n").encode()


def flags_of(c, uid: int) -> set[str]:
    typ, data = c.uid("FETCH", str(uid), "(FLAGS)")
    assert typ == "OK" and data and data[0], data
    m = re.search(rb"FLAGS \(([^)]*)\)", data[0])
    assert m, data
    return set(m.group(1).decode().split()) - {"\\Recent"}


def append(c, n: int, flags: str = "") -> int:
    typ, data = c.append("INBOX", flags or None, None, msg(n))
    assert typ == "OK", data
    m = re.search(rb"APPENDUID \d+ (\d+)", data[0])
    assert m, data
    return int(m.group(1))


def untagged(c) -> list[bytes]:
    """NOOP, and the untagged responses it brought."""
    typ, _ = c.noop()
    assert typ == "OK"
    out = []
    for key, values in list(c.untagged_responses.items()):
        for v in values:
            out.append(key.encode() + b" " + (v if isinstance(v, bytes) else repr(v).encode()))
    c.untagged_responses.clear()
    return out


def test_flag_changes_from_two_processes_merge(stack: Stack) -> None:
    a, b = stack.imap(0), stack.imap(1)
    uid = append(a, 1, "(\\Seen)")
    untagged(b)  # B knows the message with \Seen
    assert a.uid("STORE", str(uid), "+FLAGS", "(\\Answered)")[0] == "OK"
    assert b.uid("STORE", str(uid), "-FLAGS", "(\\Seen)")[0] == "OK"  # B's view is stale
    assert flags_of(a, uid) == {"\\Answered"}  # A's \Answered survives B's change
    assert flags_of(stack.imap(0), uid) == {"\\Answered"}


def test_expunge_takes_deleted_from_the_current_state(stack: Stack) -> None:
    a, b = stack.imap(0), stack.imap(1)
    uid = append(a, 1)
    assert a.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")[0] == "OK"
    untagged(b)  # B has seen \Deleted
    assert a.uid("STORE", str(uid), "-FLAGS", "(\\Deleted)")[0] == "OK"
    assert b.expunge()[0] == "OK"
    data = stack.imap(0).uid("SEARCH", "ALL")[1]
    assert data[0].split() == [str(uid).encode()]  # nobody had it \Deleted: it stays
    assert not any(p.name.endswith("T") for p in (stack.cfg.data_dir / "mail").rglob("*:2,*"))


def test_expunge_leaves_messages_the_session_has_not_seen(stack: Stack) -> None:
    a, b = stack.imap(0), stack.imap(1)
    append(a, 1)
    untagged(b)
    late = append(a, 2, "(\\Deleted)")  # B was never told of this one
    assert b.expunge()[0] == "OK"
    assert str(late).encode() in stack.imap(0).uid("SEARCH", "ALL")[1][0].split()
    assert a.expunge()[0] == "OK"  # A knows it: now it goes
    assert str(late).encode() not in stack.imap(0).uid("SEARCH", "ALL")[1][0].split()


def test_new_keyword_is_announced_to_other_sessions(stack: Stack) -> None:
    a, b = stack.imap(0), stack.imap(1)
    uid = append(a, 1)
    untagged(b)
    assert a.uid("STORE", str(uid), "+FLAGS", "($Hello)")[0] == "OK"
    assert b.noop()[0] == "OK"
    flags = b.untagged_responses.get("FLAGS", [])
    assert flags and b"$Hello" in flags[-1], b.untagged_responses
    assert any(b"$Hello" in v for v in b.untagged_responses.get("OK", [])
               if b"PERMANENTFLAGS" in v), b.untagged_responses


def test_many_keywords_beyond_the_maildir_letters(stack: Stack) -> None:
    a = stack.imap(0)
    uid = append(a, 1)
    words = [f"$kw{i}" for i in range(40)]
    assert a.uid("STORE", str(uid), "+FLAGS", f"({' '.join(words)})")[0] == "OK"
    assert flags_of(stack.imap(1), uid) == set(words)
    assert a.uid("STORE", str(uid), "-FLAGS", "($kw39 $kw0)")[0] == "OK"
    assert flags_of(stack.imap(1), uid) == set(words) - {"$kw39", "$kw0"}


def test_pop3_and_imap_on_one_mailbox(stack: Stack) -> None:
    a = stack.imap(0)
    keep = append(a, 1)
    gone = append(a, 2)
    assert a.uid("STORE", str(keep), "+FLAGS", "(\\Flagged)")[0] == "OK"
    p = stack.pop3()
    assert p.stat()[0] == 2
    p.retr(1)
    p.dele(2)
    p.quit()
    assert flags_of(a, keep) == {"\\Flagged", "\\Seen"}  # RETR's \Seen kept IMAP's \Flagged
    data = a.uid("SEARCH", "ALL")[1]
    assert data[0].split() == [str(keep).encode()]
    assert gone not in {int(x) for x in data[0].split()}


def test_idle_session_in_another_process_sees_changes(stack: Stack) -> None:
    a = stack.imap(0)
    uid = append(a, 1)
    b = stack.imap(1)
    tag = b._new_tag()
    b.send(tag + b" IDLE\r\n")
    assert b.readline().startswith(b"+")
    start = time.monotonic()
    assert a.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")[0] == "OK"
    line = b.readline()
    assert re.match(rb"\* 1 FETCH \(UID \d+ FLAGS \(\\Flagged\)\)", line), line
    append(a, 2)
    lines = [b.readline(), b.readline()]
    assert b"* 2 EXISTS\r\n" in lines, lines
    b.send(b"DONE\r\n")
    while not b.readline().startswith(tag):
        pass
    print(f"flag change seen by the other process after {time.monotonic() - start:.3f}s")
