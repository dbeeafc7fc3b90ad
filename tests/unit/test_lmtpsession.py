"""The sans-I/O LMTP session: grammar, limits and transaction state, fed bytes directly."""

from __future__ import annotations

import pytest

from mailstack.smtp.lmtpsession import (
    BOGUS_LIMIT,
    MAX_LINE,
    MAX_RECIPIENTS,
    Deliver,
    LMTPSession,
    Transaction,
)


def _known(address: str) -> str | None:
    return None if address.endswith("@example.test") else f"550 5.1.1 <{address}>: no such user"


def session(max_message: int = 10_000) -> LMTPSession:
    s = LMTPSession("mx.example.test", _known, max_message)
    s.feed(b"LHLO mta.example.test\r\n")
    assert run(s)[-1].startswith("250 SIZE")
    return s


def run(s: LMTPSession, deliver: list[Transaction] | None = None) -> list[str]:
    """Every reply to what ``s`` holds; a Deliver is answered "250 <rcpt>" per recipient."""
    out: list[str] = []
    while not s.closing and (item := s.next_item()) is not None:
        result = s.handle(item)
        if isinstance(result, Deliver):
            if deliver is not None:
                deliver.append(result.transaction)
            out += [f"250 2.0.0 <{r}> delivered" for r in result.transaction.rcpts]
            s.delivered()
        else:
            out += result
    return out


def test_a_pipelined_transaction_with_bdat_gets_every_reply_and_one_delivery() -> None:
    s = session()
    message = b"Subject: x\r\n\r\n.body\r\n"
    s.feed(b"MAIL FROM:<s@example.org> ENVID=Q1 XRETRY BODY=8BITMIME SMTPUTF8\r\n"
           b"RCPT TO:<a@example.test>\r\nRCPT TO:<ghost@else.org>\r\nRCPT TO:<b@example.test>\r\n"
           b"BDAT %d LAST\r\n" % len(message) + message + b"NOOP\r\n")
    done: list[Transaction] = []
    replies = run(s, done)
    assert [r[:9] for r in replies] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5",
                                        "250 2.0.0", "250 2.0.0", "250 2.0.0"]
    [tx] = done
    assert (tx.sender, tx.envid, tx.retry, tx.rcpts) == (
        "s@example.org", "Q1", True, ["a@example.test", "b@example.test"])
    assert tx.content == message  # chunks are not dot-stuffed
    assert s.transaction is None and s.buffered == 0


def test_input_split_anywhere_gives_the_same_replies() -> None:
    wire = (b"MAIL FROM:<> ENVID=Q2\r\nRCPT TO:<a@example.test>\r\nDATA\r\n"
            b"Subject: y\r\n\r\n..dot\r\n.\r\nBDAT 3\r\nab\nBDAT 0 LAST\r\nRSET\r\n")
    whole = session()
    whole.feed(wire)
    expected = run(whole)
    split = session()
    got: list[str] = []
    done: list[Transaction] = []
    for i in range(len(wire)):
        split.feed(wire[i:i + 1])
        got += run(split, done)
    assert got == expected
    assert done[0].content == b"Subject: y\r\n\r\n.dot\r\n" and done[0].sender == ""
    assert [r[:3] for r in got] == ["250", "250", "354", "250", "503", "503", "250"]


def test_chunk_octets_are_never_commands() -> None:
    s = session()
    smuggled = b"QUIT\r\nMAIL FROM:<x@y.z>\r\n"
    s.feed(b"BDAT %d\r\n" % len(smuggled) + smuggled + b"NOOP\r\n")
    assert run(s) == ["503 5.5.1 Error: need RCPT command", "250 2.0.0 OK"]
    assert not s.closing


def test_a_chunk_over_the_limit_is_skipped_not_kept_and_refused_per_recipient() -> None:
    s = session(max_message=1000)
    s.feed(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
           b"BDAT 5000000 LAST\r\n")
    assert len(run(s)) == 3
    for _ in range(4999):
        s.feed(b"x" * 1000)
        assert run(s) == [] and s.buffered == 0
    s.feed(b"x" * 1000 + b"NOOP\r\n")
    assert [r[:9] for r in run(s)] == ["552 5.3.4", "552 5.3.4", "250 2.0.0"]


