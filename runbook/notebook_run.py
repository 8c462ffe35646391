"""One notebook of a run: papermill on the shared kernel into a hidden `.partial` file, cell
output streamed (masked) to the terminal and `run.log`, then the notebook moved into place
whole (a record never holds a half-written notebook) and exported to HTML.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from runbook.html_export import Exports, export_html
from runbook.records import step_records
from runbook.secrets import mask
from runbook.steps import StepRecord

logger: Final = logging.getLogger(__name__)


class Stream:
    """Where cell output goes: masked, to the terminal and run.log; remembers the last step."""

    def __init__(self, out: IO[str], log: IO[str]) -> None:
        self.out = out
        self.log = log
        self.current_step = ""
        self.step_started = time.monotonic()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        masked = mask(text)
        with self._lock:
            for line in masked.splitlines():
                if line.startswith("── "):
                    self.current_step = line[3:].split("  @ ")[0]
                    self.step_started = time.monotonic()
            self.out.write(masked)
            self.log.write(masked)
            self.out.flush()
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.out.flush()
        self.log.flush()

    def say(self, line: str) -> None:
        self.write(line + "\n")


@dataclass
class NotebookRun:
    source: Path
    output: Path
    parameters: dict[str, Any]
    error: BaseException | None = None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def partial(self) -> Path:
        return self.output.with_name(f".{self.output.stem}.partial.ipynb")


def execute(km: Any, run: NotebookRun, stream: Stream) -> None:
    """papermill.execute_notebook on the shared kernel; errors are kept on `run`."""
    import papermill

    try:
        papermill.execute_notebook(
            str(run.source),
            str(run.partial),
            parameters=run.parameters,
            kernel_name="python3",
            progress_bar=False,
            stdout_file=stream,
            stderr_file=stream,
            km=km,
            # saved when done (and every 30 s of a long cell), not after every cell: cheaper
            request_save_on_cell_execute=False,
        )
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        run.error = exc


def finish(run: NotebookRun, exports: Exports | None = None) -> None:
    """Move the partial notebook into place whole (or drop it if unreadable); export HTML."""
    import nbformat

    try:
        nb = nbformat.read(run.partial, as_version=4)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        logger.warning("%s: dropping the unreadable partial notebook (%s)", run.output.name, exc)
        run.partial.unlink(missing_ok=True)
        return
    run.steps = step_records(nb)
    tmp = run.output.with_name(f".{run.output.name}.tmp")
    nbformat.write(nb, tmp)  # type: ignore[no-untyped-call]
    os.replace(tmp, run.output)
    run.partial.unlink(missing_ok=True)
    if exports is None:
        export_html(nb, run.output.with_suffix(".html"))
    else:
        exports.submit(nb, run.output.with_suffix(".html"))
