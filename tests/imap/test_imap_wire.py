"""Sans-I/O units: the command parser (with hypothesis fuzzing), modified UTF-7, the MIME
splitter and the UID list (including several processes assigning UIDs at once)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.imap import fetch, mime, mutf7, search, wire
from mailstack.imap.wire import ParseError, Parser, SeqSet
from mailstack.store.account import AccountStore
from mailstack.store.maildir import Maildir


def test_tokens():
    p = Parser(b'a1 LOGIN "al\\"ice" {3}\r\npw! atom]x NIL (\\Seen $kw)')
    assert p.tag() == "a1"
    p.sp()
    assert p.atom() == "LOGIN"
    p.sp()
    assert p.astring() == b'al"ice'
    p.sp()
    assert p.astring() == b"pw!"
    p.sp()
    assert p.astring() == b"atom]x"
    p.sp()
    assert p.maybe(b"nil")
    p.sp()
    assert p.flag_list() == ["\\Seen", "$kw"]
    p.end()


def test_literal_detection():
    assert wire.literal_at_end(b"a APPEND x {12}\r\n") == (12, False)
    assert wire.literal_at_end(b"a APPEND x {12+}\r\n") == (12, True)
    assert wire.literal_at_end(b'a LOGIN "{12}"\r\n') is None
    assert wire.literal_at_end(b"a NOOP\r\n") is None


def test_seq_sets():
    s = Parser(b"1:3,5,*,7:*").seq_set()
    assert s.resolve(10) == [(1, 3), (5, 5), (10, 10), (7, 10)]
    assert s.contains(8, 10) and not s.contains(4, 10)
    assert Parser(b"5:2").seq_set().resolve(9) == [(2, 5)]
    for bad in (b"0", b"a", b":", b"1:0", b"4294967296"):
        with pytest.raises(ParseError):
            Parser(bad).seq_set()
    assert SeqSet(((None, None),)).resolve(0) == [(0, 0)]


def test_dates():
    assert Parser(b'"5-Jan-2025"').date() == dt.date(2025, 1, 5)
    d = Parser(b'"05-Jan-2025 10:20:30 +0100"').date_time()
    assert d.utcoffset() == dt.timedelta(hours=1) and d.hour == 10
    assert Parser(b'" 5-Jan-2025 10:20:30 -0000"').date_time().day == 5
    for bad in (b"32-Jan-2025", b"1-Foo-2025", b'"1-Jan-25"'):
        with pytest.raises(ParseError):
            Parser(bad).date()


def test_quote_and_literal_encoding():
    assert wire.quote("plain") == b'"plain"'
    assert wire.quote('a"b\\c') == b'"a\\"b\\\\c"'
    assert wire.quote(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert wire.astring("INBOX") == b"INBOX" and wire.astring("a b") == b'"a b"'


def test_fetch_attribute_parsing():
    atts = fetch.parse_atts(Parser(b"(UID BODY.PEEK[HEADER.FIELDS (From To)] BODY[1.2.MIME]"
                                   b" BODY[]<0.100> RFC822.SIZE)"))
    assert [a.name for a in atts] == ["UID", "BODY", "BODY", "BODY", "RFC822.SIZE"]
    assert atts[1].peek and atts[1].section == "HEADER.FIELDS (From To)"
    assert atts[2].numbers == [1, 2] and atts[2].spec == "MIME"
    assert atts[3].partial == (0, 100) and atts[3].section == ""
    assert [a.name for a in fetch.parse_atts(Parser(b"FAST"))] == ["FLAGS", "INTERNALDATE",
                                                                    "RFC822.SIZE"]
    for bad in (b"BODY[HEADER.FIELDS]", b"BODY[0]", b"BODY[1.]", b"(FLAGS", b"BODY[]<1>",
                b"BODY[TEXT.MIME]"):
        with pytest.raises(ParseError):
            fetch.parse_atts(Parser(bad))


def test_mutf7_roundtrip_and_errors():
    for name in ["INBOX", "Entwürfe", "日本語", "a&b", "Ünïcödé & more", "🙂"]:
        assert mutf7.decode(mutf7.encode(name)) == name
    assert mutf7.encode("Entwürfe") == "Entw&APw-rfe"
    for bad in ["&Jjo", "&AGE-", "&U,BTFw", "caf\u00e9", "&-&ZeVnLIqe-&ZeVnLIqe-" + "&AAA-"]:
        with pytest.raises(mutf7.MUTF7Error):
            mutf7.decode(bad)


def test_multipart_split():
    body = b"pre\r\n--b\r\nA\r\n--b\r\nB\r\n--b--\r\nepi"
    assert mime.split_multipart(body, "b") == [b"A", b"B"]
    part = mime.Part(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body)
    assert [c.body for c in part.children] == [b"", b""]
    assert [c.raw for c in part.children] == [b"A", b"B"]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_raises_anything_but_parseerror(data):
    for fn in (lambda p: fetch.parse_atts(p), lambda p: search.parse(p), lambda p: p.seq_set(),
               lambda p: p.flag_list(), lambda p: p.date_time(), lambda p: (p.tag(), p.sp(),
                                                                            p.astring())):
        try:
            fn(Parser(data))
        except (ParseError, search.BadCharset):
            pass


_TOKENS = st.sampled_from([b"(", b")", b" ", b"BODY", b"[", b"]", b"HEADER.FIELDS", b"1",
                           b".", b"*", b":", b"<", b">", b"{3}\r\nabc", b'"q"', b"NOT", b"OR",
                           b"ALL", b"UID", b"CHARSET", b"UTF-8", b"\\Seen", b"MIME", b"0"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=30))
def test_parser_fuzz_with_grammar_tokens(tokens):
    data = b"".join(tokens)
    for fn in (fetch.parse_atts, search.parse):
        try:
            fn(Parser(data))
        except (ParseError, search.BadCharset):
            pass


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30))
def test_mutf7_fuzz(name):
    assert mutf7.decode(mutf7.encode(name)) == name
    try:
        mutf7.decode(name)
    except mutf7.MUTF7Error:
        pass


# -- UIDs in the store -------------------------------------------------------------------------
def _deliver_and_sync(root: str, n: int) -> list[int]:
    md = Maildir(Path(root))
    store = AccountStore(md.root)  # a fresh handle, as in another process
    out = []
    for _ in range(n):
        msg = md.deliver(b"Subject: x\n\nbody\n", sync=False)
        snap, _ = store.sync("INBOX")
        out.append(next(e.uid for e in snap.entries if e.key == msg.key))
    return out


def test_uids_from_concurrent_processes(tmp_path):
    md = Maildir(tmp_path / "box")
    md.create()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_deliver_and_sync, [(str(md.root), 25)] * 4)
    all_uids = [u for r in results for u in r]
    assert sorted(all_uids) == list(range(1, 101))  # unique, no gaps, none lost
    snap, _ = AccountStore(md.root).sync("INBOX")
    assert snap.uidnext == 101 and len(snap.entries) == 100


def test_uids_never_reused_and_outside_renames_tracked(tmp_path):
    md = Maildir(tmp_path / "box")
    md.create()
    a = md.deliver(b"a\n")
    b = md.deliver(b"b\n")
    snap, _ = AccountStore(md.root).sync("INBOX")
    validity = snap.uidvalidity
    assert [e.uid for e in snap.entries] == [1, 2]
    md.remove(b)
    c = md.deliver(b"c\n")
    snap, _ = AccountStore(md.root).sync("INBOX")
    assert [(e.uid, e.key) for e in snap.entries] == [(1, a.key), (3, c.key)]
    before = snap.entries[0].modseq
    md.set_flags(md.find(a.key), "S")  # another Maildir tool marks it seen
    snap, _ = AccountStore(md.root).sync("INBOX")
    assert snap.entries[0].flags == {"\\Seen"} and snap.entries[0].modseq > before
    assert snap.uidvalidity == validity


def test_lost_index_starts_a_strictly_greater_uidvalidity(tmp_path):
    """Rebuilt in the same second by another process, the UIDVALIDITY must still change:
    the surviving message gets a new UID, which under the old UIDVALIDITY would be a reuse."""
    md = Maildir(tmp_path / "box")
    md.create()
    md.deliver(b"a\n")
    md.deliver(b"b\n")
    store = AccountStore(md.root)
    snap, _ = store.sync("INBOX")
    store.store_flags("INBOX", [1], "+", ["\\Deleted"])
    store.expunge("INBOX")
    validity = store.sync("INBOX")[0].uidvalidity
    for suffix in ("", "-wal", "-shm"):
        (md.root / f"mailstack-index.sqlite{suffix}").unlink(missing_ok=True)
    snap, _ = AccountStore(md.root).sync("INBOX")
    assert snap.uidvalidity > validity
    assert [e.uid for e in snap.entries] == [1]


def test_corrupt_index_is_moved_aside_and_rebuilt(tmp_path, caplog):
    md = Maildir(tmp_path / "box")
    md.create()
    md.deliver(b"a\n")
    validity = AccountStore(md.root).sync("INBOX")[0].uidvalidity
    for suffix in ("-wal", "-shm"):
        (md.root / f"mailstack-index.sqlite{suffix}").unlink(missing_ok=True)
    (md.root / "mailstack-index.sqlite").write_bytes(b"garbage" * 1000)
    snap, _ = AccountStore(md.root).sync("INBOX")
    assert snap.uidvalidity > validity and len(snap.entries) == 1
    assert [p.name for p in md.root.glob("mailstack-index.sqlite.corrupt-*")]
    assert sum("is damaged" in r.getMessage() for r in caplog.records) == 1


_LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,10}", fullmatch=True)
_NAME = st.from_regex(r"[A-Za-z][A-Za-z .'-]{0,15}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.just(""), _NAME), _LOCAL,
                          st.sampled_from(["example.test", "b.example", "x.y.z"])),
                min_size=1, max_size=4))
def test_address_parsing_agrees_with_the_email_package(addrs):
    import email.utils

    from mailstack.store import addrlist
    value = ", ".join(f"{n} <{loc}@{dom}>" if n else f"{loc}@{dom}" for n, loc, dom in addrs)
    ours = addrlist.mailboxes(value)
    assert [(a.name or "", a.addr) for a in ours] == [
        (" ".join(n.split()), a) for n, a in email.utils.getaddresses([value])]


def test_change_log_collapses_per_id_and_knows_its_horizon(tmp_path):
    from mailstack.store.account import ChangesUnavailable
    md = Maildir(tmp_path / "box")
    md.create()
    store = AccountStore(md.root)
    start = store.highest_modseq()
    md.deliver(b"Subject: a\n\na\n")
    md.deliver(b"Subject: b\n\nb\n")
    snap, _ = store.sync("INBOX")
    a, b = snap.entries
    mid = store.highest_modseq()
    store.store_flags("INBOX", [a.uid], "+", ["\\Seen"])
    store.store_flags("INBOX", [b.uid], "+", ["\\Deleted"])
    store.expunge("INBOX")
    full = store.changes("Email", start)
    assert full.created == [a.emailid] and full.updated == [] and full.destroyed == []
    later = store.changes("Email", mid)
    assert later.created == [] and later.updated == [a.emailid]
    assert later.destroyed == [b.emailid]
    assert later.new_state == store.highest_modseq() and not later.has_more
    assert store.changes("Email", later.new_state).updated == []
    with pytest.raises(ChangesUnavailable):
        store.changes("Email", later.new_state + 5)
    mailboxes = {m.name: m for m in store.mailboxes()}
    assert mailboxes["INBOX"].role == "inbox" and mailboxes["INBOX"].total == 1
    inbox = str(mailboxes["INBOX"].id)  # the index meets INBOX at its first sync
    assert store.changes("Mailbox", start).created == [inbox]
    assert store.changes("Mailbox", mid).updated == [inbox]


def test_snapshots_are_published_in_order_across_threads(tmp_path):
    """Sessions of one process refresh from worker threads and the event loop at once while
    another handle appends and files arrive: the snapshot each sees never goes back (an older
    one published after a newer one would make new messages look expunged). The store loads
    and publishes under its lock; this checks the property, the window itself is too narrow
    to hit on demand."""
    import threading

    md = Maildir(tmp_path / "box")
    md.create()
    writer = AccountStore(md.root)  # another process's handle
    store = AccountStore(md.root)
    store.sync("INBOX")
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        last = (0, 0)
        while not stop.is_set():
            snap, _ = store.sync("INBOX")
            now = (snap.uidnext, snap.highest_modseq)
            if now < last:
                errors.append(f"went back from {last} to {now}")
            last = now

    threads = [threading.Thread(target=reader) for _ in range(4)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show
    for t in threads:
        t.start()
    for n in range(150):
        writer.append("INBOX", f"Subject: {n}\r\n\r\nx\r\n".encode())
        if n % 3 == 0:
            md.deliver(b"Subject: dropped\r\n\r\nx\r\n", sync=False)
    stop.set()
    for t in threads:
        t.join(30)
    sys.setswitchinterval(switch)
    assert not errors, errors[:5]
