"""An ipywidgets step panel for interactive use in JupyterLab.

`panel(ctx, steps)` shows one row per step with Plan / Check / Apply buttons and its own
output area. Apply runs the step as a deploy would (check first, then apply); dangerous
steps need the panel's "confirm dangerous steps" box ticked, never an `input()` prompt.
Everything shown goes through `mask`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import Any, Final

from runbook.secrets import mask
from runbook.steps import Context, Mode, Step

logger: Final = logging.getLogger(__name__)


def _capture(fn: Any) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - shown in the panel, as the step's failure
            print(f"error: {exc}")
    return mask(buf.getvalue())


def plan_text(step: Step) -> str:
    lines = [f"$ {c}" for c in step.plan()] or ["(no commands: a local check or read)"]
    return "\n".join(lines) + "\n"


def check_text(ctx: Context, step: Step) -> str:
    if ctx.planning and step.remote:
        return f"[unchecked: plan mode does not connect to {step.host}]\n"
    result = step.check()
    state = {True: "already done", False: "to do", None: "unchecked"}[result.done]
    return f"[{state}{': ' + result.reason if result.reason else ''}]\n"


def apply_text(ctx: Context, step: Step, confirm: bool) -> str:
    """Run the step in deploy mode (check, then apply), with `confirm` for dangerous ones."""
    mode, confirmed = ctx.mode, ctx.confirm
    ctx.mode, ctx.confirm = Mode.DEPLOY, confirm
    try:
        return _capture(lambda: ctx.run(step))
    finally:
        ctx.mode, ctx.confirm = mode, confirmed


def panel(ctx: Context, steps: Sequence[Step]) -> Any:
    """The widget: a confirm box, then a row of buttons and an output area per step."""
    import ipywidgets as w

    confirm = w.Checkbox(value=ctx.confirm, description="confirm dangerous steps")
    rows: list[Any] = [w.HTML(f"<b>{ctx.notebook}</b> · {ctx.dep.deployment}"), confirm]
    for step in steps:
        out = w.Output(layout={"border": "1px solid #ddd"})
        buttons = []
        for label, action in (
            ("Plan", lambda s=step: plan_text(s)),
            ("Check", lambda s=step: _capture(lambda: print(check_text(ctx, s), end=""))),
            ("Apply", lambda s=step: apply_text(ctx, s, confirm.value)),
        ):
            button = w.Button(description=label, button_style="danger" if label == "Apply" else "")
            button.on_click(lambda _b, a=action, o=out: o.append_stdout(a()))
            buttons.append(button)
        title = step.name + (" ⚠ dangerous" if step.dangerous else "")
        rows.append(w.VBox([w.HBox([w.Label(f"{title} @ {step.host}"), *buttons]), out]))
    return w.VBox(rows)
