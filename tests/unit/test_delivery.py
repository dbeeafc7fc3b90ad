"""Maildir delivery: atomic, idempotent per queue id, crash windows covered."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailstack.mda.delivery import DeliveryLog, deliver
from mailstack.mta.queue import new_queue_id
from mailstack.store.maildir import (
    Maildir,
    PieceSizes,
    create_user_mailbox,
    crlf_size,
    lf_pieces,
    to_crlf,
    to_lf,
)


def test_delivery_layout_and_sizes(tmp_path: Path) -> None:
    create_user_mailbox(tmp_path, "a@x.test")
    d = deliver(tmp_path, "a@x.test", "a@x.test", "s@y.test", b"Subject: s\r\n\r\nbody\r\n",
                None, None)
    assert d.path.parent.name == "new"
    disk = d.path.read_bytes()
    assert disk.startswith(b"Return-Path: <s@y.test>\nDelivered-To: a@x.test\n")
    assert f",S={len(disk)},W={len(to_crlf(disk))}" in d.path.name
    assert crlf_size(disk) == len(to_crlf(disk))
    box = create_user_mailbox(tmp_path, "a@x.test")
    assert [m.key for m in box.scan()] == [d.path.name]
    assert sorted(p.name for p in box.root.iterdir() if p.name.startswith(".")) == \
        [".Drafts", ".Junk", ".Sent", ".Trash"]
    assert (box.root / "subscriptions").read_text().split() == ["Sent", "Drafts", "Trash", "Junk"]


def test_crash_after_log_before_rename_is_completed_once(tmp_path: Path) -> None:
    box = create_user_mailbox(tmp_path, "a@x.test")
    dlog = DeliveryLog(tmp_path / "dlog")
    real_rename = os.rename

    def crash(src, dst):  # simulate the process dying right after the log append
        raise KeyboardInterrupt

    os.rename = crash
    try:
        try:
            deliver(tmp_path, "a@x.test", "a@x.test", "s@y", b"m\r\n", "Q1", dlog)
        except KeyboardInterrupt:
            pass
    finally:
        os.rename = real_rename
    key = dlog.lookup("Q1", "a@x.test")
    assert key is not None and (box.root / "tmp" / key).exists()  # left as a crash leaves it
    # the line was written before the rename: a restarted mda finds it in the file
    assert DeliveryLog(tmp_path / "dlog").lookup("Q1", "a@x.test") == key
    again = deliver(tmp_path, "a@x.test", "a@x.test", "s@y", b"m\r\n", "Q1", dlog)
    assert again.duplicate and again.path == box.root / "new" / key
    third = deliver(tmp_path, "a@x.test", "a@x.test", "s@y", b"m\r\n", "Q1", dlog)
    assert third.duplicate
    assert len(Maildir(box.root).scan()) == 1


def test_flags_rename_keeps_key(tmp_path: Path) -> None:
    box = create_user_mailbox(tmp_path, "a@x.test")
    msg = box.deliver(b"Subject: x\r\n\r\n")
    seen = box.set_flags(msg, "SF")
    assert seen.subdir == "cur" and seen.filename.endswith(":2,FS") and seen.key == msg.key
    assert box.read(msg) == b"Subject: x\n\n"  # follows the rename
    assert box.find(msg.key) == seen
    assert box.remove(msg) and not box.remove(msg)


def test_journal_survives_restart_and_is_read_for_retries(tmp_path: Path) -> None:
    create_user_mailbox(tmp_path, "a@x.test")
    first = DeliveryLog(tmp_path / "dlog")
    d1 = deliver(tmp_path, "a@x.test", "a@x.test", "s@y", b"m\r\n", "Q9", first, retry=False)
    restarted = DeliveryLog(tmp_path / "dlog")
    assert restarted.lookup("Q9", "a@x.test", thorough=False) is None
    d2 = deliver(tmp_path, "a@x.test", "a@x.test", "s@y", b"m\r\n", "Q9", restarted, retry=True)
    assert d2.duplicate and d2.path == d1.path
    assert restarted.prune(now=10**10) == 1 and restarted.lookup("Q9", "a@x.test") is None


def test_scan_orders_by_delivery_time_numerically(tmp_path: Path) -> None:
    box = create_user_mailbox(tmp_path, "a@x.test")
    for name in ("1700000000.M99999P1Q2R0.h", "1700000000.M100000P1Q3R0.h",
                 "1699999999.M5P1Q1R0.h"):
        (box.root / "new" / name).write_bytes(b"x")
    assert [m.key for m in box.scan()] == ["1699999999.M5P1Q1R0.h", "1700000000.M99999P1Q2R0.h",
                                           "1700000000.M100000P1Q3R0.h"]


def test_journal_memory_is_bounded_and_retries_search_the_files(tmp_path: Path) -> None:
    dlog = DeliveryLog(tmp_path / "dlog")
    dlog.RECENT = 10
    dlog.record_many([(f"Q{i}", "a@x.test", f"key{i}") for i in range(50)])
    dlog.record_many([("XQ7", '"a b"@x.test', "spaced")])
    assert len(dlog._index) == 10
    assert dlog.lookup("Q3", "a@x.test", thorough=False) is None  # forgotten in memory …
    assert dlog.lookup("Q3", "a@x.test") == "key3"  # … but on disk for a retry
    assert dlog.lookup("Q0", "a@x.test") == "key0"  # the file's first line
    assert dlog.lookup("Q7", '"a b"@x.test') is None  # no match inside another line
    assert DeliveryLog(tmp_path / "dlog").lookup("XQ7", '"a b"@x.test') == "spaced"
    assert dlog.lookup("Q99", "a@x.test") is None


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\r\r\n", b"x" * 5]), max_size=60),
       st.integers(2, 9))
def test_lf_pieces_add_up_to_to_lf(parts: list[bytes], piece: int) -> None:
    data = b"".join(parts)
    pieces = list(lf_pieces(memoryview(data), piece))
    assert b"".join(pieces) == to_lf(data)
    sizes = PieceSizes()
    for p in pieces:
        sizes.add(p)
    assert (sizes.size, sizes.vsize) == (len(to_lf(data)), crlf_size(to_lf(data)))


def test_big_message_is_stored_in_pieces_with_the_right_sizes(tmp_path: Path) -> None:
    box = create_user_mailbox(tmp_path, "a@x.test")
    wire = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 40_000 + b"no final newline"
    msg = box.deliver(memoryview(wire))
    disk = box.read(msg)
    assert disk == to_lf(wire)
    assert f",S={len(disk)},W={len(to_crlf(disk))}" in msg.key
    assert not list((box.root / "tmp").iterdir())


def test_a_batch_is_written_side_by_side_and_a_failed_copy_fails_alone(tmp_path: Path) -> None:
    """commit_copies writes a batch's files in parallel: every copy gets its own result, in
    order; the one that cannot be written is not journaled, the others are in new/."""
    from mailstack.mda.delivery import commit_copies, prepare

    dlog = DeliveryLog(tmp_path / "journal")
    users = [f"u{i}@x.test" for i in range(6)]
    for u in users:
        create_user_mailbox(tmp_path, u)
    copies = [prepare(tmp_path, u, u, "s@y.test", f"Subject: {u}\r\n\r\nx\r\n".encode(),
                      f"Q{i}", dlog, retry=False) for i, u in enumerate(users)]
    broken = copies[3]
    os.rename(f"{broken.root}/tmp", f"{broken.root}/tmp-away")  # type: ignore[union-attr]
    results = commit_copies(copies, dlog)  # type: ignore[arg-type]
    assert isinstance(results[3], OSError)
    for i, (u, result) in enumerate(zip(users, results, strict=True)):
        if i == 3:
            assert dlog.lookup(f"Q{i}", u) is None
            continue
        assert isinstance(result, str) and f"/new/{copies[i].key}" in result  # type: ignore[union-attr]
        assert f"Subject: {u}\n".encode() in Path(result).read_bytes()
        assert dlog.lookup(f"Q{i}", u) == copies[i].key  # type: ignore[union-attr]


def _old_queue_id(seconds_ago: float) -> str:
    """A queue id made ``seconds_ago`` (the format of :func:`new_queue_id`)."""
    return f"{int((time.time() - seconds_ago) * 1e6):013X}{new_queue_id()[13:]}"


def test_a_rename_kept_without_its_journal_line_is_found_after_a_restart(
        tmp_path: Path) -> None:
    """The journal is synced after the rename: an OS crash in between can keep the copy in
    new/ and lose its line. The mta got no 250 and retries after the restart: the copy is
    recognised by its headers, and not made twice."""
    box = create_user_mailbox(tmp_path, "a@x.test")
    create_user_mailbox(tmp_path, "b@x.test")
    qid = _old_queue_id(120)
    msg = f"Received: from c by mx.x.test with ESMTP id {qid}\r\nSubject: s\r\n\r\nb\r\n"
    first = deliver(tmp_path, "a@x.test", "a@x.test", "s@y", msg.encode(), qid,
                    DeliveryLog(tmp_path / "dlog"), retry=False)
    for journal in (tmp_path / "dlog").glob("*.log"):
        journal.write_bytes(b"")  # the line the crash lost
    box.set_flags(box.find(first.path.name), "S")  # an IMAP client saw it meanwhile: cur/
    restarted = DeliveryLog(tmp_path / "dlog")
    assert restarted.lookup(qid, "a@x.test") is None
    again = deliver(tmp_path, "a@x.test", "a@x.test", "s@y", msg.encode(), qid, restarted)
    assert again.duplicate and len(box.scan()) == 1
    # the same queue id for another recipient, never delivered: delivered now
    other = deliver(tmp_path, "b@x.test", "b@x.test", "s@y", msg.encode(), qid, restarted)
    assert not other.duplicate
    # a queue id made after the start is not searched for: its line cannot have been lost
    fresh = new_queue_id()
    assert not restarted.from_before_start(fresh) and restarted.from_before_start(qid)


def test_a_failed_journal_sync_fails_the_copy_and_its_retry_makes_no_second(
        tmp_path: Path) -> None:
    """The journal's fdatasync runs beside the new/ fsync, after the rename: when it fails
    the copy is not acknowledged (the mta retries), and the retry finds the line."""
    from mailstack.mda.delivery import commit_copies, prepare

    class FailingSync(DeliveryLog):
        def sync(self) -> None:
            raise OSError(5, "Input/output error")

    box = create_user_mailbox(tmp_path, "a@x.test")
    dlog = FailingSync(tmp_path / "dlog")
    ready = prepare(tmp_path, "a@x.test", "a@x.test", "s@y", b"m\r\n", "Q5", dlog)
    [result] = commit_copies([ready], dlog)  # type: ignore[list-item]
    assert isinstance(result, OSError) and result.errno == 5
    again = deliver(tmp_path, "a@x.test", "a@x.test", "s@y", b"m\r\n", "Q5",
                    DeliveryLog(tmp_path / "dlog"))
    assert again.duplicate and len(box.scan()) == 1
