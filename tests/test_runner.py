"""The runner with real papermill kernels: failures, --resume, Ctrl-C, bad input, secrets."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from runbook import cli
from runbook.core.secrets import SecretStore
from runbook.engine.steps import FAIL_STEP_ENV, Mode
from runbook.notebook import kernel_thread, runner
from tests.run_rig import PARAMS, REPO, build_notebooks, runbook, scan, write_params

INSTALL = "install /var/lib/atticd/env (0600)"


def _manifest(record: Path) -> dict:
    return json.loads((record / "manifest.json").read_text())


def _only_record(root: Path) -> Path:
    found = [p for p in root.iterdir() if p.is_dir()]
    assert len(found) == 1
    return found[0]


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: kernel_thread.KernelThread) -> None:
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(kernel_thread.KernelThread, "start", refuse)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("deployment: x\n", "required key is missing"),
        ("not: [valid", "not valid YAML"),
    ],
)
def test_bad_params_exit_2_before_any_kernel(
    tmp_path: Path, no_kernel: None, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    assert cli.execute(["plan", str(bad), "--records", str(tmp_path / "records")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "records").exists()


def test_bad_arguments_and_missing_paths_exit_2(tmp_path: Path, no_kernel: None) -> None:
    records = str(tmp_path / "records")
    cache = str(PARAMS / "cache.yaml")
    assert cli.execute(["plan", cache, "--only", "42", "--records", records]) == 2
    assert cli.execute(["plan", cache, "--from", "03", "--only", "05", "--records", records]) == 2
    # a deploy needs the nixos-config checkout; this machine has none at ~/nixos-config
    assert cli.execute(["deploy", cache, "--records", records]) == 2
    assert cli.execute(["deploy", cache, "--resume", "nope", "--records", records]) == 2
    assert not Path(records).exists()


def test_failed_step_is_named_and_resume_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "records"
    args = ["--records", str(root), "--secrets", str(tmp_path / "secrets")]
    monkeypatch.setenv(FAIL_STEP_ENV, f"05:{INSTALL}")
    assert cli.execute(["plan", str(PARAMS / "cache.yaml"), "--only", "04,05,06", *args]) == 1
    err = capsys.readouterr().err
    assert "notebook 05-token-secret" in err and INSTALL in err and "vm-aarch64-utm-cache" in err
    record = _only_record(root)
    m = _manifest(record)
    assert m["status"] == "failed"
    assert [n["status"] for n in m["notebooks"]] == ["completed", "failed", "pending"]
    failed = m["notebooks"][1]
    assert failed["failed_step"] == INSTALL and "injected failure" in failed["error"]
    assert "05-token-secret" in m["failure"]
    nbformat.validate(nbformat.read(record / "05-token-secret.ipynb", as_version=4))
    first_start = m["notebooks"][0]["start"]

    monkeypatch.delenv(FAIL_STEP_ENV)  # the cause is fixed
    # the record by the prefix of its id, as `runbook show` takes it (the time, no deployment)
    prefix = record.name.split("-")[0]
    assert cli.execute(["deploy", str(PARAMS / "cache.yaml"), "--resume", prefix, *args]) == 0
    m = _manifest(record)
    assert m["status"] == "completed" and m["mode"] == "plan"
    assert [n["status"] for n in m["notebooks"]] == ["completed"] * 3
    assert m["notebooks"][0]["start"] == first_start, "completed notebooks are not rerun"
    assert _only_record(root) == record
    assert (record / "run.log").read_text().count("▶ [1/3] 04-bootstrap") == 1


def test_dangerous_step_needs_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """03 in a lab-free deploy: the VM probe cannot connect (closed loopback port): it fails,
    naming the step; with the wipe not confirmed and nothing to probe it would say --yes."""
    from runbook.core.params import load
    from runbook.engine.steps import Context, Step, StepFailed

    ctx = Context(
        "03-bootstrap0",
        load(write_params(tmp_path)),
        Mode.DEPLOY,
        False,
        SecretStore(tmp_path / "s"),
    )
    ran: list[str] = []
    step = Step(
        "wipe", "vm", ["make vm/bootstrap0"], action=lambda: ran.append("x") or "", dangerous=True
    )
    with pytest.raises(StepFailed, match="--yes"):
        ctx.run(step)
    assert ran == []
    ctx.confirm = True
    ctx.run(step)
    assert ran == ["x"]


def test_lab_free_deploy_keeps_every_secret_out_of_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deploy 05: the token secret is really generated (a step that runs here), then the
    install fails on a closed loopback port; the whole record is scanned for the secret."""
    params = write_params(tmp_path, port=9)
    root = tmp_path / "records"
    store = SecretStore(tmp_path / "secrets")
    root_pw = store.put("live-root-password", "Another-Fake-Root-Pw-99").reveal()
    code = cli.execute(
        [
            "deploy",
            str(params),
            "--only",
            "05",
            "--records",
            str(root),
            "--secrets",
            str(store.root),
        ]
    )
    assert code == 1
    record = _only_record(root)
    m = _manifest(record)
    steps = m["notebooks"][0]["steps"]
    assert [s["outcome"] for s in steps] == ["done", "failed"]
    assert m["notebooks"][0]["failed_step"] == INSTALL
    assert "cannot reach" in m["notebooks"][0]["error"]
    token = store.get("attic-token-secret")
    assert token is not None
    secret_values = [
        token.reveal(),
        f"ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64={token.reveal()}",
        root_pw,
    ]
    assert scan(record, secret_values) == []
    out = capsys.readouterr()
    assert token.reveal() not in out.out + out.err


