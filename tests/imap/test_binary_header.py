"""The header BINARY[] sends above a decoded body (mailstack.imap.binary.relabelled_header),
streamed piece by piece, against a whole-header reference on random headers cut anywhere."""

from __future__ import annotations

import random

from mailstack.imap.binary import relabelled_header

FIELD = b"Content-Transfer-Encoding: binary\r\n"


def _reference(header: bytes) -> bytes:
    lines = [x + b"\n" for x in header.split(b"\n")]  # lines end at LF (a CR alone is data)
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    blank = next((i for i, x in enumerate(lines) if x in (b"\r\n", b"\n")), len(lines))
    out: list[bytes] = []
    dropping = False
    for line in lines[:blank]:
        if line[:1] not in (b" ", b"\t"):
            dropping = line.split(b":", 1)[0].strip().lower() == b"content-transfer-encoding"
        if not dropping:
            out.append(line)
    kept = b"".join(out)
    if kept and not kept.endswith(b"\n"):
        kept += b"\r\n"
    return kept + FIELD + b"".join(lines[blank:])


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_examples() -> None:
    assert b"".join(relabelled_header([b"Subject: a\r\nContent-Transfer-Encoding:\r\n BASE64"
                                       b"\r\nX: y\r\n\r\n"])) == b"Subject: a\r\nX: y\r\n" \
        + FIELD + b"\r\n"
    assert b"".join(relabelled_header([b"A: b"])) == b"A: b\r\n" + FIELD  # no line end
    long = b"X-Long: " + b"z" * 100_000 + b"\r\n"  # a long line is passed on, not held
    assert b"".join(relabelled_header([long[:70], long[70:], b"\r\n"])) == long + FIELD + b"\r\n"


def test_matches_the_whole_header_reference() -> None:
    rng = random.Random(3516)
    lines = [b"Subject: hi", b"Content-Transfer-Encoding: base64", b"CONTENT-TRANSFER-ENCODING :x",
             b" folded", b"\tfolded too", b"Content-Transfer-Encoding", b"\r"]
    for _ in range(3000):
        parts = [(rng.choice(lines) if rng.random() < 0.8 else b"X" * rng.randint(1, 90) + b": v")
                 + rng.choice((b"\r\n", b"\n")) for _ in range(rng.randint(0, 6))]
        header = b"".join(parts) + rng.choice((b"", b"A: b", b"\r\n", b"\r\nbody\r\n", b"\nbody"))
        want = _reference(header)
        for _ in range(3):
            assert b"".join(relabelled_header(_pieces(rng, header))) == want, header
