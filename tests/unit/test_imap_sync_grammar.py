"""The sans-I/O grammar of QRESYNC, NOTIFY and sequence-set output, on edge cases."""

from __future__ import annotations

import itertools
import random

import pytest

from mailstack.imap import notify, qresync
from mailstack.imap.wire import ParseError, Parser, compact_set


def test_compact_set_round_trips() -> None:
    rng = random.Random(5)
    for _ in range(200):
        nums = sorted(rng.sample(range(1, 200), rng.randint(0, 60)))
        text = compact_set(nums)
        back: list[int] = []
        for part in filter(None, text.split(",")):
            lo, _, hi = part.partition(":")
            back += range(int(lo), int(hi or lo) + 1)
        assert back == nums, text


def test_merged_ranges_answer_membership_like_a_set() -> None:
    rng = random.Random(9)
    for _ in range(200):
        ranges = [(a, a + rng.randint(0, 5)) for a in rng.sample(range(1, 100), 8)]
        merged = qresync.merge(ranges)
        assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(merged))
        members = {n for a, b in ranges for n in range(a, b + 1)}
        assert {n for n in range(0, 120) if qresync.contains(merged, n)} == members


def test_select_params() -> None:
    p = Parser(b" (QRESYNC (7 12 5,1:3 (1:2 1:2)) CONDSTORE)")
    params = qresync.parse_select_params(p)
    assert params.condstore and params.resync == qresync.Resync(7, 12, ((1, 3), (5, 5)))
    assert qresync.parse_select_params(Parser(b"")) == qresync.SelectParams()
    for bad in (b" (QRESYNC (7))", b" (QRESYNC (7 1 *))", b" (QRESYNC (7 1 1:5 (2,1 1,2)))",
                b" (QRESYNC (7 1 1:5 (1:3 1:2)))", b" (QRESYNC (7 1) QRESYNC (7 1))",
                b" (BOGUS)", b" ()", b" (QRESYNC (7 9223372036854775808))"):
        with pytest.raises(ParseError):
            qresync.parse_select_params(Parser(bad))


def test_fetch_modifiers() -> None:
    assert qresync.parse_fetch_modifiers(Parser(b" (VANISHED CHANGEDSINCE 5)")) == (5, True)
    assert qresync.parse_fetch_modifiers(Parser(b"")) == (None, False)
    for bad in (b" (VANISHED)", b" (CHANGEDSINCE)", b" (FOO 1)", b" (VANISHED VANISHED)"):
        with pytest.raises(ParseError):
            qresync.parse_fetch_modifiers(Parser(bad))


def test_notify_grammar() -> None:
    spec = notify.parse(Parser(b" SET STATUS (selected (MessageNew (UID) messageexpunge)) "
                               b"((SUBTREE (Work INBOX)) (MailboxName)) (PERSONAL NONE)"))
    assert spec is not None and spec.status
    assert spec.selected is not None and spec.selected.kind == "SELECTED"
    assert [a.name for a in spec.selected.fetch_atts] == ["UID"]
    assert spec.events_for("Work.Sub", set()) == {"MailboxName"}
    assert spec.events_for("Other", set()) == frozenset()  # PERSONAL NONE
    assert notify.parse(Parser(b" NONE")) is None
    with pytest.raises(notify.BadEvent):
        notify.parse(Parser(b" SET (INBOXES (AnnotationChange MessageNew MessageExpunge))"))
    with pytest.raises(ParseError):  # BAD wins over NO for a command with both faults
        notify.parse(Parser(b" SET (INBOXES (Foo)) (SELECTED (MailboxName))"))
