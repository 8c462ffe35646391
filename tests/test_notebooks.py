"""The committed notebooks, and a real papermill plan of all of them (real kernel, no mocks)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest

from runbook.cache import keys
from runbook.core.secrets import SecretStore
from runbook.notebook.runner import discover
from tests.run_rig import PARAMS, REPO, guard_env, runbook, scan

NOTEBOOKS = REPO / "notebooks"
SECTION_PARAMETERS = {"params", "mode", "confirm", "force_checks", "secrets_dir", "record_dir"}
HANDBOOK = ("00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "90")
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_handbook_section_has_a_notebook_and_a_dashboard_exists() -> None:
    numbers = [p.name[:2] for p in discover(NOTEBOOKS)]
    assert numbers == list(HANDBOOK)
    assert (NOTEBOOKS / "records-dashboard.ipynb").is_file()


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_committed_without_outputs_with_one_parameters_cell(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs"
            assert cell.execution_count is None
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one parameters cell"
    assert nb.cells[0].cell_type == "markdown"
    assert re.search(r"[\u4e00-\u9fff]", nb.cells[0].source), (
        "the handbook's Chinese heading is kept"
    )
    if path.name[:2].isdigit():
        names = set(re.findall(r"^(\w+) =", tagged[0].source, re.MULTILINE))
        assert names == SECTION_PARAMETERS, "parameters are paths and flags only, never secrets"


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`runbook plan params/cache.yaml` in a subprocess, with secrets stored and sockets guarded."""
    tmp = tmp_path_factory.mktemp("plan")
    store = SecretStore(tmp / "secrets")
    values = {
        "token": store.put("attic-token-secret", keys.generate_token_secret(2048)).reveal(),
        "admin": store.put(
            "attic-admin-token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"
        ).reveal(),
        "root": store.put("live-root-password", "Fake-Live-Root-Pw-4711").reveal(),
    }
    env = guard_env(tmp)
    proc = runbook(
        "plan",
        str(PARAMS / "cache.yaml"),
        "--records",
        str(tmp / "records"),
        "--secrets",
        str(store.root),
        env=env,
    )
    records = list((tmp / "records").iterdir())
    return {"proc": proc, "tmp": tmp, "records": records, "values": values}


def test_plan_runs_every_notebook_into_one_record(planned: dict[str, object]) -> None:
    proc = planned["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]  # type: ignore[attr-defined]
    records = planned["records"]
    assert len(records) == 1  # type: ignore[arg-type]
    record: Path = records[0]  # type: ignore[index]
    manifest = json.loads((record / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["mode"] == "plan"
    assert [n["notebook"][:2] for n in manifest["notebooks"]] == list(HANDBOOK)
    assert all(n["status"] == "completed" and n["steps"] for n in manifest["notebooks"])
    for n in manifest["notebooks"]:
        nb = nbformat.read(record / f"{n['notebook']}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert (record / f"{n['notebook']}.html").stat().st_size > 1000
    assert not list(record.glob(".*")), "no partial or temporary files are left"
    outcomes = {s["outcome"] for n in manifest["notebooks"] for s in n["steps"]}
    assert "failed" not in outcomes and "unchecked" in outcomes
    assert "[unchecked: " in proc.stdout  # type: ignore[attr-defined]


def test_plan_shows_the_handbook_commands(planned: dict[str, object]) -> None:
    out: str = planned["proc"].stdout  # type: ignore[attr-defined]
    assert "make -C" in out and "vm/bootstrap0 NIXADDR=nixos-utm-cache.local" in out
    assert "NIXNAME=vm-aarch64-utm-cache" in out
    assert "atticd-atticadm make-token --sub admin --validity 10y" in out
    assert "attic cache create main" in out and "attic cache configure main --public" in out
    assert "nix path-info --all" in out and "attic push main --stdin" in out
    assert "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=<the store's attic-token-secret>" in out
    # `attic login` is root's client config, put 0600: the token is in no argv (issue 13)
    assert 'endpoint = "http://localhost:8080" token = "*****"' in out
    assert "attic login local" not in out
    # 03 removes the ISO through UTM: the exact utmctl and osascript commands are planned
    utmctl = "/Applications/UTM.app/Contents/MacOS/utmctl"
    assert f"{utmctl} stop vm-aarch64-utm-cache --request" in out
    assert "osascript - vm-aarch64-utm-cache <<'APPLESCRIPT'" in out
    assert "if removable of d then" in out and f"{utmctl} start vm-aarch64-utm-cache" in out


def test_plan_opens_no_network_socket_and_kernel_is_the_venv_python(
    planned: dict[str, object],
) -> None:
    tmp: Path = planned["tmp"]  # type: ignore[assignment]
    sockets = tmp / "sockets.log"
    assert not sockets.exists(), sockets.read_text()
    pythons = (tmp / "pythons.log").read_text().splitlines()
    kernels = [
        line for line in pythons if " -m -f " in line
    ]  # python -m ipykernel_launcher -f CONN
    assert kernels, "a kernel ran"
    import sys

    assert all(line.split()[0] == sys.executable for line in kernels)


def test_no_secret_in_the_plan_record(planned: dict[str, object]) -> None:
    values: dict[str, str] = planned["values"]  # type: ignore[assignment]
    record: Path = planned["records"][0]  # type: ignore[index]
    assert scan(record, list(values.values())) == []
    assert values["root"] not in planned["proc"].stdout  # type: ignore[attr-defined]


def test_records_lists_the_plan_and_the_dashboard_executes(planned: dict[str, object]) -> None:
    import papermill

    tmp: Path = planned["tmp"]  # type: ignore[assignment]
    proc = runbook("records", "--json", "--records", str(tmp / "records"))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["deployment"], r["mode"], r["status"]) for r in rows] == [
        ("cache", "plan", "completed")
    ]
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env_path) if p)
    try:
        nb = papermill.execute_notebook(
            str(NOTEBOOKS / "records-dashboard.ipynb"),
            str(tmp / "dashboard.ipynb"),
            parameters={"records_root": str(tmp / "records")},
            progress_bar=False,
            cwd=str(NOTEBOOKS),
        )
    finally:
        os.environ["PYTHONPATH"] = env_path
    table_cell = next(c for c in nb.cells if "runs_table" in c.source)
    text = json.dumps(table_cell.outputs)
    assert "cache" in text and "completed" in text
