"""`runbook plan PARAMS` and `runbook deploy PARAMS [--from N] [--only N,...] [--resume RECORD]
[--yes] [--force-checks] [--records DIR]`: run the handbook's notebooks with papermill into a record.

`plan` renders every step's commands and checks what it can without touching anything or
connecting anywhere; `deploy` applies. Bad params exit 2 before any kernel starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runbook.core.errors import InputError
from runbook.engine.steps import Mode
from runbook.notebook.records import default_root, resolve


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
        "--resume", metavar="RECORD", help="continue a failed or interrupted record"
    )
    deploy.add_argument("--yes", action="store_true", help="confirm dangerous steps (disk wipe)")
    deploy.add_argument(
        "--force-checks",
        action="store_true",
        help="go on although a `runbook doctor` check fails (00 stops the deploy otherwise)",
    )
    deploy.set_defaults(func=handle, mode=Mode.DEPLOY)


def handle(args: argparse.Namespace) -> int:
    from runbook.notebook import runner

    root: Path = args.records or default_root()
    only = tuple(x.strip() for x in args.only.split(",") if x.strip()) if args.only else ()
    if args.only is not None and not only:
        raise InputError("--only: expected notebook numbers such as 05,06")
    resume = resolve(root, args.resume) if args.resume else None
    if resume is not None and (args.from_ or only):
        raise InputError("--resume continues the record's own notebooks: drop --from/--only")
    req = runner.RunRequest(
        params=args.params,
        mode=args.mode,
        records_root=root,
        confirm=bool(args.yes),
        force_checks=bool(args.force_checks),
        from_=args.from_,
        only=only,
        resume=resume,
        secrets_dir=args.secrets,
    )
    return runner.run(req)
