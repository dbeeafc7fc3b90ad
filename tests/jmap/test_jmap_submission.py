"""EmailSubmission through the mta's queue (mta and mda running as in production), Identity,
and forbiddenFrom."""

from __future__ import annotations

from tests.conftest import running

from .conftest import ALICE, BOB, JMAP


async def _draft(jmap: JMAP, frm: str = ALICE, to: str = BOB, subject: str = "sent over jmap",
                 bcc: str | None = None) -> tuple[str, str, str]:
    drafts = (await jmap.one("Mailbox/query", {"filter": {"role": "drafts"}}))["ids"][0]
    sent = (await jmap.one("Mailbox/query", {"filter": {"role": "sent"}}))["ids"][0]
    obj = {"mailboxIds": {drafts: True}, "keywords": {"$draft": True},
           "from": [{"email": frm}], "to": [{"email": to}], "subject": subject,
           "textBody": [{"partId": "1"}], "bodyValues": {"1": {"value": "hello bob"}}}
    if bcc:
        obj["bcc"] = [{"email": bcc}]
    got = await jmap.one("Email/set", {"create": {"d": obj}})
    return got["created"]["d"]["id"], drafts, sent


async def test_submission_reaches_another_local_user(jmap: JMAP) -> None:
    aid = jmap.account()
    async with running("mda", jmap.cfg), running("mta", jmap.cfg):
        eid, drafts, sent = await _draft(jmap, bcc="carol@example.test")
        before = await jmap.one("EmailSubmission/query", {"calculateTotal": True})
        assert before["ids"] == [] and before["canCalculateChanges"]
        ident = (await jmap.one("Identity/get", {}))["list"]
        assert [i["email"] for i in ident] == [ALICE]
        resp = await jmap.call([
            ["EmailSubmission/set", {
                "accountId": aid,
                "create": {"s": {"identityId": ident[0]["id"], "emailId": eid}},
                "onSuccessUpdateEmail": {"#s": {f"mailboxIds/{drafts}": None,
                                                f"mailboxIds/{sent}": True,
                                                "keywords/$draft": None}}}, "0"],
            ["EmailSubmission/get", {"accountId": aid, "ids": ["#s"]}, "1"]])
        assert resp[0][0] == "EmailSubmission/set" and "s" in resp[0][1]["created"], resp
        assert resp[1][0] == "Email/set" and resp[1][1]["updated"] == {eid: None}  # implicit
        (sub,) = resp[2][1]["list"]
        assert sub["emailId"] == eid and sub["undoStatus"] == "final"
        assert {r["email"] for r in sub["envelope"]["rcptTo"]} == {BOB, "carol@example.test"}
        got = await jmap.one("Email/get", {"ids": [eid], "properties": ["mailboxIds",
                                                                         "keywords"]})
        assert got["list"][0] == {"id": eid, "mailboxIds": {sent: True}, "keywords": {}}
        for flt, added in [({}, [{"id": sub["id"], "index": 0}]),
                           ({"emailIds": ["Mnone"]}, [])]:
            got = await jmap.one("EmailSubmission/queryChanges", {
                "sinceQueryState": before["queryState"], "filter": flt,
                "calculateTotal": True})
            assert got["added"] == added and got["removed"] == [sub["id"]]
            assert got["total"] == len(added)

        async def arrived() -> list[str]:
            return (await jmap.one("Email/query", {"filter": {"subject": "sent over jmap"}},
                                   BOB))["ids"]
        (bobs,) = await jmap.wait_for(arrived, 30)
        got = await jmap.one("Email/get", {"ids": [bobs], "properties": [
            "from", "header:Received", "header:Bcc"]}, BOB)
        e = got["list"][0]
        assert e["from"] == [{"name": None, "email": ALICE}]
        assert "JMAP" in e["header:Received"] or "HTTPS" in e["header:Received"]
        assert e["header:Bcc"] is None  # Bcc is never sent

        # deliveryStatus (RFC 8621 7): in BOB's mailbox; carol is no user here: refused
        async def final() -> dict | None:
            got = await jmap.one("EmailSubmission/get", {"ids": [sub["id"]]})
            status = got["list"][0]["deliveryStatus"]
            return status if all(s["delivered"] != "queued" for s in status.values()) \
                else None
        status = await jmap.wait_for(final, 30)
        assert status[BOB]["delivered"] == "yes" and status[BOB]["displayed"] == "unknown"
        assert status[BOB]["smtpReply"].startswith("250 ")
        carol = status["carol@example.test"]
        assert carol["delivered"] == "no" and carol["smtpReply"].startswith("550 "), carol
    # the queue entry is gone; its outcome answers (the mta is stopped now)
    assert not list((jmap.cfg.data_dir / "queue").glob("*.msg"))
    got = await jmap.one("EmailSubmission/get", {"ids": [sub["id"]],
                                                 "properties": ["deliveryStatus"]})
    assert got["list"] == [{"id": sub["id"], "deliveryStatus": status}]


