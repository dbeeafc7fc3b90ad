"""APPEND with its extensions: MULTIAPPEND (RFC 3502, several messages, all or none), BINARY
literal8 (RFC 3516), CATENATE (RFC 4469, a message built from text and IMAP URLs), APPENDLIMIT
(RFC 7889) and APPENDUID with a UID set (RFC 4315)."""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import errno
import os
from dataclasses import dataclass, field

from ..store.account import AppendItem, OverQuota, StoreError
from ..store.flags import FlagError
from ..store.ingest import NotAMessage, open_message
from ..store.view import Entry
from . import fetch, mime, mimescan
from .catenate import MAX_PARTS, BadUrl, ImapUrl, parse_url, resp_text
from .cmd_mailbox import existing_mailbox, mailbox_arg, quota_of
from .cmd_message import _uid_ranges
from .mailbox import Account, MailboxError, normalize_name
from .session import AUTH, SELECTED, No, Session, command
from .wire import ParseError, Parser

MAX_MESSAGES = 100  # messages in one MULTIAPPEND


@dataclass
class Pending:
    """One message of an APPEND as parsed: a literal, or CATENATE's parts."""

    flags: list[str]
    date: dt.datetime | None  # with its zone, which the store keeps
    #: literal data, a URL as sent, then (the URL, parsed) after :func:`check_urls`
    parts: list[memoryview | str | tuple[str, ImapUrl]] = field(default_factory=list)
    binary: bool = False  # some part came as literal8


def own_hosts(s: Session) -> set[str]:
    """Names an absolute IMAP URL may give for this server."""
    names = {s.cfg.server.hostname.lower(), "localhost", "127.0.0.1", "[::1]"}
    sock = s.writer.get_extra_info("sockname")
    if sock:
        host = str(sock[0])
        names.add(f"[{host}]" if ":" in host else host)
    return names


def append_limit(s: Session) -> int:
    """The largest message APPEND accepts (APPENDLIMIT): one literal's limit."""
    return int(s.cfg.imap.max_literal)


def _data(p: Parser, msg: Pending, *, catenate: bool) -> None:
    view, binary = p.literal8_view()
    if not catenate and not view:
        raise No("cannot append an empty message")
    msg.parts.append(view)
    msg.binary |= binary


def parse(p: Parser) -> tuple[str, list[Pending]]:
    """``APPEND mailbox 1*(SP [flag-list SP] [date-time SP] (literal / literal8 /
    "CATENATE" SP "(" cat-part *(SP cat-part) ")"))``."""
    p.sp()
    name = mailbox_arg(p)
    messages: list[Pending] = []
    while p.maybe_sp():
        if messages:  # imapclient's multiappend() puts two spaces between literals
            p.maybe_sp()
        if len(messages) >= MAX_MESSAGES:
            raise ParseError(f"more than {MAX_MESSAGES} messages in one APPEND")
        flags: list[str] = []
        date: dt.datetime | None = None
        if p.peek() == 0x28:
            flags = p.flag_list()
            p.sp()
        if p.peek() == 0x22:
            date = p.date_time()
            p.sp()
        if any(f.upper() == "\\RECENT" for f in flags):
            raise ParseError("\\Recent cannot be set")
        msg = Pending(flags, date)
        if p.maybe(b"CATENATE"):
            p.sp()
            p.open_paren()
            while True:
                if len(msg.parts) >= MAX_PARTS:
                    raise ParseError(f"more than {MAX_PARTS} CATENATE parts")
                if p.maybe(b"TEXT "):
                    _data(p, msg, catenate=True)
                elif p.maybe(b"URL "):
                    msg.parts.append(p.astring().decode("ascii", "replace"))
                else:
                    raise ParseError("expected TEXT or URL")
                if not p.maybe_sp():
                    break
            p.close_paren()
        else:
            _data(p, msg, catenate=False)
        messages.append(msg)
    if not messages:
        raise ParseError("expected a message")
    p.end()
    return name, messages


def check_urls(messages: list[Pending], user: str, hosts: set[str]) -> None:
    """Each URL part parsed: it must name a message of ``user``'s on this server."""
    for msg in messages:
        for i, part in enumerate(msg.parts):
            if isinstance(part, str):
                try:
                    msg.parts[i] = (part, parse_url(part, user, hosts))
                except BadUrl as exc:
                    raise No(f"bad URL: {exc}", f"BADURL {resp_text(part)}") from None


def _storable(data: bytes) -> bool:
    """Whether binary data survives the Maildir's line-end conversion: every CR and every LF
    belongs to a CR LF pair."""
    pairs = data.count(b"\r\n")
    return data.count(b"\n") == pairs and data.count(b"\r") == pairs


