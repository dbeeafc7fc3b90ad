"""Identity and EmailSubmission (RFC 8621 6, 7): sending through the mta's durable queue.

A submission is queued exactly as port 587 queues an authenticated client's message (the
same spool, envelope, Received trace and fixups), then the running mta is poked: relay rules,
retries and DSNs are the mta's. The envelope sender and the From addresses must be the
login's own address (``forbiddenFrom``), as 587 requires (``553 5.7.1``).

Per account: one Identity (the login's address; its name and signatures can be changed) in
``jmap-identity.json``, and the latest submissions in ``jmap-submissions.json``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..mta.message import normalize_crlf, received_header, submission_fixups
from ..mta.queue import DELIVERED, FAILED, Envelope, Spool, new_queue_id
from ..mta.queuecli import signal_mta
from ..runtime.fsutil import atomic_write
from ..smtp.address import AddressError, parse_mailbox
from . import message as msgview
from .account import Account
from .core import Call, MethodError, is_number, method
from .standard import (
    Since,
    check_comparators,
    filter_matches,
    query_changes_response,
    query_changes_state,
    query_window,
    wanted_ids,
    wanted_properties,
)

IDENTITY_FILE = "jmap-identity.json"
SUBMISSIONS_FILE = "jmap-submissions.json"
KEEP_SUBMISSIONS = 1000
SUBMISSION_PROPERTIES = ("id", "identityId", "emailId", "threadId", "envelope", "sendAt",
                         "undoStatus", "deliveryStatus", "dsnBlobIds", "mdnBlobIds")
QUEUED_REPLY = "250 2.1.5 queued"  # a recipient's reply before the mta has tried it
IDENTITY_FIELDS = ("name", "replyTo", "bcc", "textSignature", "htmlSignature")
_lock = threading.Lock()


def _load(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return default


def identity_id(address: str) -> str:
    return "I" + hashlib.sha256(address.encode()).hexdigest()[:16]


def identity(account: Account) -> dict[str, Any]:
    saved = _load(account.root / IDENTITY_FILE, {})
    out = {"id": identity_id(account.address), "name": "", "email": account.address,
           "replyTo": None, "bcc": None, "textSignature": "", "htmlSignature": "",
           "mayDelete": False}
    out.update({k: saved[k] for k in IDENTITY_FIELDS if k in saved})
    return out


def _state(account: Account, name: str) -> str:
    data = _load(account.root / name, {})
    return str(data.get("state", 0)) if isinstance(data, dict) else "0"


@method("Identity/get")
def identity_get(call: Call) -> dict[str, Any]:
    account: Account = call.account
    ident = identity(account)
    ids = wanted_ids(call, lambda: [ident["id"]])
    return {"accountId": account.id, "state": _state(account, IDENTITY_FILE),
            "list": [ident] if ident["id"] in ids else [],
            "notFound": [i for i in ids if i != ident["id"]]}


@method("Identity/changes")
def identity_changes(call: Call) -> dict[str, Any]:
    account: Account = call.account
    now = _state(account, IDENTITY_FILE)
    since = call.args.get("sinceState")
    if not isinstance(since, str) or not is_number(since) or int(since) > int(now):
        raise MethodError("cannotCalculateChanges")
    changed = [identity_id(account.address)] if since != now else []
    return {"accountId": account.id, "oldState": since, "newState": now,
            "hasMoreChanges": False, "created": [], "updated": changed, "destroyed": []}


def _address_list(value: Any) -> bool:
    """null or a short list of EmailAddress objects without line breaks."""
    if value is None:
        return True
    return isinstance(value, list) and len(value) <= 20 and all(
        isinstance(a, dict) and isinstance(a.get("email"), str) and "@" in a["email"]
        and isinstance(a.get("name"), str | None)
        and not any(c in (a.get("name") or "") + a["email"] for c in "\r\n\0")
        for a in value)


@method("Identity/set")
def identity_set(call: Call) -> dict[str, Any]:
    account: Account = call.account
    path = account.root / IDENTITY_FILE
    old = _state(account, IDENTITY_FILE)
    if call.args.get("ifInState") not in (None, old):
        raise MethodError("stateMismatch")
    out: dict[str, Any] = {"accountId": account.id, "oldState": old, "created": {},
                           "updated": {}, "destroyed": [], "notCreated": {}, "notUpdated": {},
                           "notDestroyed": {}}
    for cid in call.arg("create", dict, {}):
        out["notCreated"][cid] = {"type": "forbiddenFrom", "description":
                                  "one identity per login: its own address"}
    mine = identity_id(account.address)
    for iid, patch in call.arg("update", dict, {}).items():
        if iid != mine:
            out["notUpdated"][iid] = {"type": "notFound"}
            continue
        bad = [k for k in (patch if isinstance(patch, dict) else {"": 0})
               if k not in IDENTITY_FIELDS]
        if bad:
            out["notUpdated"][iid] = {"type": "invalidProperties", "properties": bad}
            continue
        if any(key in patch and not _address_list(patch[key]) for key in ("replyTo", "bcc")):
            out["notUpdated"][iid] = {"type": "invalidProperties",
                                      "properties": [k for k in ("replyTo", "bcc") if k in patch]}
            continue
        for key in ("name", "textSignature", "htmlSignature"):
            if key in patch and not (isinstance(patch[key], str) and len(patch[key]) < 10_000
                                     and "\r" not in patch[key] and (key != "name" or
                                                                     "\n" not in patch[key])):
                out["notUpdated"][iid] = {"type": "invalidProperties", "properties": [key]}
                break
        else:
            with _lock:
                saved = _load(path, {})
                saved.update(patch)
                saved["state"] = int(saved.get("state", 0)) + 1
                atomic_write(path, json.dumps(saved).encode())
            out["updated"][iid] = None
    for iid in call.arg("destroy", list, []):
        out["notDestroyed"][str(iid)] = {"type": "forbidden" if iid == mine else "notFound"}
    out["newState"] = _state(account, IDENTITY_FILE)
    return out


# -- EmailSubmission ---------------------------------------------------------------------------
def _submissions(account: Account) -> dict[str, Any]:
    data = _load(account.root / SUBMISSIONS_FILE, {})
    if not isinstance(data, dict) or not isinstance(data.get("list"), list):
        return {"state": 0, "list": []}
    return data


def delivery_status(cfg: Config | None, sub: dict[str, Any]) -> dict[str, Any] | None:
    """RFC 8621 7 ``deliveryStatus`` of a submission, from the mta's queue entry (still
    queued) or the outcome it left (done): per recipient the last SMTP reply and
    ``queued`` (not final yet), ``yes`` (in a local mailbox), ``unknown`` (accepted by
    another MTA: no more is known) or ``no`` (failed for good; a DSN went to the sender)."""
    if cfg is None:
        return None
    got = Spool(cfg.data_dir / "queue").recipients(sub["id"][1:])
    if got is None:  # an outcome older than the queue keeps (or removed by the operator)
        return {r["email"]: {"smtpReply": "", "delivered": "unknown", "displayed": "unknown"}
                for r in sub["envelope"]["rcptTo"]}
    out = {}
    for r in got[1]:
        if r.status == DELIVERED:
            delivered = "yes" if cfg.is_local_domain(r.address.rpartition("@")[2]) \
                else "unknown"
        else:
            delivered = "no" if r.status == FAILED else "queued"
        out[r.address] = {"smtpReply": r.last_reply or QUEUED_REPLY,
                          "delivered": delivered, "displayed": "unknown"}
    return out


def _fingerprint(status: dict[str, Any] | None, sub: dict[str, Any]) -> dict[str, str]:
    """What a change of ``deliveryStatus`` is seen by (None: just queued)."""
    if status is None:
        return {r["email"]: f"queued {QUEUED_REPLY}" for r in sub["envelope"]["rcptTo"]}
    return {r: f"{v['delivered']} {v['smtpReply']}" if v["delivered"] == "queued"
            else v["delivered"] for r, v in status.items()}


def _observed(account: Account) -> dict[str, Any]:
    """The submissions, after noting each delivery status that moved since it was last
    looked at: such a submission is updated in a new state (``EmailSubmission/changes``).
    Only submissions with a recipient still queued are looked at again."""
    data = _submissions(account)
    if account.cfg is None:
        return data
    moved: dict[str, dict[str, str]] = {}
    for sub in data["list"]:
        seen = sub.get("_delivered") or _fingerprint(None, sub)
        if not any(v.startswith("queued") for v in seen.values()):
            continue  # every recipient's status is final
        now = _fingerprint(delivery_status(account.cfg, sub), sub)
        if now != seen:
            moved[sub["id"]] = now
    if not moved:
        return data
    with _lock:
        data = _submissions(account)
        data["state"] += 1
        for sub in data["list"]:
            if sub["id"] in moved:
                sub["_delivered"] = moved[sub["id"]]
                sub["_updated"] = data["state"]
        atomic_write(account.root / SUBMISSIONS_FILE, json.dumps(data).encode())
    return data


@method("EmailSubmission/get")
def submission_get(call: Call) -> dict[str, Any]:
    account: Account = call.account
    data = _observed(account)
    by_id = {s["id"]: s for s in data["list"]}
    ids = wanted_ids(call, by_id.keys)
    props = wanted_properties(call, SUBMISSION_PROPERTIES)
    found = []
    for i in ids:
        if i not in by_id:
            continue
        sub = {k: v for k, v in by_id[i].items() if not k.startswith("_")}
        if "deliveryStatus" in props:
            sub["deliveryStatus"] = delivery_status(account.cfg, sub)
        found.append({p: sub.get(p) for p in props})
    return {"accountId": account.id, "state": str(data["state"]), "list": found,
            "notFound": [i for i in ids if i not in by_id]}


@method("EmailSubmission/changes")
def submission_changes(call: Call) -> dict[str, Any]:
    account: Account = call.account
    data = _observed(account)
    since = call.args.get("sinceState")
    if not isinstance(since, str) or not is_number(since) or int(since) > data["state"]:
        raise MethodError("cannotCalculateChanges")
    if data["list"] and int(since) < data["list"][0].get("_state", 0) - 1:
        raise MethodError("cannotCalculateChanges")
    created = [s["id"] for s in data["list"] if s.get("_state", 0) > int(since)]
    updated = [s["id"] for s in data["list"] if s.get("_state", 0) <= int(since)
               and s.get("_updated", 0) > int(since)]
    return {"accountId": account.id, "oldState": since, "newState": str(data["state"]),
            "hasMoreChanges": False, "created": created, "updated": updated, "destroyed": []}


def _submission_matches(sub: dict[str, Any], cond: dict[str, Any]) -> bool:
    for key, value in cond.items():
        if key in ("emailIds", "threadIds", "identityIds"):
            if not isinstance(value, list):
                raise MethodError("invalidArguments", f"{key}: a list of ids")
            ok = sub[key[:-1]] in value
        elif key == "undoStatus":
            ok = sub["undoStatus"] == value
        elif key in ("before", "after"):
            if not isinstance(value, str):
                raise MethodError("invalidArguments", f"{key}: a UTCDate")
            ok = sub["sendAt"] < value if key == "before" else sub["sendAt"] >= value
        else:
            raise MethodError("unsupportedFilter", f"{key[:100]!r}")
        if not ok:
            return False
    return True


def _submission_results(call: Call, data: dict[str, Any]) -> list[str]:
    """EmailSubmission/query's ids: newest first unless sorted (emailId, threadId, sentAt)."""
    flt = call.arg("filter", dict, {})
    rows = [s for s in reversed(data["list"])
            if filter_matches(flt, lambda cond, s=s: _submission_matches(s, cond))]
    keys = {"emailId": "emailId", "threadId": "threadId", "sentAt": "sendAt"}
    for sort in reversed(check_comparators(call, keys)):
        key = keys[sort["property"]]
        rows.sort(key=lambda s, key=key: s[key], reverse=sort.get("isAscending", True) is False)
    return [s["id"] for s in rows]


