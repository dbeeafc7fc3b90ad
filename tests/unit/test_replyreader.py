"""The sans-I/O reader of server replies the mta's LMTP client parses the mda's bytes with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.smtp.replyreader import RawReply, ReplyError, ReplyReader

STREAM = (b"220 mda ready\r\n250-mda\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 2.1.0 OK\r\n"
          b"550 5.1.1 <x@y> no such user\r\n250\r\n452 4.3.1 try later\n")
EXPECTED = [RawReply(220, ("mda ready",)), RawReply(250, ("mda", "PIPELINING", "CHUNKING")),
            RawReply(250, ("2.1.0 OK",)), RawReply(550, ("5.1.1 <x@y> no such user",)),
            RawReply(250, ("",)), RawReply(452, ("4.3.1 try later",))]


@given(st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_replies_are_the_same_whatever_the_cuts(cuts: list[int]) -> None:
    reader, pos, i = ReplyReader(), 0, 0
    while pos < len(STREAM):
        n = cuts[i % len(cuts)]
        reader.feed(STREAM[pos:pos + n])
        pos, i = pos + n, i + 1
    assert list(reader.replies) == EXPECTED


def test_a_reply_waits_for_its_last_line() -> None:
    reader = ReplyReader()
    reader.feed(b"250-one\r\n250-two\r\n250 thr")
    assert not reader.replies
    reader.feed(b"ee\r\n")
    assert reader.replies.popleft() == RawReply(250, ("one", "two", "three"))


@pytest.mark.parametrize("bad", [b"hello\r\n", b"25 short\r\n", b"2500 long code\r\n",
                                 b"250_x\r\n", b"650 no such class\r\n",
                                 b"250-a\r\n451 b\r\n"])
def test_malformed_replies_are_refused(bad: bytes) -> None:
    with pytest.raises(ReplyError):
        ReplyReader().feed(bad)


def test_memory_is_bounded_whatever_the_server_sends() -> None:
    reader = ReplyReader(max_line=100, max_lines=5)
    with pytest.raises(ReplyError, match="longer than 100"):
        reader.feed(b"250 " + b"x" * 200)  # no end of line yet: still refused
    with pytest.raises(ReplyError, match="longer than 100"):
        ReplyReader(max_line=100).feed(b"250 " + b"x" * 200 + b"\r\n")
    with pytest.raises(ReplyError, match="more than 5 lines"):
        ReplyReader(max_line=100, max_lines=5).feed(b"250-x\r\n" * 6)
