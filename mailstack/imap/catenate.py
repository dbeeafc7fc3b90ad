"""CATENATE (RFC 4469): the IMAP URLs (RFC 5092) of ``URL`` parts, parsed without I/O.

Only URLs that name a message (or a section of one) in the user's own mailboxes are accepted:
a relative URL (``/INBOX;UIDVALIDITY=7/;UID=3/;SECTION=1``), or an absolute one whose user, if
any, is the logged-in user and whose host is one of the server's names. URLAUTH, message lists
and searches are refused. Anything else is :class:`BadUrl` (answered ``NO [BADURL ...]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import mutf7
from .fetch import Att, _section
from .wire import ParseError, Parser

MAX_URL = 2048  # octets of one URL
MAX_PARTS = 100  # TEXT and URL parts of one catenated message


class BadUrl(Exception):
    """A URL that does not name a message of the user's (the text is for the client)."""


@dataclass(frozen=True)
class ImapUrl:
    mailbox: str  # as the IMAP commands take it (modified UTF-7)
    uidvalidity: int | None
    uid: int
    section: Att | None  # BODY[section] semantics; None: the whole message
    partial: tuple[int, int | None] | None


def _unescape(text: str) -> str:
    """Percent-decoding of a URL component as UTF-8 (a malformed escape is refused)."""
    out = bytearray()
    i = 0
    raw = text.encode("utf-8")
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            pair = raw[i + 1:i + 3]
            try:
                out.append(int(pair, 16) if len(pair) == 2 else -1)
            except ValueError:
                raise BadUrl("malformed %-escape") from None
            i += 3
        else:
            out.append(c)
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl("not UTF-8") from None


def _number(text: str, what: str, *, zero: bool = False) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise BadUrl(f"bad {what}")
    value = int(text)
    if value > 0xFFFFFFFF or (value == 0 and not zero):
        raise BadUrl(f"bad {what}")
    return value


def parse_url(url: str, user: str, hosts: set[str]) -> ImapUrl:
    """The message part ``url`` names; ``user`` is the session's, ``hosts`` the server's names
    (lower case)."""
    if len(url) > MAX_URL or not url.isascii() or any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise BadUrl("not an IMAP URL")
    if url[:7].lower() == "imap://":
        rest = url[7:]
        server, slash, path = rest.partition("/")
        if not slash:
            raise BadUrl("no message in the URL")
        userinfo, at, hostport = server.rpartition("@")
        if at:
            name = userinfo.split(";", 1)[0]
            auth = userinfo[len(name):]
            if auth and auth.upper() != ";AUTH=*" and not auth.upper().startswith(";AUTH="):
                raise BadUrl("bad user information")
            if name and _unescape(name).lower() != user.lower():
                raise BadUrl("not one of your mailboxes")
        host = hostport
        if host.startswith("["):
            host = host[:host.find("]") + 1] if "]" in host else host
        else:
            host = host.split(":", 1)[0]
        if host.lower() not in hosts:
            raise BadUrl("not this server")
        path = "/" + path
    elif url.startswith("/") and not url.startswith("//"):
        path = url
    else:
        raise BadUrl("not an IMAP URL")
    return _message_part(path[1:])


def _message_part(path: str) -> ImapUrl:
    """``enc-mailbox [;UIDVALIDITY=n] /;UID=n [/;SECTION=s] [/;PARTIAL=a[.b]]``."""
    pieces = path.split("/;")
    head = pieces[0]
    box, _, validity = head.partition(";")
    uidvalidity = None
    if validity:
        key, eq, value = validity.partition("=")
        if key.upper() != "UIDVALIDITY" or not eq:
            raise BadUrl("bad mailbox reference")
        uidvalidity = _number(value, "UIDVALIDITY")
    mailbox = _unescape(box)
    if not mailbox:
        raise BadUrl("no mailbox in the URL")
    uid = None
    section: Att | None = None
    partial: tuple[int, int | None] | None = None
    order = ("UID", "SECTION", "PARTIAL")
    seen = -1
    for piece in pieces[1:]:
        key, eq, value = piece.partition("=")
        key = key.upper()
        if key not in order or not eq or order.index(key) <= seen:
            raise BadUrl(f"unsupported URL component {key[:20]}")
        seen = order.index(key)
        if key == "UID":
            uid = _number(value, "UID")
        elif key == "SECTION":
            section = _section_att(_unescape(value))
        else:
            start, dot, length = value.partition(".")
            partial = (_number(start, "PARTIAL", zero=True),
                       _number(length, "PARTIAL") if dot else None)
    if uid is None:
        raise BadUrl("the URL names no message (;UID= is missing)")
    return ImapUrl(mutf7.encode(mailbox), uidvalidity, uid, section, partial)


def _section_att(text: str) -> Att:
    """A section as FETCH ``BODY[...]`` reads it."""
    att = Att("BODY")
    p = Parser(b"[" + text.encode("utf-8") + b"]")
    try:
        _section(p, att)
    except ParseError as exc:
        raise BadUrl(f"bad section: {exc}") from None
    if not p.at_end() or att.partial is not None:
        raise BadUrl("bad section")
    return att


def resp_text(url: str) -> str:
    """``url`` as it may appear in ``[BADURL ...]``: no ``]``, controls or non-ASCII."""
    return "".join(c for c in url[:200] if 0x20 < ord(c) < 0x7F and c != "]") or "?"
