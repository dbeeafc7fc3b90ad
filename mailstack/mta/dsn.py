"""Delivery status notifications (RFC 3464 bounces) from MAILER-DAEMON.

A bounce is ``multipart/report; report-type=delivery-status`` with a human-readable part, a
``message/delivery-status`` part (per-message and per-recipient fields) and the original
headers as ``text/rfc822-headers``. It is sent with the null reverse path ``<>`` so that it can
never cause another bounce (RFC 5321 §4.5.5); the queue never bounces a message whose sender
was ``<>``.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from dataclasses import dataclass

from .message import header_block


@dataclass(frozen=True)
class FailedRecipient:
    address: str
    status: str  # enhanced status code, e.g. 5.1.1
    diagnostic: str  # "smtp; 550 5.1.1 no such user"
    remote_mta: str = ""


def make_bounce(*, hostname: str, qid: str, sender: str, arrival: float,
                failed: list[FailedRecipient], original: bytes) -> bytes:
    """The whole DSN message (CRLF line ends) to send to ``sender``."""
    boundary = f"{qid}.{secrets.token_hex(8)}/{hostname}"
    now = email.utils.formatdate(time.time(), localtime=True)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {now}",
        f"Message-ID: <{qid}.{secrets.token_hex(4)}.bounce@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. The reasons are below.",
        "",
    ]
    for f in failed:
        lines.append(f"<{f.address}>: {f.diagnostic}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailstack-Queue-ID: {qid}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=True)}",
    ]
    for f in failed:
        lines += ["", f"Final-Recipient: rfc822; {f.address}", "Action: failed",
                  f"Status: {f.status}"]
        if f.remote_mta:
            lines.append(f"Remote-MTA: dns; {f.remote_mta}")
        lines.append(f"Diagnostic-Code: {_one_line(f.diagnostic)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = header_block(original).rstrip(b"\r\n")
    tail = f"\r\n\r\n--{boundary}--\r\n".encode()
    return "\r\n".join(lines).encode("utf-8") + b"\r\n" + head + tail


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]
