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


Tok = tuple[str, str, bool]


def _tokens(value: str) -> list[Tok]:
    """(kind, text, space before) with kind one of ``q`` (quoted, unescaped), ``c``
    (comment), ``l`` (domain literal), ``s`` (special), ``a`` (atom)."""
    out: list[Tok] = []
    i, n = 0, len(value)
    space = False
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            space = True
            i += 1
            continue
        elif c == '"':
            buf = []
            i += 1
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                if value[i] not in "\r\n":
                    buf.append(value[i])
                i += 1
            out.append(("q", "".join(buf), space))
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
            out.append(("c", " ".join("".join(buf).split()), space))
            i += 1
        elif c == "[":
            j = value.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("l", value[i:j], space))
            i = j
        elif c in _SPECIALS:
            out.append(("s", c, space))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in ' \t\r\n"([)':
                j += 1
            if j == i:  # a stray ')' or ']'
                j += 1
            out.append(("a", value[i:j], space))
            i = j
        space = False
    return out


def _is(tok: Tok, special: str) -> bool:
    return tok[0] == "s" and tok[1] == special


def _words(toks: list[Tok]) -> str:
    """A phrase as written: words joined where white space (or a comment) was."""
    out: list[str] = []
    gap = False
    for kind, text, space in toks:
        if kind == "c":
            gap = True
            continue
        if kind in "qa" or (kind == "s" and text == "."):
            if out and (space or gap):
                out.append(" ")
            out.append(text)
        gap = False
    return "".join(out)


def _addr_spec(toks: list[Tok]) -> tuple[str, str | None]:
    """(local part, domain or None) of addr-spec tokens; comments ignored."""
    toks = [t for t in toks if t[0] != "c"]
    at = max((i for i, t in enumerate(toks) if _is(t, "@")), default=-1)
    local_toks, domain_toks = (toks[:at], toks[at + 1:]) if at >= 0 else (toks, None)
    local = "".join(t if k != "q" else _quote_local(t) for k, t, _ in local_toks)
    if domain_toks is None:
        return local, None
    return local, "".join(t for _, t, _ in domain_toks)


def _quote_local(text: str) -> str:
    """A quoted local part as it must be written (quotes kept only where needed)."""
    if text and all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~." for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox(toks: list[Tok]) -> Address | None:
    if not toks:
        return None
    lt = next((i for i, t in enumerate(toks) if _is(t, "<")), -1)
    if lt >= 0:
        gt = next((i for i in range(lt + 1, len(toks)) if _is(toks[i], ">")), len(toks))
        inner = [t for t in toks[lt + 1:gt] if t[0] != "c"]
        route = None
        colon = next((i for i, t in enumerate(inner) if _is(t, ":")), -1)
        if inner and _is(inner[0], "@") and colon > 0:
            route = "".join(t for _, t, _ in inner[:colon])
            inner = inner[colon + 1:]
        local, domain = _addr_spec(inner)
        name = _words(toks[:lt]) or None
        return Address(name, route, local, domain)
    comments = [t for k, t, _ in toks if k == "c"]
    local, domain = _addr_spec(toks)
    if not local and domain is None:
        return None
    return Address(comments[-1] if comments and comments[-1] else None, None, local, domain)


def parse(value: str) -> list[Address]:
    """Mailboxes and group markers of one header field's value, in order."""
    toks = _tokens(value)
    out: list[Address] = []
    item: list[Tok] = []
    in_group = False
    angle = False
    for tok in toks:
        if len(out) >= MAX_ADDRESSES:
            break
        if _is(tok, "<"):
            angle = True
        elif _is(tok, ">"):
            angle = False
        if not angle and _is(tok, ":") and not in_group:
            out.append(Address(group=_words(item)))
            item, in_group = [], True
            continue
        if not angle and _is(tok, ";") and in_group:
            box = _mailbox(item)
            if box is not None:
                out.append(box)
            out.append(Address(group=""))
            item, in_group = [], False
            continue
        if not angle and _is(tok, ","):
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
