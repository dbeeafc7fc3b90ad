"""The per-message summary: computed at ingest, kept by email id, filled lazily for an index
of schema version 1, removed with the last copy of its email."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailstack.store.account import INDEX_FILE, SCHEMA_VERSION, AccountStore
from mailstack.store.maildir import Maildir
from mailstack.store.summary import base_subject

MSG = (b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.test>\n"
       b"To: <@relay.test:ann@example.test>\n"
       b"Cc: carl@example.test (Carl)\n"
       b"Subject: Re: [list] Fwd: Quarterly numbers (fwd)\n"
       b"Date: Tue, 10 Nov 2026 09:00:00 +0100\n"
       b"Message-ID: <q1@example.test>\n"
       b"References: <a@x> <b@x>\n"
       b"Content-Type: multipart/mixed; boundary=\"outer\n bound\"\n\n"
       b"--outer bound\nContent-Type: text/html; charset=utf-8\n\n"
       b"<html><head><style>p{}</style></head><p>Hello&amp;  welcome\n to   the <b>numbers</b>"
       b"</p></html>\n"
       b"--outer bound\nContent-Type: application/pdf\nContent-Disposition: attachment\n\n"
       b"JVBERi0=\n--outer bound--\n")


def _store(tmp_path: Path) -> tuple[AccountStore, Maildir]:
    md = Maildir(tmp_path / "acct")
    md.create()
    return AccountStore(md.root), md


def test_summary_is_computed_at_ingest(tmp_path: Path) -> None:
    store, md = _store(tmp_path)
    md.deliver(MSG)
    snap, _ = store.sync("INBOX")
    (e,) = snap.entries
    s = store.summaries("INBOX", [e])[e.emailid]
    assert s.from_addr == "joerg@example.test" and s.from_name == "Jörg"
    assert s.to_addr == "ann@example.test" and s.to_name == ""
    assert s.cc_addr == "carl@example.test" and s.cc_name == "Carl"
    assert s.subject == "Re: [list] Fwd: Quarterly numbers (fwd)"
    assert s.base_subject == "Quarterly numbers"
    assert s.sent == 1794297600.0
    assert s.message_id == "q1@example.test" and s.references == ("a@x", "b@x")
    # the boundary folded inside its quotes is unfolded: the HTML part is found
    assert s.preview == "Hello& welcome to the numbers"
    assert s.has_attachment
    row = sqlite3.connect(md.root / INDEX_FILE).execute(
        "SELECT from_addr, preview FROM summary WHERE emailid=?", (e.emailid,)).fetchone()
    assert row == ("joerg@example.test", "Hello& welcome to the numbers")


def test_old_index_gets_summaries_lazily_and_they_go_with_the_email(tmp_path: Path) -> None:
    store, md = _store(tmp_path)
    md.deliver(MSG)
    md.deliver(b"Subject: second\n\nplain body\n")
    snap, _ = store.sync("INBOX")
    AccountStore.forget(md.root)
    store._conn.close()
    db = sqlite3.connect(md.root / INDEX_FILE)
    db.execute("DELETE FROM summary")  # as an index of schema version 1 has none
    db.execute("UPDATE meta SET value=1 WHERE name='version'")
    db.commit()
    store = AccountStore(md.root)
    assert db.execute("SELECT value FROM meta WHERE name='version'").fetchone()[0] \
        == SCHEMA_VERSION
    snap, _ = store.sync("INBOX")
    got = store.summaries("INBOX", snap.entries)
    assert [got[e.emailid].base_subject for e in snap.entries] == ["Quarterly numbers",
                                                                   "second"]
    assert got[snap.entries[1].emailid].preview == "plain body"
    assert db.execute("SELECT count(*) FROM summary").fetchone()[0] == 2
    store.store_flags("INBOX", [snap.entries[0].uid], "+", ["\\Deleted"])
    store.expunge("INBOX")
    assert db.execute("SELECT count(*) FROM summary").fetchone()[0] == 1


def test_base_subject_rfc5256() -> None:
    cases = {
        "Re: [list] Fwd: Hello (fwd)": "Hello",
        "[fwd: Re: hi]": "hi",
        "RE:  re[2]: test": "test",
        "[x]": "[x]",
        "[a][b] Re: c": "c",
        "Fw:\tx  y ": "x y",
        "Re:": "",
        "Plain": "Plain",
        "[Fwd: [list] Re: nested] (fwd)": "nested",
    }
    for subject, base in cases.items():
        assert base_subject(subject) == base, subject


def test_hostile_subjects_and_addresses_take_linear_time() -> None:
    """Inputs that made a slicing base-subject loop quadratic (10 s for 10,000 characters of
    ``[a]``) and the like: each must finish; the results are checked, not the time."""
    from mailstack.store import addrlist
    from mailstack.store.summary import subject_info
    n = 60_000
    assert subject_info("[a]" * (n // 3)) == ("[a]", False)
    assert subject_info("[a]" * (n // 3) + "x") == ("x", False)
    assert subject_info("Re: " * (n // 4) + "x") == ("x", True)
    assert subject_info("[fwd: " * (n // 6) + "x" + "]" * (n // 6)) == ("x", True)
    assert subject_info("x" + " (fwd)" * (n // 6)) == ("x", True)
    assert len(addrlist.parse("a@b," * (n // 4))) == addrlist.MAX_ADDRESSES
    assert addrlist.parse("(" * n) == []
