"""Message structure for FETCH: MIME parts over the CRLF bytes, ENVELOPE, BODYSTRUCTURE, sections.

Parts are found on the raw bytes (not re-serialised), so offsets, sizes and line counts are
exact; header fields are read with the stdlib ``email`` parser (compat32, raw values kept).
"""

from __future__ import annotations

import email.utils
import re
from email.message import Message
from email.parser import HeaderParser

from ..store import addrlist
from ..store.mimepolicy import UNFOLDING
from . import wire

_HEADER_PARSER = HeaderParser(policy=UNFOLDING)
MAX_PARTS_DEPTH = 20


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body)."""
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    idx = raw.find(b"\r\n\r\n")
    if idx < 0:
        return raw, b""
    return raw[:idx + 4], raw[idx + 4:]


def parse_headers(header: bytes) -> Message:
    """Header fields as latin-1 text, so that ``value.encode("latin-1")`` is the raw bytes."""
    return _HEADER_PARSER.parsestr(header.decode("latin-1"), headersonly=True)


class Part:
    """A MIME entity: header, body, children (multipart) or an encapsulated message."""

    def __init__(self, raw: bytes, default_type: str = "text/plain", depth: int = 0) -> None:
        self.raw = raw
        self.header, self.body = split_header(raw)
        self.msg = parse_headers(self.header)
        ctype = self.msg.get_content_type() if self.msg.get("content-type") else default_type
        if "/" not in ctype:
            ctype = "text/plain"
        self.type, _, self.subtype = ctype.partition("/")
        self.children: list[Part] = []
        self.message: Part | None = None
        if depth >= MAX_PARTS_DEPTH:
            return
        if self.type == "multipart":
            boundary = self.msg.get_param("boundary")
            if isinstance(boundary, tuple):
                boundary = email.utils.collapse_rfc2231_value(boundary)
            if boundary:
                child_default = "message/rfc822" if self.subtype == "digest" else "text/plain"
                self.children = [Part(b, child_default, depth + 1)
                                 for b in split_multipart(self.body, str(boundary))]
            if not self.children:  # a multipart with no parts: treat as text
                self.type, self.subtype = "text", "plain"
        elif self.type == "message" and self.subtype == "rfc822":
            self.message = Part(self.body, "text/plain", depth + 1)

    @property
    def body_size(self) -> int:
        return len(self.body)

    @property
    def body_lines(self) -> int:
        return _lines(self.body)

    def params(self) -> list[tuple[str, bytes]]:
        if not self.msg.get("content-type"):
            return [("charset", b"us-ascii")] if self.type == "text" else []
        return _params(self.msg, "content-type")


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts between ``--boundary`` delimiter lines (the CRLF before a delimiter excluded)."""
    delim = re.compile(rb"(?:\A|\r\n)--" + re.escape(boundary.encode("latin-1", "replace"))
                       + rb"(--)?[ \t]*(?:\r\n|\Z)")
    parts = []
    start = None
    for m in delim.finditer(body):
        if start is not None:
            parts.append(body[start:m.start()])
        if m.group(1):
            return parts
        start = m.end()
    if start is not None:
        parts.append(body[start:])
    return parts


def _params(msg: Message, header: str) -> list[tuple[str, bytes]]:
    """Parameters of a header; RFC 2231 values decoded to UTF-8, others kept raw."""
    out = []
    for name, value in msg.get_params(header=header)[1:] or []:
        if isinstance(value, tuple):
            raw = email.utils.collapse_rfc2231_value(value).encode("utf-8", "replace")
        else:
            raw = str(value).encode("latin-1", "replace")
        out.append((name, raw))
    return out


# -- ENVELOPE --------------------------------------------------------------------------------
_FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.M)
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")


def header_fields_map(header: bytes) -> dict[str, list[str]]:
    """Field name (lower case) → raw values (latin-1 text, unfolded, trimmed) in order."""
    out: dict[str, list[str]] = {}
    for m in _FIELD_RE.finditer(header):
        name = m.group(1).decode("latin-1").lower()
        value = _FOLD_RE.sub("", m.group(2).decode("latin-1")).strip()
        out.setdefault(name, []).append(value)
    return out


def _first(fields: dict[str, list[str]], name: str) -> bytes | None:
    values = fields.get(name)
    return values[0].encode("latin-1") if values else None


def _address(a: addrlist.Address) -> bytes:
    def enc(v: str | None) -> bytes:
        return wire.nstring(v.encode("latin-1", "replace") if v is not None else None)
    return (b"(" + enc(a.name) + b" " + enc(a.route) + b" " + enc(a.local) + b" "
            + enc(a.domain) + b")")


