"""`runbook exec` end to end (a real process) against the loopback sshd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FISH_USER, PASS_USER, PASS_WORD, Sshd

ROOT = Path(__file__).resolve().parents[1]


def runbook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "runbook", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    r = runbook("--version")
    assert r.returncode == 0 and r.stdout.startswith("runbook ")


def test_exec_runs_bash_under_fish_and_returns_its_code(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    target = f"ssh://{FISH_USER}@127.0.0.1:{sshd.port}"
    r = runbook(
        "exec",
        target,
        "--identity",
        str(sshd.user_key),
        "--known-hosts",
        str(kh),
        "--",
        "if [ 1 = 1 ]; then echo yes; fi && echo $((6*7)); echo err >&2; exit 5",
    )
    assert r.returncode == 5, r.stderr
    assert r.stdout == "yes\n42\n"
    assert "err" in r.stderr and "learned host key" in r.stderr
    r = runbook(
        "exec",
        target,
        "--identity",
        str(sshd.user_key),
        "--known-hosts",
        str(kh),
        "--sudo",
        "--",
        "id -u",
    )
    assert (r.returncode, r.stdout) == (0, "0\n")


def test_exec_password_env(sshd: Sshd, tmp_path: Path) -> None:
    r = runbook(
        "exec",
        f"ssh://{PASS_USER}@127.0.0.1:{sshd.port}",
        "--password-env",
        "RB_PW",
        "--known-hosts",
        str(tmp_path / "kh"),
        "--",
        "whoami",
        env={"RB_PW": PASS_WORD},
    )
    assert (r.returncode, r.stdout) == (0, f"{PASS_USER}\n")
    assert PASS_WORD not in r.stderr


def test_exec_changed_key_refused_then_replaced(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    kh.write_text(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIIaWl/nbpxdtn+2Z1SoSd5Vw3kn5wFuDAZVHYb4pGHd5\n"
    )
    args = [
        "exec",
        f"ssh://{FISH_USER}@127.0.0.1:{sshd.port}",
        "--identity",
        str(sshd.user_key),
        "--known-hosts",
        str(kh),
    ]
    r = runbook(*args, "--", "echo hi")
    assert r.returncode == 1
    assert "changed" in r.stderr and "--replace-host-key" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = runbook(*args, "--replace-host-key", "--", "echo hi")
    assert (r.returncode, r.stdout) == (0, "hi\n")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["exec", "http://x@h", "--identity", "/etc/hostname", "--", "true"], "expected ssh://"),
        (["exec", "ssh://u@h:99999", "--identity", "/etc/hostname", "--", "true"], "port"),
        (["exec", "ssh://u@h", "--", "true"], "expected --identity KEY or --password-env"),
        (
            ["exec", "ssh://u@h", "--identity", "/nonexistent", "--", "true"],
            "--identity /nonexistent",
        ),
        (["exec", "ssh://u@h", "--password-env", "RB_UNSET_VAR", "--", "true"], "RB_UNSET_VAR"),
        (["exec", "ssh://u@h", "--identity", "/etc/hostname"], "SCRIPT"),
        (["exec"], "required"),
    ],
)
def test_exec_bad_arguments_exit_2(args: list[str], needle: str) -> None:
    r = runbook(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_exec_unreachable_host_exits_1(tmp_path: Path) -> None:
    from tests.sshd_rig import free_port

    r = runbook(
        "exec",
        f"ssh://u@127.0.0.1:{free_port()}",
        "--identity",
        "/etc/hostname",
        "--known-hosts",
        str(tmp_path / "kh"),
        "--",
        "true",
    )
    assert r.returncode == 1 and "cannot reach" in r.stderr
