"""JMAP core (RFC 8620) over real sockets: the session, auth, echo, references, limits, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess

import httpx

from tests.e2e.helpers import mailstack

from .conftest import ALICE, BOB, JMAP, PASSWORD, USING


async def test_session_with_curl_over_https(jmap: JMAP) -> None:
    """The README's line: curl with the CA, Basic auth, the well-known URL."""
    r = await asyncio.to_thread(
        subprocess.run, ["curl", "-s", "--fail", "-u", f"{ALICE}:{PASSWORD}", "--cacert",
                         str(jmap.cfg.data_dir / "tls" / "ca.pem"),
                         f"{jmap.base}/.well-known/jmap"],
        capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    core = s["capabilities"]["urn:ietf:params:jmap:core"]
    for key in ("maxSizeUpload", "maxConcurrentUpload", "maxSizeRequest", "maxConcurrentRequests",
                "maxCallsInRequest", "maxObjectsInGet", "maxObjectsInSet"):
        assert isinstance(core[key], int) and core[key] > 0
    assert core["maxCallsInRequest"] == 8 and "i;unicode-casemap" in core["collationAlgorithms"]
    assert s["username"] == ALICE
    assert s["primaryAccounts"]["urn:ietf:params:jmap:mail"] == jmap.account()
    assert s["apiUrl"] == f"{jmap.base}/jmap/api"
    for key in ("downloadUrl", "uploadUrl", "eventSourceUrl"):
        assert s[key].startswith(jmap.base)
    assert "{blobId}" in s["downloadUrl"] and "{name}" in s["downloadUrl"]


async def test_auth_required_and_wrong_password_refused(jmap: JMAP) -> None:
    async with httpx.AsyncClient(base_url=jmap.base, verify=jmap.ssl) as c:
        r = await c.get("/.well-known/jmap")
        assert r.status_code == 401 and "basic" in r.headers["www-authenticate"].lower()
        r = await c.get("/.well-known/jmap", auth=(ALICE, "wrong"))
        assert r.status_code == 401
        r = await c.get("/.well-known/jmap", headers={"authorization": "Basic %%%"})
        assert r.status_code == 401
    await jmap.http.wait_log(f"http auth failed for '{ALICE}'")
    assert "wrong" not in jmap.http.log()  # no credential in the log
    async with jmap.client() as c:  # the right one still works
        assert (await c.get("/.well-known/jmap")).status_code == 200


async def test_plain_http_logins_only_on_loopback(config_factory) -> None:
    from mailstack.runtime.tls import client_context, ensure_tls_files
    from tests.conftest import NON_LOOPBACK, NON_LOOPBACK_EXTRA, add_user, running

    cfg = config_factory(NON_LOOPBACK_EXTRA)
    add_user(cfg, ALICE, PASSWORD)
    ensure_tls_files(cfg)
    port = cfg.port("http", "http")
    async with running("http", cfg):
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(f"http://{NON_LOOPBACK}:{port}/.well-known/jmap",
                            auth=(ALICE, PASSWORD))
            assert r.status_code == 403 and "HTTPS" in r.text
            r = await c.get(f"http://127.0.0.1:{port}/.well-known/jmap", auth=(ALICE, PASSWORD))
            assert r.status_code == 200
            # the autoconfig pages stay open to everyone over plain HTTP
            r = await c.get(f"http://{NON_LOOPBACK}:{port}/mail/config-v1.1.xml")
            assert r.status_code == 200
        ctx = client_context(cfg.data_dir / "tls" / "ca.pem")
        async with httpx.AsyncClient(verify=ctx, timeout=30) as c:
            r = await c.get(f"https://localhost:{cfg.port('http', 'https')}/.well-known/jmap",
                            auth=(ALICE, PASSWORD))
            assert r.status_code == 200


async def test_bearer_app_tokens(jmap: JMAP) -> None:
    cfg = jmap.cfg.source
    token = (await asyncio.to_thread(mailstack, "user", "token", ALICE, "--config", cfg)
             ).stdout.strip()
    assert token.startswith("mst_") and len(token) > 30
    assert token not in (jmap.cfg.data_dir / "tokens").read_text()  # only its digest
    async with httpx.AsyncClient(base_url=jmap.base, verify=jmap.ssl) as c:
        r = await c.get("/.well-known/jmap", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["username"] == ALICE
        r = await c.get("/.well-known/jmap", headers={"authorization": f"Bearer {token}x"})
        assert r.status_code == 401
        await asyncio.to_thread(mailstack, "user", "token", ALICE, "--revoke", "--config", cfg)
        r = await c.get("/.well-known/jmap", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 401


async def test_echo_references_and_creation_ids(jmap: JMAP) -> None:
    aid = jmap.account()
    resp = await jmap.call([
        ["Core/echo", {"hello": [1, 2, {"x": None}]}, "e"],
        ["Mailbox/set", {"accountId": aid, "create": {"top": {"name": "Projects"}}}, "m"],
        ["Mailbox/set", {"accountId": aid, "create": {
            "kid": {"name": "Alpha", "parentId": "#top"}}}, "k"],
        ["Mailbox/get", {"accountId": aid, "ids": ["#kid"]}, "g"],
        ["Mailbox/query", {"accountId": aid, "filter": {"hasAnyRole": True},
                           "sort": [{"property": "name"}]}, "q"],
        ["Mailbox/get", {"accountId": aid, "properties": ["role", "name"], "#ids": {
            "resultOf": "q", "name": "Mailbox/query", "path": "/ids"}}, "r"],
    ])
    assert resp[0] == ["Core/echo", {"hello": [1, 2, {"x": None}]}, "e"]
    top = resp[1][1]["created"]["top"]["id"]
    (kid,) = resp[3][1]["list"]
    assert kid["name"] == "Alpha" and kid["parentId"] == top
    roles = [m["role"] for m in resp[5][1]["list"]]
    assert set(roles) == {"inbox", "drafts", "sent", "trash", "junk"}
    # createdIds in the request and in the response
    async with jmap.client() as c:
        r = await c.post("/jmap/api", json={
            "using": USING, "createdIds": {"given": top},
            "methodCalls": [["Mailbox/get", {"accountId": aid, "ids": ["#given"]}, "x"]]})
        body = r.json()
        assert body["createdIds"] == {"given": top}
        assert body["methodResponses"][0][1]["list"][0]["name"] == "Projects"


async def test_method_errors(jmap: JMAP) -> None:
    aid = jmap.account()
    resp = await jmap.call([
        ["Nope/get", {"accountId": aid}, "a"],
        ["Mailbox/get", {"accountId": jmap.account(BOB)}, "b"],
        ["Mailbox/get", {"accountId": aid, "ids": "notalist"}, "c"],
        ["Mailbox/get", {"accountId": aid, "#ids": {"resultOf": "zz", "name": "Mailbox/get",
                                                    "path": "/ids"}}, "d"],
        ["Mailbox/get", {"accountId": aid, "#ids": {"resultOf": "c", "name": "Mailbox/get",
                                                    "path": "/nothing/here"}}, "e"],
        ["Email/changes", {"accountId": aid, "sinceState": "999999999"}, "f"],
        ["Mailbox/set", {"accountId": aid, "ifInState": "0", "create": {}}, "g"],
        ["Mailbox/set", {"accountId": aid, "create": {
            "a": {"name": "A", "parentId": "#b"}, "b": {"name": "B", "parentId": "#a"}}}, "h"],
    ])
    kinds = [r[1]["type"] if r[0] == "error" else None for r in resp]
    assert kinds[:7] == ["unknownMethod", "accountNotFound", "invalidArguments",
                         "invalidResultReference", "invalidResultReference",
                         "cannotCalculateChanges", "stateMismatch"]
    assert resp[7][1]["created"] is None and set(resp[7][1]["notCreated"]) == {"a", "b"}
    await jmap.http.wait_log(f"jmap {ALICE} Nope/get: unknownMethod")
    # a creation id stands for the new id in update and destroy of later calls
    resp = await jmap.call([
        ["Mailbox/set", {"accountId": aid, "create": {"t": {"name": "Temp"}}}, "0"],
        ["Mailbox/set", {"accountId": aid, "update": {"#t": {"name": "Temp2"}}}, "1"],
        ["Mailbox/set", {"accountId": aid, "destroy": ["#t"]}, "2"]])
    new = resp[0][1]["created"]["t"]["id"]
    assert resp[1][1]["updated"] == {new: None} and resp[2][1]["destroyed"] == [new], resp


async def test_request_level_errors(jmap: JMAP) -> None:
    aid = jmap.account()
    async with jmap.client() as c:
        async def post(body: bytes, ctype: str = "application/json") -> httpx.Response:
            return await c.post("/jmap/api", content=body, headers={"content-type": ctype})

        cases = [
            (b"{not json", "application/json", "notJSON"),
            (json.dumps({"using": USING, "methodCalls": []}).encode(), "text/plain", "notJSON"),
            (b'{"using": "x"}', "application/json", "notRequest"),
            (json.dumps({"using": [*USING, "urn:x:nope"], "methodCalls": []}).encode(),
             "application/json", "unknownCapability"),
            (json.dumps({"using": USING, "methodCalls": [["Core/echo", {}, str(i)]
                                                          for i in range(9)]}).encode(),
             "application/json", "limit"),
            (b"[" * 10000 + b"]" * 10000, "application/json", "notJSON"),
        ]
        for body, ctype, kind in cases:
            r = await post(body, ctype)
            assert r.status_code == 400, (kind, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["type"] == f"urn:ietf:params:jmap:error:{kind}"
        assert r.status_code == 400
        r = await post(json.dumps({"using": USING, "methodCalls": [
            ["Core/echo", {"p": "x" * 200_000}, "0"]]}).encode())
        assert r.status_code == 413 and r.json()["limit"] == "maxSizeRequest"
        # still serving, the same connection or a new one
        resp = await jmap.call([["Mailbox/get", {"accountId": aid, "ids": []}, "0"]])
        assert resp[0][0] == "Mailbox/get"
    assert "notJSON" in jmap.http.log()


async def test_oversized_request_refused_before_its_body(jmap: JMAP) -> None:
    """A Content-Length over maxSizeRequest is answered at once; the body is never read."""
    r, w = await asyncio.open_connection("localhost", jmap.cfg.port("http", "https"),
                                         ssl=jmap.ssl)
    auth = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
    w.write(f"POST /jmap/api HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n"
            "Content-Type: application/json\r\nContent-Length: 900000000\r\n\r\n".encode())
    await w.drain()
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 413")
    w.close()


async def test_upload_and_download(jmap: JMAP) -> None:
    aid = jmap.account()
    async with jmap.client() as c:
        r = await c.post(f"/jmap/upload/{aid}/", content=b"\x00\x01binary",
                         headers={"content-type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        up = r.json()
        assert up["size"] == 8 and up["accountId"] == aid and up["type"] == \
            "application/octet-stream"
        r = await c.get(f"/jmap/download/{aid}/{up['blobId']}/x.bin",
                        params={"type": "application/octet-stream"})
        assert r.status_code == 200 and r.content == b"\x00\x01binary"
        assert "x.bin" in r.headers["content-disposition"]
        # over maxSizeUpload: refused by its Content-Length, nothing stored
        r = await c.post(f"/jmap/upload/{aid}/", content=b"x" * 300_000)
        assert r.status_code == 413 and r.json()["limit"] == "maxSizeUpload"
        # another user's account or blob: never visible
        r = await c.post(f"/jmap/upload/{jmap.account(BOB)}/", content=b"x")
        assert r.status_code == 404
    async with jmap.client(BOB) as c:
        r = await c.get(f"/jmap/download/{jmap.account(BOB)}/{up['blobId']}/x.bin")
        assert r.status_code == 404
        r = await c.get(f"/jmap/download/{aid}/{up['blobId']}/x.bin")
        assert r.status_code == 404


async def test_a_changed_password_stops_working_at_once(jmap: JMAP) -> None:
    """Verified credentials are remembered, keyed with the stored hash: a new password
    invalidates them without a restart."""
    async with jmap.client() as c:
        for _ in range(3):
            assert (await c.get("/.well-known/jmap")).status_code == 200
    await asyncio.to_thread(mailstack, "user", "passwd", ALICE, "--password-stdin",
                            "--config", jmap.cfg.source, input="new-secret\n")
    async with jmap.client() as c:
        assert (await c.get("/.well-known/jmap")).status_code == 401
    async with jmap.client(ALICE, "new-secret") as c:
        assert (await c.get("/.well-known/jmap")).status_code == 200


async def test_chunked_uploads_are_counted_as_they_arrive(jmap: JMAP) -> None:
    """Without a Content-Length: written to disk as it comes, cut off past maxSizeUpload,
    nothing kept of a refused upload."""
    aid = jmap.account()

    async def pieces(n: int):
        for _ in range(n):
            yield b"z" * 50_000

    async with jmap.client() as c:
        r = await c.post(f"/jmap/upload/{aid}/", content=pieces(3))  # 150,000 octets
        assert r.status_code == 201 and r.json()["size"] == 150_000
        r = await c.post(f"/jmap/upload/{aid}/", content=pieces(6))  # 300,000 > 200,000
        assert r.status_code == 413 and r.json()["limit"] == "maxSizeUpload"
    kept = sorted(p.name for p in (jmap.inbox().root / "jmap-blobs").iterdir())
    assert len(kept) == 1 and kept[0].startswith("G")  # no partial upload left behind


async def test_both_event_loops(config_factory, daemon_loop: str) -> None:
    """uvicorn's protocol over the runtime's TLS layer on uvloop and on plain asyncio."""
    from mailstack.runtime.tls import client_context, ensure_tls_files
    from tests.conftest import add_user, running

    cfg = config_factory(daemon_loop)
    add_user(cfg, ALICE, PASSWORD)
    ctx = client_context(ensure_tls_files(cfg).ca)
    async with running("http", cfg) as daemon:
        jmap = JMAP(cfg, daemon, ctx)
        async with jmap.client() as c:
            assert (await c.get("/.well-known/jmap")).status_code == 200
            async with c.stream("GET", "/jmap/eventsource",
                                params={"types": "*", "closeafter": "no", "ping": "1"}) as r:
                lines = r.aiter_lines()
                seen = []
                while "event: ping" not in seen:
                    seen.append(await asyncio.wait_for(anext(lines), 15))
        resp = await jmap.call([["Core/echo", {"loop": daemon_loop}, "0"]])
        assert resp[0][1] == {"loop": daemon_loop}
    assert "event loop: " + daemon_loop.split('"')[1] in daemon.log()
