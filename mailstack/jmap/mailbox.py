"""Mailbox and Thread methods (RFC 8621 2, 3).

A mailbox's JMAP ``name`` is Unicode; the store keeps IMAP's modified UTF-7 (the same string
names the Maildir++ folder), so a name is encoded on the way in and decoded on the way out,
and a mailbox made on one face has the same name on the other.
"""

from __future__ import annotations

from typing import Any

from ..imap import mutf7
from ..store.account import MailboxInfo, StoreError
from ..store.maildir import MaildirError, validate_folder_name
from .account import Account, mailbox_id, store_mailbox_id
from .core import Call, MethodError, method
from .standard import (
    changes_response,
    check_comparators,
    check_state,
    filter_matches,
    query_changes_response,
    query_changes_since,
    query_window,
    wanted_ids,
    wanted_properties,
)

MAILBOX_PROPERTIES = ("id", "name", "parentId", "role", "sortOrder", "totalEmails",
                      "unreadEmails", "totalThreads", "unreadThreads", "myRights", "isSubscribed")
RIGHTS = {"mayReadItems": True, "mayAddItems": True, "mayRemoveItems": True,
          "maySetSeen": True, "maySetKeywords": True, "mayCreateChild": True,
          "mayRename": True, "mayDelete": True, "maySubmit": True}


