"""Shared fixtures: a real OpenSSH sshd on 127.0.0.1 with a fish-shell sudo user."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.core.models import Deadlines, Host
from tests.sshd_rig import FISH_USER, PASS_USER, PASS_WORD, Sshd, start_sshd, stop_sshd

IN_CI = bool(os.environ.get("CI"))
# The lab's NixOS stand-ins (runbook/lab/bin) run under the project's interpreter; inside a lab
# host the host's init names it, and tests that run them directly name it here.
os.environ.setdefault("RUNBOOK_LAB_PYTHON", sys.executable)
__all__ = ["FISH_USER", "IN_CI", "PASS_USER", "PASS_WORD", "Sshd", "need"]


def need(condition: bool, reason: str) -> None:
    """Skip outside CI when a requirement is missing; in CI, fail loudly instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The markers, where they belong: every test of a lab file brings up (or uses) the lab's
    namespaces, as root; a test on the test sshd needs root for its users. So
    `pytest -m "not lab"` is the quick run and `-m "not root"` the one without root."""
    for item in items:
        if item.path.name.startswith("test_lab_"):
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.root)
        elif "sshd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    need(os.geteuid() == 0, "needs root to create test users and run sshd")
    need(Path("/usr/sbin/sshd").exists(), "needs openssh-server")
    need(shutil.which("fish") is not None, "needs fish")
    need(shutil.which("sudo") is not None, "needs sudo")
    s = start_sshd()
    yield s
    stop_sshd(s)


def fish_host_on(sshd: Sshd, tmp_path: Path, deadlines: Deadlines | None = None) -> Host:
    """The fish-shell sudo user on the test sshd, with a known_hosts of its own (one test
    changes the server's host key) and, if given, its own deadlines."""
    host = Host(
        name="fishvm",
        address="127.0.0.1",
        user=FISH_USER,
        port=sshd.port,
        identity=sshd.user_key,
        known_hosts=tmp_path / "known_hosts",
    )
    return host if deadlines is None else dataclasses.replace(host, deadlines=deadlines)


@pytest.fixture
def fish_host(sshd: Sshd, tmp_path: Path) -> Host:
    return fish_host_on(sshd, tmp_path)
