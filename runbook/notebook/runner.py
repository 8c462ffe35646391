"""Runs the handbook's notebooks with papermill, in-process, into a record folder.

Decides what runs (selection, `--resume`), keeps the record's manifest, and drives each
notebook on the run's one kernel (runbook.notebook.kernel_thread) while the main thread waits. One
notebook's execution and streaming is runbook.notebook.notebook_run; its HTML export
runbook.notebook.html_export.

One run per deployment at a time (`records.RunLock`). Every end tells the truth, in this
order: the kernel is stopped first (SIGINT, then SIGKILL to its process group after a
grace), then what really ran is written (the steps of the notebook's last state), then the
status. Ends: Ctrl-C (`interrupted`, 130), SIGTERM/SIGHUP (`terminated`, 128+N), a closed
output pipe (`interrupted`, 141, quietly), a records disk that refuses a write (`failed`,
"records disk full: ..."), a step past `timeouts.step` (`failed`), a crash (`failed`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Final

from runbook import __version__
from runbook.core.errors import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
    RecordWriteError,
    RunbookError,
    tail,
)
from runbook.core.masking import mask
from runbook.core.params import Loaded, load, require_paths
from runbook.core.secrets import SecretStore
from runbook.engine.steps import Mode, Outcome, StepRecord
from runbook.notebook.html_export import Exports
from runbook.notebook.kernel_thread import KernelThread
from runbook.notebook.notebook_run import NotebookRun, Stream, export_missing, finish
from runbook.notebook.pages import write_index
from runbook.notebook.records import (
    RUN_LOG,
    Manifest,
    NotebookEntry,
    NotebookStatus,
    RunLock,
    RunLog,
    RunStatus,
    StopStatus,
    about,
    iso,
    keep_params,
    mark_abandoned,
    new_record_dir,
    read_manifest,
    release,
    reserve,
    seal,
    step_entries,
    unseal,
    utc_now,
    write_manifest,
)

logger: Final = logging.getLogger(__name__)

EXIT_INTERRUPTED: Final = 130
EXIT_PIPE: Final = 128 + 13  # as a shell reports a writer killed by SIGPIPE
NOTEBOOK_GLOB: Final = "[0-9][0-9]-*.ipynb"
INTERRUPT_GRACE: Final = 15.0  # seconds for the kernel to stop a cell after SIGINT
TERM_GRACE: Final = 5.0  # the same after SIGTERM/SIGHUP: whoever sent it waits on us
DEAD_KERNEL_WAIT: Final = 15.0  # for papermill to notice a killed kernel
TICK: Final = 20.0  # a "still running" line this often during a long step


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    params: Path
    notebooks_dir: Path  # the NN-*.ipynb to run (`commands.deploy` builds them from the outline)
    mode: Mode
    records_root: Path
    confirm: bool = False
    force_checks: bool = False  # go on although a doctor check fails (notebook 00)
    from_: str | None = None
    only: tuple[str, ...] = ()
    resume: Path | None = None
    secrets_dir: Path | None = None
    out: IO[str] = field(default=sys.stdout, compare=False)
    colour: bool = False  # the outcome tags in colour on `out` (a terminal); never in the record


# -- selection -----------------------------------------------------------------------------


def discover(notebooks_dir: Path) -> list[Path]:
    found = sorted(notebooks_dir.glob(NOTEBOOK_GLOB))
    if not found:
        raise InputError(f"{notebooks_dir}: no notebooks named NN-*.ipynb")
    return found


def _match(notebooks: Sequence[Path], ref: str, arg: str) -> int:
    for i, nb in enumerate(notebooks):
        if nb.stem == ref or nb.stem.split("-")[0] == ref.zfill(2):
            return i
    names = ", ".join(nb.stem.split("-")[0] for nb in notebooks)
    raise InputError(f"{arg} {ref}: no such notebook (expected one of {names})")


def select(notebooks: Sequence[Path], from_: str | None, only: Sequence[str]) -> list[Path]:
    """`--from N` keeps N and the ones after it; `--only N,M` keeps exactly those."""
    if from_ is not None and only:
        raise InputError("--from and --only: give one or the other")
    if only:
        keep = sorted({_match(notebooks, ref, "--only") for ref in only})
        return [notebooks[i] for i in keep]
    start = _match(notebooks, from_, "--from") if from_ is not None else 0
    return list(notebooks[start:])


# -- the run -------------------------------------------------------------------------------


def _config_commit(loaded: Loaded) -> str | None:
    config = loaded.deployment.nixos_config
    if not (config / ".git").exists():
        return None
    from runbook.transport import local

    result = local.run(["git", "-C", str(config), "rev-parse", "HEAD"], check=False, timeout=10)
    return result.stdout.strip() or None if result.ok else None


def _new_manifest(req: RunRequest, loaded: Loaded, record: Path, picks: list[Path]) -> Manifest:
    import papermill

    who = about()
    return Manifest(
        id=record.name,
        deployment=loaded.deployment.deployment,
        params=str(loaded.path.resolve()),
        params_digest=loaded.digest,
        runbook_version=__version__,
        papermill_version=papermill.__version__,
        nixos_config_commit=_config_commit(loaded),
        mode="plan" if req.mode is Mode.PLAN else "deploy",
        status="running",
        started=iso(utc_now()),
        ended=None,
        duration=None,
        failure=None,
        notebooks=[
            NotebookEntry(
                notebook=p.stem,
                status="pending",
                start=None,
                end=None,
                duration=None,
                failed_step=None,
                error=None,
                steps=[],
            )
            for p in picks
        ],
        machine=who["machine"],
        operator=who["operator"],
        runbook_commit=who["runbook_commit"],
    )


@dataclass
class RunPlan:
    """What a run will do, decided before any kernel starts."""

    loaded: Loaded
    record: Path
    manifest: Manifest
    notebooks: list[Path]
    mode: Mode
    lock: RunLock
    new: bool = True  # the record was made by this run (removed if it cannot even start)
    notes: list[str] = field(default_factory=list)  # said at the top of run.log


def prepare(req: RunRequest) -> RunPlan:
    """Validate everything (InputError, exit 2), take the deployment's lock (RunLockedError,
    exit 2, naming the live holder) and make or reopen the record folder."""
    loaded = load(req.params)
    # the store's secrets, checked against the names just loaded (masking.protect): one too
    # long or equal to a name the runbook prints is refused here, before any record exists
    SecretStore(req.secrets_dir).load_all()
    available = discover(req.notebooks_dir)
    deployment = loaded.deployment.deployment
    if req.resume is not None:
        record = req.resume
        manifest = read_manifest(record)
        mode = Mode(manifest["mode"])
        if manifest["deployment"] != deployment:
            raise InputError(
                f"--resume {record}: the record is of deployment {manifest['deployment']!r}, "
                f"{loaded.path} is {deployment!r}"
            )
        by_name = {p.stem: p for p in available}
        missing = [nb["notebook"] for nb in manifest["notebooks"] if nb["notebook"] not in by_name]
        if missing:
            raise InputError(f"--resume {record}: notebooks no longer exist: {', '.join(missing)}")
        picks = [by_name[nb["notebook"]] for nb in manifest["notebooks"]]
    else:
        mode = req.mode
        picks = select(available, req.from_, req.only)
        record = Path()  # made below, once the params are known good
    if mode is Mode.DEPLOY:
        require_paths(loaded.deployment, loaded.path)
    # the lock lives where the records do: a resumed record's own root
    lock = RunLock(record.parent if req.resume is not None else req.records_root, deployment)
    lock.acquire(record.name if req.resume is not None else None)
    try:
        notes = _stale(lock, record if req.resume is not None else None)
        if req.resume is not None:
            manifest = read_manifest(record)  # again: a stale lock's record was just fixed
            if manifest["params_digest"] != loaded.digest:
                logger.info("params changed since the record began; continuing with the new file")
                manifest["params_digest"] = loaded.digest
        else:
            try:
                record = new_record_dir(req.records_root, deployment, utc_now())
            except OSError as exc:
                raise RecordWriteError(
                    f"cannot make a record in {req.records_root}: {exc.strerror or exc}"
                ) from None
            manifest = _new_manifest(req, loaded, record, picks)
        lock.claim(record.name)
    except BaseException:
        lock.release()
        raise
    return RunPlan(loaded, record, manifest, picks, mode, lock, req.resume is None, notes)


def _stale(lock: RunLock, resumed: Path | None) -> list[str]:
    """What a dead holder left: its lock (said so) and its record still "running" (fixed)."""
    notes = []
    holder = lock.stale
    if holder is not None:
        rid = holder.get("record")
        line = (
            f"a previous run of {lock.deployment} (pid {holder.get('pid')}, record "
            f"{rid or '-'}) died without releasing {lock.path}: the lock is taken over"
        )
        if rid and mark_abandoned(lock.path.parent / str(rid), holder.get("pid")):
            line += f"; record {rid} said 'running' and now says 'interrupted'"
        notes.append(line)
        logger.warning("%s", line)
    if resumed is not None and mark_abandoned(resumed, "unknown"):
        line = f"record {resumed.name} said 'running' but no process holds it: now 'interrupted'"
        notes.append(line)
        logger.warning("%s", line)
    return notes


# -- what ends a run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """Why a run ends early, in one line for the record."""

    status: StopStatus
    reason: str
    code: int
    quiet: bool = False  # nothing on the terminal (its pipe is gone)


class Ends:
    """Signals noted by handlers (the main thread polls; nothing raises mid-write)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0

    def note(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        self.count += 1


_SIGNAL_STOPS: Final[dict[signal.Signals, tuple[StopStatus, str]]] = {
    signal.SIGINT: ("interrupted", "interrupted (Ctrl-C)"),
    signal.SIGTERM: ("terminated", "terminated by SIGTERM"),
    signal.SIGHUP: ("terminated", "terminated by SIGHUP (its terminal closed)"),
}


@contextlib.contextmanager
def _signals(ends: Ends) -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP noted in `ends` for the run; one left ignored (nohup, a
    background job's SIGINT) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in _SIGNAL_STOPS:
        current = signal.getsignal(sig)
        wanted = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        if current is wanted:
            old[sig] = signal.signal(sig, ends.note)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _why_stop(ends: Ends, stream: Stream, step_timeout: float | None) -> Stop | None:
    if ends.signum is not None:
        status, reason = _SIGNAL_STOPS[signal.Signals(ends.signum)]
        code = EXIT_INTERRUPTED if ends.signum == signal.SIGINT else 128 + ends.signum
        return Stop(status, reason, code)
    if stream.log.error is not None:
        return Stop("failed", str(stream.log.error), EXIT_FAILED)
    if stream.out_closed:
        return Stop("interrupted", "the output pipe closed (its reader went away)", EXIT_PIPE, True)
    took = time.monotonic() - stream.step_started
    if step_timeout is not None and took > step_timeout:
        what = (
            f"step {stream.current_step!r} on {stream.current_host}"
            if stream.current_step
            else "the notebook's setup"
        )
        return Stop(
            "failed", f"{what} passed its deadline of {step_timeout:g} s (timeouts.step)", 1
        )
    return None


# -- the run -------------------------------------------------------------------------------


def run(req: RunRequest) -> int:
    """Execute the plan; 0 when every notebook completed, 1 on a failure, 130 on Ctrl-C,
    128+N on signal N, 141 when the output pipe closed."""
    plan = prepare(req)
    try:
        return _run_locked(req, plan)
    finally:
        plan.lock.release()


def _run_locked(req: RunRequest, plan: RunPlan) -> int:
    store = SecretStore(req.secrets_dir)
    store.load_all()  # the runner masks what the store holds, too
    # jupyter_client warns when papermill's per-notebook clients are collected, nbclient
    # when a kernel stopped at the run's end dies: noise here (the record says what ended).
    for noisy in ("traitlets", "papermill"):  # papermill hands nbclient its own logger
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    m = plan.manifest
    m["status"], m["ended"], m["failure"] = "running", None, None
    try:
        if not plan.new:
            unseal(plan.record)  # an ended record is read-only; the resume writes into it
        reserve(plan.record)
        keep_params(plan.record, plan.loaded.path, m)
        write_manifest(plan.record, m)
        log = RunLog(plan.record / RUN_LOG)
    except (RecordWriteError, OSError) as exc:
        release(plan.record)
        if plan.new:  # nothing ran: no half-made record is left
            shutil.rmtree(plan.record, ignore_errors=True)
        if isinstance(exc, RecordWriteError):
            raise
        raise RecordWriteError(f"cannot write the record {plan.record}: {exc}") from None
    stream = Stream(req.out, log, req.colour)
    stream.say(f"record {plan.record} · {plan.mode} · deployment {m['deployment']}")
    for note in plan.notes:
        stream.say(note)
    ends = Ends()
    code = EXIT_FAILED
    try:
        with _signals(ends):
            code = _run_notebooks(req, plan, stream, store, ends)
    except BaseException as exc:  # a crash: the kernel is already stopped; record it
        if m["status"] == "running":
            m["status"] = "failed"
            m["failure"] = tail(mask(f"internal error: {type(exc).__name__}: {exc}"))
        raise
    finally:
        _close_record(plan, stream)
    return code


def _close_record(plan: RunPlan, stream: Stream) -> None:
    """The last write: status, end time; the ballast freed first so a full disk takes it."""
    m = plan.manifest
    if m["status"] == "running":  # nothing above said how it ended: never leave "running"
        m["status"], m["failure"] = "failed", "the run ended without saying why"
    m["ended"] = iso(utc_now())
    m["duration"] = _seconds_since(m["started"])
    release(plan.record)
    try:
        write_manifest(plan.record, m)
    except RecordWriteError as exc:
        print(f"error: {exc}: the record {plan.record} still shows its last state", file=sys.stderr)
    write_index(plan.record, m)
    stream.say(totals(m))
    stream.log.last_line(f"record: {plan.record} ({m['status']})")
    stream.log.close()
    if not stream.out_closed:
        with contextlib.suppress(OSError, ValueError):
            stream.out.write(f"record: {plan.record} ({m['status']})\n")
            stream.out.flush()
    seal(plan.record)  # read-only from now on (`--resume` unseals it)


# the totals line's words, in this order: "34 steps: 8 planned, 26 unchecked"
_TOTAL_WORDS: Final = (
    (Outcome.PLAN, "planned"),
    (Outcome.DONE, "done"),
    (Outcome.ALREADY, "already done"),
    (Outcome.UNCHECKED, "unchecked"),
    (Outcome.SKIPPED, "skipped"),
    (Outcome.FAILED, "failed"),
)


def totals(m: Manifest) -> str:
    """The run's steps by outcome, counted from the manifest (every notebook that ran)."""
    counts: dict[str, int] = {}
    for nb in m["notebooks"]:
        for s in nb["steps"]:
            counts[s["outcome"]] = counts.get(s["outcome"], 0) + 1
    total = sum(counts.values())
    parts = [f"{counts.pop(str(o))} {word}" for o, word in _TOTAL_WORDS if str(o) in counts]
    parts += [f"{n} {o}" for o, n in counts.items()]  # an outcome this list does not know
    ran = sum(1 for nb in m["notebooks"] if nb["status"] != "pending")
    head = f"{total} step{'s' if total != 1 else ''}"
    return f"{head}: {', '.join(parts)}" if parts else f"{head} ({ran} notebooks ran)"


def _seconds_since(stamp: str) -> float:
    from datetime import datetime

    start = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=utc_now().tzinfo)
    return round((utc_now() - start).total_seconds(), 3)


def _run_notebooks(
    req: RunRequest, plan: RunPlan, stream: Stream, store: SecretStore, ends: Ends
) -> int:
    m = plan.manifest
    todo = [
        (i, p) for i, p in enumerate(plan.notebooks) if m["notebooks"][i]["status"] != "completed"
    ]
    exports = Exports()
    if not plan.new:  # a resume: HTML a full disk kept from completed notebooks
        done = [nb["notebook"] for nb in m["notebooks"] if nb["status"] == "completed"]
        for name in export_missing(plan.record, done, exports):
            stream.say(f"regenerating {name}")
    if not todo:
        exports.wait()
        m["status"] = "completed"
        return EXIT_OK
    parameters = {
        "params": str(plan.loaded.path.resolve()),
        "mode": str(plan.mode),
        "confirm": bool(req.confirm),
        "force_checks": bool(req.force_checks),
        "secrets_dir": str(store.root),
        "record_dir": str(plan.record.resolve()),
    }
    step_timeout = plan.loaded.deployment.timeouts.step
    kt = KernelThread(plan.loaded.path.resolve().parent)
    entry: NotebookEntry | None = None
    try:
        _start(kt, m)
        for i, source in todo:
            if (stop := _why_stop(ends, stream, None)) is not None:
                return _stop(req, plan, stream, None, stop)
            entry = m["notebooks"][i]
            nb_run = NotebookRun(source, plan.record / source.name, parameters, manifest=m)
            count = f"[{i + 1}/{len(plan.notebooks)}]"
            status, stop = _one(kt, exports, nb_run, entry, stream, count, ends, step_timeout)
            write_manifest(plan.record, m)
            if stop is not None or status != "completed":
                return _stop(req, plan, stream, entry, stop)
    except RecordWriteError as exc:  # the disk refused the manifest (or a notebook)
        return _stop(req, plan, stream, entry, Stop("failed", str(exc), EXIT_FAILED))
    except KeyboardInterrupt:  # SIGINT under a handler of the caller's own
        return _stop(req, plan, stream, entry, Stop("interrupted", "interrupted (Ctrl-C)", 130))
    finally:
        kt.stop()  # the kernel first: nothing runs on unrecorded
        with contextlib.suppress(Exception):
            exports.wait()
    m["status"] = "completed"
    return EXIT_OK


def _start(kt: KernelThread, m: Manifest) -> None:
    try:
        kt.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        m["status"] = "failed"
        m["failure"] = f"the Jupyter kernel did not start: {exc}"
        said = f" (it printed: {kt.start_output})" if kt.start_output else ""
        raise RunbookError(
            f"cannot start the notebook kernel ({sys.executable} -m ipykernel_launcher): "
            f"{exc}{said}; is ipykernel installed in this environment?"
        ) from None


def _one(
    kt: KernelThread,
    exports: Exports,
    run: NotebookRun,
    entry: NotebookEntry,
    stream: Stream,
    count: str,
    ends: Ends,
    step_timeout: float | None,
) -> tuple[str, Stop | None]:
    """Run one notebook; its entry says what really ran, however it ended."""
    start = time.monotonic()
    entry["status"], entry["start"], entry["end"] = "running", iso(utc_now()), None
    entry["failed_step"], entry["error"] = None, None
    stream.say(f"\n▶ {count} {run.source.stem}")
    stream.current_step, stream.current_host = "", ""
    stream.step_started = time.monotonic()
    kt.submit(run, stream)
    stop = _wait(kt, run, stream, ends, step_timeout)
    not_written: RecordWriteError | None = None
    try:
        finish(run, exports, stop.status if stop is not None else None)
    except RecordWriteError as exc:
        not_written = exc
    entry["steps"] = step_entries(run.steps)
    entry["end"] = iso(utc_now())
    entry["duration"] = round(time.monotonic() - start, 3)
    status: NotebookStatus
    if stop is not None:
        status = stop.status
    elif not_written is not None:
        # its steps ran (listed); the notebook itself is missing: a resume reruns it
        status = "failed"
        stop = Stop("failed", f"{not_written}; its steps are listed here", EXIT_FAILED)
    else:
        status = "failed" if run.error else "completed"
    entry["status"] = status
    if status != "completed":
        failed = next((s for s in run.steps if s["outcome"] == str(Outcome.FAILED)), None)
        entry["failed_step"] = failed["step"] if failed else _in_progress(run, stream)
        entry["error"] = stop.reason if stop is not None else _error_text(run, failed)
    stream.say(
        f"{'✓' if status == 'completed' else '✗'} {count} {run.source.stem} {status} "
        f"in {entry['duration']:.1f}s ({_counts(run.steps)})"
    )
    return status, stop


def _in_progress(run: NotebookRun, stream: Stream) -> str | None:
    """The step that had begun (its header printed) but recorded no outcome."""
    if stream.current_step and not any(s["step"] == stream.current_step for s in run.steps):
        return stream.current_step
    return None


def _wait(
    kt: KernelThread, run: NotebookRun, stream: Stream, ends: Ends, step_timeout: float | None
) -> Stop | None:
    """Wait for the notebook, ticking on long steps, until it ends or something ends the
    run; then the kernel is stopped before this returns."""
    last_tick = time.monotonic()
    while not kt.wait(0.25):
        stop = _why_stop(ends, stream, step_timeout)
        if stop is not None:
            _halt(kt, run, stream, ends, stop)
            return stop
        if time.monotonic() - last_tick > TICK and stream.current_step:
            last_tick = time.monotonic()
            took = time.monotonic() - stream.step_started
            stream.say(f"  … {run.source.stem}: {stream.current_step} ({took:.0f}s)")
    return None


def _halt(kt: KernelThread, run: NotebookRun, stream: Stream, ends: Ends, stop: Stop) -> None:
    """SIGINT to the kernel (the cell raises KeyboardInterrupt); after the grace, or at a
    second signal, SIGKILL to its process group; then wait for papermill to let go."""
    stream.say(f"\n{stop.reason}: stopping {run.source.stem}")
    grace = TERM_GRACE if stop.status == "terminated" else INTERRUPT_GRACE
    signals = ends.count
    kt.interrupt()
    deadline = time.monotonic() + grace
    while not kt.wait(0.25):
        if time.monotonic() > deadline or ends.count > signals:
            stream.say(f"the kernel did not stop its cell: killing it (pid {kt.pid})")
            kt.kill()
            kt.wait(DEAD_KERNEL_WAIT)
            return


def _counts(steps: list[StepRecord]) -> str:
    counts: dict[str, int] = {}
    for s in steps:
        counts[s["outcome"]] = counts.get(s["outcome"], 0) + 1
    body = ", ".join(f"{n} {o}" for o, n in counts.items())
    return f"{len(steps)} steps" + (f": {body}" if body else "")


def _error_text(run: NotebookRun, failed: StepRecord | None) -> str:
    if failed is not None:
        return failed["reason"]
    err = run.error
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    return tail(mask(f"{ename}: {evalue}"))


def _stop(
    req: RunRequest, plan: RunPlan, stream: Stream, entry: NotebookEntry | None, stop: Stop | None
) -> int:
    m = plan.manifest
    status: RunStatus = "failed"
    if stop is not None:
        status = stop.status
    elif entry is not None and entry["status"] != "pending":
        status = entry["status"]
    m["status"] = status
    where = "between notebooks"
    if entry is not None:
        where = f"notebook {entry['notebook']}"
        failed = next((s for s in entry["steps"] if s["outcome"] == str(Outcome.FAILED)), None)
        if failed is not None:
            where += f", step {failed['step']!r} on {failed['host']}"
        elif entry["failed_step"]:
            where += f", step {entry['failed_step']!r}"
    why = (stop.reason if stop is not None else (entry["error"] if entry else None)) or ""
    verb = "deploy" if plan.mode is Mode.DEPLOY else "plan"
    fix = "free space there" if why.startswith("records disk full") else "fix the cause"
    if plan.mode is Mode.DEPLOY:
        again = f"continue with `runbook deploy {req.params} --resume {plan.record}`"
    else:  # a plan changed nothing: plan again from where it stopped (a deploy would apply)
        nn = entry["notebook"][:2] if entry is not None else None
        again = f"plan again with `runbook plan {req.params}{f' --from {nn}' if nn else ''}`"
    summary = (
        f"{verb} {status} at {where}: {why}. The record is {plan.record}; {fix}, then {again}."
    )
    m["failure"] = summary
    stream.log.write(f"error: {summary}\n")
    if stop is None or not stop.quiet:
        with contextlib.suppress(OSError, ValueError):
            print(f"error: {summary}", file=sys.stderr)
    return stop.code if stop is not None else EXIT_FAILED
