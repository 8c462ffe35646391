"""`runbook open`: a prepared copy of the notebooks to step through; the checkout's notebooks/
and what `runbook deploy` runs stay the outline's, whatever the copy's user does."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from runbook.notebook import build
from runbook.sections import outline
from tests.run_rig import PARAMS, REPO, runbook


def _parameters(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return str(cell.source)


def test_open_prepares_a_copy_pointing_at_the_params(tmp_path: Path) -> None:
    records = tmp_path / "records"
    proc = runbook("open", str(PARAMS / "cache.yaml"), "--records", str(records))
    assert proc.returncode == 0, proc.stderr
    (folder,) = records.iterdir()
    assert folder.name.endswith("-cache-notebooks") and str(folder) in proc.stdout
    assert sorted(p.name for p in folder.glob("*.ipynb")) == sorted(
        build.rendered(outline.sources())
    )
    params = _parameters(folder / "05-token-secret.ipynb")
    assert f"params = {str((PARAMS / 'cache.yaml').resolve())!r}  # the deployment" in params
    assert f"records_root = {str(records.resolve())!r}" in _parameters(
        folder / "records-dashboard.ipynb"
    )
    # not a record: `runbook records` lists none
    assert "no records" in runbook("records", "--records", str(records)).stdout


def test_the_copy_runs_as_a_plan_and_its_saved_outputs_change_nothing(tmp_path: Path) -> None:
    records = tmp_path / "records"
    assert runbook("open", str(PARAMS / "cache.yaml"), "--records", str(records)).returncode == 0
    (folder,) = records.iterdir()
    path = folder / "05-token-secret.ipynb"
    nb = nbformat.read(path, as_version=4)
    env_home = tmp_path / "home"
    env_home.mkdir()
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "[unchecked: plan mode does not connect" in text
    nbformat.write(nb, path)  # the user saves it, outputs and all
    assert build.differences(outline.sources(), REPO / "notebooks") == []
    assert (
        runbook(
            "plan", str(PARAMS / "cache.yaml"), "--only", "05", "--records", str(tmp_path / "r")
        ).returncode
        == 0
    )


def test_open_with_bad_params_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployment: x\nvms: 3\n")
    records = tmp_path / "records"
    proc = runbook("open", str(bad), "--records", str(records))
    lines = proc.stderr.strip().splitlines()  # one line per problem (issue 14)
    assert proc.returncode == 2 and all(x.startswith(f"error: {bad}: key ") for x in lines), lines
    assert not records.exists()
