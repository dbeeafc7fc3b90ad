"""Unit tests of the sans-I/O POP3 state machine and reply builders."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.pop3 import protocol as p
from mailstack.pop3.protocol import POP3Protocol, Reply, State


def proto(*, tls: bool = False, plaintext: bool = True, tls_available: bool = True,
          **kw) -> POP3Protocol:
    return POP3Protocol(tls=tls, tls_available=tls_available, plaintext_auth=plaintext, **kw)


def logged_in() -> POP3Protocol:
    pr = proto()
    assert pr.receive_line(b"USER alice@example.test\r\n") == Reply(b"+OK Send PASS\r\n")
    assert pr.receive_line(b"PASS pw\r\n") == p.Pass("alice@example.test", "pw")
    pr.auth_succeeded()
    return pr


def is_err(ev: object) -> bool:
    return isinstance(ev, Reply) and ev.data.startswith(b"-ERR")


def test_user_pass_flow_and_password_with_spaces() -> None:
    pr = proto()
    assert pr.state is State.AUTHORIZATION
    pr.receive_line(b"user Alice@Example.test\r\n")
    assert pr.receive_line(b"PASS a b  c\r\n") == p.Pass("Alice@Example.test", "a b  c")
    pr.auth_succeeded()
    assert pr.state is State.TRANSACTION


def test_pass_without_user_and_user_forgotten_after_failure() -> None:
    pr = proto()
    assert is_err(pr.receive_line(b"PASS pw\r\n"))
    pr.receive_line(b"USER a@b.c\r\n")
    assert isinstance(pr.receive_line(b"PASS wrong\r\n"), p.Pass)
    pr.auth_failed()
    assert is_err(pr.receive_line(b"PASS again\r\n"))  # USER must come again


@pytest.mark.parametrize("line", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET",
                                  b"TOP 1 0", b"UIDL"])
def test_transaction_commands_refused_before_login(line: bytes) -> None:
    ev = proto().receive_line(line + b"\r\n")
    assert is_err(ev)
    assert b"AUTHORIZATION" in ev.data  # type: ignore[union-attr]


@pytest.mark.parametrize("line", [b"USER x@y.z", b"PASS x", b"STLS", b"AUTH PLAIN"])
def test_authorization_commands_refused_after_login(line: bytes) -> None:
    assert is_err(logged_in().receive_line(line + b"\r\n"))


@pytest.mark.parametrize("line", [b"", b"FOO", b"RETRX 1", b"\xff\xfe", b"RE TR", b"123",
                                  "l\u0131st".encode(), "\ufb06at".encode()])
def test_unknown_commands(line: bytes) -> None:
    assert is_err(logged_in().receive_line(line + b"\r\n"))


@pytest.mark.parametrize("line,event", [
    (b"stat", p.Stat()), (b"LIST", p.List(None)), (b"LIST 7", p.List(7)),
    (b"UIDL", p.Uidl(None)), (b"uidl 2", p.Uidl(2)), (b"RETR 3", p.Retr(3)),
    (b"DELE 1", p.Dele(1)), (b"TOP 4 0", p.Top(4, 0)), (b"NOOP", p.Noop()),
    (b"RSET", p.Rset()), (b"CAPA", p.Capa()),
])
def test_transaction_commands_parse(line: bytes, event: p.Event) -> None:
    assert logged_in().receive_line(line + b"\r\n") == event


@pytest.mark.parametrize("line", [b"RETR", b"RETR x", b"RETR -1", b"RETR 1 2", b"RETR 1.0",
                                  b"LIST +1", b"DELE 9999999999", b"TOP 1", b"TOP 1 x",
                                  b"TOP 1 -2", b"RETR \xd9\xa3", b"STAT 1", b"NOOP x"])
def test_bad_arguments(line: bytes) -> None:
    assert is_err(logged_in().receive_line(line + b"\r\n"))


def test_quit_enters_update_only_from_transaction() -> None:
    pr = proto()
    assert pr.receive_line(b"QUIT\r\n") == p.Quit()
    assert pr.state is State.AUTHORIZATION
    pr = logged_in()
    assert pr.receive_line(b"QUIT\r\n") == p.Quit()
    assert pr.state is State.UPDATE
    assert pr.receive_line(b"NOOP\r\n").close  # type: ignore[union-attr]


def test_plaintext_auth_refused_without_tls_on_non_loopback() -> None:
    pr = proto(plaintext=False)
    for line in (b"USER a@b.c", b"PASS x", b"AUTH PLAIN AGEAYg=="):
        ev = pr.receive_line(line + b"\r\n")
        assert is_err(ev) and b"[AUTH]" in ev.data  # type: ignore[union-attr]
    assert "USER" not in pr.capabilities() and "SASL PLAIN" not in pr.capabilities()
    assert pr.receive_line(b"STLS\r\n") == p.Stls()
    pr.tls_started()
    assert "USER" in pr.capabilities() and "STLS" not in pr.capabilities()
    assert pr.receive_line(b"USER a@b.c\r\n") == Reply(b"+OK Send PASS\r\n")


def test_stls_state_rules() -> None:
    assert is_err(proto(tls=True).receive_line(b"STLS\r\n"))
    assert is_err(proto(tls_available=False).receive_line(b"STLS\r\n"))
    assert is_err(proto().receive_line(b"STLS now\r\n"))
    pr = proto()
    pr.receive_line(b"USER a@b.c\r\n")
    pr.tls_started()
    assert is_err(pr.receive_line(b"PASS x\r\n"))  # USER before the handshake is forgotten


def test_capabilities() -> None:
    caps = proto().capabilities()
    for cap in ("TOP", "UIDL", "USER", "SASL PLAIN", "RESP-CODES", "AUTH-RESP-CODE",
                "PIPELINING", "STLS", "IMPLEMENTATION mailstack"):
        assert cap in caps
    assert not any(c.startswith("LOGIN-DELAY") for c in caps)
    assert "LOGIN-DELAY 60" in proto(login_delay=60).capabilities()
    assert "STLS" not in logged_in().capabilities()


def _b64(s: bytes) -> bytes:
    return base64.b64encode(s)


def test_auth_plain_initial_response() -> None:
    ev = proto().receive_line(b"AUTH PLAIN " + _b64(b"\x00alice@example.test\x00p w") + b"\r\n")
    assert ev == p.AuthPlain("", "alice@example.test", "p w")


def test_auth_plain_continuation_and_cancel() -> None:
    pr = proto()
    assert pr.receive_line(b"AUTH plain\r\n") == Reply(b"+ \r\n")
    assert pr.max_line > p.MAX_COMMAND_LINE
    assert pr.receive_line(_b64(b"alice\x00alice\x00pw") + b"\r\n") == \
        p.AuthPlain("alice", "alice", "pw")
    assert pr.max_line == p.MAX_COMMAND_LINE
    pr.receive_line(b"AUTH PLAIN\r\n")
    assert pr.receive_line(b"*\r\n") == Reply(b"-ERR Authentication cancelled\r\n")
    assert pr.receive_line(b"NOOP\r\n") != Reply(b"+ \r\n")


@pytest.mark.parametrize("blob", [b"=", b"!!!", _b64(b"no-nuls"), _b64(b"\x00\x00pw"),
                                  _b64(b"\x00user\x00"), _b64(b"\x00u\x00p\x00x"),
                                  _b64(b"\x00\xff\x00p")])
def test_auth_plain_bad_responses(blob: bytes) -> None:
    ev = proto().receive_line(b"AUTH PLAIN " + blob + b"\r\n")
    assert is_err(ev) and b"[AUTH]" in ev.data  # type: ignore[union-attr]


def test_auth_other_mechanism_and_listing() -> None:
    pr = proto()
    assert is_err(pr.receive_line(b"AUTH CRAM-MD5\r\n"))
    assert pr.receive_line(b"AUTH\r\n") == Reply(b"+OK Supported mechanisms:\r\nPLAIN\r\n.\r\n")
    assert is_err(pr.receive_line(b"APOP alice 0123456789abcdef\r\n"))


def test_line_too_long_and_bad_command_limit() -> None:
    pr = proto()
    ev = pr.line_too_long()
    assert is_err(ev) and not ev.close
    closing = None
    for _ in range(p.MAX_BAD_COMMANDS):
        closing = pr.receive_line(b"BOGUS\r\n")
    assert isinstance(closing, Reply) and closing.close
    pr2 = proto()
    for _ in range(p.MAX_BAD_COMMANDS - 1):
        pr2.receive_line(b"BOGUS\r\n")
    assert pr2.receive_line(b"CAPA\r\n") == p.Capa()  # a good command resets the count
    assert not pr2.receive_line(b"BOGUS\r\n").close  # type: ignore[union-attr]


@pytest.mark.parametrize("disk,wire", [
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b".a\n..b\nc.\n.\n", b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b"mixed\r\nends\n", b"mixed\r\nends\r\n.\r\n"),
    (b"", b".\r\n"),
])
def test_stuff(disk: bytes, wire: bytes) -> None:
    assert p.stuff(disk) == wire


def test_top_part() -> None:
    msg = b"A: 1\nB: 2\n\nl1\nl2\nl3\n"
    assert p.top_part(msg, 0) == b"A: 1\nB: 2\n\n"
    assert p.top_part(msg, 2) == b"A: 1\nB: 2\n\nl1\nl2\n"
    assert p.top_part(msg, 99) == msg
    assert p.top_part(b"A: 1\r\n\r\nx\r\ny\r\n", 1) == b"A: 1\n\nx\n"
    assert p.top_part(b"A: only header\n", 5) == b"A: only header\n"
    assert p.top_part(b"\nbody1\nbody2\n", 1) == b"\nbody1\n"


def test_multiline_stuffs_lines() -> None:
    assert p.multiline("x", ["1 a", ".dot"]) == b"+OK x\r\n1 a\r\n..dot\r\n.\r\n"


def unstuff(wire: bytes) -> bytes:
    """What a client does with a multi-line body: split at CRLF, drop the "." line, un-stuff."""
    lines = wire.split(b"\r\n")
    assert lines[-2:] == [b".", b""], wire[-20:]
    return b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines[:-2])


@given(st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a b", b"\r", b"\xff"]))
       .map(lambda parts: b"\n".join(parts) + b"\n"))
def test_stuff_round_trip(disk: bytes) -> None:
    wire = p.stuff(disk)
    body = wire[:-3]
    assert b"\r\n.\r\n" not in b"\r\n" + body  # no early terminator
    assert unstuff(wire) == disk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
