"""A message from an Email/set create object (RFC 8621 4.6): header properties, textBody /
htmlBody / attachments with bodyValues or blobs. Header values carrying CR or LF are refused
(header injection)."""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from .createcheck import CreateError as ComposeError
from .createcheck import header_key

ADDRESS_PROPS = {"from": "From", "sender": "Sender", "to": "To", "cc": "Cc", "bcc": "Bcc",
                 "replyTo": "Reply-To"}
ID_PROPS = {"messageId": "Message-ID", "inReplyTo": "In-Reply-To", "references": "References"}
MAX_PARTS = 100
HEADER_OF_PROP = {**ADDRESS_PROPS, **ID_PROPS, "subject": "Subject", "sentAt": "Date"}
FORMS = ("asRaw", "asText", "asAddresses", "asGroupedAddresses", "asMessageIds", "asDate",
         "asURLs")




def _clean(value: Any, prop: str, limit: int = 998) -> str:
    if not isinstance(value, str):
        raise ComposeError(f"{prop}: expected a string", prop)
    if "\r" in value or "\n" in value or "\0" in value:
        raise ComposeError(f"{prop}: CR, LF and NUL are not allowed in header values", prop)
    if len(value) > limit:
        raise ComposeError(f"{prop}: too long", prop)
    return value


def _addresses(value: Any, prop: str) -> str:
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise ComposeError(f"{prop}: expected a list of EmailAddress", prop)
    out = []
    for a in value:
        addr = _clean(a.get("email", ""), prop, 320)
        if not addr or any(c in addr for c in " <>,;\t\"") or addr.count("@") != 1:
            raise ComposeError(f"{prop}: not an address: {addr[:50]!r}", prop)
        name = a.get("name")
        out.append(email.utils.formataddr((_clean(name, prop, 200), addr)) if name else addr)
    return ", ".join(out)


def _grouped(value: Any, prop: str) -> str:
    if not isinstance(value, list) or not all(isinstance(g, dict) for g in value):
        raise ComposeError(f"{prop}: expected a list of EmailAddressGroup", prop)
    out = []
    for g in value:
        members = _addresses(g.get("addresses") or [], prop)
        name = g.get("name")
        out.append(f"{_clean(name, prop, 200)}: {members};" if name is not None else members)
    return ", ".join(o for o in out if o)


def _strings(value: Any, prop: str) -> list[str]:
    if not isinstance(value, list):
        raise ComposeError(f"{prop}: expected a list of strings", prop)
    return [_clean(v, prop, 900).strip("<> ") for v in value]


def _header_value(value: Any, form: str, prop: str) -> str:
    """A header field's value from a JMAP parsed form (RFC 8621 4.1.2)."""
    if value is None:
        raise ComposeError(f"{prop}: null", prop)
    if form in ("asRaw", "asText"):
        return _clean(value, prop).strip()
    if form == "asAddresses":
        return _addresses(value, prop)
    if form == "asGroupedAddresses":
        return _grouped(value, prop)
    if form == "asMessageIds":
        return " ".join(f"<{i}>" for i in _strings(value, prop))
    if form == "asURLs":
        return ", ".join(f"<{u}>" for u in _strings(value, prop))
    try:  # asDate
        when = datetime.fromisoformat(_clean(value, prop).replace("Z", "+00:00"))
    except ValueError:
        raise ComposeError(f"{prop}: expected a date", prop) from None
    return email.utils.format_datetime(when)


