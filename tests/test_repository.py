"""The repository itself: its licence, and what a run of the README's commands leaves behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_the_declared_licence_is_in_the_repository():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert "Apache-2.0" in str(declared)
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


@pytest.mark.parametrize("left_behind", ["moekit-demo/report.html", "runs/lm/metrics.jsonl",
                                         ".venv/bin/python"])
def test_what_the_readme_commands_write_is_ignored(left_behind):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an sdist): .gitignore does not apply")
    done = subprocess.run(["git", "check-ignore", "-q", left_behind], cwd=ROOT)
    assert done.returncode == 0, f"{left_behind} would show up in git status"
