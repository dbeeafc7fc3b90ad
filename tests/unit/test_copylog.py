"""The copy log (mailstack.mda.copylog): one flush before 250, and every state a crash of the
machine can leave turned back into exactly one whole copy at the mda's next start.

A crash cannot be staged in a test; its outcomes can. Each test commits copies through the
real commit path, then leaves the files the way the file system may keep them when the
machine dies before the next checkpoint, and starts "the next mda" on them."""

from __future__ import annotations

import errno
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest

from mailstack.mda import copylog as copylog_mod
from mailstack.mda.copylog import BLOCK, CopyLog, encode, read_pending, scan, skip_pending
from mailstack.mda.delivery import (
    Delivered,
    DeliveryLog,
    checkpoint_copies,
    commit_copies,
    prepare,
    recover,
    recover_copies,
)
from mailstack.store.maildir import INFO_SEP, Maildir, create_user_mailbox

MSG = b"Subject: s\r\n\r\nbody\r\n"
SEGMENT = 64 * 1024


class Mda:
    """What one mda process holds: its journal and its copy log, recovered at start. A new one
    on the same data directory is the next start: the one before is gone (crashed)."""

    _running: ClassVar[dict[Path, Mda]] = {}

    def __init__(self, data: Path) -> None:
        before = Mda._running.pop(data, None)
        if before is not None:
            before.clog.close()
        Mda._running[data] = self
        self.data = data
        self.dlog = DeliveryLog(data / "mda" / "delivered")
        self.clog = CopyLog(data / "mda" / "copies", SEGMENT)
        self.checked, self.rebuilt = recover_copies(data, self.clog, self.dlog)

    def deliver(self, qid: str, body: bytes = MSG, rcpt: str = "a@x.test") -> str:
        ready = prepare(self.data, rcpt, rcpt, "s@y.test", body, qid, self.dlog)
        assert not isinstance(ready, Delivered)
        [result] = commit_copies([ready], self.dlog, self.clog)
        assert isinstance(result, str), result
        return ready.key

    def retry(self, qid: str, body: bytes = MSG, rcpt: str = "a@x.test") -> Delivered | str:
        ready = prepare(self.data, rcpt, rcpt, "s@y.test", body, qid, self.dlog)
        if isinstance(ready, Delivered):
            return ready
        [result] = commit_copies([ready], self.dlog, self.clog)
        return result  # type: ignore[return-value]


@pytest.fixture
def box(tmp_path: Path) -> Maildir:
    return create_user_mailbox(tmp_path, "a@x.test")


def _copies(box: Maildir) -> list[bytes]:
    return [m.path(box.root).read_bytes() for m in box.scan()]


def _lose_journal(data: Path) -> None:
    """The crash kept none of the journal's lines since its last sync."""
    for path in (data / "mda" / "delivered").glob("*.log"):
        os.truncate(path, 0)


def _eio(*args: object) -> None:
    """A disk that fails: what a patched sync call raises."""
    raise OSError(errno.EIO, "I/O error")


def _spy_fsync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths ``os.fsync`` is called on from now on (it still syncs them)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def _roll_marker_back(data: Path, batches: int) -> None:
    """The crash kept the marker's rename of ``batches`` batches ago, not the later ones."""
    directory = data / "mda" / "copies"
    [marker] = directory.glob("batch.*")
    os.rename(marker, directory / f"batch.{int(marker.name[6:]) - batches}")


# --- the log's format ---------------------------------------------------------------------

def test_batches_start_on_block_boundaries_and_a_scan_starts_where_asked() -> None:
    one = encode([("Q1", "a@x", "k1", "/m", b"x" * 10), ("Q2", "b@x", "k2", "/m", b"y")],
                 gen=3, batch=7, salt=42)
    two = encode([("Q3", "c@x", "k3", "/m", b"z" * 5000)], gen=3, batch=8, salt=42)
    assert len(one) == BLOCK and len(two) == 2 * BLOCK
    segment = one + two + bytes(BLOCK)
    records, ident = scan(segment)
    assert ident == (3, 42)
    assert [(r.envid, r.rcpt, r.key, r.root, r.data, r.batch) for r in records] == [
        ("Q1", "a@x", "k1", "/m", b"x" * 10, 7), ("Q2", "b@x", "k2", "/m", b"y", 7),
        ("Q3", "c@x", "k3", "/m", b"z" * 5000, 8)]
    assert [r.envid for r in scan(segment, since=(3, BLOCK))[0]] == ["Q3"]
    assert scan(segment, since=(4, 0)) == ([], (3, 42))
    assert scan(bytes(BLOCK)) == ([], None)


