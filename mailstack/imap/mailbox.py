"""The IMAP view of an account's Maildir++ tree: folders, subscriptions and a selected folder.

Mailbox names on the wire are modified UTF-7 with ``.`` as the hierarchy delimiter; the same
string (validated) names the Maildir++ folder on disk (``.Work.Projects``), so no path outside
the user's Maildir can ever be formed. ``INBOX`` is the Maildir itself.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from ..store.account import AccountStore, FlagResult, StoreError
from ..store.maildir import (
    SPECIAL_FOLDERS,
    Maildir,
    MaildirError,
    to_crlf,
    validate_folder_name,
)
from ..store.view import Entry, Snapshot, diff_entries
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
    """One user's mailboxes: the IMAP face of the account's store."""

    def __init__(self, inbox: Maildir) -> None:
        self.inbox = inbox
        self.root = inbox.root
        self._store: AccountStore | None = None

    @property
    def store(self) -> AccountStore:
        """The account's store, opened at first use (a login needs no index)."""
        if self._store is None:
            self._store = AccountStore.open(self.root)
        return self._store

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
        self.store.create_mailbox(name)  # superior names are created too (RFC 3501 6.3.3)

    def delete(self, name: str) -> None:
        name = normalize_name(name)
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted", "CANNOT")
        if not self.exists(name):
            raise MailboxError("no such mailbox", "NONEXISTENT")
        if any(n.startswith(name + DELIM) for n in self.names()):
            raise MailboxError("mailbox has children: delete them first", "INUSE")
        self.store.delete_mailbox(name)

    def rename(self, old: str, new: str) -> None:
        old, new = normalize_name(old), normalize_name(new)
        if new == "INBOX" or self.exists(new):
            raise MailboxError("target mailbox exists already", "ALREADYEXISTS")
        if not self.exists(old):
            raise MailboxError("no such mailbox", "NONEXISTENT")
        if new.startswith(old + DELIM):
            raise MailboxError("cannot move a mailbox into itself", "CANNOT")
        if old == "INBOX":
            self.store.move_inbox(new)
            return
        parts = new.split(DELIM)
        for i in range(1, len(parts)):  # superior names of the new name are created
            parent = DELIM.join(parts[:i])
            if parent != "INBOX" and not self.exists(parent):
                self.store.create_mailbox(parent)
        children = [n for n in self.names() if n.startswith(old + DELIM)]
        self.store.rename_mailbox(old, new, children)

    # -- subscriptions --------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        return self.store.subscriptions()

    def subscribe(self, name: str) -> None:
        self.store.set_subscribed(normalize_name(name), True)

    def unsubscribe(self, name: str) -> None:
        name = normalize_name(name)
        if not self.store.set_subscribed(name, False):
            raise MailboxError("not subscribed", "NONEXISTENT")

    # -- status ---------------------------------------------------------------------------
    def status(self, name: str) -> tuple[Snapshot, int]:
        """(current snapshot, number of \\Recent messages) for STATUS."""
        name = normalize_name(name)
        if not self.exists(name):
            raise MailboxError("no such mailbox", "NONEXISTENT")
        snap = _store_call(self.store.status, name)
        return snap, len(snap.recent_uids())


def _store_call(fn, *args, **kw):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kw)
    except StoreError as exc:
        raise MailboxError(str(exc), exc.code) from None


Msg = Entry  # a message as a session sees it: shared, immutable index entries


@dataclass
class Changes:
    """What a refresh found: expunged sequence numbers (in reporting order) and UIDs, the new EXISTS
    count (or None), messages whose flags changed, and the keyword list when it grew."""

    expunged: list[int] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)  # the same messages' UIDs, ascending
    exists: int | None = None
    recent: int = 0
    flags: list[Entry] = field(default_factory=list)
    keywords: tuple[str, ...] | None = None


def _flag_order(flag: str) -> tuple[bool, str]:
    """System flags first, then keywords, each alphabetically."""
    return (not flag.startswith("\\"), flag)


