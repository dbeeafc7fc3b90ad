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
    """Non-alphabet octets are skipped and decoding stops at the first padding, as
    ``binascii.a2b_base64`` does on the whole text."""
    held = b""
    for piece in pieces:
        data = held + bytes(piece).translate(None, _NOT_B64)
        pad = data.find(b"=")
        if pad >= 0:
            group = pad - pad % 4
            last = data[group:group + 4]
            yield binascii.a2b_base64(data[:group] + last + b"=" * (4 - len(last)))
            return
        cut = len(data) - len(data) % 4
        held = data[cut:]
        if cut:
            yield binascii.a2b_base64(data[:cut])
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
