"""The package as users get it: `pip wheel .` builds a wheel that installs (with its
dependencies, from the package index) and runs the pytest plugin in a fresh virtual environment;
the version follows the changelog."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import mailstack

REPO = Path(__file__).resolve().parents[2]

PLUGIN_TEST = '''
import smtplib


def test_plugin_from_the_wheel(mailstack, mailstack_user):
    import mailstack as pkg
    assert "/venv/" in pkg.__file__, pkg.__file__
    with smtplib.SMTP(mailstack.host, mailstack.ports["smtp"], timeout=10) as s:
        s.sendmail("a@example.test", [mailstack_user.address], "Subject: wheel\\r\\n\\r\\nok\\r\\n")
    assert mailstack.wait_for_message(mailstack_user.address, timeout=10).text == "ok\\n"
'''


def test_version_follows_the_changelog() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    first = re.search(r"^## (\d+\.\d+\.\d+)", changelog, re.M)
    assert first is not None and first.group(1) == mailstack.__version__
    assert 'dynamic = ["version"]' in (REPO / "pyproject.toml").read_text()


def test_wheel_installs_and_runs_the_plugin(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mailstack", src / "mailstack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTEST_ADDOPTS") and not k.startswith("MAILSTACK_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(src)], env=env, check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("mailstack-*.whl")
    assert wheel.name.startswith(f"mailstack-{mailstack.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:  # every daemon's package is in it (not only those
        names = set(zf.namelist())     # with an __init__.py found by setuptools)
    for module in ("mailstack/http/daemon.py", "mailstack/jmap/core.py",
                   "mailstack/imap/daemon.py", "mailstack/store/account.py"):
        assert module in names, module
    venv = tmp_path / "venv"  # fresh: nothing of this checkout or its installation in sight
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env, check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel), "pytest"], env=env,
                   check=True, capture_output=True, timeout=600)
    out = subprocess.run([str(venv / "bin" / "mailstack"), "--version"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"mailstack {mailstack.__version__}", out.stderr
    project = tmp_path / "app"
    project.mkdir()
    (project / "test_app.py").write_text(PLUGIN_TEST)
    res = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "test_app.py"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout
    where = subprocess.run([str(py), "-c", "import mailstack; print(mailstack.__file__)"],
                           cwd=project, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout
