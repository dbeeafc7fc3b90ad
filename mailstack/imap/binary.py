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


def relabelled_header(header: bytes) -> bytes:
    """A part's header for its decoded content: every Content-Transfer-Encoding field
    (with its folded lines) left out and ``Content-Transfer-Encoding: binary`` added last,
    before the blank line, so the entity stays self-describing (Dovecot does the same).
    Line ends are kept as they are (CRLF on the wire)."""
    lines = header.splitlines(keepends=True)
    blank = len(lines)
    while blank and lines[blank - 1] in (b"\r\n", b"\n"):
        blank -= 1
    out: list[bytes] = []
    dropping = False
    for line in lines[:blank]:
        if line[:1] in (b" ", b"\t"):  # a folded line belongs to the field before it
            if not dropping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name == b"content-transfer-encoding"
        if not dropping:
            out.append(line)
    out.append(b"Content-Transfer-Encoding: binary\r\n")
    return b"".join(out + lines[blank:])


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