def compose(obj: dict[str, Any], blob: Callable[[str], bytes | None]) -> bytes:
    """The RFC 5322 message (CRLF line ends) for an Email create object."""
    msg = EmailMessage(policy=email.policy.SMTP)
    for prop, header in ADDRESS_PROPS.items():
        if obj.get(prop) is not None:
            msg[header] = _addresses(obj[prop], prop)
    if obj.get("subject") is not None:
        msg["Subject"] = _clean(obj["subject"], "subject")
    sent = obj.get("sentAt")
    if sent is not None:
        try:
            when = datetime.fromisoformat(_clean(sent, "sentAt").replace("Z", "+00:00"))
        except ValueError:
            raise ComposeError("sentAt: expected a date", "sentAt") from None
        msg["Date"] = email.utils.format_datetime(when)
    else:
        msg["Date"] = email.utils.formatdate(localtime=False)
    for prop, header in ID_PROPS.items():
        ids = obj.get(prop)
        if ids is None:
            continue
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ComposeError(f"{prop}: expected a list of ids", prop)
        msg[header] = " ".join(f"<{_clean(i, prop, 250).strip('<>')}>" for i in ids)
    if "Message-ID" not in msg:
        msg["Message-ID"] = email.utils.make_msgid(domain="jmap.mailstack")
    convenience = {HEADER_OF_PROP[k].lower() for k in HEADER_OF_PROP if obj.get(k) is not None}
    for key, value in obj.items():
        if key.startswith("header:"):
            parts = key.split(":")
            name = parts[1]
            if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
                raise ComposeError(f"{key[:60]}: not a header name", key)
            every = parts[-1] == "all" and len(parts) > 2
            forms = parts[2:-1] if every else parts[2:]
            form = forms[0] if forms else "asRaw"
            if len(forms) > 1 or form not in FORMS:
                raise ComposeError(f"{key[:60]}: not a header form", key)
            if name.lower().startswith("content-"):
                raise ComposeError(f"{key[:60]}: set by the body", key)
            if name.lower() in convenience:  # RFC 8621 4.6: one property per header field
                raise ComposeError(f"{key[:60]}: also given as a property", key)
            if every and not isinstance(value, list | None):
                raise ComposeError(f"{key[:60]}: expected a list of values", key)
            del msg[name]
            for one in (value or []) if every else [value]:
                try:
                    msg[name] = _header_value(one, form, key)
                except (ValueError, TypeError) as exc:
                    raise ComposeError(f"{key[:60]}: {str(exc)[:80]}", key) from None
    values = obj.get("bodyValues") or {}
    if not isinstance(values, dict):
        raise ComposeError("bodyValues: expected an object", "bodyValues")

    def content(part: Any, prop: str) -> tuple[str, bytes | str, str | None]:
        if not isinstance(part, dict):
            raise ComposeError(f"{prop}: expected EmailBodyPart objects", prop)
        ctype = part.get("type") or "text/plain"
        if not isinstance(ctype, str) or "/" not in ctype or any(
                c in ctype for c in "\r\n;"):
            raise ComposeError(f"{prop}: bad type", prop)
        pid = part.get("partId")
        if pid is not None:
            v = values.get(pid)
            if not isinstance(v, dict) or not isinstance(v.get("value"), str):
                raise ComposeError(f"{prop}: no bodyValue {str(pid)[:30]!r}", prop)
            return ctype, v["value"], None
        bid = part.get("blobId")
        data = blob(bid) if isinstance(bid, str) else None
        if data is None:
            raise ComposeError(f"{prop}: blob not found", prop)
        name = part.get("name")
        return ctype, data, _clean(name, prop, 255) if name else None

    text = obj.get("textBody") or []
    html = obj.get("htmlBody") or []
    atts = obj.get("attachments") or []
    if not all(isinstance(x, list) for x in (text, html, atts)) or \
            len(text) + len(html) + len(atts) > MAX_PARTS:
        raise ComposeError("textBody/htmlBody/attachments: lists of parts", "textBody")
    if obj.get("bodyStructure") is not None:
        if text or html or atts:
            raise ComposeError("bodyStructure excludes textBody, htmlBody and attachments",
                               "bodyStructure")
        _structure(msg, obj["bodyStructure"], content, 0)
        return msg.as_bytes()
    body_set = False
    if text:
        ctype, data, _ = content(text[0], "textBody")
        _set(msg, ctype, data)
        body_set = True
    if html:
        ctype, data, _ = content(html[0], "htmlBody")
        if body_set:
            msg.add_alternative(data if isinstance(data, str) else data.decode("utf-8", "replace"),
                                subtype="html")
        else:
            _set(msg, ctype, data)
            body_set = True
    if not body_set:
        msg.set_content("")
    for att in atts:
        ctype, data, name = content(att, "attachments")
        maintype, _, subtype = ctype.partition("/")
        if isinstance(data, str):
            data = data.encode()
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def _structure(node: EmailMessage, part: Any, content: Callable[[Any, str], tuple],
               depth: int) -> None:
    """Fill ``node`` from an EmailBodyPart tree (multipart/* with subParts, or a leaf)."""
    if not isinstance(part, dict) or depth > 10:
        raise ComposeError("bodyStructure: EmailBodyPart objects, at most 10 deep",
                           "bodyStructure")
    ctype = part.get("type") or ""
    subs = part.get("subParts")
    if isinstance(ctype, str) and ctype.lower().startswith("multipart/"):
        if not isinstance(subs, list) or not subs or len(subs) > MAX_PARTS:
            raise ComposeError("bodyStructure: a multipart needs subParts", "bodyStructure")
        subtype = ctype.partition("/")[2].lower()
        if not subtype.isalnum() and subtype not in ("x-mixed-replace",):
            raise ComposeError("bodyStructure: bad multipart type", "bodyStructure")
        node.set_type(f"multipart/{subtype}")
        _part_headers(node, part)
        node.set_payload([])
        for sub in subs:
            child = EmailMessage(policy=email.policy.SMTP)
            _structure(child, sub, content, depth + 1)
            node.attach(child)
        return
    ctype, data, name = content(part, "bodyStructure")
    _set(node, ctype, data)
    _part_headers(node, part)
    if name or (part.get("disposition") or "").lower() == "attachment":
        node.add_header("Content-Disposition", "attachment", **({"filename": name}
                                                                 if name else {}))
    cid = part.get("cid")
    if isinstance(cid, str) and cid:
        node["Content-ID"] = f"<{_clean(cid, 'bodyStructure', 250).strip('<>')}>"


def _part_headers(node: EmailMessage, part: dict[str, Any]) -> None:
    """Add a part's ``header:Name[:asForm][:all]`` properties other than Content-* (those
    come from the part's structural properties)."""
    for key, value in part.items():
        hk = header_key(key)
        if hk is None or hk[0].startswith("content-") or value is None:
            continue
        name = key.split(":")[1]
        if not name or not all(33 <= ord(c) <= 126 for c in name):
            raise ComposeError(f"{key[:60]}: not a header name", f"bodyStructure/{key[:60]}")
        every = key.endswith(":all") and key.count(":") > 1
        for one in value if every and isinstance(value, list) else [value]:
            node[name] = _header_value(one, hk[1], key)


def _set(msg: EmailMessage, ctype: str, data: bytes | str) -> None:
    maintype, _, subtype = ctype.partition("/")
    if maintype == "text":
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        msg.set_content(text, subtype=subtype)
    else:
        msg.set_content(data if isinstance(data, bytes) else data.encode(),
                        maintype=maintype, subtype=subtype)