LEAKY_NOTEBOOK = [
    ("markdown", "# 99 · 泄漏测试 — a notebook that tries to leak a secret"),
    (
        "parameters",
        'params = ""\nmode = "plan"\nconfirm = False\nsecrets_dir = ""\nrecord_dir = ""\n',
    ),
    (
        "code",
        "from runbook.engine.steps import open_context\nctx = open_context('99-leak', params, mode, confirm, secrets_dir, record_dir)",
    ),
    (
        "code",
        (
            "value = ctx.store.get('attic-admin-token').reveal()\nprint('printed', value)\n"
            "import logging, sys\nlogging.getLogger('leak').warning('logged %s', value)\n"
            "sys.stderr.write('stderr ' + value + '\\n')\n"
            "from IPython.display import display, HTML\ndisplay(HTML('<b>' + value + '</b>'))\n"
            "display({'text/plain': value}, raw=True)\nvalue"
        ),
    ),
    (
        "code",
        (
            "from runbook.core.secrets import Secret\n"
            "fresh = Secret('-'.join(['Made', 'At', 'Run', 'Time', 'Secret', '77']), 'fresh')\n"
            "print(fresh.reveal())\nraise ValueError('boom ' + value + ' ' + fresh.reveal())"
        ),
    ),
]


def _leaky(dir_: Path) -> None:
    nb = nbformat.v4.new_notebook()
    for kind, src in LEAKY_NOTEBOOK:
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            tags = ["parameters"] if kind == "parameters" else []
            nb.cells.append(nbformat.v4.new_code_cell(src, metadata={"tags": tags}))
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    dir_.mkdir()
    nbformat.write(nb, dir_ / "99-leak.ipynb")


def test_everything_a_kernel_prints_is_masked(tmp_path: Path) -> None:
    """print, logging, stderr, display, results and tracebacks: all masked in the kernel."""
    store = SecretStore(tmp_path / "secrets")
    admin = store.put(
        "attic-admin-token", "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJsZWFrIn0.bGVha3NpZw"
    ).reveal()
    _leaky(tmp_path / "nbs")
    out = io.StringIO()
    req = runner.RunRequest(
        params=PARAMS / "cache.yaml",
        mode=Mode.PLAN,
        records_root=tmp_path / "records",
        secrets_dir=store.root,
        notebooks_dir=tmp_path / "nbs",
        out=out,
    )
    assert runner.run(req) == 1
    record = _only_record(tmp_path / "records")
    text = (record / "99-leak.ipynb").read_text()
    assert "printed *****" in text and "logged *****" in text and "stderr *****" in text
    assert "boom *****" in text
    assert scan(record, [admin, "Made-At-Run-Time-Secret-77"]) == []
    assert admin not in out.getvalue()


