"""The step panel without a browser (tests/test_browser.py drives it in JupyterLab)."""

from __future__ import annotations

from pathlib import Path

from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine.steps import Context, Mode, Step, StepRecord
from runbook.notebook.widgets import interactive_panel, panel
from tests.run_rig import PARAMS


def _ctx(tmp_path: Path, record_dir: Path | None = None) -> Context:
    records: list[StepRecord] = []
    store = SecretStore(tmp_path / "secrets")
    ctx = Context("05-token-secret", load(PARAMS / "cache.yaml"), Mode.PLAN, False, store)
    ctx.record_dir = record_dir
    ctx.sink = records.append
    return ctx


def _text(row) -> str:
    return "".join(o.get("text", "") for o in row.children[1].outputs)


def test_batch_runs_show_no_panel(tmp_path: Path) -> None:
    asked: list[Context] = []

    def steps(ctx: Context) -> list[Step]:
        asked.append(ctx)
        return [Step("s", "localhost")]

    assert interactive_panel(_ctx(tmp_path, record_dir=tmp_path / "rec"), steps) is None
    assert asked == []  # the steps are not even built in a batch run
    box = interactive_panel(_ctx(tmp_path), steps)
    assert box is not None and len(box.children) == 3


def test_row_output_masked_buttons_disabled_while_running(tmp_path: Path) -> None:
    secret = Secret("Panel-Secret-Value-99", "t")
    seen: list[bool] = []
    row = None  # set below; the action reads its buttons while it runs

    def action() -> str:
        seen.extend(b.disabled for b in row.children[0].children[1:])
        print(f"using {secret.reveal()}")
        return "ok"

    box = panel(_ctx(tmp_path), [Step("use it", "localhost", ["x"], action=action)])
    row = box.children[2]
    row.children[0].children[3].click()  # Apply
    assert seen == [True, True, True]
    assert all(not b.disabled for b in row.children[0].children[1:])
    text = _text(row)
    assert "using *****" in text and "Panel-Secret-Value-99" not in text
    assert "[done: ok] use it" in text


def test_failure_and_html_header(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ctx.notebook = "<b>x</b>"

    def boom() -> str:
        raise RuntimeError("no such thing")

    box = panel(ctx, [Step("fails", "localhost", action=boom)])
    assert "&lt;b&gt;x&lt;/b&gt;" in box.children[0].value
    box.children[2].children[0].children[3].click()
    assert "error: notebook <b>x</b>, step 'fails'" in _text(box.children[2])
    assert ctx.mode is Mode.PLAN
