"""The step framework the notebooks are written in.

A `Step` names what it does and the host it targets, renders its plan (the exact
commands, masked), checks whether it is already done, and applies itself. A `Context`,
opened from the notebook's papermill parameters (params path, mode, confirm flag,
secret-store dir, record dir: never a secret value), runs steps and prints one line per
outcome: `[plan]`, `[done]`, `[already done]`, `[skipped: why]`, `[unchecked: why]`, or
raises `StepFailed` naming notebook, step, host, command and stderr tail.

Each outcome is also published as a display output of mimetype `STEP_MIMETYPE`, which
the runner reads back from the executed notebook (see `runbook.notebook.records`).

Plan mode never connects anywhere: a step whose check needs its host says
`[unchecked: ...]`; `Context.connection` refuses to open in plan mode.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runbook.core.errors import CommandError, InputError, RunbookError, tail
from runbook.core.masking import mask
from runbook.core.models import Result
from runbook.core.params import VM, Deployment, Loaded, load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine import step_output
from runbook.engine.addresses import record_address, run_addresses, with_run_addresses
from runbook.engine.pool import ConnectionPool
from runbook.engine.step import (
    DONE,
    FAIL_STEP_ENV,
    LOCALHOST,
    STEP_MIMETYPE,
    TODO,
    Check,
    Mode,
    Outcome,
    Step,
    StepFailed,
    StepRecord,
    unchecked,
)
from runbook.transport.commands import Command, ConsoleTyping, FilePut, LocalCommand, RemoteScript

if TYPE_CHECKING:
    from runbook.transport.remote import Connection

# the step values are defined in runbook.engine.step; the sections import them from here too
__all__ = [
    "DONE",
    "FAIL_STEP_ENV",
    "LOCALHOST",
    "STEP_MIMETYPE",
    "TODO",
    "Check",
    "Context",
    "Mode",
    "Outcome",
    "Step",
    "StepFailed",
    "StepRecord",
    "StepRecorder",
    "open_context",
    "record_address",
    "run_addresses",
    "unchecked",
    "with_run_addresses",
]


class Typist(Protocol):
    """What types a line on a VM's console (`runbook.sections.vm_console.VmConsole`)."""

    def type_line(self, text: str) -> None: ...


Sink = Callable[[StepRecord], None]


def _display_sink(record: StepRecord) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display({STEP_MIMETYPE: dict(record)}, raw=True)  # type: ignore[no-untyped-call]


