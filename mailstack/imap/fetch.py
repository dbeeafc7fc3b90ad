"""FETCH: parsing fetch attributes and rendering ``* n FETCH (...)`` responses."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..store.ingest import NotAMessage, open_message
from ..store.maildir import to_crlf
from . import mime, wire
from .cache import BODY, BODYSTRUCTURE, ENVELOPE, HEADER, FolderCache
from .mailbox import Msg, Selected
from .wire import ParseError, Parser

_SIMPLE = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
           "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ", "EMAILID", "THREADID"}
_NO_BODY = ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "UID", "MODSEQ", "EMAILID", "THREADID",
            "PREVIEW")  # answered from the index (PREVIEW: from the store's summary)
MAX_ATTS = 64  # fetch attributes in one FETCH (Thunderbird asks for 4 to 10)
STREAM_OVER = 1 << 20  # a whole message bigger than this is sent from its file in pieces
STREAM_PIECE = 256 * 1024
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
                or (self.section is not None and not self.peek))

    @property
    def needs_body(self) -> bool:
        return self.name not in _NO_BODY


def _section(p: Parser, att: Att) -> None:
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
    if p.maybe(b"<"):
        start = p.number()
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
    :func:`pieces` then only formats what is loaded."""

    __slots__ = ("_envelope", "_header", "_structure", "cache", "data", "fd", "msg", "part",
                 "sel")

    def __init__(self, sel: Selected, msg: Msg) -> None:
        self.sel, self.msg = sel, msg
        self.data: bytes | None = None
        self.part: mime.Part | None = None
        self.cache = FolderCache.for_root(sel.maildir.root)
        self._header: bytes | None = None
        self._envelope: bytes | None = None
        self._structure: dict[bool, bytes] = {}
        self.fd: int | None = None  # a big message streamed from its file (see can_stream)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def header(self) -> bytes | None:
        if self.part is not None:
            return self.part.header
        if self._header is None:
            cached = self.cache.get(self.msg.key, HEADER)  # warm: no path, no stat
            self._header = cached if cached is not None else self._from_file(self.cache.header)
        return self._header

    def envelope(self) -> bytes | None:
        if self._envelope is None:
            if self.part is not None:
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
            raw = self.raw()
            if raw is None:
                return None
            self.part = mime.Part(raw)
        return self.part

    def preview(self) -> str:
        """RFC 8970 preview text, from the store's summary of the message."""
        sel, msg = self.sel, self.msg
        summary = sel.store.summaries(sel.name, [msg]).get(msg.emailid)
        return summary.preview if summary is not None else ""

    def size(self) -> int:
        """RFC822.SIZE (octets with CRLF line ends)."""
        return self.msg.size  # the index knows it


def _raw_only(a: Att) -> bool:
    """BODY[] and BODY[TEXT]: the message bytes, no MIME parse needed."""
    return a.section is not None and not a.numbers and a.spec in ("", "TEXT")


def needs_tree(atts: list[Att]) -> bool:
    """Whether rendering parses the message's MIME structure."""
    return any(a.name in ("RFC822", "RFC822.TEXT") or (a.section is not None and not _raw_only(a)
               and not (not a.numbers and a.spec.startswith("HEADER"))) for a in atts)


def needs_body(atts: list[Att]) -> bool:
    """Whether rendering reads the whole message (then it is read in a worker thread)."""
    return needs_tree(atts) or any(_raw_only(a) for a in atts)


def can_stream(load: Loaded, atts: list[Att]) -> bool:
    """A big message asked for as ``BODY[]`` (whole or a ``<start.length>`` range) and nothing
    that parses it: its literal is read from the file piece by piece instead of loaded."""
    return (load.msg.size > STREAM_OVER and not needs_tree(atts)
            and all(a.spec == "" for a in atts if _raw_only(a)))


