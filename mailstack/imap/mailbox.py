"""The IMAP view of an account's Maildir++ tree: folders, subscriptions and a selected folder.

Mailbox names on the wire are modified UTF-7 with ``.`` as the hierarchy delimiter; the same
string (validated) names the Maildir++ folder on disk (``.Work.Projects``), so no path outside
the user's Maildir can ever be formed. ``INBOX`` is the Maildir itself.
"""

from __future__ import annotations

import bisect
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..fsutil import atomic_write
from ..store import watch
from ..store.keywords import Keywords
from ..store.maildir import (
    SPECIAL_FOLDERS,
    Maildir,
    MaildirError,
    MaildirMessage,
    to_crlf,
    validate_folder_name,
)
from ..store.uidlist import Entry, Snapshot, UidList, diff_entries
from . import mutf7

DELIM = "."
SPECIAL_USE = {name: "\\" + name for name in SPECIAL_FOLDERS}


class ValidityChanged(Exception):
    """The selected folder's UIDVALIDITY changed (its UID list was lost): UIDs are void."""


class MailboxError(Exception):
    """A mailbox operation that fails (answered NO); ``code`` is a response code or ''."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


def normalize_name(name: str) -> str:
    """Validate a wire mailbox name; ``INBOX`` in any case becomes ``INBOX``."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX" + DELIM):
        name = "INBOX" + name[5:]
    try:
        mutf7.decode(name)
        validate_folder_name(name)
    except (mutf7.MUTF7Error, MaildirError) as exc:
        raise MailboxError(f"bad mailbox name: {exc}", "CANNOT") from None
    return name


@dataclass
class MailboxInfo:
    name: str
    exists: bool
    children: bool
    attrs: list[str] = field(default_factory=list)


class Account:
    """One user's mailboxes."""

    def __init__(self, inbox: Maildir) -> None:
        self.inbox = inbox
        self.root = inbox.root

    # -- folders --------------------------------------------------------------------------
    def maildir(self, name: str) -> Maildir:
        name = normalize_name(name)
        return self.inbox if name == "INBOX" else Maildir(self.root / ("." + name))

    def exists(self, name: str) -> bool:
        return self.maildir(name).exists()

    def names(self) -> list[str]:
        return ["INBOX", *self.inbox.list_folders()]

    def tree(self) -> dict[str, MailboxInfo]:
        """Every mailbox plus missing parents (\\NonExistent), with child information."""
        names = self.names()
        info = {n: MailboxInfo(n, True, False) for n in names}
        for n in names:
            parts = n.split(DELIM)
            for i in range(1, len(parts)):
                parent = DELIM.join(parts[:i])
                if parent not in info:
                    info[parent] = MailboxInfo(parent, False, True)
                info[parent].children = True
        for n, mi in info.items():
            if n in SPECIAL_USE and mi.exists:
                mi.attrs.append(SPECIAL_USE[n])
        return info

    def create(self, name: str) -> None:
        name = normalize_name(name.rstrip(DELIM)) if name.endswith(DELIM) else normalize_name(name)
        if name == "INBOX" or self.exists(name):
            raise MailboxError("mailbox exists already", "ALREADYEXISTS")
        parts = name.split(DELIM)
        for i in range(1, len(parts)):  # superior names are created too (RFC 3501 6.3.3)
            parent = DELIM.join(parts[:i])
            if parent != "INBOX" and not self.exists(parent):
                self.maildir(parent).create(folder=True)
        self.maildir(name).create(folder=True)

    def delete(self, name: str) -> None:
        name = normalize_name(name)
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted", "CANNOT")
        if not self.exists(name):
            raise MailboxError("no such mailbox", "NONEXISTENT")
        if any(n.startswith(name + DELIM) for n in self.names()):
            raise MailboxError("mailbox has children: delete them first", "INUSE")
        # rename out of sight first (atomic), then remove the files
        grave = self.root / "tmp" / f"deleted-{time.time_ns()}-{os.getpid()}"
        os.rename(self.root / ("." + name), grave)
        shutil.rmtree(grave, ignore_errors=True)
        watch.notify(self.root / ("." + name))

    def rename(self, old: str, new: str) -> None:
        old, new = normalize_name(old), normalize_name(new)
        if new == "INBOX" or self.exists(new):
            raise MailboxError("target mailbox exists already", "ALREADYEXISTS")
        if not self.exists(old):
            raise MailboxError("no such mailbox", "NONEXISTENT")
        if new.startswith(old + DELIM):
            raise MailboxError("cannot move a mailbox into itself", "CANNOT")
        if old == "INBOX":
            self._rename_inbox(new)
            return
        moves = [(n, new + n[len(old):]) for n in self.names()
                 if n == old or n.startswith(old + DELIM)]
        for src, dst in moves:
            os.rename(self.root / ("." + src), self.root / ("." + dst))

    def _rename_inbox(self, new: str) -> None:
        target = self.maildir(new)
        target.create(folder=True)
        uids = UidList.for_maildir(self.inbox)
        with uids.locked():
            for sub in ("new", "cur"):
                for fname in os.listdir(self.root / sub):
                    if not fname.startswith("."):
                        os.rename(self.root / sub / fname, target.root / sub / fname)
        watch.notify(self.root)

    # -- subscriptions --------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / "subscriptions").read_text("utf-8")
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    def _write_subscriptions(self, names: list[str]) -> None:
        atomic_write(self.root / "subscriptions", "".join(f"{n}\n" for n in names).encode())

    def subscribe(self, name: str) -> None:
        name = normalize_name(name)
        subs = self.subscriptions()
        if name not in subs:
            self._write_subscriptions([*subs, name])

    def unsubscribe(self, name: str) -> None:
        name = normalize_name(name)
        subs = self.subscriptions()
        if name not in subs:
            raise MailboxError("not subscribed", "NONEXISTENT")
        self._write_subscriptions([s for s in subs if s != name])

    # -- status ---------------------------------------------------------------------------
    def status(self, name: str) -> tuple[Snapshot, Keywords, int]:
        """(UID-list snapshot, keyword map, number of \\Recent messages) for STATUS."""
        md = self.maildir(name)
        if not md.exists():
            raise MailboxError("no such mailbox", "NONEXISTENT")
        snap = UidList.for_maildir(md).sync()
        return snap, keywords_for(md), len(snap.recent_uids())


