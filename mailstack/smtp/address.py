"""Mailbox addresses as they appear in SMTP paths (RFC 5321 §4.1.2), parsed and checked.

Pure functions, no I/O. The mta validates every address here before it is queued or handed to
the SMTP client, so no CR, LF, NUL or other control character ever reaches a protocol line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# RFC 5321 §4.1.2 / RFC 5322 §3.2.3: atext; RFC 6531 allows UTF-8 (non-ASCII) in SMTPUTF8 mode.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"([\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LDH = r"A-Za-z0-9\u0080-\U0010ffff"
_LABEL = rf"[{_LDH}]([{_LDH}\-]*[{_LDH}])?"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_ADDR_LITERAL = re.compile(r"\[(IPv6:[0-9A-Fa-f:.]+|\d{1,3}(\.\d{1,3}){3})\]")

MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3


class AddressError(ValueError):
    """Not a valid mailbox; the message says why."""


@dataclass(frozen=True)
class Mailbox:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def domain_lower(self) -> str:
        return self.domain.lower()

    @property
    def is_quoted(self) -> bool:
        return self.local.startswith('"')


@lru_cache(maxsize=4096)  # pure; the same few senders and recipients recur all day
def parse_mailbox(text: str, *, allow_utf8: bool = True) -> Mailbox:
    """Parse ``local@domain`` (no angle brackets); raises AddressError."""
    if any(c in text for c in "\r\n\x00") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise AddressError("control characters in address")
    if not allow_utf8 and not text.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8")
    if len(text) > MAX_PATH - 2:
        raise AddressError("address too long")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise AddressError("address must be local-part@domain")
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise AddressError("bad local part")
    if len(local.encode()) > MAX_LOCAL:
        raise AddressError("local part longer than 64 octets")
    if not (_DOMAIN.fullmatch(domain) or _ADDR_LITERAL.fullmatch(domain)):
        raise AddressError("bad domain")
    if len(domain.encode()) > MAX_DOMAIN:
        raise AddressError("domain too long")
    return Mailbox(local, domain)


def account_key(mbox: Mailbox) -> str:
    """The users-file key for a local mailbox: lower-case, as ``mailstack user add`` stores it."""
    return f"{mbox.local.lower()}@{mbox.domain.lower()}"


@lru_cache(maxsize=4096)
def split_path(arg: str) -> tuple[str, str] | None:
    """``<path> params`` from a MAIL/RCPT argument → (mailbox or "", params), None if malformed.

    A source route (``<@a,@b:user@dom>``) is dropped, as RFC 5321 §4.1.1.3 allows.
    """
    text = arg.lstrip()
    if not text.startswith("<"):
        return None
    quoted = escaped = False
    for i, ch in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            path, rest = text[1:i], text[i + 1:]
            if rest and not rest.startswith(" "):
                return None
            if path.startswith("@"):
                _route, colon, path = path.partition(":")
                if not colon:
                    return None
            return path, rest.strip()
    return None
