"""The store's multi-message append (MULTIAPPEND): all or none, one transaction."""

from __future__ import annotations

import errno
import os

import pytest

from mailstack.store.account import AccountStore, OverQuota
from mailstack.store.maildir import Maildir


def _files(box: Maildir) -> list[str]:
    return sorted(os.listdir(box.root / "new")) + sorted(os.listdir(box.root / "cur"))


def _store(tmp_path) -> tuple[Maildir, AccountStore]:
    box = Maildir(tmp_path / "box")
    box.create()
    box.deliver(b"Subject: first\r\n\r\nx\r\n")
    store = AccountStore(box.root)
    store.sync("INBOX")
    return box, store


def test_append_many_stores_all_with_consecutive_uids(tmp_path) -> None:
    box, store = _store(tmp_path)
    before = store.highest_modseq()
    validity, uids = store.append_many("INBOX", [
        (b"Subject: a\r\n\r\none\r\n", ["\\Seen"], None),
        (b"Subject: b\r\n\r\ntwo\r\n", ["$Work"], 1_000_000_000.0),
        (memoryview(b"Subject: c\r\n\r\nthree\r\n"), [], None)])
    assert uids == [2, 3, 4]
    snap, _ = AccountStore(box.root).sync("INBOX")  # a second view agrees
    assert snap.uidvalidity == validity and [e.uid for e in snap.entries] == [1, 2, 3, 4]
    by_uid = {e.uid: e for e in snap.entries}
    assert by_uid[2].flags == frozenset({"\\Seen"}) and by_uid[3].flags == frozenset({"$Work"})
    assert by_uid[3].internaldate == 1_000_000_000.0
    assert {e.modseq for e in snap.entries if e.uid > 1} == {before + 1}  # one change
    assert "$Work" in store.sync("INBOX")[0].keywords
    assert store.read("INBOX", by_uid[4]) == b"Subject: c\n\nthree\n"  # stored with LF


def test_append_many_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    """The third message cannot be written (disk full): no file and no row of any stays."""
    box, store = _store(tmp_path)
    before = _files(box)
    real = box.deliver.__func__  # type: ignore[attr-defined]
    calls = []

    def deliver(self, data, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, **kw)

    monkeypatch.setattr(Maildir, "deliver", deliver)
    with pytest.raises(OSError):
        store.append_many("INBOX", [(b"Subject: %d\r\n\r\nx\r\n" % i, [], None)
                                    for i in range(4)])
    monkeypatch.undo()
    assert len(calls) == 3
    assert _files(box) == before
    assert os.listdir(box.root / "tmp") == []
    snap, _ = AccountStore(box.root).sync("INBOX")
    assert [e.uid for e in snap.entries] == [1]
    assert snap.uidnext == 2
    # and the next append gets the next UID as if nothing had happened
    assert store.append_many("INBOX", [(b"Subject: z\r\n\r\nz\r\n", [], None)])[1] == [2]


def test_append_many_failure_after_the_files_rolls_back(tmp_path, monkeypatch) -> None:
    """The commit fails after every file was written: the files are removed again."""
    box, store = _store(tmp_path)
    before = _files(box)
    real = store._finish

    def full(*args, **kw):
        real(*args, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_finish", full)
    with pytest.raises(OSError):
        store.append_many("INBOX", [(b"Subject: a\r\n\r\na\r\n", [], None),
                                    (b"Subject: b\r\n\r\nb\r\n", [], None)])
    monkeypatch.undo()
    assert _files(box) == before
    snap, _ = AccountStore(box.root).sync("INBOX")
    assert [e.uid for e in snap.entries] == [1]


def test_append_many_respects_the_quota_as_a_whole(tmp_path) -> None:
    box, store = _store(tmp_path)
    before = _files(box)
    msg = b"Subject: q\r\n\r\n" + b"x" * 4000 + b"\r\n"
    with pytest.raises(OverQuota):
        store.append_many("INBOX", [(msg, [], None), (msg, [], None)], quota=6000)
    assert _files(box) == before
    assert store.append_many("INBOX", [(msg, [], None)], quota=6000)[1] == [2]
