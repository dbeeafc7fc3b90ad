"""Reading a test stack's Maildirs: parsed messages, oldest first, and the capture filter."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

from ..store.maildir import Maildir, MaildirError, mailbox_path


def read_folder(data_dir: Path, account: str, folder: str = "INBOX") -> list[EmailMessage]:
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
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        out.append(parsed)
    return out


def original_recipients(msg: EmailMessage) -> list[str]:
    """The envelope recipients a captured message was sent to (its X-Original-To headers)."""
    return [str(v).strip().strip("<>").lower() for v in msg.get_all("X-Original-To", [])]


def subject_matches(msg: EmailMessage, subject: str | None) -> bool:
    """``subject`` is a case-insensitive substring of the message's Subject (None: any)."""
    return subject is None or subject.lower() in str(msg.get("Subject", "")).lower()
