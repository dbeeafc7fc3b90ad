"""Email/query over more emails than one filtering step (text filters checked a chunk at a
time, stopping once a window is full) and Mailbox/query's filters, against the http daemon."""

from __future__ import annotations

import imaplib
import smtplib

from tests.conftest import running
from tests.jmap.conftest import ALICE, JMAP, PASSWORD


def _message(i: int) -> bytes:
    word = "kumquat" if i % 3 == 0 else "apple"
    reply = f"In-Reply-To: <{i - 1}.t@x>\n" if i % 2 else ""
    return (f"From: Bob <bob@example.test>\nTo: {ALICE}\nSubject: note {i}\n"
            f"Message-ID: <{i}.t@x>\n{reply}Date: Fri, 27 Nov 2026 10:00:00 +0000\n\n"
            f"a {word} for number {i}\n").encode()


async def _subjects(jmap: JMAP, ids: list[str]) -> list[str]:
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["subject"]})
    by_id = {e["id"]: e["subject"] for e in got["list"]}
    return [by_id[i] for i in ids]


async def test_text_query_windows_match_the_full_result(jmap: JMAP) -> None:
    n = 300  # several filtering steps (64, 128, ...)
    for i in range(n):
        jmap.deliver(_message(i))
    every = (await jmap.one("Email/query", {"sort": [
        {"property": "receivedAt", "isAscending": False}]}))["ids"]
    assert len(every) == n
    subjects = await _subjects(jmap, every)
    numbers = [int(s.split()[1]) for s in subjects]
    expected = [e for e, k in zip(every, numbers, strict=True) if k % 3 == 0]
    got = await jmap.one("Email/get", {"ids": every, "properties": ["threadId"]})
    thread = {e["id"]: e["threadId"] for e in got["list"]}
    collapsed: list[str] = []
    for e in expected:
        if thread[e] not in {thread[c] for c in collapsed}:
            collapsed.append(e)
    assert len(set(thread.values())) == n // 2 and len(collapsed) == len(expected)
    for position, limit in [(0, 5), (0, 50), (30, 40), (95, 10), (200, 5), (0, 0)]:
        page = await jmap.one("Email/query", {"filter": {"text": "KUMQUAT"},
                                              "position": position, "limit": limit})
        assert page["ids"] == expected[position:position + limit], (position, limit)
        assert page["position"] == position and "total" not in page
    page = await jmap.one("Email/query", {"filter": {"body": "kumquat"}, "limit": 7,
                                          "calculateTotal": True})
    assert page["ids"] == expected[:7] and page["total"] == len(expected)
    page = await jmap.one("Email/query", {"filter": {"text": "kumquat"}, "position": -3})
    assert page["ids"] == expected[-3:]
    page = await jmap.one("Email/query", {"filter": {"text": "kumquat"},
                                          "anchor": expected[10], "limit": 2})
    assert page["ids"] == expected[10:12]
    # every second message replies to the one before: one per thread
    page = await jmap.one("Email/query", {"filter": {"operator": "OR", "conditions": [
        {"text": "kumquat"}, {"text": "number 1"}]}, "collapseThreads": True, "limit": 20})
    wanted: list[str] = []
    for e, k in zip(every, numbers, strict=True):
        if (k % 3 == 0 or "number 1" in f"number {k}") and \
                thread[e] not in {thread[w] for w in wanted}:
            wanted.append(e)
    assert page["ids"] == wanted[:20]
    page = await jmap.one("Email/query", {"filter": {"operator": "AND", "conditions": [
        {"text": "kumquat"}, {"operator": "NOT", "conditions": [{"text": "number 2"}]}]},
        "limit": 100})
    assert page["ids"] == [e for e, k in zip(every, numbers, strict=True)
                           if k % 3 == 0 and not str(k).startswith("2")][:100]


