"""SEARCH (with ESEARCH results and SEARCHRES), SORT (with ESORT) and THREAD, each also as a
UID command: RFC 3501, 4731, 5182, 5256, 5267, 5957, 9051."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from . import context, esearch, search, sort, thread
from .mailbox import Msg, Selected
from .session import SELECTED, No, Session, command
from .wire import ParseError, Parser


def _selected(s: Session) -> Selected:
    assert s.selected is not None
    return s.selected


def _return_options(s: Session, tag: str, p: Parser) -> esearch.Return | None:
    """``RETURN (...) SP`` when present. UPDATE with the tag of a live search is BAD (RFC 5267
    §4.3: the command is rejected, nothing is searched)."""
    if p.maybe(b"RETURN "):
        ret = esearch.parse_return(p)
        p.sp()
        if ret.update and any(c.tag == tag for c in s.contexts):
            raise ParseError(f"a live search already has the tag {tag[:40]}")
        return ret
    return None


def _charset(p: Parser) -> str:
    """``charset SP`` of SORT and THREAD (upper-cased)."""
    raw = p.astring()
    p.sp()
    return raw.decode("ascii", "replace").upper()


def _keys_in(p: Parser, charset: str) -> tuple[search.Node, bool]:
    """The search keys after ``charset``: a syntax error (BAD) wins over an unknown charset
    (NO [BADCHARSET])."""
    tree = _keys(p, charset if charset in search.CHARSETS else "UTF-8")
    if charset not in search.CHARSETS:
        raise No("unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
    return tree


def _charset_and_keys(p: Parser) -> tuple[search.Node, bool]:
    """``charset SP search-key...`` of SORT and THREAD."""
    return _keys_in(p, _charset(p))


def _keys(p: Parser, charset: str | None = None) -> tuple[search.Node, bool]:
    try:
        return search.parse(p, charset)
    except search.BadCharset:
        raise No("unsupported charset", "BADCHARSET (UTF-8 US-ASCII)") from None


def _keep(s: Session, tag: str, uid: bool, ret: esearch.Return, tree: search.Node,
          criteria: list[tuple[str, bool]] | None, found: list[tuple[int, Msg]]) -> None:
    """RETURN (UPDATE): keep the search live (RFC 5267 §4.3), unless too many are."""
    if len(s.contexts) >= context.MAX_CONTEXTS:
        s.untagged(f'NO [NOUPDATE "{tag}"] no more live searches in this session')
        return
    ctx = context.Context(tag, uid, ret, tree, criteria)
    context.start(_selected(s), ctx, found)
    s.contexts.append(ctx)


def _answer(s: Session, tag: str, uid: bool, word: str, ret: esearch.Return | None,
            found: list[tuple[int, Msg]], uses_modseq: bool, ordered: bool) -> None:
    """The untagged result of SEARCH or SORT, and the saved result when asked."""
    sel = _selected(s)
    if uses_modseq:
        s.enable_condstore()
    modseq = esearch.result_modseq(ret, [m.modseq for _, m in found]) if uses_modseq else None
    if ret is not None and ret.save:
        ordered_uids = [m.uid for _, m in found]
        sel.save_result(esearch.saved(ret, ordered_uids if ordered
                                      else sorted(ordered_uids)))
    nums = [m.uid if uid else seq for seq, m in found]
    if ret is None and not s.rev2:
        text = word + "".join(f" {n}" for n in nums)
        if modseq:
            text += f" (MODSEQ {modseq})"
        s.untagged(text)
        return
    line = esearch.response(tag, uid, ret or esearch.Return(), nums, ordered=ordered,
                            modseq=modseq or None)
    if line is not None:
        s.untagged(line)


@command("SEARCH", SELECTED, uid_ok=True, expunge_ok=False)
async def cmd_search(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    ret = _return_options(s, tag, p)
    tree, uses_modseq = _keys(p)
    sel = _selected(s)
    try:
        found = await asyncio.to_thread(search.run, sel, tree)
    except BaseException:
        if ret is not None and ret.save:
            sel.save_result([])  # RFC 5182 §2.1: a failed SEARCH ... SAVE empties $
        raise
    _answer(s, tag, uid, "SEARCH", ret, found, uses_modseq, ordered=False)
    if ret is not None and ret.update:
        _keep(s, tag, uid, ret, tree, None, found)
    return f"{'UID ' if uid else ''}SEARCH completed"


def _sorted(sel: Selected, tree: search.Node,
            criteria: list[tuple[str, bool]]) -> list[tuple[int, Msg]]:
    return sort.order(sel, search.run(sel, tree), criteria)


@command("SORT", SELECTED, uid_ok=True, expunge_ok=False)
async def cmd_sort(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    ret = _return_options(s, tag, p)
    criteria = sort.parse_criteria(p)
    p.sp()
    charset = _charset(p)
    if ret is None:  # RETURN after the charset (as imaptest writes it): taken the same way
        ret = _return_options(s, tag, p)
    tree, uses_modseq = _keys_in(p, charset)
    sel = _selected(s)
    found = await asyncio.to_thread(_sorted, sel, tree, criteria)
    _answer(s, tag, uid, "SORT", ret, found, uses_modseq, ordered=True)
    if ret is not None and ret.update:
        _keep(s, tag, uid, ret, tree, criteria, found)
    return f"{'UID ' if uid else ''}SORT completed"


_THREAD_CACHE: OrderedDict[tuple, str] = OrderedDict()
THREAD_CACHE_SIZE = 16  # thread lists a process keeps (webmail asks for the same one often)


def _threads(sel: Selected, tree: search.Node, algorithm: str, uid: bool) -> str:
    """The rendered thread list (built without the cyclic garbage collector: see
    :func:`.thread.gc_paused`)."""
    with thread.gc_paused():
        return _thread_list(sel, tree, algorithm, uid)


def _thread_list(sel: Selected, tree: search.Node, algorithm: str, uid: bool) -> str:
    """Threads depend only on which messages matched (their summaries never change), so a
    result is kept per matching set and reused until the mailbox's messages (not just their
    flags) change."""
    found = search.run(sel, tree)
    msgs = [m for _, m in found]
    uids = tuple([m.uid for m in msgs])
    numbers = uids if uid else tuple([seq for seq, _ in found])
    snap = sel.snapshot
    key = (str(sel.maildir.root), snap.uidvalidity if snap else 0, algorithm, uid, uids,
           () if uid else numbers)
    hit = _THREAD_CACHE.get(key)
    if hit is not None:
        _THREAD_CACHE.move_to_end(key)
        return hit
    ks = sort.keys(sel, msgs)
    items = list(zip(numbers, msgs, [ks[m.emailid] for m in msgs], strict=True))
    text = thread.render(thread.references(items) if algorithm == "REFERENCES"
                         else thread.ordered_subject(items))
    _THREAD_CACHE[key] = text
    while len(_THREAD_CACHE) > THREAD_CACHE_SIZE:
        _THREAD_CACHE.popitem(last=False)
    return text


@command("THREAD", SELECTED, uid_ok=True, expunge_ok=False)
async def cmd_thread(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    algorithm = p.atom().upper()
    if algorithm not in thread.ALGORITHMS:
        raise ParseError(f"unknown threading algorithm {algorithm[:40]}")
    p.sp()
    tree, _ = _charset_and_keys(p)
    sel = _selected(s)
    text = await asyncio.to_thread(_threads, sel, tree, algorithm, uid)
    s.untagged("THREAD" + (" " + text if text else ""))
    return f"{'UID ' if uid else ''}THREAD completed"


@command("CANCELUPDATE", SELECTED)
async def cmd_cancelupdate(s: Session, tag: str, p: Parser, uid: bool) -> str:
    """``CANCELUPDATE "tag" *(SP "tag")``: stop updating those searches (RFC 5267 §4.3.5)."""
    tags = []
    while True:
        p.sp()
        tags.append(p.string().decode("ascii", "replace"))
        if p.peek() != 0x20:
            break
    p.end()
    known = {c.tag for c in s.contexts}
    unknown = [t for t in tags if t not in known]
    if unknown:
        raise No(f"no live search with tag {unknown[0][:40]}")
    s.contexts[:] = [c for c in s.contexts if c.tag not in tags]
    return "CANCELUPDATE completed"
