"""`runbook open PARAMS [--records DIR] [--secrets DIR]`: a prepared copy of the notebooks to
step through in JupyterLab.

The copy is built from the runbook's outline into a new folder under the records root, with
its parameters cells pointing at PARAMS (never a secret), so a user's edits and saved outputs
stay in that copy: they never change the runbook, its tests or what `runbook deploy` runs.
To change the runbook itself, edit `runbook/sections/outline.py` (see the README).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runbook.core.errors import EXIT_OK
from runbook.core.params import load
from runbook.notebook import build
from runbook.notebook.records import default_root, new_record_dir, utc_now
from runbook.sections import outline

SUFFIX = "notebooks"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("open", help="a prepared copy of the notebooks for JupyterLab")
    p.add_argument("params", type=Path, metavar="PARAMS", help="the deployment's params YAML")
    p.add_argument("--records", type=Path, metavar="DIR", help="records root (default ./records)")
    p.add_argument("--secrets", type=Path, metavar="DIR", help="secret store (default its own)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    loaded = load(args.params)  # bad params: exit 2 here, before anything is written
    root: Path = (args.records or default_root()).resolve()
    folder = new_record_dir(root, f"{loaded.deployment.deployment}-{SUFFIX}", utc_now())
    values = {"params": str(loaded.path.resolve()), "records_root": str(root)}
    if args.secrets is not None:
        values["secrets_dir"] = str(args.secrets.resolve())
    build.write(outline.sources(), folder, values)
    print(f"notebooks for {loaded.deployment.deployment}: {folder}")
    print(f"  jupyter lab {folder}")
    return EXIT_OK
