"""09 部署流程速查 6: routine updates, `make vm/copy` + `make vm/switch` as the user (lesson 7).

A VM whose /nix-config already holds this checkout, and whose last switch was from it, is
left alone ("already done"); the others are updated, each after its configuration built
(or, in the lab, evaluated) here first (lesson 3).
"""

from __future__ import annotations

from typing import Final

from runbook.params import VM
from runbook.sections import s00_preflight
from runbook.sections.common import (
    host_label,
    make_argv,
    mark_switched,
    render,
    run_make,
    switched_probe,
    user_password,
)
from runbook.steps import Context, Step

NOTEBOOK: Final = "09-update"


def update(ctx: Context, vm: VM) -> Step:
    copy = make_argv(ctx, "vm/copy", vm, user=ctx.dep.user, name=False)
    switch = make_argv(ctx, "vm/switch", vm, user=ctx.dep.user)

    def apply() -> str:
        run_make(copy, user_password(ctx))
        detail = run_make(switch, user_password(ctx))
        mark_switched(ctx, vm)
        return detail

    return Step(
        f"update {vm.name} (vm/copy + vm/switch as {ctx.dep.user})",
        host_label(ctx, vm),
        [render(copy), render(switch)],
        probe=lambda: switched_probe(ctx, vm),
        action=apply,
        remote=True,
    )


def steps(ctx: Context) -> list[Step]:
    out = []
    for vm in ctx.dep.vms:
        out += [s00_preflight.toplevel_build(ctx, vm), update(ctx, vm)]
    return out
