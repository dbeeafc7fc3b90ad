"""Modified UTF-7 mailbox names (RFC 3501 section 5.1.3)."""

from __future__ import annotations

import base64
import re


class MUTF7Error(ValueError):
    """A mailbox name that is not valid modified UTF-7."""


def encode(name: str) -> str:
    """Unicode → modified UTF-7."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


_B64_RE = re.compile(r"[A-Za-z0-9+,]*")


def decode(name: str) -> str:
    """Modified UTF-7 → Unicode; raises MUTF7Error on anything not canonical."""
    out: list[str] = []
    i = 0
    n = len(name)
    prev_b64_end = -1  # index just after the last base64 &-sequence
    while i < n:
        ch = name[i]
        if ord(ch) < 0x20 or ord(ch) > 0x7E:
            raise MUTF7Error("non-ASCII character in a mailbox name")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        start = i
        end = name.find("-", i + 1)
        if end < 0:
            raise MUTF7Error("unterminated &-sequence")
        chunk = name[i + 1:end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if not _B64_RE.fullmatch(chunk):
            raise MUTF7Error("bad base64 in &-sequence")
        b64 = chunk.replace(",", "/")
        b64 += "=" * (-len(b64) % 4)
        try:
            raw = base64.b64decode(b64, validate=True)
            text = raw.decode("utf-16-be")
        except (ValueError, UnicodeDecodeError) as exc:
            raise MUTF7Error("bad UTF-16 in &-sequence") from exc
        if len(raw) % 2 or any(0x20 <= ord(c) <= 0x7E or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0
                               for c in text):
            raise MUTF7Error("non-canonical &-sequence")
        if encode(text) != "&" + chunk + "-":
            raise MUTF7Error("non-canonical &-sequence")
        if prev_b64_end == start:
            raise MUTF7Error("adjacent &-sequences must be merged")
        prev_b64_end = i
        out.append(text)
    return "".join(out)
