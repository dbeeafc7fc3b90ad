"""Substring search over the account's full-text index (``email_text`` + ``fts``).

A search is two steps: the trigram index names the *candidates* (rows holding every trigram
of each needle, read from the index alone), then each candidate's stored text is *checked*
(the needle is a substring of the casefolded text: Python's linear-time ``in`` on UTF-8
bytes, never a pattern built from the needle). A caller that only needs a window of the hits
(JMAP ``Email/query`` with a ``limit``) checks candidates in its own order, a chunk at a time,
and stops early; one that needs them all checks every candidate once.

Semantics are RFC 3501/9051 SEARCH ``TEXT``/``BODY``: case-insensitive substring, over
decoded header fields (``TEXT``) and text parts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager

Reader = Callable[[], AbstractContextManager[sqlite3.Connection]]
MAX_TRIGRAMS = 32  # index terms asked per needle (more only narrows what is checked anyway)
CHUNK = 500  # rows read per check statement


def trigram_query(needle: str) -> str | None:
    """The FTS5 query naming the needle's trigrams (each a one-token string, so it works
    with ``detail=none``), or None when the needle is shorter than a trigram."""
    grams = list(dict.fromkeys(needle[i:i + 3] for i in range(len(needle) - 2)))
    if not grams:
        return None
    if len(grams) > MAX_TRIGRAMS:  # spread over the needle
        step = len(grams) / MAX_TRIGRAMS
        grams = [grams[int(i * step)] for i in range(MAX_TRIGRAMS)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


class TextSearch:
    """Email ids whose text holds every needle (``("BODY" | "TEXT", needle)``), for one
    request: candidates once, checks on demand (each row checked at most once)."""

    def __init__(self, read: Reader, needles: Sequence[tuple[str, str]]) -> None:
        self._read = read
        self._needles: list[tuple[bool, bytes]] = []
        self._rowid: dict[str, int] | None = None  # candidate email id → index row
        for where, needle in needles:
            try:
                self._needles.append((where == "BODY", needle.casefold().encode()))
            except UnicodeEncodeError:  # a lone surrogate: no stored text holds it
                self._rowid = {}
        self._terms = [trigram_query(needle.casefold()) for _, needle in needles]
        self._checked: dict[str, bool] = {}

    def candidates(self) -> dict[str, int]:
        """Email id → index row of every email that may match (from the index alone)."""
        if self._rowid is None:
            found: dict[str, int] | None = None
            with self._read() as conn:
                for term in dict.fromkeys(self._terms):
                    rows = self._candidate_rows(conn, term)
                    found = rows if found is None else {
                        e: r for e, r in found.items() if e in rows}
                    if not found:
                        break
            self._rowid = found or {}
        return self._rowid

    @staticmethod
    def _candidate_rows(conn: sqlite3.Connection, term: str | None) -> dict[str, int]:
        if term is not None:
            try:
                return dict(conn.execute(
                    "SELECT t.emailid, t.rowid FROM fts f JOIN email_text t ON "
                    "t.rowid = f.rowid WHERE fts MATCH ?", (term,)))
            except sqlite3.OperationalError:  # a query FTS5 refuses: check every row
                pass
        return dict(conn.execute("SELECT emailid, rowid FROM email_text"))

    def check(self, emailids: Iterable[str]) -> set[str]:
        """Those of ``emailids`` that match (reading the text of candidates not yet checked)."""
        cand = self.candidates()
        emailids = list(emailids)
        wanted = list(dict.fromkeys(e for e in emailids if e in cand
                                    and e not in self._checked))
        if wanted:
            by_row = {cand[e]: e for e in wanted}
            rows = list(by_row)
            # FTS5 keeps the text in its content table (``fts_content``: id, c0 = headers,
            # c1 = body); reading it there is a third cheaper than through the virtual table
            columns = "CAST(c1 AS BLOB), CAST(c0 AS BLOB)" if any(
                not b for b, _ in self._needles) else "CAST(c1 AS BLOB), x''"
            with self._read() as conn:
                for i in range(0, len(rows), CHUNK):
                    chunk = rows[i:i + CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for rowid, body, headers in conn.execute(
                            f"SELECT id, {columns} FROM fts_content WHERE id IN ({marks})",
                            chunk):
                        self._checked[by_row[rowid]] = self._holds(headers or b"", body or b"")
            for e in wanted:  # a row gone meanwhile does not match
                self._checked.setdefault(e, False)
        return {e for e in emailids if self._checked.get(e)}

    def matches(self, emailid: str) -> bool:
        """Whether one email matches (answered from what was checked when it was)."""
        hit = self._checked.get(emailid)
        if hit is None:
            hit = emailid in self.candidates() and bool(self.check((emailid,)))
        return hit

    def _holds(self, headers: bytes, body: bytes) -> bool:
        return all(needle in body or (not body_only and needle in headers)
                   for body_only, needle in self._needles)

    def all(self) -> set[str]:
        """Every matching email id."""
        return self.check(self.candidates())
