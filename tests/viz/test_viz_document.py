"""The report's document model has its own module: no _render <-> report import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import moekit.viz

VIZ = Path(moekit.viz.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_render_does_not_import_report_and_both_share_the_document_model():
    render = _imported_modules(VIZ / "_render.py")
    report = _imported_modules(VIZ / "report.py")
    assert not any(n.startswith("moekit.viz.report") for n in render)
    assert "moekit.viz._document" in render and "moekit.viz._document" in report
    from moekit.viz import Section, Table, _document
    from moekit.viz import report as report_module

    assert Section is _document.Section is report_module.Section
    assert Table is _document.Table is report_module.Table
