"""What a record tells a reader (issue 14): the manifest says what the record is, each
executed notebook and its HTML open with a banner and a step table, index.html links them
with the timeline, no page loads anything from the internet, run.log lines carry UTC times,
and an ended record is read-only (a --resume still works, and seals it again).

The record is made by `runbook plan` (real papermill kernels, no lab: plan mode connects to
nothing), one step failed on purpose (RUNBOOK_FAIL_STEP), then resumed.
"""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest

from runbook.engine.steps import FAIL_STEP_ENV
from runbook.notebook import html_export, pages, records, timeline
from tests.run_rig import PARAMS, REPO, guard_env, runbook

INSTALL = "install /var/lib/atticd/env (0600)"
PNG = b"\x89PNG\r\n\x1a\n"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z( |$)")
# an attribute that loads or links a page from the internet
REMOTE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _manifest(record: Path) -> dict[str, Any]:
    return json.loads((record / "manifest.json").read_text())


def _modes(record: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(record.stat().st_mode)}
    for p in record.rglob("*"):
        found[str(p.relative_to(record))] = stat.S_IMODE(p.stat().st_mode)
    return found


@pytest.fixture(scope="module")
def failed_then_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A plan of 00, 04 and 05 whose step in 05 fails; what it left; then its resume."""
    tmp = tmp_path_factory.mktemp("pages")
    env = guard_env(tmp)
    root = tmp / "records"
    args = ["--records", str(root), "--secrets", str(tmp / "secrets")]
    params = str(PARAMS / "cache.yaml")
    failed = runbook(
        "plan", params, "--only", "00,04,05", *args, env={**env, FAIL_STEP_ENV: f"05:{INSTALL}"}
    )
    assert failed.returncode == 1, failed.stderr
    (record,) = [p for p in root.iterdir() if p.is_dir()]
    out: dict[str, Any] = {"tmp": tmp, "record": record, "failed": _manifest(record)}
    out["failed_modes"] = _modes(record)
    out["failed_banner"] = nbformat.read(record / "05-token-secret.ipynb", as_version=4).cells[0]
    resumed = runbook("deploy", params, "--resume", str(record), *args, env=env)
    assert resumed.returncode == 0, resumed.stderr
    out["resumed"] = _manifest(record)
    return out


def test_the_manifest_says_what_the_record_is(failed_then_resumed: dict[str, Any]) -> None:
    record: Path = failed_then_resumed["record"]
    m = failed_then_resumed["resumed"]
    git = ["git", "-C", str(REPO), "rev-parse", "HEAD"]
    checkout = (REPO / ".git").exists()  # a copy of the tree without .git records "-"
    head = (
        subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
        if checkout
        else "-"
    )
    assert m["machine"] == socket.gethostname() and m["operator"]
    assert m["runbook_commit"] == head
    assert (m["deployment"], m["mode"], m["status"]) == ("cache", "plan", "completed")
    assert m["started"].endswith("Z") and m["ended"].endswith("Z")
    assert m["params_copy"] == "params.yaml"
    assert (record / "params.yaml").read_text() == (PARAMS / "cache.yaml").read_text()
    # every step record has its UTC start, inside its notebook's span
    for nb in m["notebooks"]:
        assert nb["steps"]
        for s in nb["steps"]:
            assert nb["start"] <= s["start"] <= nb["end"], (nb["notebook"], s)


def test_each_notebook_opens_with_a_banner_and_its_steps(
    failed_then_resumed: dict[str, Any],
) -> None:
    record: Path = failed_then_resumed["record"]
    m = failed_then_resumed["resumed"]
    for entry in m["notebooks"]:
        nb = nbformat.read(record / f"{entry['notebook']}.ipynb", as_version=4)
        nbformat.validate(nb)
        banner = nb.cells[0]
        assert banner.cell_type == "markdown" and banner.id == pages.BANNER_ID
        text = banner.source
        assert m["id"] in text and entry["notebook"] in text and "completed" in text
        for word in ("machine", "operator", "runbook", "nixos-config commit", "params.yaml"):
            assert word in text
        assert m["runbook_commit"] in text and m["machine"] in text
        rows = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
        assert len(rows) == len(entry["steps"])
        for row, step in zip(rows, entry["steps"], strict=True):
            assert step["outcome"] in row and step["step"].split()[0] in row
        # the banner is all that was added: the rest is the notebook that ran
        assert nb.cells[1].source.startswith("# ")
    # the failed run's banner said so, naming the failed step and its reason
    failed = failed_then_resumed["failed_banner"].source
    assert "**failed**" in failed and "| failed |" in failed
    assert "install /var/lib/atticd/env (0600)" in failed and "injected failure" in failed


def test_html_pages_have_titles_banners_and_load_nothing_from_the_internet(
    failed_then_resumed: dict[str, Any],
) -> None:
    record: Path = failed_then_resumed["record"]
    m = failed_then_resumed["resumed"]
    htmls = sorted(record.glob("*.html"))
    assert {p.stem for p in htmls} == {nb["notebook"] for nb in m["notebooks"]} | {"index"}
    for page in htmls:
        text = page.read_text()
        assert not REMOTE.findall(text), (page.name, REMOTE.findall(text)[:3])
        assert (
            "cdnjs" not in text and "require.min.js" not in text and "mathjax" not in text.lower()
        )
        (title,) = re.findall(r"<title>([^<]*)</title>", text)
        assert title != "Notebook" and m["id"] in title
        if page.stem != "index":
            assert title.startswith(page.stem)
            assert "Runbook record" in text and "Steps" in text


def test_index_links_the_notebooks_and_shows_the_timeline(
    failed_then_resumed: dict[str, Any],
) -> None:
    record: Path = failed_then_resumed["record"]
    m = failed_then_resumed["resumed"]
    index = (record / "index.html").read_text()
    for nb in m["notebooks"]:
        assert f'href="{nb["notebook"]}.html"' in index
    assert 'src="timeline.png"' in index
    assert (record / "timeline.png").read_bytes().startswith(PNG)
    for word in (m["machine"], m["runbook_commit"], "params.yaml", "completed", "took"):
        assert word in index


def test_run_log_lines_carry_utc_times(failed_then_resumed: dict[str, Any]) -> None:
    record: Path = failed_then_resumed["record"]
    lines = (record / "run.log").read_text().splitlines()
    assert lines and all(STAMP.match(line) for line in lines), [
        line for line in lines if not STAMP.match(line)
    ][:3]
    # the first run's lines come before the resume's, in time order
    times = [line[:24] for line in lines]
    assert times == sorted(times)


def test_ended_records_are_read_only_and_a_resume_still_works(
    failed_then_resumed: dict[str, Any],
) -> None:
    record: Path = failed_then_resumed["record"]
    for modes in (failed_then_resumed["failed_modes"], _modes(record)):
        assert modes["."] == 0o555
        assert not {k: oct(v) for k, v in modes.items() if v & 0o222}, "a write bit is left"
        # what the runner writes (0644) is 0444 now
        assert {modes[n] for n in modes if n.endswith((".ipynb", ".html", ".json", ".log"))} == {
            0o444
        }
    assert records.sealed(record)
    # the failed record was resumed (it was read-only) and completed
    assert failed_then_resumed["failed"]["status"] == "failed"
    assert failed_then_resumed["resumed"]["status"] == "completed"


# -- without a kernel --------------------------------------------------------------------------


def _old_manifest() -> records.Manifest:
    """A record made before steps had a start and the manifest said who ran it."""
    return json.loads(
        json.dumps(
            {
                "id": "20260101T000000Z-cache",
                "deployment": "cache",
                "params": "/p.yaml",
                "params_digest": "ab" * 32,
                "runbook_version": "0.1.0",
                "papermill_version": "2.7.0",
                "nixos_config_commit": None,
                "mode": "deploy",
                "status": "failed",
                "started": "2026-01-01T00:00:00.000000Z",
                "ended": "2026-01-01T00:01:12.000000Z",
                "duration": 72.0,
                "failure": "deploy failed at notebook 04-bootstrap",
                "notebooks": [
                    {
                        "notebook": "04-bootstrap",
                        "status": "failed",
                        "start": "2026-01-01T00:00:01.000000Z",
                        "end": "2026-01-01T00:01:11.000000Z",
                        "duration": 70.0,
                        "failed_step": "switch | it",
                        "error": "exit 4 <stderr>",
                        "steps": [
                            {
                                "step": "switch | it",
                                "host": "vm",
                                "outcome": "failed",
                                "reason": "exit 4 <stderr>\nsecond line",
                                "duration": 69.5,
                            }
                        ],
                    },
                    {
                        "notebook": "05-token-secret",
                        "status": "pending",
                        "start": None,
                        "end": None,
                        "duration": None,
                        "failed_step": None,
                        "error": None,
                        "steps": [],
                    },
                ],
            }
        )
    )


def test_an_old_record_still_gets_an_index_and_a_timeline(tmp_path: Path) -> None:
    m = _old_manifest()
    pages.write_index(tmp_path, m)
    assert (tmp_path / "timeline.png").read_bytes().startswith(PNG)
    index = (tmp_path / "index.html").read_text()
    assert "04-bootstrap" in index and "1 min 12 s" in index and "failed" in index
    assert "&lt;stderr&gt;" in index and "<stderr>" not in index  # escaped
    assert [b.kind for b in timeline.bars(m)] == ["notebook"]  # its step has no start


def test_banner_markdown_escapes_the_table_and_masks() -> None:
    from runbook.core.masking import register

    m = _old_manifest()
    register("s3cr3t-value-42", "test-secret")
    steps = [dict(m["notebooks"][0]["steps"][0], reason="leaked s3cr3t-value-42 | x")]
    text = pages.banner_markdown(m, "04-bootstrap", "failed", steps)
    assert "s3cr3t-value-42" not in text
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert row.count(" | ") == 5  # the pipes in the step name and reason are escaped
    assert "switch \\| it" in row and "&lt;stderr&gt;" not in row


def test_took_reads_as_people_say_it() -> None:
    assert [pages.took(s) for s in (None, 0.042, 3.25, 12.4, 72, 120, 3725)] == [
        "-",
        "0.04 s",
        "3.2 s",
        "12 s",
        "1 min 12 s",
        "2 min",
        "1 h 2 min",
    ]


def test_the_exporter_drops_every_cdn_script(tmp_path: Path) -> None:
    """nbconvert's lab template would load require.js, MathJax and mermaid from a CDN,
    and the widget manager when the notebook has widget state."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("math $x^2$ and\n```mermaid\ngraph TD; A-->B\n```"),
        nbformat.v4.new_code_cell("1"),
    ]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "x.html"
    html_export.export_html(nb, path, "a title")
    text = path.read_text()
    assert "<title>a title</title>" in text
    assert not REMOTE.findall(text) and "cdnjs" not in text and "unpkg" not in text
    plain = tmp_path / "plain.html"
    from nbconvert import HTMLExporter

    plain.write_text(HTMLExporter().from_notebook_node(nb)[0])
    assert REMOTE.findall(plain.read_text()), (
        "the stock template does load scripts (the test can fail)"
    )


def test_steps_that_ran_at_the_same_time_get_lanes_of_their_row() -> None:
    m = _old_manifest()
    nb = m["notebooks"][0]
    one = dict(nb["steps"][0], start="2026-01-01T00:00:02.000000Z", duration=10.0)
    two = dict(one, host="vm2", start="2026-01-01T00:00:03.000000Z", outcome="done")
    after = dict(one, host="vm", start="2026-01-01T00:00:20.000000Z", duration=1.0)
    nb["steps"] = [one, two, after]  # type: ignore[list-item]
    steps = [b for b in timeline.bars(m) if b.kind == "step"]
    assert [(b.start, b.lane, b.lanes) for b in steps] == [(2.0, 0, 2), (3.0, 1, 2), (20.0, 0, 2)]
    assert [b.colour for b in steps][:2] == [
        timeline.OUTCOME_COLOURS["failed"],
        timeline.OUTCOME_COLOURS["done"],
    ]
    assert timeline.timeline_png(m).startswith(PNG)
