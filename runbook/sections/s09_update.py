"""09 部署流程速查 6: routine updates, `make vm/copy` + `make vm/switch` as the user (lesson 7)."""

from __future__ import annotations

from typing import Final

from runbook.params import VM
from runbook.sections import s00_preflight
from runbook.sections.common import host_label, make_argv, render, run_make
from runbook.steps import Context, Step, unchecked

NOTEBOOK: Final = "09-update"


def update(ctx: Context, vm: VM) -> Step:
    copy = make_argv(ctx, "vm/copy", vm, user=ctx.dep.user, name=False)
    switch = make_argv(ctx, "vm/switch", vm, user=ctx.dep.user)

    def apply() -> str:
        run_make(copy, None)
        return run_make(switch, None)

    return Step(
        f"update {vm.name} (vm/copy + vm/switch as {ctx.dep.user})",
        host_label(ctx, vm),
        [render(copy), render(switch)],
        probe=lambda: unchecked("an update always runs; nixos-rebuild switch is idempotent"),
        action=apply,
    )


def steps(ctx: Context) -> list[Step]:
    out = []
    for vm in ctx.dep.vms:
        out += [s00_preflight.toplevel_build(ctx, vm), update(ctx, vm)]
    return out
