"""A message's summary: what sorting, threading and list views need, computed once at ingest.

IMAP SORT/THREAD (RFC 5256, 5957), ESEARCH and PREVIEW (RFC 8970) and JMAP's Email/query sorts
and Email/get previews read these instead of opening message files. A summary depends only on
the message's bytes, so it is keyed by the email id (a content digest) and never changes.
"""

from __future__ import annotations

import email.header
import email.message
import email.utils
import html
from dataclasses import dataclass

from . import addrlist

PREVIEW_CHARS = 256  # RFC 8970 §3: at most 256 characters
_PREVIEW_SOURCE = 16 * 1024  # characters of a text part looked at for the preview
MAX_REFS = 100  # message ids of References kept (threading needs the nearest ones)


@dataclass(frozen=True, slots=True)
class Summary:
    """What the index keeps of a message besides its flags (see docs/store.md)."""

    sent: float | None  # Date: as a POSIX time (None when missing or unparsable)
    subject: str  # decoded Subject
    base_subject: str  # RFC 5256 §2.1 base subject (not case-mapped)
    from_addr: str  # first From mailbox, "local@domain" ("" when none)
    from_name: str  # its display name, decoded ("" when none)
    to_addr: str
    to_name: str
    cc_addr: str
    cc_name: str
    message_id: str  # without angle brackets ("" when none)
    references: tuple[str, ...]  # References (or else the first In-Reply-To id), oldest first
    preview: str  # RFC 8970 preview text, at most 256 characters
    has_attachment: bool

    def as_row(self) -> tuple:
        return (self.sent, self.subject, self.base_subject, self.from_addr, self.from_name,
                self.to_addr, self.to_name, self.cc_addr, self.cc_name, self.message_id,
                " ".join(self.references), self.preview, int(self.has_attachment))

    @classmethod
    def from_row(cls, row: tuple) -> Summary:
        (sent, subject, base, fa, fn, ta, tn, ca, cn, mid, refs, preview, att) = row
        return cls(sent, subject, base, fa, fn, ta, tn, ca, cn, mid,
                   tuple(refs.split()) if refs else (), preview, bool(att))


COLUMNS = ("sent, subject, base_subject, from_addr, from_name, to_addr, to_name, cc_addr, "
           "cc_name, message_id, refs, preview, has_attachment")
