"""What the lab needs from a clean machine, made by the project itself.

The lab's NixOS stand-ins run under the project's interpreter, never the host's `python3`.

A clean Debian's python3 has none of the project's packages (no `cryptography`), so a stand-in
that runs as `#!/usr/bin/env python3` fails on the lab host with ModuleNotFoundError. Here the
PATH's python3 is a decoy that fails loudly; every stand-in must still start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbook.lab import lifecycle, system

BIN = Path(__file__).resolve().parents[1] / "runbook" / "lab" / "bin"
# each stand-in's own answer to `--help` outside a lab host: proof that its Python module ran
ANSWERS = {
    "attic": "usage: attic",
    "atticd": "usage: atticd",
    "atticd-atticadm": "usage: atticadm",
    "nixos-rebuild": "runs only inside a runbook lab host",
    "nixos-install": "runs only inside a runbook lab host",
    "systemctl": "systemctl (runbook lab stand-in)",
    "reboot": "not inside a runbook lab host",
}


@pytest.fixture
def decoy_path(tmp_path: Path) -> str:
    decoy = tmp_path / "python3"
    decoy.write_text("#!/bin/sh\necho 'decoy python3 ran' >&2\nexit 97\n")
    decoy.chmod(0o755)
    return f"{tmp_path}:/usr/bin:/bin"


def test_every_stand_in_is_listed() -> None:
    assert sorted(p.name for p in BIN.iterdir() if os.access(p, os.X_OK)) == sorted(ANSWERS)


@pytest.mark.parametrize("program", sorted(ANSWERS))
def test_stand_in_runs_with_the_projects_interpreter(program: str, decoy_path: str) -> None:
    env = {"PATH": decoy_path, "RUNBOOK_LAB_PYTHON": sys.executable, "HOME": "/nonexistent"}
    proc = subprocess.run(
        [str(BIN / program), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    said = proc.stdout + proc.stderr
    assert "decoy python3 ran" not in said and "Traceback" not in said, said
    assert ANSWERS[program] in said, said


def test_stand_in_without_an_interpreter_says_so(decoy_path: str) -> None:
    proc = subprocess.run(
        [str(BIN / "attic"), "--help"],
        capture_output=True,
        text=True,
        env={"PATH": decoy_path},
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0 and "RUNBOOK_LAB_PYTHON" in proc.stderr


# What a clean Debian 12 has at / (debootstrap --variant=minbase bookworm, read off
# ../shared/tools/fresh-machine's base image): every other directory a host binds over
# must be made by `lab up` (a clean machine has no /nix: Debian's nix-bin makes none).
DEBIAN_MINBASE_HAS: frozenset[str] = frozenset({"var/lib", "var/log", "home", "root", "tmp", "mnt"})


def test_lab_up_makes_every_mount_point_a_clean_debian_lacks() -> None:
    made = {str(p.relative_to("/")) for p in lifecycle.MOUNT_POINTS}
    missing = set(system.BIND_DIRS) - DEBIAN_MINBASE_HAS - made
    assert missing == set(), f"lab up binds over /{missing} but never makes it"
    assert set(lifecycle.REMOVED_BY_DOWN) <= set(lifecycle.MOUNT_POINTS)


def test_entering_a_host_takes_its_root_too() -> None:
    # setns(2) into a mount namespace moves the caller's root to that namespace's root mount:
    # under a chroot (a clean machine built with debootstrap) that is the outer machine's /,
    # whose /etc and /var/lib a console's passwd or a test's files would then change.
    from runbook.lab import host

    argv = host.enter_argv(4242, wd="/root")
    assert argv[:4] == ["nsenter", "-t", "4242", "-a"] and argv[-1] == "--"
    assert "--root" in argv and "--wd=/root" in argv
