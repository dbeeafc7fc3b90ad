"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4): searches kept up to date.

``SEARCH/SORT RETURN (UPDATE ...)`` leaves a context behind: whenever the session reports
mailbox changes, each context's result is computed again and the difference is sent as
``* ESEARCH (TAG "t") [UID] REMOVEFROM (...)`` (before the EXPUNGE responses, in the old
numbering) and ``ADDTO (...)`` (after EXISTS, in the new numbering). Unsorted results use
position 0; sorted ones the 1-based position in the result. A session keeps at most
:data:`MAX_CONTEXTS`; ``CANCELUPDATE`` ends one.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from . import esearch, search, sort
from .mailbox import Msg, Selected

MAX_CONTEXTS = 8  # live contexts per session (each is searched again on every change)


@dataclass
class Context:
    tag: str
    uid: bool
    ret: esearch.Return
    tree: search.Node
    criteria: list[tuple[str, bool]] | None  # None: an unsorted SEARCH
    result: list[int] = field(default_factory=list)  # UIDs in result order
    uids_then: list[int] = field(default_factory=list)  # the mailbox's UIDs when reported
    seen: object = None  # the mailbox view it was last computed against


def evaluate(sel: Selected, ctx: Context) -> list[tuple[int, Msg]]:
    found = search.run(sel, ctx.tree)
    return sort.order(sel, found, ctx.criteria) if ctx.criteria is not None else found


def start(sel: Selected, ctx: Context, found: list[tuple[int, Msg]]) -> None:
    ctx.result = [m.uid for _, m in found]
    ctx.uids_then, ctx.seen = sel.uids, sel.snapshot


def stale(sel: Selected, contexts: list[Context]) -> bool:
    """Whether the mailbox view moved since some context was last computed."""
    return any(c.seen is not sel.snapshot or c.uids_then is not sel.uids for c in contexts)


@dataclass
class Updates:
    removals: list[str] = field(default_factory=list)  # sent before EXPUNGE responses
    additions: list[str] = field(default_factory=list)  # sent after EXISTS


def updates(sel: Selected, contexts: list[Context]) -> Updates:
    """What each context's result gained and lost since it was last reported (``sel`` has
    been refreshed already; its old numbering is in each context's ``uids_then``)."""
    out = Updates()
    for ctx in contexts:
        found = evaluate(sel, ctx)
        new = [m.uid for _, m in found]
        if new == ctx.result:
            ctx.uids_then, ctx.seen = sel.uids, sel.snapshot
            continue
        now, before = set(new), set(ctx.result)
        head = f'ESEARCH (TAG "{ctx.tag}")' + (" UID" if ctx.uid else "")
        gone = [u for u in ctx.result if u not in now]
        if gone:
            out.removals.append(f"{head} REMOVEFROM ({_removed(ctx, gone)})")
        added = [(i, u) for i, u in enumerate(new, 1) if u not in before]
        if added:
            out.additions.append(f"{head} ADDTO ({_added(ctx, sel, added)})")
        ctx.result, ctx.uids_then, ctx.seen = new, sel.uids, sel.snapshot
    return out


def _number(ctx: Context, uids: list[int], uid: int) -> int:
    return uid if ctx.uid else bisect.bisect_left(uids, uid) + 1


def _removed(ctx: Context, gone: list[int]) -> str:
    if ctx.criteria is None:
        nums = sorted(_number(ctx, ctx.uids_then, u) for u in gone)
        return f"0 {esearch.compress(nums)}"
    pos = {u: i for i, u in enumerate(ctx.result, 1)}
    # last position first: each position is valid when the removals are applied in order
    return " ".join(f"{pos[u]} {_number(ctx, ctx.uids_then, u)}"
                    for u in sorted(gone, key=lambda u: -pos[u]))


def _added(ctx: Context, sel: Selected, added: list[tuple[int, int]]) -> str:
    if ctx.criteria is None:
        return f"0 {esearch.compress(sorted(_number(ctx, sel.uids, u) for _, u in added))}"
    # ascending final positions: each is valid when the additions are applied in order
    return " ".join(f"{i} {_number(ctx, sel.uids, u)}" for i, u in added)
