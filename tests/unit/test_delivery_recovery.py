"""One device flush before 250: what a crash can leave behind, and how the mda's next start
and the mta's retry turn each state into exactly one copy (mailstack.mda.delivery).

An operating-system crash cannot be staged in a test; its outcomes can: every state below is
one the file system may keep when the machine dies between the writes and the syncs of a
batch (the journal line kept, the file's data or the rename lost)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailstack.mda import delivery
from mailstack.mda.delivery import DeliveryLog, commit_copies, deliver, prepare, recover
from mailstack.store.maildir import Maildir, create_user_mailbox

MSG = b"Subject: s\r\n\r\nbody\r\n"


def _deliver(tmp_path: Path, qid: str, rcpt: str = "a@x.test",
             dlog: DeliveryLog | None = None) -> delivery.Delivered:
    return deliver(tmp_path, rcpt, rcpt, "s@y.test", MSG, qid,
                   dlog or DeliveryLog(tmp_path / "dlog"), retry=True)


def _crashed_after_sync(tmp_path: Path, qid: str) -> tuple[Maildir, str]:
    """A copy whose batch wrote its journal line, then the machine died before the checkpoint
    moved (its 250 may or may not have gone out): returns the box and the copy's key."""
    box = create_user_mailbox(tmp_path, "a@x.test")
    done = _deliver(tmp_path, qid)
    (tmp_path / "dlog" / "checkpoint").unlink()  # the crash came before the checkpoint
    return box, done.path.name


def test_journal_lines_carry_the_maildir_and_the_last_line_of_a_pair_counts(
        tmp_path: Path) -> None:
    dlog = DeliveryLog(tmp_path / "dlog")
    root = str(tmp_path / "my mail" / "a%b")  # spaces and % in the path survive
    dlog.record_many([("Q1", '"a b"@x.test', "k1", root), ("Q2", "c@x.test", "k2")])
    assert dlog.after_checkpoint() == {("Q1", '"a b"@x.test'): ("k1", root)}
    dlog.cancel([("Q1", '"a b"@x.test')])
    assert dlog.lookup("Q1", '"a b"@x.test') is None
    restarted = DeliveryLog(tmp_path / "dlog")
    assert restarted.lookup("Q1", '"a b"@x.test') is None  # the cancel is on disk, and last
    assert restarted.lookup("Q2", "c@x.test") == "k2"
    assert restarted.after_checkpoint() == {}
    restarted.record_many([("Q1", '"a b"@x.test', "k3", root)])  # delivered again
    assert DeliveryLog(tmp_path / "dlog").lookup("Q1", '"a b"@x.test') == "k3"


def test_a_whole_copy_stays_and_its_retry_makes_no_second(tmp_path: Path) -> None:
    box, key = _crashed_after_sync(tmp_path, "Q1")
    assert recover(tmp_path, DeliveryLog(tmp_path / "dlog")) == (1, 0)
    again = _deliver(tmp_path, "Q1")
    assert again.duplicate and [m.key for m in box.scan()] == [key]


@pytest.mark.parametrize("where", ["new", "cur"])
def test_a_copy_of_the_wrong_size_is_removed_and_delivered_again(tmp_path: Path,
                                                                 where: str) -> None:
    """The line and the rename survived the crash, the file's data did not (it is shorter
    than its name says): it never got its 250, so it goes and the retry delivers it anew —
    even when an imap daemon flagged it (cur/) before the mda started."""
    box, key = _crashed_after_sync(tmp_path, "Q1")
    path = box.root / "new" / key
    path.write_bytes(path.read_bytes()[:5])
    if where == "cur":
        box.set_flags(box.find(key), "S")  # type: ignore[arg-type]
    assert recover(tmp_path, DeliveryLog(tmp_path / "dlog")) == (1, 1)
    assert box.scan() == []
    again = _deliver(tmp_path, "Q1")
    assert not again.duplicate and again.path.read_bytes().endswith(b"body\n")
    assert len(box.scan()) == 1


