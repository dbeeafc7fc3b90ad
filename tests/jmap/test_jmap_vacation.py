"""VacationResponse over JMAP, and the mda's RFC 3834 replies (mta and mda running)."""

from __future__ import annotations

from tests.conftest import running

from .conftest import ALICE, BOB, JMAP


async def _send(jmap: JMAP, subject: str, extra: dict | None = None) -> None:
    """Bob sends Alice a message over JMAP (through the mta's queue)."""
    drafts = (await jmap.one("Mailbox/query", {"filter": {"role": "drafts"}}, BOB))["ids"][0]
    ident = (await jmap.one("Identity/get", {}, BOB))["list"][0]["id"]
    resp = await jmap.call([
        ["Email/set", {"accountId": jmap.account(BOB), "create": {"m": {
            "mailboxIds": {drafts: True}, "from": [{"email": BOB}], "to": [{"email": ALICE}],
            "subject": subject, "textBody": [{"partId": "1"}],
            "bodyValues": {"1": {"value": "are you there?"}}, **(extra or {})}}}, "0"],
        ["EmailSubmission/set", {"accountId": jmap.account(BOB), "create": {
            "s": {"identityId": ident, "emailId": "#m"}}}, "1"]], BOB)
    assert "s" in resp[1][1]["created"], resp


async def _subjects(jmap: JMAP, user: str) -> list[str]:
    ids = (await jmap.one("Email/query", {}, user))["ids"]
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["subject"]}, user)
    return sorted(e["subject"] for e in got["list"])


async def test_vacation_replies_once_and_never_to_lists(jmap: JMAP) -> None:
    got = await jmap.one("VacationResponse/set", {"update": {"singleton": {
        "isEnabled": True, "subject": "Away until Monday", "textBody": "back on Monday"}}})
    assert got["updated"] == {"singleton": None}
    (v,) = (await jmap.one("VacationResponse/get", {"ids": None}))["list"]
    assert v["isEnabled"] is True and v["subject"] == "Away until Monday"
    bad = await jmap.one("VacationResponse/set", {"update": {"singleton": {
        "subject": "x\r\nBcc: y@example.test"}}, "create": {"n": {}}})
    assert bad["notUpdated"]["singleton"]["type"] == "invalidProperties"
    assert bad["notCreated"]["n"]["type"] == "singleton"
    async with running("mda", jmap.cfg) as mda, running("mta", jmap.cfg):
        await _send(jmap, "first")

        async def replied() -> bool:
            return "Away until Monday" in await _subjects(jmap, BOB)
        await jmap.wait_for(replied, 30)
        ids = (await jmap.one("Email/query", {"filter": {"subject": "Away until"}}, BOB))["ids"]
        e = (await jmap.one("Email/get", {"ids": ids, "properties": [
            "from", "header:Auto-Submitted:asText", "inReplyTo", "preview"]}, BOB))["list"][0]
        assert e["from"][0]["email"] == ALICE and e["preview"] == "back on Monday"
        assert e["header:Auto-Submitted:asText"] == "auto-replied" and e["inReplyTo"]
        await _send(jmap, "second")  # within the period: no second reply
        await mda.wait_log(f"vacation {ALICE}: <{BOB}> got a reply within 7 days", 30)
        await _send(jmap, "a list post", {"header:List-Id:asText": "<talk.example.test>"})
        await mda.wait_log("list mail", 30)
        await _send(jmap, "bulk", {"header:Auto-Submitted:asText": "auto-generated"})
        await mda.wait_log("auto-submitted", 30)
    assert (await _subjects(jmap, BOB)).count("Away until Monday") == 1
    assert await _subjects(jmap, ALICE) == ["a list post", "bulk", "first", "second"]
