"""LIST/LSUB wildcard patterns against the real daemon: the attack patterns of issue 13 cost
little CPU (measured in this process, where the daemon runs) and match as before."""

from __future__ import annotations

import os
import time

from tests.imap.conftest import PASSWORD, USER, Raw

FOLDERS = 4000


def make_folders(root, n: int) -> None:
    """n Maildir++ folders ``.f<i>.sub`` (and their parents), made directly on disk."""
    for i in range(n):
        for name in (f".f{i}", f".f{i}.sub"):
            for sub in ("cur", "new", "tmp"):
                os.makedirs(root / name / sub, exist_ok=True)


async def test_wildcard_attack_patterns_are_cheap(imap):
    make_folders(imap.inbox.root, FOLDERS // 2)
    c = await Raw.connect(imap)
    assert (await c.cmd("L", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"L OK")
    for tag, pattern in [("a", "%" * 40 + "z"), ("b", "*" * 75 + "z"), ("c", "%*" * 200 + "q"),
                         ("d", "f1%.%" + "%" * 60)]:
        t0 = time.process_time()
        r = await c.cmd(tag, f'LIST "" "{pattern}"', timeout=60)
        used = time.process_time() - t0
        assert r[-1].startswith(f"{tag} OK".encode()), r
        assert used < 1.0, (pattern[:20], used)  # a backtracking regex: 64 s to 9 minutes
    r = await c.cmd("e", 'LIST "" "f1%.s%"')
    assert sorted(line.rsplit(b" ", 1)[1].strip() for line in r[:-1]) == sorted(
        f"f{i}.sub".encode() for i in range(FOLDERS // 2) if str(i).startswith("1"))
    r = await c.cmd("f", 'LSUB "" "' + "*" * 75 + 'z"')
    assert r[-1].startswith(b"f OK"), r
    r = await c.cmd("g", 'LIST "" inbox')
    assert r[0].startswith(b'* LIST (') and r[0].rstrip().endswith(b"INBOX"), r


async def test_overlong_and_too_many_patterns_are_refused(imap):
    c = await Raw.connect(imap)
    assert (await c.cmd("L", f"LOGIN {USER} {PASSWORD}"))[-1].startswith(b"L OK")
    r = await c.cmd("a", f'LIST "" "{"a" * 1025}"')
    assert r[-1].startswith(b"a BAD"), r
    r = await c.cmd("b", 'LIST "" (' + " ".join(["x%"] * 33) + ")")
    assert r[-1].startswith(b"b BAD"), r
    r = await c.cmd("c", 'LIST "" (' + " ".join(["x%"] * 32) + ")")
    assert r[-1].startswith(b"c OK"), r