def _addresses(fields: dict[str, list[str]], name: str) -> bytes:
    values = fields.get(name)
    if not values:
        return b"NIL"
    out = []
    for value in values:
        for a in addrlist.parse(value):
            if a.group is not None:  # group start (NIL NIL name NIL) … end (NIL NIL NIL NIL)
                out.append(b"(NIL NIL " + wire.nstring(a.group.encode("latin-1", "replace")
                                                       if a.group else None) + b" NIL)")
            else:
                out.append(_address(a))
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope_from_header(header: bytes) -> bytes:
    """ENVELOPE (RFC 3501 section 7.4.2) of a message header; values are sent raw."""
    fields = header_fields_map(header)
    frm = _addresses(fields, "from")
    sender = _addresses(fields, "sender")
    reply_to = _addresses(fields, "reply-to")
    items = [wire.nstring(_first(fields, "date")), wire.nstring(_first(fields, "subject")),
             frm, frm if sender == b"NIL" else sender, frm if reply_to == b"NIL" else reply_to,
             _addresses(fields, "to"), _addresses(fields, "cc"), _addresses(fields, "bcc"),
             wire.nstring(_first(fields, "in-reply-to")),
             wire.nstring(_first(fields, "message-id"))]
    return b"(" + b" ".join(items) + b")"


def envelope(part: Part) -> bytes:
    return envelope_from_header(part.header)


def _unfold(value: str | None) -> bytes | None:
    if value is None:
        return None
    return _FOLD_RE.sub("", str(value)).strip().encode("latin-1", "replace")


def _header_raw(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return None if value is None else str(value)


# -- BODYSTRUCTURE ---------------------------------------------------------------------------
def _plist(pairs: list[tuple[str, bytes]]) -> bytes:
    if not pairs:
        return b"NIL"
    return b"(" + b" ".join(wire.quote(k.upper()) + b" " + wire.quote(v) for k, v in pairs) + b")"


def _disposition(part: Part) -> bytes:
    value = part.msg.get("content-disposition")
    if not value:
        return b"NIL"
    disp = str(value).split(";", 1)[0].strip()
    params = _params(part.msg, "content-disposition")
    return b"(" + wire.quote(disp.upper() or "ATTACHMENT") + b" " + _plist(params) + b")"


def _language(part: Part) -> bytes:
    value = part.msg.get("content-language")
    if not value:
        return b"NIL"
    langs = [v.strip() for v in str(value).split(",") if v.strip()]
    return b"(" + b" ".join(wire.quote(v) for v in langs) + b")" if langs else b"NIL"


def _lines(body: bytes) -> int:
    return body.count(b"\n")


def bodystructure(part: Part, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of a part."""
    msg = part.msg
    if part.children:
        inner = b"".join(bodystructure(c, extended) for c in part.children)
        out = inner + b" " + wire.quote(part.subtype.upper())
        if extended:
            out += (b" " + _plist(part.params()) + b" " + _disposition(part) + b" "
                    + _language(part) + b" "
                    + wire.nstring(_unfold(_header_raw(msg, "content-location"))))
        return b"(" + out + b")"
    fields = [wire.quote(part.type.upper()), wire.quote(part.subtype.upper()),
              _plist(part.params()),
              wire.nstring(_unfold(_header_raw(msg, "content-id"))),
              wire.nstring(_unfold(_header_raw(msg, "content-description"))),
              wire.quote((str(msg.get("content-transfer-encoding") or "7BIT")).strip().upper()),
              b"%d" % part.body_size]
    if part.message is not None:
        fields += [envelope(part.message), bodystructure(part.message, extended),
                   b"%d" % part.body_lines]
    elif part.type == "text":
        fields.append(b"%d" % part.body_lines)
    if extended:
        fields += [wire.nstring(_unfold(_header_raw(msg, "content-md5"))), _disposition(part),
                   _language(part), wire.nstring(_unfold(_header_raw(msg, "content-location")))]
    return b"(" + b" ".join(fields) + b")"


# -- sections ---------------------------------------------------------------------------------
def header_fields(header: bytes, names: list[str], *, exclude: bool) -> bytes:
    """The header lines whose field name is (or, with ``exclude``, is not) in ``names``."""
    wanted = {n.lower() for n in names}
    out = []
    keep = False
    for line in header.split(b"\r\n")[:-1]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line + b"\r\n")
            continue
        name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
        keep = (name in wanted) != exclude
        if keep:
            out.append(line + b"\r\n")
    return b"".join(out) + b"\r\n"


def find_part(root: Part, numbers: list[int]) -> Part | None:
    """The part a section number path refers to (None when it does not exist)."""
    part = root
    for i, n in enumerate(numbers):
        if i > 0 and part.message is not None:
            part = part.message
        if part.children:
            if n > len(part.children):
                return None
            part = part.children[n - 1]
        elif n != 1:
            return None
    return part


def section_bytes(root: Part, numbers: list[int], spec: str, names: list[str]) -> bytes:
    """Bytes of ``BODY[<numbers>.<spec>]``; empty when the part does not exist."""
    part = find_part(root, numbers) if numbers else root
    if part is None:
        return b""
    if not spec:
        return part.raw if not numbers else part.body
    if spec == "MIME":
        return part.header
    if numbers:
        if part.message is None:
            return b""
        part = part.message
    if spec == "HEADER":
        return part.header
    if spec == "TEXT":
        return part.body
    if spec == "HEADER.FIELDS":
        return header_fields(part.header, names, exclude=False)
    if spec == "HEADER.FIELDS.NOT":
        return header_fields(part.header, names, exclude=True)
    return b""
