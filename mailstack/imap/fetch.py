"""FETCH: parsing fetch attributes and rendering ``* n FETCH (...)`` responses."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..store.ingest import NotAMessage, open_message
from ..store.maildir import to_crlf
from . import binary, mime, mimescan, wire
from .cache import BODY, BODYSTRUCTURE, ENVELOPE, HEADER, MAX_HEADER, FolderCache
from .mailbox import Msg, Selected
from .wire import ParseError, Parser

_SIMPLE = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
           "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ", "SAVEDATE", "EMAILID",
           "THREADID"}
_NO_BODY = ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "UID", "MODSEQ", "SAVEDATE", "EMAILID",
            "THREADID", "PREVIEW")  # answered from the index (PREVIEW: from the store's summary)
MAX_ATTS = 64  # fetch attributes in one FETCH (Thunderbird asks for 4 to 10)
STREAM_OVER = 1 << 20  # a whole message bigger than this is sent from its file in pieces
STREAM_PIECE = 256 * 1024
OPEN_END = 1 << 62  # the length of a BINARY partial range given as <start> alone
_MACROS = {"ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
           "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
           "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]}


@dataclass
class Att:
    """One fetch attribute; ``section`` is set for ``BODY[...]``."""

    name: str
    peek: bool = False
    section: str | None = None  # canonical text inside the brackets
    numbers: list[int] = field(default_factory=list)
    spec: str = ""
    fields: list[str] = field(default_factory=list)
    partial: tuple[int, int] | None = None

    @property
    def sets_seen(self) -> bool:
        return (self.name in ("RFC822", "RFC822.TEXT")
                or (self.section is not None and not self.peek and self.name != "BINARY.SIZE"))

    @property
    def is_body(self) -> bool:
        """``BODY[...]`` (not BINARY, not the BODY structure)."""
        return self.name == "BODY" and self.section is not None

    @property
    def needs_body(self) -> bool:
        return self.name not in _NO_BODY


def _section(p: Parser, att: Att, *, partial: bool = True, open_end: bool = False) -> None:
    """``"[" [section] "]"`` and, when ``partial``, ``["<" number "." nz-number ">"]``; with
    ``open_end`` also ``"<" number ">"``: from there to the end."""
    p.expect(b"[")
    numbers: list[int] = []
    spec = ""
    text_parts: list[str] = []
    while p.peek() is not None and chr(p.peek()).isdigit():
        numbers.append(p.nz_number())
        if not p.maybe(b"."):
            break
    if numbers:
        text_parts.append(".".join(map(str, numbers)))
    if p.peek() != 0x5D:  # ]
        if numbers and p.data[p.pos - 1:p.pos] != b".":
            raise ParseError("bad section")
        word = p.atom().upper()
        if word not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
            raise ParseError(f"bad section {word}")
        if word == "MIME" and not numbers:
            raise ParseError("MIME needs a part number")
        spec = word
        if word.startswith("HEADER.FIELDS"):
            p.sp()
            p.open_paren()
            att.fields.append(p.astring().decode("ascii", "replace"))
            while p.maybe_sp():
                att.fields.append(p.astring().decode("ascii", "replace"))
            p.close_paren()
            # echoed in the response: a name from a literal may hold CR LF, so each goes out
            # as an astring (atom, quoted string or literal), never raw
            names = b" ".join(wire.astring(f) for f in att.fields).decode("utf-8")
            text_parts.append(f"{word} ({names})")
        else:
            text_parts.append(word)
    elif numbers and p.data[p.pos - 1:p.pos] == b".":
        raise ParseError("bad section")
    p.expect(b"]")
    att.numbers, att.spec, att.section = numbers, spec, ".".join(text_parts)
    if partial and p.maybe(b"<"):
        start = p.number()
        if open_end and p.maybe(b">"):
            att.partial = (start, OPEN_END)
            return
        p.expect(b".")
        length = p.nz_number()
        p.expect(b">")
        att.partial = (start, length)


def parse_att(p: Parser) -> Att:
    word = p._run(bytes(c for c in range(0x21, 0x7F) if c not in b"()[]<> ")).decode().upper()
    if word in ("BODY", "BODY.PEEK") and p.peek() == 0x5B:
        att = Att("BODY", peek=word == "BODY.PEEK")
        _section(p, att)
        return att
    if word in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and p.peek() == 0x5B:
        att = Att("BINARY.SIZE" if word == "BINARY.SIZE" else "BINARY",
                  peek=word == "BINARY.PEEK")
        # RFC 3516 allows only part numbers and <start.length>; like Dovecot, the server
        # also takes the BODY section texts (HEADER, HEADER.FIELDS[.NOT], MIME, TEXT: see
        # binary_content) and <start> alone (to the end)
        _section(p, att, partial=word != "BINARY.SIZE", open_end=True)
        return att
    if word in _SIMPLE:
        return Att(word)
    if word == "PREVIEW":  # RFC 8970; LAZY changes nothing: the preview is always at hand
        if p.data[p.pos:p.pos + 2] == b" (":
            p.pos += 1
            p.open_paren()
            while True:
                if p.atom().upper() != "LAZY":
                    raise ParseError("unknown PREVIEW modifier")
                if not p.maybe_sp():
                    break
            p.close_paren()
        return Att(word)
    raise ParseError(f"unknown fetch attribute {word or '?'}")


def parse_atts(p: Parser) -> list[Att]:
    """``fetch-att`` / ``(fetch-att *(SP fetch-att))`` / ALL / FAST / FULL."""
    if p.maybe_open():
        atts = [parse_att(p)]
        while p.maybe_sp():
            atts.append(parse_att(p))
            if len(atts) > MAX_ATTS:
                raise ParseError(f"more than {MAX_ATTS} fetch attributes")
        p.close_paren()
        return atts
    start = p.pos
    word = p._run(bytes(c for c in range(0x21, 0x7F) if c not in b"()[]<> ")).decode().upper()
    if word in _MACROS:
        return [Att(n) for n in _MACROS[word]]
    p.pos = start
    return [parse_att(p)]


class Loaded:
    """One message's data for one FETCH response, each read or computed at most once.

    :func:`prepare` does every read the attributes need (in a worker thread for whole bodies);
    :func:`pieces` then only formats what is loaded. A message bigger than STREAM_OVER is never
    read whole: its structure comes from a streaming scan (:mod:`.mimescan`) and its sections
    are sent from ranges of its file."""

    __slots__ = ("_envelope", "_header", "_structure", "binary", "cache", "data", "fd", "msg",
                 "part", "sel")

    def __init__(self, sel: Selected, msg: Msg, cache: FolderCache | None = None) -> None:
        self.sel, self.msg = sel, msg
        self.data: bytes | None = None
        self.part: mime.Part | None = None  # a mimescan.Span for a big message
        self.cache = cache if cache is not None else FolderCache.for_root(sel.maildir.root)
        self._header: bytes | None = None
        self._envelope: bytes | None = None
        self._structure: dict[bool, bytes] = {}
        self.fd: int | None = None  # a big message read from its file in ranges
        #: BINARY sections: decoded (size, holds a NUL), None for a part that does not exist
        self.binary: dict[str, tuple[int, bool] | None] = {}

    @property
    def big(self) -> bool:
        return self.msg.size > STREAM_OVER

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def open(self) -> bool:
        """Open the message file for ranges (False when it is gone)."""
        if self.fd is None:
            try:
                self.fd = open_message(self._path())
            except NotAMessage:
                return False
        return True

    def header(self) -> bytes | None:
        if self.part is not None and not self.big:
            return self.part.header
        if self._header is None:
            cached = self.cache.get(self.msg.key, HEADER)  # warm: no path, no stat
            self._header = cached if cached is not None else self._from_file(self.cache.header)
        return self._header

    def header_cut(self) -> bool:
        """A big message whose header, as read from the file's start, is over MAX_HEADER
        (cut there, or the whole message): its HEADER is sent from the scanned range."""
        return self.big and self._header is not None and len(self._header) > MAX_HEADER

    def envelope(self) -> bytes | None:
        if self._envelope is None:
            if self.part is not None and not self.big:
                self._envelope = mime.envelope(self.part)
            else:
                cached = self.cache.get(self.msg.key, ENVELOPE)
                self._envelope = (cached if cached is not None
                                  else self._from_file(self.cache.envelope))
        return self._envelope

    def _from_file(self, read: Callable[[str, str | Path], bytes | None]) -> bytes | None:
        """``read(key, path)`` of the message file, following a concurrent rename once."""
        sel, msg = self.sel, self.msg
        value = read(msg.key, sel.store.path_of(sel.name, msg))
        if value is None:
            found = sel.maildir.find(msg.key)
            if found is not None:
                value = read(msg.key, found.path(sel.maildir.root))
        return value

    def structure(self, extended: bool) -> bytes | None:
        known = self._structure.get(extended)
        if known is not None:
            return known
        field = BODYSTRUCTURE if extended else BODY
        value = self.cache.get(self.msg.key, field)
        if value is None:
            tree = self.tree()
            if tree is None:
                return None
            value = mime.bodystructure(tree, extended)
            self.cache.put(self.msg.key, field, value)
        self._structure[extended] = value
        return value

    def _path(self) -> str:
        """Where the message file is (following a concurrent rename)."""
        sel, msg = self.sel, self.msg
        path = sel.store.path_of(sel.name, msg)
        if not os.path.exists(path):
            found = sel.maildir.find(msg.key)
            if found is not None:
                return str(found.path(sel.maildir.root))
        return path

    def raw(self) -> bytes | None:
        if self.data is None:
            self.data = self.sel.read(self.msg)
        return self.data

    def tree(self) -> mime.Part | None:
        if self.part is None:
            if self.big:  # scanned from the file, never loaded
                if not self.open():
                    return None
                assert self.fd is not None
                self.part = _Structures.of(self.fd, self.msg.size)
                return self.part
            raw = self.raw()
            if raw is None:
                return None
            self.part = mime.Part(raw)
        return self.part

    def span(self) -> mimescan.Span:
        assert isinstance(self.part, mimescan.Span)
        return self.part

    def preview(self) -> str:
        """RFC 8970 preview text, from the store's summary of the message."""
        sel, msg = self.sel, self.msg
        summary = sel.store.summaries(sel.name, [msg]).get(msg.emailid)
        return summary.preview if summary is not None else ""

    def size(self) -> int:
        """RFC822.SIZE (octets with CRLF line ends)."""
        return self.msg.size  # the index knows it

    def file_range(self, start: int, end: int) -> Iterator[bytes]:
        assert self.fd is not None
        return file_range(self.fd, self.msg.size, start, end - start)

    def binary_content(self, att: Att) -> Callable[[], Iterator[bytes]] | None:
        """A source of the content of ``BINARY[section]`` (None: no such part).

        A part number alone: the part's content, its transfer encoding undone. The whole
        message (no section) is its header and its decoded body, the header's
        Content-Transfer-Encoding then saying ``binary``; a multipart or message part is sent
        as it is (MIME allows only identity encodings there, and its parts keep theirs).
        Beyond RFC 3516 (as Dovecot answers): ``TEXT`` is a message's body decoded as a single
        part is, a multipart body as it is; ``HEADER``, ``HEADER.FIELDS[.NOT]`` and ``MIME``
        are what ``BODY[section]`` gives (headers carry no transfer encoding)."""
        root = self.tree()
        assert root is not None  # prepare() loaded it
        numbers = att.numbers
        part = mime.find_part(root, numbers) if numbers else root
        if part is None:
            return None
        if att.spec not in ("", "TEXT"):
            return self._header_section(root, att)
        if att.spec == "TEXT" and numbers:  # the body of the message a message/rfc822 holds
            if part.message is None:
                return lambda: iter(())
            part = part.message
        leaf = not part.children and part.message is None
        cte = binary.encoding_of(part.msg.get("content-transfer-encoding")) if leaf else ""
        if isinstance(part, mimescan.Span):
            span = part

            def body() -> Iterator[bytes]:
                return self.file_range(span.body_start, span.end)

            def header() -> Iterator[bytes]:
                return self.file_range(span.start, span.body_start)
        else:
            whole = part

            def body() -> Iterator[bytes]:
                return iter((whole.body,))

            def header() -> Iterator[bytes]:
                return iter((whole.header,))

        def content() -> Iterator[bytes]:
            if not numbers and not att.spec:  # the whole message: its header says what the
                if cte in binary.CONVERTED:  # body now is
                    yield from binary.relabelled_header(header())
                else:
                    yield from header()
            yield from binary.decode(cte, body())
        return content

    def _header_section(self, root: mime.Part, att: Att) -> Callable[[], Iterator[bytes]]:
        """``BINARY[...HEADER]``, ``[...HEADER.FIELDS[.NOT] (...)]`` or ``[n.MIME]``: the
        octets ``BODY[...]`` gives for the same section."""
        if not isinstance(root, mimescan.Span):
            data = mime.section_bytes(root, att.numbers, att.spec, att.fields)
            return lambda: iter((data,))
        if att.spec.startswith("HEADER.FIELDS"):
            fields = mime.header_fields(mimescan.header_of(root, att.numbers) or b"",
                                        att.fields, exclude=att.spec.endswith(".NOT"))
            return lambda: iter((fields,))
        start, end = mimescan.section_range(root, att.numbers, att.spec) or (0, 0)
        return lambda: self.file_range(start, end)


