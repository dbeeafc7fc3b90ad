"""RFC 3501 and extension behaviour over real sockets (imaplib and a raw client)."""

from __future__ import annotations

import asyncio
import base64
import re

import pytest

from mailstack.store.maildir import delivery_order
from tests.imap.conftest import PASSWORD, USER, Raw, message


def ok(lines: list[bytes], tag: str) -> list[bytes]:
    assert lines[-1].startswith(f"{tag} OK".encode()), lines
    return lines


async def login(imap, tls: bool = False) -> Raw:
    c = await Raw.connect(imap, tls=tls)
    ok(await c.cmd("L", f'LOGIN "{USER}" "{PASSWORD}"'), "L")
    return c


async def test_greeting_capability_noop_logout(imap):
    c = await Raw.connect(imap)
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"STARTTLS" in c.greeting and b"AUTH=PLAIN" in c.greeting  # loopback: allowed
    caps = ok(await c.cmd("a", "CAPABILITY"), "a")
    assert caps[0].startswith(b"* CAPABILITY IMAP4rev1")
    ok(await c.cmd("b", "NOOP"), "b")
    out = ok(await c.cmd("c", "LOGOUT"), "c")
    assert out[0].startswith(b"* BYE")
    assert await c.line() == b""


async def test_login_and_wrong_password(imap):
    c = await Raw.connect(imap)
    bad = await c.cmd("a", f'LOGIN "{USER}" "nope"')
    assert bad[-1].startswith(b"a NO [AUTHENTICATIONFAILED]")
    good = ok(await c.cmd("b", f"LOGIN {USER} {PASSWORD}"), "b")
    assert good[-1].startswith(b"b OK [CAPABILITY IMAP4rev1")
    again = await c.cmd("c", f"LOGIN {USER} {PASSWORD}")
    assert again[-1].startswith(b"c BAD")


async def test_authenticate_plain_sasl_ir_and_cancel(imap):
    c = await Raw.connect(imap)
    await c.send("a AUTHENTICATE PLAIN\r\n")
    assert (await c.line()).startswith(b"+")
    await c.send("*\r\n")
    assert (await c.until("a"))[-1].startswith(b"a BAD")
    ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    ok(await c.cmd("b", f"AUTHENTICATE PLAIN {ir}"), "b")


async def test_login_with_literals(imap):
    c = await Raw.connect(imap)
    await c.send(f"a LOGIN {{{len(USER)}}}\r\n")
    assert (await c.line()).startswith(b"+ ")
    await c.send(f"{USER} {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\n")
    ok(await c.until("a"), "a")


async def test_starttls_discards_pipelined_plaintext(imap_on_each_loop):
    imap = imap_on_each_loop
    c = await Raw.connect(imap)
    await c.send(f"a STARTTLS\r\nb LOGIN {USER} {PASSWORD}\r\n")
    assert (await c.line()).startswith(b"a OK")
    await c.writer.start_tls(imap.ssl, server_hostname="localhost")
    caps = ok(await c.cmd("c", "CAPABILITY"), "c")  # the injected LOGIN was dropped
    assert b"STARTTLS" not in caps[0]
    assert (await c.cmd("d", "SELECT INBOX"))[-1].startswith(b"d BAD")
    again = await c.cmd("e", "STARTTLS")
    assert again[-1].startswith(b"e BAD")


async def test_id_namespace_enable(imap):
    c = await login(imap)
    idl = ok(await c.cmd("a", "ID NIL"), "a")
    assert idl[0].startswith(b'* ID ("name" "mailstack"')
    ok(await c.cmd("b", "NAMESPACE"), "b")
    en = ok(await c.cmd("c", "ENABLE CONDSTORE X-UNKNOWN"), "c")
    assert en[0] == b"* ENABLED CONDSTORE\r\n"


