"""Header work on raw messages without a full MIME parse: trace headers, Message-ID, Date.

Operates on bytes with CRLF line ends as received by SMTP (RFC 5321 §4.4, RFC 5322 §3.6).
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time

from ..smtp.validate import header_text

#: a header field's start: its name (RFC 5322 ftext) and the colon
FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def header_block(data: bytes) -> bytes:
    """The header section (up to the first empty line); all of it when there is no body."""
    if data.startswith(b"\r\n") or data.startswith(b"\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data if end < 0 else data[: end + 2]


def header_names(block: bytes) -> list[str]:
    """Field names in order, lower-case (continuation lines are skipped)."""
    return [m.group(1).decode("ascii", "replace").lower() for m in FIELD.finditer(block)]


def count_received(block: bytes) -> int:
    return sum(1 for n in header_names(block) if n == "received")


def received_header(*, helo: str, client_ip: str, client_host: str | None, by: str,
                    protocol: str, qid: str, rcpt: str | None, tls: str = "") -> bytes:
    """A Received field (RFC 5321 §4.4) with RFC 3848 protocol names, folded at 78 columns.

    Every value is passed through ``validate.header_text``: whatever a client managed to get
    into one of them, no CR or LF can end the field early and start a forged one.
    """
    helo, client_ip, by, tls = (header_text(v) for v in (helo, client_ip, by, tls))
    from_part = (f"from {helo or 'unknown'} ({header_text(client_host or 'unknown')} "
                 f"[{client_ip}])")
    parts = [from_part]
    if tls:
        parts.append(f"({tls})")
    parts.append(f"by {by} (mailstack) with {header_text(protocol)} id {header_text(qid)}")
    if rcpt:
        parts.append(f"for <{header_text(rcpt)}>")
    date = _now_rfc5322()
    text = "Received: " + "\r\n\t".join(parts) + f";\r\n\t{date}\r\n"
    return text.encode("utf-8", "replace")


_date_cache: tuple[int, str] = (0, "")


def _now_rfc5322() -> str:
    """The current time as an RFC 5322 date, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


def protocol_name(esmtp: bool, tls: bool, auth: bool) -> str:
    """RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if auth else "")


def submission_fixups(data: bytes, hostname: str) -> bytes:
    """Add ``Date`` and ``Message-ID`` when a submitted message lacks them (RFC 6409 §8)."""
    names = set(header_names(header_block(data)))
    extra = b""
    if "date" not in names:
        extra += f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode()
    if "message-id" not in names:
        extra += f"Message-ID: <{time.time_ns():x}.{secrets.token_hex(6)}@{hostname}>\r\n".encode()
    return extra + data if extra else data


def normalize_crlf(data: bytes) -> bytes:
    """Bare LF → CRLF so that what we store and relay has canonical line ends."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
