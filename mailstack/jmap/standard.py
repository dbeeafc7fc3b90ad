"""The standard methods' common parts (RFC 8620 5): ids and properties of /get, /changes
from the store's change log, ifInState, /query windows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..store.account import CHANGELOG_KEEP, Changes, ChangesUnavailable
from .account import Account
from .core import Call, MethodError, is_number


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
    if not isinstance(since, str) or not is_number(since):
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



MAX_FILTER_DEPTH = 16


def filter_matches(flt: dict[str, Any], condition: Callable[[dict[str, Any]], bool],
                   depth: int = 0) -> bool:
    """Whether an item passes ``flt``, a FilterCondition (``condition`` decides) or a
    FilterOperator (``AND``/``OR``/``NOT`` over nested filters, RFC 8620 5.5)."""
    if depth > MAX_FILTER_DEPTH:
        raise MethodError("unsupportedFilter", "filters nest too deep")
    if "operator" not in flt:
        return condition(flt)
    op, conds = flt.get("operator"), flt.get("conditions")
    if op not in ("AND", "OR", "NOT") or not isinstance(conds, list) or not all(
            isinstance(c, dict) for c in conds):
        raise MethodError("unsupportedFilter", "bad FilterOperator")
    results = (filter_matches(c, condition, depth + 1) for c in conds)
    if op == "AND":
        return all(results)
    if op == "OR":
        return any(results)
    return not any(results)


def filter_conditions(flt: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every FilterCondition inside ``flt`` (NOT branches included)."""
    if not isinstance(flt, dict) or depth > MAX_FILTER_DEPTH:
        return
    if "operator" not in flt:
        yield flt
        return
    for c in flt.get("conditions") or ():
        yield from filter_conditions(c, depth + 1)


def query_window(call: Call, account: Account, ids: list[str], state: str | None = None,
                 can_calculate: bool = False) -> dict[str, Any]:
    """position / anchor / anchorOffset / limit / calculateTotal over the full result;
    ``state`` is the queryState read before the result was (so that a change meanwhile
    shows up in the next /queryChanges)."""
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
    out = {"accountId": account.id, "queryState": state or account.state(),
           "canCalculateChanges": can_calculate, "position": position, "ids": window}
    if call.args.get("calculateTotal"):
        out["total"] = len(ids)
    if limit is not None:
        out["limit"] = limit
    return out


@dataclass
class Since:
    """What a /queryChanges call starts from: the client's state, the state now (read
    before the results are), and the store's changes between them (None: no change)."""

    old: str
    new: str
    changes: Changes | None


def query_changes_state(call: Call) -> str:
    """A /queryChanges call's ``sinceQueryState``, with its ``maxChanges`` checked too
    (RFC 8620 5.6: invalidArguments for either)."""
    since = call.args.get("sinceQueryState")
    if not isinstance(since, str):
        raise MethodError("invalidArguments", "sinceQueryState is required")
    limit = call.args.get("maxChanges")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise MethodError("invalidArguments", "maxChanges must be a positive integer")
    return since


def query_changes_since(call: Call, account: Account, kind: str, now: str) -> Since:
    """``sinceQueryState`` checked against the store's change log up to ``now`` or later
    (RFC 8620 5.6); ``cannotCalculateChanges`` beyond its horizon."""
    since = query_changes_state(call)
    if since == now:
        return Since(since, now, None)
    if not is_number(since):
        raise MethodError("cannotCalculateChanges", "unknown state")
    try:
        ch = account.store.changes(kind, int(since), CHANGELOG_KEEP)
    except ChangesUnavailable as exc:
        raise MethodError("cannotCalculateChanges", str(exc)) from None
    if ch.has_more:
        raise MethodError("cannotCalculateChanges", "too many changes: query again")
    return Since(since, now, ch)


def query_changes_response(call: Call, account: Account, since: Since, results: list[str],
                           changed: set[str], immutable: bool) -> dict[str, Any]:
    """The /queryChanges answer from the new results and the ids whose membership or place
    may have changed: each of those is removed, and added again at its new index when it is
    in the results (RFC 8620 5.6). With ``immutable`` (filter and sort only on properties
    that never change), nothing past ``upToId`` is added."""
    index = {ident: n for n, ident in enumerate(results)}
    added = sorted((index[i], i) for i in changed if i in index)
    up_to = call.args.get("upToId")
    if immutable and isinstance(up_to, str) and up_to in index:
        added = [(n, i) for n, i in added if n <= index[up_to]]
    removed = sorted(changed)
    limit = call.args.get("maxChanges")
    if limit is not None and len(removed) + len(added) > limit:
        raise MethodError("tooManyChanges", f"more than {limit} changes")
    out: dict[str, Any] = {"accountId": account.id, "oldQueryState": since.old,
                           "newQueryState": since.new, "removed": removed,
                           "added": [{"id": i, "index": n} for n, i in added]}
    if call.args.get("calculateTotal"):
        out["total"] = len(results)
    return out


#: the collations the session announces (RFC 4790 names)
COLLATIONS = ("i;ascii-casemap", "i;unicode-casemap")


def check_comparators(call: Call, known: Iterable[str],
                      needs_keyword: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The ``sort`` argument's Comparators (RFC 8620 5.5): unsupportedSort for an unknown
    property or collation, invalidArguments for a malformed one."""
    sorts = call.arg("sort", list, None) or []
    for sort in sorts:
        if not isinstance(sort, dict) or not isinstance(sort.get("property"), str):
            raise MethodError("invalidArguments", "each sort is a Comparator")
        prop = sort["property"]
        if prop not in known:
            raise MethodError("unsupportedSort", f"{prop[:100]!r}")
        if "isAscending" in sort and not isinstance(sort["isAscending"], bool):
            raise MethodError("invalidArguments", "isAscending: true or false")
        collation = sort.get("collation")
        if collation is not None and collation not in COLLATIONS:
            raise MethodError("unsupportedSort", f"collation {str(collation)[:60]!r}")
        if prop in needs_keyword and not isinstance(sort.get("keyword"), str):
            raise MethodError("invalidArguments", f"{prop} needs a keyword")
    return sorts
