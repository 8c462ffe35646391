"""The records dashboard (issue 14): runbook.notebook.dashboard's tables and pictures, and
notebooks/records-dashboard.ipynb executed by papermill on a real record made by
`runbook plan` (no lab: plan mode connects to nothing), finding the timeline image."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from runbook.core.errors import InputError
from runbook.notebook import dashboard, records
from tests.run_rig import PARAMS, REPO, guard_env, runbook

NOTEBOOK = REPO / "notebooks" / "records-dashboard.ipynb"
PNG = b"\x89PNG\r\n\x1a\n"


def _run(
    rid: str,
    *,
    status: str = "completed",
    duration: float = 72.4,
    failed: tuple[str, str] | None = None,
    with_start: bool = True,
) -> records.Manifest:
    day = rid[:8]
    start = f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00.000000Z"
    step = records.StepEntry(
        step=failed[0] if failed else "generate",
        host="vm-test-cache",
        outcome="failed" if failed else "done",
        reason=failed[1] if failed else "",
        duration=1.25,
    )
    if with_start:
        step["start"] = start[:-10] + "01.000000Z"
    nb = records.NotebookEntry(
        notebook="05-token-secret",
        status="failed" if failed else "completed",
        start=start,
        end=start[:-10] + "03.000000Z",
        duration=3.0,
        failed_step=failed[0] if failed else None,
        error=failed[1] if failed else None,
        steps=[step],
    )
    return records.Manifest(
        id=rid,
        deployment="cache",
        params="/p.yaml",
        params_digest="ab" * 32,
        runbook_version="0.1.0",
        papermill_version="2.7.0",
        nixos_config_commit=None,
        mode="deploy",
        status=status,  # type: ignore[typeddict-item]
        started=start,
        ended=start,
        duration=duration,
        failure="deploy failed at notebook 05-token-secret: long summary" if failed else None,
        notebooks=[nb],
    )


def _write(root: Path, m: records.Manifest) -> Path:
    path = root / m["id"]
    path.mkdir(parents=True)
    records.write_manifest(path, m)
    return path


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    _write(tmp_path, _run("20260101T000000Z-cache", duration=72.4))
    _write(
        tmp_path,
        _run(
            "20260102T000000Z-cache",
            status="failed",
            duration=5.0,
            failed=("install env", "exit 1: permission denied\nmore lines"),
            with_start=False,  # a record made before steps had a start
        ),
    )
    return tmp_path


def test_a_missing_records_folder_is_one_line_that_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(InputError) as err:
        dashboard.load(missing)
    text = str(err.value)
    assert "\n" not in text and str(missing) in text and "no such folder" in text
    assert err.value._render_traceback_() == [f"InputError: {text}"]  # type: ignore[attr-defined]


def test_an_empty_records_folder_says_how_to_make_a_first_record(tmp_path: Path) -> None:
    board = dashboard.load(tmp_path)
    for shown in (board.runs_table(), board.timeline(), board.steps_table(), board.durations()):
        assert isinstance(shown, dashboard.Note)
        assert "runbook plan params/cache.yaml" in shown._repr_markdown_()


def test_runs_table_newest_first_human_durations_no_nan(two_runs: Path) -> None:
    df = dashboard.load(two_runs).runs_frame()
    assert list(df["record"]) == ["20260102T000000Z-cache", "20260101T000000Z-cache"]
    assert list(df["took"]) == ["5.0 s", "1 min 12 s"]
    assert list(df["status"]) == ["failed", "completed"]
    reason = df["failed step · reason"].iloc[0]
    assert reason == "05-token-secret: install env — exit 1: permission denied"
    assert df["failed step · reason"].iloc[1] == ""
    assert not df.isna().any().any()
    assert list(df["started (UTC)"]) == ["2026-01-02 00:00:00", "2026-01-01 00:00:00"]


def test_runs_table_styles_status_colours_and_tints_failed_rows(two_runs: Path) -> None:
    html = dashboard.load(two_runs).runs_table().to_html()  # type: ignore[union-attr]
    assert "#dafbe1" in html and "#ffebe9" in html  # completed green, failed red
    assert dashboard.BAD_ROW.split(": ")[1] in html  # the failed row is tinted
    assert "nan" not in html.lower().replace("nanum", "")
    assert "permission denied" in html and "more lines" not in html


def test_steps_table_and_pictures_for_a_chosen_record(two_runs: Path) -> None:
    board = dashboard.load(two_runs)
    df = board.steps_frame("20260101")  # a prefix of its id
    assert list(df["step"]) == ["generate"] and list(df["started"]) == ["00:00:01"]
    assert list(board.steps_frame()["started"]) == ["-"]  # the latest: no step start
    html = board.steps_table("20260102T000000Z-cache").to_html()  # type: ignore[union-attr]
    assert "#ffebe9" in html and "install env" in html
    assert board.timeline("20260101").data.startswith(PNG)
    assert board.durations().data.startswith(PNG)
    with pytest.raises(InputError, match="no record"):
        board.pick("2027")
    with pytest.raises(InputError, match="2 records"):
        board.pick("2026")


# -- the notebook, on a real record ------------------------------------------------------------


def _execute(tmp: Path, root: Path) -> Any:
    import papermill

    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env_path) if p)
    try:
        return papermill.execute_notebook(
            str(NOTEBOOK),
            str(tmp / "dashboard.ipynb"),
            parameters={"records_root": str(root)},
            progress_bar=False,
            cwd=str(NOTEBOOK.parent),
        )
    finally:
        os.environ["PYTHONPATH"] = env_path


def _outputs(nb: Any, needle: str) -> list[Any]:
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source).outputs


def test_the_dashboard_notebook_shows_a_real_record(tmp_path: Path) -> None:
    root = tmp_path / "records"
    args = ["--records", str(root), "--secrets", str(tmp_path / "secrets")]
    proc = runbook(
        "plan", str(PARAMS / "cache.yaml"), "--only", "00,05", *args, env=guard_env(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = records.list_records(root)
    nb = _execute(tmp_path, root)
    table = json.dumps(_outputs(nb, "runs_table"))
    assert record[0].name in table and "#dafbe1" in table and "NaN" not in table
    (picture,) = [o for o in _outputs(nb, "board.timeline") if "image/png" in o.get("data", {})]
    png = base64.b64decode(picture["data"]["image/png"])
    assert png.startswith(PNG) and len(png) > 10_000
    steps = json.dumps(_outputs(nb, "steps_table"))
    for s in record[1]["notebooks"][1]["steps"]:
        assert json.dumps(s["step"])[1:-1] in steps
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb, "durations"))


def test_the_dashboard_notebook_on_a_missing_folder_says_so_in_one_line(tmp_path: Path) -> None:
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as err:
        _execute(tmp_path, tmp_path / "nope")
    assert err.value.ename == "RecordsFolderMissing" or err.value.ename == "InputError"
    nb = json.loads((tmp_path / "dashboard.ipynb").read_text())
    (error,) = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(error["traceback"]) == 1
    assert error["traceback"][0].startswith("InputError: records folder")
    assert "no such folder" in error["traceback"][0]
