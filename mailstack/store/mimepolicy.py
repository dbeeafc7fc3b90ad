"""The ``email`` package policy every header parse of the stack uses.

compat32 keeps raw header values (bytes carried as latin-1) but hands them out still folded:
a parameter folded inside its quotes (``boundary="foo<CRLF> bar"``) then keeps the line break
and a multipart's boundary is never found. RFC 5322 §2.2.3: unfolding removes each CRLF that
is followed by white space, before anything else looks at the value.
"""

from __future__ import annotations

from email.policy import Compat32
from typing import Any


def unfold(value: str) -> str:
    """``value`` with every line break before white space removed (linear, no regex)."""
    if "\n" not in value:
        return value
    out = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\r" and i + 2 < n and value[i + 1] == "\n" and value[i + 2] in " \t":
            i += 2
            continue
        if c == "\n" and i + 1 < n and value[i + 1] in " \t":
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


class _Unfolding(Compat32):
    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, unfold(value))


UNFOLDING = _Unfolding()
