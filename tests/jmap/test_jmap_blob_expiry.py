"""Uploaded blobs are kept a day (docs/jmap.md: "kept a day in `<account>/jmap-blobs/`"): an
upload older than that is removed by the next upload, a younger one stays."""

from __future__ import annotations

import os
import time

from .conftest import JMAP, message

DAY = 86400


async def test_uploads_older_than_a_day_are_pruned(jmap: JMAP) -> None:
    aid = jmap.account()
    blobs = jmap.cfg.data_dir / "mail" / "example.test" / "alice" / "jmap-blobs"
    async with jmap.client() as c:
        async def upload(data: bytes) -> str:
            r = await c.post(f"/jmap/upload/{aid}/", content=data)
            assert r.status_code == 201, r.text
            return r.json()["blobId"]

        old = await upload(message("old upload"))
        young = await upload(message("young upload"))
        now = time.time()
        os.utime(blobs / old, (now - DAY - 3600, now - DAY - 3600))  # 25 hours ago
        os.utime(blobs / young, (now - DAY + 3600, now - DAY + 3600))  # 23 hours ago
        new = await upload(message("new upload"))  # an upload prunes the account's old ones
        assert not (blobs / old).exists()
        assert sorted(p.name for p in blobs.iterdir()) == sorted([young, new])
        r = await c.get(f"/jmap/download/{aid}/{old}/x.eml")
        assert r.status_code == 404
        for blob in (young, new):
            r = await c.get(f"/jmap/download/{aid}/{blob}/x.eml")
            assert r.status_code == 200 and b"upload" in r.content
    inbox = (await jmap.one("Mailbox/query", {"filter": {"role": "inbox"}}))["ids"][0]
    got = await jmap.one("Email/import", {"emails": {
        "a": {"blobId": old, "mailboxIds": {inbox: True}},
        "b": {"blobId": young, "mailboxIds": {inbox: True}}}})
    # RFC 8621 4.8: a blobId not found is invalidProperties
    refused = got["notCreated"]["a"]
    assert (refused["type"], refused["properties"]) == ("invalidProperties", ["blobId"]), got
    assert "b" in got["created"], got
