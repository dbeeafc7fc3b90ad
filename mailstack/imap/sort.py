"""SORT criteria (RFC 5256 §3, SORT=DISPLAY of RFC 5957) parsed and applied.

Keys come from the store's per-message summaries (never the message files), so sorting a
10,000-message folder is an in-memory sort of precomputed keys. Strings compare with
i;ascii-casemap (ASCII letters fold, everything else by code point); ties keep the mailbox
order, whatever REVERSE says (RFC 5256 §3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..store.summary import EMPTY, Summary
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


def sent_date(s: Summary, m: Msg) -> float:
    """The sent date (RFC 5256): the Date: header, else the internal date."""
    return s.sent if s.sent is not None else m.internaldate


def key_function(key: str, sums: dict[str, Summary]) -> Callable[[tuple[int, Msg]], object]:
    def summ(m: Msg) -> Summary:
        return sums.get(m.emailid, EMPTY)
    if key == "ARRIVAL":
        return lambda item: item[1].internaldate
    if key == "SIZE":
        return lambda item: item[1].size
    if key == "DATE":
        return lambda item: sent_date(summ(item[1]), item[1])
    if key == "SUBJECT":
        return lambda item: casemap(summ(item[1]).base_subject)
    if key in ("FROM", "TO", "CC"):
        attr = f"{key.lower()}_addr"
        return lambda item: casemap(_local(getattr(summ(item[1]), attr)))
    attr = "from" if key == "DISPLAYFROM" else "to"

    def display(item: tuple[int, Msg]) -> str:  # RFC 5957: display name, else the address
        s = summ(item[1])
        return casemap(getattr(s, f"{attr}_name") or getattr(s, f"{attr}_addr"))
    return display


def summaries(sel: Selected, msgs: Sequence[Msg]) -> dict[str, Summary]:
    return sel.store.summaries(sel.name, msgs)


def order(sel: Selected, found: list[tuple[int, Msg]],
          criteria: list[tuple[str, bool]]) -> list[tuple[int, Msg]]:
    """``found`` (in sequence order) sorted by ``criteria``."""
    needs_summary = any(k not in ("ARRIVAL", "SIZE") for k, _ in criteria)
    sums = summaries(sel, [m for _, m in found]) if needs_summary else {}
    out = list(found)
    for key, reverse in reversed(criteria):  # stable sorts, least significant first
        out.sort(key=key_function(key, sums), reverse=reverse)
    return out  # (Python's sort keeps ties in order with reverse=True too)
