"""A few seconds of ``bench/soak.py`` so that the soak run keeps working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .helpers import ROOT, cli_env

pytestmark = pytest.mark.e2e


def test_soak_smoke() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "8",
                           "--rate", "10", "--users", "4", "--progress", "4"],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "\nPASS: " in out, out
    assert "lost 0, duplicated 0, misdelivered 0" in out, out
