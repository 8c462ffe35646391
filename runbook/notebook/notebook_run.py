"""One notebook of a run: papermill on the shared kernel, cell output streamed (masked) to the
terminal and `run.log`, the executed notebook written into the record whole, then exported.

papermill saves the notebook after every cell (and every 30 s of a long cell) into memory
(`MemoryHandler`), never half onto the records disk: whatever ends the run (a signal, a full
disk, a killed kernel), the runner still has the last state and the steps that ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from runbook.core.errors import RecordWriteError
from runbook.core.masking import mask
from runbook.core.terminal import colour_tags
from runbook.engine.steps import StepRecord
from runbook.notebook.html_export import Exports, export_html
from runbook.notebook.records import RunLog, step_records, write_bytes_atomic

if TYPE_CHECKING:
    from runbook.notebook.records import Manifest

logger: Final = logging.getLogger(__name__)

MEMORY_SCHEME: Final = "runbook-memory://"


class MemoryHandler:
    """A papermill I/O handler keeping each saved notebook (JSON text) in memory."""

    saved: Final[dict[str, str]] = {}

    def read(self, path: str) -> str:
        return self.saved[path]

    def listdir(self, path: str) -> list[str]:
        return [p for p in self.saved if p.startswith(path)]

    def write(self, buf: str, path: str) -> None:
        self.saved[path] = buf  # one assignment: the runner's thread reads whole snapshots

    def pretty_path(self, path: str) -> str:
        return path


_registered = False
_register_lock = threading.Lock()


def _register() -> None:
    global _registered
    with _register_lock:
        if not _registered:
            from papermill.iorw import papermill_io

            papermill_io.register(MEMORY_SCHEME, MemoryHandler())
            _registered = True


class Stream:
    """Where cell output goes: masked, to the terminal (its outcome tags coloured when
    `colour`) and run.log (plain); remembers the last step.

    It never raises into the run: a terminal that went away (a closed pipe) sets
    `out_closed`, a log the disk refused sets `log.error`; the runner ends the run on both.
    """

    def __init__(self, out: IO[str], log: RunLog, colour: bool = False) -> None:
        self.out = out
        self.colour = colour  # outcome tags coloured on the terminal only; run.log stays plain
        self.log = log
        self.out_closed = False
        self.current_step = ""
        self.current_host = ""
        self.step_started = time.monotonic()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        masked = mask(text)
        with self._lock:
            for line in masked.splitlines():
                if line.startswith("── "):
                    name, _, host = line[3:].partition("  @ ")
                    self.current_step, self.current_host = name, host.split("  (")[0]
                    self.step_started = time.monotonic()
            self.log.write(masked)
            if not self.out_closed:
                try:
                    self.out.write(colour_tags(masked, self.colour))
                    self.out.flush()
                except (BrokenPipeError, ValueError, OSError):
                    self.out_closed = True
                    _silence(self.out)
        return len(text)

    def flush(self) -> None:
        pass  # every write is flushed already

    def say(self, line: str) -> None:
        self.write(line + "\n")


def _silence(out: IO[str]) -> None:
    """Point a closed pipe's descriptor at /dev/null, so buffered text flushed at exit
    (by this process or the interpreter) does not raise BrokenPipeError again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


@dataclass
class NotebookRun:
    source: Path
    output: Path
    parameters: dict[str, Any]
    error: BaseException | None = None
    steps: list[StepRecord] = field(default_factory=list)
    written: bool = False
    manifest: Manifest | None = None  # the run's: the notebook's banner says what it is
    memory: str = field(default_factory=lambda: f"{MEMORY_SCHEME}{uuid.uuid4().hex}.ipynb")

    def snapshot(self) -> Any | None:
        """The notebook as papermill last saved it (after a cell, or 30 s into one)."""
        import nbformat

        text = MemoryHandler.saved.get(self.memory)
        if text is None:
            return None
        try:
            return nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            logger.warning("%s: unreadable notebook state (%s)", self.output.name, exc)
            return None

    def forget(self) -> None:
        MemoryHandler.saved.pop(self.memory, None)


def execute(km: Any, run: NotebookRun, stream: Stream) -> None:
    """papermill.execute_notebook on the shared kernel; errors are kept on `run`."""
    import papermill

    _register()
    try:
        papermill.execute_notebook(
            str(run.source),
            run.memory,
            parameters=run.parameters,
            kernel_name="python3",
            progress_bar=False,
            stdout_file=stream,
            stderr_file=stream,
            km=km,
            request_save_on_cell_execute=True,  # into memory: cheap, and nothing is lost
        )
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        run.error = exc


def finish(run: NotebookRun, exports: Exports | None = None, status: str | None = None) -> None:
    """The steps that ran (from the last state, whatever ended the notebook), then the
    notebook written whole into the record, opening with its banner (what the record is,
    the notebook's `status` and steps: `pages.add_banner`), and exported. RecordWriteError
    when the disk refuses the notebook: `run.steps` are known all the same."""
    import nbformat

    from runbook.notebook import pages

    nb = run.snapshot()
    run.forget()
    if nb is None:
        return
    run.steps = step_records(nb)
    title = run.output.stem
    if run.manifest is not None:
        status = status or ("failed" if run.error else "completed")
        pages.add_banner(nb, run.manifest, run.source.stem, status, run.steps)
        title = pages.title(run.manifest, run.source.stem)
        nb.metadata["title"] = title  # nbformat's own field: the HTML page's title
    nb.metadata.setdefault("papermill", {})["output_path"] = str(run.output)
    data = nbformat.writes(nb).encode()  # type: ignore[no-untyped-call]
    write_bytes_atomic(run.output, data)
    run.written = True
    html = run.output.with_suffix(".html")
    if exports is None:
        export_html(nb, html, title)
    else:
        exports.submit(nb, html, title)


def export_missing(record: Path, notebooks: list[str], exports: Exports) -> list[str]:
    """HTML for completed notebooks whose export a full disk stopped (`--resume`)."""
    import nbformat

    made = []
    for name in notebooks:
        ipynb, html = record / f"{name}.ipynb", record / f"{name}.html"
        if ipynb.is_file() and not html.is_file():
            try:
                nb = nbformat.read(ipynb, as_version=4)  # type: ignore[no-untyped-call]
            except (OSError, ValueError) as exc:
                logger.warning("%s: cannot export (%s)", ipynb.name, exc)
                continue
            exports.submit(nb, html)
            made.append(html.name)
    return made


__all__ = ["NotebookRun", "RecordWriteError", "Stream", "execute", "finish"]
