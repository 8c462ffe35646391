"""`runbook deploy` in a child process, as a user runs it, for the lab deploy tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Deploy:
    rc: int
    out: str
    seconds: float
    record: Path


def run_deploy(params: Path, secrets: Path, records: Path, log: Path, *extra: str) -> Deploy:
    """Deploy with --yes into `records`; the console output is saved to `log` (scanned too)."""
    before = set(records.iterdir()) if records.exists() else set()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "runbook", "deploy", str(params), "--yes",
         "--secrets", str(secrets), "--records", str(records), *extra],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    (new,) = {p for p in set(records.iterdir()) - before if p.is_dir()}
    log.write_text(out)
    return Deploy(proc.returncode, out, seconds, new)


def need_lab() -> None:
    """Skip (outside CI) without what the lab's hosts are made of: root for the namespaces,
    and the real programs each host runs."""
    from tests.conftest import need

    need(os.geteuid() == 0, "the lab needs root (network and mount namespaces)")
    for tool in ("sshd", "fish", "sudo", "rsync", "nix-store", "ip", "unshare", "make"):
        need(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(), f"needs {tool}")
