"""The THREAD algorithms as mailstack first implemented them (a container object per message,
parent and children links): the reference the flat-list implementation in
``mailstack.imap.thread`` is compared with on random mailboxes. Kept only for the tests."""

from __future__ import annotations

import operator

from mailstack.imap.mailbox import Msg
from mailstack.imap.sort import Keys, sent_date

Item = tuple[int, Msg, Keys]


class Node:
    """A thread container: a message (``number``) or a dummy (None) with children."""

    __slots__ = ("children", "date", "number", "parent", "reply", "seq", "subject")

    def __init__(self, number: int | None = None, date: float = 0.0, seq: int = 0,
                 subject: str = "", reply: bool = False) -> None:
        self.number = number
        self.date = date
        self.seq = seq  # mailbox order: breaks date ties
        self.subject = subject  # base subject, case-mapped
        self.reply = reply  # its subject had a reply or forward marker
        self.parent: Node | None = None
        self.children: list[Node] = []



_KEY = operator.attrgetter("date", "seq")  # sent date, then mailbox order

def _message_node(number: int, seq: int, m: Msg, k: Keys) -> Node:
    return Node(number, sent_date(k, m), seq, k.subject, k.reply)


def ordered_subject(items: list[Item], seqs: list[int]) -> list[Node]:
    """RFC 5256 §2.1 ORDEREDSUBJECT: sort by base subject then sent date; each subject's
    first message is the parent of the others."""
    nodes = [_message_node(n, q, m, s) for (n, m, s), q in zip(items, seqs, strict=True)]
    nodes.sort(key=lambda x: (x.subject, x.date, x.seq))
    roots: list[Node] = []
    for node in nodes:
        if roots and roots[-1].subject == node.subject:
            roots[-1].children.append(node)
        else:
            roots.append(node)
    roots.sort(key=_KEY)
    return roots


def _ancestor(a: Node, b: Node) -> bool:
    """Is ``a`` ``b`` or one of its ancestors? (Only asked of an ``a`` with children: one
    without cannot be anybody's ancestor, which keeps a long chain linear.)"""
    x: Node | None = b
    while x is not None:
        if x is a:
            return True
        x = x.parent
    return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def references(items: list[Item], seqs: list[int]) -> list[Node]:
    """RFC 5256 §2.2 REFERENCES (the "jwz" algorithm)."""
    by_id: dict[str, Node] = {}
    get = by_id.get
    for (number, m, k), seq in zip(items, seqs, strict=True):
        mid = k.message_id
        date = k.sent if k.sent is not None else m.internaldate
        node = get(mid) if mid else None
        if node is None or node.number is not None:  # none, or a duplicate: a unique one
            node = Node(number, date, seq, k.subject, k.reply)
            by_id[mid if mid and mid not in by_id else f"\0{seq}"] = node
        else:  # a container made for a reference to it
            node.number, node.date, node.seq = number, date, seq
            node.subject, node.reply = k.subject, k.reply
        prev: Node | None = None
        for ref in k.references:  # step 1B: link the references as parent and child
            cur = get(ref)
            if cur is None:
                cur = by_id[ref] = Node()
            if (prev is not None and cur.parent is None and cur is not node and cur is not prev
                    and not (cur.children and _ancestor(cur, prev))):
                _link(prev, cur)
            prev = cur
        # step 1C: the last reference is the message's parent (no loops)
        if prev is not None:
            if (prev is not node and prev is not node.parent
                    and not (node.children and _ancestor(node, prev))):
                _link(prev, node)
        elif node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    roots = _prune([n for n in by_id.values() if n.parent is None])
    _date_dummies(roots)
    roots.sort(key=_KEY)
    roots = _group_by_subject(roots)
    _sort_tree(roots)
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    """Step 3: dummies without children go; a dummy's children take its place (at the top
    only when it has exactly one child). Iterative, depth-first; parents are set anew."""
    out: list[Node] = []
    pending: list[tuple[list[Node], list[Node], Node | None]] = [(roots, out, None)]
    while pending:
        todo, into, owner = pending.pop()
        for node in todo:
            kids = node.children
            if node.number is None:
                if not kids:
                    continue
                if owner is not None or len(kids) == 1:  # promoted to this level
                    pending.append((kids, into, owner))
                    continue
            node.parent = owner
            into.append(node)
            if kids:
                node.children = []
                pending.append((kids, node.children, node))
    return out


def _date_dummies(roots: list[Node]) -> None:
    """A dummy root takes the date (and subject) of its earliest child (step 4)."""
    for r in roots:
        if r.number is None and r.children:
            first = min(r.children, key=_KEY)
            r.date, r.seq = first.date, first.seq
            r.subject, r.reply = first.subject, first.reply


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """Step 5: roots with the same base subject are gathered (RFC 5256 §2.2 5.A to 5.C)."""
    chosen: dict[str, Node] = {}
    for r in roots:
        if not r.subject:
            continue
        old = chosen.get(r.subject)
        if (old is None or (r.number is None and old.number is not None)
                or (old.number is not None and old.reply and r.number is not None
                    and not r.reply)):
            chosen[r.subject] = r
    current = dict(chosen)  # the container now standing for each subject
    replaced: dict[Node, Node] = {}
    merged: set[Node] = set()
    for r in roots:
        if not r.subject or chosen.get(r.subject) in (None, r):
            continue
        target = current[r.subject]
        merged.add(r)
        if target.number is None and r.number is None:  # both dummies: merge the children
            for c in r.children:
                c.parent = target
            target.children.extend(r.children)
        elif target.number is None or (r.reply and not target.reply):
            r.parent = target  # into the dummy, or a reply under its original
            target.children.append(r)
        else:  # both under a new dummy, which takes the target's place
            dummy = Node(None, target.date, target.seq, target.subject, target.reply)
            dummy.children = [target, r]
            target.parent = r.parent = dummy
            replaced[chosen[r.subject]] = dummy
            current[r.subject] = dummy
    return [replaced.get(r, r) for r in roots if r not in merged]


def _sort_tree(roots: list[Node]) -> None:
    """Step 6: siblings in sent-date order (mailbox order on ties)."""
    stack = [roots]
    while stack:
        level = stack.pop()
        for n in level:
            if n.number is None and n.children:
                first = min(n.children, key=_KEY)
                n.date, n.seq = first.date, first.seq
        if len(level) > 1:
            level.sort(key=_KEY)
        stack.extend(n.children for n in level if n.children)


def render(roots: list[Node]) -> str:
    """RFC 5256 thread-list: ``(3 6 (4 23)(44 7 96))``."""
    out: list[str] = []
    # an explicit stack of (node, stage) so a deep thread cannot exhaust the C stack
    work: list[object] = list(reversed(roots))
    while work:
        item = work.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        assert isinstance(item, Node)
        out.append("(")
        chain: list[str] = []
        cur = item
        if cur.number is not None:
            chain.append(str(cur.number))
        while len(cur.children) == 1:
            cur = cur.children[0]
            if cur.number is not None:
                chain.append(str(cur.number))
        out.append(" ".join(chain))
        if len(cur.children) > 1:
            if chain:
                out.append(" ")
            work.append(")")
            work.extend(reversed(cur.children))
        else:
            work.append(")")
    return "".join(out)
