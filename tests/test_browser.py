"""JupyterLab in a real browser: a user opens a section notebook, runs it top to bottom in plan
mode against params/cache.yaml, and uses the step panel (runbook.notebook.widgets); then opens
the records dashboard on a record made by `runbook deploy` of the lab and finds its timeline.

Real JupyterLab server, real kernel, Debian's chromium driven headless by playwright (the
python package; its driver ships in the wheel, `playwright install` is never run). Flags and
timings: /work/shared/reference/lab-notes.md, "JupyterLab in a real browser". Plan mode never
connects, so nothing leaves loopback: the VM addresses in params/cache.yaml are never contacted.
The lab's record is made before the browser starts, in the lab's own namespaces.

Screenshots (cropped to the widget or area, PNG palette-quantised with Pillow) go to the test's
temp dir, or to $RUNBOOK_SCREENSHOTS when set: `make screenshots` refreshes docs/screenshots/.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
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
DASHBOARD = "records-dashboard"
SHOTS_ENV = "RUNBOOK_SCREENSHOTS"
MAX_SHOT_BYTES = 200_000  # small enough to keep in git
SHOT_VIEWPORT_HEIGHT = 2400  # a screenshot's area fits in it whole
# the lab the dashboard's record comes from: its own state dir, subnet and bridge
LAB_STATE = Path("/var/lib/runbook-lab-browsertest")
LAB_SUBNET, LAB_BRIDGE = "10.231.36.0/24", "rblabb"
LAB_PASSWORDS = {"root": "Lb7-live-iso-q2", "jqwang": "jqwang-lab"}


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
    page.wait_for_selector(".jp-Notebook:visible")  # this one's: earlier tabs stay open, hidden
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
    heading = page.locator(".runbook-summary").last
    assert heading.inner_text() == "5 steps: 1 plan, 4 unchecked"  # the run above, per step
    badge = first.locator(".runbook-badge")
    assert badge.inner_text() == "plan"
    # red only for a dangerous Apply: none of 05's steps wipes anything
    assert page.locator(".widget-button.mod-danger").count() == 0
    assert first.locator(".widget-button.mod-primary", has_text="Apply").count() == 1
    output = first.locator(".widget-output")
    first.locator(".widget-button", has_text="Plan").click()
    output.filter(has_text="$ runbook.cache.keys.generate_token_secret(4096)").wait_for()
    assert output.inner_text().startswith("Plan:")
    first.locator(".widget-button", has_text="Check").click()
    output.filter(has_text="[to do]").wait_for()
    assert "Check:" in output.inner_text() and "Plan:" not in output.inner_text()  # replaced
    assert badge.inner_text() == "to do"

    # Apply = a deploy of this one (local) step: a real RSA-4096 key into the throwaway store
    first.locator(".widget-button", has_text="Apply").click()
    output.filter(has_text="[done: RSA-4096, PKCS#8 PEM").wait_for()
    page.locator(".runbook-summary", has_text="5 steps: 1 done, 4 unchecked").wait_for()
    assert badge.inner_text() == "done"
    first.locator(".widget-button", has_text="Check").click()
    output.filter(has_text="[already done:").wait_for()
    assert badge.inner_text() == "already done"
    assert (lab.root.parent / "secrets" / "attic-token-secret").stat().st_mode & 0o777 == 0o600

    remote = rows.filter(has_text="install /var/lib/atticd/env").last
    remote.locator(".widget-button", has_text="Check").click()
    remote.locator(".widget-output", has_text="[unchecked: plan mode does not connect").wait_for()
    hint = remote.locator(".widget-output").inner_text()
    assert 'set mode = "deploy"' in hint and "--only 05`" in hint, hint
    return first


# -- screenshots -----------------------------------------------------------------------------


def shots_dir(tmp_path: Path) -> Path:
    """$RUNBOOK_SCREENSHOTS (`make screenshots`: docs/screenshots), else the test's temp dir."""
    folder = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_shot(page: Any, parts: list[Any], name: str, tmp_path: Path) -> Path:
    """A screenshot of the area the `parts` (locators) cover, as a palette PNG (Pillow's
    quantize + optimize: a UI screenshot has few colours), at most MAX_SHOT_BYTES."""
    from PIL import Image

    # JupyterLab scrolls the notebook, not the page: a viewport tall enough for the whole
    # area, the first part scrolled into it, then every part measured at that one scroll
    viewport = page.viewport_size
    page.set_viewport_size({"width": viewport["width"], "height": SHOT_VIEWPORT_HEIGHT})
    try:
        parts[0].scroll_into_view_if_needed()
        parts[0].evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)  # the notebook's windowing renders what came into view
        boxes = []
        for part in parts:
            box = part.bounding_box()
            assert box is not None, f"{name}: {part} is not on the page"
            boxes.append(box)
        x0, y0 = min(b["x"] for b in boxes), min(b["y"] for b in boxes)
        x1 = max(b["x"] + b["width"] for b in boxes)
        y1 = min(max(b["y"] + b["height"] for b in boxes), SHOT_VIEWPORT_HEIGHT)
        clip = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}
        raw = page.screenshot(clip=clip)
    finally:
        page.set_viewport_size(viewport)
    image = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=128)
    out = shots_dir(tmp_path) / name
    image.save(out, format="PNG", optimize=True)
    size = out.stat().st_size
    assert 5_000 < size <= MAX_SHOT_BYTES, f"{out}: {size:,} bytes"
    return out


