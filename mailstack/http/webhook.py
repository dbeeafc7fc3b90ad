"""PushSubscription delivery: POST PushVerification and StateChange objects to the callback
URLs the subscriptions name (RFC 8620 7.2), from the http daemon.

URLs were checked against ``[http] push_allowlist`` when the subscription was made; requests
never follow redirects, time out after :data:`TIMEOUT` seconds, and a callback that fails is
logged and skipped (the next change is tried again). One consumer per account with verified
subscriptions reads the account's :class:`AccountHub` like an event stream. A subscription
with ``keys`` gets each object encrypted to them as a Web Push message (RFC 8291: ECDH with a
new P-256 key and a new salt for every message, ``aes128gcm`` content coding of RFC 8188).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import http_ece
import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from ..jmap import pushsub
from ..runtime.logsafe import safe
from .push import AccountHub

log = logging.getLogger("mailstack.http.webhook")
TIMEOUT = 10.0


class Webhooks:
    def __init__(self, hub_for: Callable[[Path, str], AccountHub]) -> None:
        self.hub_for = hub_for
        self.client: httpx.AsyncClient | None = None
        self.consumers: dict[Path, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(verify=ssl.create_default_context(),
                                            follow_redirects=False, timeout=TIMEOUT,
                                            trust_env=False)
        return self.client

    async def post(self, sub: dict[str, Any], payload: dict[str, Any]) -> None:
        url = sub["url"]
        body = json.dumps(payload).encode()
        headers = {"content-type": "application/json", "ttl": "86400"}
        if sub.get("keys"):
            body = encrypt(body, sub["keys"])
            headers = {"content-type": "application/octet-stream",
                       "content-encoding": "aes128gcm", "ttl": "86400"}
        try:
            r = await self._client().post(url, content=body, headers=headers)
            log.info("push %s to %s: %d", payload.get("@type"), safe(url, 200), r.status_code)
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            log.warning("push %s to %s failed: %s", payload.get("@type"), safe(url, 200),
                        safe(str(exc) or type(exc).__name__))

    def send(self, outbox: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        for sub, payload in outbox:
            task = asyncio.get_running_loop().create_task(self.post(sub, payload))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def watch(self, root: Path, account_id: str) -> None:
        """Deliver the account's changes to its verified subscriptions (idempotent)."""
        task = self.consumers.get(root)
        if task is None or task.done():
            self.consumers[root] = asyncio.get_running_loop().create_task(
                self._consume(root, account_id))

    async def _consume(self, root: Path, account_id: str) -> None:
        hub = self.hub_for(root, account_id)
        queue = hub.subscribe()
        try:
            await hub.ready.wait()
            watching = False
            while True:
                subs = await asyncio.to_thread(pushsub.load, root)
                if not any(s.get("verified") for s in subs):
                    return
                if not watching:  # said once its changes reach a verified subscription
                    log.info("push: watching %s/%s for its subscriptions", root.parent.name,
                             root.name)
                    watching = True
                with contextlib.suppress(TimeoutError):
                    change = await asyncio.wait_for(queue.get(), 600)
                    if change is None:
                        return
                    for sub in await asyncio.to_thread(pushsub.load, root):
                        if not sub.get("verified"):
                            continue
                        types = sub.get("types")
                        mine = {aid: {t: s for t, s in c.items() if types is None or t in types}
                                for aid, c in change["changed"].items()}
                        mine = {aid: c for aid, c in mine.items() if c}
                        if mine:
                            self.send([(sub, {"@type": "StateChange", "changed": mine})])
        finally:
            hub.unsubscribe(queue)
            if self.consumers.get(root) is asyncio.current_task():
                del self.consumers[root]

    def start_existing(self, data_dir: Path, account_id_of: Callable[[str], str]) -> None:
        """At start: a consumer for every account that has verified subscriptions."""
        for path in (data_dir / "mail").glob(f"*/*/{pushsub.PUSH_FILE}"):
            root = path.parent
            address = f"{root.name}@{root.parent.name}"
            if any(s.get("verified") for s in pushsub.load(root)):
                self.watch(root, account_id_of(address))

    async def close(self) -> None:
        for task in [*self.consumers.values(), *self.tasks]:
            task.cancel()
        if self.client is not None:
            await self.client.aclose()


def encrypt(body: bytes, keys: dict[str, str]) -> bytes:
    """``body`` as an RFC 8291 Web Push message to the subscription's ``p256dh`` and
    ``auth`` (base64url): one aes128gcm record with a fresh sender key and salt."""
    return http_ece.encrypt(body, private_key=ec.generate_private_key(ec.SECP256R1()),
                            dh=pushsub.b64url(keys["p256dh"]),
                            auth_secret=pushsub.b64url(keys["auth"]), version="aes128gcm")
