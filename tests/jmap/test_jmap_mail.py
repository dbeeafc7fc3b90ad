"""JMAP mail (RFC 8621) over the store: Email/Mailbox/Thread against real daemons, and the same
mailbox seen through IMAP at once."""

from __future__ import annotations

import asyncio
import imaplib

from .conftest import ALICE, BOB, JMAP, PASSWORD, message

MULTIPART = (
    f"From: =?utf-8?q?B=C3=B6b?= <{BOB}>\nTo: {ALICE}, Carol <carol@example.test>\n"
    "Subject: =?utf-8?q?r=C3=A9sum=C3=A9?= attached\nDate: Thu, 26 Nov 2026 09:30:00 +0100\n"
    "Message-ID: <multi@x>\nX-Tag: one\nX-Tag: two\nMIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="b1"\n\n'
    "--b1\nContent-Type: multipart/alternative; boundary=\"b2\"\n\n"
    "--b2\nContent-Type: text/plain; charset=utf-8\n\nPlain words here, quite a few of them.\n"
    "--b2\nContent-Type: text/html; charset=utf-8\n\n<p>Plain <b>words</b> here</p>\n--b2--\n"
    "--b1\nContent-Type: application/pdf; name=\"cv.pdf\"\n"
    "Content-Disposition: attachment; filename=\"cv.pdf\"\nContent-Transfer-Encoding: base64\n\n"
    "JVBERi0xLjQK\n--b1--\n").encode()


async def _ids(jmap: JMAP, flt: dict | None = None, **kw) -> list[str]:
    args = {"filter": flt or {}, **kw}
    return (await jmap.one("Email/query", args))["ids"]


async def _inbox(jmap: JMAP, user: str = ALICE) -> str:
    got = await jmap.one("Mailbox/query", {"filter": {"role": "inbox"}}, user)
    return got["ids"][0]


async def test_email_get_properties_of_a_delivered_message(jmap: JMAP) -> None:
    jmap.deliver(MULTIPART)
    jmap.deliver(message("plain, no attachment"))
    inbox = await _inbox(jmap)
    (eid,) = await _ids(jmap, {"hasAttachment": True})
    assert len(await _ids(jmap, {"hasAttachment": False})) == 1
    assert len(await _ids(jmap, {"inMailbox": inbox})) == 2
    assert await _ids(jmap, {"header": ["X-Tag", "two"]}) == [eid]
    got = await jmap.one("Email/get", {
        "ids": [eid], "properties": [
            "id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt",
            "messageId", "from", "to", "subject", "sentAt", "preview", "hasAttachment",
            "textBody", "htmlBody", "attachments", "bodyStructure", "bodyValues",
            "header:X-Tag:all", "header:Subject:asText", "header:To:asAddresses", "headers"],
        "fetchAllBodyValues": True, "maxBodyValueBytes": 11})
    (e,) = got["list"]
    assert e["id"] == eid and e["mailboxIds"] == {inbox: True} and e["keywords"] == {}
    assert e["from"] == [{"name": "Böb", "email": BOB}]
    assert e["to"] == [{"name": None, "email": ALICE},
                       {"name": "Carol", "email": "carol@example.test"}]
    assert e["subject"] == "résumé attached" == e["header:Subject:asText"]
    assert e["header:X-Tag:all"] == [" one", " two"]
    assert e["header:To:asAddresses"][1]["email"] == "carol@example.test"
    assert e["messageId"] == ["multi@x"] and e["sentAt"] == "2026-11-26T09:30:00+01:00"
    assert e["preview"].startswith("Plain words here") and e["hasAttachment"] is True
    assert [p["type"] for p in e["textBody"]] == ["text/plain"]
    assert [p["type"] for p in e["htmlBody"]] == ["text/html"]
    (att,) = e["attachments"]
    assert att["name"] == "cv.pdf" and att["type"] == "application/pdf"
    assert e["bodyStructure"]["type"] == "multipart/mixed"
    value = e["bodyValues"][e["textBody"][0]["partId"]]
    assert value == {"value": "Plain words", "isEncodingProblem": False, "isTruncated": True}
    assert {"name": "Message-ID", "value": " <multi@x>"} in e["headers"]
    async with jmap.client() as c:  # the attachment's blob, decoded
        r = await c.get(f"/jmap/download/{jmap.account()}/{att['blobId']}/cv.pdf",
                        params={"type": "application/pdf"})
        assert r.status_code == 200 and r.content == b"%PDF-1.4\n"
        r = await c.get(f"/jmap/download/{jmap.account()}/{eid}/m.eml")
        assert r.content == MULTIPART.replace(b"\n", b"\r\n") and len(r.content) == e["size"]
    # the email id is IMAP's too: another user never sees it
    got = await jmap.one("Email/get", {"ids": [eid]}, BOB)
    assert got["list"] == [] and got["notFound"] == [eid]
    got = await jmap.one("Email/set", {"update": {eid: {"keywords/$seen": True}},
                                       "destroy": [eid]}, BOB)
    assert set(got["notUpdated"]) == {eid} and set(got["notDestroyed"]) == {eid}


