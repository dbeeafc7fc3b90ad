"""Vacation replies (RFC 3834), sent by the mda after a delivery, set over JMAP
(VacationResponse, ``<account>/jmap-vacation.json``).

A reply goes out only when the response is enabled and within its dates, and never to: the
null sender, mail marked ``Auto-Submitted`` (other than ``no``), list or bulk mail
(``List-*`` fields, ``Precedence: bulk|list|junk``), mailer daemons and list robots
(``MAILER-DAEMON``, ``owner-*``, ``*-request``), the account itself, or mail that does not
name the account in To or Cc. At most one reply per sender per :data:`PERIOD` (kept in
``<account>/vacation-sent.json``). The reply has a null envelope sender and
``Auto-Submitted: auto-replied`` and is queued in the mta's queue like any submission.
"""

from __future__ import annotations

import email.policy
import email.utils
import json
import logging
import threading
import time
from datetime import datetime
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from ..config import Config
from ..mta.message import received_header
from ..mta.queue import Envelope, Spool, new_queue_id
from ..mta.queuecli import signal_mta
from ..runtime.fsutil import atomic_write
from ..runtime.logsafe import safe

log = logging.getLogger("mailstack.mda.vacation")
SETTINGS = "jmap-vacation.json"
SENT = "vacation-sent.json"
PERIOD = 7 * 86400  # RFC 3834 5.1: not more than once a period per sender (7 days suggested)
MAX_SENT = 10_000
_lock = threading.Lock()


def load(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / SETTINGS).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def active(settings: dict[str, Any], now: float) -> bool:
    if not settings.get("isEnabled"):
        return False
    start, end = _ts(settings.get("fromDate")), _ts(settings.get("toDate"))
    return (start is None or start <= now) and (end is None or now < end)


def refuse_reason(headers: Message, sender: str, account: str) -> str | None:
    """Why no reply may go to this message (None: a reply may go)."""
    s = sender.lower()
    local = s.rpartition("@")[0]
    if not s:
        return "null sender"
    if s == account.lower():
        return "from the account itself"
    if local in ("mailer-daemon", "postmaster", "listserv", "majordomo") or \
            local.startswith("owner-") or local.endswith(("-request", "-owner", "-bounces")):
        return "an automatic sender"
    auto = (headers.get("auto-submitted") or "no").strip().lower()
    if auto != "no":
        return "auto-submitted"
    if any(k.lower().startswith("list-") for k in headers):
        return "list mail"
    if (headers.get("precedence") or "").strip().lower() in ("bulk", "list", "junk"):
        return "bulk mail"
    named = {a.lower() for _, a in email.utils.getaddresses(
        [*headers.get_all("to", []), *headers.get_all("cc", [])])}
    if account.lower() not in named:
        return "the account is not in To or Cc"
    return None


def _first_time(root: Path, sender: str, now: float) -> bool:
    """Record a reply to ``sender``; False when one went out within the period."""
    path = root / SENT
    with _lock:
        try:
            sent = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            sent = {}
        if not isinstance(sent, dict):
            sent = {}
        last = sent.get(sender.lower())
        if isinstance(last, (int, float)) and now - last < PERIOD:
            return False
        sent = {k: v for k, v in sent.items() if isinstance(v, (int, float))
                and now - v < PERIOD}
        if len(sent) >= MAX_SENT:
            return False  # bounded: no reply rather than an unbounded file
        sent[sender.lower()] = now
        atomic_write(path, json.dumps(sent).encode())
        return True


def reply(settings: dict[str, Any], headers: Message, account: str, sender: str,
          hostname: str) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = account
    msg["To"] = sender
    subject = settings.get("subject")
    if not isinstance(subject, str) or not subject:
        original = str(headers.get("subject") or "").replace("\r", "").replace("\n", " ")
        subject = f"Auto: {original}"[:200]
    msg["Subject"] = subject.replace("\r", "").replace("\n", " ")
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-replied"
    original_id = (headers.get("message-id") or "").strip()
    if original_id.startswith("<") and original_id.endswith(">") and "\n" not in original_id:
        msg["In-Reply-To"] = original_id
        msg["References"] = original_id
    text = settings.get("textBody")
    msg.set_content(text if isinstance(text, str) and text else "I am away.")
    html = settings.get("htmlBody")
    if isinstance(html, str) and html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def respond(cfg: Config, root: Path, account: str, sender: str, data: bytes) -> str | None:
    """After a delivery to ``account``: queue a vacation reply when one is due; returns its
    queue id (blocking: call from a worker thread)."""
    settings = load(root)
    now = time.time()
    if not settings or not settings.get("isEnabled"):
        return None
    if not active(settings, now):
        log.info("vacation %s: no reply to <%s>: outside fromDate/toDate", account,
                 safe(sender))
        return None
    head, _, _ = data.partition(b"\n\n") if b"\r\n\r\n" not in data[:65536] \
        else data.partition(b"\r\n\r\n")
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(head[:65536])
    why = refuse_reason(headers, sender, account)
    if why is not None:
        log.info("vacation %s: no reply to <%s>: %s", account, safe(sender), why)
        return None
    if not _first_time(root, sender, now):
        log.info("vacation %s: <%s> got a reply within %d days", account, safe(sender),
                 PERIOD // 86400)
        return None
    body = reply(settings, headers, account, sender, cfg.server.hostname)
    qid = new_queue_id()
    message = received_header(helo="localhost", client_ip="127.0.0.1", client_host="vacation",
                              by=cfg.server.hostname, protocol="local", qid=qid,
                              rcpt=sender) + body
    env = Envelope(sender="", recipients=[sender], size=len(message), body="8BITMIME",
                   client_ip="127.0.0.1", client_helo="localhost", auth_user=account,
                   listener="vacation")
    Spool(cfg.data_dir / "queue").put(message, env, qid)
    signal_mta(cfg)
    log.info("vacation %s: reply to <%s> queued as %s", account, safe(sender), qid)
    return qid
