"""ENVELOPE, BODYSTRUCTURE and BODY[section] on a corpus of tricky messages, checked against
the RFC 3501 grammar with a small independent parser of IMAP data items."""

from __future__ import annotations

import re

from tests.imap.conftest import PASSWORD, USER, Raw

ALT_WITH_ATTACHMENT = b"""From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.test>
To: alice@example.test, "Bob, Jr." <bob@example.test>
Cc: undisclosed-recipients:;
Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= and an attachment
Date: Mon, 2 Nov 2026 08:00:00 +0100
Message-ID: <alt@example.test>
In-Reply-To: <prev@example.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is the preamble.
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Hello w=C3=B6rld
--inner
Content-Type: text/html; charset=utf-8

<p>Hello</p>
--inner--
--outer
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename*=UTF-8''r%C3%A9port.pdf
Content-Transfer-Encoding: base64
Content-ID: <pdf1@example.test>
Content-Language: en, de

JVBERi0xLjQKJcfsj6IKNSAwIG9iago=
--outer--
epilogue
"""

NESTED = b"""From: forwarder@example.test
To: alice@example.test
Subject: Fwd: inner
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b1

--b1
Content-Type: text/plain

See below.
--b1
Content-Type: message/rfc822
Content-Description: forwarded

From: Inner Sender <inner@example.test>
Subject: inner
Content-Type: multipart/alternative; boundary=b2

--b2
Content-Type: text/plain

inner text
--b2
Content-Type: text/html

<b>inner</b>
--b2--
--b1--
"""

MISSING_HEADERS = b"""X-Nothing: here

just a body, no From, no Date, no Content-Type
"""

EIGHT_BIT = "From: a@example.test\nSubject: caf\u00e9 8bit\nContent-Type: text/plain; " \
    "charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGr\u00fc\u00dfe aus K\u00f6ln\n".encode()

CORPUS = [ALT_WITH_ATTACHMENT, NESTED, MISSING_HEADERS, EIGHT_BIT]


# -- an independent reader of IMAP data items --------------------------------------------------
def parse_items(data: bytes) -> list:
    pos = 0

    def value():
        nonlocal pos
        c = data[pos:pos + 1]
        if c == b"(":
            pos += 1
            out = []
            while data[pos:pos + 1] != b")":
                out.append(value())
                if data[pos:pos + 1] == b" ":
                    pos += 1
            pos += 1
            return out
        if c == b'"':
            m = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"').match(data, pos)
            assert m, data[pos:pos + 40]
            pos = m.end()
            return re.sub(rb"\\(.)", rb"\1", m.group(1))
        if c == b"{":
            m = re.compile(rb"\{(\d+)\}\r\n").match(data, pos)
            assert m
            pos = m.end() + int(m.group(1))
            return data[m.end():pos]
        m = re.compile(rb"[^ ()\[\]\r\n]+(\[[^\]]*\](<\d+>)?)?").match(data, pos)
        assert m, data[pos:pos + 40]
        pos = m.end()
        tok = m.group(0)
        if tok == b"NIL":
            return None
        if tok.isdigit():
            return int(tok)
        return tok.decode()
    v = value()
    assert pos == len(data), data[pos:]
    return v


def nstring(v) -> bool:
    return v is None or isinstance(v, bytes)


def check_address_list(v) -> None:
    assert v is None or (isinstance(v, list) and v)
    for addr in v or []:
        assert isinstance(addr, list) and len(addr) == 4 and all(nstring(x) for x in addr), addr


def check_envelope(env) -> None:
    assert isinstance(env, list) and len(env) == 10, env
    assert nstring(env[0]) and nstring(env[1]) and nstring(env[8]) and nstring(env[9])
    for v in env[2:8]:
        check_address_list(v)


def check_params(v) -> None:
    assert v is None or (isinstance(v, list) and len(v) % 2 == 0 and v
                         and all(isinstance(x, bytes) for x in v)), v


