"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §2), over the store's summaries.

Both work on (number, message, summary) triples where number is what the client sees (a
sequence number or a UID); the result is a list of trees rendered as RFC 5256's nested
parenthesised lists. Everything is iterative or bounded-depth: a hostile References chain
cannot exhaust the stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..store.summary import Summary, subject_info
from .mailbox import Msg
from .sort import casemap, sent_date

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
Item = tuple[int, Msg, Summary]


@dataclass(eq=False)
class Node:
    """A thread container: a message (``number``) or a dummy (None) with children."""

    number: int | None = None
    date: float = 0.0
    seq: int = 0  # mailbox order: breaks date ties
    subject: str = ""  # base subject, case-mapped
    reply: bool = False  # its subject had a reply or forward prefix
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def key(self) -> tuple[float, int]:
        return (self.date, self.seq)


def _is_reply(s: Summary) -> bool:
    return subject_info(s.subject)[1]


def _message_node(number: int, seq: int, m: Msg, s: Summary) -> Node:
    return Node(number, sent_date(s, m), seq, casemap(s.base_subject), _is_reply(s))


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
    roots.sort(key=Node.key)
    return roots


def _ancestor(a: Node, b: Node) -> bool:
    """Is ``a`` ``b`` or one of its ancestors?"""
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
    for (number, m, s), seq in zip(items, seqs, strict=True):
        node = by_id.get(s.message_id) if s.message_id else None
        if node is None or node.number is not None:  # none, or a duplicate: a unique one
            node = Node()
            by_id[s.message_id if s.message_id and s.message_id not in by_id
                  else f"\0{seq}"] = node
        fresh = _message_node(number, seq, m, s)
        node.number, node.date, node.seq = fresh.number, fresh.date, fresh.seq
        node.subject, node.reply = fresh.subject, fresh.reply
        prev: Node | None = None
        for ref in s.references:  # step 1B: link the references as parent and child
            cur = by_id.get(ref)
            if cur is None:
                cur = by_id[ref] = Node()
            if (prev is not None and cur.parent is None and not _ancestor(cur, prev)
                    and cur is not node):
                _link(prev, cur)
            prev = cur
        # step 1C: the last reference is the message's parent (no loops)
        if prev is not None and prev is not node and not _ancestor(node, prev):
            _link(prev, node)
        elif prev is None and node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    roots = [n for n in by_id.values() if n.parent is None]
    roots = _prune(roots, top=True)
    for r in roots:
        r.parent = None
    _date_dummies(roots)
    roots.sort(key=Node.key)
    roots = _group_by_subject(roots)
    _sort_tree(roots)
    return roots


def _prune(nodes: list[Node], top: bool) -> list[Node]:
    """Step 3: dummies without children go; a dummy's children take its place (at the top
    only when it has exactly one child). Iterative, depth-first."""
    out: list[Node] = []
    pending = [(list(nodes), out, top)]
    while pending:
        todo, into, is_top = pending.pop()
        for node in todo:
            if node.number is None and not node.children:
                continue
            if node.number is None and (not is_top or len(node.children) == 1):
                pending.append((list(node.children), into, is_top))
                for c in node.children:
                    c.parent = None
                continue
            into.append(node)
            kids, node.children = node.children, []
            for c in kids:
                c.parent = node
            pending.append((kids, node.children, False))
    return out


def _fix_parents(roots: list[Node]) -> None:
    stack = list(roots)
    while stack:
        n = stack.pop()
        for c in n.children:
            c.parent = n
            stack.append(c)


def _date_dummies(roots: list[Node]) -> None:
    """A dummy root takes the date (and subject) of its earliest child (step 4)."""
    _fix_parents(roots)
    for r in roots:
        if r.number is None and r.children:
            first = min(r.children, key=Node.key)
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
                first = min(n.children, key=Node.key)
                n.date, n.seq = first.date, first.seq
        level.sort(key=Node.key)
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
