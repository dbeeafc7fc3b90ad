"""Sans-I/O IMAP grammar: a parser over one complete command and response encoders.

A command arrives as one ``bytes`` value in which every literal appears exactly as on the wire
(``{n}\\r\\n`` or ``{n+}\\r\\n`` followed by ``n`` octets); :func:`literal_at_end` tells the I/O
layer when a line announces a literal. :class:`Parser` then reads atoms, strings, lists, numbers,
sequence sets and dates from it and raises :class:`ParseError` on anything malformed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_DEPTH = 32  # parenthesis nesting accepted in a command

_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x00, 0x20)) | {0x7F}
_ATOM_CHARS = bytes(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
_ASTRING_CHARS = _ATOM_CHARS + b"]"
_LITERAL_RE = re.compile(rb"\{(\d{1,19})\+?\}\r?\n")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_TIME_RE = re.compile(
    rb"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTH_NUM = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}


class ParseError(Exception):
    """The command does not follow the grammar (answered with BAD)."""


def literal_at_end(line: bytes | bytearray) -> tuple[int, bool] | None:
    """``(size, non_synchronising)`` when ``line`` ends with a literal announcement.

    Looks only at the last few octets (``{`` 1-19 digits ``+``? ``}`` CR? LF), so the cost does
    not depend on the length of the line."""
    end = len(line)
    if end and line[end - 1] == 0x0A:
        end -= 1
    else:
        return None
    if end and line[end - 1] == 0x0D:
        end -= 1
    if not end or line[end - 1] != 0x7D:  # }
        return None
    end -= 1
    nonsync = bool(end) and line[end - 1] == 0x2B  # +
    if nonsync:
        end -= 1
    start = end
    while start > 0 and end - start < 20 and 0x30 <= line[start - 1] <= 0x39:
        start -= 1
    if not 1 <= end - start <= 19 or start == 0 or line[start - 1] != 0x7B:  # {
        return None
    return int(line[start:end]), nonsync


@dataclass(frozen=True)
class SeqSet:
    """A sequence set: ranges of (low, high) where None stands for ``*``."""

    ranges: tuple[tuple[int | None, int | None], ...]
    saved: bool = False  # ``$``: the saved search result (RFC 5182)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Concrete ascending ranges once ``*`` means ``largest``."""
        out = []
        for lo, hi in self.ranges:
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            if a > b:
                a, b = b, a
            out.append((a, b))
        return out

    def contains(self, n: int, largest: int) -> bool:
        return any(a <= n <= b for a, b in self.resolve(largest))

    def max_explicit(self) -> int:
        return max((x for r in self.ranges for x in r if x is not None), default=0)


