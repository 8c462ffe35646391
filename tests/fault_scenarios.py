"""What the reliability tests and bench/reliability.py share: snapshots of what a plan must not
touch, the lab's fault scenarios, the secret sweep and the hostile-params corpus run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

NIX_STATE: Final = Path("/nix/var/nix")
NIX_STORE: Final = Path("/nix/store")


# -- what a plan must leave as it was --------------------------------------------------------


@dataclass(frozen=True)
class NixSnapshot:
    """The machine's Nix store and database as a plan could change them: db.sqlite's mtime and
    size, what its directory holds (a -wal or -shm left behind, or made and removed: the
    directory's mtime), the registered paths (count, newest id), the store's and the GC
    roots' and temp roots' entries."""

    db: tuple[int, int]
    db_dir: tuple[int, tuple[str, ...]]
    valid_paths: tuple[int, int]
    store: tuple[int, int, str]
    roots: tuple[str, ...]

    @classmethod
    def take(cls) -> NixSnapshot:
        db_dir = NIX_STATE / "db"
        db = db_dir / "db.sqlite"
        st = db.stat()
        # immutable=1: read the file as it is, no lock, no -wal/-shm made (a read that
        # changed the database would spoil the snapshot)
        con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        try:
            count, top = con.execute("SELECT count(*), max(id) FROM ValidPaths").fetchone()
        finally:
            con.close()
        names = sorted(os.listdir(NIX_STORE))
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
        roots = tuple(
            sorted(
                str(p.relative_to(NIX_STATE))
                for d in ("gcroots", "temproots", "profiles")
                if (NIX_STATE / d).is_dir()
                for p in (NIX_STATE / d).rglob("*")
            )
        )
        return cls(
            db=(st.st_mtime_ns, st.st_size),
            db_dir=(db_dir.stat().st_mtime_ns, tuple(sorted(os.listdir(db_dir)))),
            valid_paths=(int(count), int(top or 0)),
            store=(NIX_STORE.stat().st_mtime_ns, len(names), digest),
            roots=roots,
        )

    def changes(self, other: NixSnapshot) -> list[str]:
        """What differs from `other`, named (empty when nothing did)."""
        return [
            f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}"[:300]
            for name in ("db", "db_dir", "valid_paths", "store", "roots")
            if getattr(self, name) != getattr(other, name)
        ]


def tree_listing(root: Path) -> list[str]:
    """Every path under `root`, relative (a HOME that must stay empty)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def clean_env(home: Path) -> dict[str, str]:
    """The environment with HOME at `home` and no XDG/Jupyter/IPython directories of its own,
    so anything written to a user's dotfiles lands in `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "JUPYTER", "IPYTHON"))}
    env["HOME"] = str(home)
    return env


# -- argv on a lab host --------------------------------------------------------------------


class ArgvSampler:
    """Samples the argv of every process on a lab host while a deploy runs: the host's own
    `ps -eo args` (through nsenter) and, much faster, `/proc/PID/cmdline` of each process in
    the host's PID namespace, read from here. Distinct lines are kept, to be searched later
    (the secrets are not known before the deploy makes them)."""

    def __init__(self, host: str) -> None:
        from runbook.lab import exec_in
        from runbook.lab.host import init_pid

        pid = init_pid(host)
        assert pid is not None, f"lab host {host} is not running"
        self.host, self._exec_in = host, exec_in
        self.ns = os.readlink(f"/proc/{pid}/ns/pid")
        self.lines: set[str] = set()
        self.ps_samples = self.proc_samples = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._ps, daemon=True),
            threading.Thread(target=self._proc, daemon=True),
        ]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _ps(self) -> None:
        while not self._stop.is_set():
            r = self._exec_in(self.host, ["ps", "-eo", "args"])
            self.lines.update(r.stdout.splitlines())
            self.ps_samples += 1

    def _proc(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    if os.readlink(f"/proc/{entry.name}/ns/pid") != self.ns:
                        continue
                    raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                except OSError:
                    continue
                self.lines.add(raw.replace(b"\0", b" ").decode(errors="replace"))
            self.proc_samples += 1


# -- the lab the fault scenarios break ------------------------------------------------------

STATE: Final = Path("/var/lib/runbook-lab-faults")
SUBNET, BRIDGE = "10.231.30.0/24", "rblabr"
# host names of their own (a lab host is the network namespace rblab-NAME): another lab's
# `lab down` removes its hosts by name, and the other lab tests' hosts are nixos-utm-*
CACHE_HOST, WORKER_HOST = "rbf-cache", "rbf-worker1"
CACHE_VM, WORKER_VM = "vm-aarch64-utm-cache", "vm-aarch64-utm"
PASSWORDS: Final = {"root": "Fz8-live-iso-q4w", "jqwang": "jqwang-faults-lab"}
# a dead peer is noticed within keepalive * (keepalive_count + 1) = 4 s (models.Deadlines)
TIMEOUTS: Final = {"connect": 5, "keepalive": 1, "keepalive_count": 3}
DEPLOY_TIMEOUT: Final = 300.0  # no run of a scenario may take longer than this
LINE_WAIT: Final = 120.0  # for a deploy to reach the step a fault is injected at
# `attic push ...` on a host: the client itself (its path, or the lab stand-in's module),
# never a program that only names attic (atticd-atticadm, runbook.lab.attic.adm)
PUSH_RE: Final = re.compile(r"(^|/|\s)attic push\b|attic\.client push\b")
REBUILD_RE: Final = re.compile(r"nixos-rebuild .*switch")


def api(path: str) -> str:
    return f"http://{SUBNET.rsplit('.', 1)[0]}.11:8080/{path}"


class Run:
    """One `runbook deploy` child process, its merged output read line by line as it comes,
    so a fault can be injected when the run reaches a chosen step."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv, self.log = argv, log
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.injected: float | None = None  # when the fault went in
        self.samplers: list[ArgvSampler] = []  # argv sampled on the lab hosts during it
        self.ended: float | None = None
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        self.proc.wait()
        with self._changed:
            self.ended = time.monotonic()
            self._changed.notify_all()

    def wait_line(self, needle: str, timeout: float = LINE_WAIT) -> bool:
        """Until a line holding `needle` is printed; False if the run ends or time runs out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(needle in ln for ln in self.lines):
                left = deadline - time.monotonic()
                if self.ended is not None or left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def wait_process(self, host: str, pattern: re.Pattern[str], timeout: float = LINE_WAIT) -> bool:
        """Until a process whose argv matches `pattern` runs on lab host `host` (the step's
        own command, mid-step); False if the run ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.ended is None:
            if host_processes(host, pattern):
                return True
            time.sleep(0.005)
        return False

    def inject(self, fault: Callable[[], None]) -> None:
        self.injected = time.monotonic()
        fault()

    def finish(self, timeout: float = DEPLOY_TIMEOUT) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=30)
        self.log.write_text("\n".join(self.lines) + "\n")
        return self.proc.returncode

    @property
    def rc(self) -> int | None:
        return self.proc.returncode

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    @property
    def since_injection(self) -> float | None:
        if self.injected is None or self.ended is None:
            return None
        return self.ended - self.injected

    @property
    def record(self) -> Path | None:
        """The record the run names in its first line (`record PATH · deploy · ...`)."""
        for line in self.lines:
            if line.startswith("record ") and " · " in line:
                return Path(line[len("record ") :].split(" · ", 1)[0])
        return None


