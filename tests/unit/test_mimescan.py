"""The streaming MIME scan finds exactly the parts, offsets, sizes and line counts that the
whole-message parser finds, however the message is cut into pieces: BODY, BODYSTRUCTURE and
every section of the scan equal those of :class:`mime.Part`."""

from __future__ import annotations

import random

import pytest

from mailstack.imap import mime, mimescan


def _crlf(text: bytes) -> bytes:
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


SIMPLE = _crlf(b"Subject: s\n\nbody line\nsecond\n")
MULTI = _crlf(b"""Subject: m
Content-Type: multipart/mixed; boundary="outer"

preamble
--outer
Content-Type: text/plain; charset=utf-8

first part
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

alt one
--inner
Content-Type: text/html

<p>alt two</p>
--inner--
inner epilogue
--outer
Content-Type: message/rfc822

Subject: inside
Content-Type: multipart/mixed; boundary=deep

--deep
Content-Transfer-Encoding: base64

aGVsbG8=
--deep--
--outer
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="a.bin"

--outer-looking but not --outer
--outer  \t
no header here
--outer--
epilogue
--outer
after the close
""")
EDGES = [
    b"",
    b"\r\n",
    b"\r\nbody only",
    b"Subject: no blank line",
    b"Subject: x\r\n\r\n",
    _crlf(b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\n--b--\n"),  # back to back
    _crlf(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n--b--\n"),
    _crlf(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nX: 1\n\n"),  # no close
    _crlf(b"Content-Type: multipart/mixed; boundary=b\n\nno parts at all\n"),
    _crlf(b"Content-Type: multipart/mixed\n\n--b\nx\n--b--\n"),  # no boundary parameter
    _crlf(b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: in\n\nx\n--d--"),
    _crlf(b"Content-Type: message/rfc822\n\n"),
    _crlf(b"Content-Type: message/rfc822\n"),
    _crlf(b"Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: multipart/mixed;"
          b" boundary=a\n\n--a\nx\n--a--\n--a--\n"),  # the same boundary twice: outer wins
    _crlf(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nA: b\n--b\n\nz\n--b--"),
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nx\rstray CR\r\n--b--",
    b"x" * 5000,  # one long line, no header end
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + b"y" * 5000 + b"\r\n--b--",
]


def _nested(depth: int) -> bytes:
    out = b"Subject: deep\r\n"
    for i in range(depth):
        out += b"Content-Type: multipart/mixed; boundary=L%d\r\n\r\n--L%d\r\n" % (i, i)
    out += b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for i in reversed(range(depth)):
        out += b"--L%d--\r\n" % i
    return out


def _paths(part: mime.Part, prefix: list[int]) -> list[list[int]]:
    out = []
    if part.children:
        for i, child in enumerate(part.children, 1):
            out.append([*prefix, i])
            out += _paths(child, [*prefix, i])
    elif part.message is not None:
        out += _paths(part.message, prefix)
    return out


def _pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos:pos + n])
        pos += n
        i += 1
    return out


def _check(data: bytes, sizes: list[int]) -> None:
    whole = mime.Part(data)
    scanned = mimescan.scan(_pieces(data, sizes))
    for extended in (False, True):
        assert mime.bodystructure(scanned, extended) == mime.bodystructure(whole, extended)
    paths = _paths(whole, [])
    assert paths == _paths(scanned, [])
    for numbers in [[], *paths, [99], [1, 99]]:
        for spec in ("", "MIME", "HEADER", "TEXT"):
            if spec == "MIME" and not numbers:
                continue
            expected = mime.section_bytes(whole, numbers, spec, [])
            rng = mimescan.section_range(scanned, numbers, spec)
            got = data[rng[0]:rng[1]] if rng else b""
            assert got == expected, (numbers, spec)
        header = mimescan.header_of(scanned, numbers)
        if header is not None:
            fields = mime.header_fields(header, ["Content-Type"], exclude=False)
            assert fields == mime.section_bytes(whole, numbers, "HEADER.FIELDS",
                                                ["Content-Type"])


@pytest.mark.parametrize("sizes", [[1], [2], [3, 5], [7], [64], [4096], [1 << 30]])
@pytest.mark.parametrize("data", [SIMPLE, MULTI, *EDGES, _nested(5), _nested(30)])
def test_scan_equals_whole_parse(data: bytes, sizes: list[int]) -> None:
    _check(data, sizes)


_BLOCKS = [b"--b\r\n", b"--b--\r\n", b"--c\r\n", b"--c--\r\n", b"\r\n", b"text\r\n",
           b"Content-Type: multipart/mixed; boundary=c\r\n", b"Content-Type: message/rfc822\r\n",
           b"Content-Type: text/plain\r\n", b"--b \r\n", b"-", b"\r", b"\n", b"--", b"x" * 40,
           b"Content-Type: multipart/digest; boundary=b\r\n"]


def test_scan_equals_whole_parse_on_random_messages() -> None:
    rnd = random.Random(3516)
    for _ in range(400):
        data = _crlf(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                     + b"".join(rnd.choice(_BLOCKS) for _ in range(rnd.randrange(1, 40))))
        _check(data, [rnd.randrange(1, 50) for _ in range(5)])


def test_scan_bounds_memory_of_hostile_messages() -> None:
    """A huge header is kept only up to HEADER_KEEP; parts beyond MAX_SPANS are content."""
    big_header = b"X: " + b"h" * (10 * mimescan.HEADER_KEEP) + b"\r\n\r\nbody\r\n"
    root = mimescan.scan(_pieces(big_header, [65536]))
    assert len(root.header) <= mimescan.HEADER_KEEP
    assert root.body_start == len(big_header) - 6 and root.end == len(big_header)
    many = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            + b"--b\r\n\r\nx\r\n" * (mimescan.MAX_SPANS * 2) + b"--b--\r\n")
    root = mimescan.scan(_pieces(many, [65536]))
    assert len(root.children) == mimescan.MAX_SPANS - 1
    fat = b"X: " + b"f" * 60000 + b"\r\n\r\nx\r\n"  # 60 KB headers: the total is capped
    many_fat = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                + (b"--b\r\n" + fat) * 40 + b"--b--\r\n")
    root = mimescan.scan(_pieces(many_fat, [65536]))
    kept = sum(len(c.header) for c in root.children)
    assert len(root.children) == 40 and kept <= mimescan.HEADERS_KEEP
    assert kept >= mimescan.HEADERS_KEEP - 100


@pytest.mark.parametrize("tail", [b"", b"\r", b"\r\n", b"x\r"])
def test_scan_pieces_give_the_file_and_its_checkpoints(tmp_path, tail: bytes) -> None:
    """The one read a big message's structure scan makes yields the file's CRLF form and
    leaves the same range checkpoints a separate pass builds (a CR LF split by a piece)."""
    import os

    from mailstack.imap.fetch import STREAM_PIECE, _Checkpoints
    from mailstack.store.maildir import to_crlf

    data = b"a\n" * 1000 + b"b" * (STREAM_PIECE - 2001) + b"\r\n" + b"c\n" * 90000 + tail
    assert data[STREAM_PIECE - 1:STREAM_PIECE + 1] == b"\r\n"
    path = tmp_path / "m"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert b"".join(_Checkpoints.crlf_pieces(fd)) == to_crlf(data)
        remembered = _Checkpoints.of(fd)  # from the cache the pieces filled
        assert remembered == _Checkpoints._build(fd)
    finally:
        os.close(fd)
