"""POP3 protocol state machine, sans I/O: command lines in, command events or replies out.

This module knows the grammar and the states of RFC 1939 (AUTHORIZATION → TRANSACTION →
UPDATE), the RFC 2449 capabilities and response codes, RFC 2595 STLS and RFC 5034 AUTH PLAIN
(with and without an initial response). It does no I/O and touches no storage: the session
feeds it one line at a time with :meth:`POP3Protocol.receive_line`, gets back either a command
event to carry out (``Retr(3)``, ``Pass(user, password)``, …) or a :class:`Reply` the protocol
could answer by itself (syntax errors, commands in the wrong state, the SASL ``+`` prompt), and
reports outcomes back (:meth:`~POP3Protocol.auth_succeeded`, :meth:`~POP3Protocol.tls_started`,
…). The helpers at the bottom build reply bytes, including byte-stuffed message bodies.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

#: RFC 2449 section 4: a command line is at most 255 octets including CRLF.
MAX_COMMAND_LINE = 255
#: A SASL continuation line may be longer than a command (RFC 5034 sets no limit; be generous).
MAX_SASL_LINE = 4096
#: After this many consecutive bad commands the connection is closed.
MAX_BAD_COMMANDS = 20
_MAX_MSG_DIGITS = 9


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """Bytes to send as they are; ``close`` asks the session to hang up afterwards."""

    data: bytes
    close: bool = False


@dataclass(frozen=True)
class Capa:
    pass


@dataclass(frozen=True)
class Stls:
    pass


@dataclass(frozen=True)
class Pass:
    user: str
    password: str


@dataclass(frozen=True)
class AuthPlain:
    authzid: str
    user: str
    password: str


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Stat:
    pass


@dataclass(frozen=True)
class List:
    msg: int | None


@dataclass(frozen=True)
class Uidl:
    msg: int | None


@dataclass(frozen=True)
class Retr:
    msg: int


@dataclass(frozen=True)
class Top:
    msg: int
    lines: int


@dataclass(frozen=True)
class Dele:
    msg: int


@dataclass(frozen=True)
class Noop:
    pass


@dataclass(frozen=True)
class Rset:
    pass


Command = (Capa | Stls | Pass | AuthPlain | Quit | Stat | List | Uidl | Retr | Top | Dele | Noop
           | Rset)
Event = Command | Reply


# -- reply builders ---------------------------------------------------------------------------
def ok(text: str = "") -> bytes:
    return b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n"


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [CODE] text``; codes are the RFC 2449/3206 ones (IN-USE, AUTH, SYS/TEMP, …)."""
    prefix = f"[{code}] " if code else ""
    return f"-ERR {prefix}{text}\r\n".encode()


def multiline(first: str, lines: list[str] | tuple[str, ...]) -> bytes:
    """``+OK first``, the lines (byte-stuffed), and the terminating ``.``."""
    body = "".join(("." + ln if ln.startswith(".") else ln) + "\r\n" for ln in lines)
    return f"+OK {first}\r\n{body}.\r\n".encode()


def stuff(disk: bytes) -> bytes:
    """A stored message (LF or CRLF line ends) → CRLF, byte-stuffed, with the final ``.``."""
    data = disk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


