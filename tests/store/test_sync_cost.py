"""What a sync reads: after indexing a delivery (and moving it from ``new/`` to ``cur/``), the
next sync does not list ``cur/`` again — a 10,000-message folder costs ~30 ms a listing, which
every delivery used to pay twice (IMAP EXISTS, JMAP push)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailstack.store import account as account_mod
from mailstack.store.account import AccountStore
from mailstack.store.maildir import Maildir


def test_a_sync_after_a_delivery_does_not_list_cur_again(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    md = Maildir(tmp_path / "acct")
    md.create()
    store = AccountStore(md.root)
    for i in range(3):
        md.deliver(f"Subject: {i}\n\nbody\n".encode())
    snap, _ = store.sync("INBOX")
    assert len(snap.entries) == 3
    assert not os.listdir(md.root / "new")  # indexed: moved into cur/
    listed: list[list[str]] = []
    real = account_mod._Folder.listing

    def spy(self, subs):  # type: ignore[no-untyped-def]
        subs = sorted(subs)
        listed.append(subs)
        return real(self, subs)

    monkeypatch.setattr(account_mod._Folder, "listing", spy)
    md.deliver(b"Subject: late\n\nbody\n")
    snap, _ = store.sync("INBOX")
    assert len(snap.entries) == 4
    assert listed == [["new"]], listed  # the new file, not the whole folder
    store.sync("INBOX")
    assert all(subs == ["new"] for subs in listed), listed  # (new/ again only while racy)


def test_cur_changed_by_another_tool_is_still_seen(tmp_path: Path) -> None:
    """The recorded time covers only the store's own moves: a rename in ``cur/`` by another
    Maildir tool afterwards changes its time and is read at the next sync."""
    md = Maildir(tmp_path / "acct")
    md.create()
    store = AccountStore(md.root)
    md.deliver(b"Subject: x\n\nbody\n")
    snap, _ = store.sync("INBOX")
    (name,) = os.listdir(md.root / "cur")
    os.rename(md.root / "cur" / name, md.root / "cur" / (name.split(":2,")[0] + ":2,S"))
    st = os.stat(md.root / "cur")
    os.utime(md.root / "cur", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    snap, _ = store.sync("INBOX")
    assert snap.entries[0].seen
