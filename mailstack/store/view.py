"""Immutable views of a mailbox, shared by every session of a process.

A :class:`Snapshot` is the mailbox's messages in UID order at one modseq. Snapshots published
for a mailbox form a chain: ``next`` points to the one that replaced it, and
``expunged``/``changed`` say which UIDs vanished or changed on the way from the previous one,
so thousands of sessions on one folder catch up without each comparing every message.
"""

from __future__ import annotations

from collections.abc import Iterable


class Entry:
    """One message of a mailbox as the index knows it (never mutated)."""

    __slots__ = ("emailid", "filename", "flags", "internaldate", "key", "modseq", "savedate",
                 "size", "subdir", "threadid", "tzoff", "uid")

    def __init__(self, uid: int, modseq: int, key: str, subdir: str, filename: str,
                 flags: frozenset[str], size: int, internaldate: float, emailid: str,
                 threadid: str, savedate: float, tzoff: int | None = None) -> None:
        self.uid = uid
        self.modseq = modseq
        self.key = key
        self.subdir = subdir
        self.filename = filename
        self.flags = flags
        self.size = size
        self.internaldate = internaldate
        self.emailid = emailid
        self.threadid = threadid
        self.savedate = savedate
        #: the internal date's zone, minutes east of UTC (APPEND's date-time), or None: unknown
        self.tzoff = tzoff

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    def __repr__(self) -> str:
        return f"Entry(uid={self.uid}, modseq={self.modseq}, flags={sorted(self.flags)})"


class Snapshot:
    """A mailbox's state: entries in UID order (shared, never mutated)."""

    __slots__ = ("_uids", "changed", "entries", "expunged", "first_recent", "highest_modseq",
                 "keywords", "mailbox_id", "next", "uidnext", "uidvalidity")

    def __init__(self, mailbox_id: int, uidvalidity: int, uidnext: int, highest_modseq: int,
                 entries: list[Entry], first_recent: int = 1,
                 keywords: tuple[str, ...] = ()) -> None:
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.highest_modseq = highest_modseq
        self.entries = entries
        self.first_recent = first_recent
        self.keywords = keywords
        self.next: Snapshot | None = None
        self.expunged: frozenset[int] = frozenset()
        self.changed: frozenset[int] = frozenset()
        self._uids: list[int] | None = None

    def recent_uids(self) -> set[int]:
        """UIDs not yet claimed as \\Recent by any session."""
        if self.first_recent >= self.uidnext:
            return set()
        return {e.uid for e in self.entries if e.uid >= self.first_recent}

    def share_uids(self, uids: list[int]) -> None:
        """Use ``uids`` (a predecessor's identical UID list, never mutated) as this one's."""
        self._uids = uids

    @property
    def uids(self) -> list[int]:
        if self._uids is None:
            self._uids = [e.uid for e in self.entries]
        return self._uids


def diff_entries(old: Iterable[Entry], new: Iterable[Entry]) -> tuple[set[int], set[int]]:
    """UIDs of ``old`` that are gone from ``new`` (expunged) or whose flags or modseq differ."""
    by_uid = {e.uid: e for e in new}
    expunged: set[int] = set()
    changed: set[int] = set()
    for e in old:
        n = by_uid.get(e.uid)
        if n is None:
            expunged.add(e.uid)
        elif n.modseq != e.modseq or n.flags != e.flags:
            changed.add(e.uid)
    return expunged, changed