async def test_forbidden_from(jmap: JMAP) -> None:
    ident = (await jmap.one("Identity/get", {}))["list"][0]["id"]
    forged, _, _ = await _draft(jmap, frm=BOB, subject="forged")
    mine, _, _ = await _draft(jmap, subject="mine")
    got = await jmap.one("EmailSubmission/set", {"create": {
        "a": {"identityId": ident, "emailId": forged},
        "b": {"identityId": ident, "emailId": mine,
              "envelope": {"mailFrom": {"email": BOB}, "rcptTo": [{"email": BOB}]}},
        "c": {"identityId": ident, "emailId": mine,
              "envelope": {"mailFrom": {"email": ALICE},
                           "rcptTo": [{"email": "x@y.test>\r\nRCPT TO:<z@z.test"}]}},
        "d": {"identityId": "Inope", "emailId": mine}}})
    assert got["created"] is None
    kinds = {k: v["type"] for k, v in got["notCreated"].items()}
    assert kinds == {"a": "forbiddenFrom", "b": "forbiddenFrom", "c": "invalidProperties",
                     "d": "invalidProperties"}
    assert not list((jmap.cfg.data_dir / "queue").rglob("*")) or all(
        p.is_dir() for p in (jmap.cfg.data_dir / "queue").rglob("*"))
    # identity: its name can change, no other address can be added
    got = await jmap.one("Identity/set", {"update": {ident: {"name": "Alice A."}},
                                          "create": {"n": {"email": BOB}}})
    assert got["updated"] == {ident: None} and got["notCreated"]["n"]["type"] == "forbiddenFrom"
    assert (await jmap.one("Identity/get", {}))["list"][0]["name"] == "Alice A."
    got = await jmap.one("Identity/set", {"update": {ident: {
        "replyTo": [{"name": "x\r\nBcc: y", "email": "a@b.test"}]}}})
    assert got["notUpdated"][ident]["type"] == "invalidProperties"


async def test_submission_relayed_to_another_domain(config_factory) -> None:
    """Sent over JMAP to a remote domain: the mta relays it (transport route) as it relays
    mail from 587."""
    from mailstack.runtime.tls import client_context, ensure_tls_files
    from tests.conftest import add_user
    from tests.relay.sink import Script, Sink

    from .conftest import PASSWORD

    sink = await Sink(Script(rcpt_replies={"nobody": "550 5.1.1 no such user here",
                                            "later": "451 4.2.0 mailbox busy"})).start()
    try:
        cfg = config_factory('[mta]\nretry_initial = "1s"\nretry_max = "1s"\n'
                             f'[mta.transport]\n"example.net" = "127.0.0.1:{sink.port}"\n')
        add_user(cfg, ALICE, PASSWORD)
        ctx = client_context(ensure_tls_files(cfg).ca)
        async with running("http", cfg) as http, running("mda", cfg), running("mta", cfg):
            jmap = JMAP(cfg, http, ctx)
            eid, _, _ = await _draft(jmap, to="bob@example.net", subject="to the internet")
            ident = (await jmap.one("Identity/get", {}))["list"][0]["id"]
            rcpts = ["bob@example.net", "nobody@example.net", "later@example.net"]
            got = await jmap.one("EmailSubmission/set", {"create": {
                "s": {"identityId": ident, "emailId": eid, "envelope": {
                    "mailFrom": {"email": ALICE},
                    "rcptTo": [{"email": r} for r in rcpts]}}}})
            assert "s" in got["created"], got
            sid = got["created"]["s"]["id"]
            [msg] = await sink.wait(1)

            async def tried() -> dict | None:  # each recipient has an answer from the sink
                got = await jmap.one("EmailSubmission/get", {"ids": [sid]})
                status = got["list"][0]["deliveryStatus"]
                return status if status["later@example.net"]["smtpReply"].startswith(
                    "451") and status["bob@example.net"]["delivered"] != "queued" else None
            status = await jmap.wait_for(tried, 30)
            # the status moved since it was created: an update in EmailSubmission/changes
            ch = await jmap.one("EmailSubmission/changes", {"sinceState": got["oldState"]})
            assert ch["created"] == [sid] and ch["updated"] == []
            ch = await jmap.one("EmailSubmission/changes", {"sinceState": got["newState"]})
            assert ch["created"] == [] and ch["updated"] == [sid], ch
            again = await jmap.one("EmailSubmission/get", {"ids": [sid]})
            assert again["state"] == ch["newState"]  # retried with the same answer: no change
        # accepted by another MTA: no more is known; refused for good; still being retried
        assert status == {
            "bob@example.net": {"smtpReply": "250 2.0.0 queued at the sink",
                                "delivered": "unknown", "displayed": "unknown"},
            "nobody@example.net": {"smtpReply": "550 5.1.1 no such user here",
                                   "delivered": "no", "displayed": "unknown"},
            "later@example.net": {"smtpReply": "451 4.2.0 mailbox busy",
                                  "delivered": "queued", "displayed": "unknown"}}
        assert msg.sender == ALICE and msg.rcpts == ["bob@example.net"]
        assert b"Subject: to the internet" in msg.data
        assert msg.data.count(b"Received: ") == 1 and b"by mail.example.test" in msg.data
    finally:
        await sink.stop()
