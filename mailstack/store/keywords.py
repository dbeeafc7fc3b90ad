"""Keyword ↔ Maildir letter map of one folder, in Dovecot's ``dovecot-keywords`` file.

System flags use the Maildir letters (D Draft, F Flagged, R Replied, S Seen, T Trashed, and P
Passed for ``$Forwarded``). The first 26 keywords of a folder take the letters a-z;
``dovecot-keywords`` maps them (``0 $Junk`` means letter ``a``). The file is only appended to,
under the account's index write lock. Keywords beyond 26 are kept by the index alone.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

KEYWORDS_FILE = "dovecot-keywords"
SYSTEM_TO_LETTER = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S",
                    "\\Deleted": "T", "$Forwarded": "P"}
LETTER_TO_SYSTEM = {v: k for k, v in SYSTEM_TO_LETTER.items()}
MAX_LETTERS = 26


class Keywords:
    """The keyword ↔ letter map of one folder, re-read when the file changes."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / KEYWORDS_FILE
        self._stamp: tuple[int, int] | None = None
        self._names: dict[str, str] = {}  # letter → keyword
        self._letters: dict[str, str] = {}  # lower-case keyword → letter

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._names, self._letters, self._stamp = {}, {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        names: dict[str, str] = {}
        try:
            text = self.path.read_text("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            idx, _, name = line.partition(" ")
            if idx.isdigit() and int(idx) < MAX_LETTERS and name and " " not in name:
                names[string.ascii_lowercase[int(idx)]] = name
        self._names, self._stamp = names, stamp
        self._letters = {v.lower(): k for k, v in names.items()}

    def names(self) -> list[str]:
        self._load()
        return list(self._names.values())

    def name(self, letter: str) -> str | None:
        self._load()
        return self._names.get(letter)

    def letter(self, keyword: str, *, assign: bool = False) -> str | None:
        """The letter of ``keyword``; with ``assign``, a free letter is given to a new one
        (None when all 26 are taken: the keyword then lives in the index only)."""
        self._load()
        hit = self._letters.get(keyword.lower())
        if hit or not assign:
            return hit
        free = [c for c in string.ascii_lowercase if c not in self._names]
        if not free:
            return None
        letter = free[0]
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{string.ascii_lowercase.index(letter)} {keyword}\n".encode())
        finally:
            os.close(fd)
        self._load()
        return self._letters.get(keyword.lower())
