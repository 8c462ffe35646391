"""`runbook doctor`: findings, --diff, --fix, exit codes; run as the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need

from runbook.cli import execute
from runbook.doctor import DoctorOptions, Severity, examine

FIXTURE = Path(__file__).parent / "fixtures" / "nixos-config"
ROOT = Path(__file__).parent.parent
URL = "http://nixos-utm-cache.local:8080/main"
KEY = "main:oA4xP/b/OGxNldLb2kqO9gSu8Bzdu3mp5RXl4LwZqGA="  # the handbook's cache key (public)
CACHE_ARGS = ["--cache-url", URL, "--public-key", KEY]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "nixos-config"
    shutil.copytree(FIXTURE, target)
    return target


def runbook(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from runbook.cli import main; sys.argv[0] = 'runbook'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_the_fixture_has_each_known_mistake(config: Path):
    report = examine(DoctorOptions(config, cache_url=URL, public_key=KEY))
    checks = {(f.check, f.severity) for f in report.findings}
    assert {
        ("attic-flake", Severity.ERROR),
        ("flake-lock", Severity.ERROR),
        ("worker-cache", Severity.ERROR),
        ("root-login", Severity.NOTE),
        ("fish-shell", Severity.NOTE),
        ("dhcp-interface", Severity.WARNING),
        ("bootstrap-disk", Severity.WARNING),
    } <= checks
    assert all(f.fixable for f in report.findings if f.severity is Severity.ERROR)


def test_cli_reports_and_exits_1_while_errors_remain(config: Path):
    proc = runbook("doctor", str(config), *CACHE_ARGS)
    assert proc.returncode == 1, proc.stderr
    assert "error   flake.nix:14" in proc.stdout
    assert "7 errors, 2 warnings, 2 notes; 7 fixable with --fix" in proc.stdout


def test_diff_shows_the_fix_and_changes_nothing(config: Path):
    before = {p: p.read_bytes() for p in config.rglob("*") if p.is_file()}
    proc = runbook("doctor", str(config), "--diff", *CACHE_ARGS)
    assert proc.returncode == 1
    assert "-    inputs.attic.nixosModules.atticd # the attic server module\n" in proc.stdout
    assert f'+        "{URL}"\n' in proc.stdout
    assert {p: p.read_bytes() for p in config.rglob("*") if p.is_file()} == before


def test_fix_leaves_no_error_and_a_second_fix_changes_nothing(config: Path):
    proc = runbook("doctor", str(config), "--fix", "--json", *CACHE_ARGS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    remaining = json.loads(proc.stdout)
    assert {f["severity"] for f in remaining} <= {"warning", "note"}
    lock = json.loads((config / "flake.lock").read_text())
    assert "attic" not in lock["nodes"]
    after = {p: p.read_bytes() for p in config.rglob("*") if p.is_file()}
    assert runbook("doctor", str(config), "--fix", *CACHE_ARGS).returncode == 0
    assert {p: p.read_bytes() for p in config.rglob("*") if p.is_file()} == after


def test_fixed_worker_settings_evaluate_in_real_nix(config: Path):
    assert runbook("doctor", str(config), "--fix", *CACHE_ARGS).returncode == 0
    need(
        shutil.which("nix-instantiate") is not None,
        "nix-instantiate (Debian nix-bin) not installed",
    )
    expr = (
        f"(import {config}/machines/vm-shared.nix {{ config = {{}}; lib = {{}}; inputs = {{}};"
        " pkgs = { nixVersions.latest = null; attic-client = null; git = null; }; }).nix.settings"
    )
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings = json.loads(out)
    assert settings["substituters"][0] == URL
    assert settings["trusted-public-keys"][0] == KEY


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--public-key", "main:c2hvcnQ="],
            "--public-key: public key 'main:c2hvcnQ=': expected 32",
        ),
        (["--cache-url", "nixos-utm-cache.local"], "--cache-url 'nixos-utm-cache.local': expected"),
        (["--fix", "--diff"], "not allowed with argument"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(config: Path, args, message):
    proc = runbook("doctor", str(config), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_not_a_checkout_exits_2(tmp_path: Path, capsys):
    assert execute(["doctor", str(tmp_path)]) == 2
    assert "expected a flake.nix" in capsys.readouterr().err


def test_a_file_that_does_not_parse_is_a_finding_not_a_crash(config: Path):
    (config / "modules" / "attic.nix").write_text("{ services.atticd = { enable = true; }\n")
    report = examine(DoctorOptions(config))
    (syntax,) = [f for f in report.findings if f.check == "nix-syntax"]
    assert syntax.severity is Severity.ERROR and "modules/attic.nix:" in syntax.message


def test_an_ip_substituter_and_a_bad_trusted_key_are_found(tmp_path: Path):
    (tmp_path / "flake.nix").write_text("{ outputs = { self }: { }; }")
    (tmp_path / "worker.nix").write_text(
        '{ nix.settings.substituters = [ "http://192.168.64.13:8080/main" ];\n'
        '  nix.settings.trusted-public-keys = [ "main:not-a-key" ]; }\n'
    )
    found = {f.check: f for f in examine(DoctorOptions(tmp_path)).findings}
    assert found["substituter-address"].severity is Severity.WARNING
    assert found["substituter-address"].where == "worker.nix:1"
    assert found["trusted-key"].severity is Severity.ERROR
