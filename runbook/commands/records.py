"""`runbook records [--json]` lists the records; `runbook show RECORD [--json]` one record,
notebook by notebook and step by step. RECORD is a record's folder, its id, a unique prefix
of its id, or `latest`.

Tables fit the terminal (its width from shutil.get_terminal_size; the widest text column
is cut with "…"); durations are whole seconds with units ("12 s", "1 min 5 s"); outcomes
are coloured on a terminal only (runbook.core.terminal). --json prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runbook.core import terminal
from runbook.core.errors import EXIT_OK, InputError
from runbook.notebook.records import (
    MANIFEST,
    Manifest,
    default_root,
    latest,
    list_records,
    read_manifest,
    resolve,
    summary_rows,
)

LATEST = "latest"
GAP = "  "


def register(sub: argparse._SubParsersAction[Any]) -> None:
    ls = sub.add_parser("records", help="list the deployment records")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--records", type=Path, metavar="DIR", help="records root")
    ls.set_defaults(func=handle_records)
    show = sub.add_parser("show", help="one record, notebook by notebook and step by step")
    show.add_argument(
        "record",
        metavar="RECORD",
        help="a record folder, its id, a unique prefix of its id, or 'latest'",
    )
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    show.add_argument("--records", type=Path, metavar="DIR", help="records root")
    show.set_defaults(func=handle_show)


# -- finding a record ---------------------------------------------------------------------------


def find(root: Path, ref: str) -> Path:
    """`latest` (the newest record under `root`), a folder, an id, or a unique id prefix."""
    if ref == LATEST:
        newest = latest(root)
        if newest is None:
            raise InputError(
                f"record latest: no records in {root} (`runbook plan PARAMS` makes one)"
            )
        return newest
    try:
        return resolve(root, ref)
    except InputError:
        if "/" in ref or not ref:
            raise
    ids = [p for p, _ in list_records(root) if p.name.startswith(ref)]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise InputError(
            f"record {ref}: not found (expected a folder with {MANIFEST}, an id or its prefix "
            f"in {root}, or 'latest')"
        )
    shown = ", ".join(p.name for p in ids[:4]) + (", …" if len(ids) > 4 else "")
    raise InputError(f"record {ref}: {len(ids)} records start so ({shown}): give more of the id")


# -- how values read -----------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """Whole seconds with units: "0 s", "12 s", "1 min 5 s", "2 h 3 min"; "-" when unknown."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def when(stamp: str | None) -> str:
    """`2026-01-01T00:00:00.000000Z` as `2026-01-01 00:00:00Z` (UTC, to the second)."""
    if not stamp:
        return "-"
    return stamp.replace("T", " ", 1).split(".", 1)[0].removesuffix("Z") + "Z"


def _failed_step(m: Manifest) -> str:
    for nb in m["notebooks"]:
        if nb["status"] in ("failed", "interrupted", "terminated"):
            return f"{nb['notebook'][:2]}: {nb['failed_step'] or '(no step)'}"
    return "-"


# -- tables ---------------------------------------------------------------------------------


def render(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    shrink: Sequence[int],
    colour_col: int | None = None,
) -> list[str]:
    """A plain table in `width` columns: the columns in `shrink` (widest first) are cut with
    "…" until it fits; `colour_col`'s cells are painted by their own word."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    over = sum(widths) + len(GAP) * (len(widths) - 1) - width
    floors = {i: min(widths[i], max(len(header[i]), 8)) for i in shrink}
    while over > 0:  # one character at a time from the widest column that can give one
        give = [i for i in shrink if widths[i] > floors[i]]
        if not give:
            break
        widths[max(give, key=lambda j: widths[j])] -= 1
        over -= 1
    lines = []
    for n, row in enumerate([list(header), *map(list, rows)]):
        cells = []
        for i, cell in enumerate(row):
            text = terminal.cut(cell, widths[i])
            pad = text.ljust(widths[i]) if i < len(row) - 1 else text
            if n and i == colour_col:
                pad = terminal.paint(cell, pad)
            cells.append(pad)
        lines.append(GAP.join(cells).rstrip())
    return lines


def records_lines(root: Path, width: int) -> list[str]:
    found = list_records(root)
    if not found:
        return [f"no records in {root} (`runbook plan PARAMS` makes one)"]
    header = ["id", "deployment", "mode", "status", "started (UTC)", "took", "failed step"]
    rows = [
        [
            m["id"],
            m["deployment"],
            m["mode"],
            m["status"],
            when(m["started"]),
            duration(m["duration"]),
            _failed_step(m),
        ]
        for _, m in found
    ]
    return render(header, rows, width=width, shrink=[6, 0, 1], colour_col=3)


def show_lines(record: Path, width: int) -> list[str]:
    m = read_manifest(record)
    first = (
        f"{m['id']} · {m['deployment']} · {m['mode']} · {m['status']} · "
        f"{duration(m['duration'])} · {when(m['started'])} → {when(m['ended'])}"
    )
    lines = [
        terminal.cut(first, width).replace(
            m["status"], terminal.paint(m["status"], m["status"]), 1
        ),
        terminal.cut(
            f"params sha256 {m['params_digest'][:12]} · runbook {m['runbook_version']} · "
            f"papermill {m['papermill_version']}"
            + (
                f" · nixos-config {m['nixos_config_commit'][:12]}"
                if m["nixos_config_commit"]
                else ""
            ),
            width,
        ),
    ]
    header = ["step", "host", "outcome", "took", "reason"]
    # one table for every notebook's steps (its columns line up), a heading per notebook
    heads: dict[int, list[str]] = {}
    rows: list[list[str]] = []
    for nb in m["notebooks"]:
        steps = nb["steps"]
        head = (
            f"{nb['notebook']} · {nb['status']} · {duration(nb['duration'])} · {len(steps)} steps"
        )
        said = ["", terminal.paint(nb["status"], terminal.cut(head, width))]
        if nb["status"] != "completed" and (nb["failed_step"] or nb["error"]):
            at = f"at step {nb['failed_step']!r}: " if nb["failed_step"] else ""
            said.append(terminal.cut(f"  ✗ {at}{' '.join((nb['error'] or '').split())}", width))
        heads[len(rows)] = said
        rows += [
            [
                "  " + s["step"],
                s["host"],
                s["outcome"],
                duration(s["duration"]),
                " ".join(s["reason"].split()) or "-",
            ]
            for s in steps
        ]
    table = render(header, rows, width=width, shrink=[4, 0, 1], colour_col=2)[1:] if rows else []
    for n in range(len(rows) + 1):
        lines += heads.get(n, [])
        if n < len(rows):
            lines.append(table[n])
    if m["failure"]:
        lines += ["", terminal.paint("failed", "failure:") + f" {m['failure']}"]
    return lines


def handle_records(args: argparse.Namespace) -> int:
    root: Path = args.records or default_root()
    if args.json:
        print(json.dumps(summary_rows(root), indent=2))
    else:
        print("\n".join(records_lines(root, terminal.width())))
    return EXIT_OK


def handle_show(args: argparse.Namespace) -> int:
    record = find(args.records or default_root(), args.record)
    if args.json:
        print(json.dumps(read_manifest(record), indent=2))
        return EXIT_OK
    print("\n".join(show_lines(record, terminal.width())))
    return EXIT_OK
