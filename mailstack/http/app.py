"""The HTTP daemon's application (Starlette): autoconfig pages, the JMAP session, API, blobs
and event streams.

JMAP requests are parsed and checked here (size, content type, limits), then run by
``mailstack.jmap`` against the store in a worker thread (SQLite and file reads block);
``Core/echo``-only requests are answered on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from ..autoconfig.site import PATHS as AUTOCONFIG_PATHS
from ..autoconfig.site import AutoconfigSite
from ..config import Config
from ..jmap import blob as blobs
from ..jmap import email as _email  # noqa: F401  (registers the methods)
from ..jmap import mailbox as _mailbox  # noqa: F401
from ..jmap import pushsub as _pushsub  # noqa: F401
from ..jmap import submission as _submission  # noqa: F401
from ..jmap import vacation as _vacation  # noqa: F401
from ..jmap.account import Account, account_id
from ..jmap.core import ProblemError, dispatch, is_core_only, parse_request
from ..jmap.session import limits, session
from ..runtime.health import HEALTH_PATH
from ..runtime.logsafe import safe
from ..runtime.tls import TLSFiles
from ..store.maildir import open_user_mailbox
from .auth import Authenticator
from .push import TYPES, AccountHub
from .webhook import Webhooks

log = logging.getLogger("mailstack.http")
JSON_TYPE = "application/json"
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
_CHARSET = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}")


def _download_type(asked: str) -> str:
    """The Content-Type of a download: the ``type`` asked for (a media type, optionally with
    a charset parameter), else application/octet-stream."""
    media, _, param = asked.partition(";")
    media = media.strip()
    if not _MEDIA_TYPE.fullmatch(media):
        return "application/octet-stream"
    key, _, charset = param.partition("=")
    if param and (key.strip().lower() != "charset"
                  or not _CHARSET.fullmatch(charset.strip().strip('"'))):
        return media
    return f"{media}; charset={charset.strip().strip(chr(34))}" if param else media
PING_MIN = 1
CHANGING = ("/set", "/import", "/copy")
#: every route answers every method itself (405 with its Allow header)
ANY = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def problem(exc: ProblemError, close: bool = False) -> Response:
    headers = {"connection": "close"} if close else None
    return Response(json.dumps(exc.body()), exc.status, headers=headers,
                    media_type="application/problem+json")


class HTTPApp:
    """The ASGI application; :meth:`start` and :meth:`stop` bracket the daemon's life."""

    def __init__(self, cfg: Config, files: TLSFiles) -> None:
        self.cfg = cfg
        self.site = AutoconfigSite(cfg, files)
        self.auth = Authenticator(cfg)
        self.limits = limits(cfg.http)
        self.hubs: dict[Path, AccountHub] = {}
        self.webhooks = Webhooks(self.hub)
        self.busy: dict[str, int] = {}  # requests (and uploads) in progress per login
        self.stopping: asyncio.Event | None = None
        self.roots: dict[str, Path] = {}
        self.router = Router(routes=[
            *(Route(p, self.autoconfig, methods=ANY) for p in AUTOCONFIG_PATHS),
            Route("/.well-known/jmap", self.session, methods=ANY),
            Route("/jmap/session", self.session, methods=ANY),
            Route("/jmap/api", self.api, methods=ANY),
            Route("/jmap/api/", self.api, methods=ANY),
            Route("/jmap/upload/{account}", self.upload, methods=ANY),
            Route("/jmap/upload/{account}/", self.upload, methods=ANY),
            Route("/jmap/download/{account}/{blob}/{name}", self.download, methods=ANY),
            Route("/jmap/eventsource", self.events, methods=ANY),
        ])

    async def start(self) -> None:
        self.stopping = asyncio.Event()
        try:
            self.webhooks.start_existing(self.cfg.data_dir, account_id)
        except OSError as exc:
            log.warning("push subscriptions not resumed: %s", exc)

    def hub(self, root: Path, aid: str) -> AccountHub:
        """The account's change hub in this process (made on first use)."""
        hub = self.hubs.get(root)
        if hub is None:
            hub = self.hubs[root] = AccountHub(root, aid, self.hubs)
        return hub

    async def stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()
        for hub in list(self.hubs.values()):
            hub.close()
        await self.webhooks.close()
        self.auth.close()

    # -- ASGI entry: an access log line per request ------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status = 0
        sent = 0
        started = time.monotonic()

        async def logged_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)
        try:
            await self.router(scope, receive, logged_send)
        finally:
            client = scope.get("client")
            path = scope.get("path", "")
            level = logging.DEBUG if path == HEALTH_PATH else logging.INFO
            log.log(level, "%s %s %s %s %d %d %.1fms", client[0] if client else "-",
                    scope.get("scheme"), safe(scope.get("method"), 10), safe(path, 200),
                    status, sent, (time.monotonic() - started) * 1000)

    # -- autoconfig -------------------------------------------------------------------------
    async def autoconfig(self, request: Request) -> Response:
        status, ctype, body = self.site.respond(request.method, request.url.path,
                                                request.headers.get("host", ""))
        headers = {"cache-control": "no-cache"}
        if status == 405:
            headers["allow"] = "GET, HEAD"
        return Response(body if request.method != "HEAD" else b"", status, headers=headers,
                        media_type=ctype)

    # -- authentication -----------------------------------------------------------------------
    async def login(self, request: Request) -> str | Response:
        scope = request.scope
        server = scope.get("server")
        client = scope.get("client")
        result = await self.auth.check(request.headers.get("authorization"), scope["scheme"],
                                       server[0] if server else None,
                                       client[0] if client else "unknown")
        if result.address is not None:
            return result.address
        headers = {"www-authenticate": 'Basic realm="mailstack", charset="UTF-8"'} \
            if result.status == 401 else {}
        return JSONResponse({"type": "about:blank", "status": result.status,
                             "detail": result.reason}, result.status, headers=headers,
                            media_type="application/problem+json")

    def base_url(self, request: Request) -> str:
        host = request.headers.get("host", "")
        if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,260}", host):
            host = self.cfg.server.hostname
        return f"{request.url.scheme}://{host}"

    async def account_root(self, address: str) -> Path:
        root = self.roots.get(address)
        if root is None:
            root = (await asyncio.to_thread(open_user_mailbox, self.cfg.data_dir, address)).root
            if len(self.roots) > 10_000:
                self.roots.clear()
            self.roots[address] = root
        return root

    # -- session ------------------------------------------------------------------------------
    async def session(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(status_code=405, headers={"allow": "GET, HEAD"})
        who = await self.login(request)
        if isinstance(who, Response):
            return who
        await self.account_root(who)  # the account's folders exist before a client asks
        body = session(self.cfg.http, who, self.base_url(request), self.session_state(who))
        return JSONResponse(body, headers={"cache-control": "no-cache, no-store"})

    def session_state(self, address: str) -> str:
        return hashlib.sha256(f"{address}\0{self.cfg.http}".encode()).hexdigest()[:16]

    # -- API ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def slot(self, key: str, limit: int) -> Iterator[bool]:
        """One of ``limit`` concurrent slots of ``key`` (a login): True when one was free."""
        if self.busy.get(key, 0) >= limit:
            yield False
            return
        self.busy[key] = self.busy.get(key, 0) + 1
        try:
            yield True
        finally:
            n = self.busy[key] - 1
            if n > 0:
                self.busy[key] = n
            else:
                del self.busy[key]

    async def read_body(self, request: Request, limit: int) -> bytes | Response:
        """The request body, refused (without reading it) when it is over ``limit``."""
        length = request.headers.get("content-length")
        too_big = ProblemError("limit", f"the request is over {limit} octets", 413,
                               limit="maxSizeRequest")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return problem(too_big, close=True)
        buf = bytearray()
        try:
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    return problem(too_big, close=True)
        except ClientDisconnect:  # cut off (idle timeout) or gone: nobody to answer
            return Response(status_code=400, headers={"connection": "close"})
        return bytes(buf)

    async def api(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405, headers={"allow": "POST"})
        who = await self.login(request)
        if isinstance(who, Response):
            return who
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != JSON_TYPE:
            return problem(ProblemError("notJSON", "the content type must be application/json"))
        with self.slot(who, self.cfg.http.max_concurrent_requests) as free:
            if not free:
                return problem(ProblemError("limit", "too many requests at once",
                                            limit="maxConcurrentRequests"))
            body = await self.read_body(request, self.limits.max_size_request)
            if isinstance(body, Response):
                return body
            try:
                req = parse_request(body, self.limits)
            except ProblemError as exc:
                log.info("jmap %s: %s: %s", who, exc.kind, exc.detail)
                return problem(exc)
            aid = account_id(who)
            if is_core_only(req):
                out = dispatch(req, None, self.limits, aid)
            else:
                root = await self.account_root(who)
                account = Account(who, root, self.cfg)
                out = await asyncio.to_thread(dispatch, req, account, self.limits, aid)
                if any(c[0].endswith(CHANGING) for c in req["methodCalls"]):
                    hub = self.hubs.get(root)
                    if hub is not None:
                        hub.poke()
                self.webhooks.send(account.outbox)
                if any(c[0] == "PushSubscription/set" for c in req["methodCalls"]):
                    self.webhooks.watch(root, aid)
            out["sessionState"] = self.session_state(who)
            return Response(json.dumps(out, separators=(",", ":")), media_type=JSON_TYPE)

    # -- blobs --------------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405, headers={"allow": "POST"})
        who = await self.login(request)
        if isinstance(who, Response):
            return who
        if request.path_params["account"] != account_id(who):
            return problem(ProblemError("notFound", "no such account", 404))
        with self.slot(f"upload:{who}", self.cfg.http.max_concurrent_upload) as free:
            if not free:
                return problem(ProblemError("limit", "too many uploads at once",
                                            limit="maxConcurrentUpload"))
            limit = int(self.cfg.http.max_size_upload)
            length = request.headers.get("content-length")
            too_big = problem(ProblemError("limit", f"the upload is over {limit} octets", 413,
                                           limit="maxSizeUpload"), close=True)
            if length is not None and (not length.isdigit() or int(length) > limit):
                return too_big  # refused before a byte of it is read
            root = await self.account_root(who)
            upload = await asyncio.to_thread(blobs.Upload, root)
            try:  # written as it arrives: memory stays bounded whatever the size
                async for piece in request.stream():
                    if upload.size + len(piece) > limit:
                        return too_big
                    await asyncio.to_thread(upload.write, piece)
                bid = await asyncio.to_thread(upload.finish)
            except ClientDisconnect:
                return Response(status_code=400, headers={"connection": "close"})
            finally:
                await asyncio.to_thread(upload.abort)
        ctype = request.headers.get("content-type", "application/octet-stream")
        if not _MEDIA_TYPE.fullmatch(ctype.split(";")[0].strip()):
            ctype = "application/octet-stream"
        return JSONResponse({"accountId": account_id(who), "blobId": bid,
                             "type": ctype.split(";")[0].strip(), "size": upload.size}, 201)

    async def download(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(status_code=405, headers={"allow": "GET, HEAD"})
        who = await self.login(request)
        if isinstance(who, Response):
            return who
        if request.path_params["account"] != account_id(who):
            return Response("not found\n", 404, media_type="text/plain")
        root = await self.account_root(who)
        data = await asyncio.to_thread(blobs.blob_bytes, Account(who, root),
                                       request.path_params["blob"])
        if data is None:
            return Response("not found\n", 404, media_type="text/plain")
        ctype = _download_type(request.query_params.get("type", ""))
        name = request.path_params["name"]
        fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
        disposition = (f'attachment; filename="{fallback}"; '
                       f"filename*=UTF-8''{quote(name, safe='')}")
        # the type exactly as asked (RFC 8620 6.2): no charset added to a text/* type
        return Response(data if request.method == "GET" else b"",
                        headers={"content-type": ctype, "content-disposition": disposition,
                                 "cache-control": "private, immutable, max-age=31536000",
                                 "x-content-type-options": "nosniff"})

    # -- push ---------------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        if request.method != "GET":
            return Response(status_code=405, headers={"allow": "GET"})
        who = await self.login(request)
        if isinstance(who, Response):
            return who
        q = request.query_params
        types_arg = q.get("types", "*")
        wanted = set(TYPES) if types_arg == "*" else {t for t in types_arg.split(",") if t}
        closeafter = q.get("closeafter", "no")
        ping_arg = q.get("ping", "0")
        if closeafter not in ("state", "no") or not ping_arg.isdigit() or len(ping_arg) > 6:
            return Response("bad closeafter or ping\n", 400, media_type="text/plain")
        ping = int(ping_arg)
        if ping:
            ping = max(ping, PING_MIN)
        root = await self.account_root(who)
        hub = self.hub(root, account_id(who))
        stream = hub.subscribe()
        stopping = self.stopping

        async def lines() -> AsyncIterator[bytes]:
            try:
                await hub.ready.wait()
                yield b": mailstack event stream\n\n"  # from here on, changes are pushed
                while stopping is None or not stopping.is_set():
                    try:
                        change = await asyncio.wait_for(stream.get(), ping or None)
                    except TimeoutError:
                        yield f"event: ping\ndata: {json.dumps({'interval': ping})}\n\n".encode()
                        continue
                    if change is None:  # the daemon stops
                        return
                    mine = {aid: {t: s for t, s in types.items() if t in wanted}
                            for aid, types in change["changed"].items()}
                    mine = {aid: types for aid, types in mine.items() if types}
                    if not mine:
                        continue
                    data = json.dumps({"@type": "StateChange", "changed": mine})
                    yield f"event: state\ndata: {data}\n\n".encode()
                    if closeafter == "state":
                        return
            finally:
                hub.unsubscribe(stream)

        return StreamingResponse(lines(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache",
                                          "x-accel-buffering": "no"})