@dataclass
class Context:
    """What a notebook's steps share: the deployment, the mode, the secret store, connections."""

    notebook: str
    loaded: Loaded
    mode: Mode
    confirm: bool
    store: SecretStore
    record_dir: Path | None = None
    sink: Sink = _display_sink
    records: list[StepRecord] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    # what the notebook's steps read once and share (e.g. 08's sample path), under memo_lock
    memo: dict[str, str] = field(default_factory=dict)
    memo_lock: threading.Lock = field(default_factory=threading.Lock)
    pool: ConnectionPool = field(default_factory=ConnectionPool)

    @property
    def dep(self) -> Deployment:
        return self.loaded.deployment

    @property
    def planning(self) -> bool:
        return self.mode is Mode.PLAN

    @property
    def state_dir(self) -> Path:
        """Non-secret state kept between runs (e.g. the cache's public key)."""
        return self.store.root.parent / "state" / self.dep.deployment

    def secret(self, name: str, env: str | None = None) -> Secret | None:
        value = self.store.get(name)
        if value is None and env and os.environ.get(env):
            value = Secret(os.environ[env], name)
        return value

    def connection(
        self, vm: VM, *, installed: bool = True, password: Secret | None = None
    ) -> Connection:
        """The SSH connection to `vm` (lesson 7): the user + key once installed; before, root
        with `password`, by default the live ISO's (after bootstrap0 root has the Makefile's
        initialPassword instead: notebook 04 passes that one)."""
        if self.planning:
            raise RunbookError("plan mode never connects to a host")
        from runbook.transport.remote import Connection

        key = (vm.name, installed, password.name if password is not None else "")
        if not installed and password is None:
            b = self.dep.bootstrap
            password = self.secret(b.password_secret, b.password_env)
        host = self.dep.host(vm, installed=installed)
        return self.pool.get(key, lambda: Connection(host, password=password))

    def execute(
        self,
        command: Command,
        *,
        check: bool = True,
        ok_codes: Sequence[int] = (0,),
        timeout: float | None = None,
        console: Typist | None = None,
    ) -> Result:
        """Run one command value: the one place a step's commands are executed, so what the
        plan rendered is what runs. A console typing needs the open `console`."""
        match command:
            case LocalCommand():
                from runbook.transport import local

                return local.run(
                    command.argv,
                    check=check,
                    ok_codes=ok_codes,
                    timeout=timeout or command.timeout,
                    stdin=command.stdin,
                    cwd=command.cwd,
                    env=command.env or None,
                )
            case RemoteScript():
                conn = self.connection(
                    self.dep.vm(command.host.name),
                    installed=command.installed,
                    password=command.password,
                )
                return conn.run(
                    command.script,
                    elevate=command.elevate,
                    check=check,
                    ok_codes=ok_codes,
                    timeout=timeout,
                    transfer=command.transfer,
                )
            case FilePut():
                if command.content is None:
                    raise RunbookError(f"{command.render()}: nothing to put (planned only)")
                conn = self.connection(self.dep.vm(command.host.name), installed=command.installed)
                return conn.put(
                    command.path,
                    command.content,
                    mode=command.mode,
                    owner=command.owner,
                    elevate=command.elevate,
                )
            case ConsoleTyping():
                if console is None:
                    raise RunbookError(f"{command.render()}: no console is open")
                start = time.monotonic()
                text = command.text
                console.type_line(text.reveal() if isinstance(text, Secret) else text)
                return Result(
                    host=command.vm,
                    command=command.render(),
                    exit_code=0,
                    stdout="",
                    stderr="",
                    duration=time.monotonic() - start,
                )

    def close(self) -> None:
        self.pool.close()

    def run(self, step: Step) -> Outcome:
        """Plan, check and (in deploy mode) apply `step`; print and publish its outcome."""
        start = time.monotonic()
        commands = self._header(step)
        try:
            _inject_failure(self.notebook, step.name)
            outcome, reason = (self._plan if self.planning else self._deploy)(step)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a named StepFailed
            failed = _as_failure(exc, self.notebook, step)
            self._emit(step, Outcome.FAILED, failed.error, start, commands)
            raise failed from None
        self._emit(step, outcome, reason, start, commands)
        return outcome

    def run_each(self, steps: Sequence[Step], *, none: str = "") -> list[Outcome]:
        """Run `steps` in order; with none, say why (one `[skipped: ...]` line)."""
        if not steps and none:
            self.skip(none.split(":")[0], LOCALHOST, none)
        return [self.run(step) for step in steps]

    def run_parallel(self, steps: Sequence[Step], *, none: str = "") -> list[Outcome]:
        """Run independent steps (one per host) at the same time; outcomes print in order.

        Each step is checked and, when needed, applied in its own thread, exactly as `run`
        does; what it prints is kept and printed after its header, in the steps' order. Plan
        mode, or a single step, is the same as `run_each`. Failures are raised after every
        step has finished, so no host is left half-done by an early stop: the first one, naming
        the other steps that failed too.
        """
        if self.planning or len(steps) < 2:
            return self.run_each(steps, none=none)
        from concurrent.futures import ThreadPoolExecutor

        def attempt(step: Step) -> tuple[float, tuple[Outcome, str] | Exception]:
            start = time.monotonic()
            step.output.clear()
            with step_output.capture(step.output):
                try:
                    _inject_failure(self.notebook, step.name)
                    return start, self._deploy(step)
                except Exception as exc:  # noqa: BLE001 - reported below, in order
                    return start, exc

        with step_output.routed_stdout(), ThreadPoolExecutor(max_workers=len(steps)) as pool:
            results = list(pool.map(attempt, steps))
        outcomes: list[Outcome] = []
        failures: list[StepFailed] = []
        for step, (start, result) in zip(steps, results, strict=True):
            commands = self._header(step)
            sys.stdout.write("".join(step.output))
            if isinstance(result, Exception):
                failed = _as_failure(result, self.notebook, step)
                self._emit(step, Outcome.FAILED, failed.error, start, commands)
                failures.append(failed)
                outcomes.append(Outcome.FAILED)
                continue
            self._emit(step, result[0], result[1], start, commands)
            outcomes.append(result[0])
        if failures:
            raise _first_of(failures)
        return outcomes

    @staticmethod
    def _header(step: Step) -> list[str]:
        """Print the step's name, host and planned commands; return the commands."""
        print(f"\n── {step.name}  @ {step.host}" + (f"  ({step.note})" if step.note else ""))
        commands = step.plan()
        for cmd in commands:
            print(f"    $ {cmd}")
        return commands

    def skip(self, name: str, host: str, reason: str) -> Outcome:
        print(f"\n── {name}  @ {host}")
        self._emit(Step(name, host), Outcome.SKIPPED, reason, time.monotonic(), [])
        return Outcome.SKIPPED

    def summary(self) -> str:
        """One line: how many steps had each outcome; closes the connections."""
        self.close()
        counts: dict[str, int] = {}
        for rec in self.records:
            counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
        text = ", ".join(f"{n} {o}" for o, n in counts.items()) or "no steps"
        line = f"{self.notebook}: {len(self.records)} step(s): {text}"
        print(line)
        return line

    def _plan(self, step: Step) -> tuple[Outcome, str]:
        if step.readonly and step.action is not None:
            return Outcome.DONE, step.action() or ""
        outcome, reason = self._plan_check(step)
        notes = [reason] if reason else []
        if outcome is Outcome.PLAN and step.dangerous:
            notes.append("dangerous: a deploy needs --yes (confirm=True)")
        if outcome is not Outcome.ALREADY and step.plan_only:
            notes.append(f"plan-only for now: {step.plan_only}")
        return outcome, "; ".join(notes)

    def _plan_check(self, step: Step) -> tuple[Outcome, str]:
        if step.remote:
            return Outcome.UNCHECKED, f"plan mode does not connect to {step.host}"
        check = step.check()
        if check.done:
            return Outcome.ALREADY, check.reason
        if check.done is None:
            return Outcome.UNCHECKED, check.reason
        return Outcome.PLAN, ""

    def _deploy(self, step: Step) -> tuple[Outcome, str]:
        check = step.check()
        if check.done:
            return Outcome.ALREADY, check.reason
        if step.action is None:
            why = step.plan_only or "not automated"
            return Outcome.SKIPPED, f"plan-only for now ({why}); do it by hand as planned"
        if step.dangerous and not self.confirm:
            raise RunbookError(
                f"{step.name} is dangerous ({step.note or 'destructive'}): confirm with "
                "`runbook deploy ... --yes` or the notebook parameter confirm=True"
            )
        detail = step.apply()
        self.changed.add(step.name)
        return Outcome.DONE, detail or ""

    def _emit(
        self, step: Step, outcome: Outcome, reason: str, start: float, commands: list[str]
    ) -> None:
        reason = mask(reason)
        label = f"{outcome}: {reason}" if reason and outcome is not Outcome.PLAN else str(outcome)
        extra = f"  ({reason})" if reason and outcome is Outcome.PLAN else ""
        print(f"  [{label}] {step.name}{extra}")
        record = StepRecord(
            notebook=self.notebook,
            step=step.name,
            host=step.host,
            outcome=str(outcome),
            reason=reason,
            duration=round(time.monotonic() - start, 3),
            commands=commands,
            start=_wall(start),
        )
        self.records.append(record)
        self.sink(record)


