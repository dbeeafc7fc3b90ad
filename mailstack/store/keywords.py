"""IMAP flags ↔ Maildir info letters, with keywords in Dovecot's ``dovecot-keywords`` file.

System flags use the Maildir letters (D Draft, F Flagged, R Replied, S Seen, T Trashed, and P
Passed for ``$Forwarded``). Keywords take the letters a-z; ``dovecot-keywords`` in the folder maps
them (``0 $Junk`` means letter ``a``). The file is only ever appended to, under the folder lock.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

KEYWORDS_FILE = "dovecot-keywords"
SYSTEM_TO_LETTER = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S",
                    "\\Deleted": "T", "$Forwarded": "P"}
LETTER_TO_SYSTEM = {v: k for k, v in SYSTEM_TO_LETTER.items()}
_SYSTEM_UPPER = {k.upper(): k for k in SYSTEM_TO_LETTER}
MAX_KEYWORDS = 26


class KeywordLimit(Exception):
    """All 26 keyword letters are in use."""


class Keywords:
    """The keyword ↔ letter map of one folder, re-read when the file changes."""

    def __init__(self, root: Path) -> None:
        self.path = root / KEYWORDS_FILE
        self._stamp: tuple[int, int] | None = None
        self._names: dict[str, str] = {}  # letter → keyword

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._names, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        names: dict[str, str] = {}
        for line in self.path.read_text("utf-8", "replace").splitlines():
            idx, _, name = line.partition(" ")
            if idx.isdigit() and int(idx) < MAX_KEYWORDS and name:
                names[string.ascii_lowercase[int(idx)]] = name
        self._names, self._stamp = names, stamp

    def names(self) -> list[str]:
        self._load()
        return list(self._names.values())

    def to_imap(self, letters: str) -> list[str]:
        """Maildir letters → IMAP flags (unknown letters are dropped)."""
        out = []
        for ch in letters:
            if ch in LETTER_TO_SYSTEM:
                out.append(LETTER_TO_SYSTEM[ch])
            elif "a" <= ch <= "z":
                if not self._names:
                    self._load()
                name = self._names.get(ch)
                if name is None:
                    self._load()
                    name = self._names.get(ch)
                if name:
                    out.append(name)
        return out

    def to_letters(self, flags: list[str], *, create: bool = True) -> str:
        """IMAP flags → Maildir letters; new keywords get a letter (call under the folder lock)."""
        letters = set()
        for flag in flags:
            sysname = _SYSTEM_UPPER.get(flag.upper())
            if sysname:
                letters.add(SYSTEM_TO_LETTER[sysname])
                continue
            if flag.startswith("\\"):
                continue  # \Recent and unknown system flags are not stored
            letter = self._letter(flag, create)
            if letter:
                letters.add(letter)
        return "".join(sorted(letters))

    def _letter(self, keyword: str, create: bool) -> str | None:
        self._load()
        for letter, name in self._names.items():
            if name.lower() == keyword.lower():
                return letter
        if not create:
            return None
        free = [c for c in string.ascii_lowercase if c not in self._names]
        if not free:
            raise KeywordLimit(keyword)
        letter = free[0]
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{string.ascii_lowercase.index(letter)} {keyword}\n")
        self._load()
        return letter