def _raw_only(a: Att) -> bool:
    """BODY[] and BODY[TEXT]: the message bytes, no MIME parse needed."""
    return a.is_body and not a.numbers and a.spec in ("", "TEXT")


def _top_header(a: Att) -> bool:
    return a.name == "RFC822.HEADER" or (a.is_body and not a.numbers
                                         and a.spec.startswith("HEADER"))


def needs_tree(atts: list[Att]) -> bool:
    """Whether rendering parses the message's MIME structure."""
    return any(a.name in ("RFC822", "RFC822.TEXT", "BINARY", "BINARY.SIZE")
               or (a.is_body and not _raw_only(a) and not _top_header(a)) for a in atts)


def scans(load: Loaded, atts: list[Att]) -> bool:
    """Whether preparing a big message for metadata may scan its file (its structure, or a
    header over MAX_HEADER): then that message is prepared in a worker thread."""
    return load.big and any((a.name in ("BODY", "BODYSTRUCTURE") and a.section is None)
                            or a.name == "RFC822.HEADER"
                            or (_top_header(a) and a.spec == "HEADER") for a in atts)


def needs_body(atts: list[Att]) -> bool:
    """Whether rendering reads the message's content (then it is done in a worker thread)."""
    return needs_tree(atts) or any(_raw_only(a) for a in atts)


