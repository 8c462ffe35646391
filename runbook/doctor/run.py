"""Every check, in the order the table shows them, run against one context."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from runbook.core.errors import RunbookError
from runbook.core.params import Deployment
from runbook.doctor import (
    cache_checks,
    flake_checks,
    host_checks,
    makefile_checks,
    system_checks,
    worker_checks,
)
from runbook.doctor.context import DoctorContext
from runbook.doctor.model import DoctorCheck, Finding, unchecked_verdict

logger: Final = logging.getLogger(__name__)

# The checkout, the cache, the workers, the Makefile, every VM, then this machine.
CHECKS: list[DoctorCheck] = [
    *flake_checks.CHECKS,
    *cache_checks.CHECKS,
    *worker_checks.CHECKS,
    *makefile_checks.CHECKS,
    *system_checks.CHECKS,
    *host_checks.CHECKS,
]


def run_context(ctx: DoctorContext) -> list[Finding]:
    """Every check on one context; a check that cannot read what it needs says unchecked."""
    findings: list[Finding] = []
    for item in CHECKS:
        try:
            verdict = item.run(ctx)
        except (RunbookError, OSError) as exc:
            verdict = unchecked_verdict(f"could not read what it needs: {exc}")
        findings.append(Finding(item.id, item.lesson, verdict.status, verdict.finding, verdict.fix))
    return findings


def run_checks(
    deployment: Deployment | None,
    nixos_config: Path,
    *,
    deploy_runs: frozenset[str] = frozenset(),
) -> list[Finding]:
    """Every check against a nixos-config checkout, with or without a deployment's params;
    `deploy_runs`: the notebooks ("07", ...) the deploy asking runs after its doctor.

    Raises InputError when `nixos_config` is not a checkout (no flake.nix).
    """
    return run_context(DoctorContext(deployment, nixos_config, deploy_runs=deploy_runs))
