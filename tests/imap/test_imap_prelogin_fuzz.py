"""Property tests of IMAP command handling before login, against the real imap process.

Hypothesis builds sessions of pre-login commands with hostile arguments: literals of every
kind and size (synchronising and not, over the 8 KiB cap, many of them), quoted strings with
stray escapes, over-long lines, base64 junk out of step, bytes that are no tag. Each session is
sent at once over a real socket; every line the server writes must be a well-formed response
(``* ``, ``+ `` or ``tag OK|NO|BAD``), the session must end (LOGOUT, BYE or the idle timeout),
and the daemon keeps greeting new clients and logs no traceback.
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

_RESPONSE = re.compile(rb"(\* |\+ |[!#$&'\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+ (OK|NO|BAD)[ \r])"
                       rb"[^\r\n]*(\{\d+\})?\r\n")
_TAGS = [b"a1", b"A.2", b"*", b"+", b"", b"(x)", b"t" * 70, b"\xff"]
_VERBS = [b"LOGIN", b"AUTHENTICATE PLAIN", b"AUTHENTICATE", b"ID", b"CAPABILITY", b"NOOP",
          b"STARTTLS", b"SELECT", b"LIST", b"login", b"UID FETCH", b"ENABLE"]
_ARGS = [b"", b"alice@example.test wonderland", b'"alice@example.test" "wrong"',
         b'"  alice@example.test" x', b'"a\\b" x', b'"unterminated', b"{0+}\r\n",
         b"{0}\r\n", b"{5+}\r\nhello", b"{5}\r\nhello", b"{8193+}\r\n" + b"x" * 100,
         b"{8193}\r\n", b"{99999999999999999999}\r\n", b"{0+}\r\n" * 120,
         b'("name" {3+}\r\na\r\nb "version" "1")', b"NIL", b"(" * 40, b"x" * 9000,
         b"AGFsaWNlAHdvbmRlcmxhbmQ=", b"=", b"*", b"\x00\x01", b"\r", b"\xc3\xa9"]


@st.composite
def command(draw: st.DrawFn) -> bytes:
    parts = [draw(st.sampled_from(_TAGS)), draw(st.sampled_from(_VERBS))]
    parts += draw(st.lists(st.sampled_from(_ARGS), max_size=3))
    return b" ".join(parts) + b"\r\n"


@dataclass
class Daemon:
    cfg: Config
    proc: Proc


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("imapfuzz")
    cfg = load(write_config(tmp, '[imap]\nidle_timeout = "1s"\n'), env={})
    add_user(cfg, "alice@example.test", "wonderland")
    proc = Proc("serve", "imap", "--config", str(tmp / "mailstack.toml"))
    try:
        wait_port(cfg.port("imap", "imap"))
        yield Daemon(cfg, proc)
    finally:
        proc.terminate()


def _session(port: int, commands: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        try:
            s.sendall(b"".join(commands) + b"zz LOGOUT\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed early (BYE after a refused non-synchronising literal)
        try:
            while line := f.readline():
                if not line.startswith(b"+ ") or not line.endswith(b"\r\n"):
                    assert _RESPONSE.fullmatch(line), line
                    if b" OK Begin TLS" in line:
                        return  # the rest went into the handshake: nothing more to read
                    if line.rstrip(b"\r\n").endswith(b"}"):  # a response with a literal
                        size = int(line[line.rindex(b"{") + 1:-3])
                        assert len(f.read(size)) == size
        except ConnectionResetError:
            pass


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(command(), min_size=1, max_size=8))
def test_prelogin_sessions_get_well_formed_responses(daemon: Daemon,
                                                     commands: list[bytes]) -> None:
    _session(daemon.cfg.port("imap", "imap"), commands)


def test_daemon_survives_the_fuzzing(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.cfg.port("imap", "imap")), 10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(b"a LOGIN alice@example.test wonderland\r\n")
        assert f.readline().startswith(b"a OK")
    assert daemon.proc.popen.poll() is None
    assert "Traceback" not in daemon.proc.output, daemon.proc.output[-6000:]
