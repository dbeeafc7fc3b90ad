"""Sans-I/O assembly of one IMAP command from its lines and literals, within limits.

The session feeds each line to :meth:`CommandAssembler.add_line` and gets back what to do next:
the command is complete (:class:`Complete`), a literal of ``size`` octets follows
(:class:`ReadLiteral`), or the command is refused (:class:`Refuse`, with the reply and whether the
connection must close because the client is already sending a non-synchronising literal).

Every step costs time proportional to the line just added: the tag is read once from the first
line and a literal announcement only from the end of the current line, so a command of many
small lines and literals is linear in its size (a rescan per literal was quadratic).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import wire
from .wire import ParseError, Parser

PREAUTH_MAX_COMMAND = 8 * 1024  # lines and literals of one command before login (as Dovecot)
MAX_LITERALS = 100  # literals in one command (LOGIN has 2, an ID with 30 pairs 60)
TAG_HEAD = 64  # a tag longer than this is not looked for in an over-long line


@dataclass(frozen=True)
class Limits:
    """What one command may hold: octets in all, octets per literal, number of literals."""

    max_command: int
    max_literal: int
    max_literals: int = MAX_LITERALS


@dataclass(frozen=True)
class Complete:
    data: bytes


@dataclass(frozen=True)
class ReadLiteral:
    size: int
    nonsync: bool


@dataclass(frozen=True)
class Refuse:
    reply: bytes
    close: bool
    reason: str


Step = Complete | ReadLiteral | Refuse


def guess_tag(line: bytes) -> str | None:
    """The tag at the start of ``line`` when one is there and followed by a space."""
    head = line[:TAG_HEAD + 1]
    try:
        p = Parser(head)
        tag = p.tag()
        p.sp()
    except ParseError:
        return None
    return tag


class CommandAssembler:
    """Collects one command; create a new one per command."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.buf = bytearray()
        self.tag = "*"
        self.literals = 0

    def add_line(self, line: bytes) -> Step:
        """A line (with its CRLF) read from the client."""
        if not self.buf:
            self.tag = guess_tag(line) or "*"
        self.buf += line
        lit = wire.literal_at_end(line)
        if lit is None:
            if len(self.buf) > self.limits.max_command:
                return self._refuse(b"BAD command too long", False, "command too long")
            return Complete(bytes(self.buf))
        size, nonsync = lit
        self.literals += 1
        if size > self.limits.max_literal:
            return self._refuse(b"BAD [TOOBIG] literal larger than %d bytes"
                                % self.limits.max_literal, nonsync, f"literal of {size} bytes")
        if len(self.buf) + size > self.limits.max_command:
            return self._refuse(b"BAD [TOOBIG] command too long", nonsync,
                                f"command of {len(self.buf) + size} bytes")
        if self.literals > self.limits.max_literals:
            return self._refuse(b"BAD [LIMIT] too many literals in one command", nonsync,
                                f"more than {self.limits.max_literals} literals")
        return ReadLiteral(size, nonsync)

    def _refuse(self, text: bytes, close: bool, reason: str) -> Refuse:
        reply = self.tag.encode() + b" " + text + b"\r\n"
        if close:  # the literal's octets are already on their way: the stream is lost
            reply += b"* BYE command refused, closing the connection\r\n"
        return Refuse(reply, close, reason)

    def line_too_long(self, head: bytes) -> Refuse:
        """A line over the limit was discarded; ``head`` is its start.

        Answered with the command's tag (from the first line, or the start of this one) so that
        a client waiting for its tag does not hang; without one, ``* BYE`` and close."""
        tag = self.tag if self.buf else guess_tag(head)
        if tag is None or tag == "*":
            return Refuse(b"* BYE line too long\r\n", True, "line too long, no tag")
        return Refuse(tag.encode() + b" BAD line too long\r\n", False, "line too long")
