"""A record's timeline and the runs' durations, drawn with matplotlib (as PNG bytes).

The timeline has one row per notebook: the notebook's span as a pale bar in its status's
colour, its steps inside it as bars coloured by outcome, so a slow or a failed step is seen
at a glance (the failed one is named). The x axis is the time since the run began. Steps
recorded before step records had a start (`StepEntry.start`) are not drawn; their notebooks
are. Only matplotlib's object API is used (no pyplot): no global state, safe off the main
thread and in a kernel whatever its backend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from runbook.notebook.records import Manifest

OUTCOME_COLOURS: Final = {
    "done": "#2da44e",
    "already done": "#8ddb8c",
    "plan": "#54aeff",
    "unchecked": "#afb8c1",
    "skipped": "#d8dee4",
    "failed": "#cf222e",
}
STATUS_COLOURS: Final = {
    "completed": "#2da44e",
    "failed": "#cf222e",
    "interrupted": "#bf8700",
    "terminated": "#bf8700",
    "running": "#0969da",
    "pending": "#afb8c1",
}
OTHER: Final = "#6e7781"
MIN_WIDTH: Final = 0.004  # a step shorter than this share of the run is still a visible tick


def parse_time(stamp: str | None) -> datetime | None:
    """A record's UTC ISO stamp (`2026-12-02T02:31:43.192877Z`) as an aware datetime."""
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        try:
            return datetime.fromisoformat(stamp)
        except ValueError:
            return None


@dataclass(frozen=True)
class Bar:
    row: int  # the notebook's row, 0 at the top
    start: float  # seconds since the run began
    width: float
    colour: str
    label: str  # the notebook's name, or the step's
    kind: str  # "notebook" or "step"
    outcome: str  # the notebook's status, or the step's outcome
    lane: int = 0  # steps that ran at the same time (one per host) get lanes of their row
    lanes: int = 1


def bars(m: Manifest) -> list[Bar]:
    """The timeline's bars: each notebook that began, and each of its steps that has a start."""
    began = parse_time(m["started"])
    if began is None:
        return []
    out: list[Bar] = []
    row = 0
    for nb in m["notebooks"]:
        start = parse_time(nb["start"])
        if start is None:  # never ran (pending)
            continue
        end = parse_time(nb["end"])
        width = (end - start).total_seconds() if end is not None else (nb["duration"] or 0.0)
        status = nb["status"]
        s0 = (start - began).total_seconds()
        out.append(
            Bar(
                row,
                s0,
                width,
                STATUS_COLOURS.get(status, OTHER),
                nb["notebook"],
                "notebook",
                status,
            )
        )
        steps = []
        for step in nb["steps"]:
            at = parse_time(step.get("start"))
            if at is None:
                continue
            steps.append(
                Bar(
                    row,
                    (at - began).total_seconds(),
                    float(step["duration"]),
                    OUTCOME_COLOURS.get(step["outcome"], OTHER),
                    step["step"],
                    "step",
                    step["outcome"],
                )
            )
        out += _in_lanes(steps)
        row += 1
    return out


def _in_lanes(steps: list[Bar]) -> list[Bar]:
    """Overlapping steps (run in parallel) each in a lane of their own, first fit."""
    ends: list[float] = []
    lane_of = []
    for b in sorted(steps, key=lambda b: b.start):
        lane = next((i for i, end in enumerate(ends) if end <= b.start + 1e-6), len(ends))
        if lane == len(ends):
            ends.append(0.0)
        ends[lane] = b.start + b.width
        lane_of.append((b, lane))
    lanes = max(len(ends), 1)
    return [replace(b, lane=lane, lanes=lanes) for b, lane in lane_of]


