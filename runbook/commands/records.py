"""`runbook records [--json]` lists the records; `runbook show RECORD [--json]` one record's
notebooks. Tables are pandas DataFrames; --json prints the same rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from runbook.core.errors import EXIT_OK
from runbook.notebook.records import (
    default_root,
    notebook_rows,
    read_manifest,
    resolve,
    summary_rows,
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    ls = sub.add_parser("records", help="list the deployment records")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--records", type=Path, metavar="DIR", help="records root")
    ls.set_defaults(func=handle_records)
    show = sub.add_parser("show", help="one record, notebook by notebook")
    show.add_argument("record", metavar="RECORD", help="a record folder or its id")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    show.add_argument("--records", type=Path, metavar="DIR", help="records root")
    show.set_defaults(func=handle_show)


def _print_table(rows: list[dict[str, Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    import pandas as pd

    with pd.option_context(
        "display.width", 200, "display.max_columns", None, "display.max_colwidth", 60
    ):
        print(pd.DataFrame(rows).fillna("-").to_string(index=False))


def handle_records(args: argparse.Namespace) -> int:
    root: Path = args.records or default_root()
    rows = summary_rows(root)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, f"no records in {root}")
    return EXIT_OK


def handle_show(args: argparse.Namespace) -> int:
    record = resolve(args.records or default_root(), args.record)
    if args.json:
        print(json.dumps(read_manifest(record), indent=2))
        return EXIT_OK
    m = read_manifest(record)
    print(
        f"{m['id']}: {m['deployment']} · {m['mode']} · {m['status']} · started {m['started']}"
        f" · params sha256 {m['params_digest'][:12]} · runbook {m['runbook_version']}"
        f" · papermill {m['papermill_version']}"
        + (f" · nixos-config {m['nixos_config_commit'][:12]}" if m["nixos_config_commit"] else "")
    )
    _print_table(notebook_rows(record), "no notebooks")
    if m["failure"]:
        print(f"failure: {m['failure']}")
    return EXIT_OK
