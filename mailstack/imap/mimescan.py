"""A streaming MIME structure scan: where each part of a message is, without holding it.

:func:`scan` reads a message's CRLF form piece by piece and records, for every entity, the
offsets of its header, body and end, its body's line count and its header (capped at
``HEADER_KEEP`` octets). The parts it finds, their offsets and line counts are exactly those
:class:`mime.Part` finds on the whole message (the same delimiter rule: a line ``--boundary``,
optionally ``--``, then blanks, the CR LF before it belonging to the delimiter; outer
boundaries win over inner ones; ``MAX_PARTS_DEPTH`` levels), so BODYSTRUCTURE and sections of a
big message are computed from the scan and sent from file ranges. Memory is bounded: at most
``MAX_SPANS`` entities, ``HEADER_KEEP`` octets of each header, and one read piece plus one
line head in flight; time is linear (each byte is looked at a constant number of times).
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable

from . import mime

HEADER_KEEP = 64 * 1024  # octets of each part's header kept for parsing (beyond: truncated)
HEADERS_KEEP = 1 << 20  # octets of all the parts' headers kept (beyond: later ones are cut)
LINE_HEAD = 1024  # a delimiter line is at most this long (RFC 2046: boundaries ≤ 70)
MAX_SPANS = 2000  # entities per message; further delimiters are content


class Span(mime.Part):
    """One MIME entity of a scanned message: offsets into the message's CRLF form.

    Quacks like :class:`mime.Part` for :func:`mime.bodystructure`, :func:`mime.envelope` and
    :func:`mime.find_part`; its ``raw`` and ``body`` are not held (see the offsets)."""

    def __init__(self, start: int, default_type: str, depth: int) -> None:
        # mime.Part.__init__ is not called: it parses bytes, and a Span holds none
        self.start = start  # first octet of the header
        self.body_start = -1  # first octet of the body (-1: header not finished)
        self.end = -1  # one past the last octet
        self.default_type = default_type
        self.depth = depth
        self.header = b""
        self.head_parts: list[bytes] = []
        self.head_len = 0
        self.nl_body = 0  # line ends before body_start
        self.lines = 0
        self.children: list[mime.Part] = []
        self.message: mime.Part | None = None
        self.type, self.subtype = default_type.split("/")
        self.msg = mime.parse_headers(b"")
        self.boundary: bytes | None = None
        self.after_delim = -1  # where this multipart's last delimiter line ended

    @property  # type: ignore[override]
    def raw(self) -> bytes:
        raise TypeError("a scanned part holds no bytes: read its offsets from the file")

    @property  # type: ignore[override]
    def body(self) -> bytes:
        raise TypeError("a scanned part holds no bytes: read its offsets from the file")

    @property
    def body_size(self) -> int:
        return self.end - self.body_start

    @property
    def body_lines(self) -> int:
        return self.lines

    def keep(self, data: bytes, budget: int) -> int:
        """Header octets as they pass (beyond HEADER_KEEP or ``budget``: counted, not kept);
        returns how many were kept."""
        room = min(HEADER_KEEP - self.head_len, budget)
        kept = 0
        if room > 0:
            self.head_parts.append(data[:room])
            kept = min(room, len(data))
        self.head_len += len(data)
        return kept

    def parse_header(self, body_start: int, nl_body: int) -> None:
        """The header ended at ``body_start``: read the content type."""
        self.body_start, self.nl_body = body_start, nl_body
        self.header = b"".join(self.head_parts)[:body_start - self.start]
        self.head_parts = []
        self.msg = mime.parse_headers(self.header)
        ctype = self.msg.get_content_type() if self.msg.get("content-type") else self.default_type
        if "/" not in ctype:
            ctype = "text/plain"
        self.type, _, self.subtype = ctype.partition("/")
        if self.depth >= mime.MAX_PARTS_DEPTH:
            return
        if self.type == "multipart":
            boundary = self.msg.get_param("boundary")
            if isinstance(boundary, tuple):
                boundary = email.utils.collapse_rfc2231_value(boundary)
            if boundary:
                self.boundary = str(boundary).encode("latin-1", "replace")

    def finish(self, end: int, nl_end: int) -> None:
        """The entity ends at ``end`` (``nl_end`` line ends before it)."""
        self.end = end
        if self.body_start < 0 or self.body_start > end:  # no blank line: all header
            if self.body_start < 0:
                self.header = b"".join(self.head_parts)[:end - self.start]
            else:
                self.header = self.header[:end - self.start]
            self.head_parts = []
            if self.body_start < 0:
                self.msg = mime.parse_headers(self.header)
                ctype = (self.msg.get_content_type() if self.msg.get("content-type")
                         else self.default_type)
                self.type, _, self.subtype = (ctype if "/" in ctype else "text/plain"
                                              ).partition("/")
            self.body_start = end
            self.lines = 0
            self.children, self.message = [], None
        else:
            self.lines = nl_end - self.nl_body
        if self.type == "multipart" and not self.children and self.depth < mime.MAX_PARTS_DEPTH:
            self.type, self.subtype = "text", "plain"  # as mime.Part: no parts, text
        if self.type == "message" and self.subtype == "rfc822" and self.message is None \
                and self.depth < mime.MAX_PARTS_DEPTH:
            # an encapsulated message whose header never started (an empty body)
            inner = Span(self.body_start, "text/plain", self.depth + 1)
            inner.finish(end, nl_end)
            self.message = inner


class _Scanner:
    """The scan's state: open entities (outermost first) and the live boundaries."""

    def __init__(self) -> None:
        self.root = Span(0, "text/plain", 0)
        self.open: list[Span] = [self.root]
        self.spans = 1
        self.buf = b""
        self.base = 0  # absolute offset of buf[0]
        self.pos = 0  # scanned up to buf[pos]
        self.nl = 0  # line ends in the message before absolute offset nl_at
        self.nl_at = 0
        self.at_line_start = True  # buf[pos] starts a line
        self.budget = HEADERS_KEEP  # header octets that may still be kept

    # -- line-end accounting --------------------------------------------------------------
    def lines_before(self, offset: int) -> int:
        """Line ends before absolute ``offset`` (offsets asked for never go back)."""
        if offset > self.nl_at:
            self.nl += self.buf.count(b"\n", self.nl_at - self.base, offset - self.base)
            self.nl_at = offset
        return self.nl

    # -- events -----------------------------------------------------------------------------
    def _header_mode(self) -> bool:
        return self.open[-1].body_start < 0

    def _bounds(self) -> list[Span]:
        return [s for s in self.open if s.boundary is not None]

    def _pass(self, upto: int) -> None:
        """Move the scan to buf[upto], keeping header octets on the way."""
        if upto > self.pos:
            top = self.open[-1]
            if top.body_start < 0:
                self.budget -= top.keep(self.buf[self.pos:upto], self.budget)
            self.at_line_start = self.buf[upto - 1:upto] == b"\n"
            self.pos = upto

    def _delimiter(self, line: bytes, at: int) -> tuple[Span, bool] | None:
        """The multipart whose delimiter ``line`` (at offset ``at``) is, outermost first, and
        whether it is the close delimiter. A delimiter needs the CR LF before it, so a line
        right after a delimiter of the same multipart is content (or the start of the body)."""
        if self.spans >= MAX_SPANS or not line.startswith(b"--"):
            return None
        text = line[2:]
        if text.endswith(b"\r\n"):
            text = text[:-2]
        text = text.rstrip(b" \t")
        for span in self._bounds():
            b = span.boundary
            assert b is not None
            if at == span.after_delim:
                continue
            if text == b:
                return span, False
            if text == b + b"--":
                return span, True
        return None

    def _on_delimiter(self, start: int, end: int, owner: Span, close: bool) -> None:
        """A delimiter line of ``owner`` from ``start`` to ``end`` (absolute)."""
        level = self.open.index(owner)
        inner = self.open[level + 1:]
        if inner:
            stop = start - 2  # the CR LF before the delimiter is the delimiter's
            nl_stop = self.lines_before(start) - 1
            for span in reversed(inner):
                span.finish(stop, nl_stop)
            del self.open[level + 1:]
        owner.after_delim = end
        if close:
            owner.boundary = None  # later lines like it are content (the epilogue)
            return
        child = Span(end, "message/rfc822" if owner.subtype == "digest" else "text/plain",
                     owner.depth + 1)
        owner.children.append(child)
        self.open.append(child)
        self.spans += 1

    def _on_header_end(self, body_start: int) -> None:
        span = self.open[-1]
        span.parse_header(body_start, self.lines_before(body_start))
        if (span.type == "message" and span.subtype == "rfc822"
                and span.depth < mime.MAX_PARTS_DEPTH and self.spans < MAX_SPANS):
            inner = Span(body_start, "text/plain", span.depth + 1)
            span.message = inner
            self.open.append(inner)
            self.spans += 1

    # -- the loop -------------------------------------------------------------------------
    def feed(self, chunk: bytes, final: bool = False) -> None:
        if self.pos:  # drop what was scanned (its line ends counted first)
            self.lines_before(self.base + self.pos)
            self.buf = self.buf[self.pos:]
            self.base += self.pos
            self.pos = 0
        self.buf = self.buf + chunk if self.buf else chunk
        buf = self.buf
        while True:
            header = self._header_mode()
            watch_delims = bool(self._bounds()) and self.spans < MAX_SPANS
            if not header and not watch_delims:  # a leaf's body to the end: nothing to see
                self._pass(len(buf))
                return
            cand = self._next_line_start(header, watch_delims)
            if cand is None:
                keep = len(buf) - 2 if not final else len(buf)  # "\n-" may continue
                if keep > self.pos:
                    self._pass(keep)
                    # _pass decided at_line_start from the octet before keep
                return
            self._pass(cand)
            if header and buf[cand:cand + 2] == b"\r\n":
                self._pass(cand + 2)
                self._on_header_end(self.base + cand + 2)
                continue
            nl = buf.find(b"\n", cand, cand + LINE_HEAD)
            if nl < 0 and not final and len(buf) - cand < LINE_HEAD:
                return  # the delimiter candidate's end is still to come
            line = buf[cand:nl + 1] if nl >= 0 else buf[cand:cand + LINE_HEAD]
            hit = self._delimiter(line, self.base + cand) if nl >= 0 or final else None
            if nl < 0 and hit is None:  # a long line: not a delimiter; move past its start
                self._pass(cand + 1)
                continue
            if hit is None:
                self._pass(nl + 1)
                continue
            end = nl + 1 if nl >= 0 else len(buf)
            self.at_line_start = True
            self.pos = end
            self._on_delimiter(self.base + cand, self.base + end, *hit)

    def _next_line_start(self, header: bool, delims: bool) -> int | None:
        """Where the next line that may matter starts (a ``--`` line, or a blank line in a
        header), at or after pos."""
        buf, pos = self.buf, self.pos
        if self.at_line_start and pos + 2 <= len(buf):
            two = buf[pos:pos + 2]
            if (delims and two == b"--") or (header and two == b"\r\n"):
                return pos
        best = None
        if delims:
            i = buf.find(b"\n--", pos)
            if i >= 0:
                best = i + 1
        if header:
            i = buf.find(b"\n\r\n", pos, best + 2 if best is not None else len(buf))
            if i >= 0 and (best is None or i + 1 < best):
                best = i + 1
        if best is not None and best + 2 > len(buf):
            return None
        return best

    def close(self) -> Span:
        self.feed(b"", final=True)
        end = self.base + len(self.buf)
        nl_end = self.lines_before(end)
        for span in reversed(self.open):
            span.finish(end, nl_end)
        self.open = []
        return self.root


