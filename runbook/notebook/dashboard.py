"""The records dashboard's logic (`notebooks/records-dashboard.ipynb` only calls it).

`load(root)` reads every record under the records folder into a `Board`:

- `runs_table()`: one row per run, newest first, styled (pandas Styler): status colours,
  human durations ("1 min 12 s"), failed rows highlighted with their one-line reason, no NaN;
- `timeline(record)`: the latest (or a chosen) record's notebooks and steps as bars on a
  time axis, coloured by outcome (`runbook.notebook.timeline`, the same picture as the
  record's `timeline.png` in its index.html);
- `durations()`: each deployment's run durations over time;
- `steps_table(record)`: one record's steps (notebook, step, host, outcome, took, reason).

A records folder that does not exist is an `InputError` that says so in one line (in a
notebook too: no traceback); an empty one says how to make a first record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from runbook.core.errors import InputError
from runbook.core.masking import mask
from runbook.notebook import records
from runbook.notebook.pages import one_line, took, when

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from runbook.notebook.records import Manifest

FIRST_RECORD: Final = "runbook plan params/cache.yaml"
STATUS_CSS: Final = {
    "completed": "background-color: #dafbe1; color: #116329; font-weight: 600",
    "failed": "background-color: #ffebe9; color: #a40e26; font-weight: 600",
    "interrupted": "background-color: #fff8c5; color: #7d4e00; font-weight: 600",
    "terminated": "background-color: #fff8c5; color: #7d4e00; font-weight: 600",
    "running": "background-color: #ddf4ff; color: #0550ae; font-weight: 600",
}
OUTCOME_CSS: Final = {
    "done": "background-color: #dafbe1; color: #116329; font-weight: 600",
    "already done": "background-color: #eefbf0; color: #116329",
    "plan": "background-color: #ddf4ff; color: #0550ae",
    "unchecked": "color: #57606a",
    "skipped": "color: #8c959f",
    "failed": "background-color: #ffebe9; color: #a40e26; font-weight: 600",
}
BAD_ROW: Final = "background-color: #fff5f5"
BAD: Final = ("failed", "interrupted", "terminated")
TABLE_STYLES: Final = [
    {"selector": "th", "props": "text-align: left; background-color: #f6f8fa; padding: 4px 8px"},
    {"selector": "td", "props": "text-align: left; padding: 4px 8px; vertical-align: top"},
    {"selector": "", "props": "border-collapse: collapse; font-size: 13px"},
]
RUN_COLUMNS: Final = [
    "started (UTC)",
    "record",
    "deployment",
    "mode",
    "status",
    "took",
    "steps",
    "failed step · reason",
]
STEP_COLUMNS: Final = ["notebook", "#", "step", "host", "outcome", "took", "started", "reason"]


class RecordsFolderMissing(InputError):  # noqa: N818 - an InputError, named for what it says
    """The records folder does not exist. One line in a notebook too (IPython shows
    `_render_traceback_` instead of the traceback)."""

    def _render_traceback_(self) -> list[str]:
        return [f"InputError: {self}"]


@dataclass(frozen=True)
class Note:
    """A line of markdown shown in place of a table or a picture (no records, no steps)."""

    text: str

    def _repr_markdown_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


def human(seconds: float | None) -> str:
    """A duration for people: `0.42 s`, `12 s`, `1 min 12 s`, `1 h 2 min`, `-`."""
    return took(seconds)


def reason(m: Manifest) -> str:
    """A run's failure in one line: `04-bootstrap: copy nixos-config … — <its error>`."""
    for nb in m["notebooks"]:
        if nb["status"] in BAD:
            why = one_line(nb["error"], 140)
            step = nb["failed_step"] or "-"
            return mask(f"{nb['notebook']}: {step}" + (f" — {why}" if why else ""))
    if m["status"] in BAD:
        return mask(one_line(m["failure"], 160)) or m["status"]
    return ""


def step_counts(m: Manifest) -> str:
    """`40: 3 plan, 1 done, 28 unchecked, 8 skipped`."""
    counts: dict[str, int] = {}
    for nb in m["notebooks"]:
        for s in nb["steps"]:
            counts[s["outcome"]] = counts.get(s["outcome"], 0) + 1
    total = sum(counts.values())
    return f"{total}: " + ", ".join(f"{n} {o}" for o, n in counts.items()) if total else "0"


def _styled(df: pd.DataFrame) -> Styler:
    return df.style.hide(axis="index").set_table_styles(TABLE_STYLES)


def _rows_css(column: str, bad: Callable[[str], bool]) -> Any:
    """Each row's CSS: the whole row tinted when `bad(row[column])`."""

    def paint(row: pd.Series) -> list[str]:
        return [BAD_ROW if bad(str(row[column])) else ""] * len(row)

    return paint


