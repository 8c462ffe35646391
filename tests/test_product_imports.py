"""The lab is an environment, not a branch: no product module imports `runbook.lab`.

The lab package may import the product, never the reverse; the CLI's `runbook lab` command
(runbook/commands/lab.py) is the one entry point into it. Walks every product module's
syntax tree, so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parents[1] / "runbook"
ENTRY_POINTS = {RUNBOOK / "commands" / "lab.py"}


def product_modules() -> list[Path]:
    lab = RUNBOOK / "lab"
    return sorted(
        p for p in RUNBOOK.rglob("*.py") if not p.is_relative_to(lab) and p not in ENTRY_POINTS
    )


def lab_imports(path: Path) -> list[str]:
    """Each import of runbook.lab in `path`, as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            names = [
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
        for name in names:
            if name == "runbook.lab" or name.startswith("runbook.lab."):
                found.append(f"{getattr(node, 'lineno', '?')}: {name}")
                break
    return found


def test_no_product_module_imports_the_lab() -> None:
    modules = product_modules()
    assert len(modules) > 30, modules  # the walk found the product
    offenders = {str(p.relative_to(RUNBOOK)): lab_imports(p) for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walk_sees_every_form_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import runbook.lab.console\n"
        "from runbook.lab import console\n"
        "from runbook import lab\n"
        "def f():\n"
        "    from runbook.lab.config import LabParams\n"
        "    importlib.import_module('runbook.lab.host')\n"
        "from runbook.labels import x\n"  # another module whose name starts alike
    )
    assert [line.split(":")[0] for line in lab_imports(sample)] == ["1", "2", "3", "5", "6"]