def _from_file(load: Loaded, atts: list[Att]) -> bool:
    """A big message: sections, RFC822 and BINARY come from ranges of its file."""
    return load.big and any(a.name in ("RFC822", "RFC822.TEXT", "BINARY") or _raw_only(a)
                            or (a.is_body and not _top_header(a)) for a in atts)


def prepare(load: Loaded, atts: list[Att]) -> bool:
    """Read what ``atts`` need, the message file at most once; False when it is gone.

    Raises :class:`binary.UnknownCTE` for BINARY of a part whose encoding is unknown."""
    if _from_file(load, atts):
        if not load.open():
            return False
        assert load.fd is not None
        spans = needs_tree(atts) or any(a.name == "RFC822.TEXT" or (
            a.is_body and not _top_header(a) and (a.numbers or a.spec)) for a in atts)
        if spans and load.tree() is None:  # the scan also builds the checkpoints
            return False
        if spans or any(a.partial and a.partial[0] for a in atts if _raw_only(a)):
            _Checkpoints.of(load.fd)  # built here (a worker thread), not in the event loop
    if needs_tree(atts) and load.tree() is None:
        return False  # with the tree loaded, header and envelope come from it
    if load.fd is None and any(_raw_only(a) for a in atts) and load.raw() is None:
        return False
    for att in atts:
        name = att.name
        if _top_header(att):
            ok = load.header() is not None
            if ok and load.header_cut():  # sent from the scanned range of the file
                if not load.open() or load.tree() is None:
                    return False
                assert load.fd is not None
                _Checkpoints.of(load.fd)
        elif name == "ENVELOPE":
            ok = load.envelope() is not None
        elif name in ("BODYSTRUCTURE", "BODY") and att.section is None:
            ok = load.structure(name == "BODYSTRUCTURE") is not None
        elif name in ("BINARY", "BINARY.SIZE") and att.section not in load.binary:
            content = load.binary_content(att)
            load.binary[att.section or ""] = (binary.measure(content()) if content is not None
                                              else None)
            ok = True
        else:
            ok = True
        if not ok:
            return False
    return True