# -- Mailbox -----------------------------------------------------------------------------------
def _mailbox(account: Account, m: MailboxInfo) -> dict[str, Any]:
    snap = account.store.status(m.name)
    threads = {e.threadid for e in snap.entries}
    unread_threads = {e.threadid for e in snap.entries if not e.seen}
    parent = next((p for p in account.mailboxes() if p.name == m.parent), None)
    return {"id": mailbox_id(m.id), "name": _leaf(m),
            "parentId": mailbox_id(parent.id) if parent else None, "role": m.role or None,
            "sortOrder": _sort_order(m),
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


def _mailbox_matches(account: Account, m: MailboxInfo, cond: dict[str, Any]) -> bool:
    """Whether mailbox ``m`` meets every property of a Mailbox/query FilterCondition."""
    for key, value in cond.items():
        if key == "parentId":
            parent = account.mailbox_by_id(value) if value else None
            ok = m.parent == parent.name if parent else not m.parent
        elif key == "name":
            if not isinstance(value, str):
                raise MethodError("invalidArguments", "name: a string")
            ok = value.casefold() in _leaf(m).casefold()
        elif key == "role":
            ok = (m.role or None) == value
        elif key == "hasAnyRole":
            ok = bool(m.role) == bool(value)
        elif key == "isSubscribed":
            ok = (m.subscribed or m.role == "inbox") == bool(value)
        else:
            raise MethodError("unsupportedFilter", f"{key[:100]!r}")
        if not ok:
            return False
    return True


def _sort_order(m: MailboxInfo) -> int:
    return 0 if m.role == "inbox" else 10 if m.role else 100


def _stored_leaf(m: MailboxInfo) -> str:
    return m.name.rpartition(".")[2] if m.parent else m.name


def _leaf(m: MailboxInfo) -> str:
    """The JMAP name: the last level of the store's name, decoded (a name another tool made
    that is not modified UTF-7 is shown as it is)."""
    leaf = _stored_leaf(m)
    try:
        return mutf7.decode(leaf)
    except mutf7.MUTF7Error:
        return leaf


def _unicode(name: str) -> str:
    """A store name with every level decoded, casefolded: two names a user would call the
    same (``Café`` and ``CAFÉ``: ``Caf&AOk-`` and ``CAF&AMk-``) compare equal."""
    levels = []
    for level in name.split("."):
        try:
            levels.append(mutf7.decode(level))
        except mutf7.MUTF7Error:
            levels.append(level)
    return ".".join(levels).casefold()


def _control(ch: str) -> bool:
    return ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0


def _mailbox_results(call: Call, account: Account) -> list[str]:
    """Mailbox/query's ids: filter (with ``filterAsTree``, a mailbox whose ancestors do not
    all match is left out), sorts by ``name`` or ``sortOrder`` (with ``sortAsTree``, depth
    first: each mailbox after its parent, siblings in sort order)."""
    flt = call.arg("filter", dict, {})
    every = account.mailboxes()
    by_name = {m.name: m for m in every}
    matched = {m.name for m in every
               if filter_matches(flt, lambda cond, m=m: _mailbox_matches(account, m, cond))}
    if call.args.get("filterAsTree"):
        def lineage_matches(m: MailboxInfo) -> bool:
            while m.parent:
                m = by_name.get(m.parent)  # type: ignore[assignment]
                if m is None or m.name not in matched:
                    return False
            return True
        matched = {n for n in matched if lineage_matches(by_name[n])}
    rows = [m for m in every if m.name in matched]
    for sort in reversed(check_comparators(call, ("name", "sortOrder"))):
        prop = sort["property"]
        rows.sort(key=(lambda m: _leaf(m).casefold()) if prop == "name" else _sort_order,
                  reverse=sort.get("isAscending", True) is False)
    if call.args.get("sortAsTree"):
        children: dict[str, list[MailboxInfo]] = {}
        roots = []
        for m in rows:  # in sorted order: siblings stay sorted
            if m.parent in matched:
                children.setdefault(m.parent, []).append(m)
            else:
                roots.append(m)
        ordered: list[MailboxInfo] = []
        stack = list(reversed(roots))
        while stack:  # depth first, iteratively
            m = stack.pop()
            ordered.append(m)
            stack.extend(reversed(children.get(m.name, ())))
        rows = ordered
    return [mailbox_id(m.id) for m in rows]


@method("Mailbox/query")
def mailbox_query(call: Call) -> dict[str, Any]:
    account: Account = call.account
    state = account.state()  # before the mailboxes are read
    return query_window(call, account, _mailbox_results(call, account), state,
                        can_calculate=True)


@method("Mailbox/queryChanges")
def mailbox_query_changes(call: Call) -> dict[str, Any]:
    """RFC 8620 5.6: every mailbox changed since the old state (the store logs a mailbox
    as changed when its name, subscription or messages change) is removed, and added
    again at its new index when it is in the results."""
    account: Account = call.account
    since = query_changes_since(call, account, "Mailbox", account.state())
    results = _mailbox_results(call, account)
    ch = since.changes
    changed = {mailbox_id(i) for i in (*ch.created, *ch.updated, *ch.destroyed)} if ch else set()
    return query_changes_response(call, account, since, results, changed, immutable=False)


def _full_name(account: Account, name: str, parent_id: str | None,
               creating: dict[str, str], *, stored: str | None = None) -> str:
    """The store's name for JMAP ``name`` under ``parent_id``: modified UTF-7, levels
    joined with "." (``stored``: the leaf as the store already has it, kept as it is)."""
    if stored is None:
        if not isinstance(name, str) or not name or any(
                c in "./\\" or _control(c) for c in name):
            raise MethodError("invalidProperties", "name: not a valid mailbox name",
                              properties=["name"])
        name = mutf7.encode(name)
    else:
        name = stored
    if parent_id is None:
        return name
    if not isinstance(parent_id, str):
        raise MethodError("invalidProperties", "parentId: an id or null",
                          properties=["parentId"])
    parent_id = creating.get(parent_id[1:], parent_id) if parent_id.startswith("#") \
        else parent_id
    parent = account.mailbox_by_id(parent_id)
    if parent is None:
        raise MethodError("invalidProperties", "parentId: no such mailbox",
                          properties=["parentId"])
    return f"{parent.name}.{name}"


#: what a client sets; the other properties (counts, myRights, id) are the server's and may
#: be sent only with their current values (RFC 8620 5.3)
SETTABLE = ("name", "parentId", "isSubscribed", "sortOrder", "role")
NEW_MAILBOX = {"totalEmails": 0, "unreadEmails": 0, "totalThreads": 0, "unreadThreads": 0,
               "myRights": RIGHTS}


def _check_properties(obj: dict[str, Any], current: dict[str, Any]) -> None:
    """invalidProperties naming every property the client may not set to the value given:
    server-set ones that differ (``myRights/mayRename``), unknown ones."""
    bad: list[str] = []
    for key, value in obj.items():
        if key in SETTABLE:
            continue
        if key == "myRights" and isinstance(value, dict):
            rights = current["myRights"]
            bad += [f"myRights/{r[:50]}" for r, v in value.items() if rights.get(r) != v]
        elif key not in current or current[key] != value:
            bad.append(key[:100])
    if bad:
        raise MethodError("invalidProperties", "properties the server sets, or unknown",
                          properties=bad)


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
            _check_properties(obj, NEW_MAILBOX)
            full = _full_name(account, obj.get("name"), obj.get("parentId"), call.created_ids)
            validate_folder_name(full)
            if any(_unicode(m.name) == _unicode(full) for m in account.mailboxes()):
                raise MethodError("invalidProperties", "a mailbox of that name exists",
                                  properties=["name"])
            account.store.create_mailbox(full)
            if obj.get("isSubscribed"):
                account.store.set_subscribed(full, True)
            account.refresh()
            m = next(m for m in account.mailboxes() if m.name == full)
            call.created_ids[cid] = mailbox_id(m.id)
            out["created"][cid] = {k: v for k, v in _mailbox(account, m).items()
                                   if k not in obj or k == "id" or obj[k] != v}
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
            _check_properties(patch, _mailbox(account, m) | {"id": jid})
            if "role" in patch and patch["role"] != (m.role or None):
                raise MethodError("invalidProperties", "roles are the server's",
                                  properties=["role"])
            if "isSubscribed" in patch:
                account.store.set_subscribed(m.name, bool(patch["isSubscribed"]))
            if "name" in patch or "parentId" in patch:
                if m.role == "inbox":
                    raise MethodError("forbidden", "INBOX cannot be renamed")
                parent = patch.get("parentId", mailbox_id(next(
                    (p.id for p in account.mailboxes() if p.name == m.parent), 0))
                    if m.parent else None)
                full = _full_name(account, patch.get("name", ""), parent, call.created_ids,
                                  stored=None if "name" in patch else _stored_leaf(m))
                if full != m.name:
                    validate_folder_name(full)
                    children = [c.name for c in account.mailboxes()
                                if c.name.startswith(m.name + ".")]
                    if full.startswith(m.name + "."):
                        raise MethodError("invalidProperties", "a mailbox cannot be its own "
                                          "child", properties=["parentId"])
                    account.store.rename_mailbox(m.name, full, children)
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
