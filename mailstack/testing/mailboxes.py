"""Reading a test stack's Maildirs: parsed messages with helpers, filters, the capture filter."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

from ..store.maildir import Maildir, MaildirError, mailbox_path

_URL = re.compile(r"https?://[^\s<>\"'()]+[^\s<>\"'().,;:!?]")


@dataclass(frozen=True)
class Attachment:
    """One attached file: ``name`` (its filename, "" when none), ``type`` (``image/png``),
    ``data`` (the decoded bytes; also as ``.bytes``)."""

    name: str
    type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def bytes(self) -> bytes:  # the name the issue and the docs use
        return self.data


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "area"):
            self.links += [v for k, v in attrs if k == "href" and v]


class MailMessage(EmailMessage):
    """A message as the stack's helpers return it: an ``email.message.EmailMessage``
    (``msg["Subject"]``, ``msg.get_body()``, ...) with shortcuts for tests."""

    def _body(self, subtype: str) -> str:
        part = self.get_body(preferencelist=(subtype,))
        if part is None or part.get_content_subtype() != subtype:
            return ""
        try:
            content = part.get_content()
        except (LookupError, ValueError):  # unknown charset: decode leniently
            payload = part.get_payload(decode=True)
            content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        return content if isinstance(content, str) else ""

    @property
    def text(self) -> str:
        """The text/plain body ("" when there is none), also from multipart mail."""
        return self._body("plain")

    @property
    def html(self) -> str:
        """The text/html body ("" when there is none)."""
        return self._body("html")

    @property
    def links(self) -> list[str]:
        """Every link, in order, once: ``href`` targets of the HTML body (entities decoded),
        then http(s) URLs in the text body."""
        parser = _Links()
        html = self.html
        if html:
            parser.feed(html)
            parser.close()
        out: list[str] = []
        for link in [*parser.links, *_URL.findall(self.text)]:
            if link not in out:
                out.append(link)
        return out

    @property
    def attachments(self) -> list[Attachment]:
        """Every attached file (``Content-Disposition: attachment``, or a named part below
        the top), in order."""
        out = []
        for part in self.walk():
            if part.is_multipart():
                continue
            disposition = part.get_content_disposition()
            name = part.get_filename() or ""
            if disposition == "attachment" or (name and part is not self):
                payload = part.get_payload(decode=True)
                out.append(Attachment(name, part.get_content_type(),
                                      payload if isinstance(payload, bytes) else b""))
        return out

    @property
    def recipients(self) -> list[str]:
        """The addresses in To, Cc and Bcc (lower case, without names), in that order."""
        out: list[str] = []
        for name in ("To", "Cc", "Bcc"):
            for header in self.get_all(name, []):
                for addr in getattr(header, "addresses", ()):
                    a = _address(addr)
                    if a and a not in out:
                        out.append(a)
        return out

    @property
    def envelope_recipients(self) -> list[str]:
        """Who the stack delivered this copy for: the ``X-Original-To`` headers of captured
        mail, else ``Delivered-To``."""
        return original_recipients(self) or [
            str(v).strip().strip("<>").lower() for v in self.get_all("Delivered-To", [])]

    @property
    def sender(self) -> str:
        """The From address (lower case, without the name)."""
        header = self.get("From")
        addrs = getattr(header, "addresses", ())
        return _address(addrs[0]) if addrs else ""


def _address(addr: Address) -> str:
    return addr.addr_spec.lower() if addr.addr_spec and addr.addr_spec != "<>" else ""


def parse(raw: bytes) -> MailMessage:
    msg = email.message_from_bytes(raw, _class=MailMessage, policy=email.policy.default)
    assert isinstance(msg, MailMessage)
    return msg


def read_folder(data_dir: Path, account: str, folder: str = "INBOX") -> list[MailMessage]:
    """Every message in ``folder`` of ``account`` (new/ and cur/), oldest first."""
    try:
        box = Maildir(mailbox_path(data_dir, account)).folder(folder)
    except MaildirError as exc:
        raise ValueError(str(exc)) from None
    out = []
    for msg in box.scan():
        try:
            raw = box.read(msg)
        except FileNotFoundError:  # expunged or moved by a client meanwhile
            continue
        out.append(parse(raw))
    return out


def original_recipients(msg: EmailMessage) -> list[str]:
    """The envelope recipients a captured message was sent to (its X-Original-To headers)."""
    return [str(v).strip().strip("<>").lower() for v in msg.get_all("X-Original-To", [])]


def subject_matches(msg: EmailMessage, subject: str | None) -> bool:
    """``subject`` is a case-insensitive substring of the message's Subject (None: any)."""
    return subject is None or subject.lower() in str(msg.get("Subject", "")).lower()


@dataclass(frozen=True)
class Filter:
    """What a wait or a search asks of a message; every given part must hold (each is a
    case-insensitive substring test): ``subject``, ``sender`` (the From header), ``to`` (an
    address among To/Cc/Bcc or the envelope recipients), ``text`` (the text or HTML body),
    ``headers`` (name → part of its value), ``where`` (any predicate)."""

    subject: str | None = None
    sender: str | None = None
    to: str | None = None
    text: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    where: Callable[[MailMessage], bool] | None = None

    def __call__(self, msg: MailMessage) -> bool:
        if not subject_matches(msg, self.subject):
            return False
        if self.sender is not None and self.sender.lower() not in str(msg.get("From", "")).lower():
            return False
        if self.to is not None:
            want = self.to.strip().strip("<>").lower()
            if not any(want in a for a in [*msg.recipients, *msg.envelope_recipients]):
                return False
        if self.text is not None:
            want = self.text.lower()
            if want not in msg.text.lower() and want not in msg.html.lower():
                return False
        for name, value in self.headers.items():
            if not any(value.lower() in str(v).lower() for v in msg.get_all(name, [])):
                return False
        return self.where is None or bool(self.where(msg))

    def describe(self) -> str:
        parts = [f"{k} containing {v!r}" for k, v in
                 (("subject", self.subject), ("From", self.sender), ("recipient", self.to),
                  ("body", self.text)) if v is not None]
        parts += [f"{k} header containing {v!r}" for k, v in self.headers.items()]
        if self.where is not None:
            parts.append(f"where={getattr(self.where, '__name__', 'predicate')}")
        return " with " + ", ".join(parts) if parts else ""
