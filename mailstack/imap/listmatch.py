"""LIST/LSUB mailbox patterns (RFC 3501 6.3.8) matched in linear time, without regexes.

``*`` matches any characters, ``%`` any characters but the hierarchy delimiter ``.``; a name that
starts with ``INBOX`` matches it in any case. A backtracking regex built from the pattern took
minutes of event-loop time for 75 ``*`` against one name. Here the pattern is a sequence of
tokens, runs of wildcards collapse to one token, and all positions the pattern can be in after
each character of the name are tracked at once as the bits of an int (a Shift-And automaton), so
a match costs O(len(name)) big-int steps of O(len(pattern) / 64) each, whatever the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import ParseError

DELIM = "."
MAX_PATTERN = 1024  # characters of reference + pattern (a mailbox name is at most 254)


class PatternTooLong(ParseError):
    """A pattern longer than :data:`MAX_PATTERN` (answered with BAD)."""


@dataclass(frozen=True)
class Matcher:
    """A compiled pattern: ``match(name)`` tells whether the whole name matches."""

    chars: dict[str, int]  # character → bits of the literal tokens that accept it
    star: int  # bits of ``*`` tokens
    percent: int  # bits of ``%`` tokens
    start: int  # the start state, closed over leading wildcards
    accept: int  # the bit reached after the last token

    def match(self, name: str) -> bool:
        state = self.start
        chars, star, percent = self.chars, self.star, self.percent
        wild = star | percent
        for ch in name:
            stay = star if ch == DELIM else wild
            state = ((state & chars.get(ch, 0)) << 1) | (state & stay)
            state |= (state & wild) << 1  # a wildcard may match nothing (runs are collapsed)
            if not state:
                return False
        return bool(state & self.accept)


def _tokens(full: str) -> list[str]:
    """Characters of the pattern with each run of wildcards collapsed: a run holding ``*`` is
    ``*`` (it can cross delimiters), a run of ``%`` only is ``%``."""
    out: list[str] = []
    for ch in full:
        if ch in "*%" and out and out[-1] in "*%":
            if ch == "*":
                out[-1] = "*"
            continue
        out.append(ch)
    return out


def compile_pattern(reference: str, pattern: str) -> Matcher:
    """The matcher for ``reference + pattern``; raises PatternTooLong."""
    full = reference + pattern
    if len(full) > MAX_PATTERN:
        raise PatternTooLong(f"mailbox pattern longer than {MAX_PATTERN} characters")
    tokens = _tokens(full)
    inbox = full[:5].upper() == "INBOX"  # INBOX is case-insensitive
    chars: dict[str, int] = {}
    star = percent = 0
    for i, tok in enumerate(tokens):
        bit = 1 << i
        if tok == "*":
            star |= bit
        elif tok == "%":
            percent |= bit
        elif inbox and i < 5:
            for variant in {tok.lower(), tok.upper()}:
                chars[variant] = chars.get(variant, 0) | bit
        else:
            chars[tok] = chars.get(tok, 0) | bit
    start = 1 | ((1 & (star | percent)) << 1)
    return Matcher(chars, star, percent, start, 1 << len(tokens))
