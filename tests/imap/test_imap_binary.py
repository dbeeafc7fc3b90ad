"""BINARY (RFC 3516) over real sockets with imaplib: decoded parts, literal8, BINARY.SIZE,
partial ranges, UNKNOWN-CTE and bad syntax, on small messages and on big ones (whose parts
are decoded from file ranges)."""

from __future__ import annotations

import base64
import binascii
import imaplib
import os

import pytest

from mailstack.imap.fetch import STREAM_OVER
from tests.imap.conftest import PASSWORD, USER

BLOB = bytes(range(256)) * 4 + b"\0end\r\n\n\r"  # NULs, bare CR and LF: only a literal8 holds it
TEXT = "Grüße = café\n".encode()


def _message(blob: bytes) -> bytes:
    b64 = base64.encodebytes(blob)  # 76-character lines
    qp = binascii.b2a_qp(TEXT)
    return (b"From: a@example.test\nSubject: binary\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=zz\n\n"
            b"--zz\nContent-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: quoted-printable\n\n" + qp + b"\n"
            b"--zz\nContent-Type: application/octet-stream\n"
            b"Content-Transfer-Encoding: base64\n\n" + b64 +
            b"--zz\nContent-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nbegin\n"
            b"--zz\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner body\n"
            b"--zz--\n")


def _client(imap) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", imap.port, timeout=60)
    c.login(USER, PASSWORD)
    assert c.select("INBOX")[0] == "OK"
    return c


def _literal(data) -> bytes:
    return data[0][1]


@pytest.mark.parametrize("size", ["small", "big"])
def test_binary_sections(imap, size: str) -> None:
    blob = BLOB if size == "small" else os.urandom(STREAM_OVER + 4321) + BLOB
    imap.deliver(_message(blob))
    c = _client(imap)
    assert b" BINARY " in c.capability()[1][0]
    typ, data = c.fetch("1", "(BINARY.PEEK[2])")
    assert typ == "OK"
    assert b"BINARY[2] ~{%d}" % len(blob) in data[0][0], data[0][0]  # NULs: a literal8
    assert _literal(data) == blob
    typ, data = c.fetch("1", "(BINARY.SIZE[2] BINARY.SIZE[1] BINARY.SIZE[9])")
    assert typ == "OK"
    line = data[0]
    assert b"BINARY.SIZE[2] %d" % len(blob) in line and b"BINARY.SIZE[1] %d" % len(
        TEXT.replace(b"\n", b"\r\n")) in line and b"BINARY.SIZE[9] 0" in line, line
    typ, data = c.fetch("1", "(BINARY.PEEK[1])")  # quoted-printable, no NUL: a plain literal
    assert b"BINARY[1] {" in data[0][0] and _literal(data) == TEXT.replace(b"\n", b"\r\n")
    typ, data = c.fetch("1", "(BINARY.PEEK[2]<250.20>)")
    assert b"BINARY[2]<250> ~{20}" in data[0][0] and _literal(data) == blob[250:270]
    typ, data = c.fetch("1", "(BINARY.PEEK[4])")  # a message part is sent as it is
    assert _literal(data) == b"Subject: inner\r\n\r\ninner body"
    typ, data = c.fetch("1", "(BINARY.PEEK[9])")
    assert typ == "OK" and b"BINARY[9] NIL" in data[0], data
    typ, data = c.fetch("1", "(BINARY.PEEK[3])")  # x-uuencode: the server cannot decode it
    assert typ == "NO" and b"[UNKNOWN-CTE]" in data[0], data
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    typ, data = c.fetch("1", "(BINARY[1])")  # not PEEK: sets \Seen
    assert typ == "OK" and any(b"\\Seen" in (d[0] if isinstance(d, tuple) else d)
                               for d in data), data
    c.logout()