@method("EmailSubmission/query")
def submission_query(call: Call) -> dict[str, Any]:
    account: Account = call.account
    data = _submissions(account)
    return query_window(call, account, _submission_results(call, data), str(data["state"]),
                        can_calculate=True)


@method("EmailSubmission/queryChanges")
def submission_query_changes(call: Call) -> dict[str, Any]:
    """Submissions are only ever created (the oldest beyond :data:`KEEP_SUBMISSIONS` are
    forgotten: changes from before them cannot be calculated)."""
    account: Account = call.account
    data = _submissions(account)
    now = str(data["state"])
    since = query_changes_state(call)
    if not is_number(since) or int(since) > int(now) or (
            data["list"] and int(since) < data["list"][0].get("_state", 0) - 1):
        raise MethodError("cannotCalculateChanges")
    changed = {s["id"] for s in data["list"] if s.get("_state", 0) > int(since)}
    return query_changes_response(call, account, Since(since, now, None),
                                  _submission_results(call, data), changed, immutable=True)


def _address(value: Any, what: str) -> str:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        raise MethodError("invalidProperties", f"envelope {what}", properties=["envelope"])
    addr = value["email"]
    if any(c in addr for c in "\r\n<> \0") or len(addr) > 320:
        raise MethodError("invalidProperties", f"envelope {what}: bad address",
                          properties=["envelope"])
    try:
        parse_mailbox(addr)
    except AddressError as exc:
        raise MethodError("invalidProperties", f"envelope {what}: {exc}",
                          properties=["envelope"]) from None
    return addr


