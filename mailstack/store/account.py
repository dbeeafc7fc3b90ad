"""The one model of an account: an index (SQLite, WAL) over the account's Maildir++ tree.

``<account>/mailstack-index.sqlite`` is the source of truth for metadata: mailboxes (id, name,
UIDVALIDITY, UIDNEXT, keywords), messages (UID, modseq, flags without a keyword limit, email id,
thread id, internal date, size), one modseq counter for the account, a change log and the
expunged UIDs per mailbox. Maildir files hold the message bodies; their names mirror the flags
(see :mod:`.flags`) so other Maildir tools still read the mailbox.

Every change is one ``BEGIN IMMEDIATE`` transaction computed against the current rows (the
write lock is SQLite's, so it holds across processes). File operations happen inside the
transaction and before the commit, in an order that a crash can only complete, never undo:

- flags: rename the file, then commit (a crash in between: the next sync adopts the name);
- expunge: unlink, then commit (the next sync sees the file gone);
- append/copy/move: the file appears, then the row (the next sync indexes the file).

A file the index takes from ``new/`` moves to ``cur/`` (Dovecot does the same), so ``new/``
holds only what arrived since, and listing it for new deliveries stays cheap.

So the index and the Maildir always converge, and a message is never lost or resurrected.
Files that appear, vanish or are renamed by anyone else (the mda delivers straight into
``new/``) are picked up by :meth:`AccountStore.sync`, under the same lock.

Notifications: every change renames, creates or unlinks something in the folder's ``new/`` or
``cur/`` (a change that renames nothing touches ``cur/``), which :mod:`.watch` turns into
wake-ups in every process (inotify, polling as fallback).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import logging
import os
import shutil
import sqlite3
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.fsutil import atomic_write, fsync_dir
from . import summary, textsearch, watch
from .flags import format_stored, from_letters, match_keywords, mirrored, parse_stored, to_letters
from .ingest import Ingested, NotAMessage, ingest, read_message, summarize_file
from .keywords import Keywords
from .maildir import INFO_SEP, Maildir, delivery_order, unique_name
from .view import Entry, Snapshot

log = logging.getLogger("mailstack.store")

INDEX_FILE = "mailstack-index.sqlite"
UIDVALIDITY_FILE = "mailstack-uidvalidity"
LEGACY_UIDLIST = "mailstack-uidlist"
POKE = ".mailstack-changed"
SUBSCRIPTIONS = "subscriptions"
#: seconds a statement waits for another process's lock on the index before SQLite answers
#: "database is locked" (only the test hook in :mod:`mailstack.runtime.testhooks` changes it)
BUSY_TIMEOUT = 30.0
ROLES = {"Sent": "sent", "Drafts": "drafts", "Trash": "trash", "Junk": "junk"}
SCHEMA_VERSION = 3  # 2: the summary table (filled lazily for emails indexed before)
# 3: message.tzoff, the internal date's zone (NULL, "unknown", for rows indexed before)
CHANGELOG_KEEP = 100_000  # change-log rows kept (the horizon of "changes since")
RACY_NS = 20_000_000  # a directory changed this recently may change again in the same tick
DELETED = "\\Deleted"
SUMMARY_CACHE = 20_000  # summaries an account handle keeps in memory (~1 KB each at most)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mailbox(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, uidvalidity INTEGER NOT NULL,
  uidnext INTEGER NOT NULL, first_recent INTEGER NOT NULL DEFAULT 1,
  highestmodseq INTEGER NOT NULL, keywords TEXT NOT NULL DEFAULT '',
  new_mtime INTEGER NOT NULL DEFAULT -1, cur_mtime INTEGER NOT NULL DEFAULT -1,
  stamped_at INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS message(
  id INTEGER PRIMARY KEY, mailbox INTEGER NOT NULL, uid INTEGER NOT NULL, key TEXT NOT NULL,
  subdir TEXT NOT NULL, filename TEXT NOT NULL, flags TEXT NOT NULL, modseq INTEGER NOT NULL,
  emailid TEXT NOT NULL, threadid TEXT NOT NULL, internaldate REAL NOT NULL,
  size INTEGER NOT NULL, savedate REAL NOT NULL, tzoff INTEGER,
  UNIQUE(mailbox, uid), UNIQUE(mailbox, key));
CREATE INDEX IF NOT EXISTS message_modseq ON message(mailbox, modseq);
CREATE INDEX IF NOT EXISTS message_email ON message(emailid);
CREATE INDEX IF NOT EXISTS message_thread ON message(threadid);
CREATE TABLE IF NOT EXISTS vanished(
  mailbox INTEGER NOT NULL, uid INTEGER NOT NULL, modseq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vanished_modseq ON vanished(mailbox, modseq);
CREATE TABLE IF NOT EXISTS changelog(
  modseq INTEGER NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, op TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS changelog_modseq ON changelog(modseq);
CREATE TABLE IF NOT EXISTS thread_ref(messageid TEXT PRIMARY KEY, threadid TEXT NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS thread_subject(subject TEXT PRIMARY KEY, threadid TEXT NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS email_text(rowid INTEGER PRIMARY KEY, emailid TEXT NOT NULL UNIQUE);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(headers, body, tokenize='trigram', detail=none);
""" + summary.TABLE + ";\n"

#: data, flags, date: a POSIX time (zone unknown), an aware datetime (its zone is kept) or None
AppendItem = tuple[bytes | memoryview, Iterable[str], float | dt.datetime | None]

_COLS = ("uid, modseq, key, subdir, filename, flags, size, internaldate, emailid, threadid, "
         "savedate, tzoff")


class _Corrupt(Exception):
    """The index file fails SQLite's integrity check."""


class StoreError(Exception):
    """An operation the store refuses; ``code`` is an IMAP response code or ''."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


class OverQuota(StoreError):
    def __init__(self, text: str = "mailbox is full") -> None:
        super().__init__(text, "OVERQUOTA")


@dataclass(frozen=True)
class MailboxInfo:
    """A mailbox as faces list it (JMAP Mailbox, IMAP LIST/STATUS)."""

    id: int
    name: str
    parent: str  # "" at the top
    role: str  # inbox, sent, drafts, trash, junk or ""
    subscribed: bool
    uidvalidity: int
    uidnext: int
    total: int
    unread: int


class WouldBlock(Exception):
    """``sync(nonblocking=True)`` would have to wait, write or read many rows: call it from a
    thread."""


#: changed rows a nonblocking sync reads in the caller's thread (an event loop): about 1 ms;
#: more (a STORE 1:* on a big mailbox) are read from a worker thread
NONBLOCKING_ROWS = 256


class ChangesUnavailable(StoreError):
    """The change log no longer reaches back to the asked state (JMAP cannotCalculateChanges,
    QRESYNC: a full resync)."""


@dataclass
class Changes:
    """Ids changed between ``old_state`` and ``new_state`` (modseqs); ``has_more`` when the
    limit cut the list (ask again from ``new_state``)."""

    old_state: int
    new_state: int
    has_more: bool
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)


@dataclass
class FlagResult:
    """What a flag change did: UIDs changed, UIDs refused by UNCHANGEDSINCE, and the
    mailbox's keyword list when it grew (for untagged FLAGS)."""

    changed: list[int]
    failed: list[int]
    keywords: tuple[str, ...] | None = None


def _entry(row: Sequence) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], row[4], parse_stored(row[5]), row[6], row[7],
                 row[8], row[9], row[10], row[11])