def check_body(b, extended: bool) -> None:
    """body = "(" (body-type-1part / body-type-mpart) ")" (RFC 3501 section 9)."""
    assert isinstance(b, list) and b
    if isinstance(b[0], list):  # multipart
        i = 0
        while i < len(b) and isinstance(b[i], list):
            check_body(b[i], extended)
            i += 1
        assert isinstance(b[i], bytes)  # media-subtype
        ext = b[i + 1:]
        if extended:
            assert len(ext) == 4, ext
            check_params(ext[0])
            assert ext[1] is None or (len(ext[1]) == 2 and isinstance(ext[1][0], bytes))
        else:
            assert not ext
        return
    assert isinstance(b[0], bytes) and isinstance(b[1], bytes)
    check_params(b[2])
    assert nstring(b[3]) and nstring(b[4]) and isinstance(b[5], bytes) and isinstance(b[6], int)
    rest = b[7:]
    if b[0].upper() == b"MESSAGE" and b[1].upper() == b"RFC822":
        check_envelope(rest[0])
        check_body(rest[1], extended)
        assert isinstance(rest[2], int)
        rest = rest[3:]
    elif b[0].upper() == b"TEXT":
        assert isinstance(rest[0], int)
        rest = rest[1:]
    if extended:
        assert len(rest) == 4, rest
        assert nstring(rest[0])
        assert rest[1] is None or (len(rest[1]) == 2 and isinstance(rest[1][0], bytes))
    else:
        assert not rest


def fetch_items(line: bytes) -> dict:
    m = re.match(rb"\* \d+ FETCH ", line)
    assert m, line
    items = parse_items(line[m.end():].rstrip(b"\r\n"))
    return {items[i]: items[i + 1] for i in range(0, len(items), 2)}


async def test_corpus_against_the_grammar(imap):
    for data in CORPUS:
        imap.deliver(data)
    c = await Raw.connect(imap)
    await c.cmd("L", f"LOGIN {USER} {PASSWORD}")
    await c.cmd("S", "EXAMINE INBOX")
    r = await c.cmd("f", "FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE BODY.PEEK[])")
    assert r[-1].startswith(b"f OK"), r
    for line, data in zip(r[:-1], CORPUS, strict=True):
        items = fetch_items(line)
        check_envelope(items["ENVELOPE"])
        check_body(items["BODYSTRUCTURE"], True)
        check_body(items["BODY"], False)
        wire = data.replace(b"\n", b"\r\n")
        assert items["BODY[]"] == wire and items["RFC822.SIZE"] == len(wire)
    alt, nested, missing, eight = (fetch_items(x) for x in r[:-1])
    env = alt["ENVELOPE"]
    assert env[1] == b"=?ISO-8859-1?Q?Gr=FC=DFe?= and an attachment"  # raw, not decoded
    assert env[2] == [[b"=?UTF-8?B?SsO8cmdlbg==?=", None, b"j", b"example.test"]]
    assert env[5] == [[None, None, b"alice", b"example.test"],
                      [b"Bob, Jr.", None, b"bob", b"example.test"]]
    assert env[6] == [[None, None, b"undisclosed-recipients", None], [None, None, None, None]]
    assert env[8] == b"<prev@example.test>" and env[9] == b"<alt@example.test>"
    bs = alt["BODYSTRUCTURE"]
    assert bs[-5] == b"MIXED" and bs[-4] == [b"BOUNDARY", b"outer"]
    alternative, pdf = bs[0], bs[1]
    assert alternative[0][:2] == [b"TEXT", b"PLAIN"] and alternative[0][5] == b"QUOTED-PRINTABLE"
    assert alternative[1][:2] == [b"TEXT", b"HTML"]
    assert pdf[:2] == [b"APPLICATION", b"PDF"] and pdf[3] == b"<pdf1@example.test>"
    assert pdf[8][0] == b"ATTACHMENT" and pdf[8][1] == [b"FILENAME", "réport.pdf".encode()]
    assert pdf[9] == [b"en", b"de"]
    nbs = nested["BODYSTRUCTURE"]
    msg = nbs[1]
    assert msg[:2] == [b"MESSAGE", b"RFC822"] and msg[4] == b"forwarded"
    assert msg[7][1] == b"inner" and msg[8][-5] == b"ALTERNATIVE"
    menv = missing["ENVELOPE"]
    assert menv[:3] == [None, None, None]
    assert missing["BODYSTRUCTURE"][:3] == [b"TEXT", b"PLAIN", [b"CHARSET", b"us-ascii"]]
    assert eight["BODYSTRUCTURE"][5] == b"8BIT"
    assert eight["ENVELOPE"][1] == "café 8bit".encode()


