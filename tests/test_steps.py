"""The step framework without a kernel: outcomes, plan mode never connects, failures named."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.core.errors import CommandError
from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine.steps import (
    DONE,
    FAIL_STEP_ENV,
    TODO,
    Context,
    Mode,
    Outcome,
    Step,
    StepFailed,
    StepRecord,
    open_context,
    unchecked,
)
from runbook.sections import s02_console, s03_bootstrap0, s05_token_secret, s06_cache
from runbook.sections.outline import section_steps
from tests.run_rig import PARAMS, write_params


def _ctx(tmp_path: Path, mode: Mode = Mode.PLAN, params: Path = PARAMS / "cache.yaml") -> Context:
    records: list[StepRecord] = []
    ctx = Context("05-token-secret", load(params), mode, False, SecretStore(tmp_path / "secrets"))
    ctx.sink = records.append
    return ctx


def test_plan_outcomes_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.run(Step("a", "localhost", ["echo a"], probe=lambda: DONE)) is Outcome.ALREADY
    assert ctx.run(Step("b", "localhost", ["echo b"], probe=lambda: TODO)) is Outcome.PLAN
    assert (
        ctx.run(Step("c", "localhost", probe=lambda: unchecked("no UTM here"))) is Outcome.UNCHECKED
    )
    assert (
        ctx.run(Step("d", "vm", ["reboot"], remote=True, action=lambda: "x")) is Outcome.UNCHECKED
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  [")]
    assert lines == [
        "  [already done] a",
        "  [plan] b",
        "  [unchecked: no UTM here] c",
        "  [unchecked: plan mode does not connect to vm] d",
    ]
    assert [r["outcome"] for r in ctx.records] == ["already done", "plan", "unchecked", "unchecked"]


def test_plan_mode_never_connects(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    with pytest.raises(Exception, match="never connects"):
        ctx.connection(ctx.dep.cache_vm)
    # every remote step of the cache sections stays unchecked in plan mode
    for step in section_steps(s05_token_secret)(ctx)[1:] + section_steps(s06_cache)(ctx)[1:]:
        assert ctx.run(step) is Outcome.UNCHECKED


def test_deploy_outcomes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = _ctx(tmp_path, Mode.DEPLOY)
    assert (
        ctx.run(Step("done", "localhost", probe=lambda: DONE, action=lambda: "x"))
        is Outcome.ALREADY
    )
    assert ctx.run(Step("apply", "localhost", action=lambda: "made it")) is Outcome.DONE
    assert ctx.run(Step("manual", "localhost", plan_only="UTM helper later")) is Outcome.SKIPPED
    out = capsys.readouterr().out
    assert "[done: made it] apply" in out
    assert "[skipped: plan-only for now (UTM helper later); do it by hand as planned] manual" in out
    assert "apply" in ctx.changed


def test_failure_names_notebook_step_host_command_and_stderr(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, Mode.DEPLOY)

    def boom() -> str:
        raise CommandError(
            host="vm-a", command="systemctl restart atticd", exit_code=1, stderr="a\nb\nJob failed"
        )

    with pytest.raises(StepFailed) as info:
        ctx.run(Step("restart atticd", "vm-a (jqwang@x)", action=boom))
    err = info.value
    assert (err.notebook, err.step, err.host) == ("05-token-secret", "restart atticd", "vm-a")
    assert "systemctl restart atticd" in str(err) and "Job failed" in str(err)
    assert ctx.records[-1]["outcome"] == "failed"


def test_secrets_are_masked_in_commands_and_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _ctx(tmp_path, Mode.DEPLOY)
    pw = Secret("Sekrit-Password-123", "pw")

    def leak() -> str:
        raise RuntimeError(f"bad {pw.reveal()}")

    with pytest.raises(StepFailed) as info:
        ctx.run(Step("leak", "h", [f"echo {pw.reveal()}"], action=leak))
    assert pw.reveal() not in str(info.value) and pw.reveal() not in capsys.readouterr().out
    assert all(pw.reveal() not in str(r) for r in ctx.records)


def test_console_plan_masks_the_stored_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _ctx(tmp_path)
    ctx.store.put("live-root-password", "Console-Pw-Value-1")
    step = s02_console.set_root_password(ctx, ctx.dep.cache_vm)
    assert any('text "*****\\n"' in c for c in step.plan())
    ctx.run(step)
    assert "Console-Pw-Value-1" not in capsys.readouterr().out


def test_bootstrap0_is_dangerous_and_uses_the_makefile(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    step = s03_bootstrap0.bootstrap0(ctx, ctx.dep.cache_vm)
    assert step.dangerous and step.remote
    assert (  # root on the live ISO: the password, the host key checked (SSH_OPTIONS)
        "vm/bootstrap0 NIXADDR=nixos-utm-cache.local NIXNAME=vm-aarch64-utm-cache "
        "'SSH_OPTIONS=-o PubkeyAuthentication=no -o UserKnownHostsFile="
    ) in step.plan()[-1]
    assert "/dev/vda" in step.plan()[0]  # the Makefile's /dev/sda vs UTM's VirtIO disk


def test_token_secret_generated_once_and_kept(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, Mode.DEPLOY, write_params(tmp_path))
    step = s05_token_secret.generate(ctx)
    assert ctx.run(step) is Outcome.DONE
    first = ctx.store.get("attic-token-secret")
    assert ctx.run(s05_token_secret.generate(ctx)) is Outcome.ALREADY
    assert ctx.store.get("attic-token-secret") == first
    assert (ctx.store.path("attic-token-secret").stat().st_mode & 0o777) == 0o600


def test_injected_failure_and_bad_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path)
    monkeypatch.setenv(FAIL_STEP_ENV, "05:x")
    with pytest.raises(StepFailed, match="injected failure"):
        ctx.run(Step("x", "localhost"))
    from runbook.core.errors import InputError

    with pytest.raises(InputError, match="mode"):
        open_context("00", str(PARAMS / "cache.yaml"), "yolo", secrets_dir=str(tmp_path / "s"))


def test_widget_panel_plans_checks_and_applies(tmp_path: Path) -> None:
    from runbook.notebook.widgets import panel

    ctx = _ctx(tmp_path)
    ran: list[str] = []
    steps = [
        Step(
            "local",
            "localhost",
            ["echo hi"],
            probe=lambda: TODO,
            action=lambda: ran.append("x") or "ok",
        ),
        Step("wipe", "vm", ["wipe it"], action=lambda: ran.append("wipe") or "", dangerous=True),
    ]
    box = panel(ctx, steps)
    local_row, wipe_row = box.children[2], box.children[3]
    plan_b, check_b, apply_b = local_row.children[0].children[1:]
    seen = []
    for button in (plan_b, check_b, apply_b):  # each click's output replaces the last's
        button.click()
        seen.append("".join(o["text"] for o in local_row.children[1].outputs))
    assert "$ echo hi" in seen[0] and "[to do]" in seen[1] and "[done: ok] local" in seen[2]
    assert ran == ["x"] and ctx.mode is Mode.PLAN  # restored after Apply
    wipe_row.children[0].children[3].click()  # Apply without the confirm box: refused
    assert ran == ["x"] and "--yes" in "".join(o["text"] for o in wipe_row.children[1].outputs)
    box.children[1].value = True
    wipe_row.children[0].children[3].click()
    assert ran == ["x", "wipe"]