async def test_query_filters_sorts_and_windows(jmap: JMAP) -> None:
    for i, (subject, body) in enumerate([("apple pie", "crust"), ("banana split", "ice cream"),
                                         ("Re: apple pie", "more crust please"),
                                         ("cherry", "x" * 3000)]):
        jmap.deliver(message(subject, body, extra=f"X-N: {i}\n" + (
            f"In-Reply-To: <{abs(hash('apple pie'))}@x>\n" if subject.startswith("Re:") else "")))
    everything = await _ids(jmap, sort=[{"property": "subject", "isAscending": True}])
    assert len(everything) == 4
    got = await jmap.one("Email/get", {"ids": everything, "properties": ["subject", "threadId"]})
    subjects = [e["subject"] for e in got["list"]]
    assert subjects == ["apple pie", "banana split", "cherry", "Re: apple pie"]
    threads = {e["subject"]: e["threadId"] for e in got["list"]}
    assert threads["apple pie"] == threads["Re: apple pie"] != threads["cherry"]
    assert len(await _ids(jmap, {"text": "crust"})) == 2
    assert len(await _ids(jmap, {"body": "ice cream"})) == 1
    assert len(await _ids(jmap, {"subject": "APPLE"})) == 2
    assert len(await _ids(jmap, {"from": "bob@"})) == 4
    assert len(await _ids(jmap, {"minSize": 2000})) == 1
    assert len(await _ids(jmap, {"operator": "NOT", "conditions": [{"text": "crust"}]})) == 2
    assert len(await _ids(jmap, {"header": ["X-N", "3"]})) == 1
    assert len(await _ids(jmap, {}, collapseThreads=True)) == 3
    page = await jmap.one("Email/query", {"sort": [{"property": "subject"}], "position": 1,
                                          "limit": 2, "calculateTotal": True})
    assert page["ids"] == everything[1:3] and page["total"] == 4 and page["position"] == 1
    page = await jmap.one("Email/query", {"sort": [{"property": "subject"}],
                                          "anchor": everything[2], "anchorOffset": -1,
                                          "limit": 1})
    assert page["ids"] == [everything[1]]
    err = await jmap.call([["Email/query", {"accountId": jmap.account(),
                                            "filter": {"nonsense": 1}}, "0"],
                           ["Email/query", {"accountId": jmap.account(),
                                            "sort": [{"property": "nonsense"}]}, "1"]])
    assert [r[1]["type"] for r in err] == ["unsupportedFilter", "unsupportedSort"]
    qs = page["queryState"]
    same = await jmap.one("Email/queryChanges", {"sinceQueryState": qs,
                                                 "sort": [{"property": "subject"}]})
    assert same["added"] == [] and same["removed"] == [] and same["newQueryState"] == qs
    jmap.deliver(message("one more"))
    await _ids(jmap)  # the delivery is indexed
    now = await _ids(jmap, sort=[{"property": "subject"}])
    got = await jmap.one("Email/queryChanges", {"sinceQueryState": qs,
                                                "sort": [{"property": "subject"}]})
    (new,) = set(now) - set(everything)
    assert got["removed"] == [new] and got["added"] == [{"id": new, "index": now.index(new)}]


