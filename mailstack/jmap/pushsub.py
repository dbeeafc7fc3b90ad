"""PushSubscription (RFC 8620 7.2), sans I/O: the subscriptions of a login, kept in
``<account>/jmap-push.json``.

A callback URL must be ``https://`` on a host the operator allowed (``[http] push_allowlist``,
exact names): the server never sends a request to an arbitrary address on a client's behalf.
A new subscription gets a random verification code, sent to its URL in a PushVerification
object (the face sends what :attr:`Account.outbox` collects); it receives StateChanges only
once the client has set that code (``verificationCode``). Subscriptions expire after at most
:data:`MAX_LIFETIME`. A subscription made with ``keys`` (the client's P-256 ``p256dh`` public
key and ``auth`` secret, base64url) gets everything sent to it encrypted as RFC 8291 Web Push
messages (``Content-Encoding: aes128gcm``, :mod:`mailstack.http.webhook`); the keys are never
returned.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from ..runtime.fsutil import atomic_write
from .core import Call, MethodError, method
from .message import utc

PUSH_FILE = "jmap-push.json"
MAX_LIFETIME = 7 * 86400
MAX_SUBSCRIPTIONS = 50  # per login
TYPES = ("Mailbox", "Email", "Thread", "EmailSubmission", "Identity")
PUBLIC = ("id", "deviceClientId", "verificationCode", "expires", "types")
_lock = threading.Lock()


def load(root: Path) -> list[dict[str, Any]]:
    """The account's live subscriptions (expired ones left out)."""
    try:
        data = json.loads((root / PUSH_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    now = time.time()
    return [s for s in data if isinstance(s, dict) and s.get("expires_at", 0) > now] \
        if isinstance(data, list) else []


def _save(root: Path, subs: list[dict[str, Any]]) -> None:
    atomic_write(root / PUSH_FILE, json.dumps(subs).encode())


def allowed_url(url: Any, allowlist: tuple[str, ...]) -> bool:
    if not isinstance(url, str) or len(url) > 2000 or any(c in url for c in " \r\n\t\0"):
        return False
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises on a bad port
    except ValueError:
        return False
    return parts.scheme == "https" and not parts.username and not parts.password \
        and host in {h.lower() for h in allowlist}


def _view(sub: dict[str, Any], props: list[str] | None) -> dict[str, Any]:
    full = {"id": sub["id"], "deviceClientId": sub["deviceClientId"],
            "verificationCode": sub["code"] if sub.get("verified") else None,
            "expires": utc(sub["expires_at"]), "types": sub.get("types")}
    return {k: v for k, v in full.items() if props is None or k in props or k == "id"}


@method("PushSubscription/get")
def push_get(call: Call) -> dict[str, Any]:
    subs = load(call.account.root)
    props = call.args.get("properties")
    if props is not None and (not isinstance(props, list) or any(
            p not in PUBLIC for p in props)):
        raise MethodError("invalidArguments", "url and keys are never returned")
    ids = call.args.get("ids")
    by_id = {s["id"]: s for s in subs}
    want = list(by_id) if ids is None else ids
    if not isinstance(want, list):
        raise MethodError("invalidArguments", "ids must be a list of ids or null")
    return {"list": [_view(by_id[i], props) for i in want if i in by_id],
            "notFound": [i for i in want if i not in by_id]}


def _expires(value: Any) -> float:
    cap = time.time() + MAX_LIFETIME
    if value is None:
        return cap
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise MethodError("invalidProperties", "expires", properties=["expires"]) from None
    return min(ts, cap)


def b64url(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) > 200:
        raise ValueError("not a base64url string")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _keys(value: Any) -> dict[str, str] | None:
    """``keys`` checked (RFC 8291: a P-256 point, uncompressed, and a 16-octet secret)."""
    if value is None:
        return None
    try:
        if not isinstance(value, dict) or set(value) != {"p256dh", "auth"}:
            raise ValueError("keys must be {p256dh, auth}")
        point, auth = b64url(value["p256dh"]), b64url(value["auth"])
        if len(point) != 65 or len(auth) != 16:
            raise ValueError("p256dh must be 65 octets and auth 16")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)  # on the curve
    except (ValueError, binascii.Error):
        raise MethodError("invalidProperties", "keys: p256dh (an uncompressed P-256 public "
                          "key) and auth (16 octets), both base64url", properties=["keys"]
                          ) from None
    return {"p256dh": value["p256dh"], "auth": value["auth"]}


def _types(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) and t in TYPES for t in value):
        raise MethodError("invalidProperties", "types", properties=["types"])
    return value


