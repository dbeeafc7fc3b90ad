"""Email methods (RFC 8621 4) and SearchSnippet/get, over the store."""

from __future__ import annotations

import contextlib
import html
import time
import unicodedata
from typing import Any

from ..store import summary
from ..store.account import CHANGELOG_KEEP, ChangesUnavailable, OverQuota, StoreError
from ..store.textsearch import TextSearch
from . import message as msgview
from .account import Account, Located, flag, keywords
from .blob import blob_bytes
from .compose import ComposeError, compose
from .core import Call, MethodError, method
from .createcheck import check_create, form_allowed
from .mailbox import mailbox_names
from .standard import (
    changes_response,
    check_comparators,
    check_state,
    filter_conditions,
    filter_matches,
    query_changes_response,
    query_changes_since,
    query_window,
    wanted_ids,
    wanted_properties,
)

META = ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt")
HEADER_PROPS = ("headers", "messageId", "inReplyTo", "references", "sender", "from", "to",
                "cc", "bcc", "replyTo", "subject", "sentAt")
BODY_PROPS = ("bodyStructure", "bodyValues", "textBody", "htmlBody", "attachments",
              "hasAttachment", "preview")
ALL_PROPS = META + HEADER_PROPS + BODY_PROPS
DEFAULT_PROPS = tuple(p for p in ALL_PROPS if p not in ("headers", "bodyStructure"))
FORMS = ("Raw", "Text", "Addresses", "GroupedAddresses", "MessageIds", "Date", "URLs")
ADDRESS_HEADERS = ("from", "sender", "reply-to", "to", "cc", "bcc")
DEFAULT_BODY_PROPS = ("partId", "blobId", "size", "name", "type", "charset", "disposition",
                      "cid", "language", "location")
BODY_PART_PROPS = (*DEFAULT_BODY_PROPS, "headers", "subParts")