def host_processes(host: str, pattern: re.Pattern[str]) -> list[int]:
    """The PIDs (as this machine numbers them) of lab host `host`'s processes whose argv
    matches `pattern`."""
    from runbook.lab.host import pids_in_netns

    found = []
    for pid in pids_in_netns(host):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern.search(argv):
            found.append(pid)
    return found


def kill_on_host(host: str, pattern: re.Pattern[str]) -> list[int]:
    """SIGKILL each process of `host` whose argv matches (by PID: the lab's own processes)."""
    pids = host_processes(host, pattern)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def on_host(host: str, script: str) -> str:
    """`script` as root inside lab host `host` (its own PATH: systemctl is the stand-in)."""
    from runbook.lab import exec_in

    r = exec_in(host, ["bash", "-c", script])
    if r.exit_code != 0:
        raise RuntimeError(f"on {host}: {script}: exit {r.exit_code}: {r.stderr.strip()[-300:]}")
    return str(r.stdout)


@dataclass
class FaultLab:
    """A cache VM and one worker, deployed once by `up`; every scenario breaks it and leaves
    it deployed again (its fault lifted, the record resumed)."""

    tmp: Path
    lab_file: Path
    params: Path  # the lab's params, with TIMEOUTS
    secrets: Path
    records: Path
    logs: Path
    sample_argv: bool = False  # sample every host's argv during each run (bench)
    samplers: list[ArgvSampler] = field(default_factory=list)

    @classmethod
    def create(cls, tmp: Path, *, sample_argv: bool = False) -> FaultLab:
        import yaml

        from runbook import lab
        from runbook.lab import deployment

        tmp.mkdir(parents=True, exist_ok=True)
        data = deployment.deployment(
            state_dir=STATE, subnet=SUBNET, bridge=BRIDGE, workers=1, passwords=PASSWORDS,
            name="faults",
        )  # fmt: skip
        for spec, name in zip(data["lab"]["hosts"], (CACHE_HOST, WORKER_HOST), strict=True):
            spec["name"] = name
        lab_file = tmp / "lab.yaml"
        lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
        lab.down(lab_file)
        lab.up(lab_file, secrets_dir=tmp / "secrets")
        data = yaml.safe_load(lab.params_path(lab_file).read_text())
        data["timeouts"] = dict(TIMEOUTS)
        params = tmp / "faults.yaml"
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        (tmp / "logs").mkdir(exist_ok=True)
        return cls(
            tmp, lab_file, params, tmp / "secrets", tmp / "records", tmp / "logs", sample_argv
        )

    def down(self) -> None:
        from runbook import lab

        lab.down(self.lab_file)

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "runbook", "deploy", str(self.params), "--yes",
                "--secrets", str(self.secrets), "--records", str(self.records), *extra]  # fmt: skip

    def start(self, *extra: str) -> Run:
        log = self.logs / f"deploy-{time.time_ns()}.log"
        samplers = []
        if self.sample_argv:
            samplers = [ArgvSampler(host).__enter__() for host in (CACHE_HOST, WORKER_HOST)]
            self.samplers += samplers
        run = Run(self.argv(*extra), log)
        run.samplers = samplers
        return run

    def finish(self, run: Run, timeout: float = DEPLOY_TIMEOUT) -> int:
        code = run.finish(timeout)
        for sampler in run.samplers:
            sampler.__exit__()
        return code

    def deploy(self, *extra: str) -> Run:
        run = self.start(*extra)
        self.finish(run)
        return run

    def new_store_path(self) -> str:
        """A path only the cache VM's store has: 06's push has something to send."""
        return on_host(
            CACHE_HOST, f"echo {time.time_ns()} > /tmp/fault && nix-store --add /tmp/fault"
        ).strip()

    def live_key(self) -> str:
        with urllib.request.urlopen(api("_api/v1/cache-config/main"), timeout=10) as resp:
            return str(json.loads(resp.read())["public_key"])

    def regenerate_cache_key(self) -> None:
        """What `attic cache configure main --regenerate-keypair` sends."""
        token = (self.secrets / "attic-admin-token").read_text().strip()
        request = urllib.request.Request(
            api("_api/v1/cache-config/main"),
            data=json.dumps({"keypair": "Generate"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="PATCH",
        )
        urllib.request.urlopen(request, timeout=10).close()

    def edit_config(self) -> None:
        """A change in the nixos-config checkout (a comment), so 09 updates every VM."""
        from runbook.core.params import load_params

        vm_shared = load_params(self.params).nixos_config / "machines" / "vm-shared.nix"
        with open(vm_shared, "a") as fh:
            fh.write(f"# edited {time.time_ns()}\n")


# -- what a record must say after a fault, and after its resume ----------------------------


def manifest_of(record: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((record / "manifest.json").read_text())
    return data


def parse_problems(record: Path) -> list[str]:
    """Every notebook and the manifest parse; no stray temp or dot file is left; each
    notebook the manifest says completed has its notebook and HTML; run.log ends in a
    whole line."""
    import nbformat

    problems = []
    try:
        m = manifest_of(record)
    except (OSError, ValueError) as exc:
        return [f"{record.name}/manifest.json does not parse: {exc}"]
    for nb in sorted(record.glob("*.ipynb")):
        try:
            nbformat.validate(nbformat.read(nb, as_version=4))
        except Exception as exc:  # noqa: BLE001 - any way it fails to parse is the finding
            problems.append(f"{nb.name} does not parse: {str(exc)[:200]}")
    stray = [p.name for p in record.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    if stray:
        problems.append(f"stray files: {stray}")
    for entry in m["notebooks"]:
        if entry["status"] == "completed":
            for suffix in (".ipynb", ".html"):
                if not (record / f"{entry['notebook']}{suffix}").is_file():
                    problems.append(f"{entry['notebook']}{suffix} is missing (lost)")
    log = (record / "run.log").read_text()
    if not log.endswith("\n"):
        problems.append("run.log ends mid-line")
    return problems


@dataclass(frozen=True)
class Expected:
    """What the record of a faulted run must say: its status, the notebook and step that
    did not finish, and words of why (any one of `why`)."""

    status: str
    notebook: str
    step: str
    why: tuple[str, ...]  # each one in the failure line


def record_problems(run: Run, want: Expected) -> list[str]:
    record = run.record
    if record is None or not (record / "manifest.json").is_file():
        return [f"the run named no record (rc {run.rc}): {run.out[-300:]!r}"]
    problems = parse_problems(record)
    m = manifest_of(record)
    if m["status"] != want.status:
        problems.append(f"status {m['status']!r}, expected {want.status!r}")
    if not m["ended"] or m["duration"] is None:
        problems.append("no end time")
    failure = m["failure"] or ""
    if "\n" in failure or not failure:
        problems.append(f"the failure is not one line: {failure[:300]!r}")
    entry = next((nb for nb in m["notebooks"] if nb["notebook"].startswith(want.notebook)), None)
    if entry is None:
        return [*problems, f"no notebook {want.notebook} in the manifest"]
    if entry["status"] != want.status:
        problems.append(f"{entry['notebook']} is {entry['status']!r}, expected {want.status!r}")
    if want.step not in (entry["failed_step"] or ""):
        problems.append(f"failed step {entry['failed_step']!r}, expected {want.step!r}")
    error = entry["error"] or ""
    if "\n" in error or not error:
        problems.append(f"the notebook's error is not one line: {error[:300]!r}")
    if want.step not in failure or entry["notebook"] not in failure:
        problems.append(f"the failure does not name {entry['notebook']} and the step: {failure}")
    missing = [w for w in want.why if w not in failure]
    if missing:
        problems.append(f"the failure does not say {missing}: {failure[:500]}")
    if "Traceback" in run.out:
        problems.append("a traceback on the terminal")
    shown = _outcomes_shown(run.lines, entry["notebook"])
    if len(entry["steps"]) < shown:
        problems.append(
            f"{entry['notebook']}: {shown} step outcomes shown, {len(entry['steps'])} recorded"
        )
    return problems


def _outcomes_shown(lines: list[str], notebook: str) -> int:
    """How many step outcomes (`  [done: ...] step`) the terminal showed for `notebook`."""
    count, inside = 0, False
    for line in lines:
        if line.startswith("▶ "):
            inside = line.endswith(f" {notebook}")
        elif inside and line.startswith("  ["):
            count += 1
    return count


def resume_problems(before: dict[str, Any], before_log: str, after_run: Run) -> list[str]:
    """The resumed run completed; what the first run recorded is all still there; notebooks
    that had completed were not run again; in the notebook that had not, every step that had
    finished before the fault is `already done` now (nothing redone)."""
    record = after_run.record
    if after_run.rc != 0 or record is None:
        return [f"--resume exited {after_run.rc}: {after_run.out[-600:]!r}"]
    problems = parse_problems(record)
    m = manifest_of(record)
    if m["status"] != "completed" or m["failure"]:
        problems.append(f"resumed record is {m['status']!r}: {m['failure']}")
    log = (record / "run.log").read_text()
    if not log.startswith(before_log):
        problems.append("run.log lost what the first run wrote")
    for old, new in zip(before["notebooks"], m["notebooks"], strict=True):
        name = old["notebook"]
        if new["status"] != "completed":
            problems.append(f"{name} is {new['status']!r} after the resume")
        if old["status"] == "completed":
            if new != old:
                problems.append(f"{name} had completed and was run again")
            continue
        outcomes = {s["step"]: s["outcome"] for s in new["steps"]}
        for s in old["steps"]:
            if s["outcome"] in ("done", "already done") and outcomes.get(s["step"]) == "done":
                problems.append(f"{name}: {s['step']!r} was done before the fault, redone")
    return problems


# -- the scenarios ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """One fault injected into a real deployment: did the run end within its bound, did
    its record say what happened, did `--resume` finish once the fault was lifted."""

    fault: str
    bound: float
    injected: bool = False
    took: float | None = None  # from the injection to the end of the run
    record: list[str] = field(default_factory=lambda: ["not checked"])
    resume: list[str] = field(default_factory=lambda: ["not resumed"])
    notes: list[str] = field(default_factory=list)

    @property
    def in_bound(self) -> bool:
        return self.took is not None and self.took <= self.bound

    @property
    def record_ok(self) -> bool:
        return self.injected and not self.record

    @property
    def resumed(self) -> bool:
        return self.injected and not self.resume

    @property
    def ok(self) -> bool:
        return self.in_bound and self.record_ok and self.resumed

    def why(self) -> str:
        took = "never injected" if self.took is None else f"{self.took:.1f} s of {self.bound:g}"
        return f"{self.fault}: {took}; record: {self.record}; resume: {self.resume}; {self.notes}"


def _faulted(
    lab: FaultLab,
    outcome: Outcome,
    run: Run,
    want: Expected,
    lift: Callable[[], None] | None = None,
) -> Outcome:
    """After the fault: wait for the run's end, check its record, lift the fault, resume."""
    lab.finish(run)
    outcome.injected = run.injected is not None
    outcome.took = run.since_injection
    outcome.record = record_problems(run, want)
    record = run.record
    if record is None or not (record / "manifest.json").is_file():
        return outcome
    before, before_log = manifest_of(record), (record / "run.log").read_text()
    if lift is not None:
        lift()
    resumed = lab.deploy("--resume", str(record))
    outcome.resume = resume_problems(before, before_log, resumed)
    return outcome


def _push_step() -> str:
    return "push the store to main"


def _mid_push(run: Run) -> bool:
    """The push runs on the cache VM and its step's header has reached the runner: a signal
    now lands inside that step as the runner knows it (on a fast machine the push starts
    before the kernel's header line is relayed)."""
    return run.wait_process(CACHE_HOST, PUSH_RE) and run.wait_line(f"── {_push_step()}")


def sigterm_during_the_push(lab: FaultLab, *extra: str) -> Outcome:
    """SIGTERM to `runbook deploy` (the runner alone, as `kill PID` sends it) while 06's
    `attic push` runs on the cache VM."""
    from runbook.notebook.runner import DEAD_KERNEL_WAIT, TERM_GRACE

    outcome = Outcome("SIGTERM to runbook deploy during 06's push", TERM_GRACE + DEAD_KERNEL_WAIT)
    lab.new_store_path()
    run = lab.start(*extra)
    if _mid_push(run):
        run.inject(lambda: os.kill(run.proc.pid, signal.SIGTERM))
    want = Expected("terminated", "06", _push_step(), ("terminated by SIGTERM", "--resume"))
    return _faulted(lab, outcome, run, want)


def sigint_during_the_push(lab: FaultLab) -> Outcome:
    """Ctrl-C (SIGINT to the whole process group) while 06's push runs."""
    from runbook.notebook.runner import DEAD_KERNEL_WAIT, INTERRUPT_GRACE

    outcome = Outcome("SIGINT (Ctrl-C) to runbook deploy during 06's push",
                      INTERRUPT_GRACE + DEAD_KERNEL_WAIT)  # fmt: skip
    lab.new_store_path()
    run = lab.start("--only", "06")
    if _mid_push(run):
        run.inject(lambda: os.killpg(run.proc.pid, signal.SIGINT))
    want = Expected("interrupted", "06", _push_step(), ("interrupted (Ctrl-C)", "--resume"))
    return _faulted(lab, outcome, run, want)


def link_cut_during_the_push(lab: FaultLab) -> Outcome:
    """The cache VM's link cut (its veth down) while 06's push runs, not restored until the
    run has ended: the keepalives go unanswered."""
    from runbook.core.models import Deadlines

    dead = Deadlines(**{k: float(v) for k, v in TIMEOUTS.items()}).dead_after  # type: ignore[arg-type]
    outcome = Outcome("the cache's link cut during 06's push, never restored", dead + 10)
    veth = f"{BRIDGE}v0"  # runbook.lab.net.veth_name: host 0, the cache
    lab.new_store_path()
    run = lab.start("--only", "06")
    if run.wait_process(CACHE_HOST, PUSH_RE):
        run.inject(lambda: _ip("link", "set", veth, "down"))
    want = Expected("failed", "06", _push_step(), ("lost during", "keepalives"))
    try:
        return _faulted(lab, outcome, run, want, lift=lambda: _ip("link", "set", veth, "up"))
    finally:
        _ip("link", "set", veth, "up")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30)


ATTICD_RE: Final = re.compile(r"atticd --mode|runbook\.lab\.attic\.server")


def atticd_killed_during_the_push(lab: FaultLab) -> Outcome:
    """atticd killed (SIGKILL) on the cache VM while 06's push talks to it."""
    outcome = Outcome("atticd killed during 06's push", 30.0)
    lab.new_store_path()
    run = lab.start("--only", "06")
    if run.wait_process(CACHE_HOST, PUSH_RE):
        run.inject(lambda: outcome.notes.append(f"killed {kill_on_host(CACHE_HOST, ATTICD_RE)}"))
    want = Expected("failed", "06", _push_step(), ("push",))
    return _faulted(lab, outcome, run, want, lift=lambda: _start_unit(CACHE_HOST, "atticd"))


def _start_unit(host: str, unit: str) -> None:
    on_host(host, f"systemctl start {unit} && systemctl is-active {unit}")


SSHD_RE: Final = re.compile(r"^(/usr/sbin/)?sshd\b")


def sshd_killed_on_a_worker_mid_switch(lab: FaultLab) -> Outcome:
    """Every sshd of the worker (the listener and the session) killed while 09's
    `nixos-rebuild switch` runs there."""
    outcome = Outcome("sshd killed on the worker during 09's switch", 30.0)
    lab.edit_config()
    run = lab.start("--only", "09")
    if run.wait_process(WORKER_HOST, REBUILD_RE):
        run.inject(lambda: outcome.notes.append(f"killed {kill_on_host(WORKER_HOST, SSHD_RE)}"))
    want = Expected("failed", "09", f"update {WORKER_VM}", (WORKER_VM,))
    return _faulted(lab, outcome, run, want, lift=lambda: _start_unit(WORKER_HOST, "sshd"))


def cache_key_regenerated(lab: FaultLab) -> Outcome:
    """The cache's signing key regenerated after the workers were set up: 08 fails naming
    the worker and both keys; `deploy --only 06,07` (the workers trust the new key) lifts it."""
    outcome = Outcome("the cache's signing key regenerated", 60.0)
    old = lab.live_key()
    lab.regenerate_cache_key()
    new = lab.live_key()
    run = lab.start("--only", "08")
    run.injected = run.started  # the fault is in place when the run starts
    want = Expected("failed", "08", f"{WORKER_VM} trusts the key", (WORKER_VM, old, new))
    if new == old:
        outcome.notes.append("the key did not change")

    def lift() -> None:
        # 07 trusts the key 06 read from the cache (06 keeps it): both, as 08's failure says
        trusted = lab.deploy("--only", "06,07")
        if trusted.rc != 0:
            outcome.notes.append(f"deploy --only 06,07 exited {trusted.rc}")

    return _faulted(lab, outcome, run, want, lift=lift)


def host_key_changed(lab: FaultLab) -> Outcome:
    """The worker's SSH host keys regenerated: the first step that logs in there refuses it
    with both fingerprints and a command that accepts the new key; that command lifts it."""
    outcome = Outcome("the worker's host key changed", 60.0)
    on_host(WORKER_HOST, "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A -q && systemctl restart sshd")
    run = lab.start("--only", "08")
    run.injected = run.started
    want = Expected(
        "failed", "08", f"{WORKER_VM} trusts", ("host now presents", "--replace-host-key")
    )

    def lift() -> None:
        found = re.search(r"`(runbook exec [^`]+)`", run.out)
        if found is None:
            outcome.notes.append("no `runbook exec ... --replace-host-key` command given")
            return
        words = shlex.split(found.group(1))[1:]
        accepted = subprocess.run([sys.executable, "-m", "runbook", *words],
                                  capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if accepted.returncode != 0:
            outcome.notes.append(f"{found.group(1)} exited {accepted.returncode}")

    return _faulted(lab, outcome, run, want, lift=lift)


def two_deploys_at_once(lab: FaultLab) -> Outcome:
    """A second `deploy` of the deployment, and a `--resume` of its live record, while a
    deploy runs: both refused at once (exit 2, one line naming the live run), no record
    made; the first one goes on to completion."""
    outcome = Outcome("two deploys of one deployment at once", 20.0)
    first = lab.start("--only", "07,08")
    if not first.wait_line("▶ [1/2]"):
        lab.finish(first)
        return outcome
    record = first.record
    outcome.injected = record is not None
    listed = sorted(p.name for p in lab.records.iterdir())
    first.injected = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # both while the first one runs
        second_f = pool.submit(lab.deploy)
        again_f = pool.submit(lab.deploy, "--resume", str(record))
        second, again = second_f.result(), again_f.result()
    outcome.took = max(r.ended - r.started for r in (second, again) if r.ended is not None)
    outcome.record = []
    if first.ended is not None:
        outcome.notes.append("the first deploy ended before both were refused")
    for what, r, says in [("a second deploy", second, "already running"),
                          ("--resume of the live record", again, "still running")]:  # fmt: skip
        err = [ln for ln in r.lines if ln.strip()]
        if r.rc != 2 or len(err) != 1 or "Traceback" in r.out:
            outcome.record.append(f"{what}: exit {r.rc}, {len(err)} lines: {r.out[-300:]!r}")
        elif says not in err[0] or f"pid {first.proc.pid}" not in err[0]:
            outcome.record.append(f"{what} does not name the live run: {err[0]}")
    made = sorted({p.name for p in lab.records.iterdir()} - set(listed))
    if made:
        outcome.record.append(f"a refused run made {made}")
    lab.finish(first)
    done = first.record
    if first.rc != 0 or done is None:
        outcome.resume = [f"the first deploy exited {first.rc}: {first.out[-400:]!r}"]
    else:
        m = manifest_of(done)
        outcome.resume = parse_problems(done) + (
            [] if m["status"] == "completed" else [f"the first deploy's record: {m['status']}"]
        )
    return outcome


Scenario = Callable[[FaultLab], Outcome]
SCENARIOS: Final[tuple[Scenario, ...]] = (
    link_cut_during_the_push,
    sshd_killed_on_a_worker_mid_switch,
    atticd_killed_during_the_push,
    sigint_during_the_push,
    two_deploys_at_once,
    cache_key_regenerated,
    host_key_changed,
)  # after sigterm_during_the_push, which is the lab's first deploy


# -- the secret sweep ------------------------------------------------------------------------


def secret_values(lab: FaultLab) -> dict[str, str]:
    """Every secret the lab's deployment holds: each value of its secret store, the lines of
    the token secret's PEM, the lab's passwords, the lab client key's private lines. (Read
    while the lab is up: the key is in its state dir.)"""
    import base64

    values: dict[str, str] = {}
    for path in sorted(lab.secrets.iterdir()) if lab.secrets.is_dir() else []:
        if path.is_file():
            values[f"secret {path.name}"] = path.read_text().strip()
    if "secret attic-token-secret" in values:
        pem = base64.b64decode(values["secret attic-token-secret"]).decode().splitlines()
        for i, line in enumerate(pem[1:-1]):
            values[f"token secret PEM line {i + 1}"] = line
    for user, password in PASSWORDS.items():
        values[f"lab password of {user}"] = password
    key = STATE / "id_ed25519"
    if key.is_file():
        body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
        values["lab client key"] = "".join(body)
        for i, line in enumerate(body):
            values[f"lab client key line {i + 1}"] = line
    return values


SLICE: Final = 32


@dataclass
class Sweep:
    """Where secret values were found: whole, or any 32-character slice of one."""

    texts: int = 0
    values: int = 0
    whole: list[str] = field(default_factory=list)  # "file: value name"
    sliced: list[str] = field(default_factory=list)


def sweep(texts: dict[str, str], values: dict[str, str]) -> Sweep:
    """Search each text (name -> content) for each value whole and for every 32-character
    slice of it (values shorter than that: whole only). Slices are looked up in runs of the
    values' own characters only, so megabytes of HTML cost little."""
    wanted = {name: v for name, v in values.items() if len(v) >= 6}
    slices: dict[str, str] = {}
    for name, value in wanted.items():
        for i in range(len(value) - SLICE + 1):
            slices.setdefault(value[i : i + SLICE], name)
    chars = "".join(sorted(set("".join(slices))))
    runs = re.compile(f"[{re.escape(chars)}]{{{SLICE},}}") if chars else None
    found = Sweep(texts=len(texts), values=len(wanted))
    for where, text in texts.items():
        found.whole += [f"{where}: {name}" for name, v in wanted.items() if v in text]
        hit: set[str] = set()
        for m in runs.finditer(text) if runs is not None else ():
            s = m.group()
            hit.update(slices[s[i : i + SLICE]] for i in range(len(s) - SLICE + 1)
                       if s[i : i + SLICE] in slices)  # fmt: skip
        hit.update(name for name, v in wanted.items() if len(v) < SLICE and v in text)
        found.sliced += [f"{where}: {name}" for name in sorted(hit)]
    return found


def record_texts(*roots: Path) -> dict[str, str]:
    """Every file under `roots` (records roots, console logs), by path, as text."""
    return {
        str(p): p.read_bytes().decode(errors="replace")
        for root in roots
        if root.is_dir()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- the hostile-params corpus ----------------------------------------------------------------

CORPUS: Final = Path(__file__).resolve().parent / "corpus" / "params"
MAX_LINE: Final = 300
_CORPUS_CHILD: Final = """
import contextlib, io, json, sys
from runbook.cli import execute
for f in sys.argv[2:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = execute(["plan", f, "--records", sys.argv[1]])
        except BaseException as exc:  # a crash is a finding, reported as one
            code, err = -1, io.StringIO(f"{type(exc).__name__}: {exc}")
    print(json.dumps([f, code, err.getvalue()]), flush=True)
"""


@dataclass
class CorpusRun:
    files: int = 0
    clean: int = 0
    unclean: list[str] = field(default_factory=list)


def run_corpus(root: Path, corpus: Path = CORPUS) -> CorpusRun:
    """`runbook plan FILE` of every file in the corpus directory as it is now, in one child
    interpreter (each file its own `cli.execute`), in the surroundings the corpus test makes
    (tests/test_params_corpus.py make_workdir: the nixos-config the files name, with
    symlinks out of it, and the key). A clean rejection: exit 2 and exactly one line of at
    most 300 characters, no traceback."""
    from tests.test_params_corpus import make_workdir

    wd = make_workdir(root)
    files = []
    for src in sorted(p for p in corpus.iterdir() if p.is_file()):
        dest = wd.work / src.name
        dest.write_bytes(src.read_bytes())
        files.append(dest)
    env = clean_env(wd.home)
    env["TMPDIR"] = str(wd.tmp)
    proc = subprocess.run(
        [sys.executable, "-c", _CORPUS_CHILD, str(wd.records), *map(str, files)],
        cwd=wd.work, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    result = CorpusRun(files=len(files))
    seen = set()
    for line in proc.stdout.splitlines():
        name, code, err = json.loads(line)
        seen.add(name)
        one = err.endswith("\n") and err.count("\n") == 1 and len(err) - 1 <= MAX_LINE
        if code == 2 and one and "Traceback" not in err:
            result.clean += 1
        else:
            result.unclean.append(f"{Path(name).name}: exit {code}: {err[:200]!r}")
    result.unclean += [f"{f.name}: no answer" for f in files if str(f) not in seen]
    if proc.stderr.strip():
        result.unclean.append(f"the child wrote to stderr: {proc.stderr[-300:]!r}")
    return result
