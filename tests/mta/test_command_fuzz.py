"""Property tests of SMTP and LMTP command handling against the real mta and mda processes.

Hypothesis builds sessions of random and mutated command lines (known verbs with broken or
hostile arguments, stray bytes, BDAT chunks with lying sizes); each is sent over a real socket.
Every answer must be a well-formed reply (``NNN`` + space or hyphen, one CRLF-ended line each),
the daemon must never hang (a NOOP after the session is answered) and keeps serving. HELO/EHLO
names are fuzzed on their own: a name is either refused (``501``) or the message sent after it
arrives with exactly the header fields it was sent with plus the trace fields.
"""

from __future__ import annotations

import email
import itertools
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailstack.config import Config, load

from ..conftest import add_user, write_config
from ..e2e.helpers import Proc, wait_port

pytestmark = pytest.mark.e2e

_REPLY = re.compile(rb"\d{3}[ -][^\r\n]*\r\n")
_VERBS = [b"EHLO", b"HELO", b"LHLO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT", b"RSET",
          b"NOOP", b"VRFY", b"EXPN", b"HELP", b"AUTH", b"STARTTLS", b"mail from:", b"XRETRY"]
_ARGS = [b"", b"<>", b"<alice@example.test>", b"<ghost@example.test>", b"<a@elsewhere.org>",
         b"<@route:alice@example.test>", b"<\"q\\\"x\"@example.test>", b"<alice%x@example.test>",
         b"<alice@example.test> SIZE=99999999999", b"<x@y> BODY=8BITMIME SMTPUTF8",
         b"<x@y> ENVID=Q1 XRETRY", b"PLAIN", b"LOGIN", b"PLAIN AGFAAGI=", b"*", b"0", b"5",
         b"5 LAST", b"-1 LAST", b"99999999999 LAST", b"x" * 600, b"\xff\xfe", b"\x00",
         b"<\xc3\xa9@example.test>", b"h.example.org", b"<a@b", b"a@b>", b"<>>",
         b"mx.test\rX-Injected: 1", b"mx.test\x1b[2K\x00", b"\x7f", b"mx\xe2\x80\xa8Bcc: x"]


@st.composite
def command(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from(_VERBS)) + b" " + draw(st.sampled_from(_ARGS))
    if draw(st.booleans()):  # mutate: cut, duplicate or splice a byte
        i = draw(st.integers(0, len(line)))
        line = line[:i] + draw(st.sampled_from([b"", b"\r", b"\n", b" ", b"<", b"\t"])) + line[i:]
    return line.replace(b"\n", b"") + b"\r\n"


@dataclass
class Daemons:
    cfg: Config
    procs: list[Proc]


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = load(write_config(tmp, "[mta]\nmax_message_size = 4096\nidle_timeout = \"1s\"\n"
                                 "error_delay = \"0.001s\"\n"), env={})
    add_user(cfg, "alice@example.test")
    procs = [Proc("serve", name, "--config", str(tmp / "mailstack.toml"))
             for name in ("mda", "mta")]
    try:
        wait_port(cfg.port("mda", "lmtp"))
        wait_port(cfg.port("mta", "smtp"))
        yield Daemons(cfg, procs)
    finally:
        for p in procs:
            p.terminate()


def _session(port: int, lines: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert _REPLY.fullmatch(f.readline())
        # ".": ends a DATA the random lines may have opened; QUIT: ends the session. A BDAT
        # that announced more octets than follow is ended by the idle timeout instead.
        s.sendall(b"".join(lines) + b"\r\n.\r\nQUIT\r\n")
        while line := f.readline():
            assert _REPLY.fullmatch(line), line


def _still_serving(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"NOOP\r\n")
        assert f.readline().startswith(b"250")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(command(), min_size=1, max_size=12))
def test_smtp_sessions_get_well_formed_replies(daemons: Daemons, lines: list[bytes]) -> None:
    _session(daemons.cfg.port("mta", "smtp"), lines)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(command(), min_size=1, max_size=12))
def test_lmtp_sessions_get_well_formed_replies(daemons: Daemons, lines: list[bytes]) -> None:
    _session(daemons.cfg.port("mda", "lmtp"), [b"LHLO fuzz.example.org\r\n", *lines])


_NAME_BYTES = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.text(min_size=1, max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from([b"mx", b".", b"\r", b"\x00", b"\x1b", b"\x7f", b"\t", b"X-A: 1",
                              b"\xe2\x80\xa8", b"\xff", b"[", b"]", b"(", b")"]),
             min_size=1, max_size=8).map(b"".join))


def _reply(f: BinaryIO) -> list[bytes]:
    lines = []
    while True:
        line = f.readline()
        assert _REPLY.fullmatch(line), line
        lines.append(line)
        if line[3:4] == b" ":
            return lines


def _delivered(daemons: Daemons, subject: bytes) -> bytes:
    box = daemons.cfg.data_dir / "mail" / "example.test" / "alice" / "new"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for f in box.iterdir():
            raw = f.read_bytes()
            if b"\nSubject: " + subject + b"\n" in raw:
                return raw
        time.sleep(0.02)
    raise AssertionError(f"message {subject!r} not delivered")


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([b"EHLO", b"HELO"]), _NAME_BYTES)
def test_helo_names_are_refused_or_harmless(daemons: Daemons, verb: bytes, name: bytes) -> None:
    name = name.replace(b"\n", b"")
    subject = b"fuzz-%d" % next(_counter)
    with socket.create_connection(("127.0.0.1", daemons.cfg.port("mta", "smtp")), 10) as s:
        f = s.makefile("rb")
        _reply(f)
        s.sendall(verb + b" " + name + b"\r\n")
        reply = _reply(f)
        if not reply[-1].startswith(b"250"):
            assert reply[-1][:3] in (b"501", b"500"), reply
            return
        taken = name.strip(b" \t\r\x0b\x0c").decode("utf-8")
        assert taken.isprintable() and not any(c.isspace() for c in taken), taken
        s.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        for _ in range(3):
            _reply(f)
        s.sendall(b"Subject: " + subject + b"\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert _reply(f)[-1].startswith(b"250")
    msg = email.message_from_bytes(_delivered(daemons, subject))
    assert msg.keys() == ["Return-Path", "Delivered-To", "Received", "Subject"], msg.keys()


_counter = itertools.count()


def test_daemons_survive_the_fuzzing(daemons: Daemons) -> None:
    _still_serving(daemons.cfg.port("mta", "smtp"))
    _still_serving(daemons.cfg.port("mda", "lmtp"))
    assert all(p.popen.poll() is None for p in daemons.procs)
    output = "".join(p.output for p in daemons.procs)
    assert "Traceback" not in output, output[output.find("Traceback") - 2000:][:6000]
