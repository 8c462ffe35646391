"""What a record tells a reader: the banner atop each executed notebook, and `index.html`.

Both say what the record is (`about_rows`: deployment, mode, status, UTC start and end, the
machine and operator, the runbook's version and commit, the nixos-config commit, the params
copy); the banner adds the notebook's steps (outcome, host, duration, reason), the index the
run's timeline (`timeline.png`) and a link to each notebook's HTML. They are made after the
fact from the step records the runner collected: nothing that ran is changed (the banner is
one markdown cell put before the notebook's first cell). Everything shown is masked.
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from runbook.core.masking import mask

if TYPE_CHECKING:
    from runbook.notebook.records import Manifest

logger: Final = logging.getLogger(__name__)

BANNER_ID: Final = "runbook-record-banner"
BANNER_TAG: Final = "runbook-record"


def took(seconds: float | None) -> str:
    """A duration for people: `0.4 s`, `12 s`, `1 min 12 s`, `1 h 2 min`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s} s" if s else f"{m} min"


def when(stamp: str | None) -> str:
    """A record's UTC ISO stamp as `2026-12-02 02:31:43 UTC`; `-` when there is none."""
    if not stamp:
        return "-"
    return stamp[:19].replace("T", " ") + " UTC"


def one_line(text: str | None, room: int = 160) -> str:
    """The first line of `text`, cut to `room` characters."""
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= room else line[: room - 1] + "…"


def about_rows(m: Manifest, notebook: str | None = None) -> list[tuple[str, str]]:
    """What the record is, as (label, value) rows; with `notebook`, that notebook's status
    and times instead of the run's."""
    entry = next((nb for nb in m["notebooks"] if nb["notebook"] == notebook), None)
    commit = m.get("runbook_commit") or "-"
    rows = [
        ("record", m["id"]),
        ("deployment", m["deployment"]),
        ("mode", m["mode"]),
    ]
    if entry is not None:
        rows += [
            ("notebook", f"{entry['notebook']} ({entry['status']})"),
            ("started", when(entry["start"])),
            ("ended", when(entry["end"])),
        ]
    else:
        rows += [
            ("status", m["status"]),
            ("started", when(m["started"])),
            ("ended", when(m["ended"])),
            ("took", took(m["duration"])),
        ]
    rows += [
        ("machine", m.get("machine") or "-"),
        ("operator", m.get("operator") or "-"),
        ("runbook", f"{m['runbook_version']}, commit {commit}"),
        ("nixos-config commit", m["nixos_config_commit"] or "-"),
        ("params", f"{m.get('params_copy') or '-'} (a copy of {m['params']})"),
    ]
    if entry is None and m["failure"]:
        rows.append(("failure", m["failure"]))
    return [(k, mask(v)) for k, v in rows]


def _md(text: str) -> str:
    """Text safe in a markdown table cell: escaped HTML, no pipes, one line, and no address
    made a link (a reason may name http://host:8080; a record's pages link nothing outside)."""
    safe = html.escape(" ".join(text.split())).replace("|", "\\|").replace("*", "\\*")
    return safe.replace("://", "&#58;//")


def step_rows(steps: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str, str, str]]:
    """(number, step, host, outcome, took, reason) of each step, masked."""
    return [
        (
            str(i),
            mask(str(s["step"])),
            mask(str(s["host"])),
            str(s["outcome"]),
            took(float(s["duration"])),
            mask(one_line(str(s["reason"]), 300)),
        )
        for i, s in enumerate(steps, 1)
    ]


def banner_markdown(
    m: Manifest, notebook: str, status: str, steps: Sequence[Mapping[str, Any]]
) -> str:
    """The banner atop an executed notebook: what the record is, then the notebook's steps."""
    head = (
        f"**Runbook record** `{m['id']}` · notebook **{notebook}** · **{status}** "
        f"· {m['mode']} of **{m['deployment']}**"
    )
    lines = [
        head,
        "",
        "| | |",
        "|---|---|",
    ]
    from runbook.notebook.records import iso, utc_now

    for label, value in about_rows(m, notebook):
        if label == "notebook":
            value = f"{notebook} ({status})"
        elif label == "ended" and value == "-":  # the notebook ends as its banner is made
            value = when(iso(utc_now()))
        lines.append(f"| {label} | {_md(value)} |")
    lines += ["", f"**Steps** ({len(steps)})", ""]
    if steps:
        lines += ["| # | step | host | outcome | took | reason |", "|---|---|---|---|---|---|"]
        for row in step_rows(steps):
            lines.append("| " + " | ".join(_md(c) for c in row) + " |")
    else:
        lines.append("No step recorded an outcome.")
    lines += ["", "*Added to the executed notebook after it ran, from its step records.*"]
    return "\n".join(lines)


def add_banner(
    nb: Any, m: Manifest, notebook: str, status: str, steps: Sequence[Mapping[str, Any]]
) -> None:
    """The banner as the notebook's first cell (one already there is replaced)."""
    import nbformat

    nb.cells = [c for c in nb.cells if c.get("id") != BANNER_ID]
    cell = nbformat.v4.new_markdown_cell(  # type: ignore[no-untyped-call]
        banner_markdown(m, notebook, status, steps), metadata={"tags": [BANNER_TAG]}
    )
    cell.id = BANNER_ID
    nb.cells.insert(0, cell)


