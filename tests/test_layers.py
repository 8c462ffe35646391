"""The package's layers: each imports only the layers below it (no cycle), as the README's
"How it is built" lists them; and no two public classes share a name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "runbook"
# lowest first; a package may import any package before it in this list, never one after
LAYERS = ("core", "transport", "mac", "nix", "cache", "engine", "notebook", "doctor",
          "sections", "commands")  # fmt: skip


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        here = rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "runbook" and len(parts) > 1 and parts[1] != here:
                    found[here].add(parts[1])
    return found


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for pkg, deps in _imports().items():
        if pkg not in LAYERS:
            continue
        for dep in deps:
            if dep in LAYERS and LAYERS.index(dep) >= LAYERS.index(pkg):
                wrong.append(f"runbook.{pkg} imports runbook.{dep}")
    assert sorted(wrong) == []


def test_the_readme_lists_the_layers_in_that_order() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    tree = readme[readme.index("## How it is built") :]
    at = [tree.index(f"\n  {pkg}/") for pkg in LAYERS]
    assert at == sorted(at)
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == {*LAYERS, "lab"}


def test_no_two_public_classes_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
