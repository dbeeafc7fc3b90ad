"""A JMAP account over the store: mailboxes, the emails of every mailbox by email id, ids.

Ids are the store's: an Email's id is the store's email id (IMAP's EMAILID), a Thread's its
thread id; a Mailbox's id is ``B`` + the store's mailbox id (JMAP ids should not be all
digits). States are the store's modseq (one counter for the account).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..store.account import AccountStore, MailboxInfo, StoreError
from ..store.maildir import Maildir
from ..store.view import Entry, Snapshot
from .core import is_number

KEYWORD_OF_FLAG = {"\\Seen": "$seen", "\\Flagged": "$flagged", "\\Answered": "$answered",
                   "\\Draft": "$draft", "$Forwarded": "$forwarded"}
FLAG_OF_KEYWORD = {v: k for k, v in KEYWORD_OF_FLAG.items()}


def account_id(address: str) -> str:
    """The opaque JMAP accountId of a login (stable, reveals nothing)."""
    return "A" + hashlib.sha256(address.encode()).hexdigest()[:20]


def mailbox_id(mbid: int | str) -> str:
    return f"B{mbid}"


def store_mailbox_id(jmap_id: str) -> int | None:
    if isinstance(jmap_id, str) and jmap_id[:1] == "B" and is_number(jmap_id[1:]):
        return int(jmap_id[1:])
    return None


def keywords(flags: frozenset[str]) -> dict[str, bool]:
    out = {}
    for f in flags:
        if f == "\\Deleted" or f == "\\Recent":
            continue
        out[KEYWORD_OF_FLAG.get(f, f.lower())] = True
    return out


def flag(keyword: str) -> str:
    """The store flag of a JMAP keyword (system keywords map to IMAP's system flags)."""
    return FLAG_OF_KEYWORD.get(keyword.lower(), keyword)


@dataclass(frozen=True)
class Located:
    """One copy of an email: the mailbox (name, info) and its entry there."""

    mailbox: str
    entry: Entry


class EmailIndex:
    """Every email of an account by id, and threads, from one set of snapshots."""

    def __init__(self, snaps: dict[str, Snapshot]) -> None:
        self.copies: dict[str, list[Located]] = {}
        self.threads: dict[str, list[str]] = {}
        for name, snap in snaps.items():
            for e in snap.entries:
                if "\\Deleted" in e.flags:
                    continue
                got = self.copies.get(e.emailid)
                if got is None:
                    self.copies[e.emailid] = [Located(name, e)]
                else:
                    got.append(Located(name, e))
        order = sorted(self.copies.items(), key=lambda kv: (kv[1][0].entry.internaldate, kv[0]))
        #: email ids, oldest received first (Email/query's usual sort, precomputed)
        self.by_received = [eid for eid, _ in order]
        for eid, locs in order:
            self.threads.setdefault(locs[0].entry.threadid, []).append(eid)
        #: mailbox name → JMAP mailbox id
        self.ids = {name: mailbox_id(snap.mailbox_id) for name, snap in snaps.items()}
        #: JMAP mailbox id → the email ids in it
        self.members: dict[str, set[str]] = {
            self.ids[name]: {e.emailid for e in snap.entries if "\\Deleted" not in e.flags}
            for name, snap in snaps.items()}


_indexes: OrderedDict[Path, tuple[tuple, EmailIndex]] = OrderedDict()
_indexes_lock = threading.Lock()


class Account:
    """One login's account for the span of one API request."""

    def __init__(self, address: str, root: Path, cfg: Config | None = None) -> None:
        self.address = address
        self.cfg = cfg  # the daemon's configuration (sending needs it)
        #: push messages the face sends after the API request: (subscription, JSON object)
        self.outbox: list[tuple[dict, dict]] = []
        self.id = account_id(address)
        self.root = root
        self.store = AccountStore.open(root)
        self._infos: list[MailboxInfo] | None = None
        self._index: EmailIndex | None = None
        self.session_state = "0"

    def state(self) -> str:
        return str(self.store.highest_modseq())

    def indexed_state(self) -> str:
        """The state that :meth:`index` reflects: the index is read (new files picked up),
        then the state, then the index again; when a change came between, the state read
        first (older: a later /queryChanges repeats a change, never misses one)."""
        before = self.state()
        idx = self.index()
        state = self.state()
        self.refresh()
        return state if self.index() is idx else before

    def refresh(self) -> None:
        """Forget what this request read (after a change it made)."""
        self._infos = None
        self._index = None

    def mailboxes(self) -> list[MailboxInfo]:
        if self._infos is None:
            self._infos = self.store.mailboxes()
        return self._infos

    def mailbox_by_id(self, jmap_id: str) -> MailboxInfo | None:
        mbid = store_mailbox_id(jmap_id)
        return next((m for m in self.mailboxes() if m.id == mbid), None)

    def index(self) -> EmailIndex:
        if self._index is None:
            snaps = {}
            for name in ["INBOX", *Maildir(self.root).list_folders()]:
                try:
                    snaps[name] = self.store.status(name)
                except StoreError:  # removed meanwhile
                    continue
            key = tuple(snaps.items())  # holds the snapshots: compared by identity
            with _indexes_lock:
                hit = _indexes.get(self.root)
            if hit is not None and len(hit[0]) == len(key) and all(
                    a[0] == b[0] and a[1] is b[1] for a, b in zip(hit[0], key, strict=True)):
                self._index = hit[1]
            else:
                self._index = EmailIndex(snaps)
                with _indexes_lock:
                    _indexes[self.root] = (key, self._index)
                    _indexes.move_to_end(self.root)
                    while len(_indexes) > 32:
                        _indexes.popitem(last=False)
        return self._index

    def refreshed_copies(self, emailid: str) -> list[Located]:
        """The copies of an email as they are now (after this request's own changes)."""
        self.refresh()
        return self.index().copies.get(emailid, [])

    def read(self, loc: Located) -> bytes | None:
        return self.store.read(loc.mailbox, loc.entry)
