"""The values steps are made of: a step, its check, its outcome and its record.

A `Step` is one idempotent action with a `probe` ("already done?") and an `action`; its
`commands` (`runbook.transport.commands` values, or a plain note for work done in Python) are what
its plan shows and what its action runs. `runbook.engine.steps.Context` runs steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NotRequired, TypedDict

from runbook.core.errors import RunbookError
from runbook.core.masking import mask
from runbook.transport.commands import Command, rendered

STEP_MIMETYPE: Final = "application/vnd.runbook.step+json"
# Test-only fault injection: "<notebook>:<step name>" makes that step fail deterministically.
FAIL_STEP_ENV: Final = "RUNBOOK_FAIL_STEP"
LOCALHOST: Final = "localhost"


class Mode(StrEnum):
    PLAN = "plan"
    DEPLOY = "deploy"

    def __str__(self) -> str:
        return self.value


class Outcome(StrEnum):
    PLAN = "plan"
    DONE = "done"
    ALREADY = "already done"
    SKIPPED = "skipped"
    UNCHECKED = "unchecked"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class StepRecord(TypedDict):
    notebook: str
    step: str
    host: str
    outcome: str
    reason: str
    duration: float
    commands: list[str]
    start: NotRequired[str]  # UTC ISO time the step began (records made before it have none)


@dataclass(frozen=True)
class Check:
    """Whether a step is already done; `done=None` means it could not be checked."""

    done: bool | None
    reason: str = ""


DONE: Final = Check(True)
TODO: Final = Check(False)


def unchecked(reason: str) -> Check:
    return Check(None, reason)


class StepFailed(RunbookError):  # noqa: N818 - the name the notebooks and runner use
    """A step failed: names the notebook, step, host, command and stderr tail (masked)."""

    def __init__(
        self, *, notebook: str, step: str, host: str, error: str, command: str = ""
    ) -> None:
        self.notebook = notebook
        self.step = step
        self.host = host
        self.error = mask(error)
        self.command = mask(command)
        where = f"notebook {notebook}, step {step!r} on {host}"
        cmd = f"; command `{self.command}`" if command else ""
        super().__init__(f"{where}{cmd}: {self.error}")


@dataclass(frozen=True)
class Step:
    """One idempotent action. `probe` answers "already done?", `action` does it.

    `remote`: probe and action talk to `host`, so plan mode never runs them.
    `readonly`: a local read that runs in plan mode too (e.g. linting the config).
    `plan_only`: why the action is not automated yet (its helper lands in a later issue).
    """

    name: str
    host: str
    commands: Sequence[Command | str] = ()
    probe: Callable[[], Check] | None = None
    action: Callable[[], str | None] | None = None
    remote: bool = False
    dangerous: bool = False
    readonly: bool = False
    plan_only: str = ""
    note: str = ""
    # what a step run in parallel prints, kept to print in order (see Context.run_parallel)
    output: list[str] = field(default_factory=list, compare=False)

    def plan(self) -> list[str]:
        """What the step runs, as its command values render themselves (masked)."""
        return [mask(c) for c in rendered(self.commands)]

    def check(self) -> Check:
        return self.probe() if self.probe is not None else TODO

    def apply(self) -> str | None:
        if self.action is None:
            raise RunbookError(f"step {self.name!r} has no automated action yet")
        return self.action()
