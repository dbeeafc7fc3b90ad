"""Hostile HTTP clients: slow or endless requests, dripped heads, garbage; the http daemon cuts
them off and keeps serving everyone else (connection floods: tests/deploy/
test_connection_limits.py, which covers the http daemon too)."""

from __future__ import annotations

import asyncio
import base64
import time

from .conftest import ALICE, JMAP, PASSWORD


async def _connect(jmap: JMAP) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("localhost", jmap.cfg.port("http", "https"),
                                         ssl=jmap.ssl)


async def _still_serving(jmap: JMAP) -> None:
    got = await jmap.one("Mailbox/get", {"ids": []})
    assert got["list"] == []


async def test_a_body_that_never_ends_is_cut_off(jmap: JMAP) -> None:
    r, w = await _connect(jmap)
    auth = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
    w.write(f"POST /jmap/api HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"using\":".encode())
    await w.drain()
    t0 = time.monotonic()
    await _still_serving(jmap)  # meanwhile others are served
    rest = await asyncio.wait_for(r.read(), 30)  # closed (idle_timeout = 3s)
    assert b"HTTP/1.1 200" not in rest
    assert time.monotonic() - t0 >= 2.5
    w.close()


async def test_a_dripped_head_is_cut_off(jmap: JMAP) -> None:
    """One byte at a time, never idle for long, never finishing: cut off after the idle
    timeout in all."""
    r, w = await _connect(jmap)
    t0 = time.monotonic()
    head = b"GET /.well-known/jmap HTTP/1.1\r\nX-Slow: " + b"a" * 1000
    closed = False
    for byte in head:
        try:
            w.write(bytes([byte]))
            await w.drain()
        except (ConnectionError, OSError):
            closed = True
            break
        if r.at_eof():
            closed = True
            break
        await asyncio.sleep(0.2)
        if time.monotonic() - t0 > 20:
            break
    if not closed:
        assert await asyncio.wait_for(r.read(), 10) == b""
    assert time.monotonic() - t0 < 20
    w.close()
    await _still_serving(jmap)


async def test_garbage_and_huge_heads(jmap: JMAP) -> None:
    for raw in (b"\x16\x03\x01 not http at all\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n",
                b"GET /" + b"p" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        r, w = await _connect(jmap)
        w.write(raw)
        answer = await asyncio.wait_for(r.read(), 15)
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:80]
        w.close()
    await _still_serving(jmap)


async def test_concurrent_requests_per_login_are_limited(config_factory) -> None:
    import json

    from mailstack.runtime.tls import client_context, ensure_tls_files
    from tests.conftest import add_user, running

    from .conftest import USING

    cfg = config_factory("[http]\nmax_concurrent_requests = 1\n")
    add_user(cfg, ALICE, PASSWORD)
    ctx = client_context(ensure_tls_files(cfg).ca)
    async with running("http", cfg) as daemon:
        jmap = JMAP(cfg, daemon, ctx)
        body = json.dumps({"using": USING, "methodCalls": [["Core/echo", {}, "0"]]}).encode()
        r, w = await _connect(jmap)
        auth = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
        w.write(f"POST /jmap/api HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body[:5])  # holds the login's one slot while its body comes
        await w.drain()

        async def refused() -> bool:
            async with jmap.client() as c:
                resp = await c.post("/jmap/api", content=body,
                                    headers={"content-type": "application/json"})
            return resp.status_code == 400 and resp.json().get("limit") == \
                "maxConcurrentRequests"
        await jmap.wait_for(refused)
        w.write(body[5:])  # the first request completes and the slot is free again
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 15)
        assert head.startswith(b"HTTP/1.1 200")
        w.close()
        resp = await jmap.call([["Core/echo", {"again": True}, "0"]])
        assert resp[0][1] == {"again": True}


async def test_states_and_indexes_that_are_not_numbers(jmap: JMAP) -> None:
    """Unicode digits (``²``) and numbers too long for ``int()`` in states, JSON pointers and
    ids: a method error or not found, never a server failure."""
    aid = jmap.account()
    for bad in ("²", "9" * 5000, "", "-1", "1e3"):
        calls = [["Email/changes", {"accountId": aid, "sinceState": bad}, "a"],
                 ["Email/queryChanges", {"accountId": aid, "sinceQueryState": bad}, "b"],
                 ["Mailbox/queryChanges", {"accountId": aid, "sinceQueryState": bad}, "c"],
                 ["EmailSubmission/changes", {"accountId": aid, "sinceState": bad}, "d"],
                 ["EmailSubmission/queryChanges", {"accountId": aid, "sinceQueryState": bad},
                  "e"],
                 ["Mailbox/get", {"accountId": aid, "ids": ["B" + bad]}, "f"],
                 ["Email/get", {"accountId": aid, "#ids": {
                     "resultOf": "f", "name": "Mailbox/get", "path": f"/notFound/{bad}"}}, "g"]]
        got = await jmap.call(calls[:4])
        got += await jmap.call(calls[4:])
        kinds = [r[1].get("type") if r[0] == "error" else r[0] for r in got]
        assert kinds == ["cannotCalculateChanges"] * 5 + ["Mailbox/get",
                                                          "invalidResultReference"], (bad, got)
        assert got[5][1]["notFound"] == ["B" + bad]
