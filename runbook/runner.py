"""Runs the handbook's notebooks with papermill, in-process, into a record folder.

One kernel (the venv's python: `sys.executable -m ipykernel_launcher`) is started per run
and handed to papermill for every notebook (`km=`, an nbclient traitlet), so the kernel
starts once instead of once per notebook. Each notebook runs in a worker thread: the main
thread stays free to take Ctrl-C, interrupt the kernel, and mark the record interrupted.

Papermill writes each notebook to a hidden `.partial` file while it runs; only a complete
read of it is written (atomically) as `NN-name.ipynb`, so a record never holds a half-written
notebook. Cell output is streamed, masked, to the terminal and `run.log`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from runbook import __version__
from runbook.errors import EXIT_FAILED, EXIT_OK, InputError, RunbookError, tail
from runbook.params import Loaded, load, require_paths
from runbook.records import (
    RUN_LOG,
    Manifest,
    NotebookEntry,
    iso,
    new_record_dir,
    read_manifest,
    step_entries,
    step_records,
    utc_now,
    write_manifest,
)
from runbook.secrets import SecretStore, mask
from runbook.steps import STEP_MIMETYPE, Mode, Outcome, StepRecord, register_lab_passwords

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


# -- the kernel ----------------------------------------------------------------------------


def _kernel_manager(socket_dir: Path) -> Any:
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class VenvKernelManager(AsyncKernelManager):
        """Always this interpreter's ipykernel, whatever kernelspecs are installed."""

        @property
        def kernel_spec(self) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (runbook)",
                language="python",
            )

    # IPC sockets at an absolute path: no TCP port, and the kernel's cwd does not matter.
    return VenvKernelManager(kernel_name="python3", transport="ipc", ip=str(socket_dir / "kernel"))


class KernelThread:
    """One kernel, owned by one worker thread that runs every notebook on it.

    The kernel manager's asyncio/zmq objects live in that thread's event loop; the main
    thread only submits notebooks, waits (so Ctrl-C reaches it) and signals the kernel.
    """

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.km: Any = None
        self.error: BaseException | None = None
        self._sockets: tempfile.TemporaryDirectory[str] | None = None
        self._jobs: queue.Queue[tuple[NotebookRun, Stream] | None] = queue.Queue()
        self._ready = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._main, name="runbook-kernel", daemon=True)

    def start(self) -> None:
        self._thread.start()
        while not self._ready.wait(0.25):
            pass
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            self._sockets = tempfile.TemporaryDirectory(prefix="runbook-kernel-")
            self.km = _kernel_manager(Path(self._sockets.name))
            env = dict(os.environ)
            paths = (str(PACKAGE_ROOT), env.get("PYTHONPATH"))
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
            run_sync(self.km.start_kernel)(env=env, cwd=str(self.cwd))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (job := self._jobs.get()) is not None:
                execute(self.km, *job)
                self._idle.set()
        finally:
            with contextlib.suppress(Exception):
                run_sync(self.km.shutdown_kernel)(now=True)
            with contextlib.suppress(Exception):
                self.km.cleanup_connection_file()
            if self._sockets is not None:
                self._sockets.cleanup()

    def submit(self, run: NotebookRun, stream: Stream) -> None:
        self._idle.clear()
        self._jobs.put((run, stream))

    def wait(self, timeout: float) -> bool:
        """True once the submitted notebook is done."""
        return self._idle.wait(timeout)

    def interrupt(self) -> None:
        if self.km is not None:
            interrupt(self.km)

    def kill(self) -> None:
        """The kernel did not stop on SIGINT: kill it, so the notebook's cell fails."""
        import signal

        pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)


def interrupt(km: Any) -> None:
    """SIGINT to the kernel: the running cell raises KeyboardInterrupt (ipykernel)."""
    import signal

    pid = getattr(getattr(km, "provisioner", None), "pid", None)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)


# -- streaming -----------------------------------------------------------------------------


class Stream:
    """Where cell output goes: masked, to the terminal and run.log; remembers the last step."""

    def __init__(self, out: IO[str], log: IO[str]) -> None:
        self.out = out
        self.log = log
        self.current_step = ""
        self.step_started = time.monotonic()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        masked = mask(text)
        with self._lock:
            for line in masked.splitlines():
                if line.startswith("── "):
                    self.current_step = line[3:].split("  @ ")[0]
                    self.step_started = time.monotonic()
            self.out.write(masked)
            self.log.write(masked)
            self.out.flush()
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.out.flush()
        self.log.flush()

    def say(self, line: str) -> None:
        self.write(line + "\n")


# -- one notebook --------------------------------------------------------------------------


@dataclass
class NotebookRun:
    source: Path
    output: Path
    parameters: dict[str, Any]
    error: BaseException | None = None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def partial(self) -> Path:
        return self.output.with_name(f".{self.output.stem}.partial.ipynb")


def execute(km: Any, run: NotebookRun, stream: Stream) -> None:
    """papermill.execute_notebook on the shared kernel; errors are kept on `run`."""
    import papermill

    try:
        papermill.execute_notebook(
            str(run.source),
            str(run.partial),
            parameters=run.parameters,
            kernel_name="python3",
            progress_bar=False,
            stdout_file=stream,
            stderr_file=stream,
            km=km,
            # saved when done (and every 30 s of a long cell), not after every cell: cheaper
            request_save_on_cell_execute=False,
        )
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        run.error = exc


def finish(run: NotebookRun, exports: Exports | None = None) -> None:
    """Move the partial notebook into place whole (or drop it if unreadable); export HTML."""
    import nbformat

    try:
        nb = nbformat.read(run.partial, as_version=4)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        logger.warning("%s: dropping the unreadable partial notebook (%s)", run.output.name, exc)
        run.partial.unlink(missing_ok=True)
        return
    run.steps = step_records(nb)
    tmp = run.output.with_name(f".{run.output.name}.tmp")
    nbformat.write(nb, tmp)  # type: ignore[no-untyped-call]
    os.replace(tmp, run.output)
    run.partial.unlink(missing_ok=True)
    if exports is None:
        export_html(nb, run.output.with_suffix(".html"))
    else:
        exports.submit(nb, run.output.with_suffix(".html"))


class Exports:
    """HTML exports on a background thread, overlapping the next notebook's execution."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runbook-html")
        self._pool.submit(_warm_nbconvert)  # its import and templates cost ~0.5 s: overlap them
        self._pending: list[Any] = []

    def submit(self, nb: Any, path: Path) -> None:
        self._pending.append(self._pool.submit(export_html, nb, path))

    def wait(self) -> None:
        """Every export written (a failed export is logged, not fatal: the .ipynb is there)."""
        for future in self._pending:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - the record stays usable without HTML
                logger.warning("HTML export failed: %s", mask(str(exc)))
        self._pool.shutdown()


def _warm_nbconvert() -> None:
    from nbconvert import HTMLExporter

    HTMLExporter()  # type: ignore[no-untyped-call]


def export_html(nb: Any, path: Path) -> None:
    """The notebook as HTML; step records are dropped (their lines are printed anyway)."""
    import copy

    from nbconvert import HTMLExporter

    shown = copy.deepcopy(nb)
    for cell in shown.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if STEP_MIMETYPE not in o.get("data", {})]
    body, _ = HTMLExporter().from_notebook_node(shown)  # type: ignore[no-untyped-call]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(mask(body))
    os.replace(tmp, path)


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
