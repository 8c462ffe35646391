"""Deployment records: one folder per run under the records root.

    records/<UTC time>-<deployment>/
        manifest.json        the run, typed below (`Manifest`)
        run.log              everything streamed to the terminal, masked
        NN-name.ipynb        each executed notebook (written whole, never half)
        NN-name.html         its HTML export, for reading without Jupyter

Step outcomes are read back from the executed notebooks' display outputs of mimetype
`runbook.steps.STEP_MIMETYPE`. pandas is imported only by the table functions.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypedDict

from runbook.errors import InputError
from runbook.steps import STEP_MIMETYPE, StepRecord

if TYPE_CHECKING:
    import pandas as pd

logger: Final = logging.getLogger(__name__)

MANIFEST: Final = "manifest.json"
RUN_LOG: Final = "run.log"
RECORDS_ENV: Final = "RUNBOOK_RECORDS"


class StepEntry(TypedDict):
    step: str
    host: str
    outcome: str
    reason: str
    duration: float


class NotebookEntry(TypedDict):
    notebook: str
    status: str  # pending | running | completed | failed | interrupted
    start: str | None
    end: str | None
    duration: float | None
    failed_step: str | None
    error: str | None
    steps: list[StepEntry]


class Manifest(TypedDict):
    id: str
    deployment: str
    params: str
    params_digest: str
    runbook_version: str
    papermill_version: str
    nixos_config_commit: str | None
    mode: str  # plan | deploy
    status: str  # running | completed | failed | interrupted
    started: str
    ended: str | None
    duration: float | None
    failure: str | None
    notebooks: list[NotebookEntry]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_root() -> Path:
    return Path(os.environ.get(RECORDS_ENV) or "records")


def new_record_dir(root: Path, deployment: str, now: datetime) -> Path:
    """`<root>/<UTC time>-<deployment>`, made now; a suffix keeps two runs apart."""
    root.mkdir(parents=True, exist_ok=True)
    base = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{deployment}"
    for n in range(1, 1000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise InputError(f"{root}: too many records named {base}")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_manifest(record: Path, manifest: Manifest) -> None:
    write_json_atomic(record / MANIFEST, manifest)


def read_manifest(record: Path) -> Manifest:
    path = record / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{record}: not a record (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or "notebooks" not in data:
        raise InputError(f"{path}: not a runbook manifest")
    return data  # type: ignore[return-value]


def step_records(nb: Any) -> list[StepRecord]:
    """The step outcomes a notebook published (display outputs of STEP_MIMETYPE)."""
    found: list[StepRecord] = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            data = out.get("data") or {}
            if STEP_MIMETYPE in data:
                found.append(data[STEP_MIMETYPE])
    return found


def step_entries(records: list[StepRecord]) -> list[StepEntry]:
    return [
        StepEntry(
            step=r["step"],
            host=r["host"],
            outcome=r["outcome"],
            reason=r["reason"],
            duration=r["duration"],
        )
        for r in records
    ]


def resolve(root: Path, ref: str | Path) -> Path:
    """A record given as a path or as its id (folder name) under `root`."""
    path = Path(ref)
    for candidate in (path, root / path):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise InputError(
        f"record {ref}: not found (expected a folder with {MANIFEST}, or an id in {root})"
    )


def list_records(root: Path) -> list[tuple[Path, Manifest]]:
    """Every readable record under `root`, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for child in sorted(root.iterdir()):
        if (child / MANIFEST).is_file():
            try:
                out.append((child, read_manifest(child)))
            except InputError as exc:
                logger.warning("skipping %s", exc)
    return out


def latest(root: Path | str) -> Path | None:
    found = list_records(Path(root))
    return found[-1][0] if found else None


def failed_step(m: Manifest) -> str | None:
    for nb in m["notebooks"]:
        if nb["status"] in ("failed", "interrupted"):
            step = nb["failed_step"] or "-"
            return f"{nb['notebook']}: {step}"
    return None


def summary_rows(root: Path) -> list[dict[str, Any]]:
    return [
        {
            "id": m["id"],
            "deployment": m["deployment"],
            "mode": m["mode"],
            "status": m["status"],
            "started": m["started"],
            "duration": m["duration"],
            "failed step": failed_step(m),
        }
        for _, m in list_records(root)
    ]


def notebook_rows(record: Path) -> list[dict[str, Any]]:
    m = read_manifest(record)
    return [
        {
            "notebook": nb["notebook"],
            "status": nb["status"],
            "start": nb["start"],
            "end": nb["end"],
            "duration": nb["duration"],
            "steps": len(nb["steps"]),
            "failed step": nb["failed_step"],
            "error": nb["error"],
        }
        for nb in m["notebooks"]
    ]


def table(root: Path | str) -> pd.DataFrame:
    """The records as a pandas table: id, deployment, mode, status, started, duration, failed step."""
    import pandas as pd

    columns = ["id", "deployment", "mode", "status", "started", "duration", "failed step"]
    return pd.DataFrame(summary_rows(Path(root)), columns=columns)


def notebook_table(record: Path | str) -> pd.DataFrame:
    import pandas as pd

    columns = ["notebook", "status", "start", "end", "duration", "steps", "failed step", "error"]
    return pd.DataFrame(notebook_rows(Path(record)), columns=columns)