def _open(account: Account, name: str, entry: Entry) -> int | None:
    """The message file, following a concurrent rename (a flag change) once."""
    for path in (account.store.path_of(name, entry), None):
        if path is None:
            found = account.maildir(name).find(entry.key)
            if found is None:
                return None
            path = str(found.path(account.maildir(name).root))
        try:
            return open_message(path)
        except NotAMessage:
            continue
    return None


def _url_bytes(account: Account, url: str, u: ImapUrl, out: bytearray, limit: int) -> None:
    """Add the octets ``u`` names in the user's own mailboxes to ``out`` (within ``limit``).

    The message is not loaded: its structure comes from a streaming scan and the section is
    read from a range of its file, so a URL costs no more memory than what it adds."""
    bad = f"BADURL {resp_text(url)}"
    try:
        name = normalize_name(u.mailbox)
        snap, _ = account.status(name)
    except MailboxError:
        raise No("the URL names no mailbox of yours", bad) from None
    if u.uidvalidity is not None and u.uidvalidity != snap.uidvalidity:
        raise No("the URL's UIDVALIDITY does not match", bad)
    uids = [e.uid for e in snap.entries]
    i = bisect.bisect_left(uids, u.uid)
    if i == len(uids) or uids[i] != u.uid:
        raise No("the URL names no message", bad)
    entry = snap.entries[i]
    fd = _open(account, name, entry)
    if fd is None:
        raise No("the URL names no message", bad)
    try:
        start, end, fields = 0, entry.size, None
        att = u.section
        if att is not None:
            root = fetch.structure_of(fd, entry.size)
            if att.numbers and mime.find_part(root, att.numbers) is None:
                raise No("the URL names no such section", bad)
            if att.spec.startswith("HEADER.FIELDS"):
                fields = mime.header_fields(mimescan.header_of(root, att.numbers) or b"",
                                            att.fields, exclude=att.spec.endswith(".NOT"))
            else:
                start, end = mimescan.section_range(root, att.numbers, att.spec) or (0, 0)
        if u.partial is not None:
            first, length = u.partial
            start = min(start + first, end)
            end = end if length is None else min(start + length, end)
        size = len(fields) if fields is not None else end - start
        if u.partial is not None and fields is not None:
            fields = fields[u.partial[0]:][:u.partial[1]]
            size = len(fields)
        if len(out) + size > limit:
            raise No("the catenated message is too large", "TOOBIG")
        if fields is not None:
            out += fields
        else:
            for piece in fetch.file_range(fd, entry.size, start, end - start):
                out += piece
    finally:
        os.close(fd)


def assemble(account: Account, msg: Pending, limit: int) -> bytes | memoryview:
    """The message's octets: its literal as is, or CATENATE's parts joined (within
    ``limit``)."""
    if len(msg.parts) == 1 and isinstance(msg.parts[0], memoryview):
        data: bytes | memoryview = msg.parts[0]
    else:
        out = bytearray()
        for part in msg.parts:
            if isinstance(part, memoryview):
                if len(out) + len(part) > limit:
                    raise No("the catenated message is too large", "TOOBIG")
                out += part
            else:
                assert isinstance(part, tuple)  # check_urls() parsed it
                _url_bytes(account, part[0], part[1], out, limit)
        data = bytes(out)
    if not data:
        raise No("cannot append an empty message")
    if len(data) > limit:
        raise No("message larger than the APPENDLIMIT", "TOOBIG")
    if msg.binary and not _storable(bytes(data)):
        raise No("binary content with bare CR or LF cannot be stored here", "UNKNOWN-CTE")
    return data


@command("APPEND", AUTH, SELECTED)
async def cmd_append(s: Session, tag: str, p: Parser, uid: bool) -> str:
    name, messages = parse(p)
    check_urls(messages, s.user, own_hosts(s))
    target = existing_mailbox(s, name)
    account = s.account
    assert account is not None
    limit = append_limit(s)

    def build() -> list[AppendItem]:
        return [(assemble(account, m, limit), m.flags, m.date) for m in messages]

    try:
        urls = any(isinstance(part, tuple) for m in messages for part in m.parts)
        items = await asyncio.to_thread(build) if urls else build()  # URLs read files
        validity, uids = await asyncio.to_thread(
            account.store.append_many, target, items, **quota_of(s))
    except FlagError as exc:
        raise ParseError(str(exc)) from None
    except OverQuota:
        raise No("not enough room in the mailbox quota", "OVERQUOTA") from None
    except StoreError as exc:
        raise No(str(exc), exc.code) from None
    except OSError as exc:  # nothing half-written shows: the files and the rows go together
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise No("not enough disk space to store the message", "OVERQUOTA") from None
        raise No(f"cannot store the message: {exc.strerror}", "SERVERBUG") from None
    s.changed(target)
    return f"[APPENDUID {validity} {_uid_ranges(uids)}] APPEND completed"
