"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans I/O.

A proxy in front of a daemon (HAProxy, a load balancer, a TLS front) sends one header before
the client's first byte, naming the client's address and the address the client connected to.
:func:`parse` takes the bytes received so far and returns the header and its length once it is
complete, ``None`` while more is needed, and raises :class:`ProxyHeaderError` as soon as the
bytes cannot be a valid header. It never looks further than :data:`MAX_HEADER` octets, so the
caller's buffer is bounded.

- Version 1: ``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`` (at most 107 octets), or
  ``PROXY UNKNOWN ...\\r\\n``.
- Version 2: a 12-octet signature, version/command, family/protocol, a 16-bit length, then the
  addresses and TLVs (skipped). ``LOCAL`` (the proxy's own health check) and families other
  than TCP over IPv4/IPv6 carry no client: :attr:`ProxyHeader.source` is ``None`` and the
  connection's own addresses stay in force, as the spec says.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's bound for a v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
#: the largest v2 address block accepted (addresses plus TLVs); HAProxy's own stay far below
V2_MAX_BLOCK = 2048
MAX_HEADER = V2_FIXED + V2_MAX_BLOCK

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    """``source``: the client's (ip, port); ``dest``: the address it connected to. Both
    ``None`` when the header names no client (v1 UNKNOWN, v2 LOCAL or another family)."""

    version: int
    source: Address | None
    dest: Address | None


def parse(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    """The header at the start of ``data`` and its length; ``None`` while incomplete."""
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] == V2_SIGNATURE[:n]:
        return _parse_v2(data) if len(data) >= V2_FIXED else None
    n = min(len(data), len(V1_PREFIX))
    if data[:n] == V1_PREFIX[:n]:
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY protocol signature")


def _parse_v1(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    end = bytes(data[:V1_MAX]).find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyHeaderError("v1 header without CRLF within 107 octets")
        return None
    try:
        line = bytes(data[:end]).decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(1, None, None), end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 header: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if fields[1] == "TCP4" else 6
    src, dst = _ip(fields[2], version), _ip(fields[3], version)
    return ProxyHeader(1, (src, _port(fields[4])), (dst, _port(fields[5]))), end + 2


def _ip(text: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError("v1 header: bad address") from None
    if addr.version != version:
        raise ProxyHeaderError("v1 header: address of the wrong family")
    return str(addr)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or \
            (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError("v1 header: bad port")
    return int(text)


def _parse_v2(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2 or ver_cmd & 0x0F > 1:
        raise ProxyHeaderError("v2 header: unknown version or command")
    if length > V2_MAX_BLOCK:
        raise ProxyHeaderError(f"v2 header: address block of {length} octets (limit "
                               f"{V2_MAX_BLOCK})")
    total = V2_FIXED + length
    if len(data) < total:
        return None
    if ver_cmd & 0x0F == 0:  # LOCAL: the proxy speaking for itself
        return ProxyHeader(2, None, None), total
    block = bytes(data[V2_FIXED:total])
    if fam == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("v2 header: short IPv4 address block")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        return ProxyHeader(2, (str(ipaddress.IPv4Address(src)), sport),
                           (str(ipaddress.IPv4Address(dst)), dport)), total
    if fam == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("v2 header: short IPv6 address block")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        return ProxyHeader(2, (str(ipaddress.IPv6Address(src)), sport),
                           (str(ipaddress.IPv6Address(dst)), dport)), total
    return ProxyHeader(2, None, None), total  # UNSPEC, UDP, unix: no client address to use
