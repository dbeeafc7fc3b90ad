"""Checks of client-supplied names and text that end up in headers, logs and replies.

Pure functions, shared by every face (SMTP and LMTP greetings, the Received header, logs): a
name from the client is refused when it holds anything a header or log line could be split at.
"""

from __future__ import annotations

MAX_HELO = 255  # RFC 5321 §4.5.3.1.2: a domain is at most 255 octets


def helo_error(name: str) -> str | None:
    """Why ``name`` is unusable as a HELO/EHLO/LHLO name, or None when it is acceptable.

    Refused: empty names, control characters (``\\x00``-``\\x1f``, ``\\x7f``, a bare CR
    included), other non-printable characters (line separators, undecodable bytes) and
    whitespace; RFC 5321 §4.1.1.1 allows one domain or address literal, nothing more.
    """
    if not name:
        return "empty name"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_HELO:
        return f"name longer than {MAX_HELO} octets"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "control characters in name"
    if not name.isprintable():
        return "non-printable characters in name"
    if any(c.isspace() for c in name):
        return "whitespace in name"
    return None


def header_text(text: str) -> str:
    """``text`` with every non-printable character (CR, LF, NUL, escapes …) replaced by ``?``:
    safe to place inside one header field or log line whatever the client sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)
