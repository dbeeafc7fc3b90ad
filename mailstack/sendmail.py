"""``mailstack sendmail``: the /usr/sbin/sendmail interface for local programs.

Reads a message on stdin and drops it into the mta's queue directly (like Postfix's postdrop),
then pokes a running mta. Local programs are trusted like Postfix's local submissions: they may
send to any domain. Exit codes follow sysexits.h (64 usage, 65 data, 75 temporary failure).

With ``-t`` the recipients come from To, Cc and Bcc. Only CR LF (or LF) ends a header line: a
header with a bare CR in it is refused, so ``Subject: x\rBcc: y`` cannot add a recipient.
"""

from __future__ import annotations

import argparse
import email.utils
import getpass
import os
import pwd
import socket
import sys

from .config import Config
from .mta.message import FIELD, normalize_crlf, received_header, submission_fixups
from .mta.queue import Envelope, Spool, new_queue_id
from .mta.queuecli import signal_mta
from .smtp.address import AddressError, parse_mailbox

EX_USAGE, EX_DATAERR, EX_TEMPFAIL = 64, 65, 75


def _split_header(raw: bytes) -> tuple[list[bytes], bytes]:
    """(header lines, each ending in CRLF; the body) of a message with CRLF line ends.

    Only CRLF ends a line. The header section ends at the empty line, or at the first line that
    is neither a field nor a continuation: that line starts the body (as Postfix and the stdlib
    parser read it), and the caller puts the missing empty line in front of it so that every
    later reader agrees.
    """
    lines: list[bytes] = []
    pos, n = 0, len(raw)
    while pos < n:
        end = raw.find(b"\r\n", pos)
        stop = n if end < 0 else end + 2
        line = raw[pos:stop]
        if line == b"\r\n":
            return lines, raw[stop:]
        if not (FIELD.match(line) or (lines and line[:1] in (b" ", b"\t"))):
            return lines, raw[pos:]
        lines.append(line if line.endswith(b"\r\n") else line + b"\r\n")
        pos = stop
    return lines, b""


def _fields(lines: list[bytes]) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of each header field."""
    out: list[tuple[str, str]] = []
    for line in lines:
        text = line[:-2].decode("utf-8", "replace")
        if line[:1] in (b" ", b"\t"):
            out[-1] = (out[-1][0], out[-1][1] + text)
        else:
            name, _, value = text.partition(":")
            out.append((name.strip().lower(), value.strip()))
    return out


def _without(lines: list[bytes], name: bytes) -> list[bytes]:
    """The header lines minus every ``name`` field (with its continuation lines)."""
    kept, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        field = FIELD.match(line)
        skipping = bool(field) and field.group(1).lower() == name
        if not skipping:
            kept.append(line)
    return kept


def invoking_user() -> str:
    """The login name of the real user id (not $USER or $LOGNAME, which the caller sets)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return getpass.getuser()


def _has_account(cfg: Config, address: str) -> bool:
    from .accounts.users import UserDB

    try:
        return UserDB(cfg.data_dir / "users").exists(address)
    except OSError:
        return False


def main(args: argparse.Namespace, cfg: Config) -> int:
    raw = normalize_crlf(sys.stdin.buffer.read())
    if not raw.strip():
        print("mailstack sendmail: empty message on stdin", file=sys.stderr)
        return EX_DATAERR
    lines, body = _split_header(raw)
    if any(b"\r" in line[:-2] or b"\0" in line for line in lines):
        print("mailstack sendmail: bare CR or NUL in the message header (RFC 5322 2.2); a "
              "header line ends with CRLF or LF only", file=sys.stderr)
        return EX_DATAERR
    fields = _fields(lines)
    rcpts = list(args.recipients)
    if args.read_recipients:
        addrs = email.utils.getaddresses([v for k, v in fields if k in ("to", "cc", "bcc")])
        rcpts += [a for _, a in addrs if a]
        lines = _without(lines, b"bcc")
    raw = b"".join(lines) + b"\r\n" + body
    if not rcpts:
        print("mailstack sendmail: no recipients (name them, or use -t)", file=sys.stderr)
        return EX_USAGE
    login = invoking_user()
    # like Postfix: the invoking user at the first local domain, unless -f says otherwise
    sender = args.sender or f"{login}@{cfg.server.domains[0]}"
    if not args.sender and not _has_account(cfg, sender):
        print(f"mailstack sendmail: warning: envelope sender {sender} (you, at the first local "
              "domain) has no account: a bounce of this message will be lost; use -f ADDRESS",
              file=sys.stderr)
    try:
        for a in [*rcpts, *([sender] if sender != "<>" else [])]:
            parse_mailbox(a)
    except AddressError as exc:
        print(f"mailstack sendmail: bad address {a!r}: {exc}", file=sys.stderr)
        return EX_DATAERR
    if sender == "<>":
        sender = ""
    if not any(k == "from" for k, _ in fields):
        raw = f"From: <{sender}>\r\n".encode() + raw if sender else raw
    raw = submission_fixups(raw, cfg.server.hostname)
    qid = new_queue_id()
    trace = received_header(helo=socket.gethostname(), client_ip="127.0.0.1",
                            client_host=f"local user {login}",
                            by=cfg.server.hostname, protocol="local", qid=qid,
                            rcpt=rcpts[0] if len(rcpts) == 1 else None)
    message = trace + raw
    env = Envelope(sender=sender, recipients=rcpts, size=len(message), body="8BITMIME",
                   client_ip="127.0.0.1", client_helo="localhost",
                   auth_user=login, listener="sendmail")
    try:
        Spool(cfg.data_dir / "queue").put(message, env, qid)
    except OSError as exc:
        print(f"mailstack sendmail: cannot queue the message: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if not signal_mta(cfg):
        print(f"mailstack sendmail: queued as {qid}; the mta is not running, it will be "
              "delivered when it starts", file=sys.stderr)
    return 0
