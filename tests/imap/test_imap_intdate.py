"""INTERNALDATE keeps the zone APPEND gave it (RFC 3501 §6.3.11, RFC 9051 §6.3.12): FETCH shows
the instant in that zone, SEARCH BEFORE/ON/SINCE compare the calendar date in it ("disregarding
time and timezone"), COPY and MOVE keep it, and an index from before the zone was kept still
serves (its messages are shown in the server's zone, as before)."""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import re
import sqlite3

from imapclient import IMAPClient

from mailstack.store.account import INDEX_FILE, SCHEMA_VERSION, AccountStore
from tests.imap.conftest import PASSWORD, USER, message

# Around the two daylight-saving changes of 2007 in Eastern Europe (+0200 <-> +0300), and near
# midnight on either side of UTC: whatever the server's own zone, some of these fall on another
# calendar day there than in their own zone.
DST = [
    "24-Mar-2007 23:00:00 +0200", "25-Mar-2007 00:00:00 +0200", "25-Mar-2007 01:00:00 +0200",
    "25-Mar-2007 02:00:00 +0200", "25-Mar-2007 04:00:00 +0300", "25-Mar-2007 23:00:00 +0300",
    "26-Mar-2007 00:00:00 +0300",
    "27-Oct-2007 23:00:00 +0300", "28-Oct-2007 00:00:00 +0300", "28-Oct-2007 01:00:00 +0300",
    "28-Oct-2007 02:00:00 +0300", "28-Oct-2007 03:00:00 +0300", "28-Oct-2007 03:00:00 +0200",
    "28-Oct-2007 04:00:00 +0200", "28-Oct-2007 23:00:00 +0200", "29-Oct-2007 00:00:00 +0200",
    "10-Jan-2026 23:30:00 -0500", "11-Jan-2026 00:15:00 +0300",
]


def _day(date_time: str) -> dt.date:
    """The calendar date a date-time names in its own zone: the one it is written with."""
    return dt.datetime.strptime(date_time.split()[0], "%d-%b-%Y").date()


def _append_all(c: imaplib.IMAP4, mailbox: str, dates: list[str]) -> None:
    for i, d in enumerate(dates):
        typ, _ = c.append(mailbox, "", f'"{d}"', message(f"m{i}").replace(b"\n", b"\r\n"))
        assert typ == "OK"


def _search(c: imaplib.IMAP4, *criteria: str) -> list[int]:
    typ, data = c.search(None, *criteria)
    assert typ == "OK", data
    return [int(n) for n in data[0].split()]


def _internaldates(c: imaplib.IMAP4, which: str = "1:*") -> list[str]:
    typ, data = c.fetch(which, "(INTERNALDATE)")
    assert typ == "OK", data
    return [re.search(rb'INTERNALDATE "([^"]+)"', x).group(1).decode() for x in data]


def _as_sent(date_time: str) -> str:
    """INTERNALDATE text (a space-padded day) of a date-time as APPEND wrote it."""
    day, rest = date_time.split("-", 1)
    return f"{int(day):2d}-{rest}"


async def test_fetch_internaldate_is_in_the_appended_zone(imap):
    def go() -> None:
        c = imap.client()
        _append_all(c, "INBOX", DST)
        c.select("INBOX")
        assert _internaldates(c) == [_as_sent(d) for d in DST]
        # the instant itself is kept: ARRIVAL order is that of the instants, whatever the zone
        typ, data = c.uid("SORT", "(ARRIVAL)", "UTF-8", "ALL")
        assert typ == "OK"
        instants = [dt.datetime.strptime(d, "%d-%b-%Y %H:%M:%S %z") for d in DST]
        assert [int(n) for n in data[0].split()] == [
            i + 1 for i in sorted(range(len(DST)), key=lambda i: (instants[i], i))]
        c.logout()
    await asyncio.to_thread(go)


async def test_search_before_on_since_use_each_messages_own_date(imap):
    def go() -> None:
        c = imap.client()
        _append_all(c, "INBOX", DST)
        c.select("INBOX")
        days = [_day(d) for d in DST]
        for q in sorted(set(days) | {d + dt.timedelta(days=1) for d in days}
                        | {d - dt.timedelta(days=1) for d in days}):
            text = f"{q.day}-{q:%b-%Y}"
            assert _search(c, "ON", text) == [i + 1 for i, d in enumerate(days) if d == q], text
            assert _search(c, "BEFORE", text) == [i + 1 for i, d in enumerate(days) if d < q]
            assert _search(c, "SINCE", text) == [i + 1 for i, d in enumerate(days) if d >= q]
        # spelled out, as a conformance checker asks
        assert _search(c, "ON", "25-Mar-2007") == [2, 3, 4, 5, 6]
        assert _search(c, "1:7", "BEFORE", "26-Mar-2007") == [1, 2, 3, 4, 5, 6]
        assert _search(c, "8:16", "ON", "28-Oct-2007") == [9, 10, 11, 12, 13, 14, 15]
        assert _search(c, "8:16", "SINCE", "29-Oct-2007") == [16]
        assert _search(c, "ON", "10-Jan-2026") == [17]
        assert _search(c, "ON", "11-Jan-2026") == [18]
        c.logout()
    await asyncio.to_thread(go)


