"""An LMTP server session (RFC 2033, with RFC 3030 CHUNKING), sans-I/O.

The mda's listener (:mod:`mailstack.mda.lmtp`) feeds it what a connection receives
(:meth:`LMTPSession.feed`), takes the next complete item (:meth:`~LMTPSession.next_item`: a
command line, a BDAT command with its octets, or the end of DATA) and lets the session apply
it (:meth:`~LMTPSession.handle`), which answers with reply lines or, when a message is
complete, a :class:`Deliver` for the listener to carry out. Between the two steps the listener
may interpose (test faults); nothing here blocks or touches a socket.

What it keeps to, whatever the peer sends:

* a command line is at most :data:`MAX_LINE` octets; a longer one is dropped as it arrives
  and refused once it ends, so an endless line costs no memory;
* a BDAT chunk's octets are always consumed in full, accepted or not, so chunk data is never
  read as commands; a chunk over the size limit is skipped, not kept;
* DATA ends only at ``CRLF . CRLF`` (:class:`~mailstack.smtp.data.DataReader`);
* at most :data:`MAX_RECIPIENTS` recipients a transaction, :data:`BOGUS_LIMIT` unknown commands
  a connection;
* input is split with ``bytes.find`` from where the last search stopped: linear in its size.

Replies carry enhanced status codes (RFC 2034), one per accepted recipient after the message
(RFC 2033 §4.2), in RCPT order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from .address import split_path
from .data import DataReader
from .reply import printable
from .validate import helo_error

#: the longest command line taken, CRLF included (RFC 5321 §4.5.3.1.4 asks for 512 at least;
#: MAIL's parameters make it longer)
MAX_LINE = 1024
MAX_RECIPIENTS = 1000
#: unknown commands before the connection is closed
BOGUS_LIMIT = 5
_PARAM_VALUE = 500  # an ENVID (RFC 3461: 100 characters) or SIZE value, generously
_TOO_BIG = "552 5.3.4 Message too big: see SIZE in the LHLO reply"
_COMMANDS = "BDAT DATA HELP LHLO MAIL NOOP QUIT RCPT RSET VRFY"


@dataclass
class Transaction:
    """One MAIL … message exchange."""

    sender: str  # "" for the null reverse-path
    envid: str | None = None  # ENVID= (RFC 3461): the mta's queue id
    retry: bool = False  # XRETRY: the mta may have tried this entry before
    rcpts: list[str] = field(default_factory=list)
    chunks: list[bytes] | None = None  # BDAT chunks so far (None: no BDAT yet)
    chunked: int = 0  # their octets
    content: bytes = b""


class Command(NamedTuple):
    verb: str  # upper case
    arg: str  # "" when none; undecodable octets as surrogates


class Chunk(NamedTuple):
    """A BDAT command with its octets (``data`` None: they were skipped)."""

    size: int
    last: bool
    data: bytes | None
    arg: str


class Message(NamedTuple):
    """The end of DATA: the message, or the reply that refuses it."""

    data: bytes
    refusal: str | None


class Refusal(NamedTuple):
    """A line refused before it is a command (too long, not ASCII, empty)."""

    reply: str


Item = Command | Chunk | Message | Refusal


class Deliver(NamedTuple):
    """A complete message: deliver it, then answer one reply per recipient, in order."""

    transaction: Transaction


class LMTPSession:
    """One connection's LMTP state. ``recipient(address)`` returns the refusal for an address
    the server does not take (None: accept it); ``max_message`` bounds a message's octets."""

    def __init__(self, hostname: str, recipient: Callable[[str], str | None],
                 max_message: int) -> None:
        self.hostname = hostname
        self.recipient = recipient
        self.max_message = max_message
        self.greeted = False
        self.transaction: Transaction | None = None
        #: set once the connection is to be closed after the replies so far
        self.closing = False
        self._buf = bytearray()
        self._scanned = 0  # how far _buf was searched for a line end
        self._skipping_line = False  # dropping a too-long line until its end
        self._data: DataReader | None = None  # in DATA
        self._chunk: tuple[int, bool, str] | None = None  # in a BDAT chunk: size, LAST, arg
        self._chunk_left = 0
        self._chunk_parts: list[bytes] | None = None  # None: the chunk is skipped
        self._bogus = 0

    def greeting(self) -> str:
        return f"220 {self.hostname} mailstack LMTP"

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def in_message(self) -> bool:
        """Whether the input is a message's octets (DATA, a BDAT chunk), not command lines."""
        return self._data is not None or self._chunk is not None

    @property
    def buffered(self) -> int:
        """Octets received and not yet taken as items."""
        return len(self._buf)

    # -- the grammar: bytes to items ------------------------------------------------------
    def next_item(self) -> Item | None:
        """The next complete item of the input, or None until more arrives."""
        buf = self._buf
        if self._data is not None:
            return self._next_data()
        if self._chunk is not None:
            return self._next_chunk()
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                if self._skipping_line or len(buf) > MAX_LINE:
                    self._skipping_line = True
                    buf.clear()
                    self._scanned = 0
                else:
                    self._scanned = len(buf)
                return None
            line = bytes(buf[:end + 1])
            del buf[:end + 1]
            self._scanned = 0
            if self._skipping_line or len(line) > MAX_LINE:
                self._skipping_line = False
                return Refusal(f"500 5.5.2 Line too long (a command: {MAX_LINE} octets)")
            return self._command(line)

    def _command(self, line: bytes) -> Item:
        line = line.rstrip(b"\r\n")
        verb_bytes, _, arg_bytes = line.partition(b" ")
        if not verb_bytes:
            return Refusal("500 5.5.2 Error: bad syntax")
        try:
            verb = verb_bytes.decode("ascii").upper()
        except UnicodeDecodeError:
            return Refusal("500 5.5.2 Error: bad syntax")
        arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        if verb != "BDAT":
            return Command(verb, arg)
        parts = arg.split()
        size = parts[0] if parts else ""
        if not (size.isascii() and size.isdigit() and len(size) <= 15) or len(parts) > 2 or (
                len(parts) == 2 and parts[1].upper() != "LAST"):
            # the chunk's length is unknown: the input cannot be followed any further
            self.closing = True
            return Refusal("501 5.5.4 Syntax: BDAT <size> [LAST]; closing the connection")
        n, last = int(size), len(parts) == 2
        tx = self.transaction
        keep = tx is not None and bool(tx.rcpts) and tx.chunked + n <= self.max_message
        self._chunk, self._chunk_left = (n, last, arg), n
        self._chunk_parts = [] if keep else None
        return self._next_chunk()

    def _next_chunk(self) -> Chunk | None:
        buf, left = self._buf, self._chunk_left
        take = min(left, len(buf))
        if take:
            if self._chunk_parts is not None:
                self._chunk_parts.append(bytes(buf[:take]))
            del buf[:take]
            self._chunk_left = left = left - take
        if left:
            return None
        assert self._chunk is not None
        size, last, arg = self._chunk
        parts = self._chunk_parts
        self._chunk, self._chunk_parts = None, None
        return Chunk(size, last, None if parts is None else b"".join(parts), arg)

    def _next_data(self) -> Message | None:
        reader = self._data
        assert reader is not None
        rest = reader.feed(bytes(self._buf))
        self._buf.clear()
        result = reader.result
        if result is None:
            return None
        self._buf += rest
        self._data = None
        if result.too_big:
            return Message(b"", _TOO_BIG)
        if result.line_too_long:
            return Message(b"", "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets a line)")
        return Message(result.data, None)

    # -- the state machine: items to replies ------------------------------------------------
    def handle(self, item: Item) -> list[str] | Deliver:
        """Apply ``item``: the replies to send, or the message to deliver (then call
        :meth:`delivered`)."""
        if isinstance(item, Command):
            method = _HANDLERS.get(item.verb)
            if method is not None:
                if item.verb in _AFTER_LHLO and not self.greeted:
                    return ["503 5.5.1 Error: send LHLO first"]
                return method(self, item.arg)
            self._bogus += 1
            if self._bogus >= BOGUS_LIMIT:
                self.closing = True
                return ["502 5.5.1 Too many unrecognized commands, goodbye"]
            return [f'500 5.5.2 Error: command "{printable(item.verb[:20])}" '
                    "not recognized"]
        if isinstance(item, Chunk):
            return self._chunk_done(item)
        if isinstance(item, Message):
            tx = self.transaction
            if item.refusal is not None or tx is None:
                return self._refuse_message(item.refusal or "503 5.5.1 Error: no transaction")
            tx.content = item.data
            return Deliver(tx)
        return [item.reply]

    def delivered(self) -> None:
        """The message of the last :class:`Deliver` is answered: the transaction ends."""
        self.transaction = None

    def _refuse_message(self, reply: str) -> list[str]:
        """The message is refused: once per recipient (RFC 2033 §4.2), or once without any."""
        tx, self.transaction = self.transaction, None
        return [reply] * len(tx.rcpts) if tx and tx.rcpts else [reply]

    def _chunk_done(self, chunk: Chunk) -> list[str] | Deliver:
        tx = self.transaction
        if tx is None or not tx.rcpts:  # also covers a missing MAIL
            return ["503 5.5.1 Error: need RCPT command"]
        if chunk.data is None:  # over the size limit: the transaction ends here
            if chunk.last:
                return self._refuse_message(_TOO_BIG)
            self.transaction = None
            return [_TOO_BIG]
        if tx.chunks is None:
            tx.chunks = []
        tx.chunks.append(chunk.data)
        tx.chunked += chunk.size
        if not chunk.last:
            return [f"250 2.0.0 {chunk.size} octets received"]
        tx.content = b"".join(tx.chunks)
        return Deliver(tx)

    def _lhlo(self, arg: str) -> list[str]:
        if not arg:
            return ["501 5.5.4 Syntax: LHLO hostname"]
        problem = helo_error(arg)
        if problem is not None:
            return [f"501 5.5.4 Bad HELO/EHLO name: {problem}"]
        self.greeted, self.transaction = True, None
        return [f"250-{self.hostname}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                "250-CHUNKING", "250-8BITMIME", "250-SMTPUTF8", f"250 SIZE {self.max_message}"]

    def _not_lmtp(self, arg: str) -> list[str]:
        return ["500 5.5.1 Error: this is LMTP: greet with LHLO"]

    def _mail(self, arg: str) -> list[str]:
        if self.transaction is not None:
            return ["503 5.5.1 Error: nested MAIL command"]
        split = split_path(arg[5:]) if arg[:5].upper() == "FROM:" else None
        if split is None:
            return ["501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"]
        path, params = split
        tx = Transaction(path)
        for param in params.split():
            key, eq, value = param.partition("=")
            key = key.upper()
            if len(value) > _PARAM_VALUE:
                return [f"501 5.5.4 Error: {key} value too long"]
            if key == "SIZE" and eq and value.isascii() and value.isdigit():
                if int(value) > self.max_message:
                    return ["552 5.3.4 Error: message size exceeds fixed maximum message size"]
            elif (key == "BODY" and value.upper() in ("7BIT", "8BITMIME")) or (
                    key == "SMTPUTF8" and not eq):
                pass  # offered; nothing to do (the copy is stored as it came)
            elif key == "ENVID" and value:
                tx.envid = value
            elif key == "XRETRY" and not eq:
                tx.retry = True
            else:
                return ["555 5.5.4 MAIL FROM parameters not recognized or not implemented"]
        self.transaction = tx
        return ["250 2.1.0 OK"]

    def _rcpt(self, arg: str) -> list[str]:
        tx = self.transaction
        if tx is None:
            return ["503 5.5.1 Error: need MAIL command"]
        split = split_path(arg[3:]) if arg[:3].upper() == "TO:" else None
        if split is None or not split[0]:
            return ["501 5.5.4 Syntax: RCPT TO:<address>"]
        address, params = split
        if params:
            return ["555 5.5.4 RCPT TO parameters not recognized or not implemented"]
        if len(tx.rcpts) >= MAX_RECIPIENTS:
            return ["452 4.5.3 Error: too many recipients"]
        refusal = self.recipient(address)
        if refusal is not None:
            return [refusal]
        tx.rcpts.append(address)
        return ["250 2.1.5 OK"]

    def _data_command(self, arg: str) -> list[str]:
        tx = self.transaction
        if tx is None or not tx.rcpts:
            return ["503 5.5.1 Error: need RCPT command"]
        if tx.chunks is not None:
            return ["503 5.5.1 Error: DATA after BDAT; send RSET first"]
        if arg:
            return ["501 5.5.4 Syntax: DATA"]
        self._data = DataReader(self.max_message)
        return ["354 End data with <CR><LF>.<CR><LF>"]

    def _rset(self, arg: str) -> list[str]:
        self.transaction = None
        return ["250 2.0.0 OK"]

    def _noop(self, arg: str) -> list[str]:
        return ["250 2.0.0 OK"]

    def _quit(self, arg: str) -> list[str]:
        self.closing = True
        return ["221 2.0.0 Bye"]

    def _vrfy(self, arg: str) -> list[str]:
        if not arg:
            return ["501 5.5.4 Syntax: VRFY <address>"]
        return ["252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"]

    def _help(self, arg: str) -> list[str]:
        return [f"214 2.0.0 Supported commands: {_COMMANDS}"]


_HANDLERS: dict[str, Callable[[LMTPSession, str], list[str]]] = {
    "LHLO": LMTPSession._lhlo, "HELO": LMTPSession._not_lmtp, "EHLO": LMTPSession._not_lmtp,
    "MAIL": LMTPSession._mail, "RCPT": LMTPSession._rcpt, "DATA": LMTPSession._data_command,
    "RSET": LMTPSession._rset, "NOOP": LMTPSession._noop, "QUIT": LMTPSession._quit,
    "VRFY": LMTPSession._vrfy, "HELP": LMTPSession._help,
}
#: the transaction's commands: refused before LHLO (a BDAT chunk then finds no transaction)
_AFTER_LHLO = frozenset({"MAIL", "RCPT", "DATA"})
