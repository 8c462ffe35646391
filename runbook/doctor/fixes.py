"""The safe fixes `runbook doctor --fix` makes (and `--diff` shows): lesson 1's attic
input, its references and lock nodes, the workers' cache substituter, and the deployment's
own key for its user (lesson 7)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Final

from runbook.core.errors import InputError
from runbook.core.params import Deployment
from runbook.doctor.context import DoctorContext
from runbook.doctor.model import Finding, Status
from runbook.doctor.run import run_context
from runbook.doctor.worker_checks import SUBSTITUTERS
from runbook.nix.nixcfg import (
    Change,
    FixPlan,
    attic_inputs,
    declared_inputs,
    lock_text,
    plan_attic_flake_removal,
    plan_list_item,
    prune_lock,
    read_lock,
    stale_lock_inputs,
)
from runbook.nix.nixfile import NixFile

logger: Final = logging.getLogger(__name__)


FIXABLE: Final = frozenset(
    {"attic-flake-input", "attic-module-import", "worker-substituter", "user-key-authorized"}
)


def plan_fixes(
    ctx: DoctorContext, findings: Sequence[Finding], checks: Collection[str] = FIXABLE
) -> FixPlan:
    """Edits for lesson 1 (attic input, its references, the lock) and the workers' cache
    substituter, for those of `checks` that warn or fail; every other finding needs a
    decision the user makes."""
    failing = {
        f.check for f in findings if f.status in (Status.FAIL, Status.WARN) and f.check in checks
    }
    plan = FixPlan()
    if failing & {"attic-flake-input", "attic-module-import"} and ctx.flake is not None:
        plan.extend(plan_attic_flake_removal(ctx.tree))
        _plan_lock(ctx, ctx.flake, plan)
    worker = ctx.parsed.get(ctx.worker_module)
    if "worker-substituter" in failing and worker is not None:
        # plan_list_item returns None when the URL is there; `attic use` puts it first (attic.md §4)
        edit = plan_list_item(worker, SUBSTITUTERS, ctx.target.url, first=True)
        if edit is not None:
            plan.edits.setdefault(ctx.worker_module, []).append(edit)
    if "user-key-authorized" in failing:
        _plan_identity_key(ctx, plan)
    return plan


def _plan_identity_key(ctx: DoctorContext, plan: FixPlan) -> None:
    """The identity's public key into `users.users.USER.openssh.authorizedKeys.keys` of the
    file that lists the user's keys, else of the one that defines the user; nothing when the
    user is not defined or the key cannot be read (those need the user's decision)."""
    identity, user = ctx.identity_key, ctx.user
    if not isinstance(identity, tuple) or user is None or ctx.deployment is None:
        return
    keys = ("users", "users", user, "openssh", "authorizedKeys", "keys")
    files = sorted(ctx.parsed.items())
    target = next(((rel, nix) for rel, nix in files if nix.find(keys)), None) or next(
        ((rel, nix) for rel, nix in files if nix.under(("users", "users", user))), None
    )
    if target is None:
        return
    public = ctx.deployment.identity.with_name(ctx.deployment.identity.name + ".pub")
    try:
        comment = public.read_text().split()[2:3]
    except OSError:
        comment = []
    try:
        edit = plan_list_item(target[1], keys, " ".join([*identity, *comment]))
    except InputError:  # the keys are not a list literal: the user edits them
        return
    if edit is not None:
        plan.edits.setdefault(target[0], []).append(edit)


def _plan_lock(ctx: DoctorContext, flake: NixFile, plan: FixPlan) -> None:
    lock_path = ctx.root / "flake.lock"
    if not lock_path.is_file():
        return
    lock = read_lock(lock_path)
    stale = stale_lock_inputs(lock, declared_inputs(flake) - set(attic_inputs(flake)))
    if stale:
        plan.rewrites[Path("flake.lock")] = lock_text(prune_lock(lock, stale))


def planned_changes(
    deployment: Deployment | None, nixos_config: Path, checks: Collection[str] = FIXABLE
) -> list[Change]:
    """The new content of each file `runbook doctor --fix` would edit for `checks` (every
    one checked to parse), without writing anything; `nixcfg.write_changes` writes them."""
    ctx = DoctorContext(deployment, nixos_config)
    return ctx.tree.changes(plan_fixes(ctx, run_context(ctx), checks))