TABLE = f"""CREATE TABLE IF NOT EXISTS summary(emailid TEXT PRIMARY KEY, {COLUMNS.replace(
    "sent,", "sent REAL,").replace("has_attachment", "has_attachment INTEGER")})
  WITHOUT ROWID"""


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; raw 8-bit (carried as latin-1) taken as UTF-8."""
    if any(ord(c) > 127 for c in value):
        try:
            value = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except Exception:
        return value
    out = []
    for raw, charset in parts:
        if isinstance(raw, str):
            out.append(raw)
            continue
        try:
            out.append(raw.decode(charset or "utf-8", "replace"))
        except LookupError:
            out.append(raw.decode("utf-8", "replace"))
    return "".join(out)


def _collapse(value: str) -> str:
    return " ".join(value.split())


# -- RFC 5256 §2.1 base subject ----------------------------------------------------------------
# Every step moves a start or an end index over the one collapsed string (no slicing in the
# loops), and each scan consumes what it scanned: linear time whatever the subject holds.

def _blob_end(s: str, i: int, end: int) -> int:
    """End of a subj-blob ``[...]`` starting at ``i`` plus its trailing spaces, or -1."""
    if i >= end or s[i] != "[":
        return -1
    j = i + 1
    while j < end and s[j] not in "[]":
        j += 1
    if j >= end or s[j] != "]":
        return -1
    j += 1
    while j < end and s[j] == " ":
        j += 1
    return j


def _refwd_end(s: str, i: int, end: int) -> int:
    """End of a subj-refwd (``re``/``fw``/``fwd``, spaces, optional blob, ``:``), or -1."""
    low = s[i:min(i + 3, end)].lower()
    if low == "fwd":
        j = i + 3
    elif low[:2] in ("re", "fw"):
        j = i + 2
    else:
        return -1
    while j < end and s[j] == " ":
        j += 1
    k = _blob_end(s, j, end)
    if k >= 0:
        j = k
    return j + 1 if j < end and s[j] == ":" else -1


def base_subject(subject: str) -> str:
    """The base subject of RFC 5256 §2.1 (decoded subject in, case kept)."""
    return subject_info(subject)[0]


def subject_info(subject: str) -> tuple[str, bool]:
    """(base subject, whether a reply or forward marker was removed on the way): RFC 5256's
    threading tells replies from originals by the latter."""
    s = _collapse(subject.replace("\t", " "))
    i, end = 0, len(s)
    reply = False
    while True:
        while True:  # step 2: trailing "(fwd)" and spaces
            while end > i and s[end - 1] == " ":
                end -= 1
            if end - i >= 5 and s[end - 5:end].lower() == "(fwd)":
                end -= 5
                reply = True
                continue
            break
        while True:  # steps 3 to 5
            if i < end and s[i] == " ":  # a leader of white space
                i += 1
                continue
            j = i  # step 3: *subj-blob subj-refwd
            while True:
                k = _refwd_end(s, j, end)
                if k >= 0:
                    i, reply = k, True
                    break
                k = _blob_end(s, j, end)
                if k < 0:
                    break
                j = k
            if i == k:
                continue
            # step 4, done for the whole run of leading blobs at once (the text after the
            # run is the same each time, so step 3 cannot match in between): drop them while
            # something is left after them
            last = -1
            j = i
            while (k := _blob_end(s, j, end)) >= 0:
                if k < end:
                    last = k
                j = k
            if last > i:
                i = last
                continue
            break
        if end - i >= 6 and s[i:i + 5].lower() == "[fwd:" and s[end - 1] == "]":  # step 6
            i, end, reply = i + 5, end - 1, True
            continue
        return s[i:end], reply


# -- preview ------------------------------------------------------------------------------------
def _html_text(markup: str) -> str:
    """Visible text of HTML, roughly: tags, comments, scripts and styles removed (one pass)."""
    out: list[str] = []
    i, n = 0, len(markup)
    low = markup.lower()
    while i < n:
        lt = markup.find("<", i)
        if lt < 0:
            out.append(markup[i:])
            break
        out.append(markup[i:lt])
        if low.startswith("<!--", lt):
            end = markup.find("-->", lt + 4)
            i = n if end < 0 else end + 3
            continue
        skip = next((t for t in ("script", "style", "head") if low.startswith("<" + t, lt)),
                    None)
        gt = markup.find(">", lt)
        if gt < 0:
            break
        i = gt + 1
        if skip is not None:
            end = low.find(f"</{skip}", i)
            i = n if end < 0 else end
        out.append(" ")
    return html.unescape("".join(out))


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload[:_PREVIEW_SOURCE * 4].decode(charset, "replace")[:_PREVIEW_SOURCE]
    except LookupError:
        return payload[:_PREVIEW_SOURCE * 4].decode("utf-8", "replace")[:_PREVIEW_SOURCE]


def preview(msg: email.message.Message) -> str:
    """RFC 8970 preview: the first text part's text (HTML reduced to text), white space
    collapsed, at most :data:`PREVIEW_CHARS` characters."""
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_maintype() != "text":
            continue
        if (part.get("content-disposition") or "").strip().lower().startswith("attachment"):
            continue
        subtype = part.get_content_subtype()
        if subtype not in ("plain", "html"):
            continue
        text = _part_text(part)
        if subtype == "html":
            text = _html_text(text)
        return _collapse(text)[:PREVIEW_CHARS]
    return ""


def _has_attachment(msg: email.message.Message) -> bool:
    for part in msg.walk():
        if part.is_multipart():
            continue
        disp = str(part.get("content-disposition") or "").strip().lower()
        if disp.startswith("attachment"):
            return True
        if part is not msg and part.get_content_maintype() not in ("text", "multipart"):
            return True
    return False


# -- the whole summary ---------------------------------------------------------------------------
def _first_mailbox(msg: email.message.Message, name: str) -> tuple[str, str]:
    value = msg.get(name)
    if value is None:
        return "", ""
    for a in addrlist.mailboxes(str(value)):
        return decode_words(a.addr), _collapse(decode_words(a.name or ""))
    return "", ""


def _ids(value: str) -> list[str]:
    """Message ids (``<...>``) in a header value, without brackets; linear scan."""
    out = []
    i = 0
    while True:
        lt = value.find("<", i)
        if lt < 0:
            return out
        gt = value.find(">", lt + 1)
        if gt < 0:
            return out
        inner = value[lt + 1:gt]
        if inner and len(inner) <= 250 and not any(c in inner for c in " \t<"):
            out.append(inner)
        i = gt + 1


def summarize(msg: email.message.Message) -> Summary:
    """The summary of a parsed message (headers unfolded: parse with
    :data:`.mimepolicy.UNFOLDING`)."""
    subject = _collapse(decode_words(str(msg.get("subject") or "")))
    sent = None
    date = msg.get("date")
    if date is not None:
        try:
            sent = email.utils.parsedate_to_datetime(str(date)).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            sent = None
    fa, fn = _first_mailbox(msg, "from")
    ta, tn = _first_mailbox(msg, "to")
    ca, cn = _first_mailbox(msg, "cc")
    mids = _ids(str(msg.get("message-id") or ""))
    refs = _ids(str(msg.get("references") or ""))
    if not refs:
        refs = _ids(str(msg.get("in-reply-to") or ""))[:1]
    return Summary(sent, subject, base_subject(subject), fa, fn, ta, tn, ca, cn,
                   mids[0] if mids else "", tuple(refs[-MAX_REFS:]), preview(msg),
                   _has_attachment(msg))


EMPTY = Summary(None, "", "", "", "", "", "", "", "", "", (), "", False)
