"""``mailstack queue list|show|flush|delete``: the operator's view of the spool (like mailq).

Works on the files directly, so it also works while the mta is stopped; ``flush`` and
``delete`` signal a running mta (SIGUSR1 to retry everything, SIGUSR2 to drop a deleted entry;
pid in ``<data_dir>/run/mta.pid``) so it acts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from ..config import Config
from .queue import PENDING, QueueEntry, Spool


def signal_mta(cfg: Config, flush: bool = False) -> bool:
    """Ask a running mta to rescan its queue (a new or deleted entry), or with ``flush`` to
    retry every entry now; False when none runs."""
    try:
        pid = int((cfg.data_dir / "run" / "mta.pid").read_text().strip())
        os.kill(pid, signal.SIGUSR1 if flush else signal.SIGUSR2)
        return True
    except (OSError, ValueError):
        return False


def _entry_json(e: QueueEntry) -> dict[str, Any]:
    """One queue entry for ``queue list --json`` (times as Unix seconds)."""
    env = e.envelope
    return {"id": e.id, "sender": env.sender, "size": env.size, "arrived": env.created,
            "attempts": e.attempts, "next_attempt": e.next_attempt,
            "last_error": e.last_error or None, "client_ip": env.client_ip,
            "auth_user": env.auth_user or None, "listener": env.listener,
            "recipients": [{"address": r.address, "status": r.status, "attempts": r.attempts,
                            "last_reply": r.last_reply or None, "via": r.remote or None}
                           for r in e.recipients]}


def _ago(ts: float) -> str:
    d = max(0.0, time.time() - ts)
    for unit, sec in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= sec:
            return f"{d / sec:.0f}{unit}"
    return f"{d:.0f}s"


def main(args: argparse.Namespace, cfg: Config) -> int:
    spool = Spool(cfg.data_dir / "queue")
    if args.action == "list":
        entries = spool.load_all()
        if getattr(args, "json", False):
            json.dump([_entry_json(e) for e in entries], sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        if not entries:
            print("Mail queue is empty")
            return 0
        for e in entries:
            env = e.envelope
            nxt = "now" if e.next_attempt <= time.time() else \
                f"in {_ago(2 * time.time() - e.next_attempt)}"
            arrived = time.strftime("%a %b %d %H:%M:%S", time.localtime(env.created))
            print(f"{e.id}  {env.size:>8}  {arrived}  <{env.sender}>  attempts={e.attempts}"
                  f"  next={nxt}")
            # one error shared by every pending recipient (the mda or a host unreachable) is
            # printed once for the message, not once per recipient
            replies = {r.last_reply for r in e.pending}
            shared = replies.pop() if len(replies) == 1 and len(e.pending) > 1 else ""
            if shared:
                print(f"    ({shared})")
            for r in e.recipients:
                detail = f" ({r.last_reply})" if r.last_reply and r.last_reply != shared else ""
                print(f"    {r.status:<9} <{r.address}> via {r.remote or '-'}{detail}")
        pending = sum(len(e.pending) for e in entries)
        print(f"-- {len(entries)} message(s), {pending} recipient(s) pending")
        return 0
    if args.action == "show":
        entry = spool.load(args.id)
        if entry is None:
            print(f"mailstack: no queue entry {args.id}", file=sys.stderr)
            return 1
        env = entry.envelope
        print(f"id: {entry.id}\nsender: <{env.sender}>\nsize: {env.size}\n"
              f"arrived: {time.ctime(env.created)}\nclient: {env.client_ip} "
              f"helo={env.client_helo} auth={env.auth_user or '-'} listener={env.listener}\n"
              f"attempts: {entry.attempts}\nlast error: {entry.last_error or '-'}")
        for r in entry.recipients:
            print(f"recipient: <{r.address}> {r.status} {r.last_reply}")
        print()
        sys.stdout.flush()
        sys.stdout.buffer.write(spool.read_message(entry.id))
        return 0
    if args.action == "flush":
        n = 0
        for e in spool.load_all():
            if any(r.status == PENDING for r in e.recipients):
                e.next_attempt = 0.0
                with contextlib.suppress(OSError):
                    spool.save_state(e)
                n += 1
        running = signal_mta(cfg, flush=True)
        print(f"{n} message(s) scheduled for delivery now"
              + ("" if running else " (the mta is not running: they go when it starts)"))
        return 0
    if args.action == "delete":
        if not spool.remove(args.id):
            print(f"mailstack: no queue entry {args.id}", file=sys.stderr)
            return 1
        signal_mta(cfg)
        print(f"{args.id}: removed")
        return 0
    return 2
