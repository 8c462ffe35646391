"""The one Jupyter kernel of a run, owned by one worker thread that runs every notebook on it.

One kernel (the venv's python: `sys.executable -m ipykernel_launcher`) is started per run and
handed to papermill for every notebook (`km=`, an nbclient traitlet), so the kernel starts
once instead of once per notebook. The main thread stays free to take Ctrl-C, interrupt the
kernel (SIGINT: the running cell raises KeyboardInterrupt) or kill it.
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
from typing import Any, Final

from runbook.notebook_run import NotebookRun, Stream, execute

logger: Final = logging.getLogger(__name__)

PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent


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
            self.km = kernel_manager(Path(self._sockets.name))
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
