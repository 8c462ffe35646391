"""Notebook 00's doctor step (issue 10 item 6): a failing check stops a deploy before anything
is touched, `--force-checks` goes on and is named in the message, lesson 1's failures (fixed
by 00's next step) do not stop it; the flag reaches the notebook through the runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runbook import cli
from runbook.core.params import load
from runbook.core.secrets import SecretStore
from runbook.engine.steps import FAIL_STEP_ENV, Context, Mode, Outcome, StepFailed
from runbook.sections import s00_preflight
from tests.test_doctor import (
    ATTIC_NESTED,
    CACHE_SYSTEM,
    CLEAN,
    DARWIN,
    FIXTURE_KEY,
    HOME_MANAGER,
    REALREPO,
    REALREPO_CACHE,
    apply,
    authorize,
    write_key,
)

DOCTOR_STEP = "check the nixos-config (runbook doctor)"
ATTIC_STEP = "use nixpkgs' attic, not the attic flake (lesson 1)"


def write_params(tmp: Path, config: Path, key: Path) -> Path:
    path = tmp / "real.yaml"
    path.write_text(
        f"deployment: gate\nnixos_config: {config}\nidentity: {key}\n"
        f"known_hosts: {tmp / 'known_hosts'}\nutm: {{utmctl: /bin/true}}\nvms:\n"
        "  - {name: vm-aarch64-utm-cache, role: cache, address: 127.0.0.1, port: 9}\n"
        "cache: {vm: vm-aarch64-utm-cache, host: 127.0.0.1}\n"
    )
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return write_key(tmp_path / "id_ed25519")


@pytest.fixture
def locked_out(tmp_path: Path, key: Path) -> Path:
    """realrepo with a cache system whose user does not authorize the params identity, and
    whose Makefile partitions /dev/sda (UTM's disk is /dev/vda): two failing checks."""
    config = tmp_path / "realrepo"
    shutil.copytree(REALREPO, config)
    shutil.copytree(REALREPO_CACHE, config, dirs_exist_ok=True)
    apply(config, [("flake.nix", DARWIN, CACHE_SYSTEM + DARWIN)])
    return write_params(tmp_path, config, key)


def context(params: Path, mode: Mode, tmp: Path) -> Context:
    return Context("00-architecture-preflight", load(params), mode, False, SecretStore(tmp / "s"))


def test_a_failing_check_stops_a_deploy_and_names_force_checks(locked_out: Path, tmp_path):
    ctx = context(locked_out, Mode.DEPLOY, tmp_path)
    with pytest.raises(StepFailed) as failed:
        ctx.run(s00_preflight.doctor_report(ctx))
    message = str(failed.value)
    assert "runbook doctor: makefile-disk-device, user-key-authorized fail" in message
    assert "Nothing was touched" in message
    assert f"`runbook deploy {locked_out} --force-checks`" in message
    assert ctx.records[-1]["outcome"] == "failed"


def test_force_checks_goes_on_and_says_so(locked_out: Path, tmp_path: Path):
    ctx = context(locked_out, Mode.DEPLOY, tmp_path)
    assert ctx.run(s00_preflight.doctor_report(ctx, force_checks=True)) is Outcome.ALREADY
    assert ctx.records[-1]["reason"] == (
        "failing: makefile-disk-device, user-key-authorized; going on as --force-checks asks"
    )


def test_a_plan_says_where_a_deploy_would_stop(locked_out: Path, tmp_path, capsys):
    ctx = context(locked_out, Mode.PLAN, tmp_path)
    assert ctx.run(s00_preflight.doctor_report(ctx)) is Outcome.ALREADY
    assert "a deploy stops here: makefile-disk-device, user-key-authorized fail" in (
        capsys.readouterr().out
    )


def test_lesson_1_failures_do_not_stop_it(tmp_path: Path, key: Path):
    config = tmp_path / "clean"
    shutil.copytree(CLEAN, config)
    authorize(config, key, FIXTURE_KEY)
    apply(config, [("flake.nix", HOME_MANAGER, ATTIC_NESTED + HOME_MANAGER)])
    ctx = context(write_params(tmp_path, config, key), Mode.DEPLOY, tmp_path)
    assert ctx.run(s00_preflight.doctor_report(ctx)) is Outcome.ALREADY
    assert ctx.records[-1]["reason"] == "no check fails; attic-flake-input fixed by the next step"


@pytest.mark.parametrize("force", [False, True])
def test_deploy_passes_force_checks_to_notebook_00(
    locked_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool
):
    """`runbook deploy --only 00 [--force-checks]`; the step after the doctor is made to fail,
    so nothing past it runs (no nix build reaches the network)."""
    monkeypatch.setenv(FAIL_STEP_ENV, f"00:{ATTIC_STEP}")
    root = tmp_path / "records"
    args = ["deploy", str(locked_out), "--only", "00", "--records", str(root)]
    args += ["--secrets", str(tmp_path / "secrets")] + ["--force-checks"] * force
    assert cli.execute(args) == 1
    (record,) = [p for p in root.iterdir() if p.is_dir()]
    manifest = json.loads((record / "manifest.json").read_text())
    steps = {s["step"]: s for s in manifest["notebooks"][0]["steps"]}
    if force:
        assert steps[DOCTOR_STEP]["outcome"] == "already done"
        assert manifest["notebooks"][0]["failed_step"] == ATTIC_STEP
    else:
        assert steps[DOCTOR_STEP]["outcome"] == "failed"
        assert ATTIC_STEP not in steps
        assert "--force-checks" in manifest["failure"]
