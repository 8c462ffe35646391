"""HTML exports of a record's executed notebooks, on a background thread (masked; the step
records' display outputs are left out, their lines are printed anyway).

The pages load nothing from the internet: nbconvert's `lab` template is used with its
require.js, MathJax, mermaid and widget-manager script blocks emptied (`OFFLINE`), so a
record reads the same on a machine with no network; its CSS is inlined by the template.
Each page is titled with the notebook, the deployment and the record (`title`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Final

from runbook.core.masking import mask
from runbook.engine.steps import STEP_MIMETYPE

logger: Final = logging.getLogger(__name__)


# nbconvert's lab page without its <script src="https://cdnjs...">: require.js (for
# widgets), MathJax (for $...$ math, which no runbook notebook has), mermaid, widgets.
OFFLINE: Final = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
_TEMPLATE: Final = "runbook-offline.html.j2"


def exporter() -> Any:
    """nbconvert's HTMLExporter with the offline lab template."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(  # type: ignore[no-untyped-call]
        template_name="lab",
        extra_loaders=[DictLoader({_TEMPLATE: OFFLINE})],
        template_file=_TEMPLATE,
    )


class Exports:
    """HTML exports on a background thread, overlapping the next notebook's execution."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runbook-html")
        self._pool.submit(_warm_nbconvert)  # its import and templates cost ~0.5 s: overlap them
        self._pending: list[Any] = []

    def submit(self, nb: Any, path: Path, title: str = "") -> None:
        self._pending.append(self._pool.submit(export_html, nb, path, title))

    def wait(self) -> None:
        """Every export written (a failed export is logged, not fatal: the .ipynb is there)."""
        for future in self._pending:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - the record stays usable without HTML
                logger.warning("HTML export failed: %s", mask(str(exc)))
        self._pool.shutdown()


def _warm_nbconvert() -> None:
    exporter()


def export_html(nb: Any, path: Path, title: str = "") -> None:
    """The notebook as HTML titled `title` (else the file's name); step records are dropped
    (their lines are printed anyway)."""
    import copy

    shown = copy.deepcopy(nb)
    for cell in shown.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if STEP_MIMETYPE not in o.get("data", {})]
    shown.metadata["title"] = title or shown.metadata.get("title") or path.stem
    body, _ = exporter().from_notebook_node(shown)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(mask(body))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves no stray .tmp (the .ipynb is kept)
        raise
