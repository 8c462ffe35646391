"""Deployment records: one folder per run under the records root.

    records/<UTC time>-<deployment>/
        manifest.json        the run, typed below (`Manifest`)
        run.log              everything streamed to the terminal, masked
        NN-name.ipynb        each executed notebook (written whole, never half)
        NN-name.html         its HTML export, for reading without Jupyter (both open with a
                             banner: what the record is, and the notebook's steps)
        params.yaml          a copy of the params file the run began with (masked)
        index.html           the run's summary, timeline and links to the HTML (at its end)
        timeline.png         notebooks and steps on a time axis, coloured by outcome
        .reserve             ballast, freed so the final manifest fits on a full disk
    records/.lock-<deployment>   held (flock) by the one process running that deployment,
                                 there only while it runs (or after it died)

A record that ended is read-only (files 0444, folders 0555: no write bit, `seal`); `--resume` makes it
writable for the resumed run (`unseal`) and seals it again at its end. run.log lines start
with their UTC time.

Every write is whole or absent (a temp file renamed into place, removed when the write
fails); a write the disk refuses raises `RecordWriteError`, which ends the run truthfully.
Step outcomes are read back from the executed notebooks' display outputs of mimetype
`runbook.engine.steps.STEP_MIMETYPE`. pandas is imported only by the table functions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NotRequired, TypedDict

from runbook.core.errors import InputError, RecordWriteError, RunLockedError
from runbook.engine.steps import STEP_MIMETYPE, StepRecord

if TYPE_CHECKING:
    import pandas as pd

logger: Final = logging.getLogger(__name__)

MANIFEST: Final = "manifest.json"
RUN_LOG: Final = "run.log"
PARAMS_COPY: Final = "params.yaml"
INDEX: Final = "index.html"
TIMELINE: Final = "timeline.png"
RECORDS_ENV: Final = "RUNBOOK_RECORDS"
BALLAST: Final = ".reserve"
BALLAST_BYTES: Final = 512 * 1024  # room for the last manifest (and log line) on a full disk
LOCK_PREFIX: Final = ".lock-"
_FULL: Final = (errno.ENOSPC, errno.EDQUOT)


# How a notebook of a record stands, and how a whole run does (the manifest's "status").
NotebookStatus = Literal["pending", "running", "completed", "failed", "interrupted", "terminated"]
RunStatus = Literal["running", "completed", "failed", "interrupted", "terminated"]
StopStatus = Literal["failed", "interrupted", "terminated"]  # how a run ends early


class StepEntry(TypedDict):
    step: str
    host: str
    outcome: str
    reason: str
    duration: float
    start: NotRequired[str]  # UTC ISO; records made before steps had a start have none


class NotebookEntry(TypedDict):
    notebook: str
    status: NotebookStatus
    start: str | None
    end: str | None
    duration: float | None
    failed_step: str | None
    error: str | None
    steps: list[StepEntry]


class Manifest(TypedDict):
    id: str
    deployment: str
    params: str
    params_digest: str
    runbook_version: str
    papermill_version: str
    nixos_config_commit: str | None
    mode: Literal["plan", "deploy"]
    status: RunStatus
    started: str
    ended: str | None
    duration: float | None
    failure: str | None
    notebooks: list[NotebookEntry]
    # who ran it, where, from which runbook (records made before these fields have none)
    machine: NotRequired[str]
    operator: NotRequired[str]
    runbook_commit: NotRequired[str]
    params_copy: NotRequired[str]  # the copy's file name in the record


class About(TypedDict):
    machine: str
    operator: str
    runbook_commit: str


def about() -> About:
    """This machine's host name, the operator's user name and the runbook's git commit
    ("-" when the runbook is not a git checkout: an installed wheel)."""
    return About(machine=socket.gethostname(), operator=_operator(), runbook_commit=_commit())


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (a bare container)
        return str(os.getuid())


def _commit() -> str:
    import subprocess

    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists() or not (checkout / "runbook").is_dir():
        return "-"
    try:
        done = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    return done.stdout.strip() or "-" if done.returncode == 0 else "-"


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_root() -> Path:
    return Path(os.environ.get(RECORDS_ENV) or "records")


def new_record_dir(root: Path, deployment: str, now: datetime) -> Path:
    """`<root>/<UTC time>-<deployment>`, made now; a suffix keeps two runs apart."""
    root.mkdir(parents=True, exist_ok=True)
    base = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{deployment}"
    for n in range(1, 1000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise InputError(f"{root}: too many records named {base}")


def write_error(path: Path, exc: OSError) -> RecordWriteError:
    """One line: `records disk full: ...` when the disk refused for space, else the cause."""
    why = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        return RecordWriteError(f"records disk full: cannot write {path} ({why})")
    return RecordWriteError(f"cannot write the record {path}: {why}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all: no temp file is left when the disk refuses."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, exc) from None


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_manifest(record: Path, manifest: Manifest) -> None:
    write_json_atomic(record / MANIFEST, manifest)


def keep_params(record: Path, params: Path, m: Manifest) -> None:
    """The params file the run (or its resume) goes on with, copied into the record: as
    `params.yaml` first; a resume with a changed file keeps both (`params-<UTC time>.yaml`).
    `m["params_copy"]` names the copy in use."""
    from runbook.core.masking import mask

    try:
        text = mask(params.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        raise InputError(f"{params}: cannot read the params file: {exc.strerror}") from None
    have = m.get("params_copy")
    if have:
        with contextlib.suppress(OSError):
            if (record / have).read_text(encoding="utf-8", errors="replace") == text:
                return
    name = PARAMS_COPY
    if (record / name).exists():
        name = f"params-{utc_now().strftime('%Y%m%dT%H%M%SZ')}.yaml"
    write_bytes_atomic(record / name, text.encode())
    m["params_copy"] = name


def seal(record: Path) -> None:
    """The ended record read-only: every write bit cleared (files 0644 become 0444, folders
    0555; a private 0600 file stays private, 0400), the record folder itself last."""
    for path in sorted(record.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        _chmod(path, clear=_WRITE)
    _chmod(record, clear=_WRITE)


def unseal(record: Path) -> None:
    """A sealed record writable again by its owner (a `--resume`): u+w, the folder first."""
    _chmod(record, add=stat.S_IWUSR)
    for path in sorted(record.rglob("*"), key=lambda p: len(p.parts)):
        _chmod(path, add=stat.S_IWUSR)


_WRITE: Final = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _chmod(path: Path, *, clear: int = 0, add: int = 0) -> None:
    with contextlib.suppress(OSError):
        if path.is_symlink():
            return
        mode = stat.S_IMODE(path.stat().st_mode)
        os.chmod(path, (mode & ~clear) | add)


def sealed(record: Path) -> bool:
    """True when the record folder is read-only (nobody may write into it)."""
    try:
        return not os.stat(record).st_mode & _WRITE
    except OSError:
        return False


def reserve(record: Path) -> None:
    """Ballast in the record, real blocks (not sparse): freed by `release` before the last
    manifest write, so a disk that filled during the run still takes the truth."""
    write_bytes_atomic(record / BALLAST, b"\0" * BALLAST_BYTES)


def release(record: Path) -> None:
    with contextlib.suppress(OSError):
        (record / BALLAST).unlink()


def stamp(t: datetime | None = None) -> str:
    """A run.log line's UTC time: `2026-12-02T02:31:43.192Z`."""
    return (t or utc_now()).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class RunLog:
    """run.log, appended in whole lines, each starting with its UTC time (`stamp`): a write
    the disk refuses is cut back to the last whole line, and the log stops (`error` says
    why) instead of raising into the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: RecordWriteError | None = None
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._good = os.fstat(self._fd).st_size
        if self._good:  # a resumed record whose log was cut mid-line: start on a new line
            with open(path, "rb") as fh:
                fh.seek(self._good - 1)
                if fh.read(1) != b"\n":
                    self._append(b"\n")
        self._partial = ""

    def write(self, text: str) -> None:
        if self.error is not None:
            return
        self._partial += text
        cut = self._partial.rfind("\n")
        if cut < 0:
            return
        lines, self._partial = self._partial[: cut + 1], self._partial[cut + 1 :]
        self._append(_stamped(lines))

    def _append(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._good += len(data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._good)
            self.error = write_error(self.path, exc)

    def last_line(self, line: str) -> None:
        """A final line (the run's end), even after a refused write: the ballast was freed."""
        self.error, self._partial = None, ""
        self._append(_stamped(line + "\n"))

    def close(self) -> None:
        if self._partial and self.error is None:
            self._append(_stamped(self._partial + "\n"))
        self._partial = ""
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _stamped(lines: str) -> bytes:
    """Whole lines, each with the UTC time in front."""
    now = stamp()
    return "".join(
        f"{now} {line}" if line != "\n" else f"{now}\n" for line in lines.splitlines(keepends=True)
    ).encode()


# -- one run per deployment ------------------------------------------------------------


class RunLock:
    """`<root>/.lock-<deployment>`, flock'ed for the whole run and holding who runs it.

    The kernel releases a flock when its holder dies, however it dies; the file then still
    names the dead holder, which is how a stale lock is told apart from a clean end (a clean
    end removes the file).
    """

    def __init__(self, root: Path, deployment: str) -> None:
        self.path = root / f"{LOCK_PREFIX}{deployment}"
        self.deployment = deployment
        self.stale: dict[str, Any] | None = None  # the dead holder found on taking the lock
        self._fd: int | None = None

    def acquire(self, record: str | None) -> None:
        for _ in range(10):  # a holder may unlink the file between our open and our flock
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunLockedError(self._busy(holder, record)) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # we locked a file a clean end had just unlinked: again
        else:
            raise RunLockedError(f"{self.path}: the lock keeps changing under this run")
        self._fd = fd
        found = _holder(fd)
        self.stale = found if found.get("pid") else None
        self.claim(record)

    def _busy(self, holder: dict[str, Any], record: str | None) -> str:
        pid, held = holder.get("pid", "?"), holder.get("record") or "a new record"
        since = f" since {holder['started']}" if holder.get("started") else ""
        if record is not None and holder.get("record") == record:
            return (
                f"--resume {record}: the record is still running (pid {pid}{since}); "
                f"wait for it to end, or stop it with `kill -TERM {pid}`, then resume"
            )
        return (
            f"deployment {self.deployment} is already running (pid {pid}, record {held}{since}; "
            f"lock {self.path}): one run per deployment; wait for it or stop it with "
            f"`kill -TERM {pid}`"
        )

    def claim(self, record: str | None) -> None:
        """Name this process and its record in the lock file."""
        if self._fd is None:
            return
        text = json.dumps({"pid": os.getpid(), "record": record, "started": iso(utc_now())})
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (text + "\n").encode(), 0)
        except OSError as exc:
            self.release()
            raise write_error(self.path, exc) from None

    def release(self) -> None:
        """A clean end: the file goes (still locked, so no one holds a stale copy), then
        closing the descriptor drops the flock. Only a holder that died leaves it behind."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode(errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mark_abandoned(record: Path, pid: object) -> bool:
    """A record its process left "running" when it died (SIGKILL, power loss): say so, so it
    is never read as running and `--resume` continues it. True when the record was fixed."""
    try:
        m = read_manifest(record)
    except InputError:
        return False
    if m["status"] != "running":
        return False
    why = f"the runbook process (pid {pid}) died without ending this record (killed?)"
    for nb in m["notebooks"]:
        if nb["status"] == "running":
            nb["status"], nb["error"] = "interrupted", why
    m["status"], m["failure"] = "interrupted", why
    write_manifest(record, m)
    return True


def read_manifest(record: Path) -> Manifest:
    path = record / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{record}: not a record (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or "notebooks" not in data:
        raise InputError(f"{path}: not a runbook manifest")
    return data  # type: ignore[return-value]


def step_records(nb: Any) -> list[StepRecord]:
    """The step outcomes a notebook published (display outputs of STEP_MIMETYPE)."""
    found: list[StepRecord] = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            data = out.get("data") or {}
            if STEP_MIMETYPE in data:
                found.append(data[STEP_MIMETYPE])
    return found


def step_entries(records: list[StepRecord]) -> list[StepEntry]:
    entries = []
    for r in records:
        entry = StepEntry(
            step=r["step"],
            host=r["host"],
            outcome=r["outcome"],
            reason=r["reason"],
            duration=r["duration"],
        )
        if "start" in r:
            entry["start"] = r["start"]
        entries.append(entry)
    return entries


def resolve(root: Path, ref: str | Path) -> Path:
    """A record given as a path or as its id (folder name) under `root`."""
    path = Path(ref)
    for candidate in (path, root / path):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise InputError(
        f"record {ref}: not found (expected a folder with {MANIFEST}, or an id in {root})"
    )


def list_records(root: Path) -> list[tuple[Path, Manifest]]:
    """Every readable record under `root`, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for child in sorted(root.iterdir()):
        if (child / MANIFEST).is_file():
            try:
                out.append((child, read_manifest(child)))
            except InputError as exc:
                logger.warning("skipping %s", exc)
    return out