async def test_list_lsub_and_list_extended(imap):
    c = await login(imap)
    ok(await c.cmd("a", "CREATE Work.Projects.2026"), "a")
    ok(await c.cmd("b", "CREATE Archive"), "b")
    lst = b"".join(ok(await c.cmd("c", 'LIST "" "*"'), "c"))
    assert b'* LIST (\\HasChildren) "." Work\r\n' in lst
    assert b'* LIST (\\HasNoChildren) "." Work.Projects.2026\r\n' in lst
    assert b'* LIST (\\HasNoChildren \\Trash) "." Trash\r\n' in lst
    pct = ok(await c.cmd("d", 'LIST "" "%"'), "d")
    names = [line.rsplit(b" ", 1)[1].strip() for line in pct[:-1]]
    assert names == [b"INBOX", b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash", b"Work"]
    sub = ok(await c.cmd("e", 'LIST "Work." "%"'), "e")
    assert sub[0] == b'* LIST (\\HasChildren) "." Work.Projects\r\n'
    delim = ok(await c.cmd("f", 'LIST "" ""'), "f")
    assert delim[0] == b'* LIST (\\Noselect) "." ""\r\n'
    ok(await c.cmd("g", "SUBSCRIBE Archive"), "g")
    lsub = b"".join(ok(await c.cmd("h", 'LSUB "" "*"'), "h"))
    assert b'"." Archive' in lsub and b'"." Sent' in lsub and b'"." Work' not in lsub
    ext = b"".join(ok(await c.cmd("i", 'LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)'), "i"))
    assert b"\\Subscribed" in ext and b"Archive" in ext and b"Work" not in ext
    su = b"".join(ok(await c.cmd("j", 'LIST (SPECIAL-USE) "" "*"'), "j"))
    assert su.count(b"* LIST") == 4
    multi = ok(await c.cmd("k", 'LIST "" (INBOX Sent) RETURN (CHILDREN SUBSCRIBED)'), "k")
    assert len(multi) == 3 and b"\\Subscribed" in multi[1]
    ok(await c.cmd("l", "UNSUBSCRIBE Archive"), "l")
    assert (await c.cmd("m", "UNSUBSCRIBE Archive"))[-1].startswith(b"m NO")
    bad = await c.cmd("n", 'LIST (BOGUS) "" "*"')
    assert bad[-1].startswith(b"n BAD")
    ok(await c.cmd("o", "SUBSCRIBE Work.Projects"), "o")
    rec = b"".join(ok(await c.cmd("p", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"'), "p"))
    assert b'"." Work ("CHILDINFO" ("SUBSCRIBED"))\r\n' in rec
    imap.deliver(message("status me"), folder="Archive")
    st = ok(await c.cmd("q", 'LIST "" "A%" RETURN (STATUS (MESSAGES UNSEEN))'), "q")
    assert st[0] == b'* LIST (\\HasNoChildren) "." Archive\r\n'
    assert st[1] == b"* STATUS Archive (MESSAGES 1 UNSEEN 1)\r\n"


async def test_create_delete_rename_and_utf7(imap):
    c = await login(imap)
    ok(await c.cmd("a", 'CREATE "Entw&APw-rfe"'), "a")
    assert (imap.inbox.root / ".Entw&APw-rfe" / "cur").is_dir()
    assert (await c.cmd("b", 'CREATE "Entw&APw-rfe"'))[-1].startswith(b"b NO [ALREADYEXISTS]")
    ok(await c.cmd("c", 'RENAME "Entw&APw-rfe" "Archiv"'), "c")
    assert (imap.inbox.root / ".Archiv").is_dir()
    ok(await c.cmd("d", "CREATE Archiv.2025"), "d")
    ok(await c.cmd("e", "RENAME Archiv Old"), "e")
    assert (imap.inbox.root / ".Old.2025" / "cur").is_dir()
    assert (await c.cmd("f", "DELETE Old"))[-1].startswith(b"f NO")  # has children
    ok(await c.cmd("g", "DELETE Old.2025"), "g")
    ok(await c.cmd("h", "DELETE Old"), "h")
    assert not (imap.inbox.root / ".Old").exists()
    assert (await c.cmd("i", "DELETE INBOX"))[-1].startswith(b"i NO")
    assert (await c.cmd("j", "DELETE Nothing"))[-1].startswith(b"j NO [NONEXISTENT]")
    # RENAME INBOX moves its messages into a new folder, INBOX stays
    imap.deliver(message("in inbox"))
    ok(await c.cmd("k", "RENAME INBOX Saved"), "k")
    st = ok(await c.cmd("l", "STATUS Saved (MESSAGES)"), "l")
    assert st[0] == b"* STATUS Saved (MESSAGES 1)\r\n"
    st = ok(await c.cmd("m", "STATUS INBOX (MESSAGES)"), "m")
    assert st[0] == b"* STATUS INBOX (MESSAGES 0)\r\n"
    ok(await c.cmd("n", "CREATE Trailing."), "n")
    assert (imap.inbox.root / ".Trailing").is_dir()


async def test_select_examine_status(imap):
    imap.deliver(message("a"))
    imap.deliver(message("b"), flags="S")
    c = await login(imap)
    st = ok(await c.cmd("a", "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"), "a")
    assert re.match(rb"\* STATUS INBOX \(MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY \d+ UNSEEN 1\)",
                    st[0]), st
    ex = b"".join(ok(await c.cmd("b", "EXAMINE INBOX"), "b"))
    assert b"b OK [READ-ONLY]" in ex and b"* 2 EXISTS" in ex
    assert b"[PERMANENTFLAGS ()]" in ex
    # EXAMINE does not claim \Recent: SELECT still sees it
    sel = b"".join(ok(await c.cmd("c", "SELECT INBOX"), "c"))
    assert b"* 2 RECENT" in sel and b"[UNSEEN 1]" in sel and b"[READ-WRITE]" in sel
    assert b"* OK [CLOSED]" in sel
    assert b"\\*)] " in sel
    c2 = await login(imap)
    sel2 = b"".join(ok(await c2.cmd("d", "SELECT INBOX"), "d"))
    assert b"* 0 RECENT" in sel2  # the first session took \Recent
    assert (await c.cmd("e", "SELECT Nope"))[-1].startswith(b"e NO")
    assert (await c.cmd("f", "FETCH 1 FLAGS"))[-1].startswith(b"f BAD")  # now unselected


async def test_fetch_items(imap):
    imap.deliver(message("fetch me", body="line one\nline two\n"))
    c = await login(imap)
    ok(await c.cmd("a", "EXAMINE INBOX"), "a")
    r = ok(await c.cmd("b", "FETCH 1 (FLAGS UID RFC822.SIZE INTERNALDATE)"), "b")
    assert re.match(rb'\* 1 FETCH \(FLAGS \(\\Recent\) UID 1 RFC822.SIZE (\d+) '
                    rb'INTERNALDATE "[ \d]\d-\w{3}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"\)', r[0]), r
    size = int(re.search(rb"RFC822.SIZE (\d+)", r[0]).group(1))
    full = ok(await c.cmd("c", "FETCH 1 RFC822"), "c")
    assert b"RFC822 {%d}" % size in full[0]
    assert b"\r\nline one\r\nline two\r\n" in full[0]
    parts = ok(await c.cmd("d", "FETCH 1 (RFC822.HEADER RFC822.TEXT BODY[TEXT]<5.3> "
                                "BODY.PEEK[HEADER.FIELDS.NOT (Date Message-ID To From)])"), "d")
    assert b"RFC822.TEXT {20}\r\nline one\r\nline two\r\n" in parts[0]
    assert b"BODY[TEXT]<5> {3}\r\none" in parts[0]
    assert b"BODY[HEADER.FIELDS.NOT (Date Message-ID To From)] {21}\r\nSubject: fetch me\r\n\r\n"\
        in parts[0]
    macros = ok(await c.cmd("e", "FETCH 1 ALL"), "e")
    assert b"ENVELOPE (" in macros[0] and b"RFC822.SIZE" in macros[0]
    full_m = ok(await c.cmd("f", "FETCH 1 FULL"), "f")
    assert b"BODY (" in full_m[0]
    assert b"\\Seen" not in b"".join(full + parts)  # EXAMINE: read-only, no implicit \Seen
    bad = await c.cmd("g", "FETCH 1 (BODY[HEADER.FIELDS ()])")
    assert bad[-1].startswith(b"g BAD")
    bad = await c.cmd("h", "FETCH 1 NOTHING")
    assert bad[-1].startswith(b"h BAD")


async def test_implicit_seen_and_store(imap):
    imap.deliver(message("one"))
    imap.deliver(message("two"))
    c = await login(imap)
    ok(await c.cmd("a", "SELECT INBOX"), "a")
    r = ok(await c.cmd("b", "FETCH 1 BODY[]"), "b")
    assert b"FLAGS (\\Seen \\Recent)" in r[0]
    r = ok(await c.cmd("c", "STORE 1:2 +FLAGS (\\Flagged $Label1)"), "c")
    # a new keyword: FLAGS and PERMANENTFLAGS name it before any FETCH uses it
    assert r[0].startswith(b"* FLAGS (") and b"$Label1" in r[0]
    assert r[1].startswith(b"* OK [PERMANENTFLAGS (") and b"$Label1" in r[1]
    assert r[2] == b"* 1 FETCH (FLAGS (\\Flagged \\Seen $Label1 \\Recent))\r\n"
    r = ok(await c.cmd("d", "STORE 1 -FLAGS.SILENT (\\Seen)"), "d")
    assert len(r) == 1
    r = ok(await c.cmd("e", "UID STORE 2 FLAGS (\\Answered)"), "e")
    assert r[0] == b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent))\r\n"
    # in delivery order: names sort by their numbers, not as text (M987654 before M15225)
    names = sorted((p.name for p in (imap.inbox.root / "cur").iterdir()), key=delivery_order)
    assert names[0].endswith(":2,Fa") and names[1].endswith(":2,R"), names
    assert "0 $Label1" in (imap.inbox.root / "dovecot-keywords").read_text()
    sel = b"".join(ok(await c.cmd("f", "SELECT INBOX"), "f"))
    assert b"$Label1" in sel
    assert (await c.cmd("g", "STORE 1 FLAGS (\\Recent)"))[-1].startswith(b"g OK")
    assert (await c.cmd("h", "STORE 5 +FLAGS (\\Seen)"))[-1].startswith(b"h BAD")
    assert (await c.cmd("i", "UID STORE 5 +FLAGS (\\Seen)"))[-1].startswith(b"i OK")


async def test_append_variants(imap):
    c = await login(imap)
    msg = message("appended").replace(b"\n", b"\r\n")
    await c.send(b'a APPEND Drafts (\\Draft $Todo) "05-Jan-2025 10:20:30 +0100" {%d}\r\n'
                 % len(msg))
    assert (await c.line()).startswith(b"+")
    await c.send(msg + b"\r\n")
    r = ok(await c.until("a"), "a")
    assert re.match(rb"a OK \[APPENDUID (\d+) 1\]", r[-1])
    ok(await c.cmd("b", "SELECT Drafts"), "b")
    f = ok(await c.cmd("c", "FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)"), "c")
    assert b"\\Draft" in f[0] and b"$Todo" in f[0]
    assert b'INTERNALDATE "' in f[0] and b"%d" % len(msg) in f[0]
    r = await c.cmd("d", b"APPEND Nowhere {3+}\r\nabc")
    assert r[-1].startswith(b"d NO [TRYCREATE]")
    # an APPEND to the selected mailbox is announced
    r = ok(await c.cmd("e", b"APPEND Drafts {%d+}\r\n" % len(msg) + msg), "e")
    assert b"* 2 EXISTS\r\n" in r


async def test_copy_move_expunge_close_unselect(imap):
    for i in range(5):
        imap.deliver(message(f"m{i}"))
    c = await login(imap)
    ok(await c.cmd("a", "SELECT INBOX"), "a")
    r = ok(await c.cmd("b", "COPY 1:2 Trash"), "b")
    assert re.match(rb"b OK \[COPYUID \d+ 1:2 1:2\]", r[-1]), r
    r = ok(await c.cmd("c", "UID COPY 4:* Junk"), "c")
    assert re.search(rb"\[COPYUID \d+ 4:5 1:2\]", r[-1]), r
    r = ok(await c.cmd("d", "MOVE 1 Sent"), "d")
    assert re.match(rb"\* OK \[COPYUID \d+ 1 1\]", r[0]) and b"* 1 EXPUNGE\r\n" in r
    ok(await c.cmd("e", "STORE 1:2 +FLAGS.SILENT (\\Deleted)"), "e")
    r = ok(await c.cmd("f", "UID EXPUNGE 2"), "f")  # only UID 2 (sequence 1)
    assert r[0] == b"* 1 EXPUNGE\r\n" and len(r) == 2
    r = ok(await c.cmd("g", "EXPUNGE"), "g")
    assert r[0] == b"* 1 EXPUNGE\r\n"
    st = ok(await c.cmd("h", "STATUS INBOX (MESSAGES)"), "h")
    assert st[0] == b"* STATUS INBOX (MESSAGES 2)\r\n"
    ok(await c.cmd("i", "STORE 1 +FLAGS (\\Deleted)"), "i")
    r = ok(await c.cmd("j", "UNSELECT"), "j")
    ok(await c.cmd("k", "SELECT INBOX"), "k")
    r = ok(await c.cmd("l", "CLOSE"), "l")
    assert b"EXPUNGE" not in b"".join(r)
    st = ok(await c.cmd("m", "STATUS INBOX (MESSAGES)"), "m")
    assert st[0] == b"* STATUS INBOX (MESSAGES 1)\r\n"
    assert (await c.cmd("n", "COPY 1 Nowhere"))[-1].startswith(b"n BAD")  # not selected
    ok(await c.cmd("o", "EXAMINE INBOX"), "o")
    assert (await c.cmd("p", "COPY 1 Nowhere"))[-1].startswith(b"p NO [TRYCREATE]")
    assert (await c.cmd("q", "EXPUNGE"))[-1].startswith(b"q NO [READ-ONLY]")


async def test_uids_never_reused(imap):
    imap.deliver(message("x"))
    imap.deliver(message("y"))
    c = await login(imap)
    ok(await c.cmd("a", "SELECT INBOX"), "a")
    ok(await c.cmd("b", "STORE 2 +FLAGS (\\Deleted)"), "b")
    ok(await c.cmd("c", "EXPUNGE"), "c")
    imap.deliver(message("z"))
    assert b"* 2 EXISTS\r\n" in ok(await c.cmd("n", "NOOP"), "n")
    r = ok(await c.cmd("d", "UID FETCH 1:* (UID)"), "d")
    assert [re.search(rb"UID (\d+)", x).group(1) for x in r[:-1] if b"FETCH" in x] == [b"1", b"3"]


async def test_condstore(imap):
    imap.deliver(message("c1"))
    imap.deliver(message("c2"))
    c = await login(imap)
    sel = b"".join(ok(await c.cmd("a", "SELECT INBOX (CONDSTORE)"), "a"))
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", sel).group(1))
    r = ok(await c.cmd("b", "STORE 1 +FLAGS (\\Flagged)"), "b")
    m1 = int(re.search(rb"MODSEQ \((\d+)\)", r[0]).group(1))
    assert m1 > hms
    r = ok(await c.cmd("c", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})"), "c")
    assert len(r) == 2 and r[0].startswith(b"* 1 FETCH")
    r = ok(await c.cmd("d", f"STORE 1,2 (UNCHANGEDSINCE {hms}) +FLAGS (\\Seen)"), "d")
    assert r[-1].startswith(b"d OK [MODIFIED 1]")
    r = ok(await c.cmd("e", f"SEARCH MODSEQ {m1}"), "e")
    assert r[0].startswith(b"* SEARCH 1 2 (MODSEQ ")
    st = ok(await c.cmd("f", "STATUS INBOX (HIGHESTMODSEQ)"), "f")
    assert int(re.search(rb"HIGHESTMODSEQ (\d+)", st[0]).group(1)) > m1


@pytest.mark.parametrize("enabler", ["FETCH 1 (MODSEQ)", "STATUS INBOX (HIGHESTMODSEQ)",
                                     "SEARCH MODSEQ 1", "STORE 5 (UNCHANGEDSINCE 1) +FLAGS (x)"])
async def test_condstore_enabling_command(imap, enabler: str):
    """RFC 7162 §3.1: the first CONDSTORE-enabling command with a mailbox selected gets
    ``* OK [HIGHESTMODSEQ n]`` (once); from then on FETCH responses of STORE (and of a FETCH
    that sets \\Seen) carry UID and MODSEQ."""
    for n in range(5):
        imap.deliver(message(f"m{n}"))
    c = await login(imap)
    sel = ok(await c.cmd("s", "SELECT INBOX"), "s")
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(sel)).group(1))
    r = ok(await c.cmd("a", "STORE 1 +FLAGS (\\Answered)"), "a")
    assert r[0] == b"* 1 FETCH (FLAGS (\\Answered \\Recent))\r\n", r  # not enabled yet
    r = await c.cmd("e", enabler)
    assert b"* OK [HIGHESTMODSEQ %d]" % (hms + 1) in r[0], r
    r = ok(await c.cmd("e2", "FETCH 1 (MODSEQ)"), "e2")
    assert not any(b"HIGHESTMODSEQ" in x for x in r), r  # once
    r = ok(await c.cmd("b", "STORE 2 +FLAGS (\\Flagged)"), "b")
    assert re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged \\Recent\) MODSEQ \(\d+\)\)\r\n",
                        r[0]), r
    r = ok(await c.cmd("f", "FETCH 3 (BODY[TEXT])"), "f")  # sets \Seen
    assert re.search(rb"UID 3\b", r[0]) and re.search(rb"MODSEQ \(\d+\)", r[0]), r