async def test_mailbox_query_filter_operators(jmap: JMAP) -> None:
    for name in ("Archive", "Archive/2025", "Lists"):
        got = await jmap.one("Mailbox/query", {"filter": {"name": name.split("/")[-1]}})
        if got["ids"]:
            continue
        parent = None
        if "/" in name:
            parent = (await jmap.one("Mailbox/query", {"filter": {"name": "Archive"}}))["ids"][0]
        made = await jmap.one("Mailbox/set", {"create": {"m": {"name": name.split("/")[-1],
                                                               "parentId": parent}}})
        assert "m" in made["created"], made
    got = await jmap.one("Mailbox/get", {"properties": ["name", "role"]})
    name = {m["id"]: m["name"] for m in got["list"]}
    found = await jmap.one("Mailbox/query", {"filter": {"operator": "OR", "conditions": [
        {"role": "inbox"}, {"name": "2025"}]}})
    assert sorted(name[i] for i in found["ids"]) == ["2025", "INBOX"]
    found = await jmap.one("Mailbox/query", {"filter": {"operator": "NOT", "conditions": [
        {"hasAnyRole": True}]}})
    assert sorted(name[i] for i in found["ids"]) == ["2025", "Archive", "Lists"]
    found = await jmap.one("Mailbox/query", {"filter": {"operator": "AND", "conditions": [
        {"hasAnyRole": False}, {"operator": "NOT", "conditions": [{"name": "arch"}]}]}})
    assert sorted(name[i] for i in found["ids"]) == ["2025", "Lists"]
    by_name = [name[i] for i in (await jmap.one("Mailbox/query", {
        "sort": [{"property": "name"}]}))["ids"]]
    assert by_name[0] == "2025" and by_name == sorted(by_name, key=str.casefold)
    tree = [name[i] for i in (await jmap.one("Mailbox/query", {
        "sort": [{"property": "name"}], "sortAsTree": True}))["ids"]]
    assert sorted(tree) == sorted(by_name) and tree.index("2025") == tree.index("Archive") + 1
    assert [t for t in tree if t != "2025"] == [t for t in by_name if t != "2025"]
    for as_tree, expected in ((False, ["2025"]), (True, [])):
        found = await jmap.one("Mailbox/query", {"filter": {"name": "2025"},
                                                 "filterAsTree": as_tree})
        assert [name[i] for i in found["ids"]] == expected
    found = await jmap.one("Mailbox/query", {"filter": {"operator": "OR", "conditions": [
        {"name": "2025"}, {"name": "Archive"}]}, "filterAsTree": True})
    assert sorted(name[i] for i in found["ids"]) == ["2025", "Archive"]
    (bad,) = await jmap.call([["Mailbox/query", {"accountId": jmap.account(), "filter": {
        "operator": "XOR", "conditions": []}}, "0"]])
    assert bad[0] == "error" and bad[1]["type"] == "unsupportedFilter"


# -- queryChanges ------------------------------------------------------------------------------
def _apply(cached: list[str], changes: dict) -> list[str]:
    """What a client does with a /queryChanges answer (RFC 8620 5.6): drop every removed
    id, then insert the added ones in index order."""
    gone = set(changes["removed"])
    out = [i for i in cached if i not in gone]
    for item in sorted(changes["added"], key=lambda a: a["index"]):
        out.insert(item["index"], item["id"])
    return out


async def _query(jmap: JMAP, args: dict) -> dict:
    return await jmap.one("Email/query", {**args, "calculateTotal": True})