def test_data_over_the_limit_is_refused_per_recipient() -> None:
    s = session(max_message=100)
    s.feed(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
           b"DATA\r\n" + b"y" * 50 + b"\r\n" + b"z" * 80 + b"\r\n.\r\nNOOP\r\n")
    assert [r[:9] for r in run(s)] == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354 End d",
                                       "552 5.3.4", "552 5.3.4", "250 2.0.0"]


def test_an_endless_line_costs_no_memory_and_is_refused_once_it_ends() -> None:
    s = session()
    for _ in range(1000):
        s.feed(b"A" * 4096)
        assert run(s) == [] and s.buffered <= MAX_LINE + 4096
    s.feed(b"\r\nNOOP\r\n")
    replies = run(s)
    assert replies[0].startswith("500 5.5.2 Line too long") and replies[1].startswith("250")


def test_a_malformed_bdat_closes_the_connection() -> None:
    for arg in (b"many LAST", b"", b"12 NOW", b"1 LAST extra", b"9" * 16):
        s = session()
        s.feed(b"BDAT " + arg + b"\r\nNOOP\r\n")
        assert run(s) == ["501 5.5.4 Syntax: BDAT <size> [LAST]; closing the connection"]
        assert s.closing


@pytest.mark.parametrize(("line", "reply"), [
    (b"MAIL FROM:<s@x.org> SIZE=99999999", "552 5.3.4"),
    (b"MAIL FROM:<s@x.org> RET=FULL", "555 5.5.4"),
    (b"MAIL FROM:<s@x.org> ENVID=" + b"q" * 600, "501 5.5.4"),
    (b"MAIL FROM:s@x.org", "501 5.5.4"),
    (b"MAIL TO:<s@x.org>", "501 5.5.4"),
    (b"RCPT TO:<a@example.test>", "503 5.5.1"),
    (b"DATA", "503 5.5.1"),
    (b"HELO x.example", "500 5.5.1"),
    (b"EHLO x.example", "500 5.5.1"),
    (b"VRFY a@example.test", "252 2.0.0"),
    (b"\xff\xfe", "500 5.5.2"),
    (b"", "500 5.5.2"),
])
def test_refused_commands(line: bytes, reply: str) -> None:
    s = session()
    s.feed(line + b"\r\n")
    assert run(s)[0].startswith(reply)


def test_commands_need_lhlo_and_a_bad_name_is_refused() -> None:
    s = LMTPSession("mx.example.test", _known, 1000)
    s.feed(b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n"
           b"LHLO bad\rname\r\nLHLO\r\nLHLO ok.example\r\n")
    replies = run(s)
    assert replies[:3] == ["503 5.5.1 Error: send LHLO first"] * 3
    assert replies[3].startswith("501 5.5.4 Bad HELO/EHLO name")
    assert replies[4].startswith("501 5.5.4 Syntax: LHLO")
    assert replies[5:8] == ["250-mx.example.test", "250-PIPELINING", "250-ENHANCEDSTATUSCODES"]


def test_rcpt_and_mail_rules() -> None:
    s = session()
    s.feed(b"MAIL FROM:<s@x.org>\r\nMAIL FROM:<t@x.org>\r\nRCPT TO:<>\r\n"
           b"RCPT TO:<a@example.test> NOTIFY=NEVER\r\n")
    assert [r[:9] for r in run(s)] == ["250 2.1.0", "503 5.5.1", "501 5.5.4", "555 5.5.4"]
    s.feed(b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(MAX_RECIPIENTS + 1)))
    replies = run(s)
    assert replies[-1].startswith("452 4.5.3") and replies[-2].startswith("250")


def test_unknown_commands_end_the_connection_at_the_limit() -> None:
    s = session()
    s.feed(b"XYZZY\x1b[31m\r\n" * BOGUS_LIMIT + b"NOOP\r\n")
    replies = run(s)
    assert replies[0] == '500 5.5.2 Error: command "XYZZY?[31M" not recognized'
    assert len(replies) == BOGUS_LIMIT and replies[-1].startswith("502 5.5.1")
    assert s.closing


def test_quit_closes_after_its_reply() -> None:
    s = session()
    s.feed(b"QUIT\r\nNOOP\r\n")
    assert run(s) == ["221 2.0.0 Bye"] and s.closing