async def test_esearch_modseq_is_of_the_messages_returned(imap):
    """RFC 4731 §3.2: with MODSEQ in the search, MIN or MAX alone give the modseq of the
    message returned, ALL and COUNT the highest of every match."""
    for n in range(4):
        imap.deliver(message(f"e{n}"))
    c = await login(imap)
    ok(await c.cmd("s", "SELECT INBOX (CONDSTORE)"), "s")
    modseqs = {}
    for seq in (1, 3, 2, 4):
        r = ok(await c.cmd("t", f"STORE {seq} +FLAGS (\\Seen)"), "t")
        modseqs[seq] = int(re.search(rb"MODSEQ \((\d+)\)", r[0]).group(1))
    key = 'MODSEQ "/flags/\\\\seen" all 1'
    m = modseqs
    for ret, seqs, data, expect in [
            ("MIN", "1:3", "MIN 1", m[1]), ("MAX", "1:3", "MAX 3", m[3]),
            ("MIN MAX", "2:3", "MIN 2 MAX 3", max(m[2], m[3])),
            ("ALL", "1:3", "ALL 1:3", max(m[1], m[2], m[3])),
            ("COUNT", "1,3", "COUNT 2", max(m[1], m[3])),
            ("PARTIAL 1:1", "1:3", "PARTIAL (1:1 1)", m[1])]:
        r = ok(await c.cmd("x", f"SEARCH RETURN ({ret}) {seqs} {key}"), "x")
        assert r[0] == f'* ESEARCH (TAG "x") {data} MODSEQ {expect}\r\n'.encode(), (ret, r)
    r = ok(await c.cmd("y", f"SEARCH {key}"), "y")  # plain SEARCH: the highest of all
    assert r[0] == f"* SEARCH 1 2 3 4 (MODSEQ {max(m.values())})\r\n".encode(), r


