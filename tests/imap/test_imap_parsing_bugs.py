"""Parsing bugs found by third-party checkers, each over a real socket: a parameter folded
inside its quotes, source routes and comments in addresses, RECURSIVEMATCH with a subscribed
child that matches the pattern itself."""

from __future__ import annotations

import imaplib

import pytest

from tests.imap.conftest import PASSWORD, USER, Raw

FOLDED = (b"From: a@example.test\r\nSubject: folded\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=\"foo\r\n bar\"\r\n\r\n"
          b"preamble\r\n--foo bar\r\nContent-Type: text/plain; charset=\"us-\r\n ascii\"\r\n\r\n"
          b"first part zebra\r\n--foo bar\r\nContent-Type: text/html\r\n\r\n<p>second</p>\r\n"
          b"--foo bar--\r\n")
ROUTE = (b"From: <@route:user@domain>\r\nTo: <user-from (comment)@ (comment) domain.org>\r\n"
         b"Cc: Real Name (a comment) <real@x.test>\r\nSubject: routes\r\n\r\nbody\r\n")


@pytest.fixture
async def client(imap):
    imap.deliver(FOLDED)
    imap.deliver(ROUTE)
    c = await Raw.connect(imap)
    await c.cmd("L", f"LOGIN {USER} {PASSWORD}")
    await c.cmd("S", "SELECT INBOX")
    yield c
    await c.close()


async def test_parameter_folded_inside_quotes(client) -> None:
    r = await client.cmd("f", "FETCH 1 (BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[2.MIME])")
    assert r[-1].startswith(b"f OK"), r
    text = b"".join(r)
    assert b'"MIXED" ("BOUNDARY" "foo bar")' in text
    assert b'("TEXT" "PLAIN" ("CHARSET" "us- ascii")' in text  # unfolded, WSP kept
    assert b"first part zebra" in text and b"Content-Type: text/html" in text
    # the search index and SEARCH read the same parts
    r = await client.cmd("s", "SEARCH BODY zebra")
    assert r[0] == b"* SEARCH 1\r\n"
    r = await client.cmd("t", "SEARCH HEADER Content-Type foo")  # header text is unfolded
    assert r[0] == b"* SEARCH 1\r\n"


async def test_envelope_keeps_source_route_and_drops_comments(client) -> None:
    r = await client.cmd("e", "FETCH 2 (ENVELOPE)")
    env = r[0]
    assert b'((NIL "@route" "user" "domain"))' in env  # from
    assert b'((NIL NIL "user-from" "domain.org"))' in env  # to: no name made of comments
    assert b'(("Real Name" NIL "real" "x.test"))' in env  # cc: the comment is not the name


async def test_search_from_address_with_comments(client) -> None:
    for query, hit in (("TO user-from@domain.org", b"2"), ("FROM user@domain", b"2"),
                       ("TO comment", b"2"), ("CC real@x.test", b"2"),
                       ("CC \"Real Name real@x\"", b"2"), ("FROM nobody@domain", b"")):
        r = await client.cmd("s", f"SEARCH {query}")
        assert r[0] == b"* SEARCH" + (b" " + hit if hit else b"") + b"\r\n", (query, r)


def test_list_recursivematch_child_matching_the_pattern(imap) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port, timeout=10)
    c.login(USER, PASSWORD)
    for name in ("x", "x.test2", "x.test2.test1", "y", "y.child"):
        assert c.create(name)[0] == "OK"
    c.subscribe("x.test2.test1")
    c.subscribe("y.child")
    typ, _ = c._simple_command("LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""',
                                  "(x.test2 x.test2.test1)")
    assert typ == "OK"
    lines = c.untagged_responses.pop("LIST", [])
    assert lines == [b'(\\HasNoChildren \\Subscribed) "." x.test2.test1'], lines
    # a parent whose subscribed child is not listed still gets CHILDINFO
    typ, _ = c._simple_command("LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', "%")
    lines = c.untagged_responses.pop("LIST", [])
    assert b'(\\HasChildren) "." y ("CHILDINFO" ("SUBSCRIBED"))' in lines, lines
    assert b'(\\HasChildren) "." x ("CHILDINFO" ("SUBSCRIBED"))' in lines, lines
    c.logout()
