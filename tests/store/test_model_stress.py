"""Model-based stress: sessions on two imap processes issue random STORE, EXPUNGE, APPEND,
COPY, MOVE, FETCH and SEARCH on one folder; afterwards the invariants of the store hold.

- no message disappears unless someone set \\Deleted on it (or it was moved);
- no message is duplicated in INBOX, and UIDs are never reused;
- per message, MODSEQ never goes back;
- every session's final view (after NOOP) equals a fresh session's;
- no NO other than FETCH's ``[EXPUNGEISSUED]`` (RFC 2180 4.1.2), no BAD, no SERVERBUG, no
  traceback in the logs.
"""

from __future__ import annotations

import random
import re
import threading
import time

from tests.store.conftest import Stack

DURATION = 6.0
SESSIONS = 4
FLAGS = ["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "$Work", "$Later"]
_FETCH_RE = re.compile(rb"UID (\d+) .*?MODSEQ \((\d+)\)|MODSEQ \((\d+)\).*?UID (\d+)")


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.appended: dict[str, int] = {}  # message id → INBOX UID
        self.deleted_uids: set[int] = set()  # INBOX UIDs someone set \Deleted on
        self.moved_uids: set[int] = set()
        self.errors: list[str] = []
        self.ops = 0


def worker(stack: Stack, which: int, seed: int, rec: Recorder, stop: float) -> None:
    rnd = random.Random(seed)
    c = stack.imap(which % 2, select=None)
    assert c.enable("CONDSTORE")[0] == "OK"
    assert c.select("INBOX")[0] == "OK"
    modseqs: dict[int, int] = {}
    n = 0
    last_uid = 0

    def check(typ: str, data: list, what: str) -> None:
        if typ == "NO" and what == "FETCH" and b"[EXPUNGEISSUED]" in data[-1]:
            return  # RFC 2180 4.1.2: a message expunged by another session meanwhile
        if typ != "OK":
            rec.errors.append(f"session {which}: {what} → {typ} {data!r}")

    def known_uids() -> list[int]:
        typ, data = c.uid("SEARCH", "ALL")
        check(typ, data, "SEARCH")
        return [int(x) for x in data[0].split()] if typ == "OK" and data[0] else []

    while time.monotonic() < stop:
        op = rnd.choice(["append", "append", "store", "store", "store", "expunge", "fetch",
                         "copy", "move", "search"])
        with rec.lock:
            rec.ops += 1
        if op == "append":
            n += 1
            mid = f"s{which}-{n}@stress.test"
            flags = " ".join(rnd.sample(FLAGS[:2] + FLAGS[3:], rnd.randint(0, 2)))
            body = (f"Subject: {mid}\r\nMessage-ID: <{mid}>\r\n\r\nstress {mid}\r\n").encode()
            typ, data = c.append("INBOX", f"({flags})" if flags else None, None, body)
            check(typ, data, "APPEND")
            m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"") if typ == "OK" else None
            if m:
                uid = int(m.group(1))
                if uid <= last_uid:
                    rec.errors.append(f"session {which}: APPENDUID {uid} after {last_uid}")
                last_uid = uid
                with rec.lock:
                    if uid in rec.appended.values():
                        rec.errors.append(f"UID {uid} given twice")
                    rec.appended[mid] = uid
            continue
        uids = known_uids()
        if not uids:
            continue
        pick = rnd.sample(uids, min(len(uids), rnd.randint(1, 3)))
        uidset = ",".join(map(str, pick))
        if op == "store":
            flags = rnd.sample(FLAGS, rnd.randint(1, 2))
            mode = rnd.choice(["+FLAGS", "-FLAGS", "FLAGS"])
            if "\\Deleted" in flags and mode != "-FLAGS":
                with rec.lock:  # mark first: the message may go as soon as it is flagged
                    rec.deleted_uids.update(pick)
            typ, data = c.uid("STORE", uidset, mode, f"({' '.join(flags)})")
            check(typ, data, f"STORE {mode} {flags}")
        elif op == "expunge":
            check(*c.expunge(), "EXPUNGE")
        elif op == "fetch":
            typ, data = c.uid("FETCH", uidset, "(UID FLAGS MODSEQ BODY.PEEK[HEADER])")
            check(typ, data, "FETCH")
            for item in data:
                line = item[0] if isinstance(item, tuple) else item
                if not isinstance(line, bytes):
                    continue
                m = _FETCH_RE.search(line)
                if m:
                    uid = int(m.group(1) or m.group(4))
                    ms = int(m.group(2) or m.group(3))
                    if ms < modseqs.get(uid, 0):
                        rec.errors.append(f"MODSEQ of UID {uid} went back {modseqs[uid]}→{ms}")
                    modseqs[uid] = ms
        elif op == "copy":
            check(*c.uid("COPY", uidset, "Archive"), "COPY")
        elif op == "move":
            with rec.lock:
                rec.moved_uids.update(pick)
            check(*c.uid("MOVE", uidset, "Archive"), "MOVE")
        else:
            check(*c.uid("SEARCH", "UNSEEN"), "SEARCH")
    worker.clients[which] = c  # type: ignore[attr-defined]


