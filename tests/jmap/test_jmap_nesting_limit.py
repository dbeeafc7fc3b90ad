"""The JSON nesting limit is 64 levels (SECURITY.md), checked at its edge: a request whose
deepest value sits inside 64 arrays and objects is served, one level more is refused with a
problem and the daemon goes on serving."""

from __future__ import annotations

import json

from .conftest import JMAP, USING

#: containers around the echoed argument: the request, methodCalls, the call, the arguments
OUTER = 4


def _request(levels: int) -> tuple[bytes, object]:
    inner: object = "deepest"
    for _ in range(levels - OUTER):
        inner = [inner]
    body = {"using": USING, "methodCalls": [["Core/echo", {"x": inner}, "0"]]}
    return json.dumps(body).encode(), inner


async def test_nesting_of_64_levels_is_served_65_refused(jmap: JMAP) -> None:
    async with jmap.client() as c:
        body, inner = _request(64)
        r = await c.post("/jmap/api", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["methodResponses"] == [["Core/echo", {"x": inner}, "0"]]
        body, _ = _request(65)
        r = await c.post("/jmap/api", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"] == "urn:ietf:params:jmap:error:notRequest"
        assert "64" in r.json()["detail"]
    resp = await jmap.call([["Core/echo", {"again": True}, "0"]])
    assert resp == [["Core/echo", {"again": True}, "0"]]
