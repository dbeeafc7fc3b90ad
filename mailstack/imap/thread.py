"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §2), over the store's summaries.

Both work on (number, message, keys) triples in mailbox order, where number is what the
client sees (a sequence number or a UID), and give a :class:`Forest` that :func:`render` turns
into RFC 5256's nested parenthesised lists. Containers are indexes into flat lists: no objects
per message, no reference cycles for the garbage collector, and everything is iterative, so a
hostile References chain cannot exhaust the stack.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from operator import itemgetter

from .mailbox import Msg
from .sort import MESSAGE_ID, REFERENCES, REPLY, SENT, SUBJECT, KeyTuple

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
Item = tuple[int, Msg, KeyTuple]
_SENT = itemgetter(SENT)
_FIRST, _THIRD = itemgetter(0), itemgetter(2)
_MESSAGE_ID = itemgetter(MESSAGE_ID)
_REFERENCES = itemgetter(REFERENCES)
_SUBJECT = itemgetter(SUBJECT)

_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a thread list is built: its thousands of
    children lists would otherwise trigger collections, the older ones walking the daemon's
    whole heap. Reference counting frees everything (a forest has no cycles). Nested and
    concurrent pauses are counted."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


class Forest:
    """A thread list. Containers are ints: ``label[c]`` is a message's number as text (None
    for a dummy), ``kids[c]`` its children in order (None when it has none); ``roots`` are
    the threads in order."""

    __slots__ = ("kids", "label", "roots")

    def __init__(self, roots: list[int], kids: list[list[int] | None],
                 label: list[str | None]) -> None:
        self.roots, self.kids, self.label = roots, kids, label


def _columns(items: list[Item]) -> tuple[list[str], list[KeyTuple], list[float]]:
    """The numbers as text, the keys and the sent dates (RFC 5256: the Date: header, else
    the internal date) of ``items``, column by column."""
    keys = list(map(_THIRD, items))
    dates = list(map(_SENT, keys))
    if None in dates:
        dates = [m.internaldate if d is None else d
                 for d, (_, m, _k) in zip(dates, items, strict=True)]
    return list(map(str, map(_FIRST, items))), keys, dates


def ordered_subject(items: list[Item]) -> Forest:
    """RFC 5256 §2.1 ORDEREDSUBJECT: sort by base subject then sent date; each subject's
    first message is the parent of the others (a message's container is its index)."""
    labels, keys, dates = _columns(items)
    n = len(items)
    by_date = sorted(range(n), key=dates.__getitem__)  # ties: mailbox order
    rank = [0] * n
    for r, i in enumerate(by_date):
        rank[i] = r
    subjects = list(map(_SUBJECT, keys))
    kids: list[list[int] | None] = [None] * n
    roots: list[int] = []
    head, subject = -1, ""
    for i in sorted(by_date, key=subjects.__getitem__):  # stable: then date, mailbox order
        if head >= 0 and subjects[i] == subject:
            ks = kids[head]
            if ks is None:
                kids[head] = [i]
            else:
                ks.append(i)
        else:
            head, subject = i, subjects[i]
            roots.append(i)
    roots.sort(key=rank.__getitem__)
    return Forest(roots, kids, labels)  # type: ignore[arg-type]


def references(items: list[Item]) -> Forest:
    """RFC 5256 §2.2 REFERENCES (the "jwz" algorithm), ``items`` in mailbox order.

    Container ``i`` is message ``i`` (the first message with a Message-ID owns it; a
    duplicate or a message without one has its own), ``n`` and up are dummies made for
    referenced ids no message has. Step 1 links containers by parent index and child count
    only. Pruning (step 3) then tells where each dummy's children go, and the children lists
    are filled by walking the messages once in sent-date order (mailbox order on ties), each
    appended under its kept parent: every level comes out sorted (step 6) and the roots in
    step 4's order, a kept dummy placed by its earliest child. Only what step 5 merges is
    sorted again."""
    labels, keys, dates = _columns(items)
    n = len(items)
    # the first message of each Message-ID (a reference to an id before its message came
    # would have made a dummy that message then took over: the same container)
    by_id = dict(zip(reversed(list(map(_MESSAGE_ID, keys))), range(n - 1, -1, -1),
                     strict=True))
    by_id.pop("", None)
    get = by_id.get
    par = [-1] * n  # container → parent container, -1 for none
    nk = [0] * n  # container → number of children
    for c, refs in enumerate(map(_REFERENCES, keys)):
        if not refs:
            p = par[c]
            if p >= 0:  # linked by an earlier message's references: a root after all
                nk[p] -= 1
                par[c] = -1
            continue
        if len(refs) == 1:  # the usual reply: nothing to link among the references
            prev = get(refs[0])
            if prev is None:
                prev = by_id[refs[0]] = len(par)
                par.append(-1)
                nk.append(0)
        else:
            prev = -1
            for ref in refs:  # step 1B: link the references as parent and child
                cur = get(ref)
                if cur is None:
                    cur = by_id[ref] = len(par)
                    par.append(-1)
                    nk.append(0)
                if (prev >= 0 and par[cur] < 0 and cur != c and cur != prev
                        and not (nk[cur] and _ancestor(par, cur, prev))):
                    par[cur] = prev
                    nk[prev] += 1
                prev = cur
        p = par[c]  # step 1C: the last reference is the message's parent (no loops)
        if prev != c and prev != p and not (nk[c] and _ancestor(par, c, prev)):
            if p >= 0:
                nk[p] -= 1
            par[c] = prev
            nk[prev] += 1
    dest = _prune(n, par, nk)
    kids: list[list[int] | None] = [None] * len(par)
    roots: list[int] = []
    for c in sorted(range(n), key=dates.__getitem__):
        p = par[c]
        if p >= n:
            p = dest[p]
        if p < 0:
            roots.append(c)
            continue
        ks = kids[p]
        if ks is not None:
            ks.append(c)
        else:
            kids[p] = [c]
            if p >= n:  # a kept dummy: a root, placed by its earliest child
                roots.append(p)
    labels.extend([None] * (len(par) - n))  # type: ignore[list-item]
    forest = Forest(roots, kids, labels)  # type: ignore[arg-type]
    _group_by_subject(forest, n, dates, keys)
    return forest


