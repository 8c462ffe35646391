"""A non-editable install (the wheel) has everything a run needs: the notebooks are built from
the package's own outline, not read from a checkout's notebooks/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.run_rig import PARAMS, REPO


def test_the_wheel_plans_every_notebook_away_from_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("runbook-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert not any(n.endswith(".ipynb") for n in names)  # built, not shipped
    assert "runbook/sections/outline.py" in names and "runbook/askpass" in names
    work = tmp_path / "elsewhere"
    work.mkdir()
    params = work / "cache.yaml"
    params.write_text((PARAMS / "cache.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, "-m", "runbook", "plan", str(params), "--records", str(work / "r")],
        check=False, cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = (work / "r").iterdir()
    manifest = json.loads((record / "manifest.json").read_text())
    assert len(manifest["notebooks"]) == 11
    assert all(n["status"] == "completed" for n in manifest["notebooks"])
    # the kernel imported the wheel's package, not the checkout's
    assert str(REPO) not in (record / "run.log").read_text()