def _wall(start: float) -> str:
    """The UTC ISO time of `start`, a time.monotonic() reading."""
    began = datetime.now(UTC) - timedelta(seconds=time.monotonic() - start)
    return began.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _inject_failure(notebook: str, step: str) -> None:
    target = os.environ.get(FAIL_STEP_ENV, "")
    if target and target in (f"{notebook}:{step}", f"{notebook.split('-')[0]}:{step}"):
        raise RunbookError(f"injected failure ({FAIL_STEP_ENV}={target})")


def _first_of(failures: list[StepFailed]) -> StepFailed:
    """The first failure; when steps run in parallel failed too, it names them (each has
    its own `[failed: ...]` line above)."""
    first = failures[0]
    if len(failures) == 1:
        return first
    others = "; ".join(f"{f.step!r} on {f.host}" for f in failures[1:])
    return StepFailed(
        notebook=first.notebook,
        step=first.step,
        host=first.host,
        error=f"{first.error} (also failed: {others})",
        command=first.command,
    )


def _as_failure(exc: Exception, notebook: str, step: Step) -> StepFailed:
    if isinstance(exc, StepFailed):
        return exc
    if isinstance(exc, CommandError):
        error = exc.summary + (  # `exit N`, or why it never exited (connection lost, ...)
            f"; stderr tail: {exc.stderr_tail}" if exc.stderr_tail else ""
        )
        return StepFailed(
            notebook=notebook, step=step.name, host=exc.host, error=error, command=exc.command
        )
    text = str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}"
    return StepFailed(notebook=notebook, step=step.name, host=step.host, error=tail(mask(text)))


class StepRecorder:
    """Stands in for a Context in a notebook's step cells and keeps the steps they would run, in
    their order, instead of running them (`runbook.sections.outline.section_steps`). Anything
    else a step reads of its context comes from the real one."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.steps: list[Step] = []

    def run(self, step: Step) -> None:
        self.steps.append(step)

    def run_each(self, steps: Sequence[Step], *, none: str = "") -> None:  # noqa: ARG002 - as Context
        self.steps.extend(steps)

    run_parallel = run_each

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def open_context(
    notebook: str,
    params: str,
    mode: str = "plan",
    confirm: bool = False,
    secrets_dir: str = "",
    record_dir: str = "",
) -> Context:
    """The context for one notebook, from its papermill parameters; installs kernel masking."""
    from runbook.engine import kernel

    kernel.install()
    try:
        run_mode = Mode(mode)
    except ValueError:
        raise InputError(f"parameter mode: expected plan or deploy (got {mode!r})") from None
    store = SecretStore(Path(secrets_dir) if secrets_dir else None)
    store.load_all()  # register every stored value for masking before anything prints
    loaded = load(params)
    if run_mode is Mode.DEPLOY and record_dir:
        loaded = with_run_addresses(loaded, Path(record_dir))
    ctx = Context(
        notebook=notebook,
        loaded=loaded,
        mode=run_mode,
        confirm=bool(confirm),
        store=store,
        record_dir=Path(record_dir) if record_dir else None,
    )
    print(
        f"{notebook}: deployment {ctx.dep.deployment} ({ctx.loaded.path}), mode {run_mode}"
        + (", dangerous steps confirmed" if ctx.confirm else "")
    )
    return ctx


# -- this run's addresses (lesson 8) ----------------------------------------------------------