async def test_keywords_and_moves_reach_imap(jmap: JMAP, imap_daemon) -> None:
    jmap.deliver(message("flag me"))
    (eid,) = await _ids(jmap)
    imap = imaplib.IMAP4("127.0.0.1", jmap.cfg.port("imap", "imap"), timeout=30)
    try:
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        imap.send(b"a1 IDLE\r\n")
        assert imap.readline().startswith(b"+")
        got = await jmap.one("Email/set", {"update": {eid: {"keywords/$seen": True,
                                                           "keywords/$label1": True}}})
        assert got["updated"] == {eid: None}
        # the IDLEing session hears of it: an untagged FETCH with the new flags (after a
        # FLAGS response for the new keyword)
        line = b""
        while b"FETCH" not in line:
            line = await asyncio.wait_for(asyncio.to_thread(imap.readline), 15)
        assert b"\\Seen" in line and b"$label1" in line, line
        imap.send(b"DONE\r\n")
        while not imap.readline().startswith(b"a1 OK"):
            pass
        # IMAP STORE → Email/changes and the keywords of Email/get
        state = (await jmap.one("Email/get", {"ids": []}))["state"]
        typ, _ = imap.store("1", "+FLAGS", "(\\Flagged)")
        assert typ == "OK"
        ch = await jmap.one("Email/changes", {"sinceState": state})
        assert ch["updated"] == [eid] and ch["created"] == ch["destroyed"] == []
        got = await jmap.one("Email/get", {"ids": [eid], "properties": ["keywords"]})
        assert got["list"][0]["keywords"] == {"$seen": True, "$label1": True, "$flagged": True}
        # a move keeps the email id; IMAP sees it in the other folder
        made = await jmap.one("Mailbox/set", {"create": {"a": {"name": "Archive"}}})
        archive = made["created"]["a"]["id"]
        got = await jmap.one("Email/set", {"update": {eid: {"mailboxIds": {archive: True}}}})
        assert got["updated"] == {eid: None}, got
        assert (await _ids(jmap, {"inMailbox": archive})) == [eid]
        imap.select("Archive")
        typ, data = imap.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"flag me" in data[0][1]
        # destroy: gone for IMAP too
        got = await jmap.one("Email/set", {"destroy": [eid]})
        assert got["destroyed"] == [eid]
        imap.noop()
        typ, data = imap.search(None, "ALL")
        assert data == [b""]
        assert (await jmap.one("Email/get", {"ids": [eid]}))["notFound"] == [eid]
    finally:
        imap.logout()


async def test_email_create_import_parse(jmap: JMAP) -> None:
    aid = jmap.account()
    drafts = (await jmap.one("Mailbox/query", {"filter": {"role": "drafts"}}))["ids"][0]
    resp = await jmap.call([
        ["Email/set", {"accountId": aid, "create": {"d": {
            "mailboxIds": {drafts: True}, "keywords": {"$draft": True},
            "from": [{"name": "Alice", "email": ALICE}], "to": [{"email": BOB}],
            "subject": "draft one", "header:X-Mailer:asText": "tests",
            "textBody": [{"partId": "t", "type": "text/plain"}],
            "htmlBody": [{"partId": "h", "type": "text/html"}],
            "bodyValues": {"t": {"value": "plain text"}, "h": {"value": "<p>html</p>"}}}}}, "0"],
        ["Email/get", {"accountId": aid, "ids": ["#d"],
                       "properties": ["subject", "keywords", "mailboxIds", "header:X-Mailer",
                                      "textBody", "htmlBody"]}, "1"],
    ])
    created = resp[0][1]["created"]["d"]
    (e,) = resp[1][1]["list"]
    assert e["id"] == created["id"] and e["subject"] == "draft one"
    assert e["keywords"] == {"$draft": True} and e["mailboxIds"] == {drafts: True}
    assert e["header:X-Mailer"].strip() == "tests"
    assert [p["type"] for p in e["htmlBody"]] == ["text/html"]
    # header injection: refused, nothing stored
    bad = await jmap.one("Email/set", {"create": {
        "x": {"mailboxIds": {drafts: True}, "subject": "hi\r\nBcc: victim@example.test"},
        "y": {"mailboxIds": {drafts: True}, "header:X-A:asText": "a\nB: c"},
        "z": {"mailboxIds": {drafts: True},
              "from": [{"email": "a@b.test>\r\nBcc: v@example.test"}]}}})
    assert bad["created"] is None and set(bad["notCreated"]) == {"x", "y", "z"}
    assert all(v["type"] == "invalidProperties" for v in bad["notCreated"].values())
    # import from an uploaded blob; parse it first
    async with jmap.client() as c:
        r = await c.post(f"/jmap/upload/{aid}/", content=message("imported", "from a blob"),
                         headers={"content-type": "message/rfc822"})
        blob = r.json()["blobId"]
    parsed = await jmap.one("Email/parse", {"blobIds": [blob, "Gnope"],
                                            "properties": ["subject", "preview"]})
    assert parsed["parsed"][blob] == {"subject": "imported", "preview": "from a blob"}
    assert parsed["notFound"] == ["Gnope"]
    inbox = await _inbox(jmap)
    imp = await jmap.one("Email/import", {"emails": {"i": {
        "blobId": blob, "mailboxIds": {inbox: True}, "keywords": {"$seen": True},
        "receivedAt": "2026-01-02T03:04:05Z"}}})
    got = await jmap.one("Email/get", {"ids": [imp["created"]["i"]["id"]],
                                       "properties": ["receivedAt", "subject", "keywords"]})
    assert got["list"][0] == {"id": imp["created"]["i"]["id"], "receivedAt":
                              "2026-01-02T03:04:05Z", "subject": "imported",
                              "keywords": {"$seen": True}}