class _Structures:
    """The scanned structure of the most recently used big message files (a FETCH of
    BODYSTRUCTURE, then of a part, scans once). Only small structures are kept."""

    _cache: dict[tuple[int, int, int], mimescan.Span] = {}
    _order: list[tuple[int, int, int]] = []
    _lock = threading.Lock()
    KEEP = 16
    KEEP_SPANS = 64  # a structure with more parts than this is not kept …
    KEEP_OCTETS = 64 * 1024  # … nor one with more header octets than this

    @classmethod
    def of(cls, fd: int, size: int) -> mimescan.Span:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size)
        with cls._lock:
            found = cls._cache.get(key)
        if found is not None:
            return found
        root = mimescan.scan(_Checkpoints.crlf_pieces(fd))
        if _count_spans(root) <= cls.KEEP_SPANS and _header_octets(root) <= cls.KEEP_OCTETS:
            with cls._lock:
                cls._cache[key] = root
                cls._order.append(key)
                if len(cls._order) > cls.KEEP:
                    cls._cache.pop(cls._order.pop(0), None)
        return root


def structure_of(fd: int, size: int) -> mimescan.Span:
    """The scanned structure of an open message file (``size``: its CRLF size), cached per
    file when small."""
    return _Structures.of(fd, size)


def _header_octets(part: mime.Part) -> int:
    return len(part.header) + sum(_header_octets(c) for c in part.children) + (
        _header_octets(part.message) if part.message is not None else 0)