def _instant(date: float | dt.datetime) -> tuple[float, int | None]:
    """(POSIX time, zone in minutes east of UTC or None) of an APPEND date."""
    if isinstance(date, dt.datetime):
        off = date.utcoffset()
        return date.timestamp(), None if off is None else int(off.total_seconds()) // 60
    return date, None


class _Folder:
    """Per-process state of one mailbox: the directory times the index is known to be
    consistent with, and the last published snapshot."""

    def __init__(self, maildir: Maildir) -> None:
        self.maildir = maildir
        self.root = str(maildir.root)  # a string: the read path is hot
        self.keywords = Keywords(maildir.root)
        # new/ mtime, cur/ mtime, when new/ was listed: the state the index matches
        self.stamps: tuple[int, int, int] = (-1, -1, 0)
        self.published: Snapshot | None = None
        self.version: tuple[int, int] = (-1, -1)  # index version the snapshot was read at
        self.legacy_uids: dict[str, int] = {}  # key → UID from an old per-folder UID list

    def mtimes(self) -> tuple[int, int]:
        out = []
        for sub in ("new", "cur"):
            try:
                out.append(os.stat(f"{self.maildir.root}/{sub}").st_mtime_ns)
            except FileNotFoundError:
                out.append(-2)
        return out[0], out[1]

    def stale(self, stamps: tuple[int, int, int] | None = None) -> set[str]:
        """The directories that changed since the index last matched them.

        Only the store changes ``cur/``, under the write lock and with a new index version, so
        an equal mtime means no change. ``new/`` also receives deliveries without the lock:
        a listing made within :data:`RACY_NS` of its mtime may have missed a delivery in the
        same timestamp tick, so it is listed again.
        """
        new_m, cur_m, at = stamps or self.stamps  # at: when new/ was listed
        now_new, now_cur = self.mtimes()
        out = set()
        if now_new != new_m or at - new_m <= RACY_NS:
            out.add("new")
        if now_cur != cur_m:
            out.add("cur")
        return out

    def listing(self, subs: Iterable[str]) -> dict[str, tuple[str, str, str]]:
        """key → (subdir, filename, letters) of ``subs``; dot files and names that are not
        valid text are skipped."""
        out: dict[str, tuple[str, str, str]] = {}
        for sub in subs:
            try:
                names = os.listdir(f"{self.maildir.root}/{sub}")
            except FileNotFoundError:
                continue
            for name in names:
                if name[:1] == "." or "\n" in name or " " in name or not _round_trips(name):
                    continue
                if sub == "cur":
                    key, sep, info = name.partition(INFO_SEP)
                    letters = "".join(sorted(info)) if sep else ""
                else:
                    key, letters = name, ""
                if key and key not in out:
                    out[key] = (sub, name, letters)
        return out