async def test_email_query_changes_follow_imap_and_lmtp(jmap: JMAP, imap_daemon) -> None:
    for i in range(12):
        jmap.deliver(_message(i))
    inbox = (await jmap.one("Mailbox/query", {"filter": {"role": "inbox"}}))["ids"][0]
    queries = [
        {"filter": {"inMailbox": inbox}, "sort": [{"property": "receivedAt",
                                                   "isAscending": False}]},
        {},
        {"filter": {"hasKeyword": "$flagged"}},
        {"filter": {"text": "kumquat"}, "sort": [{"property": "subject"}]},
        {"filter": {"inMailbox": inbox}, "collapseThreads": True},
        {"filter": {"someInThreadHaveKeyword": "$flagged"}},
    ]
    before = [await _query(jmap, q) for q in queries]
    assert all(b["canCalculateChanges"] for b in before)
    assert len(before[0]["ids"]) == 12 and before[4]["total"] == 6

    async with running("mda", jmap.cfg):
        lmtp = smtplib.LMTP("127.0.0.1", jmap.cfg.port("mda", "lmtp"))
        try:
            for i in (12, 13):  # 13 replies to 12: one new thread
                lmtp.sendmail("bob@example.test", [ALICE], _message(i))
        finally:
            lmtp.quit()
    imap = imaplib.IMAP4("127.0.0.1", jmap.cfg.port("imap", "imap"), timeout=30)
    try:
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        typ, data = imap.uid("SEARCH", None, "ALL")
        uids = data[0].split()
        assert typ == "OK" and len(uids) == 14
        assert imap.uid("STORE", uids[3], "+FLAGS", "(\\Flagged)")[0] == "OK"  # note 3
        # note 5 (a reply to 4, so the newest of its thread) goes: 4 stands for the thread
        assert imap.uid("STORE", uids[5], "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert imap.expunge()[0] == "OK"
        assert imap.create("Later")[0] == "OK"
        assert imap.uid("MOVE", uids[6], "Later")[0] == "OK"  # note 6 leaves the INBOX
    finally:
        imap.logout()

    for q, old in zip(queries, before, strict=True):
        got = await jmap.one("Email/queryChanges", {**q, "sinceQueryState": old["queryState"],
                                                    "calculateTotal": True})
        now = await _query(jmap, q)
        assert got["oldQueryState"] == old["queryState"]
        assert got["newQueryState"] == now["queryState"]
        assert _apply(old["ids"], got) == now["ids"], q
        assert got["total"] == now["total"]
        # nothing changed since: an empty answer
        again = await jmap.one("Email/queryChanges", {**q, "sinceQueryState":
                                                      now["queryState"]})
        assert again["removed"] == again["added"] == []
    assert len(before[0]["ids"]) - 2 + 2 == len((await _query(jmap, queries[0]))["ids"])
    flagged = await _query(jmap, queries[2])
    assert await _subjects(jmap, flagged["ids"]) == ["note 3"]
    threads = await _query(jmap, queries[5])
    assert sorted(await _subjects(jmap, threads["ids"])) == ["note 2", "note 3"]


async def test_query_changes_limits_and_errors(jmap: JMAP) -> None:
    for i in range(6):
        jmap.deliver(_message(i))
    q = {"filter": {"text": "note"}, "sort": [{"property": "receivedAt", "isAscending": True}]}
    old = await _query(jmap, q)
    for i in range(6, 10):
        jmap.deliver(_message(i))
    new = await _query(jmap, q)  # indexes the new files
    assert new["ids"][:6] == old["ids"]
    got = await jmap.one("Email/queryChanges", {**q, "sinceQueryState": old["queryState"]})
    assert got["removed"] == sorted(new["ids"][6:]) and "total" not in got
    assert got["added"] == [{"id": i, "index": 6 + n} for n, i in enumerate(new["ids"][6:])]
    # an immutable filter and sort: nothing is added past upToId
    got = await jmap.one("Email/queryChanges", {**q, "sinceQueryState": old["queryState"],
                                                "upToId": new["ids"][7]})
    assert [a["index"] for a in got["added"]] == [6, 7]
    # a mutable filter (keywords) ignores upToId
    got = await jmap.one("Email/queryChanges", {
        "filter": {"notKeyword": "$seen"}, "sinceQueryState": old["queryState"],
        "upToId": new["ids"][0]})
    assert len(got["added"]) == 4
    for args, error in [({"maxChanges": 7}, "tooManyChanges"),
                        ({"sinceQueryState": "999999"}, "cannotCalculateChanges"),
                        ({"sinceQueryState": "abc"}, "cannotCalculateChanges"),
                        ({"maxChanges": 0}, "invalidArguments"),
                        ({"sinceQueryState": None}, "invalidArguments"),
                        ({"filter": {"bogus": 1}}, "unsupportedFilter")]:
        (resp,) = await jmap.call([["Email/queryChanges", {
            "accountId": jmap.account(), "sinceQueryState": old["queryState"], **q,
            **args}, "0"]])
        assert resp[0] == "error" and resp[1]["type"] == error, (args, resp)
    got = await jmap.one("Email/queryChanges", {**q, "sinceQueryState": old["queryState"],
                                                "maxChanges": 8})
    assert len(got["removed"]) + len(got["added"]) == 8


async def test_mailbox_query_changes(jmap: JMAP) -> None:
    q = {"filter": {"hasAnyRole": False}, "sort": [{"property": "name"}]}
    made = await jmap.one("Mailbox/set", {"create": {"a": {"name": "Bravo"},
                                                     "b": {"name": "Delta"}}})
    bravo, delta = made["created"]["a"]["id"], made["created"]["b"]["id"]
    old = await jmap.one("Mailbox/query", {**q, "calculateTotal": True})
    assert old["canCalculateChanges"] and old["total"] == 2
    await jmap.one("Mailbox/set", {"create": {"c": {"name": "Charlie"}},
                                   "update": {delta: {"name": "Alpha"}},
                                   "destroy": [bravo]})
    got = await jmap.one("Mailbox/queryChanges", {**q, "sinceQueryState": old["queryState"],
                                                  "calculateTotal": True})
    now = await jmap.one("Mailbox/query", q)
    assert _apply(old["ids"], got) == now["ids"] and got["total"] == 2
    assert bravo in got["removed"] and bravo not in now["ids"]


async def test_email_get_from_summaries_and_header_blocks(jmap: JMAP) -> None:
    """subject and preview come from the store's summaries, header properties from the
    header block alone; the answers are those of a full parse."""
    jmap.deliver(b"From: Ann <ann@example.test>, bob@example.test\nTo: alice@example.test\n"
                 b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=   from\n\tAnn\n"
                 b"Date: Fri, 27 Nov 2026 10:00:00 +0100\nContent-Type: text/html\n\n"
                 b"<p>Hello <b>there</b></p>\n")
    jmap.deliver(b"From: c@example.test\nSubject:\n\nempty subject\n")
    jmap.deliver(b"From: d@example.test\n\nno subject at all\n")
    ids = (await jmap.one("Email/query", {}))["ids"]
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["header:From:asAddresses"]})
    order = {"ann@example.test": 0, "c@example.test": 1, "d@example.test": 2}
    ids = sorted(ids, key=lambda i: next(
        order[e["header:From:asAddresses"][0]["email"]] for e in got["list"] if e["id"] == i))
    props = ["subject", "preview", "from", "sentAt", "header:X-None", "textBody"]
    for asked in (props[:2], props[:5], props):
        got = await jmap.one("Email/get", {"ids": ids, "properties": asked})
        by_id = {e["id"]: e for e in got["list"]}
        first, empty, missing = (by_id[i] for i in ids)
        assert first["subject"] == "Grüße from Ann"
        assert first["preview"] == "Hello there"
        assert (empty["subject"], missing["subject"]) == ("", None)
        assert missing["preview"] == "no subject at all"
        if "from" in asked:
            assert first["from"] == [{"name": "Ann", "email": "ann@example.test"},
                                     {"name": None, "email": "bob@example.test"}]
            assert first["sentAt"] == "2026-11-27T10:00:00+01:00"
            assert first["header:X-None"] is None
        if "textBody" in asked:  # a body property after header ones: parsed in full
            assert [p["type"] for p in first["textBody"]] == ["text/html"]


