"""QRESYNC (RFC 7162 section 3.2): the SELECT/EXAMINE parameter, the UID FETCH modifiers and
the ``VANISHED`` responses built from the store's log of expunged UIDs.

Sans-I/O: parsing over a :class:`~.wire.Parser`, responses as bytes; the session sends them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .mailbox import Selected
from .wire import ParseError, Parser, SeqSet, compact_set

MAX_MODSEQ = (1 << 63) - 1  # mod-sequence-value: a positive unsigned 63-bit integer


@dataclass(frozen=True)
class Resync:
    """``QRESYNC (uidvalidity modseq [known-uids [seq-match-data]])`` as the client sent it."""

    uidvalidity: int
    modseq: int
    known: tuple[tuple[int, int], ...] | None = None  # ascending, merged UID ranges


@dataclass(frozen=True)
class SelectParams:
    condstore: bool = False
    resync: Resync | None = None


def _modseq(p: Parser) -> int:
    value = p.number64()
    if value > MAX_MODSEQ:
        raise ParseError("mod-sequence out of range")
    return value


def _explicit(s: SeqSet, what: str) -> list[tuple[int, int]]:
    if any(x is None for r in s.ranges for x in r):
        raise ParseError(f"'*' is not allowed in {what}")
    return [(min(a, b), max(a, b)) for a, b in s.ranges]  # type: ignore[type-var]


def _ascending(ranges: list[tuple[int, int]], what: str) -> int:
    """How many numbers ``ranges`` hold; BAD unless they are given in ascending order
    (RFC 7162 section 7: known-sequence-set and known-uid-set)."""
    prev = 0
    count = 0
    for a, b in ranges:
        if a <= prev:
            raise ParseError(f"{what} must be in ascending order")
        count += b - a + 1
        prev = b
    return count


def merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Ranges sorted and merged where they touch or overlap."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return tuple(out)


def contains(ranges: Sequence[tuple[int, int]], n: int) -> bool:
    """Is ``n`` in merged, ascending ``ranges`` (binary search)."""
    i = bisect.bisect_right(ranges, (n, MAX_MODSEQ)) - 1
    return i >= 0 and ranges[i][0] <= n <= ranges[i][1]


def parse_select_params(p: Parser) -> SelectParams:
    """``SP "(" select-param *(SP select-param) ")"`` after the mailbox name (if any)."""
    if not p.maybe_sp():
        return SelectParams()
    condstore = False
    resync: Resync | None = None
    p.open_paren()
    while True:
        name = p.atom().upper()
        if name == "CONDSTORE":
            condstore = True
        elif name == "QRESYNC" and resync is None:
            p.sp()
            resync = _parse_resync(p)
        else:
            raise ParseError(f"unknown or repeated SELECT parameter {name[:40]}")
        if not p.maybe_sp():
            break
    p.close_paren()
    return SelectParams(condstore, resync)


def _parse_resync(p: Parser) -> Resync:
    p.open_paren()
    validity = p.nz_number()
    p.sp()
    modseq = _modseq(p)
    known = None
    if p.maybe_sp():
        known = merge(_explicit(p.seq_set(), "known UIDs"))
        if p.maybe_sp():
            p.open_paren()  # seq-match-data: checked, not needed (every expunge is logged)
            seqs = _ascending(_explicit(p.seq_set(), "known sequence numbers"),
                              "known sequence numbers")
            p.sp()
            uids = _ascending(_explicit(p.seq_set(), "known UIDs"), "known UIDs")
            p.close_paren()
            if seqs != uids:
                raise ParseError("seq-match-data pairs different numbers of messages and UIDs")
    p.close_paren()
    return Resync(validity, modseq, known)


def parse_fetch_modifiers(p: Parser) -> tuple[int | None, bool]:
    """``(CHANGEDSINCE n [VANISHED])`` (either order) after FETCH's attributes:
    (changed-since modseq or None, VANISHED asked)."""
    changed_since: int | None = None
    vanished = False
    if not p.maybe_sp():
        return None, False
    p.open_paren()
    while True:
        name = p.atom().upper()
        if name == "CHANGEDSINCE" and changed_since is None:
            p.sp()
            changed_since = _modseq(p)
        elif name == "VANISHED" and not vanished:
            vanished = True
        else:
            raise ParseError(f"unknown or repeated FETCH modifier {name[:40]}")
        if not p.maybe_sp():
            break
    p.close_paren()
    if vanished and changed_since is None:
        raise ParseError("VANISHED needs CHANGEDSINCE")
    return changed_since, vanished


def vanished_line(uids: Sequence[int], *, earlier: bool) -> bytes:
    """``* VANISHED [(EARLIER)] uid-set`` (empty when there are none)."""
    if not uids:
        return b""
    return (b"* VANISHED " + (b"(EARLIER) " if earlier else b"")
            + compact_set(uids).encode() + b"\r\n")


def select_responses(sel: Selected, resync: Resync, gone: Sequence[int]) -> list[bytes]:
    """What a SELECT/EXAMINE with ``resync`` (UIDVALIDITY matching) adds: ``VANISHED
    (EARLIER)`` for ``gone`` (UIDs expunged since the client's modseq) within its known UIDs,
    then a FETCH for every message changed since then."""
    known = resync.known
    if known is not None:
        gone = [u for u in gone if contains(known, u)]
    out = []
    line = vanished_line(gone, earlier=True)
    if line:
        out.append(line)
    for seq, m in enumerate(sel.msgs, 1):
        if m.modseq > resync.modseq:
            out.append(f"* {seq} FETCH (UID {m.uid} FLAGS ({' '.join(sel.flags(m))}) "
                       f"MODSEQ ({m.modseq}))\r\n".encode())
    return out


def within(uids: Iterable[int], ranges: list[tuple[int, int]]) -> list[int]:
    """The UIDs of ``uids`` that a UID FETCH's resolved set names."""
    merged = merge(ranges)
    return [u for u in uids if contains(merged, u)]
