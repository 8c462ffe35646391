"""The step panel without a browser (tests/test_browser.py drives it in JupyterLab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine.steps import Check, Context, Mode, Step, StepRecord
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
    row: Any = None  # set below; the action reads its buttons while it runs

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


# -- issue 14: a panel that guides ---------------------------------------------------------------


def _buttons(row):  # Plan, Check, Apply
    return row.children[0].children[1:]


def _badge(row) -> str:
    return row.children[0].children[0].children[0].value


def test_badges_labelled_outputs_and_the_summary_after_apply(tmp_path: Path) -> None:
    """Before: no badge, each click appended to the last, the summary never changed."""
    ctx = _ctx(tmp_path)
    done: list[str] = []
    local = Step(
        "make it",
        "localhost",
        ["x"],
        probe=lambda: Check(bool(done), ""),
        action=lambda: done.append("y") or "made",
    )
    other = Step("other", "localhost", ["y"], probe=lambda: Check(True, "there"))
    ctx.run(other)  # the notebook's run above the panel: "already done"
    box = panel(ctx, [local, other])
    row, second = box.children[2], box.children[3]
    assert "not run" in _badge(row) and "already done" in _badge(second)
    assert "2 steps: 1 not run, 1 already done" in box.children[0].value

    plan, check, apply = _buttons(row)
    plan.click()
    assert _text(row) == "Plan:\n$ x\n"
    check.click()
    assert _text(row) == "Check:\n[to do]\n"  # replaced, not appended
    assert "to do" in _badge(row)
    apply.click()
    text = _text(row)
    assert text.startswith("Apply:\n") and "[done: made] make it" in text and "[to do]" not in text
    assert "done" in _badge(row) and "already" not in _badge(row)
    assert "2 steps: 1 done, 1 already done" in box.children[0].value  # refreshed
    check.click()
    assert "already done" in _badge(row)


def test_red_only_for_dangerous_apply(tmp_path: Path) -> None:
    """Before: every Apply was red (button_style "danger")."""
    box = panel(_ctx(tmp_path), [Step("a", "localhost"), Step("wipe", "vm", dangerous=True)])
    safe, wipe = box.children[2], box.children[3]
    assert [b.button_style for b in _buttons(safe)] == ["", "", "primary"]
    assert [b.button_style for b in _buttons(wipe)] == ["", "", "danger"]


def test_a_failed_apply_shows_failed(tmp_path: Path) -> None:
    def boom() -> str:
        raise RuntimeError("no")

    box = panel(_ctx(tmp_path), [Step("fails", "localhost", action=boom)])
    _buttons(box.children[2])[2].click()
    assert "failed" in _badge(box.children[2])
    assert "1 step: 1 failed" in box.children[0].value


def test_plan_mode_check_says_how_to_check_live(tmp_path: Path) -> None:
    """Before: only "[unchecked: plan mode does not connect to HOST]"."""
    import shlex

    from runbook import cli

    ctx = _ctx(tmp_path)
    box = panel(ctx, [Step("install env", "vm-cache", ["x"], remote=True)])
    row = box.children[2]
    _buttons(row)[1].click()
    text = _text(row)
    assert "[unchecked: plan mode does not connect to vm-cache]" in text
    assert 'set mode = "deploy" in the parameters cell' in text
    (command,) = [part for i, part in enumerate(text.split("`")) if i % 2]
    assert command == f"runbook deploy {ctx.loaded.path} --only 05"
    args = cli.get_parser().parse_args(shlex.split(command)[1:])  # a command the CLI takes
    assert args.only == "05" and args.command == "deploy"
    assert "unchecked" in _badge(row)
