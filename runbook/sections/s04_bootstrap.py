"""04 部署流程速查 5 + 关键经验 3, 5, 7: copy the config and switch, as root the first time.

Lesson 3: the toplevel is built locally before any switch, and a root session is held open
across the switch so sshd can be repaired (`ssh-keygen -A`) if it lost its host keys.
Lesson 7: after the switch root cannot log in; the next step proves the user + key works.
"""

from __future__ import annotations

from typing import Final

from runbook.errors import RunbookError
from runbook.params import VM
from runbook.sections import s00_preflight
from runbook.sections.common import host_label, login_works, make_argv, render, run_make, ssh_render
from runbook.steps import Check, Context, Step

NOTEBOOK: Final = "04-bootstrap"
REPAIR_SSHD: Final = "ssh-keygen -A && systemctl restart sshd"


def _installed(ctx: Context, vm: VM) -> Check:
    try:
        return login_works(ctx, vm)
    except RunbookError:  # not installed yet, or sshd down: the switch runs
        return Check(False)


def copy(ctx: Context, vm: VM) -> Step:
    argv = make_argv(ctx, "vm/copy", vm, user="root", name=False)
    b = ctx.dep.bootstrap
    return Step(
        f"copy nixos-config to {vm.name} (vm/copy as root)",
        host_label(ctx, vm, installed=False),
        [render(argv)],
        probe=lambda: _installed(ctx, vm),
        action=lambda: run_make(argv, ctx.secret(b.password_secret, b.password_env)),
        remote=True,
    )


def switch(ctx: Context, vm: VM) -> Step:
    argv = make_argv(ctx, "vm/switch", vm, user="root")
    b = ctx.dep.bootstrap

    def apply() -> str:
        keeper = ctx.connection(vm, installed=False)
        keeper.connect()  # held open across the switch (lesson 3)
        detail = run_make(argv, ctx.secret(b.password_secret, b.password_env))
        try:
            login_works(ctx, vm)
        except RunbookError:
            print(
                "      fresh SSH failed after the switch: repairing host keys over the kept session"
            )
            keeper.run(REPAIR_SSHD)
        return detail

    return Step(
        f"switch {vm.name} (vm/switch as root)",
        host_label(ctx, vm, installed=False),
        [
            render(argv),
            "# if a fresh SSH login fails afterwards, over the kept root session:",
            ssh_render(ctx, vm, REPAIR_SSHD, installed=False),
        ],
        probe=lambda: _installed(ctx, vm),
        action=apply,
        remote=True,
    )


def user_login(ctx: Context, vm: VM) -> Step:
    def require() -> str:
        check = login_works(ctx, vm)
        if not check.done:
            from runbook.errors import RunbookError

            raise RunbookError("sudo -n failed for the user: check wheelNeedsPassword = false")
        return check.reason

    return Step(
        f"fresh SSH login to {vm.name} as {ctx.dep.user} + key, sudo (lesson 7)",
        host_label(ctx, vm),
        [ssh_render(ctx, vm, "sudo -n true")],
        probe=lambda: login_works(ctx, vm),
        action=require,
        remote=True,
    )


def steps(ctx: Context) -> list[Step]:
    out: list[Step] = []
    for vm in ctx.dep.vms:
        out += [
            s00_preflight.toplevel_build(ctx, vm),
            copy(ctx, vm),
            switch(ctx, vm),
            user_login(ctx, vm),
        ]
    return out
