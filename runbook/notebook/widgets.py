"""An ipywidgets step panel for interactive use in JupyterLab.

`panel(ctx, steps)` shows the steps' summary, then one row per step: its status badge (the
outcome of the run above, then of the row's last Check or Apply), Plan / Check / Apply
buttons (Apply red only where it is dangerous) and an output area each click replaces,
labelled "Plan:", "Check:" or "Apply:". Apply runs the step as a deploy would (check first,
then apply) and refreshes the summary; dangerous steps need the panel's "confirm dangerous
steps" box ticked, never an `input()` prompt. In plan mode a remote step's Check says how to
check it live. Everything shown goes through `mask`.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from runbook.core.masking import mask
from runbook.engine.steps import Context, Mode, Step

logger: Final = logging.getLogger(__name__)


class _OutputWriter(io.TextIOBase):
    """A stdout for one row: each write goes to its Output widget at once (a long Apply
    streams), masked."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, text: str) -> int:
        if text:
            self._out.append_stdout(mask(text))
        return len(text)


def _guarded(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - shown in the panel, as the step's failure
        print(f"error: {mask(str(exc))}")


def _capture(fn: Callable[[], object]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _guarded(fn)
    return mask(buf.getvalue())


def plan_text(step: Step) -> str:
    lines = [f"$ {c}" for c in step.plan()] or ["(no commands: a local check or read)"]
    return "\n".join(lines) + "\n"


def live_check_hint(ctx: Context) -> str:
    """How to check a remote step for real: this notebook in deploy mode, or the CLI."""
    nn = ctx.notebook.split("-")[0]
    return (
        'to check it live, set mode = "deploy" in the parameters cell and run the notebook '
        f"again, or run `runbook deploy {ctx.loaded.path} --only {nn}`"
    )


def check_text(ctx: Context, step: Step) -> str:
    if ctx.planning and step.remote:
        return f"[unchecked: plan mode does not connect to {step.host}]\n{live_check_hint(ctx)}\n"
    result = step.check()
    state = {True: "already done", False: "to do", None: "unchecked"}[result.done]
    return f"[{state}{': ' + result.reason if result.reason else ''}]\n"


def apply_step(ctx: Context, step: Step, confirm: bool) -> None:
    """Run the step in deploy mode (check, then apply), with `confirm` for dangerous ones;
    prints as it goes, a failure as `error: ...`."""
    mode, confirmed = ctx.mode, ctx.confirm
    ctx.mode, ctx.confirm = Mode.DEPLOY, confirm
    try:
        _guarded(lambda: ctx.run(step))
    finally:
        ctx.mode, ctx.confirm = mode, confirmed


def apply_text(ctx: Context, step: Step, confirm: bool) -> str:
    """`apply_step`'s output as text."""
    return _capture(lambda: apply_step(ctx, step, confirm))


# a badge's colours (text, background) by state: the terminal's outcome colours, in CSS
BADGE_COLOURS: Final[dict[str, tuple[str, str]]] = {
    "done": ("#fff", "#2e7d32"),
    "already done": ("#1b5e20", "#c8e6c9"),
    "plan": ("#fff", "#00838f"),
    "to do": ("#fff", "#00838f"),
    "unchecked": ("#5d4037", "#ffe082"),
    "skipped": ("#fff", "#8e24aa"),
    "failed": ("#fff", "#c62828"),
    "not run": ("#555", "#eee"),
}


def badge_html(state: str) -> str:
    fg, bg = BADGE_COLOURS.get(state, BADGE_COLOURS["not run"])
    return (
        f'<span class="runbook-badge" title="{html.escape(state)}" style="display:inline-block;'
        f"min-width:7em;text-align:center;padding:1px 6px;border-radius:8px;font-size:90%;"
        f'color:{fg};background:{bg}">{html.escape(state)}</span>'
    )


def last_outcomes(ctx: Context) -> dict[tuple[str, str], str]:
    """Each step's latest outcome in this notebook's context (the run above, then Applies)."""
    return {(r["step"], r["host"]): r["outcome"] for r in ctx.records}


def summary_text(ctx: Context, steps: Sequence[Step]) -> str:
    """ "5 steps: 1 done, 4 unchecked": the panel's steps by their latest outcome."""
    known = last_outcomes(ctx)
    counts: dict[str, int] = {}
    for step in steps:
        state = known.get((step.name, step.host), "not run")
        counts[state] = counts.get(state, 0) + 1
    body = ", ".join(f"{n} {state}" for state, n in counts.items())
    return f"{len(steps)} step{'s' if len(steps) != 1 else ''}: {body}" if steps else "no steps"


class _Row:
    """One step: its name, a status badge, Plan / Check / Apply, and an output area that
    each click replaces, under a label saying which click it shows."""

    def __init__(self, ctx: Context, step: Step, confirm: Any, changed: Callable[[], None]) -> None:
        import ipywidgets as w

        self.ctx, self.step, self.confirm, self.changed = ctx, step, confirm, changed
        self.out = w.Output(layout={"border": "1px solid #ddd"})
        state = last_outcomes(ctx).get((step.name, step.host), "not run")
        self.badge = w.HTML(badge_html(state), layout={"width": "8.5em"})
        # red only where Apply is dangerous (a disk wipe); a plain Apply is the primary blue
        actions: list[tuple[str, str, Callable[[], str | None]]] = [
            ("Plan", "", self._plan),
            ("Check", "", self._check),
            ("Apply", "danger" if step.dangerous else "primary", self._apply),
        ]
        self.buttons: list[Any] = []
        for label, style, action in actions:
            button = w.Button(description=label, button_style=style, layout={"width": "6em"})
            button.on_click(lambda _b, lab=label, a=action: self.click(lab, a))
            self.buttons.append(button)
        title = f"{step.name} @ {step.host}" + ("  ⚠ dangerous" if step.dangerous else "")
        label = w.Label(title, tooltip=title, layout={"flex": "1 1 auto", "width": "auto"})
        name = w.HBox([self.badge, label], layout={"flex": "1 1 auto"})
        self.box = w.VBox([w.HBox([name, *self.buttons]), self.out])

    def _plan(self) -> None:
        print(plan_text(self.step), end="")

    def _check(self) -> str:
        text = check_text(self.ctx, self.step)
        print(text, end="")
        return text.split("]")[0].lstrip("[").split(":")[0]

    def _apply(self) -> str:
        before = len(self.ctx.records)
        apply_step(self.ctx, self.step, bool(self.confirm.value))
        mine = [r for r in self.ctx.records[before:] if r["step"] == self.step.name]
        return mine[-1]["outcome"] if mine else "failed"

    def click(self, label: str, action: Callable[[], str | None]) -> None:
        """Run one button's action into the row's output (replacing the last click's, under
        "Plan:", "Check:" or "Apply:"); the row's buttons are disabled meanwhile, so a second
        click cannot start the same step twice; then the badge and the summary follow."""
        for button in self.buttons:
            button.disabled = True
        state: list[str | None] = [None]
        try:
            self.out.outputs = ()  # the last click's output goes (kernel-side, no frontend needed)
            self.out.append_stdout(f"{label}:\n")
            # `with out`: what the action displays (its step record) lands in the row too
            with self.out, contextlib.redirect_stdout(_OutputWriter(self.out)):
                _guarded(lambda: state.__setitem__(0, action()))
        finally:
            for button in self.buttons:
                button.disabled = False
        if label != "Plan" and state[0] is None:  # it raised: shown as `error: ...` above
            state[0] = "failed"
        if state[0]:
            self.badge.value = badge_html(state[0])
        self.changed()


def panel(ctx: Context, steps: Sequence[Step]) -> Any:
    """The widget: a heading with the steps' summary (refreshed after each click), a confirm
    box, then a row per step (badge and name, Plan / Check / Apply, its output)."""
    import ipywidgets as w

    confirm = w.Checkbox(value=ctx.confirm, description="confirm dangerous steps", indent=False)
    title = (
        f"<b>{html.escape(ctx.notebook)}</b> · {html.escape(ctx.dep.deployment)} · "
        f"{html.escape(str(ctx.mode))} mode"
    )
    head = w.HTML()

    def refresh() -> None:
        summary = html.escape(summary_text(ctx, steps))
        head.value = f"{title}<br><span class='runbook-summary'>{summary}</span>"

    refresh()
    rows = [_Row(ctx, step, confirm, refresh) for step in steps]
    return w.VBox([head, confirm, *(r.box for r in rows)])


def interactive_panel(ctx: Context, steps: Callable[[Context], Sequence[Step]]) -> Any | None:
    """The panel over `steps(ctx)` for a notebook opened in JupyterLab; None (nothing shown,
    no widget state in the record) in a batch run, where `runbook deploy`/`plan` set the
    record folder."""
    if ctx.record_dir is not None:
        return None
    return panel(ctx, steps(ctx))