def test_sigint_leaves_a_valid_record_marked_interrupted(tmp_path: Path) -> None:
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('params = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "print('started sleeping', flush=True)\nimport time\ntime.sleep(120)"
        ),
        nbformat.v4.new_code_cell("print('never')"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, nbs / "00-sleep.ipynb")
    nbformat.write(nb, nbs / "01-after.ipynb")
    root = tmp_path / "records"
    # A suite started in the background (`make test &`) hands its children SIGINT ignored, and
    # Python then keeps it so: the run under test gets the handler a terminal's Ctrl-C meets.
    script = (
        "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import sys\nfrom pathlib import Path\nfrom runbook.notebook import runner\nfrom runbook.engine.steps import Mode\n"
        f"req = runner.RunRequest(params=Path({str(PARAMS / 'cache.yaml')!r}), mode=Mode.PLAN, "
        f"records_root=Path({str(root)!r}), secrets_dir=Path({str(tmp_path / 's')!r}), notebooks_dir=Path({str(nbs)!r}))\n"
        "sys.exit(runner.run(req))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = list(root.glob("*/run.log"))
        if logs and "started sleeping" in logs[0].read_text():
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the notebook never started")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    record = _only_record(root)
    m = _manifest(record)
    assert m["status"] == "interrupted"
    assert [n["status"] for n in m["notebooks"]] == ["interrupted", "pending"]
    assert not list(record.glob(".*")), "no partial file is left"
    executed = record / "00-sleep.ipynb"
    if executed.exists():  # complete as far as it ran, and valid
        nbformat.validate(nbformat.read(executed, as_version=4))
    assert "interrupted" in err


def test_plan_records_list_and_show_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "records"
    env = dict(os.environ, RUNBOOK_RECORDS=str(root))
    proc = runbook(
        "plan",
        str(PARAMS / "worker.yaml"),
        "--only",
        "07,08",
        "--secrets",
        str(tmp_path / "s"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    record = _only_record(root)
    shown = runbook("show", record.name, "--json", env=env)
    m = json.loads(shown.stdout)
    assert m["deployment"] == "worker" and [n["notebook"] for n in m["notebooks"]] == [
        "07-workers",
        "08-verify",
    ]
    table = runbook("records", env=env)
    assert "worker" in table.stdout and "plan" in table.stdout and "completed" in table.stdout
    text = runbook("show", str(record), env=env).stdout
    assert "07-workers" in text and "completed" in text


def test_plan_reads_a_real_checkout_and_changes_nothing(tmp_path: Path) -> None:
    """00 on the handbook's nixos-config (attic flake and all): the lesson-1 fix is planned
    as a diff, the doctor table is printed, and no file of the checkout changes."""
    import shutil

    config = tmp_path / "nixos-config"
    shutil.copytree(REPO / "tests" / "fixtures" / "nixos-config" / "handbook", config)
    before = {p: p.read_bytes() for p in config.rglob("*") if p.is_file()}
    params = write_params(tmp_path, nixos_config=config)
    out = io.StringIO()
    req = runner.RunRequest(
        params=params,
        notebooks_dir=build_notebooks(tmp_path / "nbs"),
        mode=Mode.PLAN,
        records_root=tmp_path / "records",
        secrets_dir=tmp_path / "s",
        only=("00",),
        out=out,
    )
    assert runner.run(req) == 0, out.getvalue()[-3000:]
    steps = {
        s["step"]: s for s in _manifest(_only_record(tmp_path / "records"))["notebooks"][0]["steps"]
    }
    assert steps["use nixpkgs' attic, not the attic flake (lesson 1)"]["outcome"] == "plan"
    assert steps["check the nixos-config (runbook doctor)"]["outcome"] == "already done"
    text = out.getvalue()
    assert "github:zhaofengli/attic" in text and "attic-flake-input" in text
    assert {p: p.read_bytes() for p in config.rglob("*") if p.is_file()} == before


def test_a_kernel_that_cannot_start_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_dir: Path) -> None:
        raise OSError("No module named ipykernel_launcher")

    monkeypatch.setattr(kernel_thread, "kernel_manager", broken)
    root = tmp_path / "records"
    assert cli.execute(["plan", str(PARAMS / "cache.yaml"), "--records", str(root)]) == 1
    err = capsys.readouterr().err
    assert "cannot start the notebook kernel" in err and "Traceback" not in err
    assert _manifest(_only_record(root))["status"] == "failed"
