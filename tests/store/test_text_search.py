"""The store's substring search (``store/textsearch.py``): candidates from the trigram index,
then an exact check of each candidate's text, RFC 3501 SEARCH semantics (case-insensitive
substring of decoded text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.store.account import AccountStore
from mailstack.store.maildir import create_user_mailbox
from mailstack.store.textsearch import MAX_TRIGRAMS, trigram_query

MESSAGES = [
    b"Subject: =?utf-8?q?Stra=C3=9Fe?= report\nFrom: Ann <ann@example.test>\n\n"
    b"The QUARTERLY figures: 50% up_now\n",
    b"Subject: second\n\nquarter ly is not a match; \"quoted\" words and back\\slash\n",
    b"Subject: =?utf-8?q?=C3=89t=C3=A9?=\n\nr\xc3\xa9sum\xc3\xa9 of the year\n",
    b"Subject: xy\n\nab\n",
]


@pytest.fixture
def store(tmp_path: Path) -> tuple[AccountStore, list[str]]:
    box = create_user_mailbox(tmp_path, "alice@example.test")
    for data in MESSAGES:
        box.deliver(data)
    s = AccountStore.open(box.root)
    s.sync("INBOX")
    entries = sorted(s.status("INBOX").entries, key=lambda e: e.uid)
    return s, [e.emailid for e in entries]


def hits(s: AccountStore, ids: list[str], *needles: tuple[str, str]) -> list[int]:
    return sorted(ids.index(e) for e in s.search_emails(list(needles)))


def test_case_insensitive_substrings(store: tuple[AccountStore, list[str]]) -> None:
    s, ids = store
    assert hits(s, ids, ("BODY", "quarterly")) == [0]
    assert hits(s, ids, ("BODY", "Quarter")) == [0, 1]
    assert hits(s, ids, ("BODY", "rterly fig")) == [0]  # across words
    assert hits(s, ids, ("TEXT", "STRASSE")) == [0]  # casefolded: ß is ss
    assert hits(s, ids, ("TEXT", "Straße")) == [0]
    assert hits(s, ids, ("TEXT", "étÉ")) == [2]  # a decoded encoded-word, non-ASCII case
    assert hits(s, ids, ("BODY", "RÉSUMÉ")) == [2]
    assert hits(s, ids, ("BODY", "STRASSE")) == []  # a header field, not the body
    assert hits(s, ids, ("TEXT", "ann@example")) == [0]
    assert hits(s, ids, ("BODY", "nothing like it")) == []


def test_pattern_characters_are_literal(store: tuple[AccountStore, list[str]]) -> None:
    s, ids = store
    assert hits(s, ids, ("BODY", "50%")) == [0]
    assert hits(s, ids, ("BODY", "5_%")) == []
    assert hits(s, ids, ("BODY", "up_now")) == [0]
    assert hits(s, ids, ("BODY", "up%now")) == []
    assert hits(s, ids, ("BODY", '"quoted"')) == [1]
    assert hits(s, ids, ("BODY", "back\\slash")) == [1]
    assert hits(s, ids, ("BODY", "\"\" OR x*")) == []  # FTS5 syntax is never interpreted
    assert hits(s, ids, ("BODY", "\ud800abc")) == []  # a lone surrogate matches nothing


def test_short_needles_and_conjunctions(store: tuple[AccountStore, list[str]]) -> None:
    s, ids = store
    assert hits(s, ids, ("BODY", "ab")) == [3]  # shorter than a trigram: every row checked
    assert hits(s, ids, ("TEXT", "xy"), ("BODY", "ab")) == [3]
    assert hits(s, ids, ("BODY", "e")) == [0, 1, 2]
    assert hits(s, ids, ("BODY", "quarter"), ("TEXT", "second")) == [1]
    assert s.search_text("INBOX", [("BODY", "quarter"), ("BODY", "figures")]) == {1}


def test_long_needles_use_a_bounded_query(store: tuple[AccountStore, list[str]]) -> None:
    s, ids = store
    needle = "the quarterly figures: 50% up_now"
    assert trigram_query(needle * 4).count(" AND ") == MAX_TRIGRAMS - 1
    assert hits(s, ids, ("BODY", needle)) == [0]
    assert hits(s, ids, ("BODY", needle + "!")) == []


def test_check_reads_only_what_it_is_asked(store: tuple[AccountStore, list[str]]) -> None:
    s, ids = store
    search = s.text_search([("BODY", "quarter")])
    assert set(search.candidates()) >= {ids[0], ids[1]}
    assert search.check([ids[1], ids[2]]) == {ids[1]}
    assert ids[0] not in search._checked  # not asked about: not read
    assert search.all() == {ids[0], ids[1]}


def test_a_destroyed_email_is_not_found(store: tuple[AccountStore, list[str]]) -> None:
    s, ids = store
    search = s.text_search([("BODY", "quarter")])
    assert ids[0] in search.candidates()
    uid = next(e.uid for e in s.status("INBOX").entries if e.emailid == ids[0])
    s.store_flags("INBOX", [uid], "+", ["\\Deleted"])
    s.expunge("INBOX")
    assert search.check([ids[0], ids[1]]) == {ids[1]}


def test_hostile_text(tmp_path: Path) -> None:
    """A needle that almost matches everywhere (aaaa…ab in aaaa…a; checked with Python's
    linear-time substring search, no pattern built from it)."""
    box = create_user_mailbox(tmp_path, "alice@example.test")
    box.deliver(b"Subject: a\n\n" + b"a" * 250_000 + b"b\n")
    s = AccountStore.open(box.root)
    s.sync("INBOX")
    needle = "a" * 5000 + "b"
    assert len(s.search_emails([("BODY", needle)])) == 1
    assert s.search_emails([("BODY", "a" * 4999 + "ba")]) == set()
