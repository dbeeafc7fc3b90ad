"""What RFC 8620/8621 require that a third-party conformance suite checks (over real HTTPS
with httpx): the rules of an Email create object (RFC 8621 4.6), header forms, errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.jmap.conftest import JMAP, message

TEXT = {"t": {"value": "some text"}}


async def _box(jmap: JMAP) -> str:
    got = await jmap.one("Mailbox/set", {"create": {"m": {"name": "conformance"}}})
    return got["created"]["m"]["id"]


async def _create(jmap: JMAP, obj: dict[str, Any]) -> dict[str, Any]:
    got = await jmap.one("Email/set", {"create": {"new": obj}})
    return (got["created"] or got["notCreated"])["new"]


@pytest.mark.parametrize(("obj", "properties"), [
    ({"headers": [{"name": "X-A", "value": "b"}]}, ["headers"]),
    ({"header:Content-Foo": "bar"}, ["header:Content-Foo"]),
    ({"subject": "a", "header:Subject": "b"}, ["header:Subject"]),
    ({"messageId": ["a@b"], "header:Message-ID": "<c@d>"}, ["header:Message-ID"]),
    ({"sentAt": "2026-11-27T10:00:00Z", "header:Date:asDate": "2026-11-27T10:00:00Z"},
     ["header:Date:asDate"]),
    ({"header:From:asDate": "2026-11-27T10:00:00Z"}, ["header:From:asDate"]),
    ({"header:Subject:asAddresses": [{"email": "a@b.test"}]}, ["header:Subject:asAddresses"]),
    ({"id": "Mabc", "size": 3}, ["id", "size"]),
    ({"bodyStructure": {"partId": "t", "type": "text/plain"},
      "textBody": [{"partId": "t", "type": "text/plain"}], "bodyValues": TEXT}, ["textBody"]),
    ({"textBody": [{"partId": "t"}, {"partId": "u"}],
      "bodyValues": {**TEXT, "u": {"value": "more"}}}, ["textBody"]),
    ({"textBody": [{"partId": "t", "type": "text/html"}], "bodyValues": TEXT}, ["textBody"]),
    ({"htmlBody": [{"partId": "t", "type": "text/plain"}], "bodyValues": TEXT}, ["htmlBody"]),
    ({"bodyStructure": {"partId": "missing", "type": "text/plain"}, "bodyValues": TEXT},
     ["bodyStructure/partId"]),
    ({"bodyStructure": {"partId": "t", "blobId": "Gx", "type": "text/plain"},
      "bodyValues": TEXT}, ["bodyStructure/partId", "bodyStructure/blobId"]),
    ({"bodyStructure": {"partId": "t", "type": "text/plain", "charset": "us-ascii"},
      "bodyValues": TEXT}, ["bodyStructure/charset"]),
    ({"textBody": [{"partId": "t", "type": "text/plain", "size": 9}], "bodyValues": TEXT},
     ["textBody/0/size"]),
    ({"bodyStructure": {"partId": "t", "type": "text/plain",
                        "header:Content-Transfer-Encoding": "7bit"}, "bodyValues": TEXT},
     ["bodyStructure/header:Content-Transfer-Encoding"]),
    ({"bodyStructure": {"partId": "t", "type": "text/plain",
                        "headers": [{"name": "X-A", "value": "b"}]}, "bodyValues": TEXT},
     ["bodyStructure/headers"]),
    ({"bodyStructure": {"partId": "t", "type": "text/plain", "header:Content-Type":
                        "text/html"}, "bodyValues": TEXT},
     ["bodyStructure/header:Content-Type"]),
    ({"header:X-Dup": "a", "bodyStructure": {"partId": "t", "type": "text/plain",
                                             "header:X-Dup": "b"}, "bodyValues": TEXT},
     ["bodyStructure/header:X-Dup"]),
    ({"bodyStructure": {"partId": "t", "type": "text/plain"},
      "bodyValues": {"t": {"value": "x", "isTruncated": True, "isEncodingProblem": True}}},
     ["bodyValues/t/isEncodingProblem", "bodyValues/t/isTruncated"]),
])
async def test_email_create_rules_of_rfc8621(jmap: JMAP, obj: dict[str, Any],
                                             properties: list[str]) -> None:
    """Each MUST (NOT) of RFC 8621 4.6 is an invalidProperties SetError naming the culprits."""
    box = await _box(jmap)
    err = await _create(jmap, {"mailboxIds": {box: True}, **obj})
    assert err["type"] == "invalidProperties", err
    assert sorted(err["properties"]) == sorted(properties)
    assert set(err) == {"type", "properties"}  # checkers compare SetErrors whole


async def test_email_create_that_follows_the_rules(jmap: JMAP) -> None:
    """Allowed: X-Content-*, false body-value flags, the headers of a body part."""
    box = await _box(jmap)
    made = await _create(jmap, {
        "mailboxIds": {box: True}, "header:X-Content-Note": "fine", "subject": "rules",
        "bodyStructure": {"partId": "t", "type": "text/plain", "header:X-Part": "on the part"},
        "bodyValues": {"t": {"value": "body", "isTruncated": False,
                             "isEncodingProblem": None}}})
    assert {"id", "blobId", "threadId", "size"} <= made.keys(), made
    got = await jmap.one("Email/get", {"ids": [made["id"]], "bodyProperties": ["headers"],
                                       "properties": ["header:X-Content-Note", "bodyStructure",
                                                      "subject"]})
    (e,) = got["list"]
    assert e["header:X-Content-Note"].strip() == "fine" and e["subject"] == "rules"
    assert {"name": "X-Part", "value": " on the part"} in e["bodyStructure"]["headers"]


async def test_body_part_charset_and_language(jmap: JMAP) -> None:
    """charset: the parameter, or the implicit us-ascii of a text part (RFC 8621 4.1.4);
    language: the Content-Language tags."""
    jmap.deliver(message("plain", extra="Content-Language: en, fr\n"))
    ids = (await jmap.one("Email/query", {}))["ids"]
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["bodyStructure"]})
    (part,) = [e["bodyStructure"] for e in got["list"]]
    assert part["charset"] == "us-ascii" and part["language"] == ["en", "fr"]


async def test_email_create_names_every_missing_blob(jmap: JMAP) -> None:
    box = await _box(jmap)
    err = await _create(jmap, {"mailboxIds": {box: True},
                               "textBody": [{"blobId": "cat"}],
                               "attachments": [{"blobId": "dog", "type": "image/png"}]})
    assert err["type"] == "blobNotFound"
    assert sorted(err["notFound"]) == ["cat", "dog"]


async def test_email_get_refuses_a_form_the_field_cannot_take(jmap: JMAP) -> None:
    (resp,) = await jmap.call([["Email/get", {"accountId": jmap.account(), "ids": [],
                                              "properties": ["header:From:asDate"]}, "0"]])
    assert resp[0] == "error" and resp[1]["type"] == "invalidArguments"
    got = await jmap.one("Email/get", {"ids": [], "properties": ["header:X-Any:asDate"]})
    assert got["list"] == []


async def test_mailbox_server_set_properties(jmap: JMAP) -> None:
    """Server-set Mailbox properties may be sent with their current values, never with
    others (RFC 8620 5.3): invalidProperties names each, myRights by right; nothing changes."""
    box = await _box(jmap)
    (full,) = (await jmap.one("Mailbox/get", {"ids": [box]}))["list"]
    same = {k: v for k, v in full.items() if k != "id"} | {"name": "same values"}
    got = await jmap.one("Mailbox/set", {"create": {"n": same}})
    assert "n" in got["created"], got
    wrong = same | {"name": "wrong values", "id": box, "totalEmails": 52,
                    "myRights": dict(full["myRights"], mayRename=False), "bogus": 1}
    got = await jmap.one("Mailbox/set", {"create": {"n": wrong}})
    err = got["notCreated"]["n"]
    assert err["type"] == "invalidProperties"
    assert sorted(err["properties"]) == ["bogus", "id", "myRights/mayRename", "totalEmails"]
    got = await jmap.one("Mailbox/set", {"update": {box: full | {"name": "renamed"}}})
    assert box in got["updated"], got
    got = await jmap.one("Mailbox/set", {"update": {box: {"name": "not this", "unreadEmails": 3,
                                                          "id": box + "x"}}})
    assert sorted(got["notUpdated"][box]["properties"]) == ["id", "unreadEmails"]
    (now,) = (await jmap.one("Mailbox/get", {"ids": [box], "properties": ["name"]}))["list"]
    assert now["name"] == "renamed"


async def test_mailbox_create_reports_a_value_the_server_changed(jmap: JMAP) -> None:
    """sortOrder is the server's (by role): a create asking for another gets it back."""
    got = await jmap.one("Mailbox/set", {"create": {"m": {"name": "ordered", "sortOrder": 55}}})
    assert got["created"]["m"]["sortOrder"] == 100