def test_a_scan_reads_neither_an_older_generation_nor_a_record_crafted_inside_a_message() -> None:
    """What follows the newest records in a reused segment is the older generation's; a
    message may hold bytes shaped like a record (the format is public). Neither is read: a
    record must carry the generation and the random salt of the one at offset 0."""
    newer = encode([("Q2", "a@x", "k2", "/m", b"new")], gen=5, batch=2, salt=1111)
    older = encode([("Q0", "a@x", "k0", "/m", b"old")] * 3, gen=3, batch=1, salt=2222)
    assert [r.envid for r in scan(newer + older[len(newer):])[0]] == ["Q2"]
    forged = encode([("Q9", "evil@x", "k9", "/etc", b"pwned")], gen=5, batch=3, salt=9999)
    assert [r.envid for r in scan(newer + forged)[0]] == ["Q2"]
    honest = encode([("Q3", "a@x", "k3", "/m", b"next")], gen=5, batch=3, salt=1111)
    assert [r.envid for r in scan(newer + honest)[0]] == ["Q2", "Q3"]


def test_a_torn_batch_ends_the_scan_and_the_batches_before_it_stay() -> None:
    first = encode([("Q1", "a@x", "k1", "/m", b"one")], gen=1, batch=1, salt=5)
    second = bytearray(encode([("Q2", "a@x", "k2", "/m", b"two" * 100)], gen=1, batch=2,
                              salt=5))
    second[60] ^= 0xFF  # the crash kept part of the write
    assert [r.envid for r in scan(first + bytes(second))[0]] == ["Q1"]


def test_the_log_goes_on_in_its_other_segment_once_the_checkpoint_has_passed_it(
        tmp_path: Path) -> None:
    clog = CopyLog(tmp_path / "copies", SEGMENT)
    clog.begin()
    flushes: list[tuple[int, int]] = []

    def checkpoint() -> None:
        flushes.append(clog.position())
        clog.checkpoint(clog.position())

    clog.on_full = checkpoint
    body = b"x" * 3000
    for n in range(60):  # one block each: 16 a segment, so three switches
        clog.append([(f"Q{n}", "a@x", f"k{n}", "/m", body)], n)
    assert len(flushes) == 2  # the first switch found the other segment already passed
    assert clog.position()[0] == 4 and clog.position()[1] == 12 * BLOCK
    assert [r.envid for r in read_pending(tmp_path / "copies")] == [f"Q{n}" for n in range(48, 60)]
    clog.on_full = None
    with pytest.raises(OSError, match="checkpoint did not move"):
        for n in range(60, 80):
            clog.append([(f"Q{n}", "a@x", f"k{n}", "/m", body)], n)


def test_one_mda_at_a_time_writes_a_copy_log(tmp_path: Path) -> None:
    """A second mda started on the same data directory (its ports will turn out to be taken)
    must not recover and move the checkpoint past the records of the one running."""
    clog = CopyLog(tmp_path / "copies", SEGMENT)
    with pytest.raises(OSError, match="another mda is using this copy log"):
        CopyLog(tmp_path / "copies", SEGMENT)
    clog.close()
    CopyLog(tmp_path / "copies", SEGMENT).close()


def test_the_checkpoint_never_moves_back_and_skip_pending_passes_every_record(
        tmp_path: Path) -> None:
    clog = CopyLog(tmp_path / "copies", SEGMENT)
    clog.begin()
    clog.append([("Q1", "a@x", "k1", "/m", b"one")], 1)
    clog.append([("Q2", "a@x", "k2", "/m", b"two")], 2)
    later = clog.position()
    clog.checkpoint(later)
    clog.checkpoint((later[0], 0))
    assert (tmp_path / "copies" / "checkpoint").read_text().split() == [str(n) for n in later]
    clog.append([("Q3", "a@x", "k3", "/m", b"three")], 3)
    assert [r.envid for r in read_pending(tmp_path / "copies")] == ["Q3"]
    skip_pending(tmp_path / "copies")
    assert read_pending(tmp_path / "copies") == []


# --- the commit path ----------------------------------------------------------------------