async def test_sections_of_nested_parts(imap):
    imap.deliver(ALT_WITH_ATTACHMENT)
    imap.deliver(NESTED)
    c = await Raw.connect(imap)
    await c.cmd("L", f"LOGIN {USER} {PASSWORD}")
    await c.cmd("S", "EXAMINE INBOX")
    r = await c.cmd("a", "FETCH 1 (BODY[1.1] BODY[1.2.MIME] BODY[2] BODY[2.MIME] BODY[1] "
                         "BODY[3] BODY[TEXT]<0.20>)")
    items = fetch_items(r[0])
    assert items["BODY[1.1]"] == b"Hello w=C3=B6rld"
    assert items["BODY[1.2.MIME]"] == b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    assert items["BODY[2]"] == b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago="
    assert items["BODY[2.MIME]"].startswith(b"Content-Type: application/pdf;")
    assert items["BODY[1]"].startswith(b"--inner\r\n") and items["BODY[1]"].endswith(b"--inner--")
    assert items["BODY[3]"] == b""
    assert items["BODY[TEXT]<0>"] == b"This is the preamble"
    r = await c.cmd("b", "FETCH 2 (BODY[2] BODY[2.HEADER] BODY[2.TEXT] BODY[2.1] BODY[2.2.MIME] "
                         "BODY[2.HEADER.FIELDS (SUBJECT)] BODY[1])")
    items = fetch_items(r[0])
    assert items["BODY[2]"].startswith(b"From: Inner Sender")
    assert items["BODY[2.HEADER]"].endswith(b"boundary=b2\r\n\r\n")
    assert items["BODY[2.TEXT]"].startswith(b"--b2\r\n")
    assert items["BODY[2.1]"] == b"inner text"
    assert items["BODY[2.2.MIME]"] == b"Content-Type: text/html\r\n\r\n"
    assert items["BODY[2.HEADER.FIELDS (SUBJECT)]"] == b"Subject: inner\r\n\r\n"
    assert items["BODY[1]"] == b"See below."


async def test_metadata_cache_is_rebuildable(imap):
    """ENVELOPE/BODYSTRUCTURE/header answers are the same from the files, from the cache
    file, and after the cache file is damaged."""
    for data in CORPUS:
        imap.deliver(data)
    query = ("FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER] "
             "BODY.PEEK[HEADER.FIELDS (Subject From)] RFC822.HEADER)")

    async def answers() -> list[bytes]:
        c = await Raw.connect(imap)
        await c.cmd("L", f"LOGIN {USER} {PASSWORD}")
        await c.cmd("S", "EXAMINE INBOX")
        r = await c.cmd("f", query)
        assert r[-1].startswith(b"f OK")
        full = await c.cmd("g", "FETCH 1:* (BODY.PEEK[])")
        for line, whole in zip(r[:-1], full[:-1], strict=True):
            items = fetch_items(line)
            raw = fetch_items(whole)["BODY[]"]
            assert raw.startswith(items["BODY[HEADER]"]) and items["RFC822.HEADER"] == \
                items["BODY[HEADER]"]
        await c.close()
        return r

    from mailstack.imap.cache import CACHE_FILE, FolderCache
    first = await answers()
    cache_file = imap.inbox.root / CACHE_FILE
    assert cache_file.stat().st_size > 1000
    FolderCache._registry.clear()  # a new process: read back from the file
    assert await answers() == first
    cache_file.write_bytes(b"MSC1\n\x00\xff garbage")
    FolderCache._registry.clear()
    assert await answers() == first
