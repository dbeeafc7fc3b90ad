"""Sans-I/O reading of SMTP/LMTP server replies (RFC 5321 §4.2): bytes in, whole replies out.

A reply is one or more lines ``<code>-text`` ending with ``<code> text`` (or a bare
``<code>``). :class:`ReplyReader` takes the bytes as they arrive, in any cuts, and hands back
each complete reply as its code and the text of its lines. Its memory is bounded whatever the
server sends: a line longer than ``max_line`` or a reply of more than ``max_lines`` lines, a
line that is not a reply line, or lines whose codes differ, is a :class:`ReplyError`.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

#: RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; the mda's echo an address or two
MAX_LINE = 4096
MAX_LINES = 100
_SEPARATORS = (b" ", b"-", b"")


class ReplyError(ValueError):
    """The server's bytes are not a well-formed reply (the connection cannot go on)."""


class RawReply(NamedTuple):
    """A complete reply: its code and the text of each line (without code and separator)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


class ReplyReader:
    """Feed bytes; take complete replies in order (see the module docstring)."""

    def __init__(self, max_line: int = MAX_LINE, max_lines: int = MAX_LINES) -> None:
        self.max_line = max_line
        self.max_lines = max_lines
        self.replies: deque[RawReply] = deque()
        self._buf = b""
        self._code = 0  # of the reply being read (0: none begun)
        self._lines: list[str] = []

    def feed(self, data: bytes) -> None:
        """Take ``data``; every reply it completes goes to :attr:`replies`. Raises ReplyError."""
        buf = self._buf + data if self._buf else data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end - start > self.max_line:
                raise ReplyError(f"reply line longer than {self.max_line} octets")
            self._line(buf[start:end])
            start = end + 1
        rest = buf[start:]
        if len(rest) > self.max_line:
            raise ReplyError(f"reply line longer than {self.max_line} octets")
        self._buf = rest

    def _line(self, raw: bytes) -> None:
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        code, sep = raw[:3], raw[3:4]
        if not (code.isdigit() and code[:1] in b"12345" and sep in _SEPARATORS):
            raise ReplyError(f"malformed reply line: {raw[:80]!r}")
        number = int(code)
        lines = self._lines
        if lines:
            if number != self._code:
                raise ReplyError(f"reply lines with different codes: {self._code} and {number}")
            if len(lines) >= self.max_lines:
                raise ReplyError(f"reply of more than {self.max_lines} lines")
        text = raw[4:].decode("utf-8", "replace")
        if sep == b"-":
            self._code = number
            lines.append(text)
        elif lines:
            lines.append(text)
            self.replies.append(RawReply(number, tuple(lines)))
            self._lines = []
        else:  # the common case: a one-line reply
            self.replies.append(RawReply(number, (text,)))