async def test_email_set_header_forms(jmap: JMAP) -> None:
    """Email/set create sets header fields in every parsed form (RFC 8621 4.1.2, 4.6), and
    gets them back in the same form."""
    drafts = (await jmap.one("Mailbox/query", {"filter": {"role": "drafts"}}))["ids"][0]
    forms = {
        "header:List-Unsubscribe:asURLs": ["mailto:off@example.test", "https://x.test/u?a=1"],
        "header:X-Refs:asMessageIds": ["a@x.test", "b@x.test"],
        "header:X-When:asDate": "2026-11-27T10:00:00+01:00",
        "header:X-Tag:all": ["one", "two"],
        "header:X-Note:asText": "Grüße",
        "header:Resent-To:asGroupedAddresses": [
            {"name": "team", "addresses": [{"name": "Ann", "email": "ann@example.test"}]},
            {"name": None, "addresses": [{"name": None, "email": "bob@example.test"}]}],
        "header:Resent-Cc:asAddresses": [{"name": "Carol", "email": "carol@example.test"}],
    }
    got = await jmap.one("Email/set", {"create": {
        "a": {"mailboxIds": {drafts: True}, "subject": "forms", **forms},
        "b": {"mailboxIds": {drafts: True}, "subject": "twice", "header:Subject": "again"},
        "c": {"mailboxIds": {drafts: True}, "header:X-Bad:asURLs": ["x>\r\nBcc: y"]},
        "d": {"mailboxIds": {drafts: True}, "header:X-Bad:asNothing": "x"}}})
    assert set(got["notCreated"]) == {"b", "c", "d"}, got
    assert all(v["type"] == "invalidProperties" for v in got["notCreated"].values())
    eid = got["created"]["a"]["id"]
    got = await jmap.one("Email/get", {"ids": [eid], "properties": list(forms)})
    e = got["list"][0]
    for key, value in forms.items():
        if key == "header:X-Tag:all":
            assert [v.strip() for v in e[key]] == value
        else:
            assert e[key] == value, key