def test_a_copy_is_in_the_mailbox_in_the_journal_and_in_the_log(tmp_path: Path,
                                                               box: Maildir) -> None:
    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    assert (box.root / "new" / key).read_bytes().endswith(b"body\n")
    assert mda.dlog.lookup("Q1", "a@x.test") == key
    [record] = read_pending(tmp_path / "mda" / "copies")
    assert (record.key, record.data) == (key, (box.root / "new" / key).read_bytes())
    assert isinstance(mda.retry("Q1"), Delivered)  # the mta's retry: no second copy


def test_a_copy_too_big_for_the_log_is_synced_the_other_way(tmp_path: Path,
                                                             box: Maildir) -> None:
    mda = Mda(tmp_path)
    big = b"Subject: big\r\n\r\n" + b"x" * (SEGMENT // 8) + b"\r\n"
    key = mda.deliver("QBIG", big)
    assert (box.root / "new" / key).exists()
    assert read_pending(tmp_path / "mda" / "copies") == []


def test_a_batch_bigger_than_a_segment_takes_the_log_for_half_a_segment_only(
        tmp_path: Path, box: Maildir) -> None:
    """Concurrent big messages: the log takes the first copies of a batch up to half a
    segment and the rest are synced the other way. A batch written past the segment's end
    would grow the file, and the next start, finding a segment of the wrong size, would
    write it full of zeros again before reading the records a crash left."""
    mda = Mda(tmp_path)
    body = b"Subject: big\r\n\r\n" + b"x" * (SEGMENT // 8 - 1024) + b"\r\n"
    ready = [prepare(tmp_path, "a@x.test", "a@x.test", "s@y.test", body, f"Q{n}", mda.dlog)
             for n in range(12)]  # 12 copies of ~7 KiB in a 64 KiB segment
    results = commit_copies(ready, mda.dlog, mda.clog)  # type: ignore[arg-type]
    assert all(isinstance(r, str) for r in results), results
    assert len(box.scan()) == 12
    for seg in (tmp_path / "mda" / "copies").glob("*.seg"):
        assert seg.stat().st_size == SEGMENT
    logged = read_pending(tmp_path / "mda" / "copies")
    assert 0 < len(logged) < 12
    assert sum(len(r.data) for r in logged) <= SEGMENT // 2
    _lose_journal(tmp_path)  # the crash: the next start still finds every logged record
    after = Mda(tmp_path)
    assert after.checked == len(logged)


def test_a_failed_flush_of_the_log_fails_the_copy_and_its_retry_finds_it(
        tmp_path: Path, box: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """No 250 without the flush: the mta retries and the copy already in new/ is made durable
    the other way; the log takes no more copies until the next start."""
    mda = Mda(tmp_path)

    monkeypatch.setattr(copylog_mod.os, "fdatasync", _eio)
    ready = prepare(tmp_path, "a@x.test", "a@x.test", "s@y.test", MSG, "Q1", mda.dlog)
    [result] = commit_copies([ready], mda.dlog, mda.clog)
    monkeypatch.undo()
    assert isinstance(result, OSError) and mda.clog.broken
    again = mda.retry("Q1")
    assert isinstance(again, Delivered) and again.duplicate
    key = mda.deliver("Q2")  # synced the other way
    assert (box.root / "new" / key).exists() and len(box.scan()) == 2


def test_a_checkpoint_leaves_nothing_for_the_next_start(tmp_path: Path, box: Maildir) -> None:
    mda = Mda(tmp_path)
    mda.deliver("Q1")
    assert checkpoint_copies(mda.clog, mda.dlog)
    assert not checkpoint_copies(mda.clog, mda.dlog)  # nothing new
    after = Mda(tmp_path)
    assert (after.checked, after.rebuilt) == (0, 0)
    assert after.dlog.after_checkpoint() == {}


def test_a_failed_sync_of_the_copies_keeps_the_checkpoint_for_the_next_start(
        tmp_path: Path, box: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an I/O error in the checkpointer's syncfs, a later one may succeed without the
    copies' data on disk: the checkpoint never moves again in this process, the log takes no
    more copies, and the next start rebuilds the copies since from the log."""
    from mailstack.mda import delivery

    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    whole = (box.root / "new" / key).read_bytes()

    monkeypatch.setattr(delivery, "syncfs", _eio)
    with pytest.raises(OSError):
        checkpoint_copies(mda.clog, mda.dlog)
    monkeypatch.undo()
    assert mda.clog.held and mda.clog.broken
    mda.deliver("Q2")  # synced on its own
    assert not checkpoint_copies(mda.clog, mda.dlog)
    assert [r.envid for r in read_pending(tmp_path / "mda" / "copies")] == ["Q1"]
    os.truncate(box.root / "new" / key, 0)  # what the failed write-back left
    after = Mda(tmp_path)
    assert after.rebuilt == 1 and whole in _copies(box) and len(box.scan()) == 2


def test_after_a_failed_sync_the_copies_since_the_checkpoint_are_synced_one_by_one_at_once(
        tmp_path: Path, box: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only at the next start: a copy whose write-back failed may read wrong as soon as
    the page cache lets it go."""
    from mailstack.mda import delivery

    mda = Mda(tmp_path)
    k1, k2, k3 = (mda.deliver(f"Q{n}") for n in (1, 2, 3))
    whole2 = (box.root / "new" / k2).read_bytes()
    os.utime(box.root / "new" / k1, ns=(1_000_000_000, 1_000_000_000))  # its received date

    monkeypatch.setattr(delivery, "syncfs", _eio)
    with pytest.raises(OSError):
        checkpoint_copies(mda.clog, mda.dlog)
    monkeypatch.undo()
    os.truncate(box.root / "new" / k2, 0)  # the page cache let Q2's lost write-back go
    (box.root / "new" / k3).unlink()  # a user deleted Q3
    synced = _spy_fsync(monkeypatch)
    assert delivery.resync_copies(mda.clog, mda.dlog) == (1, 1)
    monkeypatch.undo()
    [copy1] = [m for m in box.scan() if m.key == k1]
    [copy2] = [m for m in box.scan() if m.key != k1]
    assert copy1.path(box.root).stat().st_mtime_ns == 1_000_000_000
    assert copy2.path(box.root).read_bytes() == whole2  # whole again, under a new key
    assert str(copy1.path(box.root)) in synced and str(copy2.path(box.root)) in synced
    assert str(box.root / "new") in synced  # their directory
    assert len(box.scan()) == 2  # the deleted one stays deleted
    assert mda.dlog.lookup("Q2", "a@x.test") == copy2.key  # the journal names the new key
    again = mda.retry("Q2")
    assert isinstance(again, Delivered) and again.duplicate
    assert mda.clog.held  # the next start checks them once more, and finds them whole
    after = Mda(tmp_path)
    assert after.rebuilt == 0 and len(box.scan()) == 2


def test_the_checkpointer_syncs_the_copies_one_by_one_after_a_failed_syncfs_until_it_works(
        tmp_path: Path, box: Maildir, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from mailstack.mda import daemon, delivery

    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    checkpointer = daemon.Checkpointer(SimpleNamespace(copylog=mda.clog, dlog=mda.dlog))

    monkeypatch.setattr(delivery, "syncfs", _eio)
    monkeypatch.setattr(delivery, "fsync_dir", _eio)  # the disk still fails
    checkpointer.tick()
    assert mda.clog.held and not checkpointer.resynced
    assert "could not be synced one by one either" in caplog.text
    checkpointer.tick()  # within RESYNC_RETRY: no new attempt
    assert caplog.text.count("one by one either") == 1
    monkeypatch.undo()
    synced = _spy_fsync(monkeypatch)
    checkpointer.next_resync = 0.0  # RESYNC_RETRY has passed
    checkpointer.tick()
    assert checkpointer.resynced and str(box.root / "new" / key) in synced
    assert "one by one: 1 whole, 0 replaced" in caplog.text
    synced.clear()
    checkpointer.tick()  # done once: the checkpoint stays held, nothing more to do
    assert synced == [] and mda.clog.held


# --- recovery: every state a crash can leave -----------------------------------------------

def test_whole_copies_are_left_alone(tmp_path: Path, box: Maildir) -> None:
    mda = Mda(tmp_path)
    keys = [mda.deliver("Q1"), mda.deliver("Q2")]
    after = Mda(tmp_path)
    assert (after.checked, after.rebuilt) == (2, 0)
    assert sorted(m.key for m in box.scan()) == sorted(keys)
    assert Mda(tmp_path).checked == 0  # the start moved the checkpoint


@pytest.mark.parametrize("where", ["new", "cur"])
def test_a_copy_whose_data_was_lost_is_replaced_by_a_whole_one_with_its_flags(
        tmp_path: Path, box: Maildir, where: str) -> None:
    """The rename survived, the data did not (an empty file): the 250 went out, so a whole
    copy is rebuilt from the log, under a new name (an imap daemon that started first may
    have indexed the empty file: it sees that one go and the whole one come); flagged by an
    imap daemon before the crash, it keeps its flags."""
    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    whole = (box.root / "new" / key).read_bytes()
    if where == "cur":
        box.set_flags(box.find(key), "S")  # type: ignore[arg-type]
    [msg] = box.scan()
    damaged = msg.path(box.root)
    os.truncate(damaged, 0)
    after = Mda(tmp_path)
    assert (after.checked, after.rebuilt) == (1, 1)
    [rebuilt] = box.scan()
    assert rebuilt.key != key and not damaged.exists()
    assert rebuilt.path(box.root).read_bytes() == whole
    assert rebuilt.path(box.root).parent == damaged.parent
    assert rebuilt.flags == ("S" if where == "cur" else "")
    assert recover(tmp_path, after.dlog) == (1, 0)  # then the journal's check finds it whole
    again = after.retry("Q1")  # the journal names the new copy: no third one
    assert isinstance(again, Delivered) and again.duplicate and len(box.scan()) == 1


def test_a_copy_whose_creation_was_lost_is_rebuilt_and_its_retry_makes_no_second(
        tmp_path: Path, box: Maildir) -> None:
    """Nothing of the batch's files, renames, journal line or marker survived; only the
    log's record did, and with it the 250."""
    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    whole = (box.root / "new" / key).read_bytes()
    (box.root / "new" / key).unlink()
    _lose_journal(tmp_path)
    _roll_marker_back(tmp_path, 1)
    after = Mda(tmp_path)
    assert (after.checked, after.rebuilt) == (1, 1)
    assert _copies(box) == [whole]
    again = after.retry("Q1")  # the mta, which may never have heard the 250
    assert isinstance(again, Delivered) and again.duplicate
    assert len(box.scan()) == 1


def test_a_copy_whose_rename_was_lost_is_rebuilt_into_new(tmp_path: Path,
                                                          box: Maildir) -> None:
    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    whole = (box.root / "new" / key).read_bytes()
    os.rename(box.root / "new" / key, box.root / "tmp" / key)
    os.truncate(box.root / "tmp" / key, 3)
    after = Mda(tmp_path)
    assert after.rebuilt == 1
    assert (box.root / "new" / key).read_bytes() == whole
    assert not (box.root / "tmp" / key).exists()


def test_a_damaged_copy_an_imap_daemon_moves_meanwhile_is_removed_where_it_went(
        tmp_path: Path, box: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """An imap daemon that starts beside the mda may move the damaged copy from new/ to cur/
    just before the mda removes it: the mda looks again and removes it there."""
    from mailstack.mda import delivery

    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    whole = (box.root / "new" / key).read_bytes()
    os.truncate(box.root / "new" / key, 0)
    real_unlink = os.unlink

    def moved_first(path: str) -> None:
        if path == str(box.root / "new" / key):  # the store indexed it just now
            os.rename(path, box.root / "cur" / f"{key}{INFO_SEP}")
            raise FileNotFoundError(path)
        real_unlink(path)

    monkeypatch.setattr(delivery.os, "unlink", moved_first)
    after = Mda(tmp_path)
    monkeypatch.undo()
    assert after.rebuilt == 1 and _copies(box) == [whole]
    assert all(m.key != key for m in box.scan())


def test_a_copy_a_user_deleted_stays_deleted(tmp_path: Path, box: Maildir) -> None:
    """The marker says the batch reached new/, so a copy that is nowhere was read and deleted
    by a user (its journal line lost or not): nothing is rebuilt."""
    mda = Mda(tmp_path)
    mda.deliver("Q1")
    [msg] = box.scan()
    msg.path(box.root).unlink()
    _lose_journal(tmp_path)
    after = Mda(tmp_path)
    assert (after.checked, after.rebuilt) == (1, 0)
    assert box.scan() == []


def test_a_copy_a_user_moved_to_another_folder_is_repaired_there(tmp_path: Path,
                                                                 box: Maildir) -> None:
    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    whole = (box.root / "new" / key).read_bytes()
    archive = box.root / ".Archive"
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True)
    moved = archive / "cur" / f"{key}{INFO_SEP}S"
    os.rename(box.root / "new" / key, moved)
    os.truncate(moved, 0)
    after = Mda(tmp_path)
    assert after.rebuilt == 1 and not moved.exists()
    [there] = list((archive / "cur").iterdir())
    assert there.name.endswith(f"{INFO_SEP}S") and there.read_bytes() == whole
    assert box.scan() == []


def test_a_cancelled_copy_and_a_deleted_account_are_not_rebuilt(tmp_path: Path,
                                                                box: Maildir) -> None:
    mda = Mda(tmp_path)
    create_user_mailbox(tmp_path, "b@x.test")
    key = mda.deliver("Q1")
    mda.deliver("Q2", rcpt="b@x.test")
    (box.root / "new" / key).unlink()
    mda.dlog.cancel([("Q1", "a@x.test")])  # taken back: the mta delivers it again
    gone = tmp_path / "mail" / "x.test" / "b"
    for path in sorted(gone.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    gone.rmdir()
    _roll_marker_back(tmp_path, 2)
    after = Mda(tmp_path)
    assert (after.checked, after.rebuilt) == (2, 0)
    assert box.scan() == [] and not gone.exists()


def test_a_copy_that_cannot_be_rebuilt_stops_the_recovery_and_the_next_start_tries_again(
        tmp_path: Path, box: Maildir) -> None:
    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    whole = (box.root / "new" / key).read_bytes()
    (box.root / "new" / key).unlink()
    _roll_marker_back(tmp_path, 1)
    (box.root / "tmp").rmdir()
    (box.root / "tmp").write_text("not a directory: the rebuilt copy cannot be written")
    with pytest.raises(OSError):
        Mda(tmp_path)
    (box.root / "tmp").unlink()
    (box.root / "tmp").mkdir()
    after = Mda(tmp_path)
    assert (after.checked, after.rebuilt) == (1, 1) and _copies(box) == [whole]


def test_the_journal_check_keeps_a_rebuilt_copy(tmp_path: Path, box: Maildir) -> None:
    """The mda's start runs the log's recovery first: the journal's check (which removes a
    copy of the wrong size, one that never got its 250) then finds every rebuilt copy whole."""
    mda = Mda(tmp_path)
    key = mda.deliver("Q1")
    path = box.root / "new" / key
    whole = path.read_bytes()
    path.write_bytes(whole[:5])
    after = Mda(tmp_path)
    assert recover(tmp_path, after.dlog) == (1, 0)
    assert _copies(box) == [whole]


def test_a_disk_without_room_for_the_log_gets_none_and_nothing_is_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two log files never take the last free space of a small disk: the mda then syncs each
    copy on its own (the daemon logs why)."""
    real = os.statvfs

    def small(path: object) -> os.statvfs_result:
        st = real(path)  # type: ignore[arg-type]
        return os.statvfs_result((st.f_bsize, 4096, 1000, 100, 100, 100, 100, 100, 0, 255))

    monkeypatch.setattr(copylog_mod.os, "statvfs", small)
    with pytest.raises(OSError, match="free for two log files"):
        CopyLog(tmp_path / "copies", SEGMENT)
    assert not CopyLog.exists(tmp_path / "copies")
    assert [p.name for p in (tmp_path / "copies").iterdir()] == ["lock"]


def test_the_checkpointer_and_a_committer_that_needs_the_other_segment_never_wait_for_each_other(
        tmp_path: Path, box: Maildir) -> None:
    """The committer holds the commit lock for a whole batch and, when the log needs its other
    segment, checkpoints from inside it; the checkpointer takes that lock to read positions.
    Here the checkpointer wakes just as such a batch began: both must come through."""
    mda = Mda(tmp_path)
    inner = partial(checkpoint_copies, mda.clog, mda.dlog, in_commit=True)
    woken: list[threading.Thread] = []

    def on_full() -> None:
        woken.append(threading.Thread(target=checkpoint_copies, args=(mda.clog, mda.dlog),
                                      daemon=True))
        woken[-1].start()
        time.sleep(0.2)  # it takes every lock it can meanwhile (none: it waits for the batch)
        inner()

    def committer() -> None:
        for n in range(40):  # a segment holds 16: the second switch needs a checkpoint
            mda.deliver(f"Q{n}", b"Subject: s\r\n\r\n" + b"x" * 3000 + b"\r\n")

    mda.clog.on_full = on_full
    work = threading.Thread(target=committer, daemon=True)
    work.start()
    work.join(30)
    assert woken, "no batch needed a checkpoint"
    woken[0].join(30)
    assert not work.is_alive() and not woken[0].is_alive(), "deadlock"
    assert len(box.scan()) == 40