class Selected:
    """The selected mailbox of one session: messages in sequence order.

    The message list is the store's shared snapshot (thousands of sessions on one folder
    cost one list); a session keeps a private copy only while it owes the client EXPUNGE
    responses that cannot be sent yet (during FETCH, STORE and SEARCH).
    """

    def __init__(self, account: Account, name: str, readonly: bool) -> None:
        self.account = account
        self.store = account.store
        self.name = normalize_name(name)
        self.maildir = account.maildir(self.name)
        if not self.maildir.exists():
            raise MailboxError("no such mailbox", "NONEXISTENT")
        self.readonly = readonly
        snap, won = _store_call(self.store.sync, self.name, claim_recent=not readonly)
        self.recent: set[int] = snap.recent_uids() if readonly else won
        self.snapshot: Snapshot | None = snap
        self.msgs: list[Entry] = snap.entries
        self.uids: list[int] = snap.uids
        self.keywords: tuple[str, ...] = snap.keywords
        self.private = False
        #: while expunges are held back: a modseq below theirs (RFC 7162 3.2, erratum 1810)
        self.held_modseq = 0
        self.show_recent = True  # False under IMAP4rev2, which has no \\Recent
        self.saved: list[int] = []  # UIDs of the saved search result (SEARCHRES, RFC 5182)
        self._saved_set: frozenset[int] | None = None

    def save_result(self, uids: list[int]) -> None:
        self.saved, self._saved_set = uids, None

    def saved_set(self) -> frozenset[int]:
        if self._saved_set is None:
            self._saved_set = frozenset(self.saved)
        return self._saved_set

    def by_uids(self, uids: list[int]) -> list[tuple[int, Entry]]:
        """Messages with these UIDs (those still here), in sequence order."""
        out = []
        for u in sorted(set(uids)):
            seq = self.seq_of(u)
            if seq is not None:
                out.append((seq, self.msgs[seq - 1]))
        return out

    def moved_to(self, name: str) -> None:
        """Follow a RENAME of this mailbox made by this session."""
        self.name = name
        self.maildir = self.account.maildir(name)

    # -- lookups --------------------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.msgs)

    @property
    def known_uidnext(self) -> int:
        """One above the highest UID this session has been told of."""
        return (self.uids[-1] + 1) if self.uids else 1

    def is_recent(self, m: Entry) -> bool:
        return m.uid in self.recent

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def gone(self, uids: list[int]) -> set[int]:
        """Those of ``uids`` expunged in the store whose EXPUNGE this session holds back."""
        if not self.private or self.snapshot is None:
            return set()
        current = self.snapshot.uids
        return {u for u in uids if not _has(current, u)}

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
        out = sorted(m.flags, key=_flag_order)
        if m.uid in self.recent and self.show_recent:
            out.append("\\Recent")
        return out

    def path(self, m: Entry) -> Path:
        return self.maildir.root / m.subdir / m.filename

    def read(self, m: Entry) -> bytes | None:
        """The message with CRLF line ends, or None when it is gone."""
        data = self.store.read(self.name, m)
        return to_crlf(data) if data is not None else None

    def internal_date(self, m: Entry) -> float:
        return m.internaldate

    def size(self, m: Entry) -> int:
        return m.size

    # -- changes --------------------------------------------------------------------------
    def refresh(self, *, expunge_ok: bool = True, own: frozenset[int] | set[int] = frozenset(),
                nonblocking: bool = False) -> Changes:
        """Bring this view up to date with the store; returns what to announce.

        ``own`` names messages whose new flags the caller reports itself (STORE). With
        ``nonblocking`` raises the store's ``WouldBlock`` (nothing changed here) when the
        store would have to wait: call again from a worker thread.
        """
        ch = Changes()
        snap, won = _store_call(self.store.sync, self.name, claim_recent=not self.readonly,
                                nonblocking=nonblocking)
        self.recent |= won
        if snap is self.snapshot and not (self.private and expunge_ok):
            return ch
        if self.snapshot is not None and snap.uidvalidity != self.snapshot.uidvalidity:
            raise ValidityChanged(self.name)
        if snap.keywords != self.keywords:
            self.keywords = snap.keywords
            ch.keywords = snap.keywords
        expunged, changed = self._delta(snap)
        top = self.uids[-1] if self.uids else 0
        if expunged and not expunge_ok:
            if not self.private and self.snapshot is not None:
                self.held_modseq = self.snapshot.highest_modseq  # below the held expunges
            by_uid = {e.uid: e for e in snap.entries}
            merged = [by_uid.get(e.uid, e) for e in self.msgs]
            merged += [e for e in snap.entries if e.uid > top]
            self.msgs, self.uids, self.private = merged, [e.uid for e in merged], True
            self.snapshot = snap  # held back: no flag news of them either (below)
        else:
            if expunged:
                removed = 0
                for i, uid in enumerate(self.uids):
                    if uid in expunged:
                        ch.expunged.append(i + 1 - removed)
                        ch.vanished.append(uid)
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

    # -- changes through the store --------------------------------------------------------
    def store_flags(self, uids: list[int], mode: str, flags: list[str],
                    unchanged_since: int | None = None) -> FlagResult:
        return _store_call(self.store.store_flags, self.name, uids, mode, flags,
                           unchanged_since=unchanged_since)

    def expunge(self, uids: set[int] | None = None) -> list[int]:
        """Remove messages whose current flags include \\Deleted, among those this session
        knows (only those in ``uids`` when given)."""
        return _store_call(self.store.expunge, self.name, uids=uids, below=self.known_uidnext)


def _has(uids: list[int], uid: int) -> bool:
    i = bisect.bisect_left(uids, uid)
    return i < len(uids) and uids[i] == uid
