"""File systems of their own for deployment tests (they need the right to mount)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(args: list[str], mnt: Path, what: str) -> Iterator[Path]:
    mnt.mkdir()
    r = subprocess.run(["mount", *args, str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount {what} here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs."""
    yield from _mount(["-t", "tmpfs", "-o", "size=4m", "tmpfs"], tmp_path / "small",
                      "a small tmpfs")


@pytest.fixture
def journaled_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 with a journal, in a file on a loop device."""
    image = tmp_path / "ext4.img"
    with open(image, "wb") as fh:
        fh.truncate(64 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 file system here: {made.stderr.strip()}")
    yield from _mount(["-o", "loop", str(image)], tmp_path / "ext4", "an ext4 on a loop device")