def _ancestor(par: list[int], a: int, b: int) -> bool:
    """Is container ``a`` ``b`` or one of its ancestors? (Only asked of an ``a`` with
    children: one without cannot be anybody's ancestor, which keeps a long chain linear.)"""
    while b >= 0:
        if b == a:
            return True
        b = par[b]
    return False


def _prune(n: int, par: list[int], nk: list[int]) -> dict[int, int]:
    """Step 3: for each dummy (container ``n`` and up), the container its children go to
    (itself when it is kept).

    A dummy without children goes; one below a message is spliced into its parent's level;
    at the top one with a single child gives way to it and one with more stays (its children
    would otherwise become roots). So a dummy is kept when it has two or more children and
    every container above it is a dummy with a single child. Each dummy is looked at once."""
    dest: dict[int, int] = {}
    solo: dict[int, bool] = {}  # a one-child dummy with only such dummies above it
    for d in range(n, len(par)):
        if d in dest:
            continue
        path = []
        x = d
        while x >= n and x not in dest:
            path.append(x)
            x = par[x]
        if x < 0:
            above_solo, above = True, -1
        elif x < n:
            above_solo, above = False, x
        else:
            above_solo, above = solo[x], dest[x]
        for y in reversed(path):
            if above_solo and nk[y] >= 2:
                above = y
            dest[y] = above
            above_solo = solo[y] = above_solo and nk[y] == 1
    return dest


def _group_by_subject(forest: Forest, n: int, dates: list[float], keys: list[KeyTuple]) -> None:
    """Step 5: roots with the same base subject are gathered (RFC 5256 §2.2 5.A to 5.C);
    the levels it changes are sorted again (step 6)."""
    roots, kids = forest.roots, forest.kids
    # a dummy root has the subject of its earliest child, a message
    first = [r if r < n else kids[r][0] for r in roots]  # type: ignore[index]
    rsubj = [keys[i][SUBJECT] for i in first]
    named = [x for x in rsubj if x]
    if len(set(named)) == len(named):
        return  # no two roots share a subject: nothing to gather
    replies = [k[REPLY] for k in keys]
    chosen: dict[str, int] = {}
    for r, subject, i in zip(roots, rsubj, first, strict=True):
        if not subject:
            continue
        old = chosen.get(subject)
        if (old is None or (r >= n and old < n)
                or (old < n and replies[old] and r < n and not replies[i])):
            chosen[subject] = r
    current = dict(chosen)  # the container now standing for each subject
    replaced: dict[int, int] = {}
    merged: set[int] = set()
    touched: set[int] = set()
    for r, subject, i in zip(roots, rsubj, first, strict=True):
        if not subject or chosen[subject] == r:
            continue
        target = current[subject]
        merged.add(r)
        tk = kids[target]
        if target >= n and r >= n:  # both dummies: merge the children
            assert tk is not None
            tk.extend(kids[r] or ())
            touched.add(target)
        elif target >= n or (replies[i] and not replies[target]):
            # into the dummy, or a reply under its original
            if tk is None:
                kids[target] = [r]
            else:
                tk.append(r)
            touched.add(target)
        else:  # both under a new dummy, which takes the target's place
            dummy = len(kids)
            kids.append([target, r])
            forest.label.append(None)
            replaced[chosen[subject]] = current[subject] = dummy
            touched.add(dummy)

    def key(c: int) -> tuple[float, int]:  # sent date, then mailbox order
        if c >= n:
            c = kids[c][0]  # type: ignore[index]
        return dates[c], c

    for t in touched:
        kids[t].sort(key=key)  # type: ignore[union-attr]
    forest.roots = [replaced.get(r, r) for r in roots if r not in merged]
    forest.roots.sort(key=key)


def render(forest: Forest) -> str:
    """RFC 5256 thread-list: ``(3 6 (4 23)(44 7 96))``."""
    kids, label = forest.kids, forest.label
    out: list[str] = []
    # an explicit stack (-1 closes a list) so a deep thread cannot exhaust the C stack
    work = forest.roots[::-1]
    append, pop = out.append, work.pop
    while work:
        c = pop()
        if c < 0:
            append(")")
            continue
        s = label[c]
        ks = kids[c]
        if ks is None:
            append(f"({s})")
            continue
        chain = [] if s is None else [s]
        while ks is not None and len(ks) == 1:
            c = ks[0]
            s = label[c]
            if s is not None:
                chain.append(s)
            ks = kids[c]
        append("(" + " ".join(chain))
        if ks:
            if chain:
                append(" ")
            work.append(-1)
            work.extend(reversed(ks))
        else:
            append(")")
    return "".join(out)
