"""A POP3 maildrop: an exclusive lock on a user's INBOX plus the snapshot taken at login.

- One POP3 session per mailbox: ``flock(LOCK_EX | LOCK_NB)`` on ``pop3.lock`` inside the Maildir;
  a second session gets :class:`MaildropLocked` (``-ERR [IN-USE]``). Only POP3 takes this lock:
  IMAP sessions and deliveries carry on. The kernel drops the lock if the process dies.
- Message numbers 1..n name the messages found at login, oldest first; mail delivered later
  waits for the next session. Messages another writer removes meanwhile read as gone.
- DELE only marks; RSET unmarks; :meth:`Maildrop.commit` (the UPDATE state, after a clean QUIT)
  removes the marked files. Closing without commit deletes nothing.
- The snapshot is the account store's INBOX (``AccountStore.sync``, taken under the lock):
  the messages the index knows, in UID order, with the sizes it recorded; what was changed in
  the Maildir behind the store's back is picked up by that sync, as IMAP sees it. A
  :class:`SnapshotCache` (one per daemon) keeps the POP3 view built from each store snapshot,
  so an unchanged INBOX costs only the store's check, and a changed one reuses the entries of
  the messages it still has; :func:`snapshot` can also be run before the lock is taken, while
  the password is being checked, to warm the store and the cache.
- RETR marks a message seen; the marks are applied through the account's store in one
  transaction when the session ends (added to the current flags: any flags an IMAP client set
  meanwhile are kept). DELE + QUIT removes through the store too, so IMAP sessions learn of
  both at once.

UIDL (RFC 1939: 1..70 characters 0x21-0x7E, unique and stable for the life of a message): the
Maildir unique name up to its first ``,`` (the ``,S=``/``,W=`` size fields and the ``:2,``
flags are left out), which never changes while the message exists. A name that is not 1..70
printable characters, that starts with ``~``, or that two files share (a broken Maildir), is
replaced by ``~`` and the first 32 hex digits of the BLAKE2b hash of the whole key; the ``~``
keeps the two forms from colliding.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

from ..store import view
from ..store.account import AccountStore, StoreError
from ..store.ingest import NotAMessage, read_message
from ..store.maildir import Maildir, MaildirMessage, message_from_name

log = logging.getLogger("mailstack.pop3")

LOCK_NAME = "pop3.lock"


class MaildropLocked(Exception):
    """Another POP3 session holds this mailbox."""


class NoSuchMessage(Exception):
    """A message number out of range or marked deleted."""


class MessageGone(Exception):
    """The message was removed by another writer after login."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of a snapshot; immutable, so snapshots can share entries through the cache."""

    msg: MaildirMessage  # where the file was at login (RETR may move it: see Maildrop.msg)
    size: int  # octets with CRLF line ends (what LIST/STAT report)
    uidl: str


@dataclass(frozen=True)
class Snapshot:
    entries: list[Entry]  # oldest first; never modified once built
    octets: int  # sum of the sizes


def uidl_for(key: str) -> str:
    """The UIDL of a message with Maildir key ``key`` (see the module docstring)."""
    base = key.split(",", 1)[0]
    # 1..70 characters 0x21-0x7E (isprintable() refuses controls and DEL), not starting with ~
    if 0 < len(base) <= 70 and base.isascii() and base.isprintable() and " " not in base \
            and base[0] != "~":
        return base
    return hashed_uidl(key)


def hashed_uidl(key: str) -> str:
    return "~" + hashlib.blake2b(key.encode("utf-8", "surrogateescape"),
                                 digest_size=16).hexdigest()