def _round_trips(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes (surrogate escapes)
        return False
    return True


class AccountStore:
    """One account's index, shared by every session of a process (:meth:`open`)."""

    _registry: OrderedDict[Path, AccountStore] = OrderedDict()
    _registry_lock = threading.Lock()
    registry_size = 128  # accounts whose handle a process keeps (least recently used go)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / INDEX_FILE
        self._lock = threading.RLock()
        self._folders: dict[str, _Folder] = {}
        self._conn = self._connect()
        self._ino = os.stat(self.path).st_ino
        self._commits = 0  # write transactions committed through this handle
        #: email id → summary (immutable: an email id is a digest of the bytes)
        self._summaries: dict[str, summary.Summary] = {}

    @classmethod
    def open(cls, root: Path) -> AccountStore:
        key = Path(root).resolve()
        with cls._registry_lock:
            inst = cls._registry.get(key)
            if inst is None:
                inst = cls._registry[key] = cls(key)
                while len(cls._registry) > cls.registry_size:
                    cls._registry.popitem(last=False)  # sessions still using it keep it
            else:
                cls._registry.move_to_end(key)
            return inst

    @classmethod
    def forget(cls, root: Path) -> None:
        """Drop this process's handle of an account (its files were removed or reset)."""
        with cls._registry_lock:
            inst = cls._registry.pop(Path(root).resolve(), None)
        if inst is not None:
            with contextlib.suppress(sqlite3.Error):
                inst._conn.close()

    # -- connection -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            return self._try_connect()
        except (_Corrupt, sqlite3.DatabaseError) as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked, unwritable, disk full: not damage; never move it aside
            aside = self.path.with_name(f"{INDEX_FILE}.corrupt-{time.time_ns()}")
            log.warning("index %s is damaged (%s): moved to %s, rebuilding from the Maildir",
                        self.path, exc, aside.name)
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            return self._try_connect()

    def _try_connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=4194304")  # the WAL shrinks back to 4 MiB
            conn.execute("PRAGMA cache_size=-512")  # 512 KiB of pages per account handle
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise _Corrupt(f"quick_check: {row[0] if row else '?'}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if "tzoff" not in {r[1] for r in conn.execute("PRAGMA table_info(message)")}:
                    conn.execute("ALTER TABLE message ADD COLUMN tzoff INTEGER")  # version 3
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)",
                              (SCHEMA_VERSION,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('modseq', 1)")
                conn.execute("UPDATE meta SET value=? WHERE name='version' AND value<?",
                             (SCHEMA_VERSION, SCHEMA_VERSION))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (the account's lock, across processes)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._commits += 1

    def _check_file(self) -> None:
        """Reopen (rebuilding) when the index file was removed or replaced under us."""
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = -1
        if ino == self._ino:
            return
        with self._lock:
            log.warning("index %s was removed or replaced: reopening", self.path)
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = self._connect()
            self._ino = os.stat(self.path).st_ino
            self._folders.clear()

    def _version(self) -> tuple[int, int]:
        """Changes whenever anyone (this handle or another process) commits."""
        with self._lock:
            return self._conn.execute("PRAGMA data_version").fetchone()[0], self._commits

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent read (a deferred transaction)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _next_modseq(self, conn: sqlite3.Connection) -> int:
        value = conn.execute("SELECT value FROM meta WHERE name='modseq'").fetchone()[0] + 1
        conn.execute("UPDATE meta SET value=? WHERE name='modseq'", (value,))
        return value

    def highest_modseq(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT value FROM meta WHERE name='modseq'").fetchone()[0]

    def _new_uidvalidity(self, conn: sqlite3.Connection) -> int:
        """A UIDVALIDITY greater than any this account used, even across a lost index (the
        counter file outlives it) and within one second."""
        row = conn.execute("SELECT value FROM meta WHERE name='uidvalidity'").fetchone()
        last = row[0] if row else 0
        counter = self.root / UIDVALIDITY_FILE
        with contextlib.suppress(OSError, ValueError):
            last = max(last, int(counter.read_text().strip() or 0))
        value = max(last + 1, int(time.time()))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (value,))
        tmp = counter.with_name(f".{UIDVALIDITY_FILE}.{os.getpid()}.tmp")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, counter)
        return value

    # -- folders ----------------------------------------------------------------------------
    def maildir(self, name: str) -> Maildir:
        return Maildir(self.root) if name == "INBOX" else Maildir(self.root / ("." + name))

    def _folder(self, name: str) -> _Folder:
        f = self._folders.get(name)
        if f is None:
            f = self._folders[name] = _Folder(self.maildir(name))
        return f

    def _mailbox_row(self, conn: sqlite3.Connection, name: str, *, create: bool = True
                     ) -> tuple | None:
        row = conn.execute("SELECT id, uidvalidity, uidnext, first_recent, highestmodseq, "
                           "keywords, new_mtime, cur_mtime, stamped_at FROM mailbox "
                           "WHERE name=?", (name,)).fetchone()
        if row is not None or not create:
            return row
        if not self.maildir(name).exists():
            return None
        validity = self._new_uidvalidity(conn)
        modseq = self._next_modseq(conn)
        cur = conn.execute("INSERT INTO mailbox(name, uidvalidity, uidnext, first_recent, "
                           "highestmodseq) VALUES (?, ?, 1, 1, ?)", (name, validity, modseq))
        mbid = cur.lastrowid
        conn.execute("INSERT INTO changelog VALUES (?, 'Mailbox', ?, 'created')",
                     (modseq, str(mbid)))
        self._import_legacy(conn, mbid, name, self._folder(name))
        return self._mailbox_row(conn, name, create=False)

    def _import_legacy(self, conn: sqlite3.Connection, mbid: int, name: str,
                       folder: _Folder) -> None:
        """Keep the UIDs of a folder indexed by the old per-folder UID list."""
        path = self.maildir(name).root / LEGACY_UIDLIST
        try:
            lines = path.read_text("utf-8").split("\n")
            head = {h[0]: int(h[1:]) for h in lines[0].split()[1:]}
            validity, uidnext = head["V"], head["N"]
        except (OSError, ValueError, KeyError, IndexError):
            return
        conn.execute("UPDATE mailbox SET uidvalidity=?, uidnext=?, first_recent=? WHERE id=?",
                     (validity, uidnext, head.get("R", 1), mbid))
        pending = {}
        for line in lines[1:]:
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[0].isdigit():
                pending[parts[3]] = int(parts[0])
        folder.legacy_uids = pending  # consumed by the first sync of this folder

    # -- reading ----------------------------------------------------------------------------
    def sync(self, name: str, *, claim_recent: bool = False,
             nonblocking: bool = False) -> tuple[Snapshot, set[int]]:
        """The mailbox as it is now (Maildir changes picked up), and with ``claim_recent``
        the \\Recent UIDs this caller takes. Raises StoreError when it does not exist.

        Loading and publishing a snapshot happen under the handle's lock, so snapshots of a
        folder are published in order. With ``nonblocking`` (an event loop's call), raises
        :class:`WouldBlock` instead of waiting for the lock, writing, or reading more than
        :data:`NONBLOCKING_ROWS` changed rows: call again from a worker thread."""
        if not self._lock.acquire(blocking=not nonblocking):
            raise WouldBlock(name)
        try:
            return self._sync(name, claim_recent, nonblocking)
        finally:
            self._lock.release()

    def _sync(self, name: str, claim_recent: bool, nonblocking: bool
              ) -> tuple[Snapshot, set[int]]:
        self._check_file()
        folder = self._folder(name)
        pub = folder.published
        if pub is None or folder.version != self._version():
            if pub is None and nonblocking:
                raise WouldBlock(name)  # a first load reads every row
            pub = self._load(name, folder, missing_ok=True,
                             max_rows=NONBLOCKING_ROWS if nonblocking else None)
        if (pub is not None and not folder.stale()
                and (not claim_recent or pub.first_recent >= pub.uidnext)):
            return pub, set()
        if nonblocking:
            raise WouldBlock(name)  # a write transaction may wait for another process
        won: set[int] = set()
        with self._write() as conn:
            row = self._mailbox_row(conn, name)
            if row is None:
                raise StoreError("no such mailbox", "NONEXISTENT")
            self._ensure(conn, row, folder)
            if claim_recent:
                row = self._mailbox_row(conn, name)
                assert row is not None
                if row[3] < row[2]:
                    won = {r[0] for r in conn.execute(
                        "SELECT uid FROM message WHERE mailbox=? AND uid>=?", (row[0], row[3]))}
                    conn.execute("UPDATE mailbox SET first_recent=uidnext WHERE id=?",
                                 (row[0],))
        return self._load(name, folder), won

    @typing.overload
    def _load(self, name: str, folder: _Folder) -> Snapshot: ...

    @typing.overload
    def _load(self, name: str, folder: _Folder, missing_ok: bool,
              max_rows: int | None = None) -> Snapshot | None: ...

    def _load(self, name: str, folder: _Folder, missing_ok: bool = False,
              max_rows: int | None = None) -> Snapshot | None:
        """Publish the mailbox's current rows as a snapshot (only what changed is read).
        Called with the handle's lock held (:meth:`sync`). With ``max_rows``: raises
        :class:`WouldBlock`, with nothing changed, when more rows than that changed."""
        before = folder.version, folder.stamps
        folder.version = self._version()
        with self._read() as conn:
            row = self._mailbox_row(conn, name, create=False)
            if row is None:
                if missing_ok:
                    return None
                raise StoreError("no such mailbox", "NONEXISTENT")
            mbid, validity, uidnext, first_recent, hms, keywords = row[:6]
            folder.stamps = row[6:9]
            pub = folder.published
            if (pub is not None and pub.mailbox_id == mbid and pub.uidvalidity == validity
                    and pub.highest_modseq == hms and pub.uidnext == uidnext
                    and pub.first_recent == first_recent):
                return pub
            if pub is not None and pub.mailbox_id == mbid and pub.uidvalidity == validity:
                rows = conn.execute(f"SELECT {_COLS} FROM message WHERE mailbox=? AND modseq>?"
                                    " ORDER BY uid LIMIT ?", (mbid, pub.highest_modseq,
                                                              -1 if max_rows is None
                                                              else max_rows + 1)).fetchall()
                if max_rows is not None and len(rows) > max_rows:
                    folder.version, folder.stamps = before
                    raise WouldBlock(name)
                gone = {r[0] for r in conn.execute(
                    "SELECT uid FROM vanished WHERE mailbox=? AND modseq>?",
                    (mbid, pub.highest_modseq))}
                changed = {r[0]: _entry(r) for r in rows}
                changed_uids = frozenset(changed)
                uids = pub.uids
                if not gone and all(u < uidnext and _has(uids, u) for u in changed):
                    # flag changes only (the common case): replace in a copy, share the UIDs
                    entries = list(pub.entries)
                    for u, e in changed.items():
                        entries[bisect.bisect_left(uids, u)] = e
                    expunged = frozenset()
                    shared_uids: list[int] | None = uids
                else:
                    entries = [changed.pop(e.uid, e) for e in pub.entries if e.uid not in gone]
                    if changed:
                        entries.extend(changed.values())
                        entries.sort(key=lambda e: e.uid)
                    expunged = frozenset(e.uid for e in pub.entries if e.uid in gone)
                    shared_uids = None
            else:
                entries = [_entry(r) for r in conn.execute(
                    f"SELECT {_COLS} FROM message WHERE mailbox=? ORDER BY uid", (mbid,))]
                expunged = changed_uids = frozenset()
                shared_uids = None
        snap = Snapshot(mbid, validity, uidnext, hms, entries, first_recent,
                        tuple(keywords.split()) if keywords else ())
        if shared_uids is not None:
            snap.share_uids(shared_uids)
        if pub is not None and pub.mailbox_id == mbid and pub.uidvalidity == validity:
            snap.expunged, snap.changed = expunged, changed_uids
            pub.next = snap
        folder.published = snap
        return snap

    def usage(self) -> tuple[int, int]:
        """(octets, messages) the account's indexed mailboxes hold (QUOTA)."""
        with self._read() as conn:
            return _usage(conn), _count(conn)

    def status(self, name: str) -> Snapshot:
        return self.sync(name)[0]

    def path_of(self, name: str, e: Entry) -> str:
        return f"{self._folder(name).root}/{e.subdir}/{e.filename}"

    def read(self, name: str, e: Entry) -> bytes | None:
        """The message as stored (LF line ends), or None when it is gone."""
        try:
            return read_message(self.path_of(name, e), hint=e.size)
        except NotAMessage:
            pass
        found = _locate(self.maildir(name), e.key)
        if found is None:
            return None
        try:
            return read_message(found)
        except NotAMessage:
            return None

    def search_text(self, name: str, needles: Sequence[tuple[str, str]]) -> set[int]:
        """UIDs of the mailbox's messages whose indexed text contains every needle, each
        ``("BODY", text)`` (text parts) or ``("TEXT", text)`` (header fields and text parts):
        case-insensitive substring matches over decoded text."""
        self.sync(name)
        with self._read() as conn:
            row = self._mailbox_row(conn, name, create=False)
        if row is None:
            return set()
        search = self.text_search(needles)
        cand = search.candidates()
        if not cand:
            return set()
        with self._read() as conn:
            if len(cand) <= 2000:  # a few candidates: found by the email id index
                uids = []
                for chunk in _chunks(list(cand), 900):
                    uids += [(uid, e) for uid, e, mbid in conn.execute(
                        f"SELECT uid, emailid, mailbox FROM message WHERE emailid IN "
                        f"({','.join('?' * len(chunk))})", chunk) if mbid == row[0]]
            else:
                uids = conn.execute("SELECT uid, emailid FROM message WHERE mailbox=?",
                                    (row[0],)).fetchall()
        hits = search.check(e for _, e in uids if e in cand)
        return {uid for uid, e in uids if e in hits}

    def summaries(self, name: str, entries: Sequence[Entry], *,
                  keep: bool = True) -> dict[str, summary.Summary]:
        """Email id → :class:`~.summary.Summary` of ``entries`` (of mailbox ``name``).

        With ``keep`` summaries are kept in memory once read (at most :data:`SUMMARY_CACHE`
        per account handle; a caller that keeps what it derives passes False); an email
        indexed before schema version 2 has none yet: it is computed from its file now and
        stored."""
        cache = self._summaries
        out: dict[str, summary.Summary] = {}
        wanted = []
        for e in entries:
            hit = cache.get(e.emailid)
            if hit is None:
                wanted.append(e.emailid)
            else:
                out[e.emailid] = hit
        if not wanted:
            return out
        found: dict[str, summary.Summary] = {}
        with self._read() as conn:
            for chunk in _chunks(wanted, 900):
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(f"SELECT emailid, {summary.COLUMNS} FROM summary "
                                        f"WHERE emailid IN ({marks})", tuple(chunk)):
                    found[row[0]] = summary.Summary.from_row(row[1:])
        missing = [e for e in entries if e.emailid not in found and e.emailid not in out]
        if missing:
            found.update(self._fill_summaries(name, missing))
        if keep:
            if len(cache) + len(found) > SUMMARY_CACHE:
                cache.clear()
            cache.update(found)
        out.update(found)
        return out

    def _fill_summaries(self, name: str, entries: Sequence[Entry]) -> dict[str, summary.Summary]:
        """Summaries computed from the files (emails indexed by an older version)."""
        made: dict[str, summary.Summary] = {}
        for e in entries:
            if e.emailid in made:
                continue
            path = self.path_of(name, e)
            try:
                made[e.emailid] = summarize_file(path)
            except NotAMessage:
                found = _locate(self.maildir(name), e.key)
                try:
                    made[e.emailid] = summarize_file(found) if found else summary.EMPTY
                except NotAMessage:
                    made[e.emailid] = summary.EMPTY
        rows = [(k, *v.as_row()) for k, v in made.items() if v is not summary.EMPTY]
        if rows:
            with contextlib.suppress(sqlite3.OperationalError), self._write() as conn:
                conn.executemany(f"INSERT OR IGNORE INTO summary(emailid, {summary.COLUMNS}) "
                                 f"VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        return made
    def search_emails(self, needles: Sequence[tuple[str, str]]) -> set[str]:
        """Email ids of the account whose indexed text contains every needle (as
        :meth:`search_text`, for every mailbox at once)."""
        return self.text_search(needles).all()

    def text_search(self, needles: Sequence[tuple[str, str]]) -> textsearch.TextSearch:
        """A search of the whole account whose hits are checked on demand (a face that needs
        only some of them, in its own order, checks only those)."""
        return textsearch.TextSearch(self._read, needles)

    # -- reconciling with the Maildir -----------------------------------------------------
    def _ensure(self, conn: sqlite3.Connection, row: tuple, folder: _Folder
                ) -> tuple[int, int]:
        """Inside a write transaction: make the rows match the files (listing only the
        directories that changed since the index last matched them) and record the directory
        times they now match. Every write starts with this; it returns the ``new/`` record
        (mtime, listed at) for :meth:`_after`."""
        stale = folder.stale(row[6:9])
        new_m, cur_m, at = row[6:9]
        if stale:
            before = folder.mtimes()
            listed_at = time.time_ns()
            moved = self._reconcile(conn, row, folder, stale)
            if "new" in stale:
                new_m, at = before[0], listed_at
            if "cur" in stale:
                cur_m = before[1]
            if moved and cur_m == before[1]:
                # cur/ matched the rows, then only our own moves (under the lock) changed
                # it: it matches them still, and the next sync need not list it again
                cur_m = folder.mtimes()[1]
            self._record(conn, row[0], folder, (new_m, cur_m, at))
        return new_m, at

    def _after(self, conn: sqlite3.Connection, mbid: int, folder: _Folder,
               new_record: tuple[int, int]) -> None:
        """After this transaction changed files: ``cur/`` is as the rows say (only the store
        changes it, under the lock); ``new/`` keeps its record only if nobody changed it
        meanwhile (a delivery may have), else it is listed again next time."""
        self._record(conn, mbid, folder, (new_record[0], folder.mtimes()[1], new_record[1]))

    def _record(self, conn: sqlite3.Connection, mbid: int, folder: _Folder,
                stamps: tuple[int, int, int]) -> None:
        conn.execute("UPDATE mailbox SET new_mtime=?, cur_mtime=?, stamped_at=? WHERE id=?",
                     (*stamps, mbid))
        folder.stamps = stamps

    def _reconcile(self, conn: sqlite3.Connection, row: tuple, folder: _Folder,
                   subs: set[str]) -> bool:
        """Bring the rows of the files in ``subs`` in line with those directories; True when
        files were moved from ``new/`` into ``cur/`` on the way."""
        mbid, _validity, uidnext = row[0], row[1], row[2]
        disk = folder.listing(sorted(subs))
        if subs == {"new", "cur"}:
            rows = conn.execute("SELECT key, uid, subdir, filename, flags, emailid FROM message "
                                "WHERE mailbox=?", (mbid,))
        else:
            (sub,) = subs
            rows = conn.execute("SELECT key, uid, subdir, filename, flags, emailid FROM message "
                                "WHERE mailbox=? AND subdir=?", (mbid, sub))
        known = {r[0]: r for r in rows}
        if len(subs) == 1:  # a file of the other directory seen here: a move
            for key in [k for k in disk if k not in known]:
                hit = conn.execute("SELECT key, uid, subdir, filename, flags, emailid FROM "
                                   "message WHERE mailbox=? AND key=?", (mbid, key)).fetchone()
                if hit is not None:
                    known[key] = hit
        kw = folder.keywords
        modseq = 0
        moved = False
        gone: list[tuple[int, str]] = []
        for key, (uid, subdir, filename, flags, emailid) in (
                (k, r[1:]) for k, r in known.items()):
            found = disk.pop(key, None)
            if found is None:
                gone.append((uid, emailid))
                continue
            f_sub, f_name, letters = found
            if (f_sub, f_name) == (subdir, filename):
                continue
            current = parse_stored(flags)
            if to_letters(current, kw, assign=False) != letters:
                # renamed by another tool (or a crash after a rename): the name wins
                new_flags = (current - mirrored(current, kw)) | from_letters(letters, kw)
                modseq = modseq or self._next_modseq(conn)
                conn.execute("UPDATE message SET subdir=?, filename=?, flags=?, modseq=? "
                             "WHERE mailbox=? AND uid=?",
                             (f_sub, f_name, format_stored(new_flags), modseq, mbid, uid))
                self._log(conn, modseq, "Email", emailid, "updated")
            else:
                conn.execute("UPDATE message SET subdir=?, filename=? WHERE mailbox=? AND uid=?",
                             (f_sub, f_name, mbid, uid))
        if gone:
            modseq = modseq or self._next_modseq(conn)
            self._remove_rows(conn, mbid, gone, modseq)
        if disk:
            legacy, folder.legacy_uids = folder.legacy_uids, {}
            modseq = modseq or self._next_modseq(conn)
            order = sorted(disk, key=lambda k: (legacy.get(k, 1 << 62), delivery_order(k)))
            next_uid = uidnext
            for key in order:
                sub, fname, letters = disk[key]
                path = f"{folder.maildir.root}/{sub}/{fname}"
                try:
                    info = ingest(path)
                except NotAMessage:
                    continue
                if sub == "new":  # seen by the index: into cur/ (as Dovecot does), so new/
                    # stays short and a listing of it (for deliveries) stays cheap
                    try:
                        os.rename(path, f"{folder.maildir.root}/cur/{key}{INFO_SEP}")
                        sub, fname = "cur", f"{key}{INFO_SEP}"
                        moved = True
                    except FileNotFoundError:
                        continue
                    except OSError:
                        pass
                uid = legacy.get(key, 0)
                if uid < next_uid:
                    uid = next_uid
                next_uid = uid + 1
                self._insert(conn, mbid, uid, key, sub, fname, from_letters(letters, kw),
                             modseq, info, time.time())
            conn.execute("UPDATE mailbox SET uidnext=? WHERE id=?", (next_uid, mbid))
        if modseq:
            conn.execute("UPDATE mailbox SET highestmodseq=? WHERE id=?", (modseq, mbid))
        return moved

    def _insert(self, conn: sqlite3.Connection, mbid: int, uid: int, key: str, subdir: str,
                filename: str, flags: Iterable[str], modseq: int, info: Ingested,
                savedate: float, threadid: str | None = None, tzoff: int | None = None
                ) -> None:
        known_email = conn.execute("SELECT threadid FROM message WHERE emailid=? LIMIT 1",
                                   (info.emailid,)).fetchone()
        if known_email is not None:
            threadid = known_email[0]
        elif threadid is None:
            threadid = self._thread_for(conn, info, modseq)
        conn.execute(f"INSERT INTO message({_COLS}, mailbox) VALUES "
                     "(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (uid, modseq, key, subdir, filename, format_stored(flags), info.size,
                      info.internaldate, info.emailid, threadid, savedate, tzoff, mbid))
        self._log(conn, modseq, "Email", info.emailid,
                  "updated" if known_email is not None else "created")
        if known_email is None and info.summary is not summary.EMPTY:
            conn.execute(f"INSERT OR IGNORE INTO summary(emailid, {summary.COLUMNS}) VALUES "
                         f"(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (info.emailid, *info.summary.as_row()))
        if known_email is None and (info.headers or info.body):
            cur = conn.execute("INSERT OR IGNORE INTO email_text(emailid) VALUES (?)",
                               (info.emailid,))
            if cur.rowcount:
                conn.execute("INSERT INTO fts(rowid, headers, body) VALUES (?, ?, ?)",
                             (cur.lastrowid, info.headers, info.body))

    def _thread_for(self, conn: sqlite3.Connection, info: Ingested, modseq: int) -> str:
        """The thread of a new message: that of a message it references (In-Reply-To,
        References), else of a message with the same base subject when it is a reply, else
        a new one."""
        threadid = None
        for ref in reversed(info.references):
            hit = conn.execute("SELECT threadid FROM thread_ref WHERE messageid=?",
                               (ref,)).fetchone()
            if hit:
                threadid = hit[0]
                break
        if threadid is None and info.message_id:
            hit = conn.execute("SELECT threadid FROM thread_ref WHERE messageid=?",
                               (info.message_id,)).fetchone()
            if hit:
                threadid = hit[0]
        if threadid is None and info.is_reply and info.base_subject:
            hit = conn.execute("SELECT threadid FROM thread_subject WHERE subject=?",
                               (info.base_subject,)).fetchone()
            if hit:
                threadid = hit[0]
        created = threadid is None
        if threadid is None:
            threadid = "T" + info.emailid[1:17]
        for mid in [*info.references, *([info.message_id] if info.message_id else [])]:
            conn.execute("INSERT OR IGNORE INTO thread_ref VALUES (?, ?)", (mid, threadid))
        if info.base_subject:
            conn.execute("INSERT OR IGNORE INTO thread_subject VALUES (?, ?)",
                         (info.base_subject, threadid))
        self._log(conn, modseq, "Thread", threadid, "created" if created else "updated")
        return threadid

    def _log(self, conn: sqlite3.Connection, modseq: int, kind: str, ident: str,
             op: str) -> None:
        conn.execute("INSERT INTO changelog VALUES (?, ?, ?, ?)", (modseq, kind, ident, op))

    def _remove_rows(self, conn: sqlite3.Connection, mbid: int,
                     gone: Sequence[tuple[int, str]], modseq: int) -> None:
        thread_of: dict[str, str] = {}
        for uid, emailid in gone:
            for (threadid,) in conn.execute("DELETE FROM message WHERE mailbox=? AND uid=? "
                                            "RETURNING threadid", (mbid, uid)).fetchall():
                thread_of[emailid] = threadid
            conn.execute("INSERT INTO vanished VALUES (?, ?, ?)", (mbid, uid, modseq))
        threads: set[str] = set()
        for emailid in {e for _, e in gone}:
            left = conn.execute("SELECT threadid FROM message WHERE emailid=? LIMIT 1",
                                (emailid,)).fetchone()
            self._log(conn, modseq, "Email", emailid, "updated" if left else "destroyed")
            if left is None and emailid in thread_of:
                threads.add(thread_of[emailid])
            if left is None:
                conn.execute("DELETE FROM summary WHERE emailid=?", (emailid,))
                hit = conn.execute("SELECT rowid FROM email_text WHERE emailid=?",
                                   (emailid,)).fetchone()
                if hit:
                    conn.execute("DELETE FROM fts WHERE rowid=?", (hit[0],))
                    conn.execute("DELETE FROM email_text WHERE rowid=?", (hit[0],))
        for threadid in threads:  # a thread lost an email (JMAP Thread/changes, queryChanges)
            alive = conn.execute("SELECT 1 FROM message WHERE threadid=? LIMIT 1",
                                 (threadid,)).fetchone()
            self._log(conn, modseq, "Thread", threadid, "updated" if alive else "destroyed")

    def _finish(self, conn: sqlite3.Connection, mbid: int, modseq: int) -> None:
        conn.execute("UPDATE mailbox SET highestmodseq=? WHERE id=?", (modseq, mbid))
        self._log(conn, modseq, "Mailbox", str(mbid), "updated")
        if modseq % 1000 == 0:
            conn.execute("DELETE FROM changelog WHERE modseq < (SELECT min(modseq) FROM "
                         "(SELECT modseq FROM changelog ORDER BY modseq DESC LIMIT ?))",
                         (CHANGELOG_KEEP,))

    # -- writing: flags -----------------------------------------------------------------------
    def store_flags(self, name: str, uids: Iterable[int], mode: str, flags: Iterable[str], *,
                    unchanged_since: int | None = None) -> FlagResult:
        """Add (``+``), remove (``-``) or replace (``""``) flags of the messages ``uids``,
        each against its current flags, in one transaction."""
        folder = self._folder(name)
        renamed: list[tuple[str, str]] = []
        try:
            with self._write() as conn:
                row = self._mailbox_row(conn, name)
                if row is None:
                    raise StoreError("no such mailbox", "NONEXISTENT")
                new_record = self._ensure(conn, row, folder)
                mbid, known_kw = row[0], row[5].split()
                wanted = set(match_keywords(flags, known_kw))
                new_kw = [f for f in wanted if not f.startswith("\\") and f != "$Forwarded"
                          and f not in known_kw]
                result = FlagResult([], [])
                modseq = 0
                root = folder.maildir.root
                for chunk in _chunks(sorted(set(uids))):
                    rows = conn.execute(
                        "SELECT uid, key, subdir, filename, flags, modseq, emailid FROM message "
                        f"WHERE mailbox=? AND uid IN ({','.join('?' * len(chunk))})",
                        (mbid, *chunk)).fetchall()
                    for uid, key, subdir, filename, stored, mseq, emailid in rows:
                        if unchanged_since is not None and mseq > unchanged_since:
                            result.failed.append(uid)
                            continue
                        current = parse_stored(stored)
                        new = (current | wanted if mode == "+" else current - wanted
                               if mode == "-" else frozenset(wanted))
                        if new == current:
                            continue
                        modseq = modseq or self._next_modseq(conn)
                        letters = to_letters(new, folder.keywords)
                        target_sub, target = subdir, filename
                        if letters != to_letters(current, folder.keywords, assign=False) \
                                or (subdir == "new" and letters):
                            target_sub, target = "cur", f"{key}{INFO_SEP}{letters}"
                            src, dst = f"{root}/{subdir}/{filename}", f"{root}/cur/{target}"
                            try:
                                os.rename(src, dst)
                            except FileNotFoundError:
                                continue  # removed behind our back: the next sync sees it
                            renamed.append((dst, src))
                        conn.execute("UPDATE message SET flags=?, modseq=?, subdir=?, "
                                     "filename=? WHERE mailbox=? AND uid=?",
                                     (format_stored(new), modseq, target_sub, target, mbid,
                                      uid))
                        self._log(conn, modseq, "Email", emailid, "updated")
                        result.changed.append(uid)
                if new_kw:
                    all_kw = tuple(known_kw + sorted(new_kw))
                    conn.execute("UPDATE mailbox SET keywords=? WHERE id=?",
                                 (" ".join(all_kw), mbid))
                    result.keywords = all_kw
                    modseq = modseq or self._next_modseq(conn)
                if modseq:
                    self._finish(conn, mbid, modseq)
                if renamed:
                    self._after(conn, mbid, folder, new_record)
        except BaseException:
            for dst, src in reversed(renamed):  # the transaction is void: so are the renames
                with contextlib.suppress(OSError):
                    os.rename(dst, src)
            raise
        self._changed(folder, poke=not renamed and bool(result.changed or result.keywords))
        return result

    def _changed(self, folder: _Folder, *, poke: bool) -> None:
        """Wake watchers here and in other processes (a rename/unlink already did)."""
        if poke:
            path = f"{folder.maildir.root}/cur/{POKE}"
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                os.unlink(path)
        watch.notify(folder.maildir.root)

    def add_flags_by_keys(self, name: str, keys: Iterable[str], flags: Iterable[str]) -> None:
        """Add flags to the messages with these Maildir keys (POP3 RETR marks them seen)."""
        wanted = set(keys)
        snap, _ = self.sync(name)
        uids = [e.uid for e in snap.entries if e.key in wanted]
        if uids:
            self.store_flags(name, uids, "+", flags)

    # -- writing: expunge ---------------------------------------------------------------------
    def expunge(self, name: str, *, uids: Iterable[int] | None = None,
                below: int | None = None) -> list[int]:
        """Remove the messages whose **current** flags include \\Deleted (only those in
        ``uids`` when given, and only UIDs under ``below``: those the caller knows)."""
        folder = self._folder(name)
        only = set(uids) if uids is not None else None
        with self._write() as conn:
            row = self._mailbox_row(conn, name)
            if row is None:
                raise StoreError("no such mailbox", "NONEXISTENT")
            new_record = self._ensure(conn, row, folder)
            mbid = row[0]
            rows = conn.execute("SELECT uid, subdir, filename, flags, emailid FROM message "
                                "WHERE mailbox=? AND instr(flags, ?) > 0 ORDER BY uid",
                                (mbid, DELETED)).fetchall()
            victims = [r for r in rows if DELETED in parse_stored(r[3])
                       and (only is None or r[0] in only) and (below is None or r[0] < below)]
            if not victims:
                return []
            self._unlink_rows(folder, victims)
            modseq = self._next_modseq(conn)
            self._remove_rows(conn, mbid, [(r[0], r[4]) for r in victims], modseq)
            self._finish(conn, mbid, modseq)
            self._after(conn, mbid, folder, new_record)
        self._changed(folder, poke=False)
        return [r[0] for r in victims]

    def _unlink_rows(self, folder: _Folder, rows: Sequence[Sequence]) -> None:
        root = folder.maildir.root
        subs = set()
        for r in rows:
            try:
                os.unlink(f"{root}/{r[1]}/{r[2]}")
                subs.add(r[1])
            except FileNotFoundError:
                found = _locate(folder.maildir, r[2].split(INFO_SEP, 1)[0])
                if found:
                    os.unlink(found)
        for sub in subs:
            with contextlib.suppress(OSError):
                fsync_dir(root / sub)

    def remove_by_key(self, name: str, keys: Iterable[str]) -> int:
        """Remove messages by Maildir key, whatever their flags (POP3 DELE + QUIT)."""
        folder = self._folder(name)
        wanted = set(keys)
        if not wanted:
            return 0
        with self._write() as conn:
            row = self._mailbox_row(conn, name)
            if row is None:
                return 0
            new_record = self._ensure(conn, row, folder)
            mbid = row[0]
            rows = [r for r in conn.execute(
                "SELECT uid, subdir, filename, flags, emailid, key FROM message WHERE mailbox=?",
                (mbid,)) if r[5] in wanted]
            if not rows:
                return 0
            self._unlink_rows(folder, rows)
            modseq = self._next_modseq(conn)
            self._remove_rows(conn, mbid, [(r[0], r[4]) for r in rows], modseq)
            self._finish(conn, mbid, modseq)
            self._after(conn, mbid, folder, new_record)
        self._changed(folder, poke=False)
        return len(rows)

    # -- writing: append, copy, move ------------------------------------------------------------
    def append(self, name: str, data: bytes | memoryview, flags: Iterable[str] = (),
               date: float | dt.datetime | None = None, *, quota: int = 0,
               quota_messages: int = 0) -> tuple[int, int]:
        """Store a message in mailbox ``name``; returns (UIDVALIDITY, UID). ``date`` is its
        internal date: a POSIX time, or an aware datetime whose zone is kept with it."""
        validity, uids = self.append_many(name, [(data, flags, date)], quota=quota,
                                          quota_messages=quota_messages)
        return validity, uids[0]

    def append_many(self, name: str, items: Sequence[AppendItem], *, quota: int = 0,
                    quota_messages: int = 0) -> tuple[int, list[int]]:
        """Store several messages in mailbox ``name``, all or none (MULTIAPPEND, RFC 3502);
        returns (UIDVALIDITY, their UIDs in order).

        Every file is written first, then all rows go in one transaction; when anything fails,
        the rows are rolled back and the files written so far removed."""
        folder = self._folder(name)
        paths: list[str] = []
        with self._write() as conn:
            row = self._mailbox_row(conn, name)
            if row is None:
                raise StoreError("no such mailbox", "TRYCREATE")
            new_record = self._ensure(conn, row, folder)  # files that arrived first come first
            if quota and _usage(conn) + sum(len(item[0]) for item in items) > quota:
                raise OverQuota()
            if quota_messages and _count(conn) + len(items) > quota_messages:
                raise OverQuota("too many messages")
            row = self._mailbox_row(conn, name)
            assert row is not None
            mbid, validity, first = row[0], row[1], row[2]
            known = row[5].split()
            try:
                delivered = []
                for data, flags, date in items:
                    wanted = match_keywords(flags, known)
                    msg = folder.maildir.deliver(data, flags=to_letters(wanted, folder.keywords))
                    path = f"{folder.maildir.root}/{msg.subdir}/{msg.filename}"
                    paths.append(path)
                    tzoff = None
                    if date is not None:
                        ts, tzoff = _instant(date)
                        os.utime(path, (ts, ts))
                    delivered.append((msg, path, wanted, tzoff))
                modseq = self._next_modseq(conn)
                now = time.time()
                for uid, (msg, path, wanted, tzoff) in enumerate(delivered, first):
                    self._insert(conn, mbid, uid, msg.key, msg.subdir, msg.filename, wanted,
                                 modseq, ingest(path), now, tzoff=tzoff)
                conn.execute("UPDATE mailbox SET uidnext=? WHERE id=?",
                             (first + len(delivered), mbid))
                self._finish(conn, mbid, modseq)
                self._grow_keywords(conn, mbid, known, [f for d in delivered for f in d[2]])
                self._after(conn, mbid, folder, new_record)
            except BaseException:
                for path in paths:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
        self._changed(folder, poke=False)
        return validity, list(range(first, first + len(items)))

    def _grow_keywords(self, conn: sqlite3.Connection, mbid: int, known: list[str],
                       flags: Iterable[str]) -> None:
        new = [f for f in flags if not f.startswith("\\") and f != "$Forwarded"
               and f not in known]
        if new:
            conn.execute("UPDATE mailbox SET keywords=? WHERE id=?",
                         (" ".join(known + sorted(set(new))), mbid))

    def transfer(self, src: str, uids: Iterable[int], dst: str, *, move: bool,
                 quota: int = 0, quota_messages: int = 0) -> tuple[int, list[int], list[int]]:
        """COPY or MOVE messages; returns (destination UIDVALIDITY, source UIDs, new UIDs)."""
        sfolder, dfolder = self._folder(src), self._folder(dst)
        placed: list[tuple[str, str]] = []  # (new path, old path or "" for a link)
        try:
            with self._write() as conn:
                srow = self._mailbox_row(conn, src)
                drow = self._mailbox_row(conn, dst)
                if srow is None:
                    raise StoreError("no such mailbox", "NONEXISTENT")
                if drow is None:
                    raise StoreError("no such mailbox", "TRYCREATE")
                src_record = self._ensure(conn, srow, sfolder)
                dst_record = self._ensure(conn, drow, dfolder)
                drow = self._mailbox_row(conn, dst)
                assert drow is not None
                smbid, dmbid, validity, next_uid = srow[0], drow[0], drow[1], drow[2]
                wanted = sorted(set(uids))
                rows = []
                for chunk in _chunks(wanted):
                    rows += conn.execute(
                        f"SELECT {_COLS} FROM message WHERE mailbox=? AND uid IN "
                        f"({','.join('?' * len(chunk))}) ORDER BY uid", (smbid, *chunk))
                rows.sort(key=lambda r: r[0])
                if not rows:
                    return validity, [], []
                if quota and not move and _usage(conn) + sum(r[6] for r in rows) > quota:
                    raise OverQuota()
                if quota_messages and not move and _count(conn) + len(rows) > quota_messages:
                    raise OverQuota("too many messages")
                modseq = self._next_modseq(conn)
                src_uids, new_uids = [], []
                known_kw = drow[5].split()
                all_flags: set[str] = set()
                sroot, droot = sfolder.maildir.root, dfolder.maildir.root
                for r in rows:
                    e = _entry(r)
                    flags = match_keywords(e.flags, known_kw)
                    all_flags.update(flags)
                    letters = to_letters(flags, dfolder.keywords)
                    source = f"{sroot}/{e.subdir}/{e.filename}"
                    try:
                        size = os.path.getsize(source)
                    except FileNotFoundError:  # renamed meanwhile: follow it once
                        found = _locate(sfolder.maildir, e.key)
                        if found is None:
                            continue
                        source, size = found, os.path.getsize(found)
                    key = unique_name(size, e.size)
                    target = f"{droot}/cur/{key}{INFO_SEP}{letters}"
                    try:
                        if move:
                            os.rename(source, target)
                            placed.append((target, source))
                        else:
                            _link_or_copy(source, target, droot)
                            placed.append((target, ""))
                    except FileNotFoundError:
                        continue
                    info = Ingested(e.emailid, e.internaldate, e.size, None, [], "", False, "",
                                    "")
                    self._insert(conn, dmbid, next_uid, key, "cur", f"{key}{INFO_SEP}{letters}",
                                 flags, modseq, info, time.time(), threadid=e.threadid,
                                 tzoff=e.tzoff)
                    src_uids.append(e.uid)
                    new_uids.append(next_uid)
                    next_uid += 1
                if move and src_uids:
                    by_uid = {r[0]: r[8] for r in rows}
                    self._remove_rows(conn, smbid, [(u, by_uid[u]) for u in src_uids], modseq)
                    self._finish(conn, smbid, modseq)
                    self._after(conn, smbid, sfolder, src_record)
                conn.execute("UPDATE mailbox SET uidnext=? WHERE id=?", (next_uid, dmbid))
                self._grow_keywords(conn, dmbid, known_kw, all_flags)
                self._finish(conn, dmbid, modseq)
                if placed:
                    fsync_dir(droot / "cur")
                self._after(conn, dmbid, dfolder, dst_record)
        except BaseException:
            for new, old in reversed(placed):
                with contextlib.suppress(OSError):
                    if old:
                        os.rename(new, old)
                    else:
                        os.unlink(new)
            raise
        self._changed(dfolder, poke=False)
        if move:
            self._changed(sfolder, poke=False)
        return validity, src_uids, new_uids

    # -- change log (JMAP /changes, QRESYNC) ----------------------------------------------------
    def mailbox_ids(self) -> dict[str, int]:
        """Indexed mailbox names with their ids (ids survive a rename: IMAP NOTIFY OLDNAME)."""
        with self._read() as conn:
            return {name: mbid for mbid, name in conn.execute("SELECT id, name FROM mailbox")}

    def vanished(self, mailbox_id: int, since: int) -> list[int]:
        """UIDs of mailbox ``mailbox_id`` expunged after modseq ``since``, ascending
        (QRESYNC ``VANISHED (EARLIER)``; the log of expunged UIDs is kept whole)."""
        with self._read() as conn:
            return [r[0] for r in conn.execute(
                "SELECT uid FROM vanished WHERE mailbox=? AND modseq>? ORDER BY uid",
                (mailbox_id, since))]

    def changes(self, kind: str, since: int, limit: int = 10_000) -> Changes:
        """What changed for ``kind`` (``Mailbox``, ``Email``, ``Thread``) after modseq
        ``since``: ids created, updated and destroyed, collapsed per id as JMAP wants (created
        then destroyed is nothing; created then updated is created). Raises
        :class:`ChangesUnavailable` when ``since`` is older than the log keeps."""
        with self._read() as conn:
            oldest = conn.execute("SELECT min(modseq) FROM changelog").fetchone()[0]
            top = conn.execute("SELECT value FROM meta WHERE name='modseq'").fetchone()[0]
            if since > top:
                raise ChangesUnavailable(f"state {since} is in the future (now {top})")
            if oldest is not None and since < oldest - 1 and since < top:
                raise ChangesUnavailable(f"state {since} is older than the change log "
                                         f"(from {oldest})")
            rows = conn.execute("SELECT modseq, id, op FROM changelog WHERE kind=? AND modseq>? "
                                "ORDER BY modseq, rowid", (kind, since)).fetchall()
        state: dict[str, str] = {}
        last = since
        more = False
        for modseq, ident, op in rows:
            if len(state) >= limit and ident not in state and modseq > last:
                more = True
                break
            last = modseq
            before = state.get(ident)
            if op == "created":
                state[ident] = "created" if before != "destroyed" else "updated"
            elif op == "destroyed":
                if before == "created":
                    state.pop(ident)
                    state[ident] = "gone"
                else:
                    state[ident] = "destroyed"
            elif before is None:
                state[ident] = "updated"
        out = Changes(since, top if not more else last, more)
        for ident, what in state.items():
            if what == "created":
                out.created.append(ident)
            elif what == "updated":
                out.updated.append(ident)
            elif what == "destroyed":
                out.destroyed.append(ident)
        return out

    # -- mailboxes ------------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        """Subscribed mailbox names (Dovecot's ``subscriptions`` file, one a line)."""
        try:
            text = (self.root / SUBSCRIPTIONS).read_text("utf-8")
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    def set_subscribed(self, name: str, subscribed: bool) -> bool:
        """Subscribe or unsubscribe ``name``; False when nothing changed."""
        with self._write() as conn:
            subs = self.subscriptions()
            if (name in subs) == subscribed:
                return False
            subs = [*subs, name] if subscribed else [n for n in subs if n != name]
            atomic_write(self.root / SUBSCRIPTIONS, "".join(f"{n}\n" for n in subs).encode())
            row = self._mailbox_row(conn, name, create=False)
            if row is not None:
                self._log(conn, self._next_modseq(conn), "Mailbox", str(row[0]), "updated")
        return True

    def mailboxes(self) -> list[MailboxInfo]:
        """Every mailbox with its id, parent, role, subscription and counts (synced)."""
        names = ["INBOX", *Maildir(self.root).list_folders()]
        subs = set(self.subscriptions())
        out = []
        for name in names:
            try:
                snap, _ = self.sync(name)
            except StoreError:
                continue
            parent = name.rpartition(".")[0] if "." in name else ""
            role = "inbox" if name == "INBOX" else ROLES.get(name, "")
            out.append(MailboxInfo(snap.mailbox_id, name, parent, role, name in subs,
                                   snap.uidvalidity, snap.uidnext, len(snap.entries),
                                   sum(1 for e in snap.entries if not e.seen)))
        return out

    def create_mailbox(self, name: str) -> None:
        """Create a folder (and its missing parents)."""
        with self._write() as conn:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                md = self.maildir(sub)
                if sub == "INBOX" or md.exists():
                    continue
                md.create(folder=True)
                self._mailbox_row(conn, sub)

    def delete_mailbox(self, name: str) -> None:
        folder = self._folder(name)
        with self._write() as conn:
            row = self._mailbox_row(conn, name, create=False)
            grave = self.root / "tmp" / f"deleted-{time.time_ns()}-{os.getpid()}"
            try:
                os.rename(folder.maildir.root, grave)
            except FileNotFoundError:
                raise StoreError("no such mailbox", "NONEXISTENT") from None
            if row is not None:
                mbid = row[0]
                modseq = self._next_modseq(conn)
                gone = conn.execute("SELECT uid, emailid FROM message WHERE mailbox=?",
                                    (mbid,)).fetchall()
                self._remove_rows(conn, mbid, gone, modseq)
                conn.execute("DELETE FROM vanished WHERE mailbox=?", (mbid,))
                conn.execute("DELETE FROM mailbox WHERE id=?", (mbid,))
                self._log(conn, modseq, "Mailbox", str(mbid), "destroyed")
        self._folders.pop(name, None)
        shutil.rmtree(grave, ignore_errors=True)
        watch.notify(folder.maildir.root)

    def rename_mailbox(self, old: str, new: str, children: Iterable[str]) -> None:
        """Rename ``old`` and its ``children`` (names under it); ids and UIDs are kept."""
        with self._write() as conn:
            moves = [(n, new + n[len(old):]) for n in [old, *children]]
            done = []
            try:
                for src, dst in moves:
                    os.rename(self.maildir(src).root, self.maildir(dst).root)
                    done.append((src, dst))
            except BaseException:
                for src, dst in reversed(done):
                    os.rename(self.maildir(dst).root, self.maildir(src).root)
                raise
            modseq = self._next_modseq(conn)
            for src, dst in moves:
                conn.execute("DELETE FROM mailbox WHERE name=?", (dst,))
                cur = conn.execute("UPDATE mailbox SET name=? WHERE name=? RETURNING id",
                                   (dst, src)).fetchone()
                if cur:
                    self._log(conn, modseq, "Mailbox", str(cur[0]), "updated")
                self._folders.pop(src, None)
                self._folders.pop(dst, None)

    def move_inbox(self, new: str) -> None:
        """RENAME INBOX: its messages move to a new folder ``new``; INBOX stays, empty."""
        self.create_mailbox(new)
        snap, _ = self.sync("INBOX")
        if snap.entries:
            self.transfer("INBOX", snap.uids, new, move=True)


def _locate(md: Maildir, key: str) -> str | None:
    """Where the message file ``key`` is now (:meth:`Maildir.find` follows a flag rename)."""
    found = md.find(key)
    return str(found.path(md.root)) if found is not None else None


def _has(uids: list[int], uid: int) -> bool:
    i = bisect.bisect_left(uids, uid)
    return i < len(uids) and uids[i] == uid


def _usage(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(sum(size), 0) FROM message").fetchone()[0]


def _count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM message").fetchone()[0]


def _chunks(items: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _link_or_copy(source: str, target: str, droot: Path) -> None:
    try:
        os.link(source, target)
        return
    except FileNotFoundError:
        raise
    except OSError:
        pass
    tmp = f"{droot}/tmp/{os.path.basename(target)}"
    with open(source, "rb") as fi, open(tmp, "wb") as fo:
        shutil.copyfileobj(fi, fo)
        fo.flush()
        os.fsync(fo.fileno())
    st = os.stat(source)
    os.utime(tmp, (st.st_atime, st.st_mtime))
    os.rename(tmp, target)
