"""IMAP flag names: canonical spelling, and their mirror in Maildir file names.

The index stores a message's flags as names (``\\Seen``, ``$Forwarded``, any keyword), with no
limit on keywords. The file name mirrors what Maildir readers understand: the system letters
(D Draft, F Flagged, P $Forwarded, R Answered, S Seen, T Deleted) and the first 26 keywords of
the folder as ``a``-``z`` through Dovecot's ``dovecot-keywords`` file. Keywords beyond 26 live
in the index only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from .keywords import LETTER_TO_SYSTEM, SYSTEM_TO_LETTER, Keywords

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_UPPER = {f.upper(): f for f in (*SYSTEM_FLAGS, "$Forwarded")}
MAX_FLAG_LEN = 128


class FlagError(ValueError):
    """A flag that cannot be stored (``\\Recent``, an unknown system flag, too long)."""


def canonical(flag: str) -> str:
    """The stored spelling of ``flag``: system flags in RFC case, keywords as given."""
    known = _SYSTEM_BY_UPPER.get(flag.upper())
    if known:
        return known
    if flag.startswith("\\"):
        raise FlagError(f"{flag} cannot be stored")
    if not flag or len(flag) > MAX_FLAG_LEN:
        raise FlagError("keyword is empty or too long")
    return flag


@functools.lru_cache(maxsize=1024)
def parse_stored(text: str) -> frozenset[str]:
    """The flags of an index row. Messages share a few flag sets: one object each, so a big
    mailbox does not hold one more object per message for the garbage collector to walk."""
    return frozenset(text.split()) if text else frozenset()


def format_stored(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def match_keywords(flags: Iterable[str], known: Iterable[str]) -> list[str]:
    """``flags`` canonicalised, keywords spelled as the folder first saw them (keywords match
    case-insensitively, as Dovecot does)."""
    by_lower = {k.lower(): k for k in known}
    out = []
    for f in flags:
        if f.startswith("\\") and f.upper() not in _SYSTEM_BY_UPPER:
            continue  # \\Recent and unknown system flags are never stored (RFC 3501 2.3.2)
        c = canonical(f)
        if not c.startswith("\\") and c not in _SYSTEM_BY_UPPER.values():
            c = by_lower.setdefault(c.lower(), c)
        out.append(c)
    return out


def to_letters(flags: Iterable[str], kw: Keywords, *, assign: bool = True) -> str:
    """Maildir info letters mirroring ``flags`` (keywords without a letter are left out)."""
    letters = set()
    for f in flags:
        letter = SYSTEM_TO_LETTER.get(f)
        if letter is None and not f.startswith("\\"):
            letter = kw.letter(f, assign=assign)
        if letter:
            letters.add(letter)
    return "".join(sorted(letters))


def from_letters(letters: str, kw: Keywords) -> set[str]:
    """The flags a Maildir info suffix names (unknown keyword letters are dropped)."""
    out = set()
    for ch in letters:
        if ch in LETTER_TO_SYSTEM:
            out.add(LETTER_TO_SYSTEM[ch])
        elif "a" <= ch <= "z":
            name = kw.name(ch)
            if name:
                out.add(name)
    return out


def mirrored(flags: Iterable[str], kw: Keywords) -> set[str]:
    """The part of ``flags`` a file name can carry."""
    return {f for f in flags if f in SYSTEM_TO_LETTER or kw.letter(f, assign=False)}
