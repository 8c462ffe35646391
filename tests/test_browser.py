"""JupyterLab in a real browser: a user opens a section notebook, runs it top to bottom in plan
mode against params/cache.yaml, and uses the step panel (runbook.notebook.widgets).

Real JupyterLab server, real kernel, Debian's chromium driven headless by playwright (the
python package; its driver ships in the wheel, `playwright install` is never run). Flags and
timings: /work/shared/reference/lab-notes.md, "JupyterLab in a real browser". Plan mode never
connects, so nothing leaves loopback: the VM addresses in params/cache.yaml are never contacted.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.run_rig import REPO, guard_env

CHROMIUM = Path("/usr/bin/chromium")
# lab-notes.md, "JupyterLab in a real browser": the launch flags that worked here
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# no news toast in screenshots, and no request to jupyter.org (lab-notes.md, same section)
NOTIFICATION_SETTINGS = {"fetchNews": "false", "checkForUpdates": False}
# JupyterLab settings for the test's server: (plugin settings file, values)
LAB_SETTINGS = {
    "apputils-extension/notification": NOTIFICATION_SETTINGS,
    "notebook-extension/tracker": {"autoStartDefaultKernel": True},  # no kernel dialog
}
SERVER_START_TIMEOUT = 40.0
RUN_TIMEOUT_MS = 30_000
NOTEBOOK = "05-token-secret"


@dataclass(frozen=True)
class Lab:
    url: str
    token: str
    root: Path
    log: Path

    @property
    def sockets_log(self) -> Path:
        return self.log.parent / "sockets.log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(lab: Lab, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited {proc.returncode}: {lab.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{lab.url}/api/status?token={lab.token}", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    pytest.fail(
        f"jupyter lab did not answer in {SERVER_START_TIMEOUT}s: {lab.log.read_text()[-2000:]}"
    )


def _wait_kernel_idle(lab: Lab, notebook: str) -> None:
    """The notebook's kernel is started and idle (the server's sessions API)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{lab.url}/api/sessions?token={lab.token}", timeout=5) as r:
            sessions = json.load(r)
        if any(
            s["path"].endswith(f"{notebook}.ipynb") and s["kernel"]["execution_state"] == "idle"
            for s in sessions
        ):
            return
        time.sleep(0.2)
    pytest.fail(f"no idle kernel in {SERVER_START_TIMEOUT}s: {lab.log.read_text()[-2000:]}")