async def test_header_forms_of_rfc8621(jmap: JMAP) -> None:
    """asRaw keeps the folding with the message's CRLF, asText is NFC, quoted-pairs are undone
    in names, asURLs reads the <URL> items (null when there are none)."""
    jmap.deliver(b"From: \"Foo \\\\S\" <foo@example.test>\r\nSubject: folded\r\n"
                 b"X-Fold: " + b"a" * 50 + b"\r\n " + b"b" * 50 + b"\r\n"
                 b"X-Nfc: =?UTF-8?B?4oSr?=\r\n"
                 b"List-Help: <http://example.test/a>,\r\n <mailto:help@example.test>\r\n"
                 b"X-Url: not a url\r\nX-Spaced:   three\r\nX-Bare:none\r\n\r\nbody\r\n")
    ids = (await jmap.one("Email/query", {}))["ids"]
    (e,) = (await jmap.one("Email/get", {"ids": ids, "properties": [
        "from", "header:X-Fold", "header:X-Fold:asText", "header:X-Nfc:asText",
        "header:List-Help:asURLs", "header:X-Url:asURLs", "header:X-Spaced",
        "header:X-Bare"]}))["list"]
    assert (e["header:X-Spaced"], e["header:X-Bare"]) == ("   three", "none")  # every octet
    assert e["from"] == [{"name": "Foo S", "email": "foo@example.test"}]
    assert e["header:X-Fold"] == " " + "a" * 50 + "\r\n " + "b" * 50
    assert e["header:X-Fold:asText"] == "a" * 50 + " " + "b" * 50
    assert e["header:X-Nfc:asText"] == "\u00c5"  # ANGSTROM SIGN, NFC
    assert e["header:List-Help:asURLs"] == ["http://example.test/a", "mailto:help@example.test"]
    assert e["header:X-Url:asURLs"] is None


