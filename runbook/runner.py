"""Runs the handbook's notebooks with papermill, in-process, into a record folder.

Decides what runs (selection, `--resume`), keeps the record's manifest, and drives each
notebook on the run's one kernel (runbook.kernel_thread) while the main thread waits, so
Ctrl-C interrupts the kernel and marks the record interrupted. One notebook's execution and
streaming is runbook.notebook_run; its HTML export runbook.html_export.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from runbook import __version__
from runbook.errors import EXIT_FAILED, EXIT_OK, InputError, RunbookError, tail
from runbook.html_export import Exports
from runbook.kernel_thread import KernelThread
from runbook.notebook_run import NotebookRun, Stream, finish
from runbook.params import Loaded, load, require_paths
from runbook.records import (
    RUN_LOG,
    Manifest,
    NotebookEntry,
    iso,
    new_record_dir,
    read_manifest,
    step_entries,
    utc_now,
    write_manifest,
)
from runbook.secrets import SecretStore, mask
from runbook.steps import Mode, Outcome, StepRecord, register_lab_passwords

logger: Final = logging.getLogger(__name__)

EXIT_INTERRUPTED: Final = 130
NOTEBOOK_GLOB: Final = "[0-9][0-9]-*.ipynb"
PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOKS: Final = PACKAGE_ROOT / "notebooks"
INTERRUPT_GRACE: Final = 15.0  # seconds for the kernel to stop a cell after SIGINT
TICK: Final = 20.0  # a "still running" line this often during a long step


@dataclass(frozen=True)
class RunRequest:
    params: Path
    mode: Mode
    records_root: Path
    confirm: bool = False
    force_checks: bool = False  # go on although a doctor check fails (notebook 00)
    from_: str | None = None
    only: tuple[str, ...] = ()
    resume: Path | None = None
    secrets_dir: Path | None = None
    notebooks_dir: Path = DEFAULT_NOTEBOOKS
    out: IO[str] = field(default=sys.stdout, compare=False)


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
    from runbook import local

    result = local.run(["git", "-C", str(config), "rev-parse", "HEAD"], check=False, timeout=10)
    return result.stdout.strip() or None if result.ok else None


def _new_manifest(req: RunRequest, loaded: Loaded, record: Path, picks: list[Path]) -> Manifest:
    import papermill

    return Manifest(
        id=record.name,
        deployment=loaded.deployment.deployment,
        params=str(loaded.path.resolve()),
        params_digest=loaded.digest,
        runbook_version=__version__,
        papermill_version=papermill.__version__,
        nixos_config_commit=_config_commit(loaded),
        mode=str(req.mode),
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
    )


@dataclass
class Plan:
    """What a run will do, decided before any kernel starts."""

    loaded: Loaded
    record: Path
    manifest: Manifest
    notebooks: list[Path]
    mode: Mode


def prepare(req: RunRequest) -> Plan:
    """Validate everything (InputError, exit 2) and make or reopen the record folder."""
    loaded = load(req.params)
    register_lab_passwords(loaded.deployment)  # this process streams the kernel's output too
    available = discover(req.notebooks_dir)
    if req.resume is not None:
        record = req.resume
        manifest = read_manifest(record)
        mode = Mode(manifest["mode"])
        by_name = {p.stem: p for p in available}
        missing = [nb["notebook"] for nb in manifest["notebooks"] if nb["notebook"] not in by_name]
        if missing:
            raise InputError(f"--resume {record}: notebooks no longer exist: {', '.join(missing)}")
        picks = [by_name[nb["notebook"]] for nb in manifest["notebooks"]]
        if manifest["params_digest"] != loaded.digest:
            logger.info("params changed since the record began; continuing with the new file")
            manifest["params_digest"] = loaded.digest
    else:
        mode = req.mode
        picks = select(available, req.from_, req.only)
        record = Path()  # made below, once the params are known good
    if mode is Mode.DEPLOY:
        require_paths(loaded.deployment, loaded.path)
    if req.resume is None:
        record = new_record_dir(req.records_root, loaded.deployment.deployment, utc_now())
        manifest = _new_manifest(req, loaded, record, picks)
    return Plan(loaded, record, manifest, picks, mode)


def run(req: RunRequest) -> int:
    """Execute the plan; 0 when every notebook completed, 1 on a failure, 130 on Ctrl-C."""
    plan = prepare(req)
    store = SecretStore(req.secrets_dir)
    store.load_all()  # the runner masks what the store holds, too
    # jupyter_client warns when papermill's per-notebook clients are collected: noise here.
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    m = plan.manifest
    m["status"], m["ended"], m["failure"] = "running", None, None
    write_manifest(plan.record, m)
    with open(plan.record / RUN_LOG, "a") as log:
        stream = Stream(req.out, log)
        stream.say(f"record {plan.record} · {plan.mode} · deployment {m['deployment']}")
        try:
            code = _run_notebooks(req, plan, stream, store)
        finally:
            m["ended"] = iso(utc_now())
            m["duration"] = _seconds_since(m["started"])
            write_manifest(plan.record, m)
        stream.say(f"record: {plan.record} ({m['status']})")
    return code


def _seconds_since(stamp: str) -> float:
    from datetime import datetime

    start = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=utc_now().tzinfo)
    return round((utc_now() - start).total_seconds(), 3)


def _run_notebooks(req: RunRequest, plan: Plan, stream: Stream, store: SecretStore) -> int:
    m = plan.manifest
    todo = [
        (i, p) for i, p in enumerate(plan.notebooks) if m["notebooks"][i]["status"] != "completed"
    ]
    if not todo:
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
    kt = KernelThread(plan.loaded.path.resolve().parent)
    exports = Exports()
    try:
        _start(kt, m)
        for i, source in todo:
            entry = m["notebooks"][i]
            nb_run = NotebookRun(source, plan.record / source.name, parameters)
            status = _one(kt, exports, nb_run, entry, stream, f"[{i + 1}/{len(plan.notebooks)}]")
            write_manifest(plan.record, m)
            if status != "completed":
                return _stop(req, plan, entry, status, stream)
    except KeyboardInterrupt:
        m["status"] = "interrupted"
        stream.say("interrupted between notebooks")
        return EXIT_INTERRUPTED
    finally:
        kt.stop()
        exports.wait()
    m["status"] = "completed"
    return EXIT_OK


def _start(kt: KernelThread, m: Manifest) -> None:
    try:
        kt.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        m["status"] = "failed"
        m["failure"] = f"the Jupyter kernel did not start: {exc}"
        raise RunbookError(
            f"cannot start the notebook kernel ({sys.executable} -m ipykernel_launcher): {exc}; "
            "is ipykernel installed in this environment?"
        ) from None


def _one(
    kt: KernelThread,
    exports: Exports,
    run: NotebookRun,
    entry: NotebookEntry,
    stream: Stream,
    count: str,
) -> str:
    start = time.monotonic()
    entry["status"], entry["start"], entry["end"] = "running", iso(utc_now()), None
    entry["failed_step"], entry["error"] = None, None
    stream.say(f"\n▶ {count} {run.source.stem}")
    kt.submit(run, stream)
    interrupted, done = _wait(kt, run, stream)
    if done:
        finish(run, exports)
    else:  # the kernel never answered: no half-written notebook in the record
        run.partial.unlink(missing_ok=True)
    entry["steps"] = step_entries(run.steps)
    entry["end"] = iso(utc_now())
    entry["duration"] = round(time.monotonic() - start, 3)
    status = "interrupted" if interrupted else ("failed" if run.error else "completed")
    entry["status"] = status
    if status != "completed":
        failed = next((s for s in run.steps if s["outcome"] == str(Outcome.FAILED)), None)
        entry["failed_step"] = failed["step"] if failed else None
        entry["error"] = _error_text(run, failed, interrupted)
    outcomes = _counts(run.steps)
    stream.say(
        f"{'✓' if status == 'completed' else '✗'} {count} {run.source.stem} {status} "
        f"in {entry['duration']:.1f}s ({outcomes})"
    )
    return status


def _wait(kt: KernelThread, run: NotebookRun, stream: Stream) -> tuple[bool, bool]:
    """Wait for the notebook, ticking on long steps; Ctrl-C interrupts the kernel.

    Returns (interrupted, finished).
    """
    last_tick = time.monotonic()
    try:
        while not kt.wait(0.25):
            if time.monotonic() - last_tick > TICK and stream.current_step:
                last_tick = time.monotonic()
                took = time.monotonic() - stream.step_started
                stream.say(f"  … {run.source.stem}: {stream.current_step} ({took:.0f}s)")
        return False, True
    except KeyboardInterrupt:
        stream.say(f"\ninterrupted: stopping {run.source.stem}")
        try:
            kt.interrupt()
            if not kt.wait(INTERRUPT_GRACE):
                kt.kill()
                return True, kt.wait(INTERRUPT_GRACE)
        except KeyboardInterrupt:
            return True, False  # a second Ctrl-C: stop waiting; the partial notebook is dropped
        return True, True


def _counts(steps: list[StepRecord]) -> str:
    counts: dict[str, int] = {}
    for s in steps:
        counts[s["outcome"]] = counts.get(s["outcome"], 0) + 1
    body = ", ".join(f"{n} {o}" for o, n in counts.items())
    return f"{len(steps)} steps" + (f": {body}" if body else "")


def _error_text(run: NotebookRun, failed: StepRecord | None, interrupted: bool) -> str:
    if interrupted:
        return "interrupted (Ctrl-C)"
    if failed is not None:
        return failed["reason"]
    err = run.error
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    return tail(mask(f"{ename}: {evalue}"))


def _stop(req: RunRequest, plan: Plan, entry: NotebookEntry, status: str, stream: Stream) -> int:
    m = plan.manifest
    m["status"] = status
    failed = next((s for s in entry["steps"] if s["outcome"] == str(Outcome.FAILED)), None)
    where = f"notebook {entry['notebook']}"
    if failed is not None:
        where += f", step {failed['step']!r} on {failed['host']}"
    verb = "deploy" if plan.mode is Mode.DEPLOY else "plan"
    summary = (
        f"{verb} {status} at {where}: {entry['error']}. The record is {plan.record}; "
        f"fix the cause, then continue with `runbook deploy {req.params} --resume {plan.record}`."
    )
    m["failure"] = summary
    stream.say("")
    print(f"error: {summary}", file=sys.stderr)
    stream.log.write(f"error: {summary}\n")
    return EXIT_INTERRUPTED if status == "interrupted" else EXIT_FAILED