@pytest.mark.parametrize("size", ["small", "big"])
def test_binary_of_a_single_part_message(imap, size: str) -> None:
    """BINARY[] of a base64 message: the decoded body under a header whose
    Content-Transfer-Encoding (folded, here) became ``binary``, as Dovecot answers; BINARY.SIZE
    counts that; an identity-encoded message comes back as it is."""
    payload = b"\x00\x01\x02 binary payload \xff" * (1 if size == "small" else STREAM_OVER // 20)
    imap.deliver(b"Subject: one\nContent-Transfer-Encoding:\n BASE64\n"
                 b"Content-Type: application/octet-stream\n\n" + base64.encodebytes(payload))
    imap.deliver(b"Subject: two\nContent-Transfer-Encoding: 8bit\n\nplain\n")
    imap.deliver(b"Subject: three\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9\n")
    c = _client(imap)
    typ, data = c.fetch("1", "(BINARY.PEEK[1] BINARY.PEEK[] BINARY.SIZE[])")
    assert typ == "OK"
    assert data[0][1] == payload
    header = (b"Subject: one\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Transfer-Encoding: binary\r\n\r\n")
    assert data[1][1] == header + payload
    assert b"BINARY.SIZE[] %d" % len(header + payload) in data[2]
    typ, data = c.fetch("2", "(BINARY.PEEK[])")
    assert data[0][1] == b"Subject: two\r\nContent-Transfer-Encoding: 8bit\r\n\r\nplain\r\n"
    typ, data = c.fetch("3", "(BINARY.PEEK[] BINARY.SIZE[])")
    whole = b"Subject: three\r\nContent-Transfer-Encoding: binary\r\n\r\ncaf\xc3\xa9\r\n"
    assert data[0][1] == whole and b"BINARY.SIZE[] %d" % len(whole) in data[1], data
    c.logout()


def test_binary_bad_syntax(imap) -> None:
    """(BINARY[1.MIME], BINARY[TEXT] and BINARY[1]<5> are not RFC 3516 syntax but are
    accepted, as Dovecot accepts them: see test_binary_body_sections.)"""
    imap.deliver(b"Subject: x\n\nbody\n")
    c = _client(imap)
    for bad in ("BINARY.SIZE[1]<0.5>", "BINARY.SIZE[1]<5>", "BINARY[0]", "BINARY[1.]",
                "BINARY.PEEK", "BINARY[1.FOO]", "BINARY[MIME]", "BINARY[1]<5", "BINARY[1]<>",
                "BODY[1]<5>"):
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            c.fetch("1", f"({bad})")
    assert c.noop()[0] == "OK"
    c.logout()


NESTED_B64 = base64.encodebytes(BLOB)


def _nested(filler: bytes) -> bytes:
    """A multipart whose second part is a message/rfc822 holding a base64 message."""
    return (b"From: outer@example.test\nSubject: outer\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=\"ab\n cd\"\n\nprologue\n"
            b"--ab cd\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable"
            b"\n\nsoup=3Dhot\n"
            b"--ab cd\nContent-Type: message/rfc822\n\n"
            b"From: inner@example.test\nSubject: inner\nX-Keep: yes\n"
            b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
            + NESTED_B64 + b"--ab cd\nContent-Type: application/octet-stream\n\n" + filler
            + b"\n--ab cd--\nepilogue\n")


@pytest.mark.parametrize("size", ["small", "big"])
def test_binary_body_sections(imap, size: str) -> None:
    """BINARY with BODY's section texts, accepted as Dovecot accepts them (beyond RFC 3516's
    grammar): HEADER, HEADER.FIELDS[.NOT] and MIME give what BODY gives; TEXT of a single-part
    message is its decoded body, of a multipart the body as it is; <start> alone runs to the
    end. BINARY.SIZE agrees with each."""
    filler = b"x" * (STREAM_OVER + 10) if size == "big" else b"x"
    imap.deliver(_nested(filler))
    c = _client(imap)
    same_as_body = ["2.HEADER", "2.MIME", "1.MIME", "2.HEADER.FIELDS (subject X-KEEP from)",
                    "2.HEADER.FIELDS.NOT (Subject)", "HEADER", "HEADER.FIELDS (Subject)",
                    "TEXT", "2.1.MIME", "1.HEADER"]
    for section in same_as_body:
        typ, data = c.fetch("1", f"(BINARY.PEEK[{section}] BINARY.SIZE[{section}] "
                                 f"BODY.PEEK[{section}])")
        assert typ == "OK", (section, data)
        binary, body = data[0][1], data[1][1]
        assert binary == body, (section, binary, body)
        assert b"BINARY.SIZE[%s] %d" % (section.encode(), len(body)) in data[1][0], data
    typ, data = c.fetch("1", "(BINARY.PEEK[2.HEADER.FIELDS (subject)])")
    assert data[0][1] == b"Subject: inner\r\n\r\n"
    assert b"prologue" in c.fetch("1", "(BINARY.PEEK[TEXT])")[1][0][1]  # multipart: as it is
    typ, data = c.fetch("1", "(BINARY.PEEK[2.TEXT] BINARY.SIZE[2.TEXT])")
    assert typ == "OK" and data[0][1] == BLOB, data  # the inner message's body, decoded
    assert b"~{%d}" % len(BLOB) in data[0][0]
    assert b"BINARY.SIZE[2.TEXT] %d" % len(BLOB) in data[1], data
    typ, data = c.fetch("1", "(BINARY.PEEK[2.TEXT]<1000> BINARY.PEEK[1]<5>)")
    assert data[0][1] == BLOB[1000:] and b"BINARY[2.TEXT]<1000> ~{" in data[0][0], data
    assert data[1][1] == b"hot" and b"BINARY[1]<5> {3}" in data[1][0], data
    typ, data = c.fetch("1", "(BINARY.PEEK[1.TEXT] BINARY.PEEK[9.MIME] BINARY.PEEK[TEXT]<9>)")
    assert typ == "OK" and data[0][1] == b"" and b"BINARY[9.MIME] NIL" in data[1][0], data
    assert data[1][1].startswith(b"\n--ab cd\r\n") and data[1][1].endswith(b"epilogue\r\n")
    c.logout()


async def test_binary_with_imapclient(imap) -> None:
    import asyncio

    from imapclient import IMAPClient

    imap.deliver(_message(BLOB))

    def go() -> dict:
        with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
            c.login(USER, PASSWORD)
            c.select_folder("INBOX")
            # (imapclient 4.1 does not parse a literal8, so no part with a NUL here)
            got = c.fetch([1], ["BINARY.SIZE[2]", "BINARY.PEEK[1]", "BINARY.PEEK[4]"])[1]
            c.logout()
            return got

    got = await asyncio.to_thread(go)
    assert got[b"BINARY.SIZE[2]"] == len(BLOB)
    assert got[b"BINARY[1]"] == TEXT.replace(b"\n", b"\r\n")
    assert got[b"BINARY[4]"] == b"Subject: inner\r\n\r\ninner body"


def test_others_are_served_while_a_big_part_is_decoded(imap) -> None:
    """A 20 MiB attachment decoded for one session does not hold the event loop: another
    session's NOOP is answered while the first response is still being sent."""
    import socket
    import threading

    imap.deliver(_message(os.urandom(20 << 20)))
    a = socket.create_connection(("127.0.0.1", imap.port), timeout=60)
    a.recv(4096)
    a.sendall(f"l LOGIN {USER} {PASSWORD}\r\ns SELECT INBOX\r\n".encode())
    got = b""
    while b"s OK" not in got:
        got += a.recv(65536)
    b = _client(imap)
    a.sendall(b"f FETCH 1 (BINARY.PEEK[2])\r\n")
    first = a.recv(65536)  # the response has started
    assert first
    done = threading.Event()
    tail = bytearray(first)

    def drain() -> None:
        while not tail.endswith(b"f OK FETCH completed\r\n"):
            data = a.recv(1 << 20)
            if not data:
                break
            tail.extend(data[-64:] if len(tail) > 64 else data)
            del tail[:-64]
        done.set()

    reader = threading.Thread(target=drain)
    reader.start()
    assert b.noop()[0] == "OK"
    noop_before_fetch_end = not done.is_set()
    reader.join()
    assert tail.endswith(b"f OK FETCH completed\r\n"), bytes(tail)
    assert noop_before_fetch_end
    b.logout()
    a.close()
