"""A message's JMAP view (RFC 8621 4.1): header fields, addresses, body structure, values,
preview — parsed once per email id and kept in a bounded cache (:func:`parsed`).

This is the one place JMAP parses message bytes. Header properties need only the header
block (``headers_only``: the body is left unparsed); ``subject`` and ``preview`` come from the
store's summaries without opening the file (``jmap/email.py``).
"""

from __future__ import annotations

import email.policy
import email.utils
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from typing import Any

CACHE_SIZE = 500  # messages kept parsed (a parsed message costs a few times its size)
CACHE_BYTES = 16 << 20  # and at most this many octets of them
PREVIEW_CHARS = 256
MAX_PARTS = 500  # body parts described per message (a hostile message may have thousands)

_cache: OrderedDict[str, Parsed] = OrderedDict()
_cache_lock = threading.Lock()
_cached_bytes = 0


def utc(ts: float) -> str:
    """An RFC 3339 UTCDate (``Z``, whole seconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; unfolded; never raises."""
    value = value.replace("\r", "").replace("\n", "")
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def addresses(value: str | None) -> list[dict[str, Any]] | None:
    """``[{"name": ..., "email": ...}]`` of an address-list header, or None when absent."""
    if value is None:
        return None
    out = []
    for name, addr in email.utils.getaddresses([value.replace("\r", "").replace("\n", " ")]):
        if not name and not addr:
            continue
        out.append({"name": decode_words(_unquote(name)) or None, "email": addr})
    return out


def _unquote(name: str) -> str:
    """A display name with its quoted-pairs (``\\x``) undone (RFC 5322 3.2.1)."""
    if "\\" not in name:
        return name
    out, i = [], 0
    while i < len(name):
        if name[i] == "\\" and i + 1 < len(name):
            i += 1
        out.append(name[i])
        i += 1
    return "".join(out)


def urls(value: str | None) -> list[str] | None:
    """RFC 8621 4.1.2.7 ``asURLs``: the ``<URL>`` items of an RFC 2369 field, or None."""
    if value is None:
        return None
    found = []
    for chunk in value.split("<")[1:]:
        url, closed, _ = chunk.partition(">")
        url = "".join(url.split())  # folding whitespace is not part of a URL
        if closed and url:
            found.append(url)
    return found or None


def raw_fields(raw: bytes) -> list[tuple[str, str]]:
    """The header fields of a message as (name, raw value): the value is every octet after
    the colon (leading white space too), folded lines joined with CRLF (RFC 8621 4.1.2.1);
    octets that are not UTF-8 are replaced. One pass; the block ends where the parser's does
    (an empty line, or a line that is neither a field nor a continuation)."""
    fields: list[tuple[str, list[str]]] = []
    end = min((i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0),
              default=len(raw))
    # the header block alone (never the body), decoded once
    lines = raw[:end + 1].decode("utf-8", "replace").split("\n")
    if lines[0].startswith("From "):
        lines[0] = "X:"  # an mbox separator, not a field: skipped below
        skip_first = True
    else:
        skip_first = False
    for line in lines:
        line = line.removesuffix("\r")
        if not line:
            break
        if line[0] == " " or line[0] == "\t":
            if fields:
                fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            break
        fields.append((name, [value]))
    if skip_first:
        del fields[0]
    return [(name, "\r\n".join(parts)) for name, parts in fields]


def crlf(value: str) -> str:
    """A raw header value with the message's CRLF line ends (the store keeps LF)."""
    return value.replace("\r\n", "\n").replace("\n", "\r\n") if "\n" in value else value


