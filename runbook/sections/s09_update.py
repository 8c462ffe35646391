"""09 部署流程速查 6: routine updates, `make vm/copy` + `make vm/switch` as the user (lesson 7).

A VM whose /nix-config already holds this checkout, and whose last switch was from it, is
left alone ("already done"); the others are updated, each after its configuration built here
first (lesson 3).
"""

from __future__ import annotations

from typing import Final

from runbook.core.params import VM
from runbook.engine.steps import Context, Step
from runbook.sections import s00_preflight  # noqa: F401 - its cells call s.s00_preflight.toplevel_build
from runbook.sections.common import (
    copy_and_switch,
    host_label,
    switched_probe,
    user_switch,
)

NOTEBOOK: Final = "09-update"


def update(ctx: Context, vm: VM) -> Step:
    how = user_switch(ctx, vm)
    return Step(
        f"update {vm.name} (vm/copy + vm/switch as {ctx.dep.user})",
        host_label(ctx, vm),
        how.commands,
        probe=lambda: switched_probe(ctx, vm),
        action=lambda: copy_and_switch(ctx, how),
        remote=True,
    )
