"""FETCH: parsing fetch attributes and rendering ``* n FETCH (...)`` responses."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import mime, wire
from .cache import BODY, BODYSTRUCTURE, FolderCache
from .mailbox import Msg, Selected
from .wire import ParseError, Parser

_SIMPLE = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
           "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ"}
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
        return self.name not in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "UID", "MODSEQ")


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
    raise ParseError(f"unknown fetch attribute {word or '?'}")


def parse_atts(p: Parser) -> list[Att]:
    """``fetch-att`` / ``(fetch-att *(SP fetch-att))`` / ALL / FAST / FULL."""
    if p.maybe_open():
        atts = [parse_att(p)]
        while p.maybe_sp():
            atts.append(parse_att(p))
        p.close_paren()
        return atts
    start = p.pos
    word = p._run(bytes(c for c in range(0x21, 0x7F) if c not in b"()[]<> ")).decode().upper()
    if word in _MACROS:
        return [Att(n) for n in _MACROS[word]]
    p.pos = start
    return [parse_att(p)]


class Loaded:
    """Lazily read message data for one FETCH response."""

    __slots__ = ("cache", "data", "msg", "part", "sel")

    def __init__(self, sel: Selected, msg: Msg) -> None:
        self.sel, self.msg = sel, msg
        self.data: bytes | None = None
        self.part: mime.Part | None = None
        self.cache = FolderCache.for_root(sel.maildir.root)

    def header(self) -> bytes | None:
        if self.part is not None:
            return self.part.header
        return self.cache.header(self.msg.key, self._path())

    def envelope(self) -> bytes | None:
        if self.part is not None:
            return mime.envelope(self.part)
        return self.cache.envelope(self.msg.key, self._path())

    def structure(self, extended: bool) -> bytes | None:
        field = BODYSTRUCTURE if extended else BODY
        cached = self.cache.get(self.msg.key, field)
        if cached is not None:
            return cached
        tree = self.tree()
        if tree is None:
            return None
        value = mime.bodystructure(tree, extended)
        self.cache.put(self.msg.key, field, value)
        return value

    def _path(self):
        path = self.sel.path(self.msg)
        if not path.exists():
            found = self.sel.maildir.find(self.msg.key)
            if found is not None:
                return found.path(self.sel.maildir.root)
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


def _partial(data: bytes, att: Att) -> tuple[bytes, bytes]:
    if att.partial is None:
        return data, b""
    start, length = att.partial
    return data[start:start + length], b"<%d>" % start


def render(sel: Selected, seq: int, msg: Msg, atts: list[Att], *, uid: bool,
           modseq: bool) -> bytes | None:
    """The ``* seq FETCH (...)`` line for one message; None when the message is gone."""
    items: list[bytes] = []
    names = {a.name for a in atts}
    if uid and "UID" not in names:
        items.append(b"UID %d" % msg.uid)
    load = Loaded(sel, msg)
    for att in atts:
        name = att.name
        if name == "UID":
            items.append(b"UID %d" % msg.uid)
        elif name == "FLAGS":
            items.append(b"FLAGS (" + " ".join(sel.flags(msg)).encode() + b")")
        elif name == "MODSEQ":
            items.append(b"MODSEQ (%d)" % msg.modseq)
        elif name == "INTERNALDATE":
            items.append(b'INTERNALDATE "' + wire.imap_datetime(sel.internal_date(msg)).encode()
                         + b'"')
        elif name == "RFC822.SIZE":
            items.append(b"RFC822.SIZE %d" % sel.size(msg))
        elif att.section is not None:
            if not att.numbers and att.spec.startswith("HEADER"):
                header = load.header()
                if header is None:
                    return None
                if att.spec == "HEADER":
                    data = header
                else:
                    data = mime.header_fields(header, att.fields,
                                              exclude=att.spec.endswith(".NOT"))
            elif not att.numbers and att.spec in ("", "TEXT"):  # the whole message or its
                raw = load.raw()  # text: no MIME parse needed (Thunderbird's BODY.PEEK[])
                if raw is None:
                    return None
                data = raw if not att.spec else mime.split_header(raw)[1]
            else:
                tree = load.tree()
                if tree is None:
                    return None
                data = mime.section_bytes(tree, att.numbers, att.spec, att.fields)
            data, origin = _partial(data, att)
            items.append(b"BODY[" + att.section.encode() + b"]" + origin + b" "
                         + wire.literal(data))
        elif name == "ENVELOPE":
            env = load.envelope()
            if env is None:
                return None
            items.append(b"ENVELOPE " + env)
        elif name in ("BODYSTRUCTURE", "BODY"):
            value = load.structure(name == "BODYSTRUCTURE")
            if value is None:
                return None
            items.append(name.encode() + b" " + value)
        elif name == "RFC822.HEADER":
            header = load.header()
            if header is None:
                return None
            items.append(b"RFC822.HEADER " + wire.literal(header))
        else:
            tree = load.tree()
            if tree is None:
                return None
            if name == "RFC822":
                items.append(b"RFC822 " + wire.literal(tree.raw))
            elif name == "RFC822.TEXT":
                items.append(b"RFC822.TEXT " + wire.literal(tree.body))
    if modseq and "MODSEQ" not in names:
        items.append(b"MODSEQ (%d)" % msg.modseq)
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"
