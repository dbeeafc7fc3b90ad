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
