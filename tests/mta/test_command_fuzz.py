"""Property tests of SMTP and LMTP command handling against the real mta and mda processes.

Hypothesis builds sessions of random and mutated command lines (known verbs with broken or
hostile arguments, stray bytes, BDAT chunks with lying sizes); each is sent over a real socket.
Every answer must be a well-formed reply (``NNN`` + space or hyphen, one CRLF-ended line each),
the daemon must never hang (a NOOP after the session is answered) and keeps serving.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

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
         b"<\xc3\xa9@example.test>", b"h.example.org", b"<a@b", b"a@b>", b"<>>"]


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
    cfg = load(write_config(tmp, "[mta]\nmax_message_size = 4096\nidle_timeout = \"1s\"\n"),
               env={})
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


def test_daemons_survive_the_fuzzing(daemons: Daemons) -> None:
    _still_serving(daemons.cfg.port("mta", "smtp"))
    _still_serving(daemons.cfg.port("mda", "lmtp"))
    assert all(p.popen.poll() is None for p in daemons.procs)
    output = "".join(p.output for p in daemons.procs)
    assert "Traceback" not in output, output[output.find("Traceback") - 2000:][:6000]