async def test_mailboxes_counts_rename_destroy(jmap: JMAP) -> None:
    jmap.deliver(message("one"))
    jmap.deliver(message("two"))
    made = await jmap.one("Mailbox/set", {"create": {"f": {"name": "Folder"}}})
    folder = made["created"]["f"]["id"]
    ids = await _ids(jmap)
    await jmap.one("Email/set", {"update": {ids[0]: {"mailboxIds": {folder: True}},
                                            ids[1]: {"keywords": {"$seen": True}}}})
    got = await jmap.one("Mailbox/get", {"ids": [folder, await _inbox(jmap)]})
    counts = {m["name"]: (m["totalEmails"], m["unreadEmails"], m["totalThreads"])
              for m in got["list"]}
    assert counts == {"Folder": (1, 1, 1), "INBOX": (1, 0, 1)}
    state = got["state"]
    ren = await jmap.one("Mailbox/set", {"update": {folder: {"name": "Renamed"}}})
    assert ren["updated"] == {folder: None}
    ch = await jmap.one("Mailbox/changes", {"sinceState": state})
    assert folder in ch["updated"]
    no = await jmap.one("Mailbox/set", {"destroy": [folder, await _inbox(jmap)]})
    assert no["notDestroyed"][folder]["type"] == "mailboxHasEmail"
    assert no["notDestroyed"][await _inbox(jmap)]["type"] == "forbidden"
    yes = await jmap.one("Mailbox/set", {"destroy": [folder], "onDestroyRemoveEmails": True})
    assert yes["destroyed"] == [folder]
    assert len(await _ids(jmap)) == 1
    assert not (jmap.inbox().root / ".Renamed").exists()


async def test_thread_get_and_changes(jmap: JMAP) -> None:
    state = (await jmap.one("Thread/get", {"ids": []}))["state"]
    jmap.deliver(message("topic"))
    jmap.deliver(message("Re: topic", extra=f"In-Reply-To: <{abs(hash('topic'))}@x>\n"))
    ids = await _ids(jmap, sort=[{"property": "receivedAt", "isAscending": True}])
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["threadId"]})
    (tid,) = {e["threadId"] for e in got["list"]}
    th = await jmap.one("Thread/get", {"ids": [tid, "Tnope"]})
    assert th["list"] == [{"id": tid, "emailIds": ids}] and th["notFound"] == ["Tnope"]
    ch = await jmap.one("Thread/changes", {"sinceState": state})
    assert tid in ch["created"] + ch["updated"]


