"""Faults of the store: kill -9 of an imap daemon in the middle of flag changes, expunges and
appends; a Maildir changed behind the index's back; a full disk during an update."""

from __future__ import annotations

import errno
import imaplib
import os
import random
import re
import signal
import threading
import time

import pytest

from mailstack.store.account import AccountStore
from mailstack.store.flags import to_letters
from mailstack.store.keywords import Keywords
from mailstack.store.maildir import Maildir, mailbox_path
from tests.e2e.helpers import Proc
from tests.store.conftest import USER, Stack, wait_port


def index_agrees_with_maildir(stack: Stack) -> None:
    """After a sync, every file has one row and every row its file, named for its flags."""
    root = mailbox_path(stack.cfg.data_dir, USER)
    snap, _ = AccountStore(root).sync("INBOX")
    files = {}
    for sub in ("new", "cur"):
        for name in os.listdir(root / sub):
            if not name.startswith("."):
                files[name.split(":2,")[0]] = (sub, name)
    assert {e.key for e in snap.entries} == set(files)
    kw = Keywords(root)
    for e in snap.entries:
        sub, name = files[e.key]
        letters = name.split(":2,")[1] if ":2," in name else ""
        assert "".join(sorted(letters)) == to_letters(e.flags, kw, assign=False), (e, name)


def kill_and_restart(stack: Stack, index: int, name: str, config: str, port: int) -> None:
    """``kill -9`` daemon ``index`` of the stack, then start it again on the same config."""
    os.killpg(stack.procs[index].popen.pid, signal.SIGKILL)
    killed = stack.procs[index]
    killed.terminate()  # reaps it and collects its output
    stack.killed_logs.append(killed.output)
    if killed.popen.stdout is not None:
        killed.popen.stdout.close()
    stack.procs[index] = Proc("serve", name, "--config", config)
    wait_port(port, stack.procs[index])


def test_kill_9_mid_operations_loses_and_duplicates_nothing(stack: Stack) -> None:
    appended: dict[str, int] = {}
    deleted: set[int] = set()
    stop = threading.Event()
    rnd = random.Random(7)
    counter = iter(range(1_000_000))

    def client() -> None:
        while not stop.is_set():
            try:
                c = stack.imap(0)
            except (OSError, imaplib.IMAP4.error, AssertionError):
                time.sleep(0.05)
                continue
            try:
                while not stop.is_set():
                    n = next(counter)
                    mid = f"k{n}@faults.test"
                    typ, data = c.append("INBOX", None, None,
                                         f"Message-ID: <{mid}>\r\n\r\nx\r\n".encode())
                    if typ == "OK":
                        appended[mid] = int(re.search(rb"APPENDUID \d+ (\d+)", data[0])[1])
                    uids = list(appended.values())
                    pick = rnd.sample(uids, min(3, len(uids)))
                    if rnd.random() < 0.3:
                        deleted.update(pick)
                        c.uid("STORE", ",".join(map(str, pick)), "+FLAGS", "(\\Deleted)")
                        c.expunge()
                    else:
                        c.uid("STORE", ",".join(map(str, pick)), "+FLAGS", "(\\Seen $K)")
            except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error, EOFError):
                continue

    t = threading.Thread(target=client, daemon=True)
    t.start()
    config = stack.procs[0].popen.args[-1]

    def progress(n: int = 5) -> None:
        """Wait until the client has appended ``n`` more messages (the daemon is mid-work)."""
        target, deadline = len(appended) + n, time.monotonic() + 120
        while len(appended) < target:
            assert time.monotonic() < deadline, f"no progress: {len(appended)} appended"
            time.sleep(0.02)

    try:
        for _ in range(4):
            progress()
            kill_and_restart(stack, 0, "imap", config, stack.imap_ports[0])
        progress()
    finally:
        stop.set()
        t.join(30)
    assert len(appended) >= 25
    fresh = stack.imap(1)
    data = fresh.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")[1]
    ids = re.findall(rb"<(k\d+@faults\.test)>", b"".join(x[1] for x in data
                                                          if isinstance(x, tuple)))
    assert len(ids) == len(set(ids)), "a message is there twice"
    present = {i.decode() for i in ids}
    lost = {m for m, u in appended.items() if u not in deleted} - present
    assert not lost, lost
    assert len(set(appended.values())) == len(appended), "a UID was given twice"
    index_agrees_with_maildir(stack)