def test_a_copy_whose_rename_was_lost_is_delivered_again(tmp_path: Path) -> None:
    box, key = _crashed_after_sync(tmp_path, "Q1")
    os.rename(box.root / "new" / key, box.root / "tmp" / key)  # the crash lost the rename
    assert recover(tmp_path, DeliveryLog(tmp_path / "dlog")) == (1, 1)
    assert list((box.root / "tmp").iterdir()) == []
    again = _deliver(tmp_path, "Q1")
    assert not again.duplicate and len(box.scan()) == 1


def test_a_copy_a_user_deleted_is_not_brought_back(tmp_path: Path) -> None:
    box, key = _crashed_after_sync(tmp_path, "Q1")
    (box.root / "new" / key).unlink()  # read and deleted before the crash
    assert recover(tmp_path, DeliveryLog(tmp_path / "dlog")) == (1, 0)
    again = _deliver(tmp_path, "Q1")
    assert again.duplicate and box.scan() == []


def test_lines_before_the_checkpoint_are_not_checked(tmp_path: Path) -> None:
    """The checkpoint bounds the work of a start: a batch fully synced before it is not
    looked at again (a line of the old format, without a Maildir, neither)."""
    box = create_user_mailbox(tmp_path, "a@x.test")
    dlog = DeliveryLog(tmp_path / "dlog")
    first = _deliver(tmp_path, "Q1", dlog=dlog)
    dlog.record_many([("Q0", "a@x.test", "old-format-key")])
    dlog.checkpoint()
    saved = (tmp_path / "dlog" / "checkpoint").read_bytes()
    _deliver(tmp_path, "Q2", dlog=dlog)
    (tmp_path / "dlog" / "checkpoint").write_bytes(saved)  # the crash came before Q2's
    first.path.write_bytes(b"x")  # damaged after its 250: not the journal's business
    assert recover(tmp_path, DeliveryLog(tmp_path / "dlog")) == (1, 0)  # Q2 only
    assert len(box.scan()) == 2


def test_a_checkpoint_is_written_after_every_batch(tmp_path: Path) -> None:
    create_user_mailbox(tmp_path, "a@x.test")
    dlog = DeliveryLog(tmp_path / "dlog")
    for n in range(3):
        _deliver(tmp_path, f"Q{n}", dlog=dlog)
        assert DeliveryLog(tmp_path / "dlog").after_checkpoint() == {}


