"""The README's example runs as written, and its test command is what CI runs.

Every ```python block in README.md is executed; ```py blocks are illustrations
that need hardware or data the tests do not have.
"""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert os.path.exists(tmp_path / "digits_vae.keras")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = ".venv/bin/python -m pytest -q -n 2"  # two processes (pytest-xdist), one per core
    assert command in readme and command in ci
    assert 'pip install --quiet -e ".[dev]"' in ci or "pip install -q -e \".[dev]\"" in ci
