"""The README's example tests for the plugin, and docs/testing.md's recipes that need no other
framework, are complete and pass as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import plugin_args

README = Path(__file__).resolve().parents[2] / "README.md"
GUIDE = README.parent / "docs" / "testing.md"
#: recipes for frameworks that are not mailstack dependencies are shown, not run
NOT_INSTALLED = ("from django", "from flask")


def example_tests() -> list[str]:
    text = README.read_text()
    section = text.split("## Testing your application against mailstack", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return [b for b in blocks if "def test_" in b]


def test_readme_examples_pass(pytester: pytest.Pytester, plugin_env: None) -> None:
    blocks = example_tests()
    assert len(blocks) >= 4  # 587 sender, IMAP reader, POP3 fetcher, fault injection
    expected = 0
    for i, block in enumerate(blocks):
        pytester.makepyfile(**{f"test_readme_{i}": block})
        expected += block.count("\ndef test_")
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=expected)


def guide_tests() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    return [b for b in blocks if "def test_" in b and not any(m in b for m in NOT_INSTALLED)]


def test_guide_recipes_pass(pytester: pytest.Pytester, plugin_env: None) -> None:
    blocks = guide_tests()
    assert len(blocks) >= 4  # aiosmtplib, retry-then-succeed, IMAP worker, reset link
    expected = 0
    for i, block in enumerate(blocks):
        pytester.makepyfile(**{f"test_guide_{i}": block})
        expected += block.count("\ndef test_") + block.count("\nasync def test_")
    result = pytester.runpytest_subprocess(*plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=expected)
