"""The dependency rules of docs/architecture.md, read from every import statement with `ast`
(function-level and TYPE_CHECKING imports included, relative imports resolved)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "moekit"

# (what the rule says, the files it covers, forbidden module prefixes)
RULES = [
    ("layers/ and kernels/ never import torch.distributed or moekit.parallel",
     ["layers/**/*.py", "kernels/**/*.py"], ["torch.distributed", "moekit.parallel"]),
    ("kernels/ never imports the layers", ["kernels/**/*.py"], ["moekit.layers"]),
    ("estimators/ never imports torch", ["estimators/**/*.py"], ["torch"]),
    ("viz/ and the torch-free modules never import torch",
     ["viz/**/*.py", "runs.py", "_deps.py", "_files.py", "__init__.py"], ["torch"]),
    ("nothing in src imports benchmarks", ["**/*.py"], ["benchmarks"]),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from torch import distributed` / `from moekit import parallel`
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def violations(files: list[Path], forbidden: list[str], root: Path = SRC) -> list[str]:
    out = []
    for path in files:
        name = module_name(path, root)
        for line, target in imported_modules(path.read_text(encoding="utf-8"), name,
                                             path.name == "__init__.py"):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(root)}:{line} imports {target}")
    return out


@pytest.mark.parametrize(("rule", "patterns", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_layering_rule(rule, patterns, forbidden):
    files = sorted({p for pattern in patterns for p in PACKAGE.glob(pattern)})
    assert files, f"no file matches {patterns}"
    assert violations(files, forbidden) == [], rule


def test_the_checker_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "moekit" / "kernels"
    pkg.mkdir(parents=True)
    cases = {
        "a.py": "import torch.distributed as dist\n",
        "b.py": "from torch import distributed\n",
        "c.py": "def f():\n    from ..layers import moe\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import moekit.parallel\n",
        "e.py": "import torch\nfrom moekit.kernels import ops\n",  # allowed
    }
    for name, text in cases.items():
        (pkg / name).write_text(text)
    found = violations(sorted(pkg.glob("*.py")),
                       ["torch.distributed", "moekit.parallel", "moekit.layers"], root=tmp_path)
    assert sorted({f.split(":")[0] for f in found}) == [
        "moekit/kernels/a.py", "moekit/kernels/b.py", "moekit/kernels/c.py", "moekit/kernels/d.py"]
