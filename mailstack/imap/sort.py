"""SORT criteria (RFC 5256 §3, SORT=DISPLAY of RFC 5957) parsed and applied.

Keys come from the store's per-message summaries (never the message files), so sorting a
10,000-message folder is an in-memory sort of precomputed keys. Strings compare with
i;ascii-casemap (ASCII letters fold, everything else by code point); ties keep the mailbox
order, whatever REVERSE says (RFC 5256 §3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..store.summary import EMPTY, Summary, subject_info
from .mailbox import Msg, Selected
from .wire import ParseError, Parser

KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
MAX_CRITERIA = 32
_ASCII_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def casemap(s: str) -> str:
    """i;ascii-casemap's canonical form."""
    return s.translate(_ASCII_UPPER)


def parse_criteria(p: Parser) -> list[tuple[str, bool]]:
    """``(REVERSE? key ...)`` → [(key, reverse)]; BAD (ParseError) when empty or unknown."""
    p.open_paren()
    out: list[tuple[str, bool]] = []
    while True:
        word = p.atom().upper()
        reverse = word == "REVERSE"
        if reverse:
            p.sp()
            word = p.atom().upper()
        if word not in KEYS:
            raise ParseError(f"unknown sort criterion {word[:40]}")
        out.append((word, reverse))
        if len(out) > MAX_CRITERIA:
            raise ParseError("too many sort criteria")
        if p.maybe_sp():
            continue
        p.close_paren()
        return out


def _local(addr: str) -> str:
    return addr.rpartition("@")[0] if "@" in addr else addr


class Keys(NamedTuple):
    """A message's sort and thread keys, derived once from its summary (by email id: the same
    bytes always give the same keys, so they are kept for the process's life).

    The fields of :data:`KeyTuple`, the form kept: an exact tuple of strings, numbers and a
    tuple of strings, which the garbage collector stops tracking (10,000 named tuples in the
    cache were 10,000 more objects for every full collection to walk, in one stretch of the
    event loop). Read a field with its index (:data:`SUBJECT`, :data:`SENT` ...)."""

    subject: str  # base subject, case-mapped
    reply: bool  # the subject had a reply or forward marker
    sent: float | None
    from_: str  # addr-mailbox (local part) of the first From, case-mapped
    to: str
    cc: str
    display_from: str  # RFC 5957: display name, else the address, case-mapped
    display_to: str
    message_id: str
    references: tuple[str, ...]


KeyTuple = tuple[str, bool, "float | None", str, str, str, str, str, str, tuple[str, ...]]
(SUBJECT, REPLY, SENT, FROM, TO, CC, DISPLAY_FROM, DISPLAY_TO, MESSAGE_ID,
 REFERENCES) = range(len(Keys._fields))

_KEYS: dict[str, KeyTuple] = {}
MAX_KEYS = 100_000  # email ids whose keys a process keeps (a few hundred bytes each)


def _derive(s: Summary) -> KeyTuple:
    base, reply = subject_info(s.subject)
    named = Keys(casemap(base), reply, s.sent, casemap(_local(s.from_addr)),
                 casemap(_local(s.to_addr)), casemap(_local(s.cc_addr)),
                 casemap(s.from_name or s.from_addr), casemap(s.to_name or s.to_addr),
                 s.message_id, tuple(s.references))
    return tuple(named)  # type: ignore[return-value]


_EMPTY_KEYS = _derive(EMPTY)


def keys(sel: Selected, msgs: Sequence[Msg]) -> dict[str, KeyTuple]:
    """Email id → the keys of ``msgs`` (from the store's summaries the first time)."""
    missing = [m for m in msgs if m.emailid not in _KEYS]
    if missing:
        sums = sel.store.summaries(sel.name, missing, keep=False)
        if len(_KEYS) + len(missing) > MAX_KEYS:
            _KEYS.clear()
        for m in missing:
            s = sums.get(m.emailid)
            _KEYS[m.emailid] = _derive(s) if s is not None else _EMPTY_KEYS
    return _KEYS


def sent_date(k: KeyTuple, m: Msg) -> float:
    """The sent date (RFC 5256): the Date: header, else the internal date."""
    sent = k[SENT]
    return sent if sent is not None else m.internaldate


def key_function(key: str, ks: dict[str, KeyTuple]) -> Callable[[tuple[int, Msg]], object]:
    if key == "ARRIVAL":
        return lambda item: item[1].internaldate
    if key == "SIZE":
        return lambda item: item[1].size
    if key == "DATE":
        return lambda item: sent_date(ks[item[1].emailid], item[1])
    attr = {"SUBJECT": "subject", "FROM": "from_", "TO": "to", "CC": "cc",
            "DISPLAYFROM": "display_from", "DISPLAYTO": "display_to"}[key]
    get = Keys._fields.index(attr)
    return lambda item: ks[item[1].emailid][get]


def order(sel: Selected, found: list[tuple[int, Msg]],
          criteria: list[tuple[str, bool]]) -> list[tuple[int, Msg]]:
    """``found`` (in sequence order) sorted by ``criteria``."""
    needs_keys = any(k not in ("ARRIVAL", "SIZE") for k, _ in criteria)
    ks = keys(sel, [m for _, m in found]) if needs_keys else {}
    out = list(found)
    for key, reverse in reversed(criteria):  # stable sorts, least significant first
        out.sort(key=key_function(key, ks), reverse=reverse)
    return out  # (Python's sort keeps ties in order with reverse=True too)