def _strip_bcc(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


def submit(cfg: Config, account: Account, obj: dict[str, Any]) -> dict[str, Any]:
    """Queue one submission; the EmailSubmission object (raises MethodError)."""
    ident = identity(account)
    if obj.get("identityId") != ident["id"]:
        raise MethodError("invalidProperties", "no such identity", properties=["identityId"])
    eid = obj.get("emailId")
    locs = account.index().copies.get(eid) if isinstance(eid, str) else None
    if not locs:
        raise MethodError("invalidProperties", "no such email", properties=["emailId"])
    raw = account.read(locs[0])
    if raw is None:
        raise MethodError("invalidProperties", "the email is gone", properties=["emailId"])
    parsed = msgview.Parsed(raw)
    me = account.address.lower()
    froms = msgview.addresses(parsed.header("from")) or []
    if not froms or any(a["email"].lower() != me for a in froms):
        raise MethodError("forbiddenFrom", f"From must be {me}")
    sender_hdr = msgview.addresses(parsed.header("sender"))
    if sender_hdr and any(a["email"].lower() != me for a in sender_hdr):
        raise MethodError("forbiddenFrom", f"Sender must be {me}")
    env = obj.get("envelope")
    if env is not None:
        if not isinstance(env, dict) or not isinstance(env.get("rcptTo"), list):
            raise MethodError("invalidProperties", "envelope", properties=["envelope"])
        mail_from = _address(env.get("mailFrom"), "mailFrom")
        if mail_from.lower() != me:
            raise MethodError("forbiddenFrom", f"the envelope sender must be {me}")
        rcpts = [_address(r, "rcptTo") for r in env["rcptTo"]]
    else:
        mail_from = me
        rcpts = [a for _, a in email.utils.getaddresses(
            [v for n in ("to", "cc", "bcc") for v in parsed.header_all(n)]) if a]
        env = {"mailFrom": {"email": me, "parameters": None},
               "rcptTo": [{"email": r, "parameters": None} for r in rcpts]}
    if not rcpts:
        raise MethodError("noRecipients")
    if len(rcpts) > cfg.mta.max_recipients:
        raise MethodError("tooManyRecipients", maxRecipients=cfg.mta.max_recipients)
    data = _strip_bcc(normalize_crlf(raw))
    data = submission_fixups(data, cfg.server.hostname)
    qid = new_queue_id()
    trace = received_header(helo="jmap", client_ip="127.0.0.1", client_host=None,
                            by=cfg.server.hostname, protocol="HTTPS (JMAP)", qid=qid,
                            rcpt=rcpts[0] if len(rcpts) == 1 else None)
    message = trace + data
    if len(message) > cfg.mta.max_message_size:
        raise MethodError("tooLarge", maxSize=int(cfg.mta.max_message_size))
    envelope = Envelope(sender=mail_from, recipients=rcpts, size=len(message),
                        body="8BITMIME", client_ip="127.0.0.1", client_helo="jmap",
                        auth_user=me, tls="TLS", listener="jmap")
    try:
        Spool(cfg.data_dir / "queue").put(message, envelope, qid)
    except OSError as exc:
        raise MethodError("serverFail", f"cannot queue: {exc.strerror or exc}") from None
    signal_mta(cfg)
    sub = {"id": "S" + qid, "identityId": ident["id"], "emailId": eid,
           "threadId": locs[0].entry.threadid, "envelope": env,
           "sendAt": msgview.utc(time.time()), "undoStatus": "final", "deliveryStatus": None,
           "dsnBlobIds": [], "mdnBlobIds": []}
    path = account.root / SUBMISSIONS_FILE
    with _lock:
        saved = _submissions(account)
        saved["state"] += 1
        saved["list"] = [*saved["list"], {**sub, "_state": saved["state"]}][-KEEP_SUBMISSIONS:]
        atomic_write(path, json.dumps(saved).encode())
    return sub


@method("EmailSubmission/set")
def submission_set(call: Call) -> dict[str, Any]:
    account: Account = call.account
    cfg = account.cfg
    if cfg is None:
        raise MethodError("forbidden", "sending is not configured here")
    old = str(_submissions(account)["state"])
    if call.args.get("ifInState") not in (None, old):
        raise MethodError("stateMismatch")
    create = call.arg("create", dict, {})
    if len(create) > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge")
    out: dict[str, Any] = {"accountId": account.id, "oldState": old, "created": {},
                           "updated": {}, "destroyed": [], "notCreated": {}, "notUpdated": {},
                           "notDestroyed": {}}
    done: dict[str, str] = {}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict):
                raise MethodError("invalidProperties")
            obj = dict(obj)
            if isinstance(obj.get("emailId"), str) and obj["emailId"].startswith("#"):
                obj["emailId"] = call.created_ids.get(obj["emailId"][1:], obj["emailId"])
            sub = submit(cfg, account, obj)
            call.created_ids[cid] = sub["id"]
            done[cid] = sub["emailId"]
            out["created"][cid] = {"id": sub["id"], "sendAt": sub["sendAt"],
                                   "undoStatus": "final", "threadId": sub["threadId"]}
        except MethodError as exc:
            out["notCreated"][cid] = exc.args_out()
    for sid in call.arg("update", dict, {}):
        out["notUpdated"][sid] = {"type": "cannotUnsend"}
    for sid in call.arg("destroy", list, []):
        out["notDestroyed"][str(sid)] = {"type": "forbidden"}
    out["newState"] = str(_submissions(account)["state"])
    # onSuccess*: an implicit Email/set after this response (RFC 8621 7.5)
    update: dict[str, Any] = {}
    for ref, patch in (call.arg("onSuccessUpdateEmail", dict, {}) or {}).items():
        key = ref[1:] if ref.startswith("#") else None
        if key in done:
            update[done[key]] = patch
    destroy = [done[r[1:]] for r in call.arg("onSuccessDestroyEmail", list, []) or []
               if isinstance(r, str) and r.startswith("#") and r[1:] in done]
    if update or destroy:
        call.extra.append(("Email/set", {"accountId": account.id, "update": update,
                                         "destroy": destroy}))
    return out