def _view(fetch: tuple[str, list]) -> dict[int, set[str]]:
    out = {}
    for line in fetch[1]:
        if isinstance(line, bytes):
            m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
            if m:
                uid = int(m.group(1) or m.group(4))
                flags = m.group(2) if m.group(1) else m.group(3)
                out[uid] = set(flags.decode().split()) - {"\\Recent"}
    return out


def test_random_operations_keep_the_invariants(stack: Stack) -> None:
    setup = stack.imap(0, select=None)
    assert setup.create("Archive")[0] == "OK"
    setup.logout()
    rec = Recorder()
    worker.clients = {}  # type: ignore[attr-defined]
    stop = time.monotonic() + DURATION
    threads = [threading.Thread(target=worker, args=(stack, i, 1000 + i, rec, stop))
               for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not rec.errors, rec.errors[:20]
    clients = worker.clients  # type: ignore[attr-defined]
    assert len(clients) == SESSIONS
    fresh = stack.imap(1)
    inbox = fresh.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    ids_in_inbox = re.findall(rb"<([^>]+@stress\.test)>", b"".join(
        x[1] for x in inbox[1] if isinstance(x, tuple)))
    assert len(ids_in_inbox) == len(set(ids_in_inbox)), "a message is in INBOX twice"
    fresh.select("Archive")
    archive = fresh.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    ids_in_archive = set(re.findall(rb"<([^>]+@stress\.test)>", b"".join(
        x[1] for x in archive[1] if isinstance(x, tuple))))
    present = {i.decode() for i in ids_in_inbox} | {i.decode() for i in ids_in_archive}
    deleted = {m for m, u in rec.appended.items() if u in rec.deleted_uids}
    moved = {m for m, u in rec.appended.items() if u in rec.moved_uids}
    lost = set(rec.appended) - deleted - present
    assert not lost, f"lost without \\Deleted: {sorted(lost)}"
    not_moved_or_deleted = set(rec.appended) - deleted - moved
    assert not_moved_or_deleted <= {i.decode() for i in ids_in_inbox}
    fresh.select("INBOX")
    truth = _view(fresh.uid("FETCH", "1:*", "(UID FLAGS)"))
    for which, c in clients.items():  # nothing changes now: after NOOP, every view is the truth
        assert c.noop()[0] == "OK"
        c.untagged_responses.clear()  # imaplib keeps earlier unsolicited FETCHes here
        view = _view(c.uid("FETCH", "1:*", "(UID FLAGS)"))
        assert view == truth, (which, {u: view.get(u) for u in set(view) ^ set(truth)},
                               {u: (view.get(u), truth.get(u)) for u in view
                                if view.get(u) != truth.get(u)})
        c.logout()
    print(f"{rec.ops} operations, {len(rec.appended)} appended, {len(truth)} left in INBOX")
