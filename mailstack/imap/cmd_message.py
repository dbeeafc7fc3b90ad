"""Message commands on the selected mailbox: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE,
UNSELECT (each also as UID command where RFC 3501/4315/6851 allow)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Iterator

from ..runtime.logsafe import safe
from ..store.account import OverQuota
from ..store.flags import FlagError
from . import binary, fetch, qresync
from .cache import FolderCache
from .cmd_mailbox import existing_mailbox, mailbox_arg, quota_of
from .mailbox import Msg, Selected
from .session import SELECTED, Bad, Disconnect, No, Session, command
from .wire import ParseError, Parser, SeqSet
from .wire import compact_set as _uid_ranges

BATCH_BYTES = 1 << 20  # message octets read per worker-thread hop in a FETCH
YIELD_AFTER = 0.002  # seconds of rendering in the event loop before other sessions get a turn
MANY = 2000  # messages named by one command: other sessions get a turn before the work starts


def _selected(s: Session) -> Selected:
    assert s.selected is not None
    return s.selected


def targets(sel: Selected, seqset: SeqSet, uid: bool) -> list[tuple[int, Msg]]:
    """Messages named by a sequence set; a sequence number beyond EXISTS is an error, but
    ``1:*`` or ``*`` in an empty mailbox names no message (RFC 9051 6.4.4 ff.)."""
    if seqset.saved:  # "$" (RFC 5182): what the last SEARCH saved, those still here
        return sel.by_uids(sel.saved)
    if uid:
        largest = sel.uids[-1] if sel.uids else 0
        return sel.by_uidset(seqset.resolve(largest))
    if not sel.exists:
        if any(None not in r for r in seqset.ranges):
            raise Bad("invalid message sequence number")
        return []
    if seqset.max_explicit() > sel.exists:
        raise Bad("invalid message sequence number")
    return sel.by_seqset(seqset.resolve(sel.exists))


# -- FETCH ----------------------------------------------------------------------------------
@command("FETCH", SELECTED, uid_ok=True, expunge_ok=False)
async def cmd_fetch(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    seqset = p.seq_set()
    p.sp()
    atts = fetch.parse_atts(p)
    changed_since, vanished = qresync.parse_fetch_modifiers(p)
    p.end()
    if vanished and not (uid and s.qresync):
        raise Bad("VANISHED needs UID FETCH and ENABLE QRESYNC")
    if changed_since is not None or any(a.name == "MODSEQ" for a in atts):
        s.enable_condstore()
    sel = _selected(s)
    msgs = targets(sel, seqset, uid)
    if len(msgs) > MANY:  # parsing, the refresh and the set took their share: others' turn
        await asyncio.sleep(0)
    if vanished:
        assert changed_since is not None and sel.snapshot is not None
        gone = await asyncio.to_thread(sel.store.vanished, sel.snapshot.mailbox_id,
                                       changed_since)
        s.send(qresync.vanished_line(qresync.within(gone, seqset.resolve(1 << 32)),
                                     earlier=True))
    if changed_since is not None:
        msgs = [(q, m) for q, m in msgs if m.modseq > changed_since]
    if not sel.readonly and any(a.sets_seen for a in atts):
        unseen = [m.uid for _, m in msgs if not m.seen]
        seen = set((await asyncio.to_thread(sel.store_flags, unseen, "+", ["\\Seen"])).changed
                   ) if unseen else set()
        if seen:
            await s.send_changes(await s.changes(expunge_ok=False, own=seen))
            msgs = _current(sel, msgs)
            if not any(a.name == "FLAGS" for a in atts):
                atts = [*atts, fetch.Att("FLAGS")]
            if s.condstore and not uid and not any(a.name == "UID" for a in atts):
                atts = [*atts, fetch.Att("UID")]  # RFC 7162 §3.1.4: UID and MODSEQ with it
    if any(a.name == "PREVIEW" for a in atts):  # the summaries at once, off the loop
        await asyncio.to_thread(sel.store.summaries, sel.name, [m for _, m in msgs])
    cache = FolderCache.for_root(sel.maildir.root)
    if not cache.loaded and any(a.needs_body for a in atts):  # its first read: off the loop
        await asyncio.to_thread(cache.load)
    try:
        missing = await _send_fetch(s, sel, msgs, atts, uid)
    except binary.UnknownCTE as exc:
        raise No(f"unknown Content-Transfer-Encoding {safe(str(exc), 40)}", "UNKNOWN-CTE"
                 ) from None
    if cache.due():
        await asyncio.to_thread(cache.save, {m.key for m in sel.msgs})
    held_back_modseq(s, sel)
    if missing:
        raise No("some of the requested messages no longer exist", "EXPUNGEISSUED")
    return f"{'UID ' if uid else ''}FETCH completed"


def held_back_modseq(s: Session, sel: Selected) -> None:
    """MODSEQs were sent while expunges wait: tell a QRESYNC client a HIGHESTMODSEQ below
    them, so that a connection lost now cannot make it skip those expunges (RFC 7162 3.2)."""
    if s.qresync and sel.private:
        s.untagged(f"OK [HIGHESTMODSEQ {sel.held_modseq}] expunges pending")


async def _send_fetch(s: Session, sel: Selected, msgs: list[tuple[int, Msg]],
                      atts: list[fetch.Att], uid: bool) -> bool:
    """Render and send one response per message, streaming; True when some were gone.

    Whole messages are read in a worker thread, a batch of at most BATCH_BYTES (or one
    message) at a time; each response goes out in pieces with the session's output budget, so
    memory stays bounded whatever the attributes ask for. Metadata-only FETCHes render in the
    loop and yield every YIELD_AFTER seconds."""
    missing = False
    drop = bool(s.cfg.faults) and s.cfg.faults_at("fetch", s.user) is not None
    heavy = fetch.needs_body(atts)
    cache = FolderCache.for_root(sel.maildir.root)
    loop = asyncio.get_running_loop()
    since = loop.time()
    for batch in _batches(msgs, heavy):
        loads = deque(fetch.Loaded(sel, m, cache) for _, m in batch)
        ready: list[bool] | None = None
        if heavy:
            ready = await asyncio.to_thread(_prepare_all, loads, atts)
        try:
            for i, (seq, _) in enumerate(batch):
                load = loads.popleft()  # its data is freed once its response is sent
                if ready is not None:
                    ok = ready[i]
                elif fetch.scans(load, atts):  # a big message's structure: not in the loop
                    ok = await asyncio.to_thread(fetch.prepare, load, atts)
                else:
                    ok = fetch.prepare(load, atts)
                if not ok:
                    load.close()
                    missing = True
                    continue
                parts = fetch.pieces(load, seq, atts, uid=uid, modseq=s.condstore)
                if drop:  # [[faults]] at = "fetch": half a response, then the connection goes
                    line = b"".join(parts)
                    s.send(line[:len(line) // 2])
                    await s.flush()
                    raise Disconnect("fault injected: connection dropped mid-FETCH")
                try:
                    await s.send_pieces(parts)
                finally:
                    load.close()
                if loop.time() - since > YIELD_AFTER:
                    await s.maybe_flush()
                    await asyncio.sleep(0)  # let other sessions run
                    since = loop.time()
        finally:
            for load in loads:  # what an error left unsent
                load.close()
    return missing


def _batches(msgs: list[tuple[int, Msg]], heavy: bool) -> Iterator[list[tuple[int, Msg]]]:
    """Messages in groups: whole-message reads up to BATCH_BYTES of files (at least one)."""
    if not heavy:
        yield from (msgs[i:i + 512] for i in range(0, len(msgs), 512))
        return
    batch: list[tuple[int, Msg]] = []
    size = 0
    for item in msgs:
        batch.append(item)
        size += item[1].size or BATCH_BYTES
        if size >= BATCH_BYTES or len(batch) >= 64:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _prepare_all(loads: Iterable[fetch.Loaded], atts: list[fetch.Att]) -> list[bool]:
    return [fetch.prepare(load, atts) for load in loads]


def _current(sel: Selected, msgs: list[tuple[int, Msg]]) -> list[tuple[int, Msg]]:
    """The same messages as now seen after a refresh (new flags, positions kept)."""
    out = []
    for _, m in msgs:
        seq = sel.seq_of(m.uid)
        if seq is not None:
            out.append((seq, sel.msgs[seq - 1]))
    return out


# -- STORE ----------------------------------------------------------------------------------
@command("STORE", SELECTED, uid_ok=True, expunge_ok=False)
async def cmd_store(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.sp()
    seqset = p.seq_set()
    p.sp()
    unchanged_since = None
    if p.maybe_open():
        p.expect(b"UNCHANGEDSINCE")
        p.sp()
        unchanged_since = p.number64()
        p.close_paren()
        p.sp()
    item = p.atom().upper()
    mode = item[0] if item[0] in "+-" else ""
    base = item.lstrip("+-")
    if base not in ("FLAGS", "FLAGS.SILENT"):
        raise ParseError("expected FLAGS, +FLAGS or -FLAGS")
    silent = base.endswith(".SILENT")
    p.sp()
    if p.peek() == 0x28:
        flags = p.flag_list()
    else:
        flags = [p.flag()]
        while p.maybe_sp():
            flags.append(p.flag())
    p.end()
    if unchanged_since is not None:
        s.enable_condstore()
    sel = _selected(s)
    if sel.readonly:
        raise No("mailbox is read-only", "READ-ONLY")
    msgs = targets(sel, seqset, uid)
    if len(msgs) > MANY:  # parsing, the refresh and the set took their share: others' turn
        await asyncio.sleep(0)
    try:
        result = await asyncio.to_thread(sel.store_flags, [m.uid for _, m in msgs], mode, flags,
                                         unchanged_since)
    except FlagError as exc:
        raise Bad(str(exc)) from None
    failed_uids = set(result.failed)
    failed = sorted(m.uid if uid else seq for seq, m in msgs if m.uid in failed_uids) \
        if failed_uids else []
    await s.send_changes(await s.changes(expunge_ok=False, own={m.uid for _, m in msgs}))
    gone = sel.gone([m.uid for _, m in msgs])  # expunged elsewhere: nothing was stored
    shown = [] if silent and not s.condstore else _current(sel, msgs)
    for n, (seq, m) in enumerate(shown, 1):
        if n % 512 == 0:  # a long list yields to other sessions (issue 13: <= 10 ms a stretch)
            await s.maybe_flush()
            await asyncio.sleep(0)
        if m.uid in failed_uids or m.uid in gone:
            continue
        parts = []
        if uid or s.condstore:  # RFC 7162 §3.1.4: UID and MODSEQ once CONDSTORE is on
            parts.append(f"UID {m.uid}")
        if not silent:
            parts.append(f"FLAGS ({' '.join(sel.flags(m))})")
        if s.condstore:
            parts.append(f"MODSEQ ({m.modseq})")
        s.send(f"* {seq} FETCH ({' '.join(parts)})\r\n".encode())
    held_back_modseq(s, sel)
    if failed:
        return f"[MODIFIED {','.join(map(str, failed))}] conditional STORE failed"
    if gone and not uid:  # a UID that no longer exists is simply not there (RFC 3501 6.4.8)
        raise No("some of the requested messages no longer exist", "EXPUNGEISSUED")
    return f"{'UID ' if uid else ''}STORE completed"


# -- COPY / MOVE ----------------------------------------------------------------------------

async def _copy_move(s: Session, p: Parser, uid: bool, move: bool) -> str:
    p.sp()
    seqset = p.seq_set()
    p.sp()
    dest = existing_mailbox(s, mailbox_arg(p))
    p.end()
    sel = _selected(s)
    if move and sel.readonly:
        raise No("mailbox is read-only", "READ-ONLY")
    msgs = [m for _, m in targets(sel, seqset, uid)]
    if not msgs:
        return f"{'MOVE' if move else 'COPY'} completed (no messages)"
    try:
        validity, src, new_uids = await asyncio.to_thread(
            sel.store.transfer, sel.name, [m.uid for m in msgs], dest, move=move,
            **quota_of(s))
    except OverQuota:
        raise No("not enough room in the mailbox quota", "OVERQUOTA") from None
    s.changed(dest)
    code = (f"COPYUID {validity} {_uid_ranges(src)} {_uid_ranges(new_uids)}"
            if new_uids else "")
    if move:
        if code:
            s.untagged(f"OK [{code}] moved")
        await s.announce(expunge_ok=True)
        return "MOVE completed"
    return f"[{code}] COPY completed" if code else "COPY completed"


@command("COPY", SELECTED, uid_ok=True)
async def cmd_copy(s: Session, tag: str, p: Parser, uid: bool) -> str:
    return await _copy_move(s, p, uid, move=False)


@command("MOVE", SELECTED, uid_ok=True)
async def cmd_move(s: Session, tag: str, p: Parser, uid: bool) -> str:
    return await _copy_move(s, p, uid, move=True)


# -- EXPUNGE / CLOSE / UNSELECT --------------------------------------------------------------
@command("EXPUNGE", SELECTED, uid_ok=True)
async def cmd_expunge(s: Session, tag: str, p: Parser, uid: bool) -> str:
    only = None
    if uid:
        p.sp()
        seqset = p.seq_set()
        sel = _selected(s)
        only = {m.uid for _, m in targets(sel, seqset, True)}
    p.end()
    sel = _selected(s)
    if sel.readonly:
        raise No("mailbox is read-only", "READ-ONLY")
    await asyncio.to_thread(sel.expunge, only)
    await s.announce(expunge_ok=True)
    if s.condstore and sel.snapshot is not None:  # RFC 7162 3.1.8 / 3.2.10
        return (f"[HIGHESTMODSEQ {sel.snapshot.highest_modseq}] "
                f"{'UID ' if uid else ''}EXPUNGE completed")
    return f"{'UID ' if uid else ''}EXPUNGE completed"


@command("CLOSE", SELECTED)
async def cmd_close(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    sel = _selected(s)
    if not sel.readonly:
        await asyncio.to_thread(sel.expunge, None)
    s.unselect()
    return "CLOSE completed"


@command("UNSELECT", SELECTED)
async def cmd_unselect(s: Session, tag: str, p: Parser, uid: bool) -> str:
    p.end()
    s.unselect()
    return "UNSELECT completed"