def top_part(disk: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` body lines of a stored message."""
    data = disk.replace(b"\r\n", b"\n")
    if data.startswith(b"\n"):
        head_end = 0
    else:
        sep = data.find(b"\n\n")
        if sep < 0:
            return data  # no body: the whole message is header
        head_end = sep + 1
    pos = head_end + 1  # just after the blank line
    for _ in range(lines):
        nxt = data.find(b"\n", pos)
        if nxt < 0:
            return data
        pos = nxt + 1
    return data[:pos]


def parse_plain(blob: str) -> tuple[str, str, str] | None:
    """Decode a SASL PLAIN response (RFC 4616) → (authzid, authcid, password) or None."""
    if blob == "=":
        return None  # an empty response cannot carry credentials
    try:
        raw = base64.b64decode(blob.encode("ascii"), validate=True)
        parts = raw.decode("utf-8").split("\x00")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[0], parts[1], parts[2]


def _parse_number(word: str) -> int | None:
    """A message number or line count: ASCII digits only, bounded length."""
    if not word or len(word) > _MAX_MSG_DIGITS or not word.isascii() or not word.isdigit():
        return None
    return int(word)


_AUTH_STATE = {"USER", "PASS", "APOP", "AUTH", "STLS"}
_TRANS_STATE = {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL"}
_ANY_STATE = {"CAPA", "QUIT"}
_ALL_COMMANDS = frozenset(_AUTH_STATE | _TRANS_STATE | _ANY_STATE)


def command_label(line: bytes) -> str:
    """``pop3 LIST`` for a command line (``pop3 ?`` when it names no command): what the
    event-loop monitor charges its work to."""
    name = line.split(None, 1)[0].upper().decode("ascii", "replace") if line.strip() else ""
    return f"pop3 {name if name in _ALL_COMMANDS else '?'}"


class POP3Protocol:
    """One connection's protocol state. Feed lines, act on the events, report outcomes."""

    def __init__(self, *, tls: bool, tls_available: bool, plaintext_auth: bool,
                 implementation: str = "mailstack", login_delay: int = 0) -> None:
        self.state = State.AUTHORIZATION
        self.tls = tls
        self.tls_available = tls_available
        #: USER/PASS and AUTH PLAIN allowed before TLS (only on loopback listeners)
        self.plaintext_auth = plaintext_auth
        self.implementation = implementation
        self.login_delay = login_delay
        self.user: str | None = None  # from the USER command just before, waiting for PASS
        self._after_user: str | None = None  # the name while the line after USER is handled
        self.sasl_pending = False  # AUTH PLAIN sent without an initial response
        self.bad_commands = 0

    # -- what the session needs to know ----------------------------------------------------
    @property
    def max_line(self) -> int:
        return MAX_SASL_LINE if self.sasl_pending else MAX_COMMAND_LINE

    @property
    def auth_allowed(self) -> bool:
        return self.tls or self.plaintext_auth

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL"]
        if self.state is State.AUTHORIZATION and self.auth_allowed:
            caps += ["USER", "SASL PLAIN"]
        caps += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.login_delay:
            caps.append(f"LOGIN-DELAY {self.login_delay}")
        if self.state is State.AUTHORIZATION and not self.tls and self.tls_available:
            caps.append("STLS")
        caps.append(f"IMPLEMENTATION {self.implementation}")
        return caps

    # -- outcomes reported by the session ----------------------------------------------------
    def auth_succeeded(self) -> None:
        self.state = State.TRANSACTION
        self.user = None

    def auth_failed(self) -> None:
        self.user = None

    def tls_started(self) -> None:
        """RFC 2595: forget everything learnt before the handshake."""
        self.tls = True
        self.user = None
        self.sasl_pending = False

    # -- input --------------------------------------------------------------------------------
    def line_too_long(self) -> Reply:
        self.user = None  # PASS only directly after USER, not after a refused line
        if self.sasl_pending:
            self.sasl_pending = False
            return self._bad(err("Authentication response too long", "AUTH"))
        return self._bad(err(f"Line too long (max {MAX_COMMAND_LINE} octets with CRLF)"))

    def receive_line(self, line: bytes) -> Event:
        """One line from the client (with or without its CRLF) → an event."""
        if self.state is State.UPDATE:
            return Reply(err("Session is over"), close=True)
        text = line.rstrip(b"\r\n")
        # RFC 1939: PASS is valid only directly after a successful USER; any other line, also
        # a refused one, forgets the name
        self._after_user, self.user = self.user, None
        if self.sasl_pending:
            return self._sasl_response(text)
        if b"\r" in text or b"\n" in text or b"\0" in text:  # "USER a\rPASS b": one bad line
            return self._bad(err("Bad characters in command"))
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            return self._bad(err("Bad characters in command"))
        name, _, rest = decoded.partition(" ")
        if not name.isascii():  # before upper(): "l\u0131st".upper() == "LIST"
            return self._bad(err("Unknown command"))
        name = name.upper()
        if name not in _ALL_COMMANDS:
            return self._bad(err("Unknown command"))
        if name in _AUTH_STATE and self.state is not State.AUTHORIZATION:
            return self._bad(err(f"{name} is not valid in the {self.state.value} state"))
        if name in _TRANS_STATE and self.state is not State.TRANSACTION:
            return self._bad(err(f"{name} is not valid in the {self.state.value} state"))
        event = getattr(self, "_cmd_" + name.lower())(rest)
        if isinstance(event, Reply) and event.data.startswith(b"-ERR"):
            return self._bad(event.data, event.close)
        self.bad_commands = 0
        return event

    def _bad(self, data: bytes, close: bool = False) -> Reply:
        self.bad_commands += 1
        if self.bad_commands >= MAX_BAD_COMMANDS:
            return Reply(data + err("Too many bad commands, closing"), close=True)
        return Reply(data, close)

    # -- AUTHORIZATION ----------------------------------------------------------------------------
    def _cmd_user(self, rest: str) -> Event:
        if not self.auth_allowed:
            return Reply(err("Plaintext authentication is refused without TLS: use STLS", "AUTH"))
        if not rest or " " in rest.strip() or len(rest) > 200:
            return Reply(err("Syntax: USER name"))
        self.user = rest  # as sent: a padded name is refused at PASS like a wrong one
        return Reply(ok("Send PASS"))

    def _cmd_pass(self, rest: str) -> Event:
        if not self.auth_allowed:
            return Reply(err("Plaintext authentication is refused without TLS: use STLS", "AUTH"))
        user = self._after_user
        if user is None:
            return Reply(err("USER first"))
        if not rest:
            return Reply(err("Syntax: PASS password"))
        return Pass(user, rest)  # RFC 1939: the password may contain spaces

    def _cmd_apop(self, rest: str) -> Event:
        return Reply(err("APOP is not supported: use USER/PASS or AUTH PLAIN over TLS"))

    def _cmd_auth(self, rest: str) -> Event:
        words = rest.split()
        if not words:
            # the pre-RFC 5034 form Thunderbird and others probe with: list the mechanisms
            return Reply(multiline("Supported mechanisms:", ["PLAIN"] if self.auth_allowed
                                   else []))
        if not self.auth_allowed:
            return Reply(err("Plaintext authentication is refused without TLS: use STLS", "AUTH"))
        if words[0].upper() != "PLAIN":
            return Reply(err("Unsupported authentication mechanism"))
        if len(words) > 2:
            return Reply(err("Syntax: AUTH PLAIN [initial-response]"))
        if len(words) == 1:
            self.sasl_pending = True
            return Reply(b"+ \r\n")
        return self._plain(words[1])

    def _sasl_response(self, text: bytes) -> Event:
        self.sasl_pending = False
        try:
            blob = text.decode("ascii").strip()
        except UnicodeDecodeError:
            return self._bad(err("Bad authentication response", "AUTH"))
        if blob == "*":
            return self._bad(err("Authentication cancelled"))
        event = self._plain(blob)
        if isinstance(event, Reply):
            return self._bad(event.data)
        return event

    def _plain(self, blob: str) -> Event:
        creds = parse_plain(blob)
        if creds is None:
            return Reply(err("Bad AUTH PLAIN response", "AUTH"))
        return AuthPlain(*creds)

    def _cmd_stls(self, rest: str) -> Event:
        if rest:
            return Reply(err("Syntax: STLS"))
        if self.tls:
            return Reply(err("TLS is already active"))
        if not self.tls_available:
            return Reply(err("TLS is not available"))
        return Stls()

    # -- any state -------------------------------------------------------------------------------
    def _cmd_capa(self, rest: str) -> Event:
        if rest:
            return Reply(err("Syntax: CAPA"))
        return Capa()

    def _cmd_quit(self, rest: str) -> Event:
        if rest:
            return Reply(err("Syntax: QUIT"))
        if self.state is State.TRANSACTION:
            self.state = State.UPDATE
        return Quit()

    # -- TRANSACTION ----------------------------------------------------------------------------
    def _cmd_stat(self, rest: str) -> Event:
        return Reply(err("Syntax: STAT")) if rest else Stat()

    def _cmd_noop(self, rest: str) -> Event:
        return Reply(err("Syntax: NOOP")) if rest else Noop()

    def _cmd_rset(self, rest: str) -> Event:
        return Reply(err("Syntax: RSET")) if rest else Rset()

    def _optional_msg(self, rest: str, name: str) -> int | Reply | None:
        if not rest:
            return None
        n = _parse_number(rest)
        if n is None:
            return Reply(err(f"Syntax: {name} [message-number]"))
        return n

    def _cmd_list(self, rest: str) -> Event:
        n = self._optional_msg(rest, "LIST")
        return n if isinstance(n, Reply) else List(n)

    def _cmd_uidl(self, rest: str) -> Event:
        n = self._optional_msg(rest, "UIDL")
        return n if isinstance(n, Reply) else Uidl(n)

    def _cmd_retr(self, rest: str) -> Event:
        n = _parse_number(rest)
        return Reply(err("Syntax: RETR message-number")) if n is None else Retr(n)

    def _cmd_dele(self, rest: str) -> Event:
        n = _parse_number(rest)
        return Reply(err("Syntax: DELE message-number")) if n is None else Dele(n)

    def _cmd_top(self, rest: str) -> Event:
        words = rest.split(" ")
        if len(words) != 2:
            return Reply(err("Syntax: TOP message-number lines"))
        n, lines = _parse_number(words[0]), _parse_number(words[1])
        if n is None or lines is None:
            return Reply(err("Syntax: TOP message-number lines"))
        return Top(n, lines)