def body_part(part: dict[str, Any], props: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """An EmailBodyPart with only ``props`` (``subParts`` of multiparts always)."""
    out = {k: part.get(k) for k in props if k != "subParts" and not k.startswith("header:")}
    for k in props:
        if k.startswith("header:"):
            name = k.split(":")[1].lower()
            out[k] = form_of([h["value"] for h in part.get("headers") or ()
                              if h["name"].lower() == name], k)
    if "subParts" in part:
        out["subParts"] = [body_part(p, props) for p in part["subParts"]]
    elif "subParts" in props:
        out["subParts"] = None  # a leaf (RFC 8621 4.1.4)
    return out


def _header_only(prop: str) -> bool:
    return prop in HEADER_ONLY or prop.startswith("header:")


def _is_header_prop(p: str) -> bool:
    if not p.startswith("header:"):
        return False
    parts = p.split(":")
    if len(parts) > 4 or not parts[1] or any(c in parts[1] for c in " \t\r\n"):
        return False
    rest = parts[2:]
    if rest and rest[-1] == "all":
        rest = rest[:-1]
    return len(rest) <= 1 and (not rest or (rest[0].removeprefix("as") in FORMS
                               and rest[0].startswith("as"))) \
        and form_allowed(parts[1], rest[0] if rest else "asRaw")


def header_form(p: msgview.Parsed, prop: str) -> Any:
    return form_of(p.header_all(prop.split(":")[1]), prop)


def form_of(values: list[str], prop: str) -> Any:
    """The value of ``header:Name[:asForm][:all]`` from the raw values of the field."""
    rest = prop.split(":")[2:]
    all_ = bool(rest) and rest[-1] == "all"
    if all_:
        rest = rest[:-1]
    form = rest[0][2:] if rest else "Raw"

    def conv(v: str) -> Any:
        if form == "Raw":
            return v
        if form == "Text":
            return unicodedata.normalize("NFC", " ".join(msgview.decode_words(v).split()))
        if form == "Addresses":
            return msgview.addresses(v) or []
        if form == "GroupedAddresses":
            return msgview.grouped_addresses(v)
        if form == "MessageIds":
            return msgview.message_ids(v)
        if form == "Date":
            return msgview.date_value(v)
        return msgview.urls(v)
    if all_:
        return [conv(v) for v in values]
    return conv(values[-1]) if values else None


#: properties read from the header block alone (the body is not parsed for them)
HEADER_ONLY = frozenset(HEADER_PROPS)
#: properties the store's summary holds (no file is opened for them)
FROM_SUMMARY = frozenset({"subject", "preview"})


class Emails:
    """Email properties of one request (parsing each message at most once, and only as far
    as the asked properties need: the store's summary, the header block, or all of it)."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.idx = account.index()
        self._summaries: dict[str, summary.Summary] = {}

    def parsed(self, eid: str, headers_only: bool = False) -> msgview.Parsed | None:
        locs = self.idx.copies.get(eid)
        if not locs:
            return None
        return msgview.parsed(eid, lambda: self.account.read(locs[0]), headers_only)

    def load_summaries(self, eids: list[str]) -> None:
        """Read the store's summaries of ``eids`` (one look per mailbox)."""
        by_box: dict[str, list[Any]] = {}
        for eid in eids:
            locs = self.idx.copies.get(eid)
            if locs and eid not in self._summaries:
                by_box.setdefault(locs[0].mailbox, []).append(locs[0].entry)
        for name, entries in by_box.items():
            with contextlib.suppress(StoreError):
                self._summaries.update(self.account.store.summaries(name, entries))

    def from_summary(self, eid: str, prop: str) -> tuple[bool, Any]:
        """(True, value) when the store's summary answers ``prop``."""
        s = self._summaries.get(eid)
        if s is None or s is summary.EMPTY:
            return False, None
        if prop == "preview":
            return True, s.preview
        if prop == "subject" and s.subject:  # '' is no Subject or an empty one: look
            return True, s.subject
        return False, None

    def view(self, eid: str, props: list[str], body_args: dict[str, Any]) -> dict[str, Any] | None:
        locs = self.idx.copies.get(eid)
        if not locs:
            return None
        e = locs[0].entry
        out: dict[str, Any] = {"id": eid}
        ids = self.idx.ids
        kw: dict[str, bool] = {}
        for loc in locs:
            kw.update(keywords(loc.entry.flags))
        meta = {"blobId": eid, "threadId": e.threadid,
                "mailboxIds": {ids[loc.mailbox]: True for loc in locs},
                "keywords": kw, "size": e.size, "receivedAt": msgview.utc(e.internaldate)}
        rest = []
        for prop in props:
            if prop in meta:
                out[prop] = meta[prop]
            elif prop in FROM_SUMMARY and self.from_summary(eid, prop)[0]:
                out[prop] = self.from_summary(eid, prop)[1]
            elif prop != "id":
                rest.append(prop)
        if rest:  # the header block alone when every property left is in it
            p = self.parsed(eid, headers_only=all(_header_only(q) for q in rest))
            if p is None:
                return None
            for prop in rest:
                out[prop] = self.parsed_prop(p, prop, body_args)
        return {k: out[k] for k in props if k in out}

    def parsed_prop(self, p: msgview.Parsed, prop: str, body_args: dict[str, Any]) -> Any:
        if prop.startswith("header:"):
            return header_form(p, prop)
        if prop == "headers":
            return p.headers_list()
        if prop in ("messageId", "inReplyTo", "references"):
            name = {"messageId": "message-id", "inReplyTo": "in-reply-to",
                    "references": "references"}[prop]
            return msgview.message_ids(p.header(name))
        if prop in ("sender", "from", "to", "cc", "bcc", "replyTo"):
            return msgview.addresses(p.header("reply-to" if prop == "replyTo" else prop))
        if prop == "subject":
            v = p.header("subject")
            if v is None:
                return None
            return unicodedata.normalize("NFC", " ".join(msgview.decode_words(v).split()))
        if prop == "sentAt":
            return msgview.date_value(p.header("date"))
        bprops = body_args.get("bodyProperties")
        if bprops is None:
            bprops = DEFAULT_BODY_PROPS
        if prop == "bodyStructure":
            return body_part(p.structure(), bprops)
        text, html_ids, att = p.body_lists()
        if prop == "textBody":
            return [body_part(p.part_view(i), bprops) for i in text]
        if prop == "htmlBody":
            return [body_part(p.part_view(i), bprops) for i in html_ids]
        if prop == "attachments":
            return [body_part(p.part_view(i), bprops) for i in att]
        if prop == "hasAttachment":
            return bool(att)
        if prop == "preview":
            return p.preview()
        if prop == "bodyValues":
            return self.body_values(p, body_args)
        raise MethodError("invalidArguments", f"unknown property {prop[:100]!r}")

    def body_values(self, p: msgview.Parsed, a: dict[str, Any]) -> dict[str, Any]:
        text, html_ids, _ = p.body_lists()
        wanted: list[str] = []
        if a.get("fetchAllBodyValues"):
            wanted = [pid for part, pid in p.parts() if part.get_content_maintype() == "text"]
        else:
            if a.get("fetchTextBodyValues"):
                wanted += text
            if a.get("fetchHTMLBodyValues"):
                wanted += [i for i in html_ids if i not in wanted]
        limit = a.get("maxBodyValueBytes") or 0
        out = {}
        for pid in wanted:
            part = p.part(pid)
            if part is None or part.get_content_maintype() != "text":
                continue
            value, problem = p.decoded(part)
            truncated = False
            if limit and len(value.encode()) > limit:
                value = value.encode()[:limit].decode("utf-8", "ignore")
                truncated = True
            out[pid] = {"value": value, "isEncodingProblem": problem, "isTruncated": truncated}
        return out


@method("Email/get")
def email_get(call: Call) -> dict[str, Any]:
    account: Account = call.account
    state = account.state()
    emails = Emails(account)
    ids = wanted_ids(call, lambda: list(emails.idx.copies))
    props = wanted_properties(call, ALL_PROPS, _is_header_prop) \
        if call.args.get("properties") is not None else ["id", *DEFAULT_PROPS]
    body_props = call.arg("bodyProperties", list, None)
    if body_props is not None and not all(isinstance(b, str) and (
            b in BODY_PART_PROPS or _is_header_prop(b)) for b in body_props):
        raise MethodError("invalidArguments", "bodyProperties: unknown property")
    limit = call.arg("maxBodyValueBytes", int, 0)
    if limit < 0:
        raise MethodError("invalidArguments", "maxBodyValueBytes must be positive")
    body_args = {k: bool(call.args.get(k)) for k in (
        "fetchTextBodyValues", "fetchHTMLBodyValues", "fetchAllBodyValues")}
    body_args["maxBodyValueBytes"] = limit
    body_args["bodyProperties"] = body_props
    found, missing = [], []
    if FROM_SUMMARY & set(props):
        emails.load_summaries(ids)
    for eid in ids:
        v = emails.view(eid, props, body_args)
        if v is None:
            missing.append(eid)
        else:
            found.append(v)
    return {"accountId": account.id, "state": state, "list": found, "notFound": missing}


@method("Email/changes")
def email_changes(call: Call) -> dict[str, Any]:
    return changes_response(call, call.account, "Email")


# -- query -------------------------------------------------------------------------------
def _utc_ts(value: Any, name: str) -> float:
    from datetime import datetime
    if not isinstance(value, str):
        raise MethodError("invalidArguments", f"{name}: expected a UTCDate")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise MethodError("invalidArguments", f"{name}: expected a UTCDate") from None


class Query:
    """Email/query's filter and sort over the account's index."""

    def __init__(self, emails: Emails) -> None:
        self.emails = emails
        self.account = emails.account
        self.idx = emails.idx
        self._searches: dict[tuple[str, str], TextSearch] = {}
        self._attachments: set[str] | None = None

    def search(self, where: str, needle: str) -> TextSearch:
        """The store's full-text search for ``needle`` (candidates from the index, each
        checked when asked)."""
        key = (where, needle)
        if key not in self._searches:
            self._searches[key] = self.account.store.text_search([(where, needle)])
        return self._searches[key]

    def text_hit(self, where: str, needle: str, eid: str) -> bool:
        return self.search(where, needle).matches(eid)

    def narrowed(self, flt: dict[str, Any], depth: int = 0) -> set[str] | None:
        """A set holding every email that can pass ``flt`` (from the text index: the
        candidates of its text conditions), or None when the filter does not narrow."""
        if depth > 16:
            return None
        if "operator" not in flt:
            found: set[str] | None = None
            for key, value in flt.items():
                if not isinstance(value, str) or key not in (
                        "text", "body", "from", "to", "cc", "bcc", "subject"):
                    continue
                cand = self.search("BODY" if key == "body" else "TEXT", value).candidates()
                found = set(cand) if found is None else found & cand.keys()
            return found
        conds = flt.get("conditions")
        if not isinstance(conds, list) or not all(isinstance(c, dict) for c in conds):
            return None
        subs = [self.narrowed(c, depth + 1) for c in conds]
        if flt.get("operator") == "AND":
            known = [s for s in subs if s is not None]
            return set.intersection(*known) if known else None
        if flt.get("operator") == "OR" and subs and all(s is not None for s in subs):
            return set().union(*subs)  # type: ignore[arg-type]
        return None

    def maybe_text(self, needle: str, eid: str) -> bool:
        """False when ``eid``'s indexed text (header fields and text parts) cannot hold
        ``needle`` (from the index alone: a cheap first look before parsing)."""
        return eid in self.search("TEXT", needle).candidates()

    def attachment_candidates(self) -> set[str]:
        """Emails whose top-level header (indexed) may say multipart or a non-text type or an
        attachment: only these can have attachments (the rest are not parsed)."""
        if self._attachments is None:
            found: set[str] = set()
            for needle in ("content-type: multipart/", "content-type: application/",
                           "content-type: image/", "content-type: audio/",
                           "content-type: video/", "content-type: message/",
                           "content-disposition: attachment"):
                found.update(self.search("TEXT", needle).candidates())
            self._attachments = found
        return self._attachments

    def prefetch(self, eids: list[str], flt: dict[str, Any]) -> None:
        """Check the text conditions of ``flt`` for ``eids`` at once (one read of the
        index per condition instead of one per email); each condition's other keys are
        tried first, so only emails they let through are read."""
        for cond in filter_conditions(flt):
            texts = [(k, v) for k, v in cond.items() if k in ("text", "body")
                     and isinstance(v, str)]
            if not texts:
                continue
            rest = {k: v for k, v in cond.items() if k not in ("text", "body")}
            todo = [e for e in eids if self.match(e, rest)] if rest else eids
            for key, value in texts:
                self.search("TEXT" if key == "text" else "BODY", value).check(todo)

    def match(self, eid: str, flt: dict[str, Any]) -> bool:
        locs = self.idx.copies[eid]
        e = locs[0].entry
        return filter_matches(flt, lambda cond: all(
            self.condition(eid, locs, e, key, value) for key, value in cond.items()))

    def condition(self, eid: str, locs: list[Located], e: Any, key: str, value: Any) -> bool:
        ids = self.idx.ids
        if key == "inMailbox":
            return eid in self.idx.members.get(value, ())
        if key == "inMailboxOtherThan":
            if not isinstance(value, list):
                raise MethodError("invalidArguments", "inMailboxOtherThan: a list of ids")
            return any(ids[loc.mailbox] not in value for loc in locs)
        if key == "before":
            return e.internaldate < _utc_ts(value, key)
        if key == "after":
            return e.internaldate >= _utc_ts(value, key)
        if key == "minSize":
            return e.size >= int(value)
        if key == "maxSize":
            return e.size < int(value)
        if key in ("hasKeyword", "notKeyword"):
            if not isinstance(value, str):
                raise MethodError("invalidArguments", f"{key}: a keyword")
            has = any(flag(value).lower() == f.lower() for loc in locs for f in loc.entry.flags)
            return has if key == "hasKeyword" else not has
        if key in ("allInThreadHaveKeyword", "someInThreadHaveKeyword", "noneInThreadHaveKeyword"):
            want = flag(str(value)).lower()
            members = [self.idx.copies[i][0].entry for i in self.idx.threads.get(e.threadid, ())]
            hits = [any(want == f.lower() for f in m.flags) for m in members]
            if key == "allInThreadHaveKeyword":
                return all(hits)
            if key == "someInThreadHaveKeyword":
                return any(hits)
            return not any(hits)
        if key == "hasAttachment":
            has = eid in self.attachment_candidates()  # a cheap look at the index first
            if has:
                p = self.emails.parsed(eid)
                has = p is not None and bool(p.body_lists()[2])
            return has == bool(value)
        if key in ("text", "body"):
            if not isinstance(value, str):
                raise MethodError("invalidArguments", f"{key}: a string")
            return self.text_hit("TEXT" if key == "text" else "BODY", value, eid)
        if key in ("from", "to", "cc", "bcc", "subject"):
            if not isinstance(value, str):
                raise MethodError("invalidArguments", f"{key}: a string")
            if not self.maybe_text(value, eid):
                return False
            p = self.emails.parsed(eid)
            field = p.header(key) if p is not None else None
            return field is not None and value.casefold() in \
                msgview.decode_words(field).casefold()
        if key == "header":
            if not (isinstance(value, list) and 1 <= len(value) <= 2
                    and all(isinstance(v, str) for v in value)):
                raise MethodError("invalidArguments", "header: [name] or [name, value]")
            if len(value) == 2 and not self.maybe_text(value[1], eid):
                return False
            p = self.emails.parsed(eid)
            if p is None:
                return False
            values = p.header_all(value[0])
            if len(value) == 1:
                return bool(values)
            return any(value[1].casefold() in msgview.decode_words(v).casefold()
                       for v in values)
        raise MethodError("unsupportedFilter", f"{key[:100]!r}")

    def sort_key(self, prop: str, eid: str, sort: dict[str, Any]) -> Any:
        e = self.idx.copies[eid][0].entry
        if prop == "receivedAt":
            return e.internaldate
        if prop == "size":
            return e.size
        if prop in ("hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword"):
            want = flag(str(sort.get("keyword", ""))).lower()
            if prop == "hasKeyword":
                return any(want == f.lower() for f in e.flags)
            members = [self.idx.copies[i][0].entry for i in self.idx.threads.get(e.threadid, ())]
            hits = (any(want == f.lower() for f in m.flags) for m in members)
            return all(hits) if prop == "allInThreadHaveKeyword" else any(hits)
        p = self.emails.parsed(eid)
        if prop == "sentAt":
            return (msgview.date_value(p.header("date")) if p else None) or ""
        if prop == "subject":
            v = p.header("subject") if p else None
            return msgview.decode_words(v).casefold() if v else ""
        if prop in ("from", "to"):
            addrs = msgview.addresses(p.header(prop)) if p else None
            if not addrs:
                return ""
            a = addrs[0]
            return (a["name"] or a["email"] or "").casefold()
        raise MethodError("unsupportedSort", f"{prop[:100]!r}")


CONDITIONS = frozenset({
    "inMailbox", "inMailboxOtherThan", "before", "after", "minSize", "maxSize", "hasKeyword",
    "notKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword",
    "noneInThreadHaveKeyword", "hasAttachment", "text", "body", "from", "to", "cc", "bcc",
    "subject", "header"})
SORTS = ("receivedAt", "size", "from", "to", "subject", "sentAt", "hasKeyword",
         "allInThreadHaveKeyword", "someInThreadHaveKeyword")
FIRST_CHUNK, LAST_CHUNK = 64, 4096  # emails filtered per step (doubling)
KEYWORD_SORTS = ("hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword")


def _sorted_ids(call: Call, q: Query) -> tuple[list[str], list[dict[str, Any]]]:
    """Every email id in the order of the first sort when that order is precomputed
    (receivedAt), else in a stable base order; and the sorts still to apply."""
    sorts = check_comparators(call, SORTS, KEYWORD_SORTS) \
        or [{"property": "receivedAt", "isAscending": False}]
    if len(sorts) == 1 and sorts[0]["property"] == "receivedAt":
        ids = list(q.idx.by_received)  # the index keeps this order: no sort
        if sorts[0].get("isAscending", True) is False:
            ids.reverse()
        return ids, []
    return sorted(q.idx.copies), sorts


def filtered(q: Query, ids: list[str], flt: dict[str, Any] | None, collapse: bool,
             want: int | None = None) -> list[str]:
    """``ids`` (in order) that pass ``flt``, one per thread with ``collapse``; with ``want``,
    stop once that many are found (a window of an ordered result needs no more)."""
    if not flt and not collapse:
        return ids if want is None else ids[:want]
    if flt is not None and set(flt) == {"inMailbox"}:
        members = q.idx.members.get(flt["inMailbox"], set())
        ids, flt = [i for i in ids if i in members], None
    narrow = q.narrowed(flt) if flt else None
    if narrow is not None:
        ids = [i for i in ids if i in narrow]
    out: list[str] = []
    seen: set[str] = set()
    start, size = 0, FIRST_CHUNK
    while start < len(ids) and (want is None or len(out) < want):
        chunk = ids[start:start + size]
        start, size = start + size, min(size * 2, LAST_CHUNK)
        if flt:
            q.prefetch(chunk, flt)
            chunk = [i for i in chunk if q.match(i, flt)]
        if collapse:
            for i in chunk:
                tid = q.idx.copies[i][0].entry.threadid
                if tid not in seen:
                    seen.add(tid)
                    out.append(i)
        else:
            out += chunk
    return out if want is None else out[:want]


def _results(call: Call, q: Query, want: int | None = None) -> list[str]:
    """The ids of Email/query's full result (filter, sort, collapseThreads): with ``want``,
    only its first ``want`` (when the sort order is precomputed)."""
    flt = call.arg("filter", dict, None)
    for cond in filter_conditions(flt):  # before any email is looked at
        unknown = [k for k in cond if k not in CONDITIONS]
        if unknown:
            raise MethodError("unsupportedFilter", f"{unknown[0][:100]!r}")
    ids, sorts = _sorted_ids(call, q)
    collapse = bool(call.args.get("collapseThreads"))
    if not sorts:
        return filtered(q, ids, flt, collapse, want)
    ids = filtered(q, ids, flt, False)  # sort only what passes (sort keys may parse)
    for sort in reversed(sorts):
        prop = sort["property"]
        ids.sort(key=lambda i, prop=prop, sort=sort: q.sort_key(prop, i, sort),
                 reverse=sort.get("isAscending", True) is False)
    return filtered(q, ids, None, collapse)


@method("Email/query")
def email_query(call: Call) -> dict[str, Any]:
    account: Account = call.account
    state = account.indexed_state()
    q = Query(Emails(account))
    position, limit = call.args.get("position"), call.args.get("limit")
    want = None  # a window at a known place needs only the matches up to its end
    if call.args.get("anchor") is None and not call.args.get("calculateTotal") \
            and isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        start = 0 if position is None else position
        if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
            want = start + limit
    out = query_window(call, account, _results(call, q, want), state, can_calculate=True)
    out["collapseThreads"] = bool(call.args.get("collapseThreads"))
    return out


THREAD_KEYS = ("allInThreadHaveKeyword", "someInThreadHaveKeyword", "noneInThreadHaveKeyword")
IMMUTABLE_CONDITIONS = frozenset({"before", "after", "minSize", "maxSize", "hasAttachment",
                                  "text", "body", "from", "to", "cc", "bcc", "subject",
                                  "header"})
IMMUTABLE_SORTS = frozenset({"receivedAt", "size", "from", "to", "subject", "sentAt"})


@method("Email/queryChanges")
def email_query_changes(call: Call) -> dict[str, Any]:
    """RFC 8620 5.6 from the store's change log: every email changed since the old state is
    removed, and added again at its new index when it is in the results. When the filter or
    sort looks at a thread (collapseThreads, the thread keyword conditions), a change of one
    email can move another: every email of a thread that changed counts as changed."""
    account: Account = call.account
    since = query_changes_since(call, account, "Email", account.indexed_state())
    q = Query(Emails(account))
    results = _results(call, q)
    flt = call.args.get("filter")
    keys = {k for cond in filter_conditions(flt) for k in cond}
    sorts = {s.get("property") for s in call.args.get("sort") or () if isinstance(s, dict)}
    collapse = bool(call.args.get("collapseThreads"))
    changed: set[str] = set()
    if since.changes is not None:
        ch = since.changes
        changed = {*ch.created, *ch.updated, *ch.destroyed}
        if collapse or keys & set(THREAD_KEYS) or sorts & set(THREAD_KEYS):
            try:
                tch = account.store.changes("Thread", int(since.old), CHANGELOG_KEEP)
            except ChangesUnavailable as exc:
                raise MethodError("cannotCalculateChanges", str(exc)) from None
            threads = {*tch.created, *tch.updated, *tch.destroyed}
            threads |= {q.idx.copies[e][0].entry.threadid for e in changed if e in q.idx.copies}
            for tid in threads:
                changed.update(q.idx.threads.get(tid, ()))
    immutable = not collapse and keys <= IMMUTABLE_CONDITIONS and sorts <= IMMUTABLE_SORTS
    return query_changes_response(call, account, since, results, changed, immutable)


def _needles(flt: Any, depth: int = 0) -> list[str]:
    """The search terms of a filter (text, subject, body), NOT branches left out."""
    if not isinstance(flt, dict) or depth > 16:
        return []
    if "operator" in flt:
        if flt.get("operator") == "NOT" or not isinstance(flt.get("conditions"), list):
            return []
        return [n for c in flt["conditions"] for n in _needles(c, depth + 1)]
    return [v for k, v in flt.items() if k in ("text", "subject", "body")
            and isinstance(v, str) and v.strip()]


def highlight(text: str, needles: list[str], width: int | None = None) -> str | None:
    """``text`` HTML-escaped with each needle in ``<mark>``; with ``width``, the part around
    the first match (None when nothing matches)."""
    folded = text.casefold()
    spans = []
    for n in needles:
        n = n.casefold()
        start = folded.find(n)
        while start >= 0 and len(spans) < 100:
            spans.append((start, start + len(n)))
            start = folded.find(n, start + len(n))
    if not spans:
        return None
    spans.sort()
    lo, hi = 0, len(text)
    if width is not None:
        lo = max(0, spans[0][0] - width // 4)
        hi = min(len(text), lo + width)
    out, pos = [], lo
    for a, b in spans:
        if a < pos or b > hi:
            continue
        out += [html.escape(text[pos:a]), "<mark>", html.escape(text[a:b]), "</mark>"]
        pos = b
    out.append(html.escape(text[pos:hi]))
    return "".join(out)


@method("SearchSnippet/get")
def snippet_get(call: Call) -> dict[str, Any]:
    account: Account = call.account
    ids = call.arg("emailIds", list, [])
    if len(ids) > call.limits.max_objects_in_get:
        raise MethodError("requestTooLarge")
    needles = _needles(call.args.get("filter"))
    emails = Emails(account)
    out, missing = [], []
    for eid in ids:
        p = emails.parsed(eid) if isinstance(eid, str) else None
        if p is None:
            missing.append(eid)
            continue
        subject = " ".join(msgview.decode_words(p.header("subject") or "").split())
        text = ""
        for pid in p.body_lists()[0]:
            part = p.part(pid)
            if part is not None:
                text += " " + " ".join(p.text_of(part).split())
        out.append({"emailId": eid, "subject": highlight(subject, needles),
                    "preview": highlight(text.strip()[:100_000], needles, 255)})
    return {"accountId": account.id, "list": out, "notFound": missing}


# -- set ---------------------------------------------------------------------------------
def _apply_keywords(account: Account, locs: list[Located], patch: dict[str, Any]) -> None:
    """``keywords`` (replace) or ``keywords/<k>`` (add/remove) on every copy."""
    replace = patch.get("keywords")
    adds, removes = [], []
    for key, value in patch.items():
        if key.startswith("keywords/"):
            kw = key[len("keywords/"):].replace("~1", "/").replace("~0", "~")
            _check_keyword(kw)
            (adds if value is True else removes if value is None else [None]).append(kw)
            if value not in (True, None):
                raise MethodError("invalidPatch", f"{key}: true or null")
    if replace is not None:
        if not isinstance(replace, dict) or not all(v is True for v in replace.values()):
            raise MethodError("invalidProperties", "keywords: a map of keyword to true",
                              properties=["keywords"])
        for kw in replace:
            _check_keyword(kw)
        flags = [flag(k) for k in replace]
        for loc in locs:
            keep = [f for f in loc.entry.flags if f in ("\\Deleted", "\\Recent")]
            account.store.store_flags(loc.mailbox, [loc.entry.uid], "", [*flags, *keep])
        return
    for loc in locs:
        if adds:
            account.store.store_flags(loc.mailbox, [loc.entry.uid], "+", [flag(k) for k in adds])
        if removes:
            account.store.store_flags(loc.mailbox, [loc.entry.uid], "-",
                                      [flag(k) for k in removes])


def _keywords(obj: dict[str, Any]) -> list[str]:
    """The keywords of a create or import object: a map of keyword to true."""
    kws = obj.get("keywords")
    if kws is None:
        return []
    if not isinstance(kws, dict) or any(v is not True for v in kws.values()):
        raise MethodError("invalidProperties", "keywords: a map of keyword to true",
                          properties=["keywords"])
    for kw in kws:
        _check_keyword(kw)
    return list(kws)


def _received(obj: dict[str, Any]) -> float:
    """receivedAt of a create or import object (now when absent)."""
    if obj.get("receivedAt") is None:
        return time.time()
    try:
        return _utc_ts(obj["receivedAt"], "receivedAt")
    except MethodError:
        raise MethodError("invalidProperties", "receivedAt: expected a UTCDate",
                          properties=["receivedAt"]) from None


def _check_keyword(kw: str) -> None:
    if not kw or len(kw) > 255 or any(c in kw for c in '()[]{}%*"\\ ') or not all(
            0x21 <= ord(c) <= 0x7e for c in kw):
        raise MethodError("invalidProperties", f"not a keyword: {kw[:50]!r}",
                          properties=["keywords"])


def _apply_mailboxes(call: Call, locs: list[Located], patch: dict[str, Any]) -> None:
    """``mailboxIds`` (replace) or ``mailboxIds/<id>`` patches: copy, move or remove."""
    account: Account = call.account
    current = {loc.mailbox for loc in locs}
    if "mailboxIds" in patch:
        ids = patch["mailboxIds"]
        if not isinstance(ids, dict) or not ids:
            raise MethodError("invalidProperties", "mailboxIds: at least one mailbox",
                              properties=["mailboxIds"])
        target = set(mailbox_names(account, _resolve_ids(ids, call)))
    else:
        target = set(current)
        for key, value in patch.items():
            if key.startswith("mailboxIds/"):
                name = mailbox_names(account, _resolve_ids(
                    {key[len("mailboxIds/"):]: True}, call))[0]
                if value is True:
                    target.add(name)
                elif value is None:
                    target.discard(name)
                else:
                    raise MethodError("invalidPatch", f"{key}: true or null")
        if not target:
            raise MethodError("invalidProperties", "an email must stay in a mailbox",
                              properties=["mailboxIds"])
    add = sorted(target - current)
    drop = [loc for loc in locs if loc.mailbox not in target]
    for name in add:
        if drop:  # a move keeps the email id and is one change
            loc = drop.pop()
            account.store.transfer(loc.mailbox, [loc.entry.uid], name, move=True)
        else:
            loc = locs[0]
            account.store.transfer(loc.mailbox, [loc.entry.uid], name, move=False)
    for loc in drop:
        account.store.remove_by_key(loc.mailbox, [loc.entry.key])


@method("Email/set")
def email_set(call: Call) -> dict[str, Any]:
    account: Account = call.account
    old = check_state(call, account)
    create = call.arg("create", dict, {})
    update = call.arg("update", dict, {})
    destroy = call.arg("destroy", list, [])
    if len(create) + len(update) + len(destroy) > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge")
    out: dict[str, Any] = {"accountId": account.id, "oldState": old, "created": {},
                           "updated": {}, "destroyed": [], "notCreated": {}, "notUpdated": {},
                           "notDestroyed": {}}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict):
                raise MethodError("invalidProperties", "not an object")
            names = mailbox_names(account, _resolve_ids(obj.get("mailboxIds"), call))
            if not names:
                raise MethodError("invalidProperties", "mailboxIds: at least one",
                                  properties=["mailboxIds"])
            kws = _keywords(obj)
            received = _received(obj)
            blobs = {b: blob_bytes(account, b) for b in check_create(obj)}
            missing = [b for b, data in blobs.items() if data is None]
            if missing:
                raise MethodError("blobNotFound", notFound=missing)
            data = compose(obj, blobs.get)
            created = _store_new(account, names, data, [flag(k) for k in kws], received)
            call.created_ids[cid] = created["id"]
            out["created"][cid] = created
        except ComposeError as exc:
            out["notCreated"][cid] = {"type": "invalidProperties", "description": str(exc),
                                      "properties": exc.properties}
        except (ValueError, TypeError) as exc:  # the email library refused a value
            out["notCreated"][cid] = {"type": "invalidProperties", "description": str(exc)}
        except MethodError as exc:
            out["notCreated"][cid] = exc.args_out()
        except OverQuota:
            out["notCreated"][cid] = {"type": "overQuota"}
    account.refresh()
    idx = account.index()
    for eid, patch in update.items():
        eid = eid_r = call.resolve(eid)  # a #creationId: answered under the new id
        locs = idx.copies.get(eid_r)
        try:
            if not locs:
                raise MethodError("notFound")
            if not isinstance(patch, dict):
                raise MethodError("invalidPatch")
            for key in patch:
                if not (key in ("keywords", "mailboxIds") or key.startswith(
                        ("keywords/", "mailboxIds/"))):
                    raise MethodError("invalidProperties", f"{key[:100]} cannot be changed",
                                      properties=[key.split("/")[0]])
            if any(k == "keywords" or k.startswith("keywords/") for k in patch):
                _apply_keywords(account, locs, patch)
            if any(k == "mailboxIds" or k.startswith("mailboxIds/") for k in patch):
                _apply_mailboxes(call, account.refreshed_copies(eid_r), patch)
            out["updated"][eid] = None
        except MethodError as exc:
            out["notUpdated"][eid] = exc.args_out()
        except OverQuota:
            out["notUpdated"][eid] = {"type": "overQuota"}
        except StoreError as exc:
            out["notUpdated"][eid] = {"type": "notFound", "description": str(exc)}
        account.refresh()
    for eid in destroy:
        eid = call.resolve(eid)
        locs = account.index().copies.get(eid) if isinstance(eid, str) else None
        if not locs:
            out["notDestroyed"][str(eid)] = {"type": "notFound"}
            continue
        for loc in locs:
            account.store.remove_by_key(loc.mailbox, [loc.entry.key])
        account.refresh()
        out["destroyed"].append(eid)
    out["newState"] = account.state()
    return out


def _resolve_ids(ids: Any, call: Call) -> dict[str, Any]:
    if not isinstance(ids, dict):
        raise MethodError("invalidProperties", "mailboxIds: a map of ids",
                          properties=["mailboxIds"])
    return {call.created_ids.get(k[1:], k) if k.startswith("#") else k: v
            for k, v in ids.items()}


def _store_new(account: Account, names: list[str], data: bytes, flags: list[str],
               received: float) -> dict[str, Any]:
    """Append ``data`` to the first mailbox and copy it to the others; the new Email."""
    _, uid = account.store.append(names[0], data, flags, received)
    for name in names[1:]:
        account.store.transfer(names[0], [uid], name, move=False)
    snap = account.store.status(names[0])
    e = next(x for x in snap.entries if x.uid == uid)
    return {"id": e.emailid, "blobId": e.emailid, "threadId": e.threadid, "size": e.size}


@method("Email/import")
def email_import(call: Call) -> dict[str, Any]:
    account: Account = call.account
    old = check_state(call, account)
    emails = call.arg("emails", dict, None)
    if emails is None:
        raise MethodError("invalidArguments", "emails is required")
    if len(emails) > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge")
    out: dict[str, Any] = {"accountId": account.id, "oldState": old, "created": {},
                           "notCreated": {}}
    for cid, obj in emails.items():
        try:
            if not isinstance(obj, dict):
                raise MethodError("invalidProperties", "not an object")
            missing = [k for k, t in (("blobId", str), ("mailboxIds", dict))
                       if not isinstance(obj.get(k), t)]
            if missing:
                raise MethodError("invalidProperties", "required: blobId and mailboxIds",
                                  properties=missing)
            names = mailbox_names(account, _resolve_ids(obj.get("mailboxIds"), call))
            kws = _keywords(obj)
            received = _received(obj)
            data = blob_bytes(account, obj["blobId"])
            if data is None:  # RFC 8621 4.8: "id not found" is invalidProperties
                raise MethodError("invalidProperties", "blobId: no such blob",
                                  properties=["blobId"])
            created = _store_new(account, names, data, [flag(k) for k in kws], received)
            call.created_ids[cid] = created["id"]
            out["created"][cid] = created
        except MethodError as exc:
            out["notCreated"][cid] = exc.args_out()
        except OverQuota:
            out["notCreated"][cid] = {"type": "overQuota"}
        account.refresh()
    out["newState"] = account.state()
    return out


@method("Email/parse")
def email_parse(call: Call) -> dict[str, Any]:
    account: Account = call.account
    blob_ids = call.arg("blobIds", list, [])
    if len(blob_ids) > call.limits.max_objects_in_get:
        raise MethodError("requestTooLarge")
    props = wanted_properties(call, HEADER_PROPS + BODY_PROPS + ("blobId", "size"),
                              _is_header_prop) if call.args.get("properties") else \
        ["messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc",
         "replyTo", "subject", "sentAt", "hasAttachment", "preview", "bodyValues", "textBody",
         "htmlBody", "attachments"]
    props = [p for p in props if p != "id"]
    body_args = {k: bool(call.args.get(k)) for k in (
        "fetchTextBodyValues", "fetchHTMLBodyValues", "fetchAllBodyValues")}
    body_args["maxBodyValueBytes"] = call.arg("maxBodyValueBytes", int, 0)
    emails = Emails(account)
    parsed, missing = {}, []
    for bid in blob_ids:
        data = blob_bytes(account, bid) if isinstance(bid, str) else None
        if data is None:
            missing.append(bid)
            continue
        p = msgview.Parsed(data)
        view: dict[str, Any] = {}
        for prop in props:
            if prop == "blobId":
                view[prop] = bid
            elif prop == "size":
                view[prop] = len(data)
            else:
                view[prop] = emails.parsed_prop(p, prop, body_args)
        parsed[bid] = view
    return {"accountId": account.id, "parsed": parsed, "notParsable": [], "notFound": missing}


@method("Email/copy")
def email_copy(call: Call) -> dict[str, Any]:
    raise MethodError("fromAccountNotFound", "there is one account per login")
