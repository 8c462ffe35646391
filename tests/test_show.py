"""`runbook show` (a record by id, unique prefix or `latest`; step by step; the terminal's
width) and `runbook records` (units, whole seconds, the failed step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook import cli
from runbook.commands.records import duration, find
from runbook.core.errors import InputError
from runbook.notebook import records

LONG_REASON = "plan mode does not connect to vm-aarch64-utm-cache " + "and more words " * 6


def _steps() -> list[records.StepEntry]:
    return [
        records.StepEntry(step="generate the token secret locally", host="localhost",
                          outcome="done", reason="RSA-4096", duration=1.4),
        records.StepEntry(step="install /var/lib/atticd/env (0600)", host="vm-cache",
                          outcome="failed", reason=LONG_REASON, duration=65.2),
    ]  # fmt: skip


def _write(root: Path, rid: str, status: str = "completed", took: float = 12.3) -> Path:
    failed = status == "failed"
    nb = records.NotebookEntry(
        notebook="05-token-secret",
        status="failed" if failed else "completed",
        start="2026-01-01T00:00:00.000000Z",
        end="2026-01-01T00:01:06.000000Z",
        duration=66.6,
        failed_step="install /var/lib/atticd/env (0600)" if failed else None,
        error="step failed: exit 1" if failed else None,
        steps=_steps() if failed else _steps()[:1],
    )
    m = records.Manifest(
        id=rid, deployment="cache", params="/p.yaml", params_digest="ab" * 32,
        runbook_version="0", papermill_version="2.7.0", nixos_config_commit=None,
        mode="deploy", status=status,  # type: ignore[typeddict-item]
        started="2026-01-01T00:00:00.123456Z", ended="2026-01-01T00:01:06.000000Z",
        duration=took, failure="deploy failed at notebook 05" if failed else None,
        notebooks=[nb],
    )  # fmt: skip
    path = root / rid
    path.mkdir(parents=True)
    records.write_manifest(path, m)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "records"
    _write(r, "20260101T000000Z-cache")
    _write(r, "20260102T000000Z-cache", status="failed", took=65.2)
    _write(r, "20260102T000000Z-cache-2")
    return r


def test_durations_are_whole_seconds_with_units() -> None:
    assert [duration(x) for x in (None, 0.2, 12.3, 12.6, 59.6, 65.2, 120, 3725)] == [
        "-", "0 s", "12 s", "13 s", "1 min", "1 min 5 s", "2 min", "1 h 2 min"
    ]  # fmt: skip


def test_find_latest_prefix_id_and_path(root: Path) -> None:
    """Before: only a whole id or a folder was found."""
    assert find(root, "latest") == root / "20260102T000000Z-cache-2"
    assert find(root, "20260101") == root / "20260101T000000Z-cache"
    assert find(root, "20260102T000000Z-cache") == root / "20260102T000000Z-cache"  # exact wins
    assert find(root, "20260102T000000Z-cache-") == root / "20260102T000000Z-cache-2"
    assert find(root, str(root / "20260101T000000Z-cache")) == root / "20260101T000000Z-cache"
    with pytest.raises(InputError, match=r"record 2026: 3 records start so .*give more"):
        find(root, "2026")
    with pytest.raises(InputError, match="record nope: not found"):
        find(root, "nope")
    with pytest.raises(InputError, match="no records in"):
        find(root / "none", "latest")


def test_show_latest_step_by_step_fits_the_terminal(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.execute(["show", "20260102T000000Z-cache", "--records", str(root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "\033[" not in out  # not a terminal: no colour
    # per step: name, host, outcome, whole seconds, the reason cut with …
    (failed,) = [line for line in lines if "failed" in line and "vm-cache" in line]
    assert "  install /var/lib/atti" in failed and "1 min 5 s" in failed
    assert failed.endswith("…")
    assert any("  generate the token" in x and " done " in x for x in lines)
    assert "✗ at step 'install /var/lib/atticd/env (0600)': step failed: exit 1" in out
    assert "· 1 min 5 s · 2026-01-01 00:00" in lines[0]

    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: the whole reason
    assert cli.execute(["show", "latest", "--records", str(root)]) == 0
    assert "20260102T000000Z-cache-2" in capsys.readouterr().out.splitlines()[0]
    assert cli.execute(["show", "20260102T000000Z-cache", "--records", str(root)]) == 0
    assert LONG_REASON.strip() in capsys.readouterr().out

    assert cli.execute(["show", "2026", "--records", str(root)]) == 2  # ambiguous
    assert "give more of the id" in capsys.readouterr().err


def test_records_units_and_failed_step_column(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "150")
    assert cli.execute(["records", "--records", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "id", "deployment", "mode", "status", "started", "(UTC)", "took", "failed", "step"
    ]  # fmt: skip
    ok, failed, _ = lines[1:]
    assert "12 s" in ok and "12.3" not in ok and ok.rstrip().endswith("-")
    assert "1 min 5 s" in failed and failed.rstrip().endswith(
        "05: install /var/lib/atticd/env (0600)"
    )
    assert "2026-01-01 00:00:00Z" in ok and ".123456" not in ok
    assert "NaN" not in "\n".join(lines)
    monkeypatch.setenv("COLUMNS", "100")
    assert cli.execute(["records", "--records", str(root)]) == 0
    assert all(len(x) <= 100 for x in capsys.readouterr().out.splitlines())


def test_on_a_terminal_outcomes_and_statuses_are_coloured(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbook.commands.records import records_lines, show_lines
    from runbook.core import terminal

    monkeypatch.setattr(terminal, "_enabled", True)  # as `configure` sets it on a TTY
    shown = "\n".join(show_lines(root / "20260102T000000Z-cache", 150))
    assert "\033[1;31mfailed" in shown and "\033[32mdone" in shown
    listed = "\n".join(records_lines(root, 150))
    assert "\033[32mcompleted" in listed and "\033[1;31mfailed" in listed
    monkeypatch.setattr(terminal, "_enabled", False)
    assert "\033[" not in "\n".join(show_lines(root / "20260102T000000Z-cache", 150))