def title(m: Manifest, notebook: str | None = None) -> str:
    """A page's title: `04-bootstrap · cache plan · 20261202T023142Z-cache`."""
    head = f"{notebook} · " if notebook else "Record · "
    return f"{head}{m['deployment']} {m['mode']} · {m['id']}"


# -- index.html -----------------------------------------------------------------------------

CSS: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", sans-serif;
       margin: 24px auto; max-width: 1100px; padding: 0 16px; color: #1f2328; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #d8dee4;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
table.about th { background: none; color: #57606a; font-weight: 500; }
td.num { text-align: right; white-space: nowrap; }
.status { padding: 1px 8px; border-radius: 10px; font-weight: 600; white-space: nowrap; }
.completed, .done { background: #dafbe1; color: #116329; }
.failed { background: #ffebe9; color: #a40e26; }
.interrupted, .terminated { background: #fff8c5; color: #7d4e00; }
.running { background: #ddf4ff; color: #0550ae; }
.pending, .unchecked, .skipped, .plan, .already { background: #f6f8fa; color: #57606a; }
tr.bad td { background: #fff5f5; }
img.timeline { max-width: 100%; border: 1px solid #d8dee4; border-radius: 6px; }
.muted { color: #57606a; }
"""


def _e(text: object) -> str:
    return html.escape(mask(str(text)))


def _badge(status: str) -> str:
    return f'<span class="status {html.escape(status.split()[0])}">{html.escape(status)}</span>'


def index_html(m: Manifest, record: Path, timeline: str | None) -> str:
    """The record's index page: summary, timeline, the notebooks with links to their HTML."""
    about = "".join(
        f"<tr><th>{_e(k)}</th><td>{_badge(v) if k == 'status' else _e(v)}</td></tr>"
        for k, v in about_rows(m)
    )
    rows = []
    for nb in m["notebooks"]:
        name = nb["notebook"]
        page = record / f"{name}.html"
        link = (
            f'<a href="{html.escape(page.name)}">{html.escape(name)}</a>'
            if page.is_file()
            else html.escape(name)
        )
        counts: dict[str, int] = {}
        for s in nb["steps"]:
            counts[s["outcome"]] = counts.get(s["outcome"], 0) + 1
        outcomes = ", ".join(f"{n} {o}" for o, n in counts.items()) or "-"
        why = ""
        if nb["status"] not in ("completed", "pending"):
            why = f"{nb['failed_step'] or '-'}: {one_line(nb['error'])}"
        bad = ' class="bad"' if nb["status"] in ("failed", "interrupted", "terminated") else ""
        rows.append(
            f"<tr{bad}><td>{link}</td><td>{_badge(nb['status'])}</td>"
            f"<td>{_e(when(nb['start']))}</td><td class='num'>{_e(took(nb['duration']))}</td>"
            f"<td>{_e(outcomes)}</td><td>{_e(why)}</td></tr>"
        )
    picture = (
        f'<img class="timeline" src="{html.escape(timeline)}" '
        f'alt="timeline of {html.escape(m["id"])}: notebooks and steps on a time axis">'
        if timeline
        else '<p class="muted">No timeline (matplotlib could not draw it).</p>'
    )
    files = " · ".join(
        f'<a href="{n}">{n}</a>'
        for n in ("manifest.json", "run.log", m.get("params_copy") or "")
        if n and (record / n).is_file()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title(m))}</title>
<style>{CSS}</style>
</head>
<body>
<h1>Runbook record {_e(m["id"])} {_badge(m["status"])}</h1>
<p class="muted">{_e(m["mode"])} of deployment {_e(m["deployment"])} · {files}</p>
<table class="about">{about}</table>
<h2>Timeline</h2>
{picture}
<h2>Notebooks</h2>
<table>
<tr><th>notebook</th><th>status</th><th>started</th><th>took</th><th>steps</th>
<th>failed step</th></tr>
{"".join(rows)}
</table>
</body>
</html>
"""


@contextlib.contextmanager
def _no_font_cache_at_home() -> Iterator[None]:
    """matplotlib's first import in this process writes its font cache into a temp dir that
    is gone afterwards, not ~/.cache/matplotlib: a run writes nothing outside its records
    (the cache is in memory by then; building it costs about a second)."""
    import os
    import sys
    import tempfile

    if "matplotlib" in sys.modules or "MPLCONFIGDIR" in os.environ:
        yield
        return
    # matplotlib says "generated new fontManager" (INFO) as it builds it: not the run's news
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="runbook-mpl-") as tmp:
        os.environ["MPLCONFIGDIR"] = tmp
        try:
            import matplotlib.font_manager  # noqa: F401 - builds the cache in tmp, now

            yield
        finally:
            os.environ.pop("MPLCONFIGDIR", None)


def write_index(record: Path, m: Manifest) -> None:
    """`timeline.png` and `index.html` into the record; a failure is logged, never raised
    (the manifest, notebooks and log are the record; these are its reading aids)."""
    from runbook.notebook import records, timeline

    picture: str | None = records.TIMELINE
    try:
        with _no_font_cache_at_home():
            png = timeline.timeline_png(m)
        records.write_bytes_atomic(record / records.TIMELINE, png)
    except Exception as exc:  # noqa: BLE001 - the index is written without it
        logger.warning("%s: no timeline: %s", record.name, mask(str(exc)))
        picture = None
    try:
        records.write_bytes_atomic(record / records.INDEX, index_html(m, record, picture).encode())
    except Exception as exc:  # noqa: BLE001 - a reading aid, not the record
        logger.warning("%s: no index.html: %s", record.name, mask(str(exc)))
