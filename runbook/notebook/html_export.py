"""HTML exports of a record's executed notebooks, on a background thread (masked; the step
records' display outputs are left out, their lines are printed anyway)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Final

from runbook.core.masking import mask
from runbook.engine.steps import STEP_MIMETYPE

logger: Final = logging.getLogger(__name__)


class Exports:
    """HTML exports on a background thread, overlapping the next notebook's execution."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runbook-html")
        self._pool.submit(_warm_nbconvert)  # its import and templates cost ~0.5 s: overlap them
        self._pending: list[Any] = []

    def submit(self, nb: Any, path: Path) -> None:
        self._pending.append(self._pool.submit(export_html, nb, path))

    def wait(self) -> None:
        """Every export written (a failed export is logged, not fatal: the .ipynb is there)."""
        for future in self._pending:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - the record stays usable without HTML
                logger.warning("HTML export failed: %s", mask(str(exc)))
        self._pool.shutdown()


def _warm_nbconvert() -> None:
    from nbconvert import HTMLExporter

    HTMLExporter()  # type: ignore[no-untyped-call]


def export_html(nb: Any, path: Path) -> None:
    """The notebook as HTML; step records are dropped (their lines are printed anyway)."""
    import copy

    from nbconvert import HTMLExporter

    shown = copy.deepcopy(nb)
    for cell in shown.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if STEP_MIMETYPE not in o.get("data", {})]
    body, _ = HTMLExporter().from_notebook_node(shown)  # type: ignore[no-untyped-call]
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(mask(body))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves no stray .tmp (the .ipynb is kept)
        raise
