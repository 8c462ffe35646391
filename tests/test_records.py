"""Records: manifests, tables, resolution by id, and the `records`/`show` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runbook import cli
from runbook.core.errors import InputError
from runbook.notebook import records


def _manifest(
    rid: str, status: records.RunStatus = "completed", failed: str | None = None
) -> records.Manifest:
    nb = records.NotebookEntry(
        notebook="05-token-secret",
        status="failed" if failed else "completed",
        start="2026-01-01T00:00:00.000000Z",
        end="2026-01-01T00:00:01.000000Z",
        duration=1.0,
        failed_step=failed,
        error="boom" if failed else None,
        steps=[
            records.StepEntry(
                step="generate", host="localhost", outcome="done", reason="", duration=0.1
            )
        ],
    )
    return records.Manifest(
        id=rid,
        deployment="cache",
        params="/p.yaml",
        params_digest="ab" * 32,
        runbook_version="0",
        papermill_version="2.7.0",
        nixos_config_commit=None,
        mode="deploy",
        status=status,
        started="2026-01-01T00:00:00.000000Z",
        ended=None,
        duration=1.0,
        failure=None,
        notebooks=[nb],
    )


def _write(
    root: Path, rid: str, status: records.RunStatus = "completed", failed: str | None = None
) -> Path:
    path = root / rid
    path.mkdir(parents=True)
    records.write_manifest(path, _manifest(rid, status, failed))
    return path


def test_new_record_dirs_are_unique_and_utc_named(tmp_path: Path) -> None:
    now = records.utc_now()
    a = records.new_record_dir(tmp_path, "cache", now)
    b = records.new_record_dir(tmp_path, "cache", now)
    assert a != b and a.name.endswith("Z-cache") and b.name.endswith("Z-cache-2")


def test_table_and_failed_step(tmp_path: Path) -> None:
    _write(tmp_path, "20260101T000000Z-cache")
    _write(tmp_path, "20260102T000000Z-cache", status="failed", failed="install env")
    (tmp_path / "not-a-record").mkdir()
    df = records.table(tmp_path)
    assert list(df.columns) == [
        "id",
        "deployment",
        "mode",
        "status",
        "started",
        "duration",
        "failed step",
    ]
    assert list(df["status"]) == ["completed", "failed"]
    assert df["failed step"].iloc[1] == "05-token-secret: install env"
    assert records.latest(tmp_path) == tmp_path / "20260102T000000Z-cache"
    assert list(records.notebook_table(tmp_path / "20260102T000000Z-cache")["failed step"]) == [
        "install env"
    ]


def test_resolve_and_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "20260101T000000Z-cache")
    assert records.resolve(tmp_path, "20260101T000000Z-cache") == path
    assert records.resolve(tmp_path, str(path)) == path
    with pytest.raises(InputError, match="not found"):
        records.resolve(tmp_path, "nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="unreadable"):
        records.read_manifest(tmp_path / "broken")


def test_cli_records_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "20260101T000000Z-cache", status="failed", failed="install env")
    assert cli.execute(["records", "--json", "--records", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["failed step"] == "05-token-secret: install env"
    assert cli.execute(["records", "--records", str(tmp_path)]) == 0
    assert "20260101T000000Z-cache" in capsys.readouterr().out
    assert cli.execute(["show", "20260101T000000Z-cache", "--records", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "05-token-secret" in out and "install env" in out
    assert cli.execute(["show", "missing", "--records", str(tmp_path)]) == 2
    assert cli.execute(["records", "--records", str(tmp_path / "empty")]) == 0
    assert "no records" in capsys.readouterr().out


def test_run_lock_clean_end_leaves_nothing_and_a_dead_holder_is_named(tmp_path: Path) -> None:
    from runbook.core.errors import RunLockedError

    lock = records.RunLock(tmp_path, "cache")
    lock.acquire(None)
    lock.claim("20260101T000000Z-cache")
    with pytest.raises(RunLockedError, match=r"already running \(pid \d+, record 20260101T000000Z"):
        records.RunLock(tmp_path, "cache").acquire(None)
    lock.release()
    assert not list(tmp_path.iterdir()), "a clean end removes the lock file"
    # what SIGKILL leaves: the file naming a process that no longer holds the flock
    (tmp_path / ".lock-cache").write_text(json.dumps({"pid": 4242, "record": "r1"}))
    rec = _write(tmp_path, "r1", status="running")
    again = records.RunLock(tmp_path, "cache")
    again.acquire(None)
    assert again.stale == {"pid": 4242, "record": "r1"}
    assert records.mark_abandoned(rec, 4242)
    m = records.read_manifest(rec)
    assert m["status"] == "interrupted" and "pid 4242" in (m["failure"] or "")
    again.release()


def test_a_refused_write_leaves_no_temp_file_and_says_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from runbook.core.errors import RecordWriteError

    real = os.replace

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(
        RecordWriteError, match=r"^records disk full: cannot write .*manifest\.json"
    ):
        records.write_manifest(tmp_path, _manifest("x"))
    monkeypatch.setattr(os, "replace", real)
    assert list(tmp_path.iterdir()) == []


def test_run_log_lines_start_with_their_utc_time(tmp_path: Path) -> None:
    import re

    log = records.RunLog(tmp_path / "run.log")
    log.write("one\n\ntwo, then half")
    log.write(" of three\n")
    log.last_line("record: x (completed)")
    log.close()
    lines = (tmp_path / "run.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert [re.sub(stamp, "T", line) for line in lines] == [
        "T one",
        "T",
        "T two, then half of three",
        "T record: x (completed)",
    ]


def test_seal_makes_a_record_read_only_and_unseal_undoes_it(tmp_path: Path) -> None:
    import stat

    record = _write(tmp_path, "20260101T000000Z-cache")
    (record / "sub").mkdir()
    (record / "sub" / "f.txt").write_text("x")
    (record / "private").write_text("x")
    (record / "private").chmod(0o600)  # as secrets.write_private leaves the run's addresses
    records.seal(record)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [record, *record.rglob("*")]}
    assert modes == {
        record.name: 0o555,
        "manifest.json": 0o444,
        "sub": 0o555,
        "f.txt": 0o444,
        "private": 0o400,  # read-only, and still private
    }
    assert records.sealed(record)
    assert records.read_manifest(record)["id"] == record.name  # still readable
    records.unseal(record)
    assert not records.sealed(record)
    records.write_manifest(record, records.read_manifest(record))
    assert stat.S_IMODE((record / "sub" / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((record / "private").stat().st_mode) == 0o600


def test_keep_params_copies_the_file_and_keeps_both_when_a_resume_changed_it(
    tmp_path: Path,
) -> None:
    record = _write(tmp_path, "20260101T000000Z-cache")
    params = tmp_path / "p.yaml"
    params.write_text("deployment: cache\n")
    m = records.read_manifest(record)
    records.keep_params(record, params, m)
    assert m["params_copy"] == "params.yaml"
    assert (record / "params.yaml").read_text() == "deployment: cache\n"
    records.keep_params(record, params, m)  # a resume with the same file: nothing new
    assert sorted(p.name for p in record.glob("params*")) == ["params.yaml"]
    params.write_text("deployment: cache\n# changed\n")
    records.keep_params(record, params, m)
    assert m["params_copy"] != "params.yaml" and m["params_copy"].startswith("params-")
    assert (record / m["params_copy"]).read_text().endswith("# changed\n")
    assert (record / "params.yaml").read_text() == "deployment: cache\n"


def test_step_entries_keep_the_start_and_old_records_without_it_still_read(
    tmp_path: Path,
) -> None:
    new: dict[str, object] = {"notebook": "n", "step": "s", "host": "h", "outcome": "done"}
    new |= {"reason": "", "duration": 0.5, "commands": [], "start": "2026-01-01T00:00:00.000000Z"}
    old = {k: v for k, v in new.items() if k != "start"}
    entries = records.step_entries([new, old])  # type: ignore[list-item]
    assert entries[0]["start"] == "2026-01-01T00:00:00.000000Z" and "start" not in entries[1]
    _write(tmp_path, "20260101T000000Z-cache")  # its steps have no start
    assert list(records.table(tmp_path)["id"]) == ["20260101T000000Z-cache"]
