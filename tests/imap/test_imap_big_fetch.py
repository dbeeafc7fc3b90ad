"""Big messages fetched whole are sent from their file in pieces: the bytes must be exactly
what a full read gives (CRLF line ends, a CR LF split across pieces), and memory stays low."""

from __future__ import annotations

import imaplib

from mailstack.imap.fetch import STREAM_OVER, STREAM_PIECE
from tests.imap.conftest import PASSWORD, USER


def _client(imap) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", imap.port, timeout=60)
    c.login(USER, PASSWORD)
    assert c.select("INBOX")[0] == "OK"
    return c


def test_big_message_streamed_whole_is_byte_exact(imap) -> None:
    line = b"x" * 70 + b"\n"
    body = b"Subject: big\n\n" + line * (STREAM_OVER // len(line) + 5000) + b"tail\n"
    imap.deliver(body)
    c = _client(imap)
    typ, data = c.fetch("1", "(RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER])")
    assert typ == "OK"
    expected = body.replace(b"\n", b"\r\n")
    assert data[0][1] == expected
    assert b"RFC822.SIZE %d" % len(expected) in data[0][0]
    assert data[1][1] == b"Subject: big\r\n\r\n"
    typ, data = c.fetch("1", "(BODY.PEEK[] BODY.PEEK[])")  # twice in one FETCH
    assert [d[1] for d in data if isinstance(d, tuple)] == [expected, expected]
    c.logout()


def test_crlf_file_with_a_line_end_across_the_piece_boundary(imap) -> None:
    """A file placed by another tool with CRLF line ends, a CR LF split by the read size."""
    head = b"Subject: crlf\r\n\r\n"
    filler = b"y" * (STREAM_PIECE - len(head) - 1)
    rest = b"z" * 80 + b"\r\n"
    data = head + filler + b"\r\n" + rest * (STREAM_OVER // len(rest) + 10)
    assert data[STREAM_PIECE - 1:STREAM_PIECE + 1] == b"\r\n"
    (imap.inbox.root / "cur" / "1700000000.crlf.host:2,").write_bytes(data)
    c = _client(imap)
    typ, got = c.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK" and got[0][1] == data
    assert b"RFC822.SIZE %d" % len(data) in got[0][0]
    c.logout()


def test_ranges_of_a_big_message_come_from_near_their_start(imap) -> None:
    """Thunderbird fetches big messages as BODY.PEEK[]<start.length>: every range equals the
    same slice of the whole message, across read pieces and CR LF pairs split between them."""
    head = b"Subject: ranges\r\n\r\n"
    filler = b"y" * (STREAM_PIECE - len(head) - 1)
    rest = b"z" * 80 + b"\r\n"
    crlf = head + filler + b"\r\n" + rest * (STREAM_OVER // len(rest) + 10)
    (imap.inbox.root / "cur" / "1700000000.crlf.host:2,").write_bytes(crlf)
    line = b"w" * 60 + b"\n"
    lf = b"Subject: lf\n\n" + line * (2 * STREAM_OVER // len(line))
    imap.deliver(lf)
    c = _client(imap)
    for seq, whole in (("1", crlf), ("2", lf.replace(b"\n", b"\r\n"))):
        for start, length in ((0, 65536), (65536, 65536), (STREAM_PIECE - 3, 10),
                              (STREAM_PIECE + 7, 3 * STREAM_PIECE), (len(whole) - 5, 100),
                              (len(whole) + 10, 5)):
            typ, data = c.fetch(seq, f"(BODY.PEEK[]<{start}.{length}>)")
            assert typ == "OK", data
            got = data[0][1] if isinstance(data[0], tuple) else b""
            assert got == whole[start:start + length], (seq, start, length)
    c.logout()


def _big_multipart() -> bytes:
    line = b"q" * 70 + b"\n"
    return (b"Subject: parts\nContent-Type: multipart/mixed; boundary=BB\n\npreamble\n"
            b"--BB\nContent-Type: text/plain\n\nsmall first part\n"
            b"--BB\nContent-Type: application/octet-stream\nX-Big: yes\n\n"
            + line * (2 * STREAM_OVER // len(line)) +
            b"--BB\nContent-Type: message/rfc822\n\nSubject: inner\nFrom: i@example.test\n\n"
            + line * 2000 +
            b"--BB--\nepilogue\n")


def test_parts_of_a_big_message_equal_the_whole_parse(imap) -> None:
    """BODYSTRUCTURE, part sections, RFC822 and RFC822.TEXT of a message over STREAM_OVER come
    from a scan and file ranges: each equals what the whole-message parser gives."""
    from mailstack.imap import mime

    raw = _big_multipart()
    imap.deliver(raw)
    whole = mime.Part(raw.replace(b"\n", b"\r\n"))
    c = _client(imap)
    typ, data = c.fetch("1", "(BODYSTRUCTURE BODY)")
    assert typ == "OK"
    assert data[0].startswith(b"1 (BODYSTRUCTURE " + mime.bodystructure(whole, True)
                              + b" BODY " + mime.bodystructure(whole, False) + b")"), data
    sections = [([1], ""), ([2], ""), ([2], "MIME"), ([3], "HEADER"), ([3], "TEXT"), ([], "TEXT"),
                ([3], "MIME"), ([4], ""), ([1, 2], "")]
    for numbers, spec in sections:
        name = ".".join([*map(str, numbers), spec] if spec else map(str, numbers))
        typ, data = c.fetch("1", f"(BODY.PEEK[{name}])")
        assert typ == "OK", data
        got = data[0][1] if isinstance(data[0], tuple) else b""
        assert got == mime.section_bytes(whole, numbers, spec, []), name
    typ, data = c.fetch("1", "(BODY.PEEK[2]<70000.100000> BODY.PEEK[3.HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == mime.section_bytes(whole, [2], "", [])[70000:170000]
    assert data[1][1] == b"Subject: inner\r\n\r\n"
    typ, data = c.fetch("1", "(RFC822.TEXT RFC822)")  # sets \Seen
    assert data[0][1] == whole.body and data[1][1] == whole.raw
    assert b"\\Seen" in b"".join(d[0] if isinstance(d, tuple) else d for d in data)
    c.logout()


def test_big_message_without_line_breaks(imap) -> None:
    """No line break at all: the whole message is its header (as the whole-message parser
    says), sent from the file; its text is empty; nothing of it is loaded whole."""
    raw = b"Subject: " + b"n" * (2 * STREAM_OVER)
    imap.deliver(raw)
    c = _client(imap)
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER] BODY.PEEK[TEXT] RFC822.HEADER "
                             "BODY.PEEK[HEADER]<5.10> BODYSTRUCTURE)")
    assert typ == "OK", data
    assert data[0][1] == raw and data[1][1] == b"" and data[2][1] == raw
    assert data[3][1] == raw[5:15]
    assert b'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0' in data[4]
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)")
    assert typ == "OK" and data[0][1] == b"\r\n", data[0][0]  # an unended line is no field
    c.logout()
