"""The PROXY protocol parser (v1 and v2): complete, incomplete and malformed headers."""

from __future__ import annotations

import socket
import struct

import pytest

from mailstack.runtime.proxyproto import (
    MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse,
)


def v2(cmd: int = 1, fam: int = 0x11, block: bytes | None = None) -> bytes:
    if block is None:
        block = socket.inet_aton("203.0.113.7") + socket.inet_aton("192.0.2.1") + \
            struct.pack("!HH", 40000, 993)
    return V2_SIGNATURE + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(block)) + block


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 143\r\n"
    assert parse(line + b"a LOGIN") == (
        ProxyHeader(1, ("203.0.113.7", 40000), ("192.0.2.1", 143)), len(line))
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n"
    assert parse(line) == (ProxyHeader(1, ("2001:db8::7", 1), ("2001:db8::1", 65535)),
                           len(line))
    assert parse(b"PROXY UNKNOWN whatever\r\n") == (ProxyHeader(1, None, None), 24)


def test_v2_ipv4_ipv6_local_and_tlvs() -> None:
    assert parse(v2()) == (ProxyHeader(2, ("203.0.113.7", 40000), ("192.0.2.1", 993)), 28)
    six = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + \
        socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", 5, 6)
    tlv = b"\x04\x00\x03abc"  # a NOOP TLV after the addresses: skipped
    header, size = parse(v2(fam=0x21, block=six + tlv) + b"rest")  # type: ignore[misc]
    assert header == ProxyHeader(2, ("2001:db8::7", 5), ("::1", 6)) and size == 16 + 36 + 6
    assert parse(v2(cmd=0, fam=0, block=b"")) == (ProxyHeader(2, None, None), 16)
    assert parse(v2(fam=0x31, block=b"x" * 216)) == (ProxyHeader(2, None, None), 232)  # unix


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 143\r\n",
    v2(),
])
def test_incomplete_headers_ask_for_more(header: bytes) -> None:
    for n in range(len(header)):
        assert parse(header[:n]) is None, n


@pytest.mark.parametrize("data", [
    b"EHLO x\r\n",  # no header at all
    b"GET / HTTP/1.1\r\n",
    b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n",  # a field missing
    b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",  # the wrong family
    b"PROXY TCP4 203.0.113.7 192.0.2.1 040000 143\r\n",  # a leading zero
    b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 143\r\n",
    b"PROXY TCP4 203.0.113.7 192.0.2.1 4x 143\r\n",
    b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 143\n",  # LF without CR
    b"PROXY TCP4 " + b"1" * 120,  # no CRLF within 107 octets
    b"PROXY TCP4 \xff.0.0.1 192.0.2.1 1 2\r\n",
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in a v2 header
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # command 2
    v2(block=b"\x00" * 8),  # too short for IPv4
    V2_SIGNATURE + b"\x21\x11\xff\xff",  # a 64 KiB block announced: refused at once
])
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_buffer_bound() -> None:
    """Whatever arrives, an incomplete header is never longer than MAX_HEADER."""
    block = b"\x00" * (MAX_HEADER - 16)
    assert parse(v2(block=block)) is not None
    assert parse(v2(block=block)[:-1]) is None
    with pytest.raises(ProxyHeaderError):
        parse(v2(block=block + b"\x00"))
