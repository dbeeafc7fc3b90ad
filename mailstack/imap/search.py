"""SEARCH: every RFC 3501 search key (plus MODSEQ), parsed to a tree and evaluated lazily.

Flag, size, UID and sequence keys never open the message file; header keys parse only the
header; BODY and TEXT decode the text parts (transfer encoding and charset) before matching.
Matching is case-insensitive substring matching on Unicode text, as RFC 3501 asks.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import email.header
import email.utils
import quopri
from collections.abc import Callable
from dataclasses import dataclass

from ..store import addrlist
from . import mime
from .mailbox import Msg, Selected
from .wire import MAX_DEPTH, ParseError, Parser, zoned

_FLAG_KEYS = {"ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
              "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True),
              "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
              "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
              "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False)}
_HEADER_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
              "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}  # the last three: RFC 8514
CHARSETS = ("UTF-8", "US-ASCII")
MAX_KEYS = 256  # search keys in one SEARCH (a client's filter needs a few dozen at most)


@dataclass
class Node:
    op: str
    args: tuple = ()


def _text(p: Parser, charset: str) -> str:
    raw = p.astring()
    try:
        return raw.decode("utf-8" if charset == "UTF-8" else "ascii")
    except UnicodeDecodeError as exc:
        raise ParseError("search string is not in the given charset") from exc


class _Budget:
    """Keys a search program may still hold."""

    __slots__ = ("left",)

    def __init__(self, keys: int = MAX_KEYS) -> None:
        self.left = keys

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ParseError(f"more than {MAX_KEYS} search keys")


def parse_key(p: Parser, charset: str, budget: _Budget | None = None) -> Node:
    budget = budget or _Budget()
    budget.take()
    p.depth += 1
    try:
        return _parse_key(p, charset, budget)
    finally:
        p.depth -= 1


def _parse_key(p: Parser, charset: str, budget: _Budget) -> Node:
    if p.depth > MAX_DEPTH:
        raise ParseError("search keys nested too deeply")
    if p.maybe_open():
        keys = [parse_key(p, charset, budget)]
        while p.maybe_sp():
            keys.append(parse_key(p, charset, budget))
        p.close_paren()
        return Node("AND", tuple(keys))
    c = p.peek()
    if c == 0x24:  # "$": the saved result (RFC 5182)
        p.pos += 1
        return Node("SAVED")
    if c is not None and (chr(c).isdigit() or c == 0x2A):
        return Node("SEQ", (p.seq_set(),))
    word = p.atom().upper()
    if word in ("ALL", "NEW", "OLD", "RECENT") or word in _FLAG_KEYS:
        return Node(word)
    if word == "SAVEDATESUPPORTED":  # RFC 8514: every mailbox keeps save dates
        return Node("ALL")
    if word in _HEADER_KEYS or word in ("BODY", "TEXT"):
        p.sp()
        return Node(word, (_text(p, charset).casefold(),))
    if word == "HEADER":
        p.sp()
        name = p.astring().decode("ascii", "replace")
        p.sp()
        return Node(word, (name, _text(p, charset).casefold()))
    if word in ("KEYWORD", "UNKEYWORD"):
        p.sp()
        return Node(word, (p.flag(),))
    if word in ("LARGER", "SMALLER"):
        p.sp()
        return Node(word, (p.number(),))
    if word in _DATE_KEYS:
        p.sp()
        return Node(word, (p.date(),))
    if word == "UID":
        p.sp()
        seqset = p.seq_set()
        return Node("SAVED") if seqset.saved else Node(word, (seqset,))
    if word in ("EMAILID", "THREADID"):  # RFC 8474
        p.sp()
        return Node(word, (p.atom(),))
    if word == "NOT":
        p.sp()
        return Node(word, (parse_key(p, charset, budget),))
    if word == "OR":
        p.sp()
        a = parse_key(p, charset, budget)
        p.sp()
        return Node(word, (a, parse_key(p, charset, budget)))
    if word == "MODSEQ":
        p.sp()
        if p.peek() == 0x22:  # entry-name entry-type-req
            p.quoted()
            p.sp()
            p.atom()
            p.sp()
        return Node(word, (p.number64(),))
    raise ParseError(f"unknown search key {word}")


def parse(p: Parser, charset: str | None = None) -> tuple[Node, bool]:
    """``[CHARSET x] key *(SP key)`` (or only the keys when ``charset`` is given, as SORT and
    THREAD have it) → (tree, uses MODSEQ). Raises ParseError or BadCharset."""
    if charset is None:
        charset = "UTF-8"
        if p.maybe(b"CHARSET "):
            charset = check_charset(p.astring())
            p.sp()
    budget = _Budget()
    keys = [parse_key(p, charset, budget)]
    while p.maybe_sp():
        keys.append(parse_key(p, charset, budget))
    p.end()
    tree = Node("AND", tuple(keys))
    return tree, _uses(tree, "MODSEQ")


def check_charset(raw: bytes) -> str:
    """A search charset name, upper-cased; BadCharset when not supported."""
    charset = raw.decode("ascii", "replace").upper()
    if charset not in CHARSETS:
        raise BadCharset(charset)
    return charset


def _uses(node: Node, op: str) -> bool:
    return node.op == op or any(isinstance(a, Node) and _uses(a, op) for a in node.args)


class BadCharset(Exception):
    pass


def _decode_header(value: str) -> str:
    """Raw (latin-1 carried) header text → Unicode, encoded words decoded."""
    value = value.encode("latin-1", "replace").decode("utf-8", "replace")
    if "=?" not in value:
        return value
    out = []
    try:
        chunks = email.header.decode_header(value)
    except Exception:
        return value
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            try:
                out.append(chunk.decode(charset, "replace"))
            except LookupError:
                out.append(chunk.decode("utf-8", "replace"))
    return "".join(out)


def _part_text(part: mime.Part) -> str:
    if part.children:
        return "\n".join(_part_text(c) for c in part.children)
    if part.message is not None:
        return _header_text(part.message) + "\n" + _part_text(part.message)
    if part.type != "text":
        return ""
    cte = str(part.msg.get("content-transfer-encoding") or "").strip().lower()
    body = part.body
    try:
        if cte == "base64":
            body = base64.b64decode(body, validate=False)
        elif cte == "quoted-printable":
            body = quopri.decodestring(body)
    except Exception:
        pass
    charset = str(part.msg.get_param("charset") or "utf-8")
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


def _header_text(part: mime.Part) -> str:
    return "\n".join(f"{k}: {_decode_header(str(v))}" for k, v in part.msg.items())


class Context:
    """Lazily loaded data of one message during a search: the file is read and parsed once,
    and each decoded form (a header's values, the text parts, the whole header) is made once
    per SEARCH however many keys ask for it."""

    def __init__(self, sel: Selected, seq: int, msg: Msg) -> None:
        self.sel, self.seq, self.msg = sel, seq, msg
        self._part: mime.Part | bool | None = False
        self._headers: dict[str, list[str]] = {}
        self._body: str | None = None
        self._header_text: str | None = None
        self._internal: dt.date | None = None
        self.results: dict[tuple[str, str], bool] = {}  # text keys already answered

    def part(self) -> mime.Part | None:
        if self._part is False:
            raw = self.sel.read(self.msg)
            self._part = mime.Part(raw) if raw is not None else None
        return self._part  # type: ignore[return-value]

    def header(self, name: str) -> list[str]:
        key = name.lower()
        values = self._headers.get(key)
        if values is None:
            part = self.part()
            values = [] if part is None else [_decode_header(str(v))
                                              for v in part.msg.get_all(key) or []]
            self._headers[key] = values
        return values

    def body_text(self, part: mime.Part) -> str:
        """The decoded text parts, case-folded."""
        if self._body is None:
            self._body = _part_text(part).casefold()
        return self._body

    def header_text(self, part: mime.Part) -> str:
        """The decoded header, case-folded."""
        if self._header_text is None:
            self._header_text = _header_text(part).casefold()
        return self._header_text

    def addresses(self, name: str) -> list[str]:
        """The field's mailboxes as ``name local@domain`` text, case-folded: comments, routes
        and quoting left out (``<a (c)@ (c) b.org>`` is found as ``a@b.org``)."""
        out = []
        for value in self.header(name):
            for a in addrlist.mailboxes(value):
                out.append(f"{a.name or ''} {a.addr}".casefold())
        return out

    def sent_date(self) -> dt.date | None:
        values = self.header("date")
        if not values:
            return None
        try:
            return email.utils.parsedate_to_datetime(values[0]).date()
        except (TypeError, ValueError, IndexError):
            return None

    def internal_date(self) -> dt.date:
        """The internal date's calendar date in its own zone (RFC 3501 §6.4.4: "disregarding
        time and timezone"), or the server's local zone when none is known."""
        if self._internal is None:
            self._internal = zoned(self.sel.internal_date(self.msg), self.msg.tzoff).date()
        return self._internal


def _date_cmp(kind: str, value: dt.date | None, ref: dt.date) -> bool:
    if value is None:
        return False
    if kind.endswith("BEFORE"):
        return value < ref
    if kind.endswith("ON"):
        return value == ref
    return value >= ref


def evaluate(node: Node, ctx: Context, largest_seq: int, largest_uid: int) -> bool:
    op = node.op
    m = ctx.msg
    if op == "AND":
        return all(evaluate(n, ctx, largest_seq, largest_uid) for n in node.args)
    if op == "ALL":
        return True
    if op in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[op]
        return (flag in m.flags) == want
    if op == "NEW":
        return ctx.sel.is_recent(m) and not m.seen
    if op == "OLD":
        return not ctx.sel.is_recent(m)
    if op == "RECENT":
        return ctx.sel.is_recent(m)
    if op == "SEQ":
        return node.args[0].contains(ctx.seq, largest_seq)
    if op == "UID":
        return node.args[0].contains(m.uid, largest_uid)
    if op == "NOT":
        return not evaluate(node.args[0], ctx, largest_seq, largest_uid)
    if op == "OR":
        return (evaluate(node.args[0], ctx, largest_seq, largest_uid)
                or evaluate(node.args[1], ctx, largest_seq, largest_uid))
    if op in ("KEYWORD", "UNKEYWORD"):
        has = node.args[0].lower() in (f.lower() for f in m.flags)
        return has if op == "KEYWORD" else not has
    if op == "LARGER":
        return ctx.sel.size(m) > node.args[0]
    if op == "SMALLER":
        return ctx.sel.size(m) < node.args[0]
    if op == "MODSEQ":
        return m.modseq >= node.args[0]
    if op in ("BEFORE", "ON", "SINCE"):
        return _date_cmp(op, ctx.internal_date(), node.args[0])
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _date_cmp(op, ctx.sent_date(), node.args[0])
    if op in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        return _date_cmp(op, dt.datetime.fromtimestamp(m.savedate).date(), node.args[0])
    if op in _HEADER_KEYS:
        needle = node.args[0]
        if any(needle in v.casefold() for v in ctx.header(op.lower())):
            return True
        return op != "SUBJECT" and any(needle in v for v in ctx.addresses(op.lower()))
    if op == "SAVED":
        return m.uid in ctx.sel.saved_set()
    if op == "EMAILID":
        return m.emailid == node.args[0]
    if op == "THREADID":
        return m.threadid == node.args[0]
    if op == "HEADER":
        name, needle = node.args
        values = ctx.header(name)
        return bool(values) and any(needle in v.casefold() for v in values)
    if op not in ("BODY", "TEXT"):
        raise ValueError(op)
    known = ctx.results.get((op, node.args[0]))
    if known is None:
        known = ctx.results[op, node.args[0]] = _text_match(op, node.args[0], ctx)
    return known


def _text_match(op: str, needle: str, ctx: Context) -> bool:
    part = ctx.part()
    if part is None:
        return False
    if op == "BODY":
        return needle in ctx.body_text(part)
    return needle in ctx.header_text(part) or needle in ctx.body_text(part)


def _split_text_keys(tree: Node) -> tuple[list[tuple[str, str]], Node]:
    """BODY/TEXT keys that every match must satisfy (top-level AND members), which the
    store's full-text index answers, and the rest of the program."""
    members = tree.args if tree.op == "AND" else [tree]
    text = [(n.op, n.args[0]) for n in members if n.op in ("BODY", "TEXT")]
    if not text:
        return [], tree
    rest = [n for n in members if n.op not in ("BODY", "TEXT")]
    return text, Node("AND", tuple(rest)) if rest else Node("ALL")


def _numbered(sel: Selected, node: Node, largest_seq: int, largest_uid: int
              ) -> list[tuple[int, Msg]]:
    """The messages of one sequence or UID set, found by bisection (no test per message)."""
    uid = node.op == "UID"
    spans = []
    for lo, hi in node.args[0].resolve(largest_uid if uid else largest_seq):
        if uid:
            i, j = bisect.bisect_left(sel.uids, lo), bisect.bisect_right(sel.uids, hi)
        else:
            i, j = max(lo - 1, 0), min(hi, len(sel.msgs))
        if i < j:
            spans.append((i, j))
    spans.sort()
    out: list[tuple[int, Msg]] = []
    done = 0  # messages before this index are in ``out`` already
    for i, j in spans:
        i = max(i, done)
        if i < j:
            out.extend(zip(range(i + 1, j + 1), sel.msgs[i:j], strict=True))
            done = j
    return out


Test = Callable[[int, Msg], bool]


def _compile(node: Node, sel: Selected, largest_seq: int, largest_uid: int) -> Test | None:
    """A predicate for a program of keys the index answers (flags, numbers, ids), or None
    when some key needs the message itself: 10,000 messages are filtered without building
    a search context for each."""
    op, args = node.op, node.args
    if op == "ALL":
        return lambda seq, m: True
    if op in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[op]
        return (lambda seq, m: flag in m.flags) if want else (lambda seq, m: flag not in m.flags)
    if op in ("SEQ", "UID"):
        ranges = args[0].resolve(largest_seq if op == "SEQ" else largest_uid)
        if len(ranges) == 1:
            lo, hi = ranges[0]
            return ((lambda seq, m: lo <= seq <= hi) if op == "SEQ"
                    else (lambda seq, m: lo <= m.uid <= hi))
        if op == "SEQ":
            return lambda seq, m: any(a <= seq <= b for a, b in ranges)
        return lambda seq, m: any(a <= m.uid <= b for a, b in ranges)
    if op == "SAVED":
        saved = sel.saved_set()
        return lambda seq, m: m.uid in saved
    if op in ("LARGER", "SMALLER"):
        n = args[0]
        return (lambda seq, m: m.size > n) if op == "LARGER" else (lambda seq, m: m.size < n)
    if op == "MODSEQ":
        n = args[0]
        return lambda seq, m: m.modseq >= n
    if op in ("KEYWORD", "UNKEYWORD"):
        kw, want = args[0].lower(), op == "KEYWORD"
        return lambda seq, m: any(f.lower() == kw for f in m.flags) == want
    if op in ("EMAILID", "THREADID"):
        ident = args[0]
        return ((lambda seq, m: m.emailid == ident) if op == "EMAILID"
                else (lambda seq, m: m.threadid == ident))
    if op in ("AND", "OR", "NOT"):
        subs = [_compile(n, sel, largest_seq, largest_uid) for n in args]
        if any(t is None for t in subs):
            return None
        tests: list[Test] = subs  # type: ignore[assignment]
        if op == "NOT":
            inner = tests[0]
            return lambda seq, m: not inner(seq, m)
        if op == "OR":
            a, b = tests
            return lambda seq, m: a(seq, m) or b(seq, m)
        if len(tests) == 1:
            return tests[0]
        return lambda seq, m: all(t(seq, m) for t in tests)
    return None


def run(sel: Selected, tree: Node) -> list[tuple[int, Msg]]:
    """Matching (sequence number, message) pairs in sequence order."""
    largest_seq = sel.exists
    largest_uid = sel.uids[-1] if sel.uids else 0
    if tree.op == "AND" and len(tree.args) == 1 and tree.args[0].op == "ALL":
        return list(enumerate(sel.msgs, 1))
    if tree.op == "AND" and len(tree.args) == 1 and tree.args[0].op in ("SEQ", "UID"):
        return _numbered(sel, tree.args[0], largest_seq, largest_uid)
    fast = _compile(tree, sel, largest_seq, largest_uid)
    if fast is not None:
        return [(seq, m) for seq, m in enumerate(sel.msgs, 1) if fast(seq, m)]
    text_keys, tree = _split_text_keys(tree)
    hits = sel.store.search_text(sel.name, text_keys) if text_keys else None
    return [(seq, m) for seq, m in enumerate(sel.msgs, 1)
            if (hits is None or m.uid in hits)
            and evaluate(tree, Context(sel, seq, m), largest_seq, largest_uid)]