def grouped_addresses(value: str) -> list[dict[str, Any]]:
    """RFC 8621 4.1.2.4 ``asGroupedAddresses``: each ``name: members;`` group, and runs of
    addresses outside groups as groups named null (one linear scan: quotes, comments and
    angle brackets hide ``:``, ``;`` and ``,``)."""
    value = value.replace("\r", "").replace("\n", " ")
    segments: list[tuple[str | None, str]] = []
    group: str | None = None
    start = last_comma = -1
    quote = escaped = False
    comment = 0
    angle = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif ch == "\\" and (quote or comment):
            escaped = True
        elif quote:
            quote = ch != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(ch, 0)
        elif ch == '"':
            quote = True
        elif ch == "(":
            comment = 1
        elif angle or ch == "<":
            angle = ch != ">"
        elif ch == ":" and group is None:
            segments.append((None, value[start + 1:last_comma + 1]))
            group, start = value[max(start, last_comma) + 1:i], i
        elif ch == ";" and group is not None:
            segments.append((group, value[start + 1:i]))
            group, start = None, i
            last_comma = i
        elif ch == ",":
            last_comma = i
    segments.append((group, value[start + 1:]))
    out: list[dict[str, Any]] = []
    for name, text in segments:
        found = addresses(text) or []
        if name is None:
            if not found:
                continue
            if out and out[-1]["name"] is None:
                out[-1]["addresses"] += found
                continue
        else:
            name = decode_words(email.utils.unquote(name.strip()))
        out.append({"name": name, "addresses": found})
    return out


def message_ids(value: str | None) -> list[str] | None:
    if value is None:
        return None
    ids = [p.strip("<> \t") for p in value.replace("\n", " ").split() if p.startswith("<")]
    return [i for i in ids if i] or None