@dataclass(frozen=True)
class Board:
    """The records under `root`, oldest first (as `records.list_records` reads them)."""

    root: Path
    runs: list[tuple[Path, Manifest]]

    def empty_note(self) -> Note:
        return Note(
            f"No records in `{self.root}` yet: make a first one with `{FIRST_RECORD}` "
            "(it changes nothing), then run this notebook again."
        )

    # -- the runs --------------------------------------------------------------------------

    def runs_frame(self) -> pd.DataFrame:
        """The runs, newest first, every value a string (no NaN)."""
        import pandas as pd

        rows = [
            {
                "started (UTC)": when(m["started"]).removesuffix(" UTC"),
                "record": m["id"],
                "deployment": m["deployment"],
                "mode": m["mode"],
                "status": m["status"],
                "took": human(m["duration"]),
                "steps": step_counts(m),
                "failed step · reason": reason(m) or "",
            }
            for _, m in reversed(self.runs)
        ]
        return pd.DataFrame(rows, columns=RUN_COLUMNS).fillna("")

    def runs_table(self) -> Styler | Note:
        if not self.runs:
            return self.empty_note()
        df = self.runs_frame()
        return (
            _styled(df)
            .apply(_rows_css("status", lambda s: s in BAD), axis=1)
            .map(lambda s: STATUS_CSS.get(str(s), ""), subset=["status"])
            .set_properties(subset=["started (UTC)", "record", "took"], **{"white-space": "nowrap"})
            .set_properties(subset=["failed step · reason"], **{"max-width": "48em"})
        )

    # -- one record ------------------------------------------------------------------------

    def pick(self, ref: str | Path | None = None) -> tuple[Path, Manifest] | None:
        """The record `ref` names (its folder, id or a unique prefix of its id); the newest
        when `ref` is empty or None. None when there are no records."""
        if not ref:
            return self.runs[-1] if self.runs else None
        text = str(ref)
        for path, m in self.runs:
            if text in (str(path), path.name):
                return path, m
        if Path(text).is_dir():
            path = records.resolve(self.root, text)
            return path, records.read_manifest(path)
        found = [(p, m) for p, m in self.runs if p.name.startswith(text)]
        if len(found) == 1:
            return found[0]
        why = "no record" if not found else f"{len(found)} records"
        raise InputError(f"record {text}: {why} in {self.root} with that id or prefix")

    def timeline(self, ref: str | Path | None = None) -> Any:
        """The record's timeline, an image (PNG) for the notebook."""
        from IPython.display import Image

        from runbook.notebook.timeline import timeline_png

        chosen = self.pick(ref)
        if chosen is None:
            return self.empty_note()
        return Image(data=timeline_png(chosen[1]), format="png")  # type: ignore[no-untyped-call]

    def durations(self) -> Any:
        """Each deployment's run durations over time, an image (PNG)."""
        from IPython.display import Image

        from runbook.notebook.timeline import durations_png

        if not self.runs:
            return self.empty_note()
        return Image(data=durations_png(self.runs), format="png")  # type: ignore[no-untyped-call]

    def steps_frame(self, ref: str | Path | None = None) -> pd.DataFrame:
        import pandas as pd

        chosen = self.pick(ref)
        rows = []
        for nb in chosen[1]["notebooks"] if chosen else []:
            for i, s in enumerate(nb["steps"], 1):
                start = s.get("start")
                rows.append(
                    {
                        "notebook": nb["notebook"],
                        "#": str(i),
                        "step": mask(s["step"]),
                        "host": mask(s["host"]),
                        "outcome": s["outcome"],
                        "took": human(s["duration"]),
                        "started": start[11:19] if start else "-",
                        "reason": mask(one_line(s["reason"], 200)),
                    }
                )
        return pd.DataFrame(rows, columns=STEP_COLUMNS).fillna("")

    def steps_table(self, ref: str | Path | None = None) -> Styler | Note:
        chosen = self.pick(ref)
        if chosen is None:
            return self.empty_note()
        df = self.steps_frame(chosen[0])
        if df.empty:
            return Note(f"Record `{chosen[0].name}` ran no step ({chosen[1]['status']}).")
        return (
            _styled(df)
            .apply(_rows_css("outcome", lambda s: s == "failed"), axis=1)
            .map(lambda s: OUTCOME_CSS.get(str(s), ""), subset=["outcome"])
            .set_properties(
                subset=["notebook", "took", "started", "outcome"], **{"white-space": "nowrap"}
            )
            .set_caption(
                f"{chosen[0].name} · {chosen[1]['mode']} · {chosen[1]['status']} — "
                f"its pages: {chosen[0] / records.INDEX}"
            )
        )


def load(root: str | Path) -> Board:
    """Every record under `root`; RecordsFolderMissing when there is no such folder."""
    folder = Path(root)
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise RecordsFolderMissing(
            f"records folder {folder}: {what} (set records_root to the folder "
            f"`runbook plan`/`deploy` write into: ./records, --records DIR or $RUNBOOK_RECORDS)"
        )
    return Board(folder, records.list_records(folder))
