"""BINARY (RFC 3516): a part's content with its transfer encoding undone, piece by piece.

:func:`decode` turns the encoded octets of a part (an iterable of pieces, e.g. file ranges)
into decoded pieces with bounded memory: base64 in groups of four, quoted-printable up to a
point where no escape is cut. :func:`measure` gives the decoded size and whether it holds a
NUL (then the response is a ``literal8``). An unknown encoding is :class:`UnknownCTE`.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator

IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
KNOWN = IDENTITY | {"base64", "quoted-printable"}
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_B64 = bytes(c for c in range(256) if c not in _B64)
QP_HOLD = 64 * 1024  # quoted-printable decoded once this much is pending without a line end


class UnknownCTE(Exception):
    """The part's Content-Transfer-Encoding is not one the server can decode."""


def encoding_of(value: str | None) -> str:
    """The normalised Content-Transfer-Encoding; :class:`UnknownCTE` when unknown."""
    cte = (value or "").strip().lower()
    if cte not in KNOWN:
        raise UnknownCTE(cte)
    return cte


def decode(cte: str, pieces: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """The decoded content of ``pieces`` (encoded with ``cte``, see :func:`encoding_of`)."""
    if cte in IDENTITY:
        return (bytes(p) for p in pieces if p)
    if cte == "base64":
        return _base64(pieces)
    return _quoted_printable(pieces)


def _base64(pieces: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """Decoded as ``binascii.a2b_base64`` decodes the whole text: non-alphabet octets are
    skipped; a ``=`` counts as padding only after two or three octets of a quad, and enough
    of them in a row (until the next data octet) end the data."""
    held = b""  # data octets of the quad in progress (and any whole quads not yet decoded)
    pads = 0
    for piece in pieces:
        data = bytes(piece).translate(None, _NOT_B64)
        out = bytearray()
        start = 0
        while True:
            eq = data.find(b"=", start)
            run = data[start:eq] if eq >= 0 else data[start:]
            if run:
                pads = 0
                held += run
                cut = len(held) - len(held) % 4
                if cut:
                    out += binascii.a2b_base64(held[:cut])
                    held = held[cut:]
            if eq < 0:
                break
            start = eq + 1
            quad = len(held)
            if quad >= 2:
                pads += 1
                if quad + pads >= 4:  # the padding of this quad: the end of the data
                    out += binascii.a2b_base64(held + b"=" * (4 - quad))
                    yield bytes(out)
                    return
        if out:
            yield bytes(out)
    if held:
        try:
            yield binascii.a2b_base64(held + b"=" * (-len(held) % 4))
        except binascii.Error:  # a single stray octet: nothing to decode
            return


def _quoted_printable(pieces: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    held = b""
    for piece in pieces:
        data = held + bytes(piece)
        cut = data.rfind(b"\n") + 1
        if not cut and len(data) > QP_HOLD:  # a long line: cut before any escape's end
            eq = data.rfind(b"=", len(data) - 3)
            cut = eq if eq >= 0 else len(data)
        held = data[cut:]
        if cut:
            yield binascii.a2b_qp(data[:cut])
    if held:
        yield binascii.a2b_qp(held)


CONVERTED = frozenset({"base64", "quoted-printable"})


_CTE_FIELD = b"content-transfer-encoding"
_DECIDE_AFTER = 64  # octets of a line enough to tell a field's name (or that it is no CTE)


def relabelled_header(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """A part's header (in pieces) for its decoded content: every Content-Transfer-Encoding
    field (with its folded lines) left out and ``Content-Transfer-Encoding: binary`` added
    last, before the blank line, so the entity stays self-describing (Dovecot does the same).
    Streamed line by line: at most the first :data:`_DECIDE_AFTER` octets of a line are held,
    however long the header or its lines."""
    head = b""  # the start of a line not yet classified
    mode = ""  # "" at a line start; "keep" or "drop" for the rest of the current line
    dropping = False  # the current field is a CTE field (its folded lines go too)
    done = False  # the blank line was passed: the rest goes through as it is
    for piece in pieces:
        data = bytes(piece)
        while data:
            if done:
                yield data
                break
            if mode:
                nl = data.find(b"\n")
                chunk, data = (data, b"") if nl < 0 else (data[:nl + 1], data[nl + 1:])
                if mode == "keep":
                    yield chunk
                if nl >= 0:
                    mode = ""
                continue
            head += data
            data = b""
            nl = head.find(b"\n")
            if head in (b"\r",) or (nl < 0 and b":" not in head and len(head) < _DECIDE_AFTER
                                     and head[:1] not in (b" ", b"\t")):
                continue  # not enough of the line to tell yet
            if head.startswith((b"\r\n", b"\n")):  # the blank line: the header ends
                yield b"Content-Transfer-Encoding: binary\r\n"
                done = True
                data = head
                head = b""
                continue
            if head[:1] not in (b" ", b"\t"):  # a field (a folded line keeps the field's fate)
                line = head if nl < 0 else head[:nl + 1]
                dropping = line.split(b":", 1)[0].strip().lower() == _CTE_FIELD
            mode = "drop" if dropping else "keep"
            data, head = head, b""
    if done:
        return
    tail = b""  # what ends the header when its last line has no line end
    if head:  # a short last line, not yet classified
        if head[:1] not in (b" ", b"\t"):
            dropping = head.split(b":", 1)[0].strip().lower() == _CTE_FIELD
        if not dropping:
            tail = head + b"\r\n"
    elif mode == "keep":  # a kept line whose end never came
        tail = b"\r\n"
    yield tail + b"Content-Transfer-Encoding: binary\r\n"


def measure(decoded: Iterable[bytes]) -> tuple[int, bool]:
    """(size, holds a NUL octet) of decoded pieces."""
    size, nul = 0, False
    for piece in decoded:
        size += len(piece)
        nul = nul or b"\0" in piece
    return size, nul


def window(pieces: Iterable[bytes], start: int, length: int) -> Iterator[bytes]:
    """The octets ``start`` to ``start + length`` of a stream of pieces."""
    pos = 0
    end = start + length
    for piece in pieces:
        if pos >= end:
            return
        lo, hi = max(start - pos, 0), min(end - pos, len(piece))
        if lo < hi:
            yield piece[lo:hi]
        pos += len(piece)
