"""Faults of issue 13 on the real thing: a frozen sshd, stalled transfers, a changed host key,
SIGTERM, a closed output pipe, a full records disk and two runs at once.

A frozen host is an sshd session stopped with SIGSTOP: the kernel still ACKs its TCP, so
nothing but an unanswered keepalive can tell it is gone (the same as a cut link).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.core.errors import CommandStalledError, ConnectionLostError, HostKeyChangedError
from runbook.core.models import Deadlines, Host
from runbook.core.params import load
from runbook.core.secrets import SecretStore
from runbook.engine.steps import Context, Mode, Step, StepFailed
from runbook.transport.remote import Connection
from tests.conftest import FISH_USER, Sshd, fish_host_on
from tests.run_rig import REPO

FAST: Deadlines = Deadlines(connect=5, command=60, stall=1.0, keepalive=0.5, keepalive_count=3)
SLACK = 2.0  # seconds past a bound a test accepts (thread wake-ups, a loaded machine)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


@contextlib.contextmanager
def frozen_sessions(sshd: Sshd, after: float) -> Iterator[list[int]]:
    """After `after` seconds, SIGSTOP every session the test's sshd forked (not the
    listener); at the end, SIGCONT and SIGKILL them."""
    assert sshd.proc is not None
    stopped: list[int] = []

    def freeze() -> None:
        time.sleep(after)
        for pid in _descendants(sshd.proc.pid):  # type: ignore[union-attr]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

    t = threading.Thread(target=freeze)
    t.start()
    try:
        yield stopped
    finally:
        t.join()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def _host(sshd: Sshd, tmp_path: Path, deadlines: Deadlines = FAST) -> Host:
    return fish_host_on(sshd, tmp_path, deadlines)


# -- 1. a dead link ends every remote command within its bound ----------------------------


@pytest.mark.parametrize("deadlines", [FAST, Deadlines()], ids=["fast", "defaults"])
def test_a_frozen_host_ends_the_command_within_the_keepalive_bound(
    sshd: Sshd, tmp_path: Path, deadlines: Deadlines
) -> None:
    host = _host(sshd, tmp_path, deadlines)
    with Connection(host) as c:
        c.run("true")
        t0 = time.monotonic()
        with (
            frozen_sessions(sshd, after=0.5) as stopped,
            pytest.raises(ConnectionLostError) as info,
        ):
            c.run("echo started; sleep 300; echo never")
        took = time.monotonic() - t0
    assert stopped, "no sshd session was frozen"
    print(
        f"frozen host, keepalive {deadlines.keepalive:g} s x {deadlines.keepalive_count}: {took:.1f} s"
    )
    assert took < 0.5 + deadlines.dead_after + SLACK
    text = str(info.value)
    assert text.startswith(f"connection to {host.label} lost during `echo started")
    assert f"no reply to {deadlines.keepalive_count} keepalives" in text
    assert "exit None" not in text


def test_a_host_frozen_during_a_put_ends_within_the_bound(sshd: Sshd, tmp_path: Path) -> None:
    """A send blocked on a full TCP window ends too: the watcher closes the transport."""
    target = tmp_path / "big"  # 0700 tmp dir: the put (as root through sudo) still writes it
    with Connection(_host(sshd, tmp_path)) as c:
        c.run("true")
        t0 = time.monotonic()
        # the keepalives lose the peer, or (on a busy machine, first) the put stops moving:
        # either way it ends within the bound and says which put
        lost = (ConnectionLostError, CommandStalledError)
        with frozen_sessions(sshd, after=0.3), pytest.raises(lost) as info:
            c.put(str(target), os.urandom(64 * 1024 * 1024), mode=0o600)
        took = time.monotonic() - t0
    print(f"frozen host during a 64 MiB put: {took:.1f} s")
    assert took < 0.3 + FAST.dead_after + SLACK
    said = str(info.value)
    assert "`put " in said and ("keepalives" in said or "stalled: no byte sent" in said)


def test_a_transfer_is_judged_by_progress_not_wall_time(sshd: Sshd, tmp_path: Path) -> None:
    with Connection(_host(sshd, tmp_path, Deadlines(stall=1.0, command=1.0))) as c:
        # moving a byte every 0.3 s for 3 s: longer than `command`, never stalled
        r = c.run("for i in $(seq 10); do echo $i; sleep 0.3; done", transfer=True)
        assert r.stdout.split()[-1] == "10"
        t0 = time.monotonic()
        with pytest.raises(CommandStalledError, match=r"stalled: no byte sent or received for 1 s"):
            c.run("echo one; sleep 30", transfer=True)
        took = time.monotonic() - t0
        print(f"stalled transfer (stall 1 s): {took:.1f} s")
        assert took < 1.0 + SLACK
        assert c.run("echo usable").stdout == "usable\n"


def _params(tmp_path: Path, sshd: Sshd, timeouts: str) -> Path:
    config = tmp_path / "nixos-config"
    config.mkdir()
    (config / "flake.nix").touch()
    path = tmp_path / "rel.yaml"
    path.write_text(
        f"""deployment: rel