class Parser:
    """Cursor over one command's bytes."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.depth = 0
        self.utf8_names = False  # mailbox names are UTF-8 (IMAP4rev2 enabled), not mUTF-7

    # -- basics -------------------------------------------------------------------------
    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at_end(self) -> bool:
        left = len(self.data) - self.pos
        return left <= 2 and self.data[self.pos:] in (b"", b"\r\n", b"\n")

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected characters at the end of the command")

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise ParseError("expected a space")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def maybe(self, token: bytes) -> bool:
        """Consume ``token`` (case-insensitive) if it comes next."""
        end = self.pos + len(token)
        if self.data[self.pos:end].upper() == token.upper():
            self.pos = end
            return True
        return False

    def expect(self, token: bytes) -> None:
        if not self.maybe(token):
            raise ParseError(f"expected {token.decode()!r}")

    def open_paren(self) -> None:
        self.expect(b"(")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("parentheses nested too deeply")

    def close_paren(self) -> None:
        self.expect(b")")
        self.depth -= 1

    def maybe_open(self) -> bool:
        if self.peek() == 0x28:
            self.open_paren()
            return True
        return False

    def _run(self, allowed: bytes) -> bytes:
        start = self.pos
        data = self.data
        n = len(data)
        while self.pos < n and data[self.pos] in allowed:
            self.pos += 1
        return data[start:self.pos]

    # -- tokens -------------------------------------------------------------------------
    def atom(self) -> str:
        tok = self._run(_ATOM_CHARS)
        if not tok:
            raise ParseError("expected an atom")
        return tok.decode("ascii")

    def tag(self) -> str:
        tok = self._run(bytes(c for c in _ASTRING_CHARS if c != 0x2B))
        if not tok:
            raise ParseError("missing tag")
        return tok.decode("ascii")

    def flag(self) -> str:
        if self.peek() == 0x5C:  # backslash
            self.pos += 1
            if self.peek() == 0x2A:
                self.pos += 1
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise ParseError("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise ParseError("bad escape in quoted string")
                c = data[self.pos]
                self.pos += 1
            elif c in (0x0D, 0x0A):
                raise ParseError("CR or LF in quoted string")
            out.append(c)

    def literal(self) -> bytes:
        return bytes(self.literal_view())

    def literal_view(self) -> memoryview:
        """The next literal without copying it (APPEND's message can be tens of MiB)."""
        m = _LITERAL_RE.match(self.data, self.pos)
        if not m:
            raise ParseError("bad literal")
        size = int(m.group(1))
        start = m.end()
        if start + size > len(self.data):
            raise ParseError("truncated literal")
        self.pos = start + size
        return memoryview(self.data)[start:self.pos]

    def literal8_view(self) -> tuple[memoryview, bool]:
        """A ``literal`` or a ``literal8`` (``~{n}``, RFC 3516): (its data, whether literal8)."""
        binary = self.maybe(b"~")
        if binary and self.peek() != 0x7B:
            raise ParseError("bad literal8")
        return self.literal_view(), binary

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise ParseError("expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        tok = self._run(_ASTRING_CHARS)
        if not tok:
            raise ParseError("expected an atom or a string")
        return tok

    def astring_str(self) -> str:
        try:
            return self.astring().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError("string is not UTF-8") from exc

    def list_mailbox(self) -> str:
        """``list-mailbox``: like astring but also ``%`` and ``*``."""
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string().decode("utf-8", "replace")
        tok = self._run(_ASTRING_CHARS + b"%*")
        if not tok:
            raise ParseError("expected a mailbox pattern")
        return tok.decode("ascii")

    def number(self) -> int:
        tok = self._run(b"0123456789")
        if not tok or len(tok) > 10:
            raise ParseError("expected a number")
        value = int(tok)
        if value > 0xFFFFFFFF:
            raise ParseError("number out of range")
        return value

    def number64(self) -> int:
        tok = self._run(b"0123456789")
        if not tok or len(tok) > 20:
            raise ParseError("expected a number")
        return int(tok)

    def nz_number(self) -> int:
        value = self.number()
        if value == 0:
            raise ParseError("zero is not allowed here")
        return value

    def seq_number(self) -> int | None:
        if self.peek() == 0x2A:
            self.pos += 1
            return None
        return self.nz_number()

    def seq_set(self) -> SeqSet:
        if self.peek() == 0x24:  # "$"
            self.pos += 1
            return SeqSet((), saved=True)
        ranges = []
        while True:
            lo = self.seq_number()
            hi = lo
            if self.peek() == 0x3A:
                self.pos += 1
                hi = self.seq_number()
            ranges.append((lo, hi))
            if self.peek() != 0x2C:
                break
            self.pos += 1
        return SeqSet(tuple(ranges))

    def flag_list(self) -> list[str]:
        self.open_paren()
        flags = []
        if self.peek() != 0x29:
            flags.append(self.flag())
            while self.maybe_sp():
                flags.append(self.flag())
        self.close_paren()
        return flags

    def date(self) -> dt.date:
        """``date``: ``d-Mon-yyyy``, optionally quoted."""
        quoted = self.maybe(b'"')
        tok = self._run(b"0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        if quoted:
            self.expect(b'"')
        m = re.fullmatch(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})", tok)
        if not m or m.group(2).decode().lower() not in _MONTH_NUM:
            raise ParseError("bad date (expected d-Mon-yyyy)")
        try:
            return dt.date(int(m.group(3)), _MONTH_NUM[m.group(2).decode().lower()],
                           int(m.group(1)))
        except ValueError as exc:
            raise ParseError("bad date") from exc

    def date_time(self) -> dt.datetime:
        """``date-time``: ``"dd-Mon-yyyy hh:mm:ss +zzzz"``."""
        raw = self.quoted()
        m = _DATE_TIME_RE.fullmatch(raw)
        if not m or m.group(2).decode().lower() not in _MONTH_NUM:
            raise ParseError("bad date-time")
        sign = 1 if m.group(7) == b"+" else -1
        if int(m.group(9)) > 59:
            raise ParseError("bad date-time (zone minutes)")
        try:  # a zone of 24 hours or more is refused too
            tz = dt.timezone(sign * dt.timedelta(hours=int(m.group(8)), minutes=int(m.group(9))))
            return dt.datetime(int(m.group(3)), _MONTH_NUM[m.group(2).decode().lower()],
                               int(m.group(1)), int(m.group(4)), int(m.group(5)),
                               int(m.group(6)), tzinfo=tz)
        except ValueError as exc:
            raise ParseError("bad date-time") from exc


# -- encoding ------------------------------------------------------------------------------
def compact_set(numbers: Iterable[int]) -> str:
    """Ascending numbers as a sequence set with ranges: ``1:3,5,7:9``."""
    out: list[str] = []
    start = prev = -2
    for n in numbers:
        if n == prev + 1:
            prev = n
            continue
        if start >= 0:
            out.append(f"{start}" if start == prev else f"{start}:{prev}")
        start = prev = n
    if start >= 0:
        out.append(f"{start}" if start == prev else f"{start}:{prev}")
    return ",".join(out)


_SAFE_QUOTED_RE = re.compile(rb'[\x20\x21\x23-\x5b\x5d-\x7e]*')
_CTL_RE = re.compile(rb"[\x00-\x1f\x7f]")  # quoted strings are 7-bit text without controls


def quote(value: bytes | str) -> bytes:
    """A string as a quoted string when possible, otherwise as a literal."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if len(value) < 1024 and _SAFE_QUOTED_RE.fullmatch(value):
        return b'"' + value + b'"'
    if len(value) < 1024 and value.isascii() and not _CTL_RE.search(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(value)


def literal(value: bytes) -> bytes:
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | str | None) -> bytes:
    return b"NIL" if value is None else quote(value)


def astring(value: str) -> bytes:
    raw = value.encode("utf-8")
    if raw and all(c in _ASTRING_CHARS for c in raw):
        return raw
    return quote(raw)


def zoned(ts: float, tzoff: int | None = None) -> dt.datetime:
    """A POSIX time in the zone ``tzoff`` minutes east of UTC (None: the server's local zone)."""
    if tzoff is None or not -1440 < tzoff < 1440:
        return dt.datetime.fromtimestamp(ts).astimezone()
    return dt.datetime.fromtimestamp(ts, dt.timezone(dt.timedelta(minutes=tzoff)))


def imap_datetime(ts: float, tzoff: int | None = None) -> str:
    """INTERNALDATE text for a POSIX time, in the zone ``tzoff`` minutes east of UTC (the
    APPEND date-time's) or, when None, in the server's local zone."""
    d = zoned(ts, tzoff)
    off = d.utcoffset() or dt.timedelta()
    sign = "+" if off >= dt.timedelta() else "-"
    mins = abs(int(off.total_seconds())) // 60
    return (f"{d.day:2d}-{MONTHS[d.month - 1]}-{d.year:04d} {d:%H:%M:%S} "
            f"{sign}{mins // 60:02d}{mins % 60:02d}")