def clock(seconds: float) -> str:
    """An axis tick: `0:05`, `1:12`, `1:02:03`."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def timeline_png(m: Manifest, *, dpi: int = 100) -> bytes:
    """The record's timeline as a PNG image."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    drawn = bars(m)
    rows = max((b.row for b in drawn), default=-1) + 1
    names = {b.row: b.label for b in drawn if b.kind == "notebook"}
    span = max((b.start + b.width for b in drawn), default=1.0) or 1.0
    fig = Figure(figsize=(10, 1.6 + 0.42 * max(rows, 1)), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for b in drawn:
        if b.kind == "notebook":
            ax.barh(
                b.row,
                max(b.width, span * MIN_WIDTH),
                left=b.start,
                height=0.8,
                color=b.colour,
                alpha=0.22,
                edgecolor=b.colour,
                linewidth=1.2,
            )
        else:
            height = 0.6 / b.lanes
            y = b.row - 0.3 + height * (b.lane + 0.5)
            ax.barh(
                y,
                max(b.width, span * MIN_WIDTH),
                left=b.start,
                height=height,
                color=b.colour,
                edgecolor="white",
                linewidth=0.4,
            )
            if b.outcome == "failed":  # named beside it, on the side with room
                right = b.start + b.width < span * 0.6
                ax.annotate(
                    f"✗ {b.label}"[:60] if right else f"{b.label} ✗"[-60:],
                    (b.start + b.width, y) if right else (b.start, y),
                    xytext=(4, 0) if right else (-4, 0),
                    textcoords="offset points",
                    va="center",
                    ha="left" if right else "right",
                    fontsize=8,
                    color=OUTCOME_COLOURS["failed"],
                )
    for b in drawn:
        if b.kind == "notebook":
            ax.annotate(
                clock(b.width) if b.width >= 60 else f"{b.width:.1f} s",
                (b.start + b.width, b.row),
                xytext=(4, 9),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="#57606a",
            )
    ax.set_yticks(range(rows), [names.get(r, "") for r in range(rows)], fontsize=8)
    ax.set_ylim(rows - 0.4, -0.6)
    ax.set_xlim(0, span * 1.08)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: clock(x)))
    began = parse_time(m["started"])
    when = began.strftime("%Y-%m-%d %H:%M:%S UTC") if began else "?"
    ax.set_xlabel(f"time since the run began ({when}), min:s", fontsize=8)
    ax.set_title(
        f"{m['id']} · {m['deployment']} · {m['mode']} · {m['status']}", fontsize=10, loc="left"
    )
    ax.grid(axis="x", color="#eaeef2")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    seen = [o for o in OUTCOME_COLOURS if any(b.kind == "step" and b.outcome == o for b in drawn)]
    if seen:
        fig.legend(
            handles=[Patch(color=OUTCOME_COLOURS[o], label=o) for o in seen],
            loc="outside lower center",
            ncol=len(seen),
            fontsize=8,
            frameon=False,
        )
    if not drawn:
        ax.text(0.5, 0.5, "no notebook ran", transform=ax.transAxes, ha="center", va="center")
    return _png(fig)


def durations_png(runs: Sequence[tuple[Path, Manifest]], *, dpi: int = 100) -> bytes:
    """Each deployment's run durations over time: a line per deployment and mode; failed
    runs marked with a red ✗."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(10, 3.2), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    series: dict[str, list[tuple[datetime, float, str]]] = {}
    for _, m in runs:
        at = parse_time(m["started"])
        if at is None or m["duration"] is None:
            continue
        key = f"{m['deployment']} ({m['mode']})"
        series.setdefault(key, []).append((at.replace(tzinfo=None), m["duration"], m["status"]))
    for key, points in sorted(series.items()):
        points.sort()
        xs, ys = [_day(p[0]) for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.2, label=key)
        bad = [(_day(x), y) for x, y, st in points if st != "completed"]
        if bad:
            ax.scatter(
                [x for x, _ in bad],
                [y for _, y in bad],
                marker="x",
                s=50,
                color=STATUS_COLOURS["failed"],
                zorder=3,
            )
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: clock(y)))
    ax.set_ylabel("duration, min:s", fontsize=8)
    ax.set_xlabel("run start (UTC); ✗: did not complete", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(color="#eaeef2")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if series:
        ax.legend(fontsize=8, frameon=False)
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    else:
        ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center", va="center")
    return _png(fig)


def _day(t: datetime) -> float:
    """matplotlib's date number of a (naive UTC) time."""
    from matplotlib.dates import date2num

    return float(date2num(t))  # type: ignore[no-untyped-call]


def _png(fig: object) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # type: ignore[attr-defined]
    return buf.getvalue()