async def test_pipelined_commands(imap):
    imap.deliver(message("p"))
    c = await Raw.connect(imap)
    await c.send(f"1 LOGIN {USER} {PASSWORD}\r\n2 SELECT INBOX\r\n3 FETCH 1 (UID)\r\n"
                 "4 NOOP\r\n")
    lines = await c.until("4")
    tagged = [x.split(b" ")[0] for x in lines if not x.startswith(b"*")]
    assert tagged == [b"1", b"2", b"3", b"4"]
    assert all(b" OK " in x for x in lines if not x.startswith(b"*"))


async def test_imaplib_over_tls(imap):
    imap.deliver(message("tls"))

    def go() -> None:
        c = imap.tls_client()
        typ, data = c.select("INBOX")
        assert typ == "OK" and data == [b"1"]
        typ, data = c.uid("FETCH", "1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: tls\r\n\r\n"
        c.logout()
    await asyncio.to_thread(go)


async def _logindisabled_then_starttls(ip: str, port: int, cmd: str, client_ssl) -> None:
    r, w = await asyncio.open_connection(ip, port)
    c = Raw(r, w)
    greeting = await c.line()
    assert b"LOGINDISABLED" in greeting and b"AUTH=PLAIN" not in greeting, greeting
    out = await c.cmd("a", cmd)
    assert out[-1].startswith(b"a NO [PRIVACYREQUIRED]"), out
    ok(await c.cmd("b", "STARTTLS"), "b")
    await w.start_tls(client_ssl, server_hostname="localhost")
    caps = ok(await c.cmd("c", "CAPABILITY"), "c")
    assert b"AUTH=PLAIN" in caps[0] and b"LOGINDISABLED" not in caps[0]
    ok(await c.cmd("d", f"LOGIN {USER} {PASSWORD}"), "d")
    await c.close()


@pytest.mark.parametrize("cmd", ["LOGIN a b", "AUTHENTICATE PLAIN"])
async def test_logindisabled_off_the_plaintext_networks(config_factory, client_ssl, daemon_loop,
                                                         cmd):
    """A listener address outside [server] plaintext_login_networks (here 127.0.0.2, so the
    test needs no network interface) refuses plaintext login before STARTTLS; 127.0.0.1, inside
    them, allows it; the TLS port allows it everywhere."""
    from tests.conftest import NON_LOOPBACK, NON_LOOPBACK_EXTRA, add_user, running

    cfg = config_factory(NON_LOOPBACK_EXTRA + daemon_loop)
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg):
        await _logindisabled_then_starttls(NON_LOOPBACK, cfg.port("imap", "imap"), cmd,
                                           client_ssl)
        c = Raw(*await asyncio.open_connection("127.0.0.1", cfg.port("imap", "imap")))
        greeting = await c.line()
        assert b"AUTH=PLAIN" in greeting and b"LOGINDISABLED" not in greeting, greeting
        ok(await c.cmd("a", f"LOGIN {USER} {PASSWORD}"), "a")
        await c.close()
        r, w = await asyncio.open_connection(NON_LOOPBACK, cfg.port("imap", "imaps"),
                                             ssl=client_ssl, server_hostname="localhost")
        c = Raw(r, w)
        assert b"AUTH=PLAIN" in await c.line()
        ok(await c.cmd("a", f"LOGIN {USER} {PASSWORD}"), "a")
        await c.close()


