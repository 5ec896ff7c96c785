"""The README's Python examples run as written (issue 16 item 20).

Every ```python block of README.md is executed in a fresh namespace, in a temporary working folder (the
examples write files such as ``last.pt``). Paths to ``../shared/fixtures/`` are read relative to the
repository, as the README says; a block that needs them is skipped where that folder is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = "../shared/fixtures/"


def _blocks() -> list[tuple[int, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        out.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return out


BLOCKS = _blocks()


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_example_runs(line, code, tmp_path, monkeypatch):
    fixtures = (REPO / FIXTURES).resolve()
    if FIXTURES in code:
        if not fixtures.is_dir():
            pytest.skip(f"the example at README.md:{line} reads {FIXTURES}, which is absent here")
        code = code.replace(FIXTURES, f"{fixtures}/")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "readme_example"})  # noqa: S102