async def test_multiappend_and_catenate_keep_each_zone(imap):
    dates = ["10-Jan-2026 23:30:00 -0500", "11-Jan-2026 00:15:00 +0300"]
    body = message("catenated").replace(b"\n", b"\r\n")

    def go() -> None:
        with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
            c.login(USER, PASSWORD)
            c.multiappend("INBOX", [
                {"msg": message(f"m{i}").replace(b"\n", b"\r\n"),
                 "date": dt.datetime.strptime(d, "%d-%b-%Y %H:%M:%S %z")}
                for i, d in enumerate(dates)])
            typ, data = c._imap._simple_command(  # CATENATE: no client has it built in
                "APPEND", "INBOX", '"11-Jan-2026 00:15:00 +1400"',
                f"CATENATE (TEXT {{{len(body)}+}}\r\n".encode() + body + b")")
            assert typ == "OK", data
            c.select_folder("INBOX")
            c.normalise_times = False  # the datetimes as sent, zone and all
            got = c.fetch([1, 2, 3], ["INTERNALDATE"])
            assert [got[u][b"INTERNALDATE"].utcoffset() for u in sorted(got)] == [
                dt.timedelta(hours=-5), dt.timedelta(hours=3), dt.timedelta(hours=14)]
            assert c.search(["ON", dt.date(2026, 1, 11)]) == [2, 3]
            c.logout()
    await asyncio.to_thread(go)


async def test_copy_and_move_keep_the_zone(imap):
    dates = ["10-Jan-2026 23:30:00 -0500", "11-Jan-2026 00:15:00 +0300"]

    def go() -> None:
        c = imap.client()
        for box in ("Kept", "Moved"):
            assert c.create(box)[0] == "OK"
        _append_all(c, "INBOX", dates)
        c.select("INBOX")
        assert c.copy("1:2", "Kept")[0] == "OK"
        c.select("Kept")
        typ, _ = c._simple_command("MOVE", "1:2", "Moved")
        assert typ == "OK"
        c.select("Moved")
        assert _internaldates(c) == [_as_sent(d) for d in dates]
        assert _search(c, "ON", "10-Jan-2026") == [1]
        assert _search(c, "ON", "11-Jan-2026") == [2]
        c.select("INBOX")
        assert _internaldates(c) == [_as_sent(d) for d in dates]
        c.logout()
    await asyncio.to_thread(go)


async def test_a_zone_of_a_day_or_more_is_a_bad_date_time(imap):
    def go() -> None:
        c = imap.client()
        for bad in ("01-Jan-2026 10:00:00 +2400", "01-Jan-2026 10:00:00 -0060"):
            try:
                c.append("INBOX", "", f'"{bad}"', b"Subject: x\r\n\r\nx\r\n")
            except imaplib.IMAP4.error as exc:
                assert "date-time" in str(exc), exc
            else:
                raise AssertionError(f"{bad} was accepted")
        _append_all(c, "INBOX", ["01-Jan-2026 10:00:00 +2359"])  # the widest one there is
        c.select("INBOX")
        assert _internaldates(c) == [" 1-Jan-2026 10:00:00 +2359"]
        c.logout()
    await asyncio.to_thread(go)


def _local(ts: float) -> str:
    d = dt.datetime.fromtimestamp(ts).astimezone()
    return f"{d.day:2d}-{d:%b-%Y %H:%M:%S %z}"


async def test_an_index_from_before_the_zone_column_migrates_and_serves(imap):
    md = imap.inbox
    for i in range(2):
        imap.deliver(message(f"old{i}"))
    store = AccountStore.open(md.root)
    snap, _ = store.sync("INBOX")
    stamps = [e.internaldate for e in snap.entries]
    AccountStore.forget(md.root)
    # back to schema version 2: no zone column
    db = sqlite3.connect(md.root / INDEX_FILE)
    db.execute("ALTER TABLE message DROP COLUMN tzoff")
    db.execute("UPDATE meta SET value=2 WHERE name='version'")
    db.commit()

    def go() -> None:
        c = imap.client()
        c.select("INBOX")
        assert _internaldates(c) == [_local(t) for t in stamps]  # the server's zone, as before
        _append_all(c, "INBOX", ["11-Jan-2026 00:15:00 +0300"])
        c.select("INBOX")
        assert _internaldates(c, "3") == ["11-Jan-2026 00:15:00 +0300"]
        assert _search(c, "ON", "11-Jan-2026") == [3]
        c.logout()
    await asyncio.to_thread(go)
    assert db.execute("SELECT value FROM meta WHERE name='version'").fetchone()[0] \
        == SCHEMA_VERSION == 3
    assert [r[0] for r in db.execute("SELECT tzoff FROM message ORDER BY uid")] == [None, None,
                                                                                   180]
