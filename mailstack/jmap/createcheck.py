"""The rules of RFC 8621 4.6 an Email create object must follow before a message is built
from it, and which parsed forms each header field may take (RFC 8621 4.1.2): sans-I/O."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: RFC 5322 and RFC 2369 fields and the forms (besides asRaw) each may take; any other field
#: may take every form
_KNOWN_FORMS: dict[str, frozenset[str]] = {}
for _names, _forms in (
        (("subject", "comments", "keywords", "list-id"), ("asText",)),
        (("from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender",
          "resent-reply-to", "resent-to", "resent-cc", "resent-bcc"),
         ("asAddresses", "asGroupedAddresses")),
        (("message-id", "in-reply-to", "references", "resent-message-id"), ("asMessageIds",)),
        (("date", "resent-date"), ("asDate",)),
        (("list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner",
          "list-archive"), ("asURLs",)),
        (("return-path", "received"), ())):
    for _n in _names:
        _KNOWN_FORMS[_n] = frozenset(("asRaw", *_forms))

#: the header field each convenience property of an Email stands for
EMAIL_FIELDS = {"from": "from", "sender": "sender", "to": "to", "cc": "cc", "bcc": "bcc",
                "replyTo": "reply-to", "messageId": "message-id", "inReplyTo": "in-reply-to",
                "references": "references", "subject": "subject", "sentAt": "date"}
#: the header field each property of an EmailBodyPart stands for
PART_FIELDS = {"type": "content-type", "charset": "content-type", "name": "content-type",
               "disposition": "content-disposition", "cid": "content-id",
               "language": "content-language", "location": "content-location"}
#: Email properties only the server sets
SERVER_SET = ("id", "blobId", "threadId", "size", "hasAttachment", "preview")


class CreateError(ValueError):
    """An invalid create object: ``properties`` are the offending ones (paths with ``/``)."""

    def __init__(self, text: str, *properties: str) -> None:
        super().__init__(text)
        self.properties = list(properties)


def form_allowed(name: str, form: str) -> bool:
    """Whether header field ``name`` may be read or written in parsed form ``form``."""
    allowed = _KNOWN_FORMS.get(name.lower())
    return allowed is None or form in allowed


def header_key(key: str) -> tuple[str, str] | None:
    """(field name lowercased, form) of a ``header:Name[:asForm][:all]`` key, else None."""
    if not key.startswith("header:"):
        return None
    parts = key.split(":")
    rest = parts[2:]
    if rest and rest[-1] == "all":
        rest = rest[:-1]
    return parts[1].lower(), (rest[0] if rest else "asRaw")


def _fields(obj: dict[str, Any], convenience: dict[str, str], where: str) -> dict[str, str]:
    """Header field → the property giving it; two properties for one field are refused."""
    seen: dict[str, str] = {}
    for key in obj:
        hk = header_key(key)
        field = hk[0] if hk else convenience.get(key)
        if field is None:
            continue
        if hk and not form_allowed(*hk):
            raise CreateError(f"{key[:60]}: a form this field cannot take", where + key)
        if field in seen and not (field == "content-type" and not hk and seen[field] in
                                  PART_FIELDS):
            raise CreateError(f"{key[:60]}: the same header field as {seen[field][:60]}",
                              where + key)
        seen.setdefault(field, key)
    return seen


def _parts(obj: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(path, EmailBodyPart) of every part given, depth first (bounded by the caller's)."""
    stack: list[tuple[str, Any]] = []
    if isinstance(obj.get("bodyStructure"), dict):
        stack.append(("bodyStructure", obj["bodyStructure"]))
    for prop in ("textBody", "htmlBody", "attachments"):
        if isinstance(obj.get(prop), list):
            stack.extend((f"{prop}/{i}", p) for i, p in enumerate(obj[prop][:200]))
    count = 0
    while stack and count < 1000:
        path, part = stack.pop(0)
        count += 1
        if not isinstance(part, dict):
            continue
        yield path, part
        if isinstance(part.get("subParts"), list):
            stack.extend((f"{path}/subParts/{i}", p)
                         for i, p in enumerate(part["subParts"][:200]))


def check_create(obj: dict[str, Any]) -> list[str]:
    """Check an Email create object (RFC 8621 4.6); the blob ids its parts name."""
    bad = [k for k in SERVER_SET if k in obj]
    if bad:
        raise CreateError("properties only the server sets", *bad)
    if "headers" in obj:
        raise CreateError("headers: give each header field as its own property", "headers")
    top = _fields(obj, EMAIL_FIELDS, "")
    content = [k for f, k in top.items() if f.startswith("content-")]
    if content:
        raise CreateError("Content-* fields belong to body parts", *content)
    if obj.get("bodyStructure") is not None:
        other = [p for p in ("textBody", "htmlBody", "attachments") if obj.get(p) is not None]
        if other:
            raise CreateError("bodyStructure excludes textBody, htmlBody and attachments",
                              *other)
    for prop, ctype in (("textBody", "text/plain"), ("htmlBody", "text/html")):
        parts = obj.get(prop)
        if parts is None:
            continue
        if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict) \
                or (parts[0].get("type") or "text/plain").lower() != ctype:
            raise CreateError(f"{prop}: exactly one {ctype} part", prop)
    values = obj.get("bodyValues") or {}
    if isinstance(values, dict):
        for pid, v in values.items():
            if isinstance(v, dict):
                flags = [f"bodyValues/{pid[:60]}/{k}" for k in
                         ("isEncodingProblem", "isTruncated") if v.get(k) is True]
                if flags:
                    raise CreateError("a body value cannot be truncated or badly encoded",
                                      *flags)
    blobs: list[str] = []
    for path, part in _parts(obj):
        where = path + "/"
        if "headers" in part:
            raise CreateError("headers: give each header field as its own property",
                              where + "headers")
        fields = _fields(part, PART_FIELDS, where)
        if "content-transfer-encoding" in fields:
            raise CreateError("Content-Transfer-Encoding is the server's choice",
                              where + fields["content-transfer-encoding"])
        if path == "bodyStructure":
            dup = [where + k for f, k in fields.items() if f in top]
            if dup:
                raise CreateError("a header field the Email already gives", *dup)
        if isinstance(part.get("subParts"), list):
            continue
        pid, bid = part.get("partId"), part.get("blobId")
        if pid is not None and bid is not None:
            raise CreateError("partId or blobId, not both", where + "partId", where + "blobId")
        if pid is not None:
            if not isinstance(pid, str) or not isinstance(values, dict) \
                    or not isinstance(values.get(pid), dict):
                raise CreateError("partId: no such bodyValue", where + "partId")
            given = [where + k for k in ("charset", "size") if part.get(k) is not None]
            if given:
                raise CreateError("charset and size come from the body value", *given)
        elif isinstance(bid, str):
            blobs.append(bid)
        else:
            raise CreateError("a part needs a partId or a blobId", where + "partId")
    return blobs
