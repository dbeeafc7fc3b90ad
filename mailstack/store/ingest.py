"""What the index learns from a message file when it first sees it.

Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and must be regular files: a symlink, FIFO or
device placed in a Maildir by hand is skipped, never followed or waited on. The email id is a
content digest (as Cyrus' GUID): the same bytes are the same Email wherever they are copied.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import re
import stat
from dataclasses import dataclass

from .mimepolicy import UNFOLDING
from .summary import EMPTY, Summary, decode_words, summarize

MAX_INDEX_TEXT = 256 * 1024  # decoded text kept in the search index per message
PARSE_LIMIT = 2 << 20  # octets of a message parsed for its headers and text (memory bound)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MSGID_RE = re.compile(r"<([^<>\s]{1,250})>")
_REPLY_PREFIX_RE = re.compile(r"^\s*((re|fwd?|aw|sv|vs)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


class NotAMessage(Exception):
    """The directory entry is not a regular file (or vanished)."""


def open_message(path: str) -> int:
    """A descriptor of the regular file at ``path``; refuses symlinks and special files."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise NotAMessage(path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAMessage(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_message(path: str, limit: int | None = None, hint: int = 0) -> bytes:
    """The file's bytes (up to ``limit``), through :func:`open_message`. ``hint``: the size
    expected (the index knows it): one read of that size (plus one to see the end) instead of
    a 1 MiB buffer per read, which costs an mmap and munmap for every small message."""
    fd = open_message(path)
    try:
        chunks = []
        left = limit if limit is not None else 1 << 62
        step = min(hint + 1, 1 << 20) if hint else 1 << 16
        while left > 0:
            chunk = os.read(fd, min(left, step))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
            step = 1 << 20 if len(chunk) == step else step
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Ingested:
    emailid: str
    internaldate: float
    size: int  # octets with CRLF line ends
    message_id: str | None
    references: list[str]  # In-Reply-To and References ids, nearest parent last
    base_subject: str
    is_reply: bool
    headers: str  # decoded header fields, case-folded, for the search index
    body: str  # decoded text parts, case-folded, for the search index
    summary: Summary = EMPTY  # sort, thread and preview data (see summary.py)


def email_id(digest: bytes) -> str:
    return "M" + digest.hex()[:24]


def ingest(path: str) -> Ingested:
    """Read the message at ``path`` once, in pieces: digest and size of the whole, threading
    headers and search text from its first :data:`PARSE_LIMIT` octets."""
    fd = open_message(path)
    digest = hashlib.sha1(usedforsecurity=False)
    head = bytearray()
    size = 0
    last = b""
    try:
        st = os.fstat(fd)
        step = min(st.st_size + 1, 1 << 20)  # small messages: one read of their size
        while True:
            chunk = os.read(fd, step)
            if not chunk:
                break
            digest.update(chunk)
            # octets with CRLF line ends: each bare LF counts twice
            size += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                size -= 1
            last = chunk[-1:]
            if len(head) < PARSE_LIMIT:
                head += chunk[:PARSE_LIMIT - len(head)]
    finally:
        os.close(fd)
    return _describe(bytes(head), email_id(digest.digest()), st.st_mtime, size)


def _describe(data: bytes, emailid: str, mtime: float, size: int) -> Ingested:
    head, _, _ = data.partition(b"\n\n")
    try:
        msg = email.parser.BytesParser(policy=UNFOLDING).parsebytes(data)
    except Exception:  # a parser failure must never stop indexing
        msg = None
    subject = _header(msg, "subject") if msg is not None else ""
    mid_values = _MSGID_RE.findall(_header(msg, "message-id")) if msg is not None else []
    refs: list[str] = []
    if msg is not None:
        refs = _MSGID_RE.findall(_header(msg, "references"))
        for r in _MSGID_RE.findall(_header(msg, "in-reply-to")):
            if r not in refs:
                refs.append(r)
    base = _REPLY_PREFIX_RE.sub("", subject).strip().lower()
    is_reply = bool(_REPLY_PREFIX_RE.match(subject))
    summary = EMPTY
    if msg is not None:
        headers, body = _search_text(msg)
        try:
            summary = summarize(msg)
        except Exception:  # a hostile message must never stop indexing
            summary = EMPTY
    else:
        headers, body = head.decode("utf-8", "replace"), ""
    return Ingested(emailid, mtime, size, mid_values[0] if mid_values else None, refs[-50:],
                    base[:200], is_reply, headers.casefold()[:MAX_INDEX_TEXT],
                    body.casefold()[:MAX_INDEX_TEXT], summary)


def _header(msg: email.message.Message | None, name: str) -> str:
    if msg is None:
        return ""
    value = msg.get(name)
    if value is None:
        return ""
    return decode_words(str(value).replace("\r", "").replace("\n", ""))


def _search_text(msg: email.message.Message) -> tuple[str, str]:
    """(decoded header fields, decoded text parts) of a message."""
    headers = "\n".join(f"{k}: {decode_words(str(v))}" for k, v in msg.items())
    pieces: list[str] = []
    budget = MAX_INDEX_TEXT
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, "replace")
        except LookupError:
            text = payload.decode("utf-8", "replace")
        pieces.append(text[:budget])
        budget -= len(text)
        if budget <= 0:
            break
    return headers, "\n".join(pieces)


def summarize_file(path: str) -> Summary:
    """The summary of the message at ``path`` (its first :data:`PARSE_LIMIT` octets)."""
    data = read_message(path, PARSE_LIMIT)
    try:
        return summarize(email.parser.BytesParser(policy=UNFOLDING).parsebytes(data))
    except Exception:
        return EMPTY