def test_a_file_whose_fsync_fails_is_taken_back(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's fsync fails after its rename (an I/O error): the copy is not acknowledged,
    leaves new/, its line is cancelled on disk, and the retry delivers it."""
    box = create_user_mailbox(tmp_path, "a@x.test")
    dlog = DeliveryLog(tmp_path / "dlog")
    ready = prepare(tmp_path, "a@x.test", "a@x.test", "s@y.test", MSG, "Q1", dlog)
    real = os.fsync

    def failing(fd: int) -> None:
        if os.path.realpath(f"/proc/self/fd/{fd}").endswith(ready.key):  # type: ignore[union-attr]
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    [result] = commit_copies([ready], dlog)  # type: ignore[list-item]
    monkeypatch.setattr(os, "fsync", real)
    assert isinstance(result, OSError) and result.errno == 5
    assert box.scan() == [] and list((box.root / "tmp").iterdir()) == []
    restarted = DeliveryLog(tmp_path / "dlog")
    assert restarted.lookup("Q1", "a@x.test") is None
    # a failed batch holds the checkpoint back: a crash now would have this batch checked
    assert ("Q1", "a@x.test") not in restarted.after_checkpoint()  # cancelled, so not listed
    again = _deliver(tmp_path, "Q1", dlog=restarted)
    assert not again.duplicate and len(box.scan()) == 1


def test_a_failed_sync_holds_the_checkpoint(tmp_path: Path) -> None:
    """After a batch whose journal sync failed, later batches do not move the checkpoint past
    it: a crash before the next start still has its copies checked."""

    class FailingOnce(DeliveryLog):
        fail = True

        def sync(self) -> None:
            if self.fail:
                self.fail = False
                raise OSError(5, "Input/output error")
            super().sync()

    create_user_mailbox(tmp_path, "a@x.test")
    dlog = FailingOnce(tmp_path / "dlog")
    ready = prepare(tmp_path, "a@x.test", "a@x.test", "s@y.test", MSG, "Q1", dlog)
    [result] = commit_copies([ready], dlog)  # type: ignore[list-item]
    assert isinstance(result, OSError)
    _deliver(tmp_path, "Q2", dlog=dlog)
    pending = DeliveryLog(tmp_path / "dlog").after_checkpoint()
    assert set(pending) == {("Q1", "a@x.test"), ("Q2", "a@x.test")}


def test_a_retry_of_a_torn_copy_in_tmp_delivers_afresh(tmp_path: Path) -> None:
    """Without a restart in between (no recovery ran): the retry finds the line, the copy in
    tmp/ is not whole, so it is delivered anew instead of renamed."""
    box = create_user_mailbox(tmp_path, "a@x.test")
    dlog = DeliveryLog(tmp_path / "dlog")
    key = "1700000000.M1P1Q1R00000000.host,S=40,W=42"
    dlog.record_many([("Q1", "a@x.test", key, str(box.root))])
    (box.root / "tmp" / key).write_bytes(b"short")
    again = _deliver(tmp_path, "Q1", dlog=dlog)
    assert not again.duplicate and again.path.name != key
    assert [m.key for m in box.scan()] == [again.path.name]
    assert not (box.root / "tmp" / key).exists()
    assert DeliveryLog(tmp_path / "dlog").lookup("Q1", "a@x.test") == again.path.name


def test_a_failed_append_does_not_glue_half_a_line_to_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal write that fails part-way (a full disk) leaves half a line; the next append
    starts on a line of its own, so its record is found after a restart."""
    dlog = DeliveryLog(tmp_path / "dlog")
    dlog.record_many([("Q0", "a@x.test", "k0")])
    real = os.write
    calls = []

    def half(fd: int, data: bytes) -> int:
        if not calls:
            calls.append(1)
            return real(fd, bytes(data)[:5])  # the first piece goes …
        raise OSError(28, "No space left on device")  # … then the disk is full

    monkeypatch.setattr(os, "write", half)
    with pytest.raises(OSError):
        dlog.record_many([("Q1", "a@x.test", "k1")])
    monkeypatch.setattr(os, "write", real)
    dlog.record_many([("Q2", "a@x.test", "k2")])
    restarted = DeliveryLog(tmp_path / "dlog")
    assert restarted.lookup("Q2", "a@x.test") == "k2"
    assert restarted.lookup("Q0", "a@x.test") == "k0"


def test_lines_written_after_the_journal_was_emptied_are_checked(tmp_path: Path) -> None:
    """A test stack's reset() empties the journal under a running mda: a checkpoint from
    before would point past the end, and the lines written since would go unchecked."""
    dlog = DeliveryLog(tmp_path / "dlog")
    dlog.record_many([(f"Q{n}", "a@x.test", f"k{n}", "/m") for n in range(20)])
    dlog.checkpoint()
    for journal in (tmp_path / "dlog").glob("*.log"):
        os.truncate(journal, 0)
    dlog.record_many([("QNEW", "a@x.test", "knew", "/m")])  # then a crash, no checkpoint
    assert DeliveryLog(tmp_path / "dlog").after_checkpoint() == {
        ("QNEW", "a@x.test"): ("knew", "/m")}
    dlog.checkpoint()
    assert DeliveryLog(tmp_path / "dlog").after_checkpoint() == {}