def _count_spans(part: mime.Part) -> int:
    return 1 + sum(_count_spans(c) for c in part.children) + (
        _count_spans(part.message) if part.message is not None else 0)


class _Checkpoints:
    """Where the CRLF form of a big message file reaches each STREAM_PIECE of the file:
    (file offset, CRLF offset, a CR held back), so a range is read from near its start
    (Thunderbird fetches big messages in 64 KiB ranges). Built in one pass, kept for the
    most recently used files."""

    _cache: dict[tuple[int, int, int], list[tuple[int, int, bool]]] = {}
    _order: list[tuple[int, int, int]] = []
    _lock = threading.Lock()
    KEEP = 64

    @classmethod
    def of(cls, fd: int) -> list[tuple[int, int, bool]]:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size)
        with cls._lock:
            points = cls._cache.get(key)
        if points is None:
            points = cls._build(fd)
            cls._remember(key, points)
        return points

    @classmethod
    def _remember(cls, key: tuple[int, int, int], points: list[tuple[int, int, bool]]) -> None:
        with cls._lock:
            if key not in cls._cache:
                cls._order.append(key)
            cls._cache[key] = points
            if len(cls._order) > cls.KEEP:
                cls._cache.pop(cls._order.pop(0), None)

    @classmethod
    def crlf_pieces(cls, fd: int) -> Iterator[bytes]:
        """The whole file's CRLF form in pieces, its checkpoints remembered on the way (a
        structure scan and the checkpoints in one read)."""
        st = os.fstat(fd)
        points = [(0, 0, False)]
        pos = out = 0
        carry = False
        while True:
            chunk = os.pread(fd, STREAM_PIECE, pos)
            if not chunk:
                break
            pos += len(chunk)
            data = (b"\r" if carry else b"") + chunk
            carry = data.endswith(b"\r")
            if carry:
                data = data[:-1]
            piece = to_crlf(data)
            out += len(piece)
            points.append((pos, out, carry))
            yield piece
        if carry:
            yield b"\r"
        cls._remember((st.st_dev, st.st_ino, st.st_size), points)

    @staticmethod
    def _build(fd: int) -> list[tuple[int, int, bool]]:
        points = [(0, 0, False)]
        pos = out = 0
        carry = False
        while True:
            chunk = os.pread(fd, STREAM_PIECE, pos)
            if not chunk:
                return points
            pos += len(chunk)
            data = (b"\r" if carry else b"") + chunk
            carry = data.endswith(b"\r")
            if carry:
                data = data[:-1]
            out += len(data) + data.count(b"\n") - data.count(b"\r\n")
            points.append((pos, out, carry))