class Maildrop:
    """A locked INBOX snapshot; use :meth:`open`, then :meth:`close` (always)."""

    def __init__(self, box: Maildir, lock_fd: int, snap: Snapshot) -> None:
        self.box = box
        self._root = os.fspath(box.root)
        self._lock_fd: int | None = lock_fd
        self.entries = snap.entries
        self._octets = snap.octets
        self._deleted: set[int] = set()  # message numbers marked by DELE
        self._seen: set[int] = set()  # message numbers retrieved (marked \\Seen at the end)
        self.retrieved = 0
        self.retrieved_bytes = 0
        self.top_count = 0

    @classmethod
    def open(cls, box: Maildir, cache: SnapshotCache | None = None) -> Maildrop:
        """Lock ``box`` and take the snapshot; raises MaildropLocked or OSError."""
        fd = os.open(box.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MaildropLocked(str(box.root)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            snap = snapshot(box, cache)
        except BaseException:
            os.close(fd)  # closing releases the lock
            raise
        return cls(box, fd, snap)

    def close(self) -> None:
        """Apply the seen marks not applied yet and release the lock; marked deletions not
        committed are forgotten."""
        if self._lock_fd is not None:
            self._apply_seen()
            os.close(self._lock_fd)
            self._lock_fd = None

    def _apply_seen(self) -> None:
        seen = [self.entries[n - 1].msg.key for n in sorted(self._seen - self._deleted)]
        self._seen.clear()
        if seen:
            try:
                AccountStore.open(self.box.root).add_flags_by_keys("INBOX", seen, ["\\Seen"])
            except (OSError, StoreError, sqlite3.Error) as exc:
                log.warning("pop3: cannot mark %d messages seen: %s", len(seen), exc)

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    # -- queries ---------------------------------------------------------------------------------
    def get(self, n: int) -> Entry:
        if n < 1 or n > len(self.entries) or n in self._deleted:
            raise NoSuchMessage(n)
        return self.entries[n - 1]

    def msg(self, n: int) -> MaildirMessage:
        """Where message ``n``'s file was at login."""
        return self.get(n).msg

    def stat(self) -> tuple[int, int]:
        """(messages, octets) not marked deleted."""
        gone = sum(self.entries[n - 1].size for n in self._deleted)
        return len(self.entries) - len(self._deleted), self._octets - gone

    def listing(self) -> list[tuple[int, Entry]]:
        deleted = self._deleted
        return [(i, e) for i, e in enumerate(self.entries, 1) if i not in deleted]

    @property
    def deleted_count(self) -> int:
        return len(self._deleted)

    # -- actions -----------------------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        """Message ``n`` as stored (LF line ends); raises NoSuchMessage or MessageGone."""
        entry = self.get(n)
        msg = entry.msg
        try:  # fast path: 3 system calls; a concurrent rename is followed below
            return _read_file(f"{self._root}/{msg.subdir}/{msg.filename}", entry.size + 1)
        except FileNotFoundError:
            pass
        moved = self.box.find(msg.key)  # a concurrent flag change renamed it
        if moved is None:
            raise MessageGone(n)
        try:
            return read_message(f"{self._root}/{moved.subdir}/{moved.filename}")
        except NotAMessage:
            raise MessageGone(n) from None

    def mark_seen(self, n: int) -> None:
        """Remember that message ``n`` was retrieved: it is marked \\Seen at the end."""
        self.get(n)
        self._seen.add(n)

    def delete(self, n: int) -> None:
        self.get(n)
        self._deleted.add(n)

    def reset(self) -> None:
        self._deleted.clear()

    def commit(self) -> tuple[int, int]:
        """UPDATE state: mark what RETR read as seen and remove what DELE marked, through the
        store; returns (removed, failed)."""
        self._apply_seen()
        keys = [self.entries[n - 1].msg.key for n in sorted(self._deleted)]
        if not keys:
            return 0, 0
        try:
            removed = AccountStore.open(self.box.root).remove_by_key("INBOX", keys)
        except (OSError, StoreError, sqlite3.Error) as exc:
            log.warning("pop3: cannot remove %d messages: %s", len(keys), exc)
            return 0, len(keys)
        # messages another client removed meanwhile are not failures: the client's wish holds
        return removed, 0


def _read_file(path: str, hint: int) -> bytes:
    """A whole file in few system calls (open, read, read → EOF, close) when ``hint`` > size.

    Cheaper than ``open(path, "rb").read()``, which adds fstat, ioctl and buffer set-up.
    Symlinks are not followed and special files not waited on (``O_NOFOLLOW | O_NONBLOCK``;
    the snapshot admits regular files only).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        data = os.read(fd, hint)
        more = os.read(fd, 1 << 20) if data else b""
        if not more:
            return data
        chunks = [data, more]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


Names = tuple[frozenset[str], frozenset[str]]


class SnapshotCache:
    """The POP3 snapshot of recently used mailboxes, with the store snapshot each was built
    from.

    Thread-safe; least recently used mailboxes are forgotten beyond ``max_messages`` messages
    in all (about 0.5 KB each).
    """

    def __init__(self, max_messages: int = 200_000) -> None:
        self.max_messages = max_messages
        self.hits = self.misses = 0  # store snapshots found unchanged / not
        self._lock = threading.Lock()
        self._boxes: OrderedDict[str, tuple[view.Snapshot, Snapshot]] = OrderedDict()
        self._messages = 0

    def get(self, root: str) -> tuple[view.Snapshot, Snapshot] | None:
        with self._lock:
            item = self._boxes.get(root)
            if item is not None:
                self._boxes.move_to_end(root)
            return item

    def put(self, root: str, source: view.Snapshot, snap: Snapshot) -> None:
        with self._lock:
            old = self._boxes.pop(root, None)
            if old is not None:
                self._messages -= len(old[1].entries)
            self._boxes[root] = (source, snap)
            self._messages += len(snap.entries)
            while self._messages > self.max_messages and len(self._boxes) > 1:
                _, (_, dropped) = self._boxes.popitem(last=False)
                self._messages -= len(dropped.entries)

    def count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1


def snapshot(box: Maildir, cache: SnapshotCache | None = None) -> Snapshot:
    """The INBOX as the account store has it now (``AccountStore.sync``), oldest (lowest UID)
    first, with CRLF sizes and UIDLs. With ``cache``: an unchanged store snapshot is answered
    from it, and the entries of messages seen before are reused."""
    root = os.fspath(box.root)
    source, _ = AccountStore.open(box.root).sync("INBOX")
    cached = cache.get(root) if cache is not None else None
    if cached is not None and cached[0] is source:
        cache.count(True)  # type: ignore[union-attr]
        return cached[1]
    known: dict[tuple[str, str], Entry] = {}
    if cached is not None:
        known = {(e.msg.subdir, e.msg.filename): e for e in cached[1].entries}
    entries = []
    for e in source.entries:
        entry = known.get((e.subdir, e.filename))
        if entry is None:
            msg = message_from_name(e.subdir, e.filename)
            if msg is None:  # the store admits only names it parses: not expected
                continue
            entry = Entry(msg, e.size, uidl_for(msg.key))
        entries.append(entry)
    counts = Counter(e.uidl for e in entries)
    if len(counts) != len(entries):  # a broken Maildir: two files share a base name
        entries = [Entry(e.msg, e.size, hashed_uidl(e.msg.key)) if counts[e.uidl] > 1 else e
                   for e in entries]
    snap = Snapshot(entries, sum(e.size for e in entries))
    if cache is not None:
        cache.put(root, source, snap)
        cache.count(False)
    return snap
