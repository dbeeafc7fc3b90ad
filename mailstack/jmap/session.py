"""The JMAP session resource (RFC 8620 2): capabilities, limits, the login's account, URLs."""

from __future__ import annotations

from typing import Any

from ..config import Config, HTTPSection
from .account import account_id
from .core import CORE, MAIL, SUBMISSION, VACATION, Limits
from .email import SORTS
from .standard import COLLATIONS

API_PATH = "/jmap/api"
UPLOAD_PATH = "/jmap/upload/{accountId}/"
DOWNLOAD_PATH = "/jmap/download/{accountId}/{blobId}/{name}?type={type}"
EVENTS_PATH = "/jmap/eventsource?types={types}&closeafter={closeafter}&ping={ping}"


def session_url(cfg: Config) -> str | None:
    """The session resource's URL as other faces announce it (IMAP GETJMAPACCESS), or None
    when HTTPS is off."""
    port = cfg.port("http", "https")
    if not port:
        return None
    host = cfg.server.hostname
    return f"https://{host}{'' if port == 443 else f':{port}'}/.well-known/jmap"


def limits(http: HTTPSection) -> Limits:
    return Limits(int(http.max_size_request), http.max_calls_in_request,
                  http.max_objects_in_get, http.max_objects_in_set)


def core_capability(http: HTTPSection) -> dict[str, Any]:
    return {"maxSizeUpload": int(http.max_size_upload),
            "maxConcurrentUpload": http.max_concurrent_upload,
            "maxSizeRequest": int(http.max_size_request),
            "maxConcurrentRequests": http.max_concurrent_requests,
            "maxCallsInRequest": http.max_calls_in_request,
            "maxObjectsInGet": http.max_objects_in_get,
            "maxObjectsInSet": http.max_objects_in_set,
            "collationAlgorithms": list(COLLATIONS)}


MAIL_CAPABILITY = {"maxMailboxesPerEmail": None, "maxMailboxDepth": 10,
                   "maxSizeMailboxName": 200, "maxSizeAttachmentsPerEmail": 50_000_000,
                   "emailQuerySortOptions": list(SORTS),
                   "mayCreateTopLevelMailbox": True}


def session(http: HTTPSection, address: str, base: str, state: str) -> dict[str, Any]:
    """The session object for ``address``; ``base`` is ``https://host:port``."""
    aid = account_id(address)
    return {
        "capabilities": {CORE: core_capability(http), MAIL: {}, SUBMISSION: {},
                         VACATION: {}},
        "accounts": {aid: {"name": address, "isPersonal": True, "isReadOnly": False,
                           "accountCapabilities": {
                               MAIL: MAIL_CAPABILITY,
                               SUBMISSION: {"maxDelayedSend": 0, "submissionExtensions": {}},
                               VACATION: {}}}},
        "primaryAccounts": {MAIL: aid, SUBMISSION: aid, VACATION: aid},
        "username": address,
        "apiUrl": base + API_PATH,
        "downloadUrl": base + DOWNLOAD_PATH,
        "uploadUrl": base + UPLOAD_PATH,
        "eventSourceUrl": base + EVENTS_PATH,
        "state": state,
    }