async def test_body_properties_empty_and_header_forms(jmap: JMAP) -> None:
    """bodyProperties [] gives empty parts; header:Name forms are body properties too."""
    jmap.deliver(message("parts", extra="Content-Type: text/plain; charset=utf-8\n"))
    ids = (await jmap.one("Email/query", {}))["ids"]
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["textBody"],
                                       "bodyProperties": []})
    assert got["list"][0]["textBody"] == [{}]
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["textBody"], "bodyProperties": [
        "type", "header:Content-Type", "header:Subject:asText", "header:X-None:all"]})
    assert got["list"][0]["textBody"] == [{
        "type": "text/plain", "header:Content-Type": " text/plain; charset=utf-8",
        "header:Subject:asText": "parts", "header:X-None:all": []}]
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["textBody"],
                                       "bodyProperties": ["subParts"]})
    assert got["list"][0]["textBody"] == [{"subParts": None}]


async def _upload(jmap: JMAP, data: bytes) -> str:
    async with jmap.client() as c:
        r = await c.post(f"/jmap/upload/{jmap.account()}/", content=data,
                         headers={"content-type": "message/rfc822"})
    return r.json()["blobId"]


@pytest.mark.parametrize(("obj", "properties"), [
    ({}, ["blobId", "mailboxIds"]),
    ({"blobId": ["x"]}, ["blobId"]),
    ({"blobId": "Gnothere"}, ["blobId"]),
    ({"mailboxIds": ["x"]}, ["mailboxIds"]),
    ({"mailboxIds": {"Bnope": True}}, ["mailboxIds"]),
    ({"keywords": ["$seen"]}, ["keywords"]),
    ({"keywords": "$seen"}, ["keywords"]),
    ({"keywords": {"$seen": False}}, ["keywords"]),
    ({"receivedAt": "yesterday"}, ["receivedAt"]),
    ({"receivedAt": ["2026-11-27T10:00:00Z"]}, ["receivedAt"]),
])
async def test_email_import_invalid_properties(jmap: JMAP, obj: dict[str, Any],
                                               properties: list[str]) -> None:
    """RFC 8621 4.8: blobId, mailboxIds, keywords (and receivedAt) missing, of the wrong type
    or not found are invalidProperties naming them; nothing is stored."""
    blob = await _upload(jmap, message("import me"))
    base = {"blobId": blob, "mailboxIds": {"B1": True}} if obj else {}
    got = await jmap.one("Email/import", {"emails": {"new": base | obj}})
    err = got["notCreated"]["new"]
    assert err["type"] == "invalidProperties" and sorted(err["properties"]) == properties
    assert (await jmap.one("Email/query", {}))["ids"] == []


async def test_email_import_needs_emails(jmap: JMAP) -> None:
    (resp,) = await jmap.call([["Email/import", {"accountId": jmap.account()}, "0"]])
    assert resp[0] == "error" and resp[1]["type"] == "invalidArguments"


