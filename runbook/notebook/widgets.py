"""An ipywidgets step panel for interactive use in JupyterLab.

`panel(ctx, steps)` shows one row per step with Plan / Check / Apply buttons and its own
output area. Apply runs the step as a deploy would (check first, then apply); dangerous
steps need the panel's "confirm dangerous steps" box ticked, never an `input()` prompt.
Everything shown goes through `mask`.
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


def check_text(ctx: Context, step: Step) -> str:
    if ctx.planning and step.remote:
        return f"[unchecked: plan mode does not connect to {step.host}]\n"
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


def _on_click(out: Any, buttons: Sequence[Any], action: Callable[[], object]) -> None:
    """Run one button's action into its row's output; the row's buttons are disabled
    meanwhile, so a second click cannot start the same step twice."""
    for button in buttons:
        button.disabled = True
    try:
        # `with out`: what the action displays (its step record) lands in the row too
        with out, contextlib.redirect_stdout(_OutputWriter(out)):
            _guarded(action)
    finally:
        for button in buttons:
            button.disabled = False


def _row(ctx: Context, step: Step, confirm: Any) -> Any:
    import ipywidgets as w

    out = w.Output(layout={"border": "1px solid #ddd"})
    actions: list[tuple[str, str, Callable[[], object]]] = [
        ("Plan", "", lambda: print(plan_text(step), end="")),
        ("Check", "", lambda: print(check_text(ctx, step), end="")),
        ("Apply", "danger", lambda: apply_step(ctx, step, bool(confirm.value))),
    ]
    buttons: list[Any] = []
    for label, style, action in actions:
        button = w.Button(description=label, button_style=style, layout={"width": "6em"})
        button.on_click(lambda _b, a=action: _on_click(out, buttons, a))
        buttons.append(button)
    title = f"{step.name} @ {step.host}" + ("  ⚠ dangerous" if step.dangerous else "")
    label = w.Label(title, tooltip=title, layout={"flex": "1 1 auto", "width": "auto"})
    return w.VBox([w.HBox([label, *buttons]), out])


def panel(ctx: Context, steps: Sequence[Step]) -> Any:
    """The widget: a confirm box, then a row of buttons and an output area per step."""
    import ipywidgets as w

    confirm = w.Checkbox(value=ctx.confirm, description="confirm dangerous steps", indent=False)
    head = w.HTML(f"<b>{html.escape(ctx.notebook)}</b> · {html.escape(ctx.dep.deployment)}")
    return w.VBox([head, confirm, *(_row(ctx, step, confirm) for step in steps)])


def interactive_panel(ctx: Context, steps: Callable[[Context], Sequence[Step]]) -> Any | None:
    """The panel over `steps(ctx)` for a notebook opened in JupyterLab; None (nothing shown,
    no widget state in the record) in a batch run, where `runbook deploy`/`plan` set the
    record folder."""
    if ctx.record_dir is not None:
        return None
    return panel(ctx, steps(ctx))