def test_maildir_changed_behind_the_index(stack: Stack) -> None:
    c = stack.imap(0)
    for n in range(3):
        assert c.append("INBOX", None, None, f"Subject: {n}\r\n\r\nx\r\n".encode())[0] == "OK"
    box = Maildir(mailbox_path(stack.cfg.data_dir, USER))
    msgs = box.scan()
    box.remove(msgs[0])  # another tool deletes one, flags another, adds a third
    box.set_flags(msgs[1], "FS")
    box.deliver(b"Subject: dropped in\r\n\r\nx\r\n")
    assert c.uid("FETCH", "1:*", "(FLAGS)")[0] == "OK"
    assert c.noop()[0] == "OK"
    views = {int(m[1]): m[2].decode().split() for m in
             (re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", x) for x in
              stack.imap(1).uid("FETCH", "1:*", "(UID FLAGS)")[1]) if m}
    assert sorted(views) == [2, 3, 4]
    assert set(views[2]) == {"\\Flagged", "\\Seen"}
    index_agrees_with_maildir(stack)


def test_full_disk_during_a_flag_change_changes_nothing(tmp_path, monkeypatch) -> None:
    """The index commit fails (ENOSPC): the renames are undone, the error reaches the caller,
    and index and Maildir still agree."""
    box = Maildir(tmp_path / "box")
    box.create()
    box.deliver(b"Subject: a\r\n\r\nx\r\n")
    store = AccountStore(box.root)
    store.sync("INBOX")
    before = sorted(os.listdir(box.root / "new")) + sorted(os.listdir(box.root / "cur"))
    real = store._finish

    def full(*args, **kw):
        real(*args, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_finish", full)
    with pytest.raises(OSError):
        store.store_flags("INBOX", [1], "+", ["\\Seen", "$Big"])
    monkeypatch.undo()
    after = sorted(os.listdir(box.root / "new")) + sorted(os.listdir(box.root / "cur"))
    assert after == before
    snap, _ = AccountStore(box.root).sync("INBOX")
    assert snap.entries[0].flags == frozenset()
    assert store.store_flags("INBOX", [1], "+", ["\\Seen"]).changed == [1]


def test_kill_9_of_pop3_mid_update_keeps_what_was_not_deleted(stack: Stack) -> None:
    """POP3 sessions retrieve all and delete half while the pop3 daemon is killed at random
    moments: a message never marked DELE is never lost, none is duplicated, and the index and
    the Maildir agree afterwards."""
    import poplib

    c = stack.imap(0)
    for n in range(60):
        assert c.append("INBOX", None, None, f"Message-ID: <p{n}@faults.test>\r\n\r\nx\r\n"
                        .encode())[0] == "OK"
    dele_marked: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                p = poplib.POP3("127.0.0.1", stack.pop3_port, timeout=10)
                p.user(USER)
                p.pass_("wonderland")
                count, _ = p.stat()
                for i in range(1, count + 1):
                    lines = p.retr(i)[1]
                    mid = next((ln for ln in lines if ln.startswith(b"Message-ID:")), b"")
                    if i % 2 and mid:
                        dele_marked.add(mid.split(b"<")[1].split(b">")[0].decode())
                        p.dele(i)
                p.quit()
            except (OSError, poplib.error_proto, EOFError, IndexError):
                time.sleep(0.02)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    config = stack.procs[2].popen.args[-1]
    try:
        for _ in range(4):
            time.sleep(0.3)
            kill_and_restart(stack, 2, "pop3", config, stack.pop3_port)
    finally:
        stop.set()
        t.join(30)
    fresh = stack.imap(1)
    data = fresh.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")[1]
    ids = re.findall(rb"<(p\d+@faults\.test)>", b"".join(x[1] for x in data
                                                          if isinstance(x, tuple)))
    assert len(ids) == len(set(ids)), "a message is there twice"
    never_deleted = {f"p{n}@faults.test" for n in range(60)} - dele_marked
    assert never_deleted <= {i.decode() for i in ids}
    index_agrees_with_maildir(stack)