async def test_search_snippets_and_body_properties(jmap: JMAP) -> None:
    jmap.deliver(message("Quarterly <report>", "The numbers of the QUARTERLY review are in."))
    (eid,) = await _ids(jmap, {"text": "quarterly"})
    got = await jmap.one("SearchSnippet/get", {"emailIds": [eid, "Mnope"],
                                               "filter": {"text": "quarterly"}})
    (snip,) = got["list"]
    assert snip["subject"] == "<mark>Quarterly</mark> &lt;report&gt;"
    assert "<mark>QUARTERLY</mark> review" in snip["preview"]
    assert got["notFound"] == ["Mnope"]
    got = await jmap.one("Email/get", {"ids": [eid], "properties": ["textBody", "bodyStructure"],
                                       "bodyProperties": ["partId", "type"]})
    e = got["list"][0]
    assert e["textBody"] == [{"partId": "1", "type": "text/plain"}]
    assert e["bodyStructure"] == {"partId": "1", "type": "text/plain"}
    got = await jmap.one("Email/get", {"ids": [eid], "properties": ["textBody"]})
    assert "headers" not in got["list"][0]["textBody"][0]  # not a default body property
    err = await jmap.call([["Email/get", {"accountId": jmap.account(), "ids": [eid],
                                          "bodyProperties": ["nope"]}, "0"]])
    assert err[0][0] == "error" and err[0][1]["type"] == "invalidArguments"


async def test_email_create_from_a_body_structure(jmap: JMAP) -> None:
    aid = jmap.account()
    drafts = (await jmap.one("Mailbox/query", {"filter": {"role": "drafts"}}))["ids"][0]
    async with jmap.client() as c:
        r = await c.post(f"/jmap/upload/{aid}/", content=b"%PDF-1.4 tiny",
                         headers={"content-type": "application/pdf"})
        blob = r.json()["blobId"]
    resp = await jmap.call([
        ["Email/set", {"accountId": aid, "create": {"m": {
            "mailboxIds": {drafts: True}, "from": [{"email": ALICE}], "subject": "structured",
            "bodyValues": {"t": {"value": "plain part"}, "h": {"value": "<b>html part</b>"}},
            "bodyStructure": {"type": "multipart/mixed", "subParts": [
                {"type": "multipart/alternative", "subParts": [
                    {"partId": "t", "type": "text/plain"},
                    {"partId": "h", "type": "text/html"}]},
                {"blobId": blob, "type": "application/pdf", "name": "doc.pdf"}]}}}}, "0"],
        ["Email/get", {"accountId": aid, "ids": ["#m"], "fetchTextBodyValues": True,
                       "properties": ["textBody", "htmlBody", "attachments", "bodyValues",
                                      "hasAttachment"]}, "1"]])
    (e,) = resp[1][1]["list"]
    assert [p["type"] for p in e["textBody"]] == ["text/plain"]
    assert [p["type"] for p in e["htmlBody"]] == ["text/html"]
    (att,) = e["attachments"]
    assert att["name"] == "doc.pdf" and e["hasAttachment"] is True
    assert e["bodyValues"][e["textBody"][0]["partId"]]["value"].strip() == "plain part"
    async with jmap.client() as c:
        r = await c.get(f"/jmap/download/{aid}/{att['blobId']}/doc.pdf")
        assert r.content == b"%PDF-1.4 tiny"


async def test_body_values_flag_encoding_problems(jmap: JMAP) -> None:
    jmap.deliver(b"From: x@example.test\nSubject: bad bytes\nContent-Type: text/plain; "
                 b"charset=utf-8\n\nbad \xff\xfe here\n")
    jmap.deliver(b"From: x@example.test\nSubject: unknown charset\nContent-Type: text/plain; "
                 b"charset=x-nonsense\n\nplain\n")
    jmap.deliver("From: x@example.test\nSubject: fine\nContent-Type: text/plain; charset=utf-8"
                 "\n\ngrüße\n".encode())
    ids = await _ids(jmap, sort=[{"property": "subject"}])
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["subject", "bodyValues"],
                                       "fetchTextBodyValues": True})
    values = {e["subject"]: next(iter(e["bodyValues"].values())) for e in got["list"]}
    assert values["bad bytes"]["isEncodingProblem"] is True
    assert "\ufffd" in values["bad bytes"]["value"]
    assert values["unknown charset"]["isEncodingProblem"] is True
    assert values["fine"] == {"value": "grüße\n", "isEncodingProblem": False,
                              "isTruncated": False}