nixos_config: {config}
user: {FISH_USER}
identity: {sshd.user_key}
known_hosts: {tmp_path / "known_hosts"}
vms:
  - name: vm-rel-cache
    role: cache
    address: 127.0.0.1
    port: {sshd.port}
cache:
  vm: vm-rel-cache
  host: 127.0.0.1
timeouts:
{timeouts}
"""
    )
    return path


def test_a_step_on_a_frozen_host_fails_naming_step_host_and_what_stalled(
    sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The params' `timeouts:` reach every connection a step opens; the failure says
    `connection to HOST lost during ...`, never `exit None`."""
    params = _params(tmp_path, sshd, "  keepalive: 0.5\n  keepalive_count: 2\n")
    ctx = Context("06-cache", load(params), Mode.DEPLOY, False, SecretStore(tmp_path / "s"))
    vm = ctx.dep.cache_vm
    ctx.connection(vm).run("true")
    step = Step(
        "push the store",
        vm.name,
        ["attic push ..."],
        action=lambda: ctx.connection(vm).run("sleep 300").stdout,
    )
    t0 = time.monotonic()
    with frozen_sessions(sshd, after=0.3), pytest.raises(StepFailed) as info:
        ctx.run(step)
    took = time.monotonic() - t0
    ctx.close()
    assert took < 0.3 + 0.5 * 3 + SLACK
    record = ctx.records[-1]
    assert record["outcome"] == "failed" and record["step"] == "push the store"
    assert record["reason"].startswith(f"connection to {FISH_USER}@127.0.0.1:{sshd.port} lost")
    assert "no reply to 2 keepalives" in record["reason"] and "exit None" not in record["reason"]
    assert "step 'push the store'" in str(info.value)


def test_bad_timeouts_are_refused_in_one_line(sshd: Sshd, tmp_path: Path) -> None:
    from runbook.core.errors import InputError

    with pytest.raises(InputError) as info:
        load(_params(tmp_path, sshd, "  keepalive: 0\n"))
    assert "timeouts.keepalive" in str(info.value) and "\n" not in str(info.value)


# -- 7. the changed-host-key hint is a command that works --------------------------------