_keywords: dict[Path, Keywords] = {}


def keywords_for(md: Maildir) -> Keywords:
    kw = _keywords.get(md.root)
    if kw is None:
        kw = _keywords[md.root] = Keywords(md.root)
    return kw


Msg = Entry  # a message as a session sees it: shared, immutable UID-list entries


@dataclass
class Changes:
    """What a refresh found: expunged sequence numbers (in reporting order), the new EXISTS
    count (or None), and messages whose flags changed."""

    expunged: list[int] = field(default_factory=list)
    exists: int | None = None
    recent: int = 0
    flags: list[Entry] = field(default_factory=list)


class Selected:
    """The selected mailbox of one session: messages in sequence order.

    The message list is the UID list's shared snapshot (thousands of sessions on one folder
    cost one list); a session keeps a private copy only while it owes the client EXPUNGE
    responses that cannot be sent yet (during FETCH, STORE and SEARCH).
    """

    def __init__(self, account: Account, name: str, readonly: bool) -> None:
        self.account = account
        self.name = normalize_name(name)
        self.maildir = account.maildir(self.name)
        if not self.maildir.exists():
            raise MailboxError("no such mailbox", "NONEXISTENT")
        self.readonly = readonly
        self.uidlist = UidList.for_maildir(self.maildir)
        self.keywords = keywords_for(self.maildir)
        if readonly:
            snap = self._sync()
            self.recent: set[int] = snap.recent_uids()
        else:
            snap, self.recent = self.uidlist.claim_recent()
        self.snapshot: Snapshot | None = snap
        self.msgs: list[Entry] = snap.entries
        self.uids: list[int] = snap.uids
        self.private = False

    def moved_to(self, name: str) -> None:
        """Follow a RENAME of this mailbox made by this session."""
        self.name = name
        self.maildir = self.account.maildir(name)
        self.uidlist = UidList.for_maildir(self.maildir)
        self.keywords = keywords_for(self.maildir)
        self.snapshot = None

    def _sync(self, first: list[str] | None = None) -> Snapshot:
        return self.uidlist.sync(first or ())

    # -- lookups --------------------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.msgs)

    def is_recent(self, m: Entry) -> bool:
        return m.uid in self.recent

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def by_seqset(self, ranges: list[tuple[int, int]]) -> list[tuple[int, Entry]]:
        if len(ranges) == 1:
            a, b = ranges[0]
            return [(s, self.msgs[s - 1]) for s in range(max(a, 1), min(b, len(self.msgs)) + 1)]
        seqs: set[int] = set()
        for a, b in ranges:
            seqs.update(range(max(a, 1), min(b, len(self.msgs)) + 1))
        return [(s, self.msgs[s - 1]) for s in sorted(seqs)]

    def by_uidset(self, ranges: list[tuple[int, int]]) -> list[tuple[int, Entry]]:
        idx: set[int] = set()
        for a, b in ranges:
            idx.update(range(bisect.bisect_left(self.uids, a), bisect.bisect_right(self.uids, b)))
        return [(k + 1, self.msgs[k]) for k in sorted(idx)]

    def flags(self, m: Entry) -> list[str]:
        out = self.keywords.to_imap(m.flags) if m.flags else []
        if m.uid in self.recent:
            out.append("\\Recent")
        return out

    def path(self, m: Entry) -> Path:
        return self.maildir.root / m.subdir / m.filename

    def read(self, m: Entry) -> bytes | None:
        """The message with CRLF line ends, or None when it is gone."""
        try:
            data = self.maildir.read(m.message())
        except FileNotFoundError:
            return None
        return to_crlf(data)

    def internal_date(self, m: Entry) -> float:
        try:
            return os.stat(self.path(m)).st_mtime
        except FileNotFoundError:
            found = self.maildir.find(m.key)
            if found is None:
                return 0.0
            return os.stat(found.path(self.maildir.root)).st_mtime

    def size(self, m: Entry) -> int:
        mm = m.message()
        if mm.vsize is not None:
            return mm.vsize
        data = self.read(m)
        return len(data) if data is not None else 0

    # -- changes --------------------------------------------------------------------------
    def refresh(self, *, expunge_ok: bool = True, own: frozenset[int] | set[int] = frozenset()
                ) -> Changes:
        """Bring this view up to date with the folder; returns what to announce.

        ``own`` names messages whose new flags the caller reports itself (STORE).
        """
        ch = Changes()
        if self.readonly:
            snap = self._sync()
        else:
            snap, won = self.uidlist.claim_recent()
            self.recent |= won
        if snap is self.snapshot and not (self.private and expunge_ok):
            return ch
        if self.snapshot is not None and snap.uidvalidity != self.snapshot.uidvalidity:
            raise ValidityChanged(self.name)
        expunged, changed = self._delta(snap)
        top = self.uids[-1] if self.uids else 0
        if expunged and not expunge_ok:
            by_uid = {e.uid: e for e in snap.entries}
            merged = [by_uid.get(e.uid, e) for e in self.msgs]
            merged += [e for e in snap.entries if e.uid > top]
            self.msgs, self.uids, self.private = merged, [e.uid for e in merged], True
            self.snapshot = snap
            expunged = set()
        else:
            if expunged:
                removed = 0
                for i, uid in enumerate(self.uids):
                    if uid in expunged:
                        ch.expunged.append(i + 1 - removed)
                        removed += 1
                self.recent -= expunged
            self.msgs, self.uids, self.private = snap.entries, snap.uids, False
            self.snapshot = snap
        for uid in sorted(changed - expunged):
            if uid > top or uid in own:
                continue
            seq = self.seq_of(uid)
            if seq is not None:
                ch.flags.append(self.msgs[seq - 1])
        if self.uids and self.uids[-1] > top:
            ch.exists = len(self.msgs)
            ch.recent = len(self.recent)
        return ch

    def _delta(self, snap: Snapshot) -> tuple[set[int], set[int]]:
        """(expunged UIDs, changed UIDs) between this view and ``snap``."""
        expunged: set[int] = set()
        changed: set[int] = set()
        s = self.snapshot
        while s is not None and s is not snap:
            s = s.next
            if s is not None:
                expunged |= s.expunged
                changed |= s.changed
        if s is None or self.private:  # no chain to follow: compare everything
            expunged, changed = diff_entries(self.msgs, snap.entries)
        return expunged, changed

    def set_letters(self, m: Entry, letters: str) -> None:
        """Rename the message file for new flags (the view follows at the next refresh)."""
        if letters == m.flags and m.subdir == "cur":
            return
        self.maildir.set_flags(m.message(), letters)

    def current(self, uid: int) -> Entry | None:
        seq = self.seq_of(uid)
        return self.msgs[seq - 1] if seq is not None else None

    def expunge(self, uids: set[int] | None = None) -> list[MaildirMessage]:
        """Remove \\Deleted messages (only those in ``uids`` when given)."""
        gone = []
        for m in self.msgs:
            if ("T" in m.flags and (uids is None or m.uid in uids)
                    and self.maildir.remove(m.message())):
                gone.append(m.message())
        return gone