def _cjk_renders(page: Any) -> bool:
    """Two different Chinese characters draw differently: a real CJK font, not the same
    "missing glyph" box for both (Chinese headings would show as boxes without one)."""
    return bool(
        page.evaluate(
            """() => {
        const draw = (ch) => {
            const c = document.createElement("canvas");
            c.width = 40; c.height = 40;
            const g = c.getContext("2d");
            g.font = "32px sans-serif";
            g.fillText(ch, 2, 34);
            return Array.from(g.getImageData(0, 0, 40, 40).data).join(",");
        };
        const a = draw("部"), b = draw("署"), blank = draw(" ");
        return a !== b && a !== blank && b !== blank;
    }"""
        )
    )


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
    # the whole panel (its heading's summary, a badge per row), cropped to the widget
    widget = page.locator(".jp-OutputArea-output", has=page.locator(".widget-button")).last
    saved = save_shot(page, [widget], "step-panel.png", tmp_path)
    print(f"step panel screenshot: {saved} ({saved.stat().st_size:,} bytes)")
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


# -- the records dashboard on a record of the lab --------------------------------------------


@pytest.fixture(scope="module")
def lab_record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A record made by `runbook deploy --yes` of a lab (cache VM + one worker), in a child
    process as a user runs it; the lab is taken down before the browser starts."""
    from runbook import lab
    from runbook.lab import deployment
    from tests.deploy_rig import need_lab, run_deploy

    need_lab()

    tmp = tmp_path_factory.mktemp("browserlab")
    lab_file = deployment.write(
        tmp / "lab.yaml", state_dir=LAB_STATE, subnet=LAB_SUBNET, bridge=LAB_BRIDGE,
        workers=1, passwords=LAB_PASSWORDS, name="cache",
    )  # fmt: skip
    lab.down(lab_file)
    try:
        lab.up(lab_file, secrets_dir=tmp / "secrets")
        made = run_deploy(
            lab.params_path(lab_file), tmp / "secrets", tmp / "records", tmp / "deploy.log"
        )
    finally:
        lab.down(lab_file)
    assert made.rc == 0, made.out[-3000:]
    print(f"lab record {made.record.name}: runbook deploy took {made.seconds:.0f} s")
    yield made.record


@pytest.mark.slow
@pytest.mark.lab
def test_the_dashboard_shows_a_lab_deploy_record_and_its_timeline(
    lab_record: Path, lab: Lab, page: Any, tmp_path: Path
) -> None:
    records = lab.root / "records"  # the dashboard's records_root, "../records"
    shutil.copytree(lab_record, records / lab_record.name)
    manifest = json.loads((lab_record / "manifest.json").read_text())
    assert manifest["mode"] == "deploy" and manifest["status"] == "completed"
    try:
        _open_and_run_all(lab, page, DASHBOARD)
        board = page.locator(".jp-NotebookPanel:visible")  # not the earlier, hidden tabs
        timeline = board.locator(".jp-OutputArea-output img").first
        timeline.wait_for()
        # a real picture, decoded by the browser (not a broken image)
        size = timeline.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size[0] > 300 and size[1] > 100, size
        assert timeline.get_attribute("src", timeout=1000).startswith("data:image/png")
        runs = _output(board, lab_record.name)
        runs.wait_for()
        assert "completed" in runs.inner_text()
        for noise in ("Traceback", "NaN", "InputError"):
            assert board.locator(".jp-OutputArea-output", has_text=noise).count() == 0, noise
        heading = board.locator(".jp-MarkdownOutput h1").first
        assert "部署记录" in heading.inner_text()
        assert _cjk_renders(page), "no CJK font: the Chinese headings render as boxes"
    except Exception:
        page.screenshot(path=str(tmp_path / "dashboard-failure.png"), full_page=True)
        raise
    saved = save_shot(page, [heading, runs, timeline], "dashboard.png", tmp_path)
    print(f"dashboard screenshot: {saved} ({saved.stat().st_size:,} bytes)")
    assert not lab.sockets_log.exists(), lab.sockets_log.read_text()