def file_range(fd: int, size: int, start: int, length: int) -> Iterator[bytes]:
    """``length`` octets from ``start`` of the message file's CRLF form (``size`` octets, the
    index's CRLF size), read in pieces of about STREAM_PIECE."""
    if length <= 0:
        return
    pos, out, held = 0, 0, False
    if start:
        for point in _Checkpoints.of(fd):
            if point[1] > start:
                break
            pos, out, held = point
    carry = b"\r" if held else b""
    skip = start - out
    sent = 0
    while sent < length:
        chunk = os.pread(fd, STREAM_PIECE, pos)
        if not chunk:
            break
        pos += len(chunk)
        chunk = carry + chunk
        carry = b""
        if chunk.endswith(b"\r"):  # its LF may start the next chunk
            chunk, carry = chunk[:-1], b"\r"
        converted = to_crlf(chunk)
        if skip:
            taken = min(skip, len(converted))
            converted, skip = converted[taken:], skip - taken
        piece = converted[:length - sent]
        sent += len(piece)
        if piece:
            yield piece
    if carry and sent < length and not skip:
        sent += 1
        yield carry
    if sent < length:  # the file is shorter than the index says: keep the literal's length
        yield b" " * (length - sent)



def _partial(data: bytes | memoryview, att: Att) -> tuple[bytes | memoryview, bytes]:
    if att.partial is None:
        return data, b""
    start, length = att.partial
    return memoryview(data)[start:start + length], b"<%d>" % start  # a view: no copy


def _literal_from_file(load: Loaded, label: bytes, att: Att | None, start: int,
                       end: int) -> Iterator[Piece]:
    """``label[<origin>] {n}`` and the octets ``start``-``end`` of the message (the
    attribute's partial range applied), read from the file in pieces."""
    origin = b""
    if att is not None and att.partial is not None:
        first, length = att.partial
        origin = b"<%d>" % first
        start = min(start + first, end)
        end = min(start + length, end)
    yield label + origin + b" {%d}\r\n" % max(0, end - start)
    if end > start:
        yield from load.file_range(start, end)


def _big_section(load: Loaded, att: Att, label: bytes) -> Iterator[Piece]:
    """A ``BODY[...]`` section of a big message, from its file."""
    if att.spec.startswith("HEADER.FIELDS"):
        header = mimescan.header_of(load.span(), att.numbers) or b""
        data, origin = _partial(mime.header_fields(header, att.fields,
                                                   exclude=att.spec.endswith(".NOT")), att)
        yield label + origin + b" {%d}\r\n" % len(data)
        yield data
        return
    rng = mimescan.section_range(load.span(), att.numbers, att.spec)
    yield from _literal_from_file(load, label, att, *(rng or (0, 0)))


def _binary_piece(load: Loaded, att: Att, sep: bytes) -> Iterator[Piece]:
    """``BINARY[n]<origin> ~{size}`` (a literal8 when the content holds a NUL) or
    ``BINARY.SIZE[n] size`` (RFC 3516)."""
    key = att.section or ""
    info = load.binary.get(key)
    if att.name == "BINARY.SIZE":
        yield sep + b"BINARY.SIZE[" + key.encode() + b"] %d" % (info[0] if info else 0)
        return
    label = sep + b"BINARY[" + key.encode() + b"]"
    content = load.binary_content(att) if info is not None else None
    if info is None or content is None:
        yield label + b" NIL"
        return
    size, nul = info
    start, length = att.partial or (0, size)
    length = max(0, min(length, size - start))
    origin = b"<%d>" % start if att.partial else b""
    yield label + origin + (b" ~{%d}\r\n" if nul else b" {%d}\r\n") % length
    if length:
        yield from binary.window(content(), start, length)


Piece = bytes | memoryview


