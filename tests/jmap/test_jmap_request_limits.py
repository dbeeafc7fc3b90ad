"""The JMAP limits of the session are enforced, not only announced: ``maxObjectsInGet`` and
``maxObjectsInSet`` (``requestTooLarge``, nothing changed) and ``maxConcurrentUpload`` per
login (README: `[http]` limits; SECURITY.md: objects and concurrent requests per login)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from mailstack.runtime.tls import client_context, ensure_tls_files
from tests.conftest import add_user, running

from .conftest import ALICE, BOB, JMAP, PASSWORD, message

LIMITS = "[http]\nmax_objects_in_get = 5\nmax_objects_in_set = 5\nmax_concurrent_upload = 1\n"


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


async def test_objects_in_get_and_set_are_limited(config_factory) -> None:
    cfg = config_factory(LIMITS)
    add_user(cfg, ALICE, PASSWORD)
    async with running("http", cfg) as daemon:
        jmap = JMAP(cfg, daemon, client_context(ensure_tls_files(cfg).ca))
        for i in range(6):
            jmap.deliver(message(f"m{i}"))
        ids = (await jmap.one("Email/query", {}))["ids"]
        boxes = (await jmap.one("Mailbox/get", {}))["list"]
        box_ids = [b["id"] for b in boxes]
        assert len(ids) == 6 and len(box_ids) == 5
        root = cfg.data_dir / "mail" / "example.test" / "alice"
        before = _names(root)
        aid = jmap.account()
        calls = [
            ["Email/get", {"accountId": aid, "ids": ids}, "a"],
            ["Mailbox/get", {"accountId": aid, "ids": [*box_ids, "Mnope"]}, "b"],
            ["Email/set", {"accountId": aid, "destroy": ids}, "c"],
            ["Mailbox/set", {"accountId": aid, "create": {
                f"n{i}": {"name": f"new{i}"} for i in range(6)}}, "d"],
            ["Email/get", {"accountId": aid, "ids": ids[:5], "properties": ["id"]}, "e"],
        ]
        resp = await jmap.call(calls)
        for (name, args, tag) in resp[:4]:
            assert (name, args.get("type")) == ("error", "requestTooLarge"), (tag, args)
        assert resp[4][0] == "Email/get" and len(resp[4][1]["list"]) == 5  # at the limit
        assert len((await jmap.one("Email/query", {}))["ids"]) == 6
        assert len((await jmap.one("Mailbox/get", {}))["list"]) == 5
        assert _names(root) == before


async def _answer(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(status line and headers, body) of one HTTP/1.1 response with a Content-Length."""
    head = await r.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head, await r.readexactly(length)


async def test_concurrent_uploads_per_login_are_limited(config_factory) -> None:
    cfg = config_factory(LIMITS)
    add_user(cfg, ALICE, PASSWORD)
    add_user(cfg, BOB, PASSWORD)
    async with running("http", cfg) as daemon:
        jmap = JMAP(cfg, daemon, client_context(ensure_tls_files(cfg).ca))
        aid = jmap.account()
        auth = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
        body = b"x" * 1000

        async def hold() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            """An upload whose body stops after 10 octets: it keeps a slot while it waits."""
            r, w = await asyncio.open_connection("localhost", cfg.port("http", "https"),
                                                 ssl=jmap.ssl)
            w.write(f"POST /jmap/upload/{aid}/ HTTP/1.1\r\nHost: localhost\r\n"
                    f"Authorization: Basic {auth}\r\n"
                    "Content-Type: application/octet-stream\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
            await w.drain()
            return r, w

        # two held uploads of alice's: whichever the server reaches second is refused at
        # once (the other holds her one slot), whatever order a loaded machine takes them in
        held = [await hold(), await hold()]
        answers = {asyncio.ensure_future(_answer(r)): i for i, (r, _) in enumerate(held)}
        done, _ = await asyncio.wait(answers, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert done, "neither upload was refused"
        first = done.pop()
        head, refusal = first.result()
        assert head.startswith(b"HTTP/1.1 400"), head
        assert json.loads(refusal).get("limit") == "maxConcurrentUpload", refusal
        _, w = held[1 - answers.pop(first)]
        [waiting] = answers  # the holder's answer comes once its body is complete
        async with jmap.client(BOB) as c:  # another login is not held up by alice's
            resp = await c.post(f"/jmap/upload/{jmap.account(BOB)}/", content=b"bob's")
        assert resp.status_code == 201, resp.text
        assert not waiting.done()
        w.write(body[10:])
        await w.drain()
        head, _ = await asyncio.wait_for(waiting, 60)
        assert head.startswith(b"HTTP/1.1 201"), head
        for _, writer in held:
            writer.close()
        async with jmap.client() as c:  # the slot is free again
            resp = await c.post(f"/jmap/upload/{aid}/", content=b"third")
        assert resp.status_code == 201, resp.text