def test_the_changed_host_key_hint_is_a_command_that_works(sshd: Sshd, tmp_path: Path) -> None:
    host = _host(sshd, tmp_path)
    with Connection(host) as c:
        c.run("true")
    sshd.stop()
    sshd.new_host_key()
    sshd.start()
    with pytest.raises(HostKeyChangedError) as info, Connection(host) as c:
        c.run("true")
    found = re.search(r"`(runbook exec [^`]+)`", str(info.value))
    assert found, str(info.value)
    argv = found.group(1).split()
    assert "--replace-host-key" in argv and argv[-2:] == ["--", "true"]
    proc = subprocess.run(
        [sys.executable, "-c", "from runbook.cli import main; main()", *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with Connection(host) as c:  # the new key is the known one now
        assert c.run("echo ok").stdout == "ok\n"


# -- 2, 3. records that tell the truth, one run at a time ---------------------------------

FAULT_CELL = r"""
import os, signal, subprocess, sys, time
from pathlib import Path
fault = os.environ.get("RB_FAULT", "")
marks = Path(os.environ["RB_MARKS"])
(marks / "kernel.pid").write_text(str(os.getpid()))

def long_step():
    if fault == "stubborn":  # a cell that ignores SIGINT, with a child in its process group
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "300"])
        (marks / "child.pid").write_text(str(child.pid))
    if fault == "fill":  # another writer fills the records disk, then the step prints
        with open(marks.parent / "records" / "filler", "wb") as fh:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        fh.write(b"x" * size)
                        fh.flush()
                except OSError:
                    pass
        for i in range(200):
            print(f"line {i} of a step that goes on after the disk filled", flush=True)
    if fault:
        print("started sleeping", flush=True)
        (marks / "started").write_text("yes")
        time.sleep(300)
    return "quick"

ctx.run(Step("long step", "localhost", ["sleep 300"], action=long_step))
"""


def _fault_notebooks(dir_: Path, names: tuple[str, ...] = ("00-fault", "01-after")) -> Path:
    import nbformat

    dir_.mkdir(exist_ok=True)
    for name in names:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nb.cells = [
            nbformat.v4.new_code_cell(
                'params = ""\nmode = "plan"\nconfirm = False\nforce_checks = False\n'
                'secrets_dir = ""\nrecord_dir = ""',
                metadata={"tags": ["parameters"]},
            ),
            nbformat.v4.new_code_cell(
                "from runbook.engine.steps import Step, open_context\n"
                f"ctx = open_context({name!r}, params, mode, confirm, secrets_dir, record_dir)"
            ),
            nbformat.v4.new_code_cell(
                "ctx.run(Step('quick step', 'localhost', ['true'], action=lambda: 'quick'))"
            ),
            nbformat.v4.new_code_cell(FAULT_CELL if name == names[0] else "print('after')"),
            nbformat.v4.new_code_cell("ctx.summary()"),
        ]
        nbformat.write(nb, dir_ / f"{name}.ipynb")
    return dir_


def _cli_script(nbs: Path) -> str:
    """`runbook ...` through the real CLI, with the runner's notebooks taken from `nbs`."""
    return (
        "import contextlib, sys\nfrom pathlib import Path\nfrom runbook import cli\n"
        "from runbook.commands import deploy\n"
        f"deploy.built_notebooks = lambda: contextlib.nullcontext(Path({str(nbs)!r}))\n"
        "sys.exit(cli.execute(sys.argv[1:]))\n"
    )


class Rig:
    """A deployment with fault notebooks and a records root under `tmp`."""

    def __init__(self, tmp: Path) -> None:
        from tests.run_rig import write_params

        self.tmp = tmp
        self.params = write_params(tmp)
        self.root = tmp / "records"
        self.marks = tmp / "marks"
        self.marks.mkdir()
        self.nbs = _fault_notebooks(tmp / "nbs")

    def env(self, fault: str = "") -> dict[str, str]:
        return dict(os.environ, RB_FAULT=fault, RB_MARKS=str(self.marks))

    def argv(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            _cli_script(self.nbs),
            "deploy",
            str(self.params),
            "--records",
            str(self.root),
            "--secrets",
            str(self.tmp / "secrets"),
            *extra,
        ]

    def start(self, fault: str, *extra: str) -> subprocess.Popen[str]:
        (self.marks / "started").unlink(missing_ok=True)
        proc = subprocess.Popen(
            self.argv(*extra),
            cwd=REPO,
            env=self.env(fault),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a signal the test sends reaches the runner alone
        )
        deadline = time.monotonic() + 90
        while not (self.marks / "started").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"the fault never started: {out[-2000:]} {err[-2000:]}")
            time.sleep(0.1)
        return proc

    def run(self, fault: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*extra),
            cwd=REPO,
            env=self.env(fault),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def records(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def manifest(self, record: Path) -> dict:
        import json

        return json.loads((record / "manifest.json").read_text())

    def pid(self, name: str) -> int:
        return int((self.marks / name).read_text())


def _gone(pid: int, within: float = 10.0) -> bool:
    from runbook.notebook.kernel_thread import _alive

    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _check_record_parses(record: Path) -> None:
    import nbformat

    for nb in record.glob("*.ipynb"):
        nbformat.validate(nbformat.read(nb, as_version=4))
    assert not [p.name for p in record.iterdir() if p.name.startswith(".")], "stray files"


@pytest.mark.parametrize("fault", ["sleep", "stubborn"])
def test_sigterm_stops_the_kernel_first_then_records_what_ran(tmp_path: Path, fault: str) -> None:
    rig = Rig(tmp_path)
    proc = rig.start(fault)
    kernel = rig.pid("kernel.pid")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    print(f"SIGTERM ({fault} cell): ended in {took:.1f} s")
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert took < 5.0 + 15.0  # TERM_GRACE, then the kill and papermill letting go
    assert _gone(kernel, 2), "the kernel outlived the run"
    if fault == "stubborn":
        assert _gone(rig.pid("child.pid"), 2), "the cell's child outlived the run"
    (record,) = rig.records()
    m = rig.manifest(record)
    assert m["status"] == "terminated" and m["ended"] and m["duration"] is not None
    first, after = m["notebooks"]
    assert first["status"] == "terminated" and first["end"]
    assert first["failed_step"] == "long step" and "SIGTERM" in first["error"]
    assert [s["step"] for s in first["steps"]][:1] == ["quick step"]
    assert first["steps"][0]["outcome"] == "done"
    assert after["status"] == "pending"
    assert "terminated by SIGTERM" in m["failure"] and "\n" not in m["failure"]
    assert "Traceback" not in err
    _check_record_parses(record)
    assert (record / "run.log").read_text().endswith("(terminated)\n")


def test_a_closed_output_pipe_ends_quietly_and_truthfully(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    import shlex

    script = shlex.join(rig.argv())
    proc = subprocess.run(
        ["bash", "-c", f"{script} | head -1; echo rc=${{PIPESTATUS[0]}} >&2"],
        cwd=REPO,
        env=rig.env(""),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout.startswith("record ") and proc.stdout.count("\n") == 1
    assert proc.stderr.strip().splitlines() == ["rc=141"], proc.stderr
    (record,) = rig.records()
    m = rig.manifest(record)
    assert m["status"] == "interrupted" and m["ended"]
    assert "the output pipe closed" in m["failure"]
    assert all(nb["status"] in ("interrupted", "completed", "pending") for nb in m["notebooks"])
    _check_record_parses(record)


def test_one_run_per_deployment_and_a_running_record_is_not_resumed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    first = rig.start("sleep")
    try:
        (record,) = rig.records()
        second = rig.run("")
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip()
        assert line.count("\n") == 0 and "Traceback" not in line
        assert f"pid {first.pid}" in line and "already running" in line and record.name in line
        assert rig.records() == [record], "the refused run made no record"
        again = rig.run("", "--resume", record.name)
        assert again.returncode == 2
        assert f"still running (pid {first.pid}" in again.stderr
        assert rig.manifest(record)["status"] == "running"
    finally:
        kernel = rig.pid("kernel.pid")
        first.kill()  # SIGKILL: no handler runs, the lock is left naming a dead pid
        first.communicate(timeout=30)
    assert _gone(kernel, 10), "ipykernel's parent poller ends an orphaned kernel"
    resumed = rig.run("", "--resume", record.name)
    assert resumed.returncode == 0, resumed.stderr
    said = f"(pid {first.pid}, record {record.name}) died without releasing"
    assert said in resumed.stderr and said in (record / "run.log").read_text()
    m = rig.manifest(record)
    assert m["status"] == "completed" and [n["status"] for n in m["notebooks"]] == ["completed"] * 2
    _check_record_parses(record)


def test_a_full_records_disk_says_so_and_resume_regenerates(tmp_path: Path) -> None:
    """The records root is a 3 MiB tmpfs in a private mount namespace (nothing leaks out);
    a step fills it, then prints: the run stops, the kernel first, and the record says so."""
    from tests.conftest import need

    need(os.geteuid() == 0, "needs root to mount a tmpfs in a private mount namespace")
    import shutil

    need(shutil.which("unshare") is not None, "needs util-linux unshare")
    rig = Rig(tmp_path)
    rig.root.mkdir()
    out = tmp_path / "copied"
    driver = tmp_path / "driver.py"
    driver.write_text(
        f"""import json, shutil, subprocess, sys, time
from pathlib import Path
root, out = Path({str(rig.root)!r}), Path({str(out)!r})
argv = {rig.argv()!r}
env = {rig.env("fill")!r}
t0 = time.monotonic()
full = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
took = time.monotonic() - t0
shutil.copytree(root, out / "full")
(root / "filler").unlink()
record = next(p for p in root.iterdir() if p.is_dir())
env["RB_FAULT"] = ""
resumed = subprocess.run(argv + ["--resume", record.name], env=env, capture_output=True,
                         text=True, timeout=120)
shutil.copytree(root, out / "resumed")
(out / "result.json").write_text(json.dumps({{"full": [full.returncode, full.stderr],
    "resumed": [resumed.returncode, resumed.stderr], "took": took}}))
"""
    )
    subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t tmpfs -o size=3m tmpfs "{rig.root}" && exec "{sys.executable}" "{driver}"',
        ],
        cwd=REPO,
        check=True,
        timeout=300,
    )
    import json

    assert not list(rig.root.iterdir()), "the tmpfs stayed inside its namespace"
    result = json.loads((out / "result.json").read_text())
    code, err = result["full"]
    print(f"records disk full: ended in {result['took']:.1f} s")
    assert code == 1, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "records disk full" in lines[0] and "Traceback" not in err
    (record,) = [p for p in (out / "full").iterdir() if p.is_dir()]
    m = json.loads((record / "manifest.json").read_text())
    assert m["status"] == "failed" and m["ended"]
    assert "records disk full" in m["failure"] and "\n" not in m["failure"]
    first = m["notebooks"][0]
    assert first["status"] == "failed" and first["failed_step"] == "long step"
    assert first["steps"][0]["step"] == "quick step" and first["steps"][0]["outcome"] == "done"
    assert not [p.name for p in record.iterdir() if p.name.endswith(".tmp")]
    assert (record / "run.log").read_text().endswith("\n"), "run.log cut mid-line"
    code, err = result["resumed"]
    assert code == 0, err
    (record,) = [p for p in (out / "resumed").iterdir() if p.is_dir()]
    m = json.loads((record / "manifest.json").read_text())
    assert m["status"] == "completed"
    assert [n["status"] for n in m["notebooks"]] == ["completed", "completed"]
    for name in ("00-fault", "01-after"):
        assert (record / f"{name}.ipynb").is_file() and (record / f"{name}.html").is_file()
    _check_record_parses(record)


def test_plan_writes_nothing_outside_the_records_root(tmp_path: Path) -> None:
    """A plan with HOME pointed at an empty dir: IPython's and Jupyter's dirs stay in the
    kernel's temp dir, which is gone at the end."""
    from tests.run_rig import PARAMS, runbook

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "JUPYTER", "IPYTHON"))}
    env["HOME"] = str(home)
    tmp = tmp_path / "tmp"  # its own temp dir: other runs on the machine make their own
    tmp.mkdir()
    env["TMPDIR"] = str(tmp)
    proc = runbook(
        "plan",
        str(PARAMS / "cache.yaml"),
        "--only",
        "05",
        "--records",
        str(tmp_path / "r"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []
    assert [str(p.relative_to(tmp)) for p in tmp.rglob("*")] == []  # the kernel's dirs removed


def test_a_step_past_timeouts_step_is_stopped_and_named(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    with open(rig.params, "a") as fh:
        fh.write("timeouts:\n  step: 2\n")
    t0 = time.monotonic()
    proc = rig.run("sleep")
    took = time.monotonic() - t0
    print(f"timeouts.step 2 s: the run ended in {took:.1f} s")
    assert proc.returncode == 1, proc.stderr
    (record,) = rig.records()
    m = rig.manifest(record)
    first = m["notebooks"][0]
    assert m["status"] == "failed" and first["status"] == "failed"
    assert first["failed_step"] == "long step"
    assert (
        "step 'long step' on localhost passed its deadline of 2 s (timeouts.step)"
        in (first["error"])
    )
    assert _gone(rig.pid("kernel.pid"), 2)
    _check_record_parses(record)


def test_a_crash_in_the_runner_still_ends_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runbook import cli
    from runbook.commands import deploy
    from runbook.notebook import runner

    rig = Rig(tmp_path)
    monkeypatch.setenv("RB_MARKS", str(rig.marks))
    monkeypatch.setenv("RB_FAULT", "")
    monkeypatch.setattr(deploy, "built_notebooks", lambda: contextlib.nullcontext(rig.nbs))

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("a bug in finish")

    monkeypatch.setattr(runner, "finish", broken)
    argv = ["deploy", str(rig.params), "--records", str(rig.root), "--secrets", str(tmp_path / "s")]
    assert cli.execute(argv) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a bug in finish" in err and "Traceback" not in err
    (record,) = rig.records()
    m = rig.manifest(record)
    assert m["status"] == "failed" and m["ended"] and "a bug in finish" in m["failure"]
    assert _gone(rig.pid("kernel.pid"), 5), "the kernel is stopped before the record ends"


# -- 7. the lab's registry holds no password --------------------------------------------


def test_the_lab_registry_holds_no_password_and_is_private(tmp_path: Path) -> None:
    """`lab.json` keeps what `down`, `status` and the UTM stand-ins read, not the passwords
    (they are in passwords/USER, 0600); it is 0600 all the same."""
    from runbook.lab import lifecycle
    from runbook.lab.config import from_mapping

    passwords = {"root": "Reg-root-pw-7781", "jqwang": "Reg-user-pw-8892"}
    lab = from_mapping(
        {"state_dir": str(tmp_path / "state"), "passwords": passwords, "hosts": [{"name": "rr-a"}]}
    )
    path = lifecycle.write_registry(lab, 4555)
    assert path == lab.state_dir / "lab.json"
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert [pw for pw in passwords.values() if pw in text] == []
    assert lifecycle._registered(lab.state_dir) == lab.model_copy(update={"passwords": {}})
    assert lifecycle._registered_serial_port(lab.state_dir) == 4555


# -- 7. a plan touches neither the Nix store nor HOME ------------------------------------


def test_plan_leaves_the_nix_database_store_and_home_as_they_were(tmp_path: Path) -> None:
    """A plan of a deployment whose checkout is the lab's real flake (so 00's build, the
    doctor's nix-instantiate and every notebook could reach Nix): the Nix database, the store
    and its roots, and an empty HOME are unchanged after it. (Before, 00's probe ran `nix
    eval`, which copies the checkout into /nix/store and writes the .drv files, and the
    doctor's `nix-instantiate --parse` opened the database.)"""
    import shutil

    from runbook.lab.environment import LOCAL_NIX_CONFIG
    from tests.conftest import need
    from tests.fault_scenarios import NixSnapshot, clean_env, tree_listing
    from tests.run_rig import runbook

    need(shutil.which("nix") is not None, "needs nix (Debian's nix-bin)")
    need(Path("/nix/var/nix/db/db.sqlite").is_file(), "needs Nix's database (nix ran once)")
    config = tmp_path / "nixos-config"
    shutil.copytree(REPO / "runbook" / "lab" / "nixos-config", config)
    with open(config / "flake.nix", "a") as fh:  # a checkout the store has never seen
        fh.write(f"# {tmp_path.name} {time.time_ns()}\n")
    key = tmp_path / "id_ed25519"
    key.touch(mode=0o600)
    nix_conf = "".join(f"  {line}\n" for line in LOCAL_NIX_CONFIG.splitlines())
    params = tmp_path / "plan.yaml"
    params.write_text(
        f"deployment: plantest\nnixos_config: {config}\nidentity: {key}\n"
        f"known_hosts: {tmp_path / 'known_hosts'}\n"
        "vms:\n  - {name: vm-aarch64-utm-cache, role: cache, address: 127.0.0.1}\n"
        "  - {name: vm-aarch64-utm, role: worker, address: 127.0.0.2}\n"
        "cache: {vm: vm-aarch64-utm-cache, host: 127.0.0.1}\n"
        f"local_nix_config: |\n{nix_conf}"
    )
    home = tmp_path / "home"
    home.mkdir()
    before = NixSnapshot.take()
    proc = runbook("plan", str(params), "--records", str(tmp_path / "r"), env=clean_env(home))
    after = NixSnapshot.take()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert before.changes(after) == []
    assert tree_listing(home) == []
    builds = [ln for ln in proc.stdout.splitlines() if "locally first (lesson 3)" in ln]
    assert builds and all("a plan evaluates nothing" in ln for ln in builds if "[" in ln)
    assert not list(tmp_path.glob("*.lock")) and not (config / "result").exists()