def scan(chunks: Iterable[bytes]) -> Span:
    """The structure of the message whose CRLF form ``chunks`` gives, in order."""
    scanner = _Scanner()
    for chunk in chunks:
        if chunk:
            scanner.feed(bytes(chunk))
    return scanner.close()


def section_range(root: Span, numbers: list[int], spec: str) -> tuple[int, int] | None:
    """(start, end) offsets of ``BODY[<numbers>.<spec>]`` for spec "", MIME, HEADER or TEXT;
    None when the part does not exist (the section is then empty)."""
    part = mime.find_part(root, numbers) if numbers else root
    if part is None:
        return None
    assert isinstance(part, Span)
    if not spec:
        return (part.start, part.end) if not numbers else (part.body_start, part.end)
    if spec == "MIME":
        return part.start, part.body_start
    if numbers:
        if part.message is None:
            return None
        part = part.message
        assert isinstance(part, Span)
    if spec == "HEADER":
        return part.start, part.body_start
    if spec == "TEXT":
        return part.body_start, part.end
    return None


def header_of(root: Span, numbers: list[int]) -> bytes | None:
    """The (kept) header ``BODY[<numbers>.HEADER.FIELDS ...]`` reads."""
    part = mime.find_part(root, numbers) if numbers else root
    if part is None:
        return None
    if numbers:
        part = part.message
    return part.header if part is not None else None
