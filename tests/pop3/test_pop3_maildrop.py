"""The maildrop on a real Maildir: lock, snapshot, UIDLs, seen flags, DELE/RSET/UPDATE."""

from __future__ import annotations

import os

import pytest

from mailstack.config import Config
from mailstack.pop3.maildrop import (
    LOCK_NAME,
    Maildrop,
    MaildropLocked,
    MessageGone,
    NoSuchMessage,
    SnapshotCache,
    hashed_uidl,
    snapshot,
    uidl_for,
)
from mailstack.store.account import AccountStore
from mailstack.store.maildir import Maildir, create_user_mailbox, crlf_size

from .pop3_helpers import make_alice, message


@pytest.fixture
def box(cfg: Config) -> Maildir:
    return make_alice(cfg, messages=3)


def test_snapshot_sizes_and_order(box: Maildir) -> None:
    drop = Maildrop.open(box)
    try:
        assert len(drop.entries) == 3
        for n in (1, 2, 3):
            data = drop.read(n)
            assert data == message(n)  # oldest first
            assert drop.get(n).size == crlf_size(data) == len(data) + data.count(b"\n")
        assert drop.stat() == (3, sum(e.size for e in drop.entries))
    finally:
        drop.close()


def test_second_session_is_locked_out_until_the_first_closes(box: Maildir) -> None:
    first = Maildrop.open(box)
    with pytest.raises(MaildropLocked):
        Maildrop.open(box)
    assert (box.root / LOCK_NAME).exists()
    box.deliver(b"Subject: delivery goes on\n\nx\n")  # deliveries are not blocked
    first.close()
    second = Maildrop.open(box)
    assert len(second.entries) == 4
    second.close()


def test_lock_is_per_mailbox(cfg: Config, box: Maildir) -> None:
    bob = create_user_mailbox(cfg.data_dir, "bob@example.test")
    a, b = Maildrop.open(box), Maildrop.open(bob)
    a.close()
    b.close()


def test_new_mail_waits_for_the_next_session(box: Maildir) -> None:
    drop = Maildrop.open(box)
    box.deliver(b"Subject: late\n\nlate\n")
    assert drop.stat()[0] == 3
    with pytest.raises(NoSuchMessage):
        drop.get(4)
    drop.close()
    drop = Maildrop.open(box)
    assert drop.stat()[0] == 4
    drop.close()


def test_uidls_stable_across_sessions_and_flag_changes(box: Maildir) -> None:
    drop = Maildrop.open(box)
    before = [e.uidl for e in drop.entries]
    drop.mark_seen(1)
    drop.close()
    # another writer (an IMAP session) flags and moves every message
    for msg in box.scan():
        box.set_flags(msg, msg.flags + "FR")
    drop = Maildrop.open(box)
    assert [e.uidl for e in drop.entries] == before
    drop.close()
    assert len(set(before)) == 3
    for u in before:
        assert 1 <= len(u) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in u)


def test_uidl_forms() -> None:
    plain = "1764172505.M1P2Q3R0a0b0c0d.host,S=10,W=12"
    assert uidl_for(plain) == "1764172505.M1P2Q3R0a0b0c0d.host"
    for odd in ("1.M2.h\u00e9st,S=1", "x" * 71, "~starts-with-tilde", "sp ace", ""):
        u = uidl_for(odd)
        assert u == hashed_uidl(odd) and u.startswith("~") and len(u) == 33
    assert uidl_for("a" * 70) == "a" * 70


def test_duplicate_base_names_get_distinct_uidls(box: Maildir) -> None:
    for name in ("1700000000.dup.host,S=5", "1700000000.dup.host,S=6"):
        (box.root / "new" / name).write_bytes(b"A: b\n")
    drop = Maildrop.open(box)
    uidls = [e.uidl for e in drop.entries]
    drop.close()
    assert len(set(uidls)) == len(uidls) == 5


def test_size_measured_when_the_name_has_no_w_field(box: Maildir) -> None:
    (box.root / "cur" / "1600000000.foreign.host:2,").write_bytes(b"A: b\n\nline\n")
    drop = Maildrop.open(box)
    assert drop.entries[0].size == len(b"A: b\r\n\r\nline\r\n")
    drop.close()


def test_mark_seen_moves_to_cur_and_keeps_concurrent_flags(box: Maildir) -> None:
    drop = Maildrop.open(box)
    assert drop.get(1).msg.flags == ""
    stale = drop.get(2).msg
    box.set_flags(stale, "F")  # an IMAP client flags message 2 after our snapshot
    drop.mark_seen(1)
    drop.mark_seen(2)
    drop.close()
    flags = {m.key: (m.subdir, m.flags) for m in box.scan()}
    assert flags[drop.entries[0].msg.key] == ("cur", "S")
    assert flags[stale.key] == ("cur", "FS")
    assert flags[drop.entries[2].msg.key][1] == ""  # not retrieved: no flag (the index moved
    # it to cur/ when it first saw it, as Dovecot does)


