"""How long a mailbox name may be: its Maildir++ folder is one directory entry, ``.`` + name.

A name whose entry would pass the file system's NAME_MAX (255 octets on Linux file systems)
cannot exist; it is refused with ``NO [CANNOT]`` before any file-system call (which would fail
with ENAMETOOLONG), and a RENAME is refused before it starts when a child's new name would
not fit, so a rename never stops half-way.
"""

from __future__ import annotations

from collections.abc import Iterable

NAME_MAX = 255
MAX_NAME = NAME_MAX - 1  # octets of a mailbox name (the folder adds a leading ".")


def fits(name: str) -> bool:
    """True when a folder for ``name`` can be made."""
    return len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME


def renamed_fit(old: str, new: str, names: Iterable[str]) -> bool:
    """True when ``old`` and each of its children still fit once renamed under ``new``."""
    prefix = old + "."
    return all(fits(new + n[len(old):]) for n in names if n == old or n.startswith(prefix))
