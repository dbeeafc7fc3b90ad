"""Sans-I/O pieces of the mta: addresses, replies, headers, dot-stuffing, DSN, queue files."""

from __future__ import annotations

import email
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.mta.dsn import FailedRecipient, make_bounce
from mailstack.mta.lmtp_client import dot_stuff
from mailstack.mta.message import (
    count_received,
    header_block,
    received_header,
    submission_fixups,
)
from mailstack.mta.queue import Envelope, Spool
from mailstack.smtp.address import AddressError, parse_mailbox, split_path
from mailstack.smtp.reply import Reply, enhance
from mailstack.smtp.validate import helo_error


@pytest.mark.parametrize("good", ["a@b.test", "a.b+c@x-y.test", '"q u"@x.test', "a@[127.0.0.1]",
                                  "ü@bücher.test"])
def test_good_addresses(good: str) -> None:
    assert str(parse_mailbox(good)) == good


@pytest.mark.parametrize("bad", ["a", "@b", "a@", "a..b@c", ".a@b", "a@b..c", "a@-b.c",
                                 "a\r\nRCPT TO:<x@y>@b", "a b@c", "x" * 65 + "@b.test"])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(bad)


def test_split_path() -> None:
    assert split_path("<a@b> SIZE=10") == ("a@b", "SIZE=10")
    assert split_path("<>") == ("", "")
    assert split_path("<@r1,@r2:a@b>") == ("a@b", "")
    assert split_path('<"x>y"@b>') == ('"x>y"@b', "")
    assert split_path("a@b") is None and split_path("<a@b") is None


@given(st.text(max_size=80))
def test_split_path_and_parse_never_crash(text: str) -> None:
    res = split_path(text)
    if res:
        try:
            mbox = parse_mailbox(res[0])
        except AddressError:
            return
        assert "\r" not in str(mbox) and "\n" not in str(mbox)


def test_enhance() -> None:
    assert enhance("250 OK") == "250 2.0.0 OK"
    assert enhance("550 5.1.1 no") == "550 5.1.1 no"
    assert enhance("553 5.1.3 Error: malformed address").startswith("501 5.1.3")
    assert enhance("354 End data") == "354 End data"
    assert Reply.parse(451, "4.4.1 try later") == Reply(451, "4.4.1", "try later")
    assert Reply.parse(250, "ok").enhanced == "2.0.0"


def test_dot_stuff() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert dot_stuff(b"no newline") == b"no newline\r\n.\r\n"


def test_headers() -> None:
    msg = b"Received: a\r\n\tb\r\nReceived: c\r\nSubject: x\r\n\r\nReceived: body\r\n"
    assert count_received(header_block(msg)) == 2
    fixed = submission_fixups(b"Subject: x\r\n\r\nb\r\n", "h.test")
    parsed = email.message_from_bytes(fixed)
    assert parsed["Date"] and parsed["Message-ID"].endswith("@h.test>")
    assert submission_fixups(fixed, "h.test") == fixed


def test_bounce_is_rfc3464() -> None:
    raw = make_bounce(hostname="mx.test", qid="Q1", sender="a@x.test", arrival=0,
                      failed=[FailedRecipient("b@y.test", "5.1.1", "smtp; 550 5.1.1 no")],
                      original=b"Subject: orig\r\nFrom: a@x.test\r\n\r\nsecret body\r\n")
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                      "text/rfc822-headers"]
    status = parts[1].get_payload()
    assert status[0]["Reporting-MTA"] == "dns; mx.test"
    assert status[1]["Final-Recipient"] == "rfc822; b@y.test"
    assert status[1]["Action"] == "failed" and status[1]["Status"] == "5.1.1"
    assert b"Subject: orig" in raw and b"secret body" not in raw


