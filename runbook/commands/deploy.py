"""`runbook plan PARAMS` and `runbook deploy PARAMS [--from N] [--only N,...] [--resume RECORD]
[--yes] [--force-checks] [--records DIR]`: run the handbook's notebooks with papermill into a record.

`plan` renders every step's commands and checks what it can without touching anything or
connecting anywhere; `deploy` applies. Bad params exit 2 before any kernel starts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runbook.commands.records import find
from runbook.core import terminal
from runbook.core.errors import InputError
from runbook.core.params import load
from runbook.engine.steps import Mode
from runbook.notebook import build
from runbook.notebook.records import default_root
from runbook.sections import outline

# a checkout's notebooks/ (absent from an installed package): the outline's rendering
CHECKOUT_NOTEBOOKS = Path(outline.__file__).resolve().parents[2] / "notebooks"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", type=Path, metavar="PARAMS", help="the deployment's params YAML")
    p.add_argument("--from", dest="from_", metavar="N", help="start at notebook N (e.g. 05)")
    p.add_argument("--only", metavar="N,...", help="run only these notebooks (e.g. 05,06)")
    p.add_argument(
        "--records",
        type=Path,
        metavar="DIR",
        help="records root (default $RUNBOOK_RECORDS or ./records)",
    )
    p.add_argument(
        "--secrets", type=Path, metavar="DIR", help="secret store (default $RUNBOOK_SECRETS)"
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    plan = sub.add_parser("plan", help="show every step's commands and checks; change nothing")
    _common(plan)
    plan.set_defaults(func=handle, mode=Mode.PLAN, resume=None, yes=False, force_checks=False)
    deploy = sub.add_parser("deploy", help="run the notebooks in order into a record")
    _common(deploy)
    deploy.add_argument(
        "--resume",
        metavar="RECORD",
        help="continue a failed or interrupted record (a folder, an id, its prefix or latest)",
    )
    deploy.add_argument("--yes", action="store_true", help="confirm dangerous steps (disk wipe)")
    deploy.add_argument(
        "--force-checks",
        action="store_true",
        help="go on although a `runbook doctor` check fails (00 stops the deploy otherwise)",
    )
    deploy.set_defaults(func=handle, mode=Mode.DEPLOY)


@contextlib.contextmanager
def built_notebooks() -> Iterator[Path]:
    """The notebooks a run executes: built from the outline into a temp dir, removed after."""
    with tempfile.TemporaryDirectory(prefix="runbook-notebooks-") as built:
        build.write(outline.sources(), Path(built))
        yield Path(built)


def _note_edited_checkout() -> None:
    """Say so when a checkout's notebooks were edited (in JupyterLab, say): the run executes
    the outline's notebooks, so an edit there would otherwise be lost without a word."""
    if not CHECKOUT_NOTEBOOKS.is_dir():
        return
    for line in build.differences(outline.sources(), CHECKOUT_NOTEBOOKS):
        if not line.endswith(": saved with outputs"):
            print(f"note: {line}; the run uses runbook/sections/outline.py", file=sys.stderr)


def handle(args: argparse.Namespace) -> int:
    from runbook.notebook import runner

    root: Path = args.records or default_root()
    only = tuple(x.strip() for x in args.only.split(",") if x.strip()) if args.only else ()
    if args.only is not None and not only:
        raise InputError("--only: expected notebook numbers such as 05,06")
    resume = find(root, args.resume) if args.resume else None
    if resume is not None and (args.from_ or only):
        raise InputError("--resume continues the record's own notebooks: drop --from/--only")
    load(args.params)  # bad params: exit 2 now, before any notebook is built
    _note_edited_checkout()
    with built_notebooks() as notebooks:
        req = runner.RunRequest(
            params=args.params,
            notebooks_dir=notebooks,
            mode=args.mode,
            records_root=root,
            confirm=bool(args.yes),
            force_checks=bool(args.force_checks),
            from_=args.from_,
            only=only,
            resume=resume,
            secrets_dir=args.secrets,
            colour=terminal.enabled(),
        )
        return runner.run(req)
