"""RFC 5322 address lists (From, To, Cc …) parsed into mailboxes and groups, linear time.

One tokenizer pass (quoted strings, nested comments, domain literals, specials, atoms), then
one pass over the tokens. Kept apart from the ``email`` package because its parser drops
source routes (``<@route:user@domain>``) and turns comments inside an angle address into a
display name. Here:

- ``Name <user@domain>``: name "Name"; comments anywhere are not part of the name;
- ``<@a,@b:user@domain>``: the source route is kept as ``"@a,@b"``;
- ``user@domain (Name)``: without a phrase or angle brackets, the comment is the name (as the
  habit of old mailers had it, and as other servers report it).

Values are handled as text (latin-1 carried raw bytes or decoded Unicode, as the caller has
them); nothing is decoded here.
"""

from __future__ import annotations

from dataclasses import dataclass

_SPECIALS = frozenset("<>,:;@.")
MAX_ADDRESSES = 1000  # per field (a hostile header holds no more than this many)


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox (``group`` None) or a group marker: ``Address(group="Team")`` starts a group,
    ``Address(group="")`` ends it."""

    name: str | None = None
    route: str | None = None
    local: str = ""
    domain: str | None = None
    group: str | None = None

    @property
    def addr(self) -> str:
        """``local@domain`` (or ``local`` alone)."""
        return f"{self.local}@{self.domain}" if self.domain is not None else self.local


def _tokens(value: str) -> list[tuple[str, str]]:
    """(kind, text) with kind one of ``q`` (quoted, unescaped), ``c`` (comment), ``l`` (domain
    literal), ``s`` (special), ``a`` (atom); folding white space is dropped."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            buf = []
            i += 1
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                if value[i] not in "\r\n":
                    buf.append(value[i])
                i += 1
            out.append(("q", "".join(buf)))
            i += 1
        elif c == "(":
            depth, buf = 1, []
            i += 1
            while i < n and depth:
                ch = value[i]
                if ch == "\\" and i + 1 < n:
                    i += 1
                    ch = value[i]
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if not depth:
                        break
                buf.append(ch)
                i += 1
            out.append(("c", " ".join("".join(buf).split())))
            i += 1
        elif c == "[":
            j = value.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("l", value[i:j]))
            i = j
        elif c in _SPECIALS:
            out.append(("s", c))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in ' \t\r\n"([)':
                j += 1
            if j == i:  # a stray ')' or ']'
                j += 1
            out.append(("a", value[i:j]))
            i = j
    return out


def _words(toks: list[tuple[str, str]]) -> str:
    return " ".join(t for k, t in toks if k in "qa" or (k == "s" and t == "."))


def _addr_spec(toks: list[tuple[str, str]]) -> tuple[str, str | None]:
    """(local part, domain or None) of addr-spec tokens; comments ignored."""
    toks = [t for t in toks if t[0] != "c"]
    at = max((i for i, t in enumerate(toks) if t == ("s", "@")), default=-1)
    local_toks, domain_toks = (toks[:at], toks[at + 1:]) if at >= 0 else (toks, None)
    local = "".join(t if k != "q" else _quote_local(t) for k, t in local_toks)
    if domain_toks is None:
        return local, None
    return local, "".join(t for _, t in domain_toks)


def _quote_local(text: str) -> str:
    """A quoted local part as it must be written (quotes kept only where needed)."""
    if text and all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~." for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox(toks: list[tuple[str, str]]) -> Address | None:
    if not toks:
        return None
    try:
        lt = toks.index(("s", "<"))
    except ValueError:
        lt = -1
    if lt >= 0:
        gt = next((i for i in range(lt + 1, len(toks)) if toks[i] == ("s", ">")), len(toks))
        inner = [t for t in toks[lt + 1:gt] if t[0] != "c"]
        route = None
        colon = next((i for i, t in enumerate(inner) if t == ("s", ":")), -1)
        if inner and inner[0] == ("s", "@") and colon > 0:
            route = "".join(t for _, t in inner[:colon])
            inner = inner[colon + 1:]
        local, domain = _addr_spec(inner)
        name = _words(toks[:lt]) or None
        return Address(name, route, local, domain)
    comments = [t for k, t in toks if k == "c"]
    local, domain = _addr_spec(toks)
    if not local and domain is None:
        return None
    return Address(comments[-1] if comments and comments[-1] else None, None, local, domain)


def parse(value: str) -> list[Address]:
    """Mailboxes and group markers of one header field's value, in order."""
    toks = _tokens(value)
    out: list[Address] = []
    item: list[tuple[str, str]] = []
    in_group = False
    angle = False
    for tok in toks:
        if len(out) >= MAX_ADDRESSES:
            break
        if tok == ("s", "<"):
            angle = True
        elif tok == ("s", ">"):
            angle = False
        if not angle and tok == ("s", ":") and not in_group:
            out.append(Address(group=_words(item)))
            item, in_group = [], True
            continue
        if not angle and tok == ("s", ";") and in_group:
            box = _mailbox(item)
            if box is not None:
                out.append(box)
            out.append(Address(group=""))
            item, in_group = [], False
            continue
        if not angle and tok == ("s", ","):
            box = _mailbox(item)
            if box is not None:
                out.append(box)
            item = []
            continue
        item.append(tok)
    box = _mailbox(item)
    if box is not None:
        out.append(box)
    if in_group:
        out.append(Address(group=""))
    return out


def mailboxes(value: str) -> list[Address]:
    """The mailboxes of a field (group markers left out)."""
    return [a for a in parse(value) if a.group is None]
