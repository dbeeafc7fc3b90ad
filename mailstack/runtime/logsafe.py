"""Client-supplied text in log lines: escaped and truncated, never raw.

Every daemon logs one event per line; a client string holding CR, LF or other control
characters must not be able to end that line and forge another one (an IMAP ``ID`` value sent as
a literal, a login name with a newline). :func:`safe` makes any such value one printable line.
"""

from __future__ import annotations

MAX_LOGGED = 120  # characters of a client string kept in a log line

_ESCAPES = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code in _ESCAPES:
        return _ESCAPES[code]
    if code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029):
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def safe(value: str | bytes | None, limit: int = MAX_LOGGED) -> str:
    """``value`` as one printable line: control characters and backslashes escaped, bytes
    decoded as UTF-8 (invalid octets escaped), cut to ``limit`` characters with ``…``."""
    if value is None:
        return "-"
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[:limit * 4]).decode("utf-8", "backslashreplace")
    cut = len(value) > limit
    text = "".join(_escape_char(ch) for ch in value[:limit])
    return text + "…" if cut else text
