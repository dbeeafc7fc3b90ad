"""Property tests: random and mutated input never escapes as an exception and every answer
is a well-formed protocol reply (POP3 command handling, the MIME structure builder); LIST
patterns match as RFC 3501 says, in linear time."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.imap import binary, catenate, mime, mimescan
from mailstack.imap.listmatch import MAX_PATTERN, PatternTooLong, compile_pattern
from mailstack.pop3.protocol import POP3Protocol, Reply

_POP3_WORDS = st.sampled_from([b"USER", b"PASS", b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP",
                               b"RSET", b"QUIT", b"TOP", b"UIDL", b"CAPA", b"STLS", b"AUTH",
                               b"APOP", b"user", b"PLAIN", b"*", b"1", b"0", b"-1",
                               b"99999999999999999999", b"x@y", b"\xff", b"\x00", b""])
_POP3_REPLY = re.compile(rb"^(\+OK|-ERR|\+ )[^\r\n]*\r\n", re.S)


@settings(max_examples=300)
@given(st.lists(st.lists(_POP3_WORDS, max_size=5).map(b" ".join), max_size=12),
       st.booleans())
def test_pop3_commands_always_get_a_well_formed_reply(lines: list[bytes], tls: bool) -> None:
    proto = POP3Protocol(tls=tls, tls_available=not tls, plaintext_auth=True)
    for line in lines:
        event = proto.receive_line(line + b"\r\n")
        if isinstance(event, Reply):
            assert _POP3_REPLY.match(event.data), event


_MIME_PIECES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset=\"utf-8\r\n", b"Content-Type: multipart/alternative\r\n",
    b"From: =?utf-8?q?x?= <a@b>, (c) \"q\\\"\" <@r:x@y>\r\n", b"To: g: a@b, c@d;\r\n",
    b"Subject: =?bogus?x?\xff\xfe?=\r\n", b"\r\n", b"--b\r\n", b"--b--\r\n", b"body\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Disposition: attachment; filename*=x\r\n",
    b"\tcontinued\r\n", b"\xff\x00\x80\r\n", b"Date: not a date\r\n"])


@settings(max_examples=300)
@given(st.lists(_MIME_PIECES, max_size=40).map(b"".join))
def test_mime_structure_builder_never_fails(raw: bytes) -> None:
    part = mime.Part(raw)
    env = mime.envelope(part)
    body = mime.bodystructure(part)
    for out in (env, body):
        assert out.startswith(b"(") and out.endswith(b")")
        assert _balanced(out), out


@settings(max_examples=300)
@given(st.lists(_MIME_PIECES, max_size=40).map(b"".join), st.integers(1, 64))
def test_mime_scan_agrees_with_the_structure_builder(raw: bytes, piece: int) -> None:
    """The streaming scan (big messages) gives the BODYSTRUCTURE the whole parse gives."""
    scanned = mimescan.scan(raw[i:i + piece] for i in range(0, len(raw), piece))
    assert mime.bodystructure(scanned) == mime.bodystructure(mime.Part(raw))


_URL_PIECES = st.sampled_from(["imap://", "/", ";UID=", ";UIDVALIDITY=", ";SECTION=",
                               ";PARTIAL=", ";URLAUTH=", "INBOX", "%", "%4", "%C3%A9", "@",
                               "alice%40example.test", "localhost", ":143", "[::1]", "1",
                               "0", "99999999999", ".", "HEADER.FIELDS%20(A)", "]", "\x00",
                               ";AUTH=*", "..", "&AOk-"])


@settings(max_examples=500)
@given(st.lists(_URL_PIECES, max_size=14).map("".join))
def test_catenate_urls_parse_or_are_refused(url: str) -> None:
    """Any URL is parsed or refused with BadUrl; an accepted one names a UID and a mailbox."""
    try:
        u = catenate.parse_url(url, "alice@example.test", {"localhost", "[::1]"})
    except catenate.BadUrl:
        return
    assert u.uid > 0 and u.mailbox and "]" not in catenate.resp_text(url)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_streamed_decoding_equals_whole_decoding(data: bytes, piece: int) -> None:
    import base64
    import binascii

    for cte, encoded, whole in (
            ("base64", base64.encodebytes(data), data),
            ("quoted-printable", binascii.b2a_qp(data), binascii.a2b_qp(binascii.b2a_qp(data))),
            ("base64", data, binascii.a2b_base64(data, strict_mode=False) if _b64ok(data)
             else None)):
        if whole is None:
            continue
        pieces = [encoded[i:i + piece] for i in range(0, len(encoded), piece)]
        assert b"".join(binary.decode(cte, pieces)) == whole


def _b64ok(data: bytes) -> bool:
    import binascii
    try:
        binascii.a2b_base64(data)
        return True
    except binascii.Error:
        return False


def _balanced(data: bytes) -> bool:
    """Parentheses balance outside quoted strings and {n} literals (RFC 3501 §4)."""
    depth, i = 0, 0
    while i < len(data):
        c = data[i:i + 1]
        if c == b'"':
            i += 1
            while data[i:i + 1] != b'"':
                if data[i:i + 1] in (b"\r", b"\n", b""):
                    return False  # quoted strings hold no line ends
                i += 2 if data[i:i + 1] == b"\\" else 1
        elif c == b"{":
            m = re.match(rb"\{(\d+)\}\r\n", data[i:])
            if not m:
                return False
            i += m.end() + int(m.group(1)) - 1
        elif c == b"(":
            depth += 1
        elif c == b")":
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0


# -- LIST patterns ---------------------------------------------------------------------------
def _reference_match(pattern: str, name: str) -> bool:
    """RFC 3501 6.3.8 taken literally, by plain recursion (exponential, fine for short input):
    ``*`` matches anything, ``%`` anything without the delimiter; a pattern that starts with
    INBOX matches that prefix in any case."""
    if pattern[:5].upper() == "INBOX":
        if name[:5].upper() != "INBOX":
            return False
        pattern, name = pattern[5:], name[5:]

    def go(p: int, n: int) -> bool:
        if p == len(pattern):
            return n == len(name)
        c = pattern[p]
        if c == "*":
            return any(go(p + 1, k) for k in range(n, len(name) + 1))
        if c == "%":
            k = n
            while True:
                if go(p + 1, k):
                    return True
                if k == len(name) or name[k] == ".":
                    return False
                k += 1
        return n < len(name) and name[n] == c and go(p + 1, n + 1)

    return go(0, 0)


_PATTERN_CHARS = "ab.*%INBOXinbox"


@settings(max_examples=3000)
@given(st.text(_PATTERN_CHARS, max_size=5), st.text(_PATTERN_CHARS, max_size=10),
       st.text("ab.INBOXinbox", max_size=12))
def test_list_pattern_matcher_agrees_with_the_rfc(reference: str, pattern: str,
                                                   name: str) -> None:
    got = compile_pattern(reference, pattern).match(name)
    assert got == _reference_match(reference + pattern, name), (reference, pattern, name)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["*", "%", "a", ".", "z"]), min_size=1, max_size=400)
       .map("".join), st.text("a.", min_size=1, max_size=254))
def test_list_pattern_cost_is_linear(pattern: str, name: str) -> None:
    """However the wildcards are arranged, one match is one pass over the name: a backtracking
    regex took 64 s for 75 ``*`` and a ``z`` against a plain name."""
    matcher = compile_pattern("", pattern)
    t0 = time.process_time()
    for _ in range(10):
        matcher.match(name)
    assert time.process_time() - t0 < 0.05  # ~20 µs a match; exponential would be seconds


def test_list_pattern_length_is_capped() -> None:
    compile_pattern("", "a" * MAX_PATTERN)
    with pytest.raises(PatternTooLong):
        compile_pattern("x", "a" * MAX_PATTERN)