def prepare(load: Loaded, atts: list[Att]) -> bool:
    """Read what ``atts`` need, the message file at most once; False when it is gone."""
    if any(_raw_only(a) for a in atts) and can_stream(load, atts):
        try:
            load.fd = open_message(load._path())
        except NotAMessage:
            return False
        if any(a.partial and a.partial[0] for a in atts if _raw_only(a)):
            _Checkpoints.of(load.fd)  # built here (a worker thread), not in the event loop
        return all(load.header() is not None for a in atts if a.name == "RFC822.HEADER"
                   or (a.section is not None and a.spec.startswith("HEADER")))
    if needs_tree(atts) and load.tree() is None:
        return False  # with the tree loaded, header and envelope come from it
    if any(_raw_only(a) for a in atts) and load.raw() is None:
        return False
    for att in atts:
        name = att.name
        if name in ("RFC822.HEADER",) or (att.section is not None and not att.numbers
                                          and att.spec.startswith("HEADER")):
            ok = load.header() is not None
        elif name == "ENVELOPE":
            ok = load.envelope() is not None
        elif name in ("BODYSTRUCTURE", "BODY") and att.section is None:
            ok = load.structure(name == "BODYSTRUCTURE") is not None
        else:
            ok = True
        if not ok:
            return False
    return True


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
            with cls._lock:
                cls._cache[key] = points
                cls._order.append(key)
                if len(cls._order) > cls.KEEP:
                    cls._cache.pop(cls._order.pop(0), None)
        return points

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


def _file_range(fd: int, size: int, start: int, length: int) -> Iterator[bytes]:
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


Piece = bytes | memoryview


def pieces(load: Loaded, seq: int, atts: list[Att], *, uid: bool,
           modseq: bool) -> Iterator[Piece]:
    """The ``* seq FETCH (...)`` response of a prepared message, in pieces: literal data is
    yielded as a reference to the loaded message (never copied, never joined), so the caller
    can send and drain piece by piece whatever the attributes ask for."""
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
            yield (sep + b'INTERNALDATE "' + wire.imap_datetime(sel.internal_date(msg)).encode()
                   + b'"')
        elif name == "RFC822.SIZE":
            yield sep + b"RFC822.SIZE %d" % load.size()
        elif name == "EMAILID":  # RFC 8474: the store's ids, the same as JMAP's
            yield sep + b"EMAILID (" + msg.emailid.encode() + b")"
        elif name == "THREADID":
            yield sep + b"THREADID (" + msg.threadid.encode() + b")"
        elif name == "PREVIEW":
            yield sep + b"PREVIEW " + wire.nstring(load.preview().encode("utf-8"))
        elif att.section is not None:
            data: bytes | memoryview
            if not att.numbers and att.spec.startswith("HEADER"):
                header = load.header() or b""
                if att.spec == "HEADER":
                    data = header
                else:
                    data = mime.header_fields(header, att.fields,
                                              exclude=att.spec.endswith(".NOT"))
            elif not att.numbers and att.spec in ("", "TEXT"):  # the whole message or its
                if load.fd is not None:  # a big message, straight from its file
                    start, length = att.partial or (0, msg.size)
                    length = max(0, min(length, msg.size - start))
                    origin = b"<%d>" % start if att.partial else b""
                    yield sep + b"BODY[]" + origin + b" {%d}\r\n" % length
                    yield from _file_range(load.fd, msg.size, start, length)
                    sep = b" "
                    continue
                raw = load.raw()  # text: no MIME parse needed (Thunderbird's BODY.PEEK[])
                assert raw is not None  # prepare() loaded it
                data = raw if not att.spec else mime.split_header(raw)[1]
            else:
                tree = load.tree()
                assert tree is not None  # prepare() loaded it
                data = mime.section_bytes(tree, att.numbers, att.spec, att.fields)
            data, origin = _partial(data, att)
            yield sep + b"BODY[" + att.section.encode() + b"]" + origin + b" {%d}\r\n" % len(data)
            yield data
        elif name == "ENVELOPE":
            yield sep + b"ENVELOPE " + (load.envelope() or b"NIL")
        elif name in ("BODYSTRUCTURE", "BODY"):
            yield sep + name.encode() + b" " + (load.structure(name == "BODYSTRUCTURE") or b"NIL")
        elif name == "RFC822.HEADER":
            header = load.header() or b""
            yield sep + b"RFC822.HEADER {%d}\r\n" % len(header)
            yield header
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
