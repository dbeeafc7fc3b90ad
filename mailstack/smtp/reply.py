"""SMTP/LMTP replies: enhanced status codes (RFC 3463, RFC 2034) on every reply we send.

aiosmtpd writes some replies without an enhanced code and with wording of its own; the
protocol subclasses pass every outgoing reply through :func:`enhance` so that clients that
see ``ENHANCEDSTATUSCODES`` in EHLO get one everywhere, and the texts say what went wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_HAS_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(\s|$)")
_REPLY = re.compile(r"(\d{3})([ -])(.*)", re.S)

# aiosmtpd's own wording → ours (matched on the start of the reply)
_REWRITES: tuple[tuple[str, str], ...] = (
    ("500 Command line too long",
     "500 5.5.2 Line too long (RFC 5321 4.5.3.1: 512 octets a command, 1000 a text line)"),
    ("500 Line too long", "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6: 1000 octets a line)"),
    ("552 Error: Too much mail data", "552 5.3.4 Message too big: see SIZE in the EHLO reply"),
    ("553 5.1.3 Error: malformed address", "501 5.1.3 Bad address syntax"),
    ("530 Must issue a STARTTLS command first",
     "530 5.7.0 Must issue a STARTTLS command first"),
    ("538 5.7.11", "538 5.7.11 Encryption required: issue STARTTLS before AUTH"),
    ("503 Error: need MAIL command", "503 5.5.1 Need MAIL command first"),
    ("503 Error: need RCPT command", "503 5.5.1 Need RCPT command first"),
    ("503 Error: nested MAIL command", "503 5.5.1 Nested MAIL command"),
    ("503 Error: send HELO first", "503 5.5.1 Send HELO/EHLO first"),
    ("503 Error: send LHLO first", "503 5.5.1 Send LHLO first"),
)

_DEFAULT_ENHANCED = {
    "211": "2.0.0", "221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "251": "2.1.5",
    "252": "2.5.0", "421": "4.4.2", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1",
    "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1",
    "504": "5.5.4", "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0",
    "551": "5.1.6", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}


#: control characters shown as "?" in a reply: a CR or LF from the client's input, echoed
#: back, would otherwise start a new reply line
_CONTROLS = {c: "?" for c in [*range(0x20), 0x7F]}


def printable(text: str) -> str:
    """``text`` with every control character shown as "?" (for a reply line)."""
    return text if text.isprintable() else text.translate(_CONTROLS)


#: a temporary or permanent failure reply, with or without an enhanced code (test faults)
_FAILURE = re.compile(r"[45]\d\d( [245]\.\d{1,3}\.\d{1,3})? \S.*")


def is_failure_reply(text: str) -> bool:
    """Whether ``text`` is a one-line 4xx or 5xx reply, e.g. ``451 4.3.0 try later``."""
    return _FAILURE.fullmatch(text) is not None


def enhance(reply: str) -> str:
    """Add an enhanced status code to a one-line reply that lacks one."""
    if reply[3:4] in (" ", "-") and _HAS_ENHANCED.match(reply, 4) and reply[:3] not in _REWRITTEN:
        return reply  # our own replies: they have their code already
    return _enhance(reply)


_REWRITTEN = {prefix[:3] for prefix, _ in _REWRITES if _HAS_ENHANCED.match(prefix, 4)}


@lru_cache(maxsize=512)  # aiosmtpd's replies: a small set of fixed texts
def _enhance(reply: str) -> str:
    for prefix, new in _REWRITES:
        if reply.startswith(prefix):
            return new
    m = _REPLY.match(reply)
    if not m:
        return reply
    code, sep, text = m.groups()
    if code not in _DEFAULT_ENHANCED or _HAS_ENHANCED.match(text):
        return reply
    text = text.removeprefix("Error: ")
    return f"{code}{sep}{_DEFAULT_ENHANCED[code]} {text}"


@dataclass(frozen=True)
class Reply:
    """A complete SMTP/LMTP reply: code, enhanced code and text."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        """From a client library's (code, text); the enhanced code is split off when present."""
        text = " ".join(message.split())
        m = _HAS_ENHANCED.match(text)
        if m:
            enhanced = text[: m.end()].strip()
            return cls(code, enhanced, text[m.end():].strip())
        default = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")
        return cls(code, default, text)