def pieces(load: Loaded, seq: int, atts: list[Att], *, uid: bool,
           modseq: bool) -> Iterator[Piece]:
    """The ``* seq FETCH (...)`` response of a prepared message, in pieces: literal data is
    yielded as a reference to the loaded message (never copied, never joined) or read from
    the file piece by piece, so the caller can send and drain piece by piece whatever the
    attributes ask for."""
    sel, msg = load.sel, load.msg
    names = {a.name for a in atts}
    yield b"* %d FETCH (" % seq
    sep = b""
    if uid and "UID" not in names:
        yield b"UID %d" % msg.uid
        sep = b" "
    for att in atts:
        name = att.name
        if name == "UID":
            yield sep + b"UID %d" % msg.uid
        elif name == "FLAGS":
            yield sep + b"FLAGS (" + " ".join(sel.flags(msg)).encode() + b")"
        elif name == "MODSEQ":
            yield sep + b"MODSEQ (%d)" % msg.modseq
        elif name == "INTERNALDATE":
            date = wire.imap_datetime(sel.internal_date(msg), msg.tzoff)
            yield sep + b'INTERNALDATE "' + date.encode() + b'"'
        elif name == "RFC822.SIZE":
            yield sep + b"RFC822.SIZE %d" % load.size()
        elif name == "SAVEDATE":  # RFC 8514: when it was stored in this mailbox
            yield sep + b'SAVEDATE "' + wire.imap_datetime(msg.savedate).encode() + b'"'
        elif name in ("BINARY", "BINARY.SIZE"):
            yield from _binary_piece(load, att, sep)
        elif name == "EMAILID":  # RFC 8474: the store's ids, the same as JMAP's
            yield sep + b"EMAILID (" + msg.emailid.encode() + b")"
        elif name == "THREADID":
            yield sep + b"THREADID (" + msg.threadid.encode() + b")"
        elif name == "PREVIEW":
            yield sep + b"PREVIEW " + wire.nstring(load.preview().encode("utf-8"))
        elif att.section is not None:
            label = sep + b"BODY[" + att.section.encode() + b"]"
            data: bytes | memoryview
            if _top_header(att):
                header = load.header() or b""
                if att.spec == "HEADER" and load.header_cut():
                    span = load.span()
                    yield from _literal_from_file(load, label, att, span.start, span.body_start)
                    sep = b" "
                    continue
                if att.spec == "HEADER":
                    data = header
                else:
                    data = mime.header_fields(header, att.fields,
                                              exclude=att.spec.endswith(".NOT"))
            elif load.fd is not None:  # a big message, straight from its file
                if att.spec == "" and not att.numbers:
                    yield from _literal_from_file(load, label, att, 0, msg.size)
                else:
                    yield from _big_section(load, att, label)
                sep = b" "
                continue
            elif _raw_only(att):  # the whole message or its text: no MIME parse needed
                raw = load.raw()  # (Thunderbird's BODY.PEEK[])
                assert raw is not None  # prepare() loaded it
                data = raw if not att.spec else mime.split_header(raw)[1]
            else:
                tree = load.tree()
                assert tree is not None  # prepare() loaded it
                data = mime.section_bytes(tree, att.numbers, att.spec, att.fields)
            data, origin = _partial(data, att)
            yield label + origin + b" {%d}\r\n" % len(data)
            yield data
        elif name == "ENVELOPE":
            yield sep + b"ENVELOPE " + (load.envelope() or b"NIL")
        elif name in ("BODYSTRUCTURE", "BODY"):
            yield sep + name.encode() + b" " + (load.structure(name == "BODYSTRUCTURE") or b"NIL")
        elif name == "RFC822.HEADER" and load.header_cut():
            span = load.span()
            yield from _literal_from_file(load, sep + b"RFC822.HEADER", None, span.start,
                                          span.body_start)
        elif name == "RFC822.HEADER":
            header = load.header() or b""
            yield sep + b"RFC822.HEADER {%d}\r\n" % len(header)
            yield header
        elif load.fd is not None:  # RFC822 or RFC822.TEXT of a big message
            start = 0 if name == "RFC822" else load.span().body_start
            yield from _literal_from_file(load, sep + name.encode(), None, start, msg.size)
        else:
            tree = load.tree()
            assert tree is not None
            data = tree.raw if name == "RFC822" else tree.body
            yield sep + name.encode() + b" {%d}\r\n" % len(data)
            yield data
        sep = b" "
    if modseq and "MODSEQ" not in names:
        yield sep + b"MODSEQ (%d)" % msg.modseq
    yield b")\r\n"


def render(sel: Selected, seq: int, msg: Msg, atts: list[Att], *, uid: bool,
           modseq: bool) -> bytes | None:
    """The whole ``* seq FETCH (...)`` line for one message; None when the message is gone."""
    load = Loaded(sel, msg)
    if not prepare(load, atts):
        return None
    return b"".join(pieces(load, seq, atts, uid=uid, modseq=modseq))