def test_dele_rset_and_commit(box: Maildir) -> None:
    drop = Maildrop.open(box)
    drop.delete(1)
    with pytest.raises(NoSuchMessage):
        drop.get(1)
    with pytest.raises(NoSuchMessage):
        drop.delete(1)
    assert drop.stat()[0] == 2
    drop.reset()
    assert drop.stat()[0] == 3
    drop.delete(2)
    drop.delete(3)
    drop.mark_seen(1)
    assert drop.commit() == (2, 0)
    drop.close()
    left = box.scan()
    assert len(left) == 1 and left[0].key == drop.entries[0].msg.key


def test_close_without_commit_deletes_nothing(box: Maildir) -> None:
    drop = Maildrop.open(box)
    for n in (1, 2, 3):
        drop.delete(n)
    drop.close()
    assert len(box.scan()) == 3


def test_message_removed_by_another_writer(box: Maildir) -> None:
    drop = Maildrop.open(box)
    os.unlink(drop.get(2).msg.path(box.root))
    with pytest.raises(MessageGone):
        drop.read(2)
    drop.delete(2)
    drop.delete(3)
    assert drop.commit() == (1, 0)  # already gone is not a failure
    drop.close()


def test_bad_numbers(box: Maildir) -> None:
    drop = Maildrop.open(box)
    for n in (0, 4, -1, 10**9):
        with pytest.raises(NoSuchMessage):
            drop.get(n)
    drop.close()


def test_snapshot_cache_reuses_names_and_sees_every_change(box: Maildir) -> None:
    cache = SnapshotCache()
    holder = Maildrop.open(box)  # warming needs no lock: it runs while another session holds it
    assert len(snapshot(box, cache).entries) == 3 and (cache.hits, cache.misses) == (0, 1)
    holder.close()
    drop = Maildrop.open(box, cache)
    assert (cache.hits, cache.misses) == (1, 1)  # unchanged listing: nothing parsed again
    drop.close()

    def changes():  # each as another client would make it
        yield "deliver", lambda: box.deliver(b"Subject: new\n\nx\n")
        yield "flag", lambda: box.set_flags(box.scan()[0], "S")
        yield "foreign file without W=", lambda: (box.root / "cur" / "1.foreign.h:2,")\
            .write_bytes(b"A: b\n\nbody\n")

        def pop3_session_deletes() -> None:
            other = Maildrop.open(box, cache)
            other.delete(1)
            other.commit()
            other.close()
        yield "delete", pop3_session_deletes

    for label, change in changes():
        snapshot(box, cache)  # warm
        change()
        drop = Maildrop.open(box, cache)
        expected = sorted(box.scan(), key=lambda m: m.key)  # the store's order is its UIDs'
        assert sorted((e.msg for e in drop.entries), key=lambda m: m.key) == expected, label
        assert sorted(e.uidl for e in drop.entries) == sorted(uidl_for(m.key)
                                                              for m in expected), label
        assert drop.stat()[1] == sum(len(box.read(m)) + box.read(m).count(b"\n")
                                     for m in expected), label
        drop.close()
    assert cache.misses >= 5


def test_snapshot_cache_is_bounded(cfg: Config) -> None:
    cache = SnapshotCache(max_messages=4)
    boxes = [create_user_mailbox(cfg.data_dir, f"u{i}@example.test") for i in range(3)]
    for b in boxes:
        b.deliver(b"A: b\n\nx\n")
        b.deliver(b"A: c\n\ny\n")
        snapshot(b, cache)
        snapshot(b, cache)  # replacing an entry does not count its messages twice
    assert cache.get(str(boxes[0].root)) is None  # least recently used: forgotten
    assert cache.get(str(boxes[1].root)) is not None
    assert cache.get(str(boxes[2].root)) is not None


def test_read_whole_file_even_if_the_name_understates_its_size(box: Maildir) -> None:
    body = b"Subject: big\n\n" + b"y" * 3_000_000 + b"\n"
    (box.root / "new" / "1500000000.liar.host,S=10,W=12").write_bytes(body)
    drop = Maildrop.open(box)
    assert drop.get(1).size == crlf_size(body)  # what the store measured, not the name
    assert drop.read(1) == body
    drop.close()


def test_sessions_sharing_a_cached_snapshot_do_not_share_marks(box: Maildir) -> None:
    cache = SnapshotCache()
    first = Maildrop.open(box, cache)
    first.delete(1)
    first.delete(3)
    assert first.stat()[0] == 1
    first.close()  # no QUIT
    second = Maildrop.open(box, cache)
    assert cache.hits == 1 and second.entries is first.entries  # the same immutable list
    assert second.stat() == (3, sum(e.size for e in second.entries))
    second.get(1)
    second.close()


def test_snapshot_is_the_store_inbox(box: Maildir) -> None:
    """POP3 lists what the account store has, in UID order and with its sizes (IMAP's view)."""
    box.deliver(b"Subject: later\n\nx\n")
    (box.root / "cur" / "1.foreign.h:2,").write_bytes(b"A: b\n\nbody\n")  # placed by hand
    drop = Maildrop.open(box)
    try:
        snap, _ = AccountStore.open(box.root).sync("INBOX")
        assert [(e.msg.key, e.size) for e in drop.entries] == [(x.key, x.size)
                                                              for x in snap.entries]
        assert len(drop.entries) == 5
    finally:
        drop.close()