@pytest.mark.parametrize("cmd", ["LOGIN a b", "AUTHENTICATE PLAIN"])
async def test_logindisabled_on_a_real_interface(config_factory, client_ssl, cmd):
    """With the default plaintext_login_networks, a real (non-loopback) interface address
    refuses plaintext login before STARTTLS."""
    import socket

    from tests.conftest import add_user, running
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
    except OSError:
        ip = "127.0.0.1"
    if ip.startswith("127."):
        pytest.skip("no non-loopback address (test_logindisabled_off_the_plaintext_networks "
                    "covers this on 127.0.0.2)")
    cfg = config_factory(f'[server]\nbind = ["{ip}"]\n')
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg):
        await _logindisabled_then_starttls(ip, cfg.port("imap", "imap"), cmd, client_ssl)


async def test_shutdown_says_bye(cfg, client_ssl):
    from tests.conftest import add_user, running
    from tests.imap.conftest import Server
    add_user(cfg, USER, PASSWORD)
    async with running("imap", cfg) as daemon:
        srv = Server(cfg, cfg.port("imap", "imap"), cfg.port("imap", "imaps"), client_ssl)
        c = await login(srv)
        ok(await c.cmd("a", "SELECT INBOX"), "a")
        await c.send("b IDLE\r\n")
        assert (await c.line()).startswith(b"+")
    assert (await c.line()) == b"* BYE server shutting down\r\n"
    assert await c.line() == b""
    port = cfg.port("imap", "imap")
    assert f"INFO: listening on 127.0.0.1:{port} (imap, STARTTLS)\n" in daemon.log()
    assert daemon.exit_code == 0
