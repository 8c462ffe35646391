"""The one Jupyter kernel of a run, owned by one worker thread that runs every notebook on it.

One kernel (the venv's python: `sys.executable -m ipykernel_launcher`) is started per run and
handed to papermill for every notebook (`km=`, an nbclient traitlet), so the kernel starts
once instead of once per notebook. The main thread stays free to take signals, interrupt the
kernel (SIGINT: the running cell raises KeyboardInterrupt) or kill it with everything it
started (the kernel leads its own process group: jupyter_client starts it in a new session).

The kernel writes nothing outside the run's temp dir: IPYTHONDIR (profile, history) and the
Jupyter config/data/runtime dirs point into it, and it is removed when the kernel stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Final

from runbook.notebook.notebook_run import NotebookRun, Stream, execute

logger: Final = logging.getLogger(__name__)

# the folder holding the `runbook` package, put first on the kernel's path: it imports this one
SOURCE_ROOT: Final = Path(__file__).resolve().parents[2]


def kernel_manager(socket_dir: Path) -> Any:
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

    # IPC sockets at an absolute path: no TCP port, and the kernel's cwd does not matter;
    # the connection file beside them, not in ~/.local/share/jupyter/runtime.
    return VenvKernelManager(
        kernel_name="python3",
        transport="ipc",
        ip=str(socket_dir / "kernel"),
        connection_file=str(socket_dir / "kernel.json"),
    )


def private_dirs(root: Path) -> dict[str, str]:
    """IPython's and Jupyter's own dirs under `root`, for the kernel's environment."""
    dirs = {
        "IPYTHONDIR": root / "ipython",
        "JUPYTER_CONFIG_DIR": root / "jupyter-config",
        "JUPYTER_DATA_DIR": root / "jupyter-data",
        "JUPYTER_RUNTIME_DIR": root / "jupyter-runtime",
    }
    for path in dirs.values():
        path.mkdir(mode=0o700, exist_ok=True)
    return {name: str(path) for name, path in dirs.items()}


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
        self._log: IO[bytes] | None = None
        self.start_output = ""  # what a kernel that failed to start printed
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

    def log_tail(self) -> str:
        """The end of what the kernel process itself printed (while the run lasts)."""
        from runbook.core.errors import tail

        if self._sockets is None:
            return ""
        try:
            text = (Path(self._sockets.name) / "kernel.log").read_text(errors="replace")
        except OSError:
            return ""
        return tail(text, lines=3)

    def _main(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            try:
                self._sockets = tempfile.TemporaryDirectory(prefix="runbook-kernel-")
                root = Path(self._sockets.name)
                self.km = kernel_manager(root)
                env = dict(os.environ) | private_dirs(root)
                paths = (str(SOURCE_ROOT), env.get("PYTHONPATH"))
                env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
                # the kernel's own stdout/stderr (ipykernel's logs, a crash while it starts)
                # go to a file, never onto the terminal; cell output comes through iopub
                self._log = open(root / "kernel.log", "wb")  # noqa: SIM115 - closed below
                run_sync(self.km.start_kernel)(
                    env=env, cwd=str(self.cwd), stdout=self._log, stderr=self._log
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc
                if self._log is not None:
                    self._log.flush()
                    self.start_output = self.log_tail()
                return
            finally:
                self._ready.set()
            while (job := self._jobs.get()) is not None:
                execute(self.km, *job)
                self._idle.set()
        finally:
            if self.km is not None:
                with contextlib.suppress(Exception):
                    run_sync(self.km.shutdown_kernel)(now=True)
                with contextlib.suppress(Exception):
                    self.km.cleanup_connection_file()
            if self._log is not None:
                self._log.close()
            if self._sockets is not None:
                self._sockets.cleanup()

    def submit(self, run: NotebookRun, stream: Stream) -> None:
        self._idle.clear()
        self._jobs.put((run, stream))

    def wait(self, timeout: float) -> bool:
        """True once the submitted notebook is done."""
        return self._idle.wait(timeout)

    @property
    def pid(self) -> int | None:
        pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
        return int(pid) if pid else None

    def interrupt(self) -> None:
        if self.km is not None:
            interrupt(self.km)

    def kill(self) -> None:
        """SIGKILL to the kernel's process group: the kernel and whatever its cell started
        (make, ssh, ...) stop now; the notebook's cell fails."""
        import signal

        pid = self.pid
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the kernel down; if it is still there after `timeout`, kill its group."""
        self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive() or _alive(self.pid):
            self.kill()
            self._thread.join(timeout)


def _alive(pid: int | None) -> bool:
    """True while `pid` runs (a zombie child not yet reaped counts as gone)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def interrupt(km: Any) -> None:
    """SIGINT to the kernel: the running cell raises KeyboardInterrupt (ipykernel)."""
    import signal

    pid = getattr(getattr(km, "provisioner", None), "pid", None)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