def latest(root: Path | str) -> Path | None:
    found = list_records(Path(root))
    return found[-1][0] if found else None


def failed_step(m: Manifest) -> str | None:
    for nb in m["notebooks"]:
        if nb["status"] in ("failed", "interrupted", "terminated"):
            step = nb["failed_step"] or "-"
            return f"{nb['notebook']}: {step}"
    return None


def summary_rows(root: Path) -> list[dict[str, Any]]:
    return [
        {
            "id": m["id"],
            "deployment": m["deployment"],
            "mode": m["mode"],
            "status": m["status"],
            "started": m["started"],
            "duration": m["duration"],
            "failed step": failed_step(m),
        }
        for _, m in list_records(root)
    ]


def notebook_rows(record: Path) -> list[dict[str, Any]]:
    m = read_manifest(record)
    return [
        {
            "notebook": nb["notebook"],
            "status": nb["status"],
            "start": nb["start"],
            "end": nb["end"],
            "duration": nb["duration"],
            "steps": len(nb["steps"]),
            "failed step": nb["failed_step"],
            "error": nb["error"],
        }
        for nb in m["notebooks"]
    ]


def table(root: Path | str) -> pd.DataFrame:
    """The records as a pandas table: id, deployment, mode, status, started, duration, failed step."""
    import pandas as pd

    columns = ["id", "deployment", "mode", "status", "started", "duration", "failed step"]
    return pd.DataFrame(summary_rows(Path(root)), columns=columns)


def notebook_table(record: Path | str) -> pd.DataFrame:
    import pandas as pd

    columns = ["notebook", "status", "start", "end", "duration", "steps", "failed step", "error"]
    return pd.DataFrame(notebook_rows(Path(record)), columns=columns)
