"""The doctor's findings: a check's status and verdict, the finding with the handbook lesson
it guards, how checks are declared, and the findings as text, JSON or a table."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from runbook.doctor.context import DoctorContext

if TYPE_CHECKING:
    import pandas

logger: Final = logging.getLogger(__name__)


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    UNCHECKED = "unchecked"


@dataclass(frozen=True)
class Verdict:
    """What one check concluded."""

    status: Status
    finding: str
    fix: str = ""


@dataclass(frozen=True)
class Finding:
    check: str
    lesson: str
    status: Status
    finding: str
    fix: str

    def as_json(self) -> dict[str, str]:
        return {
            "check": self.check,
            "lesson": self.lesson,
            "status": str(self.status),
            "finding": self.finding,
            "fix": self.fix,
        }


def ok(finding: str) -> Verdict:
    return Verdict(Status.OK, finding)


def unchecked_verdict(reason: str, fix: str = "") -> Verdict:
    return Verdict(Status.UNCHECKED, reason, fix)


# -- declaring checks ---------------------------------------------------------------------------

CheckFunction = Callable[[DoctorContext], Verdict]


@dataclass(frozen=True)
class DoctorCheck:
    id: str
    lesson: str
    run: CheckFunction


def check(
    checks: list[DoctorCheck], check_id: str, lesson: str
) -> Callable[[CheckFunction], CheckFunction]:
    """Declare the decorated function as check `check_id` guarding `lesson`, appended to
    `checks` (each check module's list, in the order its checks run)."""

    def register(function: CheckFunction) -> CheckFunction:
        checks.append(DoctorCheck(check_id, lesson, function))
        return function

    return register


# -- showing findings ---------------------------------------------------------------------------


def failed(findings: Sequence[Finding]) -> bool:
    return any(f.status is Status.FAIL for f in findings)


def as_dataframe(findings: Sequence[Finding]) -> pandas.DataFrame:
    """The findings as a table (columns check, lesson, status, finding, fix) for notebook 00."""
    import pandas

    return pandas.DataFrame(
        [f.as_json() for f in findings], columns=["check", "lesson", "status", "finding", "fix"]
    )


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.as_json() for f in findings], indent=2, ensure_ascii=False)


def render_text(findings: Sequence[Finding], notes: Sequence[str] = ()) -> str:
    width = max((len(f.check) for f in findings), default=10) + 2
    lines = [f"note: {n}" for n in notes]
    lines.append(f"{'STATUS':<11}{'CHECK':<{width}}FINDING")
    for f in findings:
        lines.append(f"{f.status!s:<11}{f.check:<{width}}{f.finding}")
        if f.fix and f.status is not Status.OK:
            lines.append(f"{'':<11}{'':<{width}}fix: {f.fix}")
    counts = {s: sum(f.status is s for f in findings) for s in Status}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
