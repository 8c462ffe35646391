"""The notebooks, built from the runbook's outline (`runbook.sections.outline`).

A section notebook is thin: the handbook's text, a `parameters` cell, one cell per step cell of
the outline, a summary, and an optional step panel for JupyterLab. The runner executes these
built notebooks, never a file a user may have edited; `notebooks/*.ipynb` in a checkout are the
same notebooks written out for reading and for stepping through (`check` says when they differ).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nbformat

PARAMETERS: Final = """\
# Parameters: papermill injects a run's values in the cell below. Paths and flags only:
# never a secret (papermill stores parameters in plain text); secrets come from the store.
params = "../params/cache.yaml"  # the deployment's params file
mode = "plan"  # plan: render the commands and check what it can, touch nothing; deploy: apply
confirm = False  # True confirms dangerous steps (bootstrap0 wipes the disk); `runbook deploy --yes`
force_checks = False  # True goes on although a doctor check fails; `runbook deploy --force-checks`
secrets_dir = ""  # the secret store; empty: $RUNBOOK_SECRETS or ~/.local/state/runbook/secrets
record_dir = ""  # this run's record folder, set by `runbook deploy`/`plan`
"""

WIDGETS: Final = """## Step by step (optional, in JupyterLab)

One row per step with **Plan** (its commands), **Check** (already done?) and **Apply** (a deploy
of that one step: check, then apply; a dangerous step needs the *confirm* box). A batch run
(`runbook deploy`/`plan`) shows no panel and keeps no widget in its record."""

PANEL: Final = (
    "from runbook.notebook.widgets import interactive_panel\n"
    "from runbook.sections.outline import section_steps\n\n"
    "interactive_panel(ctx, section_steps(s))"
)

DASHBOARD: Final = "records-dashboard"
DASHBOARD_TITLE: Final = """# Records · 部署记录 — the runs at a glance

Every `runbook plan` / `runbook deploy` leaves a record folder: the executed notebooks (each
opening with a banner: what the record is and its steps), their HTML, `run.log`, `manifest.json`,
a copy of the params file, `timeline.png` and an `index.html` linking them. This dashboard reads
them with `runbook.notebook.dashboard`: the runs, one record's timeline and steps, and how long
each deployment takes over time."""

DASHBOARD_PARAMS: Final = """\
records_root = "../records"  # the records folder (`runbook --records DIR`, RUNBOOK_RECORDS)
record = ""  # the record to look at: its id or a prefix of it; empty: the latest
"""


@dataclass(frozen=True)
class SectionSource:
    """What a section notebook is built from (one entry of the outline)."""

    name: str  # the notebook's name, e.g. "02-console-ip"
    module: str  # runbook.sections.<module>
    title: str
    cells: tuple[tuple[str, str], ...]  # (heading markdown, step code)


def _md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text)  # type: ignore[no-untyped-call,no-any-return]


def _code(text: str, *tags: str) -> nbformat.NotebookNode:
    meta = {"tags": list(tags)} if tags else {}
    return nbformat.v4.new_code_cell(text, metadata=meta)  # type: ignore[no-untyped-call,no-any-return]


def _notebook(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding gives no diff
    nb.cells = cells
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb  # type: ignore[no-any-return]


def _quiet(code: str) -> str:
    """The step cell with its last call's value kept (`_ = ...`): the outcome line already
    says it, so JupyterLab shows no `<Outcome.PLAN: 'plan'>` under it."""
    *head, last = code.split("\n")
    return "\n".join([*head, last if last.startswith("_ = ") else f"_ = {last}"])


def with_values(cell: str, values: Mapping[str, str]) -> str:
    """A parameters cell with `name = ...` set to `values[name]` (its comment kept)."""
    out = []
    for line in cell.split("\n"):
        name, eq, rest = line.partition(" = ")
        if eq and name in values:
            comment = rest[rest.index("  #") :] if "  #" in rest else ""
            line = f"{name} = {values[name]!r}{comment}"
        out.append(line)
    return "\n".join(out)


def section_notebook(
    src: SectionSource, values: Mapping[str, str] | None = None
) -> nbformat.NotebookNode:
    cells = [
        _md(src.title),
        _code(with_values(PARAMETERS, values or {}), "parameters"),
        _code(
            f"from runbook.sections import {src.module} as s\n"
            "from runbook.engine.steps import open_context\n\n"
            "ctx = open_context(s.NOTEBOOK, params, mode, confirm, secrets_dir, record_dir)"
        ),
    ]
    for heading, code in src.cells:
        cells += [_md(heading), _code(_quiet(code))]
    cells += [_md("## Summary"), _code("_ = ctx.summary()"), _md(WIDGETS), _code(PANEL)]
    return _notebook(cells)


def dashboard_notebook(values: Mapping[str, str] | None = None) -> nbformat.NotebookNode:
    return _notebook(
        [
            _md(DASHBOARD_TITLE),
            _code(with_values(DASHBOARD_PARAMS, values or {}), "parameters"),
            _md(
                "## The runs, newest first\n\nStatus in colour; a run that did not complete "
                "is tinted, with the step that failed and why."
            ),
            _code(
                "from runbook.notebook import dashboard\n\n"
                "board = dashboard.load(records_root)\n"
                "board.runs_table()"
            ),
            _md(
                "## Timeline of one record\n\nThe latest record, or the one `record` names: each "
                "notebook a pale bar, its steps inside it coloured by outcome; a failed step is "
                "named. The same picture is the record's `timeline.png` (in its `index.html`)."
            ),
            _code("board.timeline(record)"),
            _md("## Steps of that record"),
            _code("board.steps_table(record)"),
            _md("## How long each deployment takes, over time\n\n✗: a run that did not complete."),
            _code("board.durations()"),
        ]
    )


def _text(nb: nbformat.NotebookNode) -> str:
    text: str = nbformat.writes(nb)  # type: ignore[no-untyped-call]
    return text if text.endswith("\n") else text + "\n"  # as nbformat.write leaves a file


def rendered(
    sources: Iterable[SectionSource], values: Mapping[str, str] | None = None
) -> dict[str, str]:
    """File name -> the .ipynb text of every notebook, the dashboard included; `values` set
    parameters (`params`, `secrets_dir`, the dashboard's `records_root`)."""
    out = {f"{src.name}.ipynb": _text(section_notebook(src, values)) for src in sources}
    out[f"{DASHBOARD}.ipynb"] = _text(dashboard_notebook(values))
    return out


def write(
    sources: Iterable[SectionSource], folder: Path, values: Mapping[str, str] | None = None
) -> list[Path]:
    """Write every notebook into `folder` (made if missing); the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered(sources, values).items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def differences(sources: Iterable[SectionSource], folder: Path) -> list[str]:
    """One line per notebook in `folder` that is not what the outline builds (edited, saved
    with outputs, missing, or not built from the outline at all)."""
    want = rendered(sources)
    problems = []
    for name, text in want.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        have = path.read_text(encoding="utf-8")
        if have == text:
            continue
        try:
            outputs = any(c.get("outputs") for c in json.loads(have).get("cells", []))
        except ValueError:
            outputs = False
        why = "saved with outputs" if outputs else "differs from its source"
        problems.append(f"{path}: {why}")
    for path in sorted(folder.glob("*.ipynb")):
        if path.name not in want:
            problems.append(f"{path}: not built from the outline")
    return problems
