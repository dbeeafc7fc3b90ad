"""VacationResponse (RFC 8621 8): one singleton per account, kept in
``<account>/jmap-vacation.json``; the mda sends the replies (``mda/vacation.py``)."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any

from ..mda.vacation import SETTINGS, load
from ..runtime.fsutil import atomic_write
from .account import Account
from .core import Call, MethodError, method

FIELDS = ("isEnabled", "fromDate", "toDate", "subject", "textBody", "htmlBody")
_lock = threading.Lock()


def _view(account: Account) -> tuple[dict[str, Any], str]:
    saved = load(account.root)
    out: dict[str, Any] = {"id": "singleton", "isEnabled": False, "fromDate": None,
                           "toDate": None, "subject": None, "textBody": None, "htmlBody": None}
    out.update({k: saved[k] for k in FIELDS if k in saved})
    return out, str(saved.get("state", 0))


@method("VacationResponse/get")
def vacation_get(call: Call) -> dict[str, Any]:
    account: Account = call.account
    view, state = _view(account)
    ids = call.args.get("ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise MethodError("invalidArguments", "ids must be a list of ids or null")
    want = ["singleton"] if ids is None else ids
    return {"accountId": account.id, "state": state,
            "list": [view] if "singleton" in want else [],
            "notFound": [i for i in want if i != "singleton"]}


def _check(patch: dict[str, Any]) -> list[str]:
    bad = []
    for key, value in patch.items():
        if key not in FIELDS or (key == "isEnabled" and not isinstance(value, bool)):
            bad.append(key)
        elif key in ("fromDate", "toDate") and value is not None:
            try:
                datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                bad.append(key)
        elif key in ("subject", "textBody", "htmlBody") and value is not None and not (
                isinstance(value, str) and len(value) <= 100_000
                and (key != "subject" or not any(c in value for c in "\r\n"))):
            bad.append(key)
    return bad


@method("VacationResponse/set")
def vacation_set(call: Call) -> dict[str, Any]:
    account: Account = call.account
    _, old = _view(account)
    if call.args.get("ifInState") not in (None, old):
        raise MethodError("stateMismatch")
    out: dict[str, Any] = {"accountId": account.id, "oldState": old, "created": {},
                           "updated": {}, "destroyed": [], "notCreated": {}, "notUpdated": {},
                           "notDestroyed": {}}
    for cid in call.arg("create", dict, {}):
        out["notCreated"][cid] = {"type": "singleton"}
    for sid in call.arg("destroy", list, []):
        out["notDestroyed"][str(sid)] = {"type": "singleton"}
    for sid, patch in call.arg("update", dict, {}).items():
        if sid != "singleton":
            out["notUpdated"][sid] = {"type": "notFound"}
            continue
        bad = _check(patch) if isinstance(patch, dict) else ["patch"]
        if bad:
            out["notUpdated"][sid] = {"type": "invalidProperties", "properties": bad}
            continue
        with _lock:
            saved = load(account.root)
            saved.update(patch)
            saved["state"] = int(saved.get("state", 0)) + 1
            atomic_write(account.root / SETTINGS, json.dumps(saved).encode())
        out["updated"][sid] = None
    out["newState"] = _view(account)[1]
    return out
