"""AccountStore.search_emails: the full-text index for a whole account at once."""

from __future__ import annotations

from pathlib import Path

from mailstack.store.account import AccountStore
from mailstack.store.maildir import create_user_mailbox


def test_search_emails_covers_every_mailbox(tmp_path: Path) -> None:
    box = create_user_mailbox(tmp_path, "alice@example.test")
    box.deliver(b"Subject: first\n\nthe quarterly report\n")
    box.folder("Sent").deliver(b"Subject: second\n\nquarterly numbers, again\n")
    box.deliver(b"Subject: third\n\nnothing to see\n")
    store = AccountStore.open(box.root)
    for name in ("INBOX", "Sent"):
        store.sync(name)
    ids = {e.emailid: name for name in ("INBOX", "Sent") for e in store.status(name).entries}
    hits = store.search_emails([("BODY", "QUARTERLY")])
    assert sorted(ids[h] for h in hits) == ["INBOX", "Sent"]
    assert len(store.search_emails([("BODY", "quarterly"), ("TEXT", "second")])) == 1
    assert store.search_emails([("BODY", "absent words")]) == set()
    assert len(store.search_emails([("TEXT", "subject: third")])) == 1
