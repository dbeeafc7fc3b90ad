"""Mailbox and Thread methods (RFC 8621 2, 3) and the standard /get, /changes helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..store.account import ChangesUnavailable, MailboxInfo, StoreError
from ..store.maildir import MaildirError, validate_folder_name
from .account import Account, mailbox_id, store_mailbox_id
from .core import Call, MethodError, method

MAILBOX_PROPERTIES = ("id", "name", "parentId", "role", "sortOrder", "totalEmails",
                      "unreadEmails", "totalThreads", "unreadThreads", "myRights", "isSubscribed")
RIGHTS = {"mayReadItems": True, "mayAddItems": True, "mayRemoveItems": True,
          "maySetSeen": True, "maySetKeywords": True, "mayCreateChild": True,
          "mayRename": True, "mayDelete": True, "maySubmit": True}


# -- standard helpers --------------------------------------------------------------------------
def wanted_ids(call: Call, every: Callable[[], Iterable[str]]) -> list[str]:
    ids = call.args.get("ids")
    if ids is None:
        out = list(every())
    elif isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        out = [call.created_ids.get(i[1:], i) if i.startswith("#") else i for i in ids]
    else:
        raise MethodError("invalidArguments", "ids must be a list of ids or null")
    if len(out) > call.limits.max_objects_in_get:
        raise MethodError("requestTooLarge", f"more than {call.limits.max_objects_in_get} ids")
    return list(dict.fromkeys(out))


def wanted_properties(call: Call, known: tuple[str, ...],
                      extra: Callable[[str], bool] | None = None) -> list[str]:
    props = call.args.get("properties")
    if props is None:
        return list(known)
    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
        raise MethodError("invalidArguments", "properties must be a list of names")
    for p in props:
        if p not in known and not (extra and extra(p)):
            raise MethodError("invalidArguments", f"unknown property {p[:100]!r}")
    return ["id", *[p for p in props if p != "id"]]


def changes_response(call: Call, account: Account, kind: str,
                     to_jmap: Callable[[str], str] = str) -> dict[str, Any]:
    since = call.args.get("sinceState")
    if not isinstance(since, str) or not since.isdigit():
        raise MethodError("cannotCalculateChanges", "unknown state")
    limit = call.args.get("maxChanges")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise MethodError("invalidArguments", "maxChanges must be a positive integer")
    try:
        ch = account.store.changes(kind, int(since), limit or 10_000)
    except ChangesUnavailable as exc:
        raise MethodError("cannotCalculateChanges", str(exc)) from None
    return {"accountId": account.id, "oldState": since, "newState": str(ch.new_state),
            "hasMoreChanges": ch.has_more, "created": [to_jmap(i) for i in ch.created],
            "updated": [to_jmap(i) for i in ch.updated],
            "destroyed": [to_jmap(i) for i in ch.destroyed]}


def check_state(call: Call, account: Account) -> str:
    """The current state; stateMismatch when ``ifInState`` names another."""
    state = account.state()
    want = call.args.get("ifInState")
    if want is not None and want != state:
        raise MethodError("stateMismatch")
    return state


# -- Mailbox -----------------------------------------------------------------------------------
def _mailbox(account: Account, m: MailboxInfo) -> dict[str, Any]:
    snap = account.store.status(m.name)
    threads = {e.threadid for e in snap.entries}
    unread_threads = {e.threadid for e in snap.entries if not e.seen}
    parent = next((p for p in account.mailboxes() if p.name == m.parent), None)
    return {"id": mailbox_id(m.id), "name": m.name.rpartition(".")[2] if m.parent else m.name,
            "parentId": mailbox_id(parent.id) if parent else None, "role": m.role or None,
            "sortOrder": 0 if m.role == "inbox" else 10 if m.role else 100,
            "totalEmails": m.total, "unreadEmails": m.unread,
            "totalThreads": len(threads), "unreadThreads": len(unread_threads),
            "myRights": dict(RIGHTS, mayRename=m.role != "inbox", mayDelete=m.role != "inbox"),
            "isSubscribed": m.subscribed or m.role == "inbox"}  # INBOX is always there


@method("Mailbox/get")
def mailbox_get(call: Call) -> dict[str, Any]:
    account: Account = call.account
    state = account.state()
    by_id = {mailbox_id(m.id): m for m in account.mailboxes()}
    ids = wanted_ids(call, by_id.keys)
    props = wanted_properties(call, MAILBOX_PROPERTIES)
    found, missing = [], []
    for i in ids:
        m = by_id.get(i)
        if m is None:
            missing.append(i)
            continue
        full = _mailbox(account, m)
        found.append({p: full[p] for p in props})
    return {"accountId": account.id, "state": state, "list": found, "notFound": missing}


@method("Mailbox/changes")
def mailbox_changes(call: Call) -> dict[str, Any]:
    out = changes_response(call, call.account, "Mailbox", mailbox_id)
    out["updatedProperties"] = None
    return out


@method("Mailbox/query")
def mailbox_query(call: Call) -> dict[str, Any]:
    account: Account = call.account
    flt = call.arg("filter", dict, {})
    rows = account.mailboxes()
    for key, value in flt.items():
        if key == "parentId":
            parent = account.mailbox_by_id(value) if value else None
            rows = [m for m in rows if (m.parent == parent.name if parent else not m.parent)]
        elif key == "name":
            rows = [m for m in rows if str(value).lower() in m.name.lower()]
        elif key == "role":
            rows = [m for m in rows if (m.role or None) == value]
        elif key == "hasAnyRole":
            rows = [m for m in rows if bool(m.role) == bool(value)]
        elif key == "isSubscribed":
            rows = [m for m in rows if m.subscribed == bool(value)]
        else:
            raise MethodError("unsupportedFilter", f"{key[:100]!r}")
    for sort in reversed(call.arg("sort", list, [])):
        prop = sort.get("property") if isinstance(sort, dict) else None
        if prop not in ("name", "sortOrder"):
            raise MethodError("unsupportedSort", f"{str(prop)[:100]!r}")
        rows.sort(key=(lambda m: m.name) if prop == "name" else (lambda m: (m.role == "", 0)),
                  reverse=sort.get("isAscending", True) is False)
    ids = [mailbox_id(m.id) for m in rows]
    return query_window(call, account, ids)


def query_window(call: Call, account: Account, ids: list[str]) -> dict[str, Any]:
    """position / anchor / anchorOffset / limit / calculateTotal over the full result."""
    position = call.arg("position", int, 0)
    limit = call.arg("limit", int, None)
    if limit is not None and limit < 0:
        raise MethodError("invalidArguments", "limit must not be negative")
    anchor = call.args.get("anchor")
    if anchor is not None:
        if anchor not in ids:
            raise MethodError("anchorNotFound")
        position = max(0, ids.index(anchor) + call.arg("anchorOffset", int, 0))
    elif position < 0:
        position = max(0, len(ids) + position)
    window = ids[position:] if limit is None else ids[position:position + limit]
    out = {"accountId": account.id, "queryState": account.state(), "canCalculateChanges": False,
           "position": position, "ids": window}
    if call.args.get("calculateTotal"):
        out["total"] = len(ids)
    if limit is not None:
        out["limit"] = limit
    return out


def query_changes_unsupported(call: Call) -> dict[str, Any]:
    raise MethodError("cannotCalculateChanges", "query changes are not kept: query again")


method("Mailbox/queryChanges")(query_changes_unsupported)


def _full_name(account: Account, name: str, parent_id: str | None,
               creating: dict[str, str]) -> str:
    if not isinstance(name, str) or not name or "." in name or "/" in name:
        raise MethodError("invalidProperties", "name: not a valid mailbox name",
                          properties=["name"])
    if parent_id is None:
        return name
    parent_id = creating.get(parent_id[1:], parent_id) if parent_id.startswith("#") \
        else parent_id
    parent = account.mailbox_by_id(parent_id)
    if parent is None:
        raise MethodError("invalidProperties", "parentId: no such mailbox",
                          properties=["parentId"])
    return f"{parent.name}.{name}"


@method("Mailbox/set")
def mailbox_set(call: Call) -> dict[str, Any]:
    account: Account = call.account
    old = check_state(call, account)
    out: dict[str, Any] = {"accountId": account.id, "oldState": old, "created": {},
                           "updated": {}, "destroyed": [], "notCreated": {}, "notUpdated": {},
                           "notDestroyed": {}}
    create = call.arg("create", dict, {})
    update = call.arg("update", dict, {})
    destroy = call.arg("destroy", list, [])
    if len(create) + len(update) + len(destroy) > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge")
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict):
                raise MethodError("invalidProperties", "not an object")
            full = _full_name(account, obj.get("name"), obj.get("parentId"), call.created_ids)
            validate_folder_name(full)
            if any(m.name.lower() == full.lower() for m in account.mailboxes()):
                raise MethodError("invalidProperties", "a mailbox of that name exists",
                                  properties=["name"])
            account.store.create_mailbox(full)
            if obj.get("isSubscribed"):
                account.store.set_subscribed(full, True)
            account.refresh()
            m = next(m for m in account.mailboxes() if m.name == full)
            call.created_ids[cid] = mailbox_id(m.id)
            out["created"][cid] = {k: v for k, v in _mailbox(account, m).items()
                                   if k not in obj or k == "id"}
        except MethodError as exc:
            out["notCreated"][cid] = exc.args_out()
        except (StoreError, MaildirError, ValueError) as exc:
            out["notCreated"][cid] = {"type": "invalidProperties", "description": str(exc)}
    for jid, patch in update.items():
        jid = call.resolve(jid)  # a #creationId: answered under the new id
        m = account.mailbox_by_id(jid)
        try:
            if m is None:
                raise MethodError("notFound")
            if not isinstance(patch, dict):
                raise MethodError("invalidPatch")
            if "isSubscribed" in patch:
                account.store.set_subscribed(m.name, bool(patch["isSubscribed"]))
            if "name" in patch or "parentId" in patch:
                if m.role == "inbox":
                    raise MethodError("forbidden", "INBOX cannot be renamed")
                parent = patch.get("parentId", mailbox_id(next(
                    (p.id for p in account.mailboxes() if p.name == m.parent), 0))
                    if m.parent else None)
                name = patch.get("name", m.name.rpartition(".")[2])
                full = _full_name(account, name, parent, call.created_ids)
                if full != m.name:
                    validate_folder_name(full)
                    children = [c.name for c in account.mailboxes()
                                if c.name.startswith(m.name + ".")]
                    if full.startswith(m.name + "."):
                        raise MethodError("invalidProperties", "a mailbox cannot be its own "
                                          "child", properties=["parentId"])
                    account.store.rename_mailbox(m.name, full, children)
            for key in patch:
                if key not in ("name", "parentId", "isSubscribed", "sortOrder"):
                    raise MethodError("invalidProperties", f"{key[:100]} cannot be set",
                                      properties=[key])
            account.refresh()
            # sortOrder is the server's (by role): say so when the client asked for another
            m = account.mailbox_by_id(jid)
            order = _mailbox(account, m)["sortOrder"] if m is not None else None
            out["updated"][jid] = {"sortOrder": order} \
                if "sortOrder" in patch and patch["sortOrder"] != order else None
        except MethodError as exc:
            out["notUpdated"][jid] = exc.args_out()
        except (StoreError, MaildirError, ValueError, OSError) as exc:
            out["notUpdated"][jid] = {"type": "invalidProperties", "description": str(exc)}
    remove_emails = bool(call.args.get("onDestroyRemoveEmails"))
    for jid in destroy:
        jid = call.resolve(jid)
        m = account.mailbox_by_id(jid) if isinstance(jid, str) else None
        try:
            if m is None:
                raise MethodError("notFound")
            if m.role == "inbox":
                raise MethodError("forbidden", "INBOX cannot be destroyed")
            if any(c.parent == m.name for c in account.mailboxes()):
                raise MethodError("mailboxHasChild")
            if m.total and not remove_emails:
                raise MethodError("mailboxHasEmail")
            account.store.delete_mailbox(m.name)
            account.refresh()
            out["destroyed"].append(jid)
        except MethodError as exc:
            out["notDestroyed"][jid] = exc.args_out()
        except StoreError as exc:
            out["notDestroyed"][jid] = {"type": "notFound", "description": str(exc)}
    out["newState"] = account.state()
    return out


# -- Thread ------------------------------------------------------------------------------------
@method("Thread/get")
def thread_get(call: Call) -> dict[str, Any]:
    account: Account = call.account
    state = account.state()
    idx = account.index()
    ids = wanted_ids(call, idx.threads.keys)
    found, missing = [], []
    for tid in ids:
        emails = idx.threads.get(tid)
        if emails:
            found.append({"id": tid, "emailIds": list(emails)})
        else:
            missing.append(tid)
    return {"accountId": account.id, "state": state, "list": found, "notFound": missing}


@method("Thread/changes")
def thread_changes(call: Call) -> dict[str, Any]:
    return changes_response(call, call.account, "Thread")


def mailbox_names(account: Account, ids: dict[str, Any]) -> list[str]:
    """Store names of JMAP mailbox ids (invalidProperties when one is unknown)."""
    out = []
    for jid in ids:
        m = account.mailbox_by_id(jid)
        if m is None or store_mailbox_id(jid) is None:
            raise MethodError("invalidProperties", f"no mailbox {str(jid)[:50]!r}",
                              properties=["mailboxIds"])
        out.append(m.name)
    return out
