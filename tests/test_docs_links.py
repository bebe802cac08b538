"""Every repository path the Markdown files cite exists, and docs/architecture.md lists every
module of the package (a newcomer's map must not lead outside the repository or to old files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "dist", "node_modules", ".hypothesis", ".mypy_cache",
             ".ruff_cache", ".pytest_cache"}
# Bare file names with these suffixes are files of the repository (`quickstart.py`); others
# (`report.html`, `metrics.jsonl`, `patients.csv`) are what commands write or read.
CODE_SUFFIXES = (".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".cfg")
TOP_LEVEL = {p.name for p in ROOT.iterdir()} - SKIP_DIRS


def markdown_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md")
                  if not SKIP_DIRS & set(p.relative_to(ROOT).parts[:-1])
                  and not any(part.endswith(".egg-info") for part in p.parts))


def code_spans(text: str) -> list[str]:
    """The contents of fenced blocks and of inline `code` spans."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", rest)


def cited_paths(md: Path) -> list[str]:
    """Repository paths cited in ``md``: in code spans, and Markdown links to local files."""
    text = md.read_text(encoding="utf-8")
    out = []
    for span in code_spans(text):
        for token in span.split():
            token = token.strip("'\"(),;[]")
            token = re.sub(r":\d+(-\d+)?$", "", token)  # a line number: file.py:12 or :12-34
            if token.startswith(("http", "-", "~", "$")) or "*" in token or "=" in token:
                continue
            first = token.split("/")[0]
            if "/" in token and (first in TOP_LEVEL or first == "moekit") or "/" not in token and token.endswith(CODE_SUFFIXES) and token[0].isalnum():
                out.append(token)
    for target in re.findall(r"\]\(([^)\s#]+)", text):
        if not target.startswith(("http:", "https:", "mailto:")):
            out.append(target)
    return out


def exists(token: str, md: Path) -> bool:
    token = token.rstrip("/")
    candidates = [ROOT / token, md.parent / token]
    if token.startswith("moekit/"):
        candidates.append(ROOT / "src" / token)
    return any(c.exists() for c in candidates)


def test_there_is_something_to_check():
    names = {str(p.relative_to(ROOT)) for p in markdown_files()}
    assert {"README.md", "docs/architecture.md", "docs/README.md", "examples/README.md"} <= names
    assert len(cited_paths(ROOT / "docs" / "architecture.md")) > 50


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_path_exists(md):
    missing = sorted({t for t in cited_paths(md) if not exists(t, md)})
    assert missing == [], f"{md.relative_to(ROOT)} cites paths that do not exist: {missing}"


def test_no_markdown_points_outside_the_repository():
    for md in markdown_files():
        text = md.read_text(encoding="utf-8")
        assert "../shared" not in text and "DESIGN.md" not in text, md


def test_the_architecture_lists_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    unlisted = [rel for path in sorted((ROOT / "src" / "moekit").rglob("*.py"))
                if f"`{(rel := str(path.relative_to(ROOT)))}`" not in text]
    assert unlisted == [], f"docs/architecture.md's layout does not list {unlisted}"


def test_the_checker_catches_a_missing_path(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("See `src/moekit/nowhere.py:12` and `docs/architecture.md`, run `python "
                  "benchmarks/bench_layer.py --quick`; writes `report.html` and `runs/lm`.\n"
                  "```\npython examples/not_here.py\n```\n[link](../nowhere.md)\n")
    assert cited_paths(md) == ["examples/not_here.py", "src/moekit/nowhere.py",
                               "docs/architecture.md", "benchmarks/bench_layer.py",
                               "../nowhere.md"]
    assert [t for t in cited_paths(md) if not exists(t, md)] == [
        "examples/not_here.py", "src/moekit/nowhere.py", "../nowhere.md"]


def test_the_examples_index_lists_every_example():
    index = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    examples = sorted([*(ROOT / "examples").rglob("*.py"), *(ROOT / "examples" / "configs").glob("*")])
    unlisted = [str(p.relative_to(ROOT)) for p in examples
                if f"`{p.relative_to(ROOT)}`" not in index]
    assert unlisted == [], f"examples/README.md does not list {unlisted}"