def test_spool_roundtrip_and_recovery(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    e = spool.put(b"Subject: x\r\n\r\n", Envelope("a@x", ["b@y", "c@z"], 14))
    assert spool.ids() == [e.id]
    e.attempts, e.recipients[0].status = 2, "delivered"
    spool.save_state(e)
    back = spool.load(e.id)
    assert back is not None and back.attempts == 2
    assert [r.address for r in back.pending] == ["c@z"]
    assert spool.read_message(e.id) == b"Subject: x\r\n\r\n"
    (tmp_path / "q" / "ORPHAN.state").write_bytes(b"{}")
    (tmp_path / "q" / ".X.msg.tmp").write_bytes(b"half")
    assert spool.recover() == 2
    (tmp_path / "q" / f"{e.id}.msg").write_text("{broken\nSubject: x\r\n")
    assert spool.load(e.id) is None
    assert (tmp_path / "q" / f"{e.id}.msg.broken").exists(), "kept for the operator"
    json.loads((tmp_path / "q" / f"{e.id}.state.broken").read_text())
    first = spool.put(b"m", Envelope("a@x", ["b@y"], 1), first_attempt_at=100.0, backoff=60)
    again = spool.load(first.id)
    assert again is not None and (again.attempts, again.next_attempt) == (1, 160.0)
    assert not (tmp_path / "q" / f"{first.id}.state").exists(), "first state is in the .msg"
    again.attempts, again.last_error = 2, "451 4.3.0 later"
    spool.save_state(again)
    third = spool.load(first.id)
    assert third is not None and (third.attempts, third.last_error) == (2, "451 4.3.0 later")


def _reference_data(stream: bytes) -> tuple[bytes, bytes] | None:
    """Line-by-line reading as RFC 5321 describes it (lines end with CRLF only)."""
    lines, pos = [], 0
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            return None
        line = stream[pos:end + 2]
        pos = end + 2
        if line == b".\r\n":
            return b"".join(lines), stream[pos:]
        lines.append(line[1:] if line.startswith(b".") else line)


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.\r\n",
                                 b"..", b"x" * 7]), max_size=30),
       st.lists(st.integers(1, 9), min_size=1, max_size=10))
def test_data_reader_matches_line_by_line_reading(pieces: list[bytes], cuts: list[int]) -> None:
    from mailstack.smtp.data import DataReader

    stream = b"".join(pieces)
    expected = _reference_data(stream)
    reader, pos, i, rest = DataReader(None), 0, 0, b""
    while pos < len(stream) and reader.result is None:
        n = cuts[i % len(cuts)]
        rest = reader.feed(stream[pos:pos + n])
        pos += n
        i += 1
    if expected is None:
        assert reader.result is None
    else:
        assert reader.result is not None
        assert (reader.result.data, rest + stream[pos:]) == expected


def test_data_reader_limits() -> None:
    from mailstack.smtp.data import DataReader

    r = DataReader(10)
    assert r.feed(b"0123456789abcdef\r\n" * 100) == b""
    assert r.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    assert r.result is not None and r.result.too_big and r.result.data == b""
    r = DataReader(None)
    r.feed(b"x" * 1001 + b"\r\n.\r\n")
    assert r.result is not None and r.result.line_too_long


@given(st.lists(st.sampled_from([b"a", b"\n", b"\r\n", b"x" * 400, b"y" * 1001]), max_size=12),
       st.integers(3, 1200))
def test_long_line_scan_matches_a_regular_expression(pieces: list[bytes], limit: int) -> None:
    import re

    from mailstack.smtp.data import has_long_line

    data = b"".join(pieces)
    assert has_long_line(data, limit) == bool(re.search(rb"[^\n]{%d}" % limit, data))


@given(st.text(max_size=40), st.text(max_size=20))
def test_received_header_is_one_field_whatever_the_values(helo: str, rcpt: str) -> None:
    """Defence in depth behind the HELO check: no value can end the field or add one."""
    field = received_header(helo=helo, client_ip="192.0.2.1", client_host=None, by="mx.test",
                            protocol="ESMTP", qid="Q1", rcpt=rcpt or None, tls="")
    assert field.startswith(b"Received: ") and field.endswith(b"\r\n")
    lines = field[:-2].split(b"\r\n")
    assert all(line[:1] == b"\t" for line in lines[1:]), "only folded continuation lines"
    assert b"\r" not in field.replace(b"\r\n", b"") and b"\n" not in field.replace(b"\r\n", b"")
    assert not any(c < 0x20 and c not in (0x09, 0x0D, 0x0A) for c in field)


@pytest.mark.parametrize(("name", "ok"), [
    ("mx.example.org", True), ("[192.0.2.1]", True), ("[IPv6:::1]", True), ("bücher.test", True),
    ("", False), ("a\rb", False), ("a\nb", False), ("a\x00", False), ("a\x1b[2K", False),
    ("a\x7f", False), ("a b", False), ("a\u2028b", False), ("a\udcff", False), ("x" * 256, False),
])
def test_helo_error(name: str, ok: bool) -> None:
    assert (helo_error(name) is None) is ok
