"""``mailstack sendmail``: the /usr/sbin/sendmail interface for local programs.

Reads a message on stdin and drops it into the mta's queue directly (like Postfix's postdrop),
then pokes a running mta. Local programs are trusted like Postfix's local submissions: they may
send to any domain. Exit codes follow sysexits.h (64 usage, 65 data, 75 temporary failure).
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import email.utils
import getpass
import socket
import sys

from .address import AddressError, parse_mailbox
from .config import Config
from .mta.message import header_block, normalize_crlf, received_header, submission_fixups
from .mta.queue import Envelope, Spool, new_queue_id
from .mta.queuecli import signal_mta

EX_USAGE, EX_DATAERR, EX_TEMPFAIL = 64, 65, 75


def _header_values(block: bytes, names: set[str]) -> list[str]:
    """Unfolded values of the named header fields."""
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    out = []
    for name in names:
        out += [str(v) for v in msg.get_all(name, [])]
    return out


def _strip_bcc(data: bytes) -> bytes:
    head = header_block(data)
    lines = head.split(b"\r\n")
    kept, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + data[len(head):]


def main(args: argparse.Namespace, cfg: Config) -> int:
    raw = normalize_crlf(sys.stdin.buffer.read())
    if not raw.strip():
        print("mailstack sendmail: empty message on stdin", file=sys.stderr)
        return EX_DATAERR
    rcpts = list(args.recipients)
    if args.read_recipients:
        addrs = email.utils.getaddresses(_header_values(header_block(raw), {"to", "cc", "bcc"}))
        rcpts += [a for _, a in addrs if a]
        raw = _strip_bcc(raw)
    if not rcpts:
        print("mailstack sendmail: no recipients (name them, or use -t)", file=sys.stderr)
        return EX_USAGE
    sender = args.sender or f"{getpass.getuser()}@{cfg.server.domains[0]}"
    try:
        for a in [*rcpts, *([sender] if sender != "<>" else [])]:
            parse_mailbox(a)
    except AddressError as exc:
        print(f"mailstack sendmail: bad address {a!r}: {exc}", file=sys.stderr)
        return EX_DATAERR
    if sender == "<>":
        sender = ""
    if not _header_values(header_block(raw), {"from"}):
        raw = f"From: <{sender}>\r\n".encode() + raw if sender else raw
    raw = submission_fixups(raw, cfg.server.hostname)
    qid = new_queue_id()
    trace = received_header(helo=socket.gethostname(), client_ip="127.0.0.1",
                            client_host=f"local user {getpass.getuser()}",
                            by=cfg.server.hostname, protocol="local", qid=qid,
                            rcpt=rcpts[0] if len(rcpts) == 1 else None)
    message = trace + raw
    env = Envelope(sender=sender, recipients=rcpts, size=len(message), body="8BITMIME",
                   client_ip="127.0.0.1", client_helo="localhost",
                   auth_user=getpass.getuser(), listener="sendmail")
    try:
        Spool(cfg.data_dir / "queue").put(message, env, qid)
    except OSError as exc:
        print(f"mailstack sendmail: cannot queue the message: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if not signal_mta(cfg):
        print(f"mailstack sendmail: queued as {qid}; the mta is not running, it will be "
              "delivered when it starts", file=sys.stderr)
    return 0