@method("PushSubscription/set")
def push_set(call: Call) -> dict[str, Any]:
    account = call.account
    allowlist = account.cfg.http.push_allowlist if account.cfg is not None else ()
    out: dict[str, Any] = {"created": {}, "updated": {}, "destroyed": [], "notCreated": {},
                           "notUpdated": {}, "notDestroyed": {}}
    with _lock:
        subs = load(account.root)
        for cid, obj in call.arg("create", dict, {}).items():
            try:
                if not isinstance(obj, dict) or not isinstance(obj.get("deviceClientId"), str):
                    raise MethodError("invalidProperties", "deviceClientId",
                                      properties=["deviceClientId"])
                if obj.get("verificationCode") is not None:
                    raise MethodError("invalidProperties", "the verification code is the "
                                      "server's to send", properties=["verificationCode"])
                keys = _keys(obj.get("keys"))
                if not allowed_url(obj.get("url"), allowlist):
                    raise MethodError("invalidProperties", "url: https:// on a host this "
                                      "server may call ([http] push_allowlist)",
                                      properties=["url"])
                if len(subs) >= MAX_SUBSCRIPTIONS:
                    raise MethodError("overQuota", f"at most {MAX_SUBSCRIPTIONS}")
                sub = {"id": "P" + secrets.token_hex(10),
                       "deviceClientId": obj["deviceClientId"][:200], "url": obj["url"],
                       "code": secrets.token_urlsafe(18), "verified": False,
                       "expires_at": _expires(obj.get("expires")),
                       "types": _types(obj.get("types")), "keys": keys}
                subs.append(sub)
                call.created_ids[cid] = sub["id"]
                out["created"][cid] = {"id": sub["id"], "expires": utc(sub["expires_at"])}
                account.outbox.append((sub, {
                    "@type": "PushVerification", "pushSubscriptionId": sub["id"],
                    "verificationCode": sub["code"]}))
            except MethodError as exc:
                out["notCreated"][cid] = exc.args_out()
        by_id = {s["id"]: s for s in subs}
        for sid, patch in call.arg("update", dict, {}).items():
            sub = by_id.get(sid)
            if sub is None:
                out["notUpdated"][sid] = {"type": "notFound"}
                continue
            try:
                if not isinstance(patch, dict) or any(
                        k not in ("verificationCode", "expires", "types") for k in patch):
                    raise MethodError("invalidProperties", "only verificationCode, expires "
                                      "and types can change")
                if "verificationCode" in patch:
                    if not secrets.compare_digest(str(patch["verificationCode"]), sub["code"]):
                        raise MethodError("invalidProperties", "wrong verification code",
                                          properties=["verificationCode"])
                    sub["verified"] = True
                if "expires" in patch:
                    sub["expires_at"] = _expires(patch["expires"])
                if "types" in patch:
                    sub["types"] = _types(patch["types"])
                out["updated"][sid] = None
            except MethodError as exc:
                out["notUpdated"][sid] = exc.args_out()
        for sid in call.arg("destroy", list, []):
            if sid in by_id:
                subs.remove(by_id.pop(sid))
                out["destroyed"].append(sid)
            else:
                out["notDestroyed"][str(sid)] = {"type": "notFound"}
        _save(account.root, subs)
    return out
