"""ESEARCH (RFC 4731), SEARCHRES (RFC 5182), ESORT and PARTIAL (RFC 5267, RFC 9394):
``RETURN (...)`` options parsed, and the ``* ESEARCH`` response built from the matches."""

from __future__ import annotations

from dataclasses import dataclass, field

from .wire import ParseError, Parser

OPTIONS = ("MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL", "CONTEXT", "UPDATE")
_NOT_RESULTS = ("SAVE", "CONTEXT", "UPDATE")  # options that ask for no result data


@dataclass
class Return:
    """The result options of one SEARCH/SORT: empty ``options`` means ALL (RFC 4731 §3.1)."""

    options: list[str] = field(default_factory=list)
    partial: tuple[int, int] | None = None  # 1-based (first, last); negative: from the end

    @property
    def save(self) -> bool:
        return "SAVE" in self.options

    @property
    def update(self) -> bool:
        return "UPDATE" in self.options

    def wants(self, option: str) -> bool:
        shown = [o for o in self.options if o not in _NOT_RESULTS]
        return option in shown or (option == "ALL" and not shown and not self.save)


def parse_return(p: Parser) -> Return:
    """After ``RETURN ``: ``(option *(SP option))``; BAD for unknown options."""
    ret = Return()
    p.open_paren()
    if p.peek() != 0x29:
        while True:
            word = p.atom().upper()
            if word not in OPTIONS:
                raise ParseError(f"unknown search return option {word[:40]}")
            if word in ret.options:
                raise ParseError(f"{word} given twice")
            ret.options.append(word)
            if word == "PARTIAL":
                p.sp()
                ret.partial = _partial_range(p)
            if not p.maybe_sp():
                break
    p.close_paren()
    if ret.partial is not None and "ALL" in ret.options:
        raise ParseError("PARTIAL conflicts with ALL")  # RFC 9394 §3.1: one or the other
    return ret


def _signed(p: Parser) -> int:
    neg = p.maybe(b"-")
    n = p.nz_number()
    return -n if neg else n


def _partial_range(p: Parser) -> tuple[int, int]:
    """``a:b`` with both positive or both negative (RFC 9394 §3.1)."""
    a = _signed(p)
    p.expect(b":")
    b = _signed(p)
    if (a < 0) != (b < 0):
        raise ParseError("a partial range is both positive or both negative")
    if abs(a) > abs(b):
        a, b = b, a
    return a, b


def compress(nums: list[int]) -> str:
    """A sequence-set in the given order, ascending runs as ``a:b``."""
    out: list[str] = []
    i, n = 0, len(nums)
    while i < n:
        j = i
        while j + 1 < n and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(out)


def partial_slice(nums: list[int], rng: tuple[int, int]) -> list[int]:
    a, b = rng
    if a > 0:
        return nums[a - 1:b]
    total = len(nums)  # -1 is the last: -1:-3 are the last three, in result order
    lo, hi = total + b, total + a + 1  # b is the more negative one after the swap above
    return nums[max(lo, 0):max(hi, 0)]


def result_modseq(ret: Return | None, modseqs: list[int]) -> int:
    """The MODSEQ of a result (RFC 4731 §3.2, RFC 7162 §3.1.5): the highest of the messages
    it returns, so with MIN and/or MAX (or PARTIAL) alone only those count, with ALL or COUNT
    every match. ``modseqs``: the matches' in result order."""
    if not modseqs:
        return 0
    if ret is None or ret.wants("ALL") or ret.wants("COUNT"):
        return max(modseqs)
    picked = partial_slice(modseqs, ret.partial) if ret.partial is not None else []
    if ret.wants("MIN"):
        picked.append(modseqs[0])
    if ret.wants("MAX"):
        picked.append(modseqs[-1])
    return max(picked, default=max(modseqs))


def saved(ret: Return, nums_uids: list[int]) -> list[int]:
    """What SAVE keeps (RFC 5182 §2.4): MIN and/or MAX alone keep just those."""
    shown = {o for o in ret.options if o not in _NOT_RESULTS}
    if shown and shown <= {"MIN", "MAX"} and nums_uids:
        keep = set()
        if "MIN" in shown:
            keep.add(nums_uids[0])
        if "MAX" in shown:
            keep.add(nums_uids[-1])
        return sorted(keep)
    return list(nums_uids)


def response(tag: str, uid: bool, ret: Return, nums: list[int], *, ordered: bool = False,
             modseq: int | None = None) -> str | None:
    """The ``ESEARCH`` response text (without ``* ``), or None when SAVE alone asked for
    none. ``nums``: matches in result order (ascending, or sort order for ESORT)."""
    if ret.options == ["SAVE"]:
        return None
    parts = [f'ESEARCH (TAG "{tag}")']
    if uid:
        parts.append("UID")
    if nums:
        if ret.wants("MIN"):
            parts.append(f"MIN {nums[0] if ordered else min(nums)}")
        if ret.wants("MAX"):
            parts.append(f"MAX {nums[-1] if ordered else max(nums)}")
    if ret.wants("COUNT"):
        parts.append(f"COUNT {len(nums)}")
    if nums and ret.wants("ALL"):
        parts.append(f"ALL {compress(nums)}")
    if ret.partial is not None:
        a, b = ret.partial
        part = partial_slice(nums, ret.partial)
        parts.append(f"PARTIAL ({a}:{b} {compress(part) if part else 'NIL'})")
    if modseq is not None and nums:
        parts.append(f"MODSEQ {modseq}")
    return " ".join(parts)
