"""Email/query over more emails than one filtering step (text filters checked a chunk at a
time, stopping once a window is full) and Mailbox/query's filters, against the http daemon."""

from __future__ import annotations

from tests.jmap.conftest import ALICE, JMAP


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
    (bad,) = await jmap.call([["Mailbox/query", {"accountId": jmap.account(), "filter": {
        "operator": "XOR", "conditions": []}}, "0"]])
    assert bad[0] == "error" and bad[1]["type"] == "unsupportedFilter"