async def test_set_says_null_for_none_and_creation_ids_only_backwards(jmap: JMAP) -> None:
    """RFC 8620 5.3: created/updated/destroyed/not* are null when there are none; a creation id
    refers only to a record an earlier call created (the server never looks ahead)."""
    jmap.deliver(message("to move"))
    (eid,) = (await jmap.one("Email/query", {}))["ids"]
    aid = jmap.account()
    resp = await jmap.call([
        ["Email/set", {"accountId": aid, "update": {eid: {"mailboxIds": {"#later": True}}}}, "0"],
        ["Mailbox/set", {"accountId": aid, "create": {"later": {"name": "later"}}}, "1"],
        ["Email/set", {"accountId": aid, "update": {eid: {"mailboxIds": {"#later": True}}}}, "2"]])
    early, box, moved = (r[1] for r in resp)
    assert early["updated"] is None and early["notUpdated"][eid]["type"] == "invalidProperties"
    assert box["updated"] is box["destroyed"] is box["notCreated"] is None
    new = box["created"]["later"]["id"]
    assert moved["updated"] == {eid: None} and moved["notUpdated"] is None
    (e,) = (await jmap.one("Email/get", {"ids": [eid], "properties": ["mailboxIds"]}))["list"]
    assert e["mailboxIds"] == {new: True}


@pytest.mark.parametrize(("method", "sort", "kind"), [
    ("Email/query", {"property": "subject", "collation": "i;octet-nope"}, "unsupportedSort"),
    ("Email/query", {"property": "hasKeyword"}, "invalidArguments"),
    ("Email/query", {"property": "size", "isAscending": "yes"}, "invalidArguments"),
    ("Email/query", "size", "invalidArguments"),
    ("Mailbox/query", {"property": "name", "collation": "i;nope"}, "unsupportedSort"),
    ("Mailbox/query", {"property": "totalEmails"}, "unsupportedSort"),
    ("EmailSubmission/query", {"property": "sentAt", "collation": "x"}, "unsupportedSort"),
])
async def test_comparators_are_checked(jmap: JMAP, method: str, sort: Any, kind: str) -> None:
    """RFC 8620 5.5: an unknown property or collation is unsupportedSort."""
    (resp,) = await jmap.call([[method, {"accountId": jmap.account(), "sort": [sort]}, "0"]])
    assert resp[0] == "error" and resp[1]["type"] == kind, resp


async def test_sort_by_keyword_and_announced_collation(jmap: JMAP) -> None:
    box = await _box(jmap)
    got = await jmap.one("Email/set", {"create": {
        "f": {"mailboxIds": {box: True}, "subject": "b", "keywords": {"$flagged": True}},
        "u": {"mailboxIds": {box: True}, "subject": "a"}}})
    f, u = got["created"]["f"]["id"], got["created"]["u"]["id"]
    for ascending, order in ((True, [u, f]), (False, [f, u])):
        got = await jmap.one("Email/query", {"sort": [
            {"property": "hasKeyword", "keyword": "$flagged", "isAscending": ascending}]})
        assert got["ids"] == order
    got = await jmap.one("Email/query", {"sort": [
        {"property": "subject", "collation": "i;unicode-casemap"}]})
    assert got["ids"] == [u, f]


async def test_download_has_the_type_asked_for(jmap: JMAP) -> None:
    """RFC 8620 6.2: Content-Type is the type parameter as given (no charset added to a text/*
    type; a charset parameter kept); the name in a quoted filename too (RFC 6266)."""
    aid = jmap.account()
    async with jmap.client() as c:
        sess = (await c.get("/.well-known/jmap", follow_redirects=True)).json()
        assert set(sess["accounts"][aid]["accountCapabilities"][
            "urn:ietf:params:jmap:mail"]["emailQuerySortOptions"]) >= {"someInThreadHaveKeyword"}
        up = (await c.post(sess["uploadUrl"].replace("{accountId}", aid), content=b"foo",
                           headers={"content-type": "text/plain"})).json()
        assert (up["type"], up["size"], up["accountId"]) == ("text/plain", 3, aid)
        url = sess["downloadUrl"].replace("{accountId}", aid).replace("{blobId}", up["blobId"])
        for asked, ctype in (("text/plain", "text/plain"),
                             ("text/plain;charset=iso-8859-1", "text/plain; charset=iso-8859-1"),
                             ("text/plain; format=flowed", "text/plain"),
                             ("not a type", "application/octet-stream")):
            r = await c.get(url.replace("{name}", "my%20file.txt").replace("{type}",
                                                                            quote(asked, "")))
            assert r.status_code == 200 and r.content == b"foo"
            assert r.headers["content-type"] == ctype
            assert 'filename="my file.txt"' in r.headers["content-disposition"]