def _lab_env(tmp: Path) -> dict[str, str]:
    settings = tmp / "settings"
    for plugin, values in LAB_SETTINGS.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return {
        **guard_env(tmp),  # the server and its kernels: loopback only, every attempt logged
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        # the kernels inherit this: the panel's Apply writes to a throwaway store
        "RUNBOOK_SECRETS": str(tmp / "secrets"),
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need(CHROMIUM.exists(), f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    need(
        importlib.util.find_spec("playwright") is not None,
        "needs playwright (pip install playwright)",
    )
    need(importlib.util.find_spec("jupyterlab") is not None, "needs jupyterlab (the lab extra)")
    tmp = tmp_path_factory.mktemp("jupyterlab")
    root = tmp / "root"  # a copy: the committed notebooks stay without outputs
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "params", root / "params", ignore=shutil.ignore_patterns("kernel-ipc-*"))
    lab = Lab(f"http://127.0.0.1:{_free_port()}", secrets.token_hex(16), root, tmp / "lab.log")
    argv = [
        sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
        f"--port={lab.url.rsplit(':', 1)[1]}", f"--IdentityProvider.token={lab.token}",
        f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    with lab.log.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_lab_env(tmp))
    try:
        _wait_ready(lab, proc)
        yield lab
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(RUN_TIMEOUT_MS)
        yield page
        browser.close()


def _page_has_kernel(page: Any) -> None:
    """The page shows the idle kernel. Run All before that opens a "Select Kernel" dialog
    instead of running; if JupyterLab asks anyway, take its preferred kernel, as a user would."""
    idle = page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle")
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while not idle.is_visible():
        if dialog.is_visible():
            dialog.locator(".jp-mod-accept").click()
        assert time.monotonic() < deadline, "the page never showed an idle kernel"
        time.sleep(0.1)


def _open_and_run_all(lab: Lab, page: Any, notebook: str) -> None:
    page.goto(f"{lab.url}/lab/tree/notebooks/{notebook}.ipynb?token={lab.token}")
    page.wait_for_selector(".jp-Notebook")
    _wait_kernel_idle(lab, notebook)
    _page_has_kernel(page)
    _run_all(page)


def _run_all(page: Any) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _output(page: Any, text: str) -> Any:
    return page.locator(".jp-OutputArea-output", has_text=text).first


def _plan_and_use_the_panel(lab: Lab, page: Any) -> Any:
    """Run the notebook top to bottom, use its panel; the first step's row."""
    _open_and_run_all(lab, page, NOTEBOOK)

    # top to bottom in plan mode: the step outcome lines and the summary
    summary = _output(page, f"{NOTEBOOK}: 5 step(s)")
    summary.wait_for()
    assert "1 plan, 4 unchecked" in summary.inner_text()
    assert _output(page, "[plan] generate the token secret locally").count() == 1
    assert _output(page, "[unchecked: plan mode does not connect to").count() == 1
    for noise in ("Traceback", "<Outcome."):
        assert page.locator(".jp-OutputArea-output", has_text=noise).count() == 0, noise

    # the step panel: one row per step, Plan / Check / Apply
    rows = page.locator(".widget-vbox", has=page.locator(".widget-button", has_text="Plan"))
    first = rows.filter(has_text="generate the token secret locally").last
    first.wait_for()
    first.locator(".widget-button", has_text="Plan").click()
    first.locator(
        ".widget-output", has_text="$ runbook.cache.keys.generate_token_secret(4096)"
    ).wait_for()
    first.locator(".widget-button", has_text="Check").click()
    first.locator(".widget-output", has_text="[to do]").wait_for()

    # Apply = a deploy of this one (local) step: a real RSA-4096 key into the throwaway store
    first.locator(".widget-button", has_text="Apply").click()
    first.locator(".widget-output", has_text="[done: RSA-4096, PKCS#8 PEM").wait_for()
    first.locator(".widget-button", has_text="Check").click()
    first.locator(".widget-output", has_text="[already done:").wait_for()
    assert (lab.root.parent / "secrets" / "attic-token-secret").stat().st_mode & 0o777 == 0o600

    remote = rows.filter(has_text="install /var/lib/atticd/env").last
    remote.locator(".widget-button", has_text="Check").click()
    remote.locator(".widget-output", has_text="[unchecked: plan mode does not connect").wait_for()
    return first


@pytest.mark.slow
def test_notebook_runs_in_plan_mode_and_the_step_panel_answers(
    lab: Lab, page: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    try:
        first = _plan_and_use_the_panel(lab, page)
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))  # what the user would have seen
        raise
    shot = tmp_path / "jupyterlab.png"
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert not lab.sockets_log.exists(), lab.sockets_log.read_text()  # plan mode: loopback only
    elapsed = time.monotonic() - started
    print(f"browser: {NOTEBOOK} planned and panel used in {elapsed:.1f}s; screenshot {shot}")


@pytest.mark.slow
def test_preflight_notebook_runs_in_plan_mode_with_its_panel(
    lab: Lab, page: Any, tmp_path: Path
) -> None:
    notebook = "00-architecture-preflight"
    _open_and_run_all(lab, page, notebook)
    _output(page, f"{notebook}: ").wait_for()  # the summary line: every cell ran
    for noise in ("Traceback", "<Outcome.", "[failed"):
        assert page.locator(".jp-OutputArea-output", has_text=noise).count() == 0, noise
    row = page.locator(".widget-vbox", has=page.locator(".widget-button", has_text="Plan")).last
    row.wait_for()  # the last step's row: a toplevel build, planned without building
    row.locator(".widget-button", has_text="Plan").click()
    row.locator(".widget-output", has_text="$ ").wait_for()
    row.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "preflight.png"))
    assert not lab.sockets_log.exists(), lab.sockets_log.read_text()
