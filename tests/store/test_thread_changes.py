"""The change log records a thread losing an email: ``updated`` while others remain,
``destroyed`` with its last one (JMAP Thread/changes, collapsed Email/queryChanges)."""

from __future__ import annotations

from pathlib import Path

from mailstack.store.account import AccountStore
from mailstack.store.maildir import create_user_mailbox


def test_expunges_log_thread_changes(tmp_path: Path) -> None:
    box = create_user_mailbox(tmp_path, "alice@example.test")
    box.deliver(b"Message-ID: <a@x>\nSubject: a\n\nfirst\n")
    box.deliver(b"Message-ID: <b@x>\nIn-Reply-To: <a@x>\nSubject: Re: a\n\nsecond\n")
    box.deliver(b"Message-ID: <c@x>\nSubject: other\n\nthird\n")
    s = AccountStore.open(box.root)
    s.sync("INBOX")
    entries = sorted(s.status("INBOX").entries, key=lambda e: e.uid)
    thread = entries[0].threadid
    assert entries[1].threadid == thread != entries[2].threadid
    state = s.highest_modseq()
    s.store_flags("INBOX", [entries[1].uid], "+", ["\\Deleted"])
    s.expunge("INBOX")
    ch = s.changes("Thread", state)
    assert ch.updated == [thread] and ch.destroyed == [] and ch.created == []
    state = s.highest_modseq()
    s.store_flags("INBOX", [entries[0].uid, entries[2].uid], "+", ["\\Deleted"])
    s.expunge("INBOX")
    ch = s.changes("Thread", state)
    assert sorted(ch.destroyed) == sorted([thread, entries[2].threadid]) and ch.updated == []