def date_value(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.isoformat()


class Parsed:
    """The parts of a message JMAP asks for, computed on demand from the raw bytes."""

    def __init__(self, raw: bytes, blob_prefix: str = "", headers_only: bool = False) -> None:
        if headers_only:  # keep (and parse) the header block alone
            end = min((i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0),
                      default=len(raw))
            raw = raw[:end + 1]
        self.raw = raw
        self.blob_prefix = blob_prefix  # a leaf's blobId is prefix_partId
        #: only the header fields were parsed (the body methods must not be used)
        self.headers_only = headers_only
        self.msg: Message = BytesParser(policy=email.policy.compat32).parsebytes(
            raw, headersonly=headers_only)
        #: each header field's name and raw value (all after the colon, CRLF folding)
        self.headers: list[tuple[str, str]] = raw_fields(raw)
        self._parts: list[tuple[Message, str]] | None = None
        self._structure: dict[str, Any] | None = None
        self._lists: tuple[list, list, list] | None = None

    # -- header fields -------------------------------------------------------------------
    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[-1] if values else None

    def first(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def headers_list(self) -> list[dict[str, str]]:
        return [{"name": k, "value": v} for k, v in self.headers]

    # -- body ------------------------------------------------------------------------------
    def parts(self) -> list[tuple[Message, str]]:
        """Leaf parts in order with their partId (``1``, ``2`` ... depth first)."""
        if self._parts is None:
            out: list[tuple[Message, str]] = []
            for part in self.msg.walk():
                if len(out) >= MAX_PARTS:
                    break
                if not part.is_multipart():
                    out.append((part, str(len(out) + 1)))
            self._parts = out
        return self._parts

    def structure(self) -> dict[str, Any]:
        if self._structure is None:
            ids = {id(p): pid for p, pid in self.parts()}
            self._structure = self._describe(self.msg, ids, 0)
        return self._structure

    def _describe(self, part: Message, ids: dict[int, str], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "partId": ids.get(id(part)), "blobId": None, "size": 0,
            "headers": [{"name": k, "value": crlf(" " + str(v)) if v else ""}
                        for k, v in part.raw_items()],
            "name": decode_words(part.get_filename()) if part.get_filename() else None,
            "type": part.get_content_type(), "charset": _charset(part),
            "disposition": (part.get("content-disposition") or "").split(";")[0].strip().lower()
            or None,
            "cid": (part.get("content-id") or "").strip("<> ") or None,
            "language": _languages(part.get("content-language")),
            "location": (str(part.get("content-location")).strip() or None)
            if part.get("content-location") else None,
        }
        if part.is_multipart() and depth < 32:
            subs = part.get_payload()
            out["subParts"] = [self._describe(p, ids, depth + 1) for p in subs[:MAX_PARTS]
                               if isinstance(p, Message)]
        else:
            payload = part.get_payload(decode=True)
            out["size"] = len(payload) if isinstance(payload, bytes) else 0
            if self.blob_prefix and out["partId"]:
                out["blobId"] = f"{self.blob_prefix}_{out['partId']}"
            if part.get_content_maintype() == "text":
                out["charset"] = part.get_content_charset() or "us-ascii"
        return out

    def text_of(self, part: Message) -> str:
        return self.decoded(part)[0]

    def decoded(self, part: Message) -> tuple[str, bool]:
        """(the part's text, whether it could not be decoded cleanly: an unknown charset or
        octets invalid in it, replaced by U+FFFD)."""
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return "", False
        charset = part.get_content_charset() or "us-ascii"
        try:
            return payload.decode(charset), False
        except UnicodeDecodeError:
            if charset in ("us-ascii", "ascii"):  # 8-bit text labelled ASCII: mostly UTF-8
                try:
                    return payload.decode("utf-8"), False
                except UnicodeDecodeError:
                    pass
            return payload.decode(charset, "replace"), True
        except LookupError:
            return payload.decode("utf-8", "replace"), True

    def part(self, part_id: str) -> Message | None:
        return next((p for p, pid in self.parts() if pid == part_id), None)

    def body_lists(self) -> tuple[list[str], list[str], list[str]]:
        """(textBody, htmlBody, attachments) partIds, RFC 8621 4.1.4's algorithm in short:
        the first text/plain and text/html of each alternative; everything else attached."""
        if self._lists is not None:
            return self._lists
        text: list[str] = []
        html: list[str] = []
        att: list[str] = []
        for part, pid in self.parts():
            ctype = part.get_content_type()
            disp = (part.get("content-disposition") or "").split(";")[0].strip().lower()
            inline = disp != "attachment"
            if inline and ctype == "text/plain":
                text.append(pid)
                if not any(p.get_content_type() == "text/html" for p, _ in self.parts()):
                    html.append(pid)
            elif inline and ctype == "text/html":
                html.append(pid)
                if not any(p.get_content_type() == "text/plain" for p, _ in self.parts()):
                    text.append(pid)
            else:
                att.append(pid)
        self._lists = (text, html, att)
        return self._lists

    def preview(self) -> str:
        text, _html, _ = self.body_lists()
        for pid in text:
            part = self.part(pid)
            if part is not None:
                body = self.text_of(part)
                if part.get_content_type() == "text/html":
                    body = _strip_tags(body[:PREVIEW_CHARS * 64])
                return " ".join(body[:PREVIEW_CHARS * 8].split())[:PREVIEW_CHARS]
        return ""

    def part_view(self, pid: str) -> dict[str, Any]:
        """The EmailBodyPart of a leaf (for textBody/htmlBody/attachments)."""
        def find(node: dict[str, Any]) -> dict[str, Any] | None:
            if node.get("partId") == pid:
                return node
            for sub in node.get("subParts", ()):
                got = find(sub)
                if got is not None:
                    return got
            return None
        return find(self.structure()) or {"partId": pid}


def _strip_tags(html: str) -> str:
    out = []
    inside = False
    for ch in html:
        if ch == "<":
            inside = True
        elif ch == ">":
            inside = False
        elif not inside:
            out.append(ch)
    return "".join(out)


def parsed(emailid: str, read: Callable[[], bytes | None],
           headers_only: bool = False) -> Parsed | None:
    """The parsed message of ``emailid`` (bytes from ``read`` on a cache miss); with
    ``headers_only``, a parse of its header fields may do (a full one is used when cached)."""
    keys = (emailid, emailid + "/h") if headers_only else (emailid,)
    with _cache_lock:
        for key in keys:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                return hit
    raw = read()
    if raw is None:
        return None
    p = Parsed(raw, emailid, headers_only)
    key = keys[-1]
    global _cached_bytes
    with _cache_lock:
        if key not in _cache:
            _cache[key] = p
            _cached_bytes += len(raw)
        while _cache and (len(_cache) > CACHE_SIZE or _cached_bytes > CACHE_BYTES):
            _, old = _cache.popitem(last=False)
            _cached_bytes -= len(old.raw)
    return p


def _charset(part: Message) -> str | None:
    """The charset parameter; ``us-ascii`` for a text part without one (RFC 2045 5.2)."""
    if part.get_content_maintype() != "text":
        return None
    value = part.get_content_charset()
    return value[:100] if value else "us-ascii"


def _languages(value: Any) -> list[str] | None:
    """The language tags of a Content-Language field (RFC 3282), or None."""
    if not value:
        return None
    tags = [t.strip() for t in str(value).split(",") if t.strip()][:20]
    return tags or None
