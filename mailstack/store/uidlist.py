"""Per-folder IMAP UID list: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and key → (UID, MODSEQ).

The file ``mailstack-uidlist`` in each Maildir (the INBOX or a ``.Folder``) reads::

    1 V<uidvalidity> N<uidnext> M<highestmodseq> R<first recent uid>
    <uid> <modseq> <flags or -> <key>
    ...

Every change happens under ``fcntl.flock`` on ``mailstack-uidlist.lock``, so imap processes,
the pop3 daemon and the mda can share a mailbox: whoever syncs first gives a new message its
UID, UIDs only grow (never reused within a UIDVALIDITY), and a vanished file drops its line.
The flags recorded per line let a sync notice flag changes made by anyone (a rename in cur/)
and give them a new MODSEQ (RFC 7162). The file is a cache of the Maildir plus the UID
assignment: if it is lost, a new UIDVALIDITY starts.

``\\Recent`` (RFC 3501) is the range of UIDs from ``R`` up: the first session that selects the
folder read-write claims it by moving ``R`` to UIDNEXT, so message files are not renamed for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

from .maildir import INFO_SEP, Maildir, MaildirMessage, delivery_order

UIDLIST = "mailstack-uidlist"
LOCKFILE = "mailstack-uidlist.lock"
RACY_NS = 20_000_000  # a directory changed this recently may change again in the same tick


class Entry:
    """One message as the UID list knows it."""

    __slots__ = ("filename", "flags", "key", "modseq", "subdir", "uid")

    def __init__(self, uid: int, modseq: int, key: str, subdir: str, filename: str,
                 flags: str) -> None:
        self.uid = uid
        self.modseq = modseq
        self.key = key
        self.subdir = subdir
        self.filename = filename
        self.flags = flags

    def message(self) -> MaildirMessage:
        return MaildirMessage(self.key, self.subdir, self.filename, self.flags)

    maildir_message = message

    @property
    def letters(self) -> str:
        """The Maildir flag letters (alias of ``flags``)."""
        return self.flags

    def __repr__(self) -> str:
        return (f"Entry(uid={self.uid}, modseq={self.modseq}, key={self.key!r}, "
                f"flags={self.flags!r})")


class Snapshot:
    """The folder's state after a sync: entries in UID order (shared, never mutated).

    Published snapshots form a chain: ``next`` points to the one that replaced this one, and
    ``expunged``/``changed`` say which UIDs vanished or changed flags/MODSEQ on the way from
    the previous one, so that thousands of sessions on one folder can catch up without each
    comparing every message.
    """

    __slots__ = ("_uids", "changed", "entries", "expunged", "first_recent", "highest_modseq",
                 "next", "uidnext", "uidvalidity")

    def __init__(self, uidvalidity: int, uidnext: int, highest_modseq: int,
                 entries: list[Entry]) -> None:
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.highest_modseq = highest_modseq
        self.entries = entries
        self.next: Snapshot | None = None
        self.expunged: frozenset[int] = frozenset()
        self.changed: frozenset[int] = frozenset()
        self._uids: list[int] | None = None
        self.first_recent = 1

    def recent_uids(self) -> set[int]:
        """UIDs not yet claimed as \\Recent by any session."""
        if self.first_recent >= self.uidnext:
            return set()
        return {e.uid for e in self.entries if e.uid >= self.first_recent}

    @property
    def uids(self) -> list[int]:
        if self._uids is None:
            self._uids = [e.uid for e in self.entries]
        return self._uids


def _parse_names(subdir: str, names: list[str],
                 previous: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """file name → (key, flags); names seen in the previous listing are not parsed again."""
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        hit = previous.get(name)
        if hit is not None:
            out[name] = hit
            continue
        if name[:1] == ".":
            continue
        if subdir == "cur":
            key, sep, info = name.partition(INFO_SEP)
            out[name] = (key, "".join(sorted(info)) if sep else "")
        else:
            out[name] = (name, "")
    return out


def diff_entries(old: Iterable[Entry], new: Iterable[Entry]) -> tuple[set[int], set[int]]:
    """UIDs of ``old`` that are gone from ``new`` (expunged) or whose flags or modseq differ."""
    by_uid = {e.uid: e for e in new}
    expunged: set[int] = set()
    changed: set[int] = set()
    for e in old:
        n = by_uid.get(e.uid)
        if n is None:
            expunged.add(e.uid)
        elif n.flags != e.flags or n.modseq != e.modseq:
            changed.add(e.uid)
    return expunged, changed


class UidList:
    """The UID list of one Maildir; one shared instance per folder per process."""

    _registry: OrderedDict[Path, UidList] = OrderedDict()
    _registry_lock = threading.Lock()
    registry_size = 256  # folders whose parsed list stays in memory (least recently used go)

    def __init__(self, maildir: Maildir) -> None:
        self.maildir = maildir
        self.path = maildir.root / UIDLIST
        self._file_stamp: tuple[int, int, int] | None = None
        # subdir → (mtime_ns, listed at ns, {file name: (key, flags)})
        self._dirs: dict[str, tuple[int, int, dict[str, tuple[str, str]]]] = {}
        self._snapshot: Snapshot | None = None  # as read from the file
        self._published: Snapshot | None = None  # as last returned by sync()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._thread_lock = threading.RLock()  # sessions may sync from worker threads

    @classmethod
    def for_maildir(cls, maildir: Maildir) -> UidList:
        key = maildir.root.resolve()
        with cls._registry_lock:
            inst = cls._registry.get(key)
            if inst is None:
                inst = cls._registry[key] = cls(Maildir(key))
                while len(cls._registry) > cls.registry_size:
                    cls._registry.popitem(last=False)  # its users keep their reference
            else:
                cls._registry.move_to_end(key)
            return inst

    # -- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's UID-list lock (re-entrant within one thread)."""
        with self._thread_lock, self._flocked():
            yield

    @contextlib.contextmanager
    def _flocked(self) -> Iterator[None]:
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.maildir.root / LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                self._lock_fd = None
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- reading and writing -----------------------------------------------------------------
    def _dir_fresh(self, subdir: str) -> tuple[bool, int]:
        """(the cached listing of ``subdir`` is still valid, its current mtime)."""
        mtime = os.stat(self.maildir.root / subdir).st_mtime_ns
        cached = self._dirs.get(subdir)
        return (cached is not None and cached[0] == mtime
                and cached[1] - mtime > RACY_NS), mtime

    def _disk(self) -> dict[str, tuple[str, str, str]]:
        """key → (subdir, filename, flags), listing only directories that changed."""
        out: dict[str, tuple[str, str, str]] = {}
        for subdir in ("new", "cur"):
            try:
                fresh, mtime = self._dir_fresh(subdir)
            except FileNotFoundError:
                continue
            cached = self._dirs.get(subdir)
            if fresh and cached is not None:
                parsed = cached[2]
            else:
                listed_at = time.time_ns()
                try:
                    names = os.listdir(self.maildir.root / subdir)
                except FileNotFoundError:
                    continue
                parsed = _parse_names(subdir, names, cached[2] if cached else {})
                self._dirs[subdir] = (mtime, listed_at, parsed)
            for name, (key, flags) in parsed.items():
                out[key] = (subdir, name, flags)
        return out

    def _load(self) -> Snapshot | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._file_stamp = None
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._file_stamp and self._snapshot is not None:
            return self._snapshot
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return None
        lines = text.split("\n")
        head = lines[0].split()
        try:
            if not head or head[0] != "1":
                raise ValueError("unknown version")
            fields = {h[0]: int(h[1:]) for h in head[1:]}
            validity, uidnext, hms = fields["V"], fields["N"], fields.get("M", 1)
            first_recent = fields.get("R", 1)
            entries = []
            for line in lines[1:]:
                if not line:
                    continue
                uid_s, modseq_s, flags, key = line.split(" ", 3)
                entries.append(Entry(int(uid_s), int(modseq_s), key, "", "",
                                     "" if flags == "-" else flags))
        except (ValueError, KeyError, IndexError):
            return None  # unreadable: start a new UIDVALIDITY
        self._file_stamp = stamp
        snap = Snapshot(validity, uidnext, hms, entries)
        snap.first_recent = first_recent
        self._snapshot = snap
        return snap

    def _write(self, snap: Snapshot) -> None:
        parts = [f"1 V{snap.uidvalidity} N{snap.uidnext} M{snap.highest_modseq} "
                 f"R{snap.first_recent}\n"]
        parts += [f"{e.uid} {e.modseq} {e.flags or '-'} {e.key}\n" for e in snap.entries]
        tmp = self.path.with_name(f".{UIDLIST}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(parts))
        os.replace(tmp, self.path)
        st = os.stat(self.path)
        self._file_stamp = (st.st_mtime_ns, st.st_size, st.st_ino)

    def sync(self, first: Iterable[str] = ()) -> Snapshot:
        """Bring the UID list in line with the Maildir and return it.

        New messages get UIDs: the keys in ``first`` in that order (APPEND, COPY), then the
        others oldest first. A cached snapshot is returned without listing the directories when
        neither the list file nor new/ and cur/ changed since the last (non-racy) listing.
        """
        return self._sync(list(first), claim=False)[0]

    def claim_recent(self) -> tuple[Snapshot, set[int]]:
        """Sync, and take the \\Recent messages for the calling session (one write)."""
        return self._sync([], claim=True)

    def _sync(self, first: list[str], claim: bool) -> tuple[Snapshot, set[int]]:
        pub = self._published
        if pub is not None and not first and (not claim or pub.first_recent >= pub.uidnext):
            # lock-free check: nothing changed on disk since our last look (thousands of IDLE
            # sessions wake on one delivery; only the first needs the lock)
            try:
                st = os.stat(self.path)
                if (self._snapshot is pub
                        and (st.st_mtime_ns, st.st_size, st.st_ino) == self._file_stamp
                        and self._dir_fresh("new")[0] and self._dir_fresh("cur")[0]):
                    return pub, set()
            except FileNotFoundError:
                pass
        with self.locked():
            old = self._load()
            pub = self._published
            if (old is not None and old is pub and not first and self._dir_fresh("new")[0]
                    and self._dir_fresh("cur")[0]):
                if not claim or pub.first_recent >= pub.uidnext:
                    return pub, set()
                won = pub.recent_uids()
                pub.first_recent = pub.uidnext
                self._write(pub)
                return pub, won
            disk = self._disk()
            dirty = old is None
            if old is None:
                validity = int(time.time())
                if pub is not None and validity <= pub.uidvalidity:
                    validity = pub.uidvalidity + 1  # never repeat one this process has used
                snap = Snapshot(validity, 1, 1, [])
            else:
                snap = Snapshot(old.uidvalidity, old.uidnext, old.highest_modseq, [])
                snap.first_recent = old.first_recent
            entries = snap.entries
            modseq = snap.highest_modseq
            renamed = False
            for e in (old.entries if old else ()):
                found = disk.pop(e.key, None)
                if found is None:
                    dirty = True
                    continue
                subdir, filename, flags = found
                if flags != e.flags:
                    modseq += 1
                    e = Entry(e.uid, modseq, e.key, subdir, filename, flags)
                    dirty = True
                elif e.filename != filename:
                    e = Entry(e.uid, e.modseq, e.key, subdir, filename, flags)
                    renamed = True
                entries.append(e)
            if disk:
                dirty = True
                order = [k for k in first if k in disk]
                chosen = set(order)
                order += sorted((k for k in disk if k not in chosen), key=delivery_order)
                uid = snap.uidnext
                for key in order:
                    subdir, filename, flags = disk[key]
                    modseq += 1
                    entries.append(Entry(uid, modseq, key, subdir, filename, flags))
                    uid += 1
                snap.uidnext = uid
            snap.highest_modseq = modseq
            won: set[int] = set()
            if claim and snap.first_recent < snap.uidnext:
                won = snap.recent_uids()
                snap.first_recent = snap.uidnext
                dirty = True
            if not dirty and not renamed and pub is not None and old is pub:
                return pub, won  # listed again, nothing changed
            if dirty:
                self._write(snap)
            self._snapshot = snap
            self._publish(snap)
            return snap, won

    def _publish(self, snap: Snapshot) -> None:
        """Link ``snap`` after the last published snapshot, with what changed."""
        prev = self._published
        self._published = snap
        if prev is None or prev.uidvalidity != snap.uidvalidity:
            return
        expunged, changed = diff_entries(prev.entries, snap.entries)
        snap.expunged = frozenset(expunged)
        snap.changed = frozenset(changed)
        prev.next = snap
