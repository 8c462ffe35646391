"""04 部署流程速查 5 + 关键经验 3, 5, 7: copy the config and switch, as root the first time.

Lesson 3: the toplevel is built locally before any switch, and a root session is held open
across the switch so sshd can be repaired (`ssh-keygen -A`) if it lost its host keys.
Lesson 7: after the switch root cannot log in; the next step proves the user + key works.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from runbook.core.errors import (
    AuthenticationRefusedError,
    CommandError,
    ConnectError,
    HostKeyChangedError,
    RunbookError,
)
from runbook.core.models import Elevate, Result
from runbook.core.params import VM
from runbook.engine.steps import Check, Context, Step
from runbook.sections import s00_preflight  # noqa: F401 - its cells call s.s00_preflight.toplevel_build
from runbook.sections.common import (
    ATTICD_ENV,
    fresh_login_check,
    host_label,
    installed_root_password,
    login_works,
    make_command,
    make_result,
    recipe_exit,
    remote_script,
    render,
    run_make,
)
from runbook.sections.vm_console import key_fingerprint, parse_public_keys, pin_host_keys
from runbook.transport.commands import RemoteScript
from runbook.transport.remote import Connection

logger: Final = logging.getLogger(__name__)

NOTEBOOK: Final = "04-bootstrap"
REPAIR_SSHD: Final = "ssh-keygen -A && systemctl restart sshd"
HOST_KEYS_PUB: Final = "/etc/ssh/ssh_host_*_key.pub"
# switch-to-configuration's exit when the new system is active but a unit failed to start
UNIT_FAILED: Final = 4
_FAILED_UNITS: Final = re.compile(r"the following units failed: ([^\n]*)")


def _installed(ctx: Context, vm: VM) -> Check:
    try:
        return login_works(ctx, vm)
    except HostKeyChangedError:
        raise  # never taken for "not installed yet": only bootstrap0 replaces a key
    except RunbookError:  # not switched yet (no user), or sshd down: the step runs
        return Check(False)


def root_session(ctx: Context, vm: VM) -> Connection:
    """root with bootstrap0's password (lesson 7: not the live ISO's), host key checked
    strictly: the Makefile's own ssh checks none (UserKnownHostsFile=/dev/null, §1)."""
    return ctx.connection(vm, installed=False, password=installed_root_password(ctx))


def root_login(ctx: Context, vm: VM, script: str = "true") -> RemoteScript:
    """`script` over root's session with bootstrap0's password (`root_session`)."""
    return remote_script(ctx, vm, script, installed=False, password=installed_root_password(ctx))


def copy(ctx: Context, vm: VM) -> Step:
    login = root_login(ctx, vm)  # the host key learned before make's ssh checks it strictly
    make = make_command(ctx, "vm/copy", vm, user="root", name=False)

    def apply() -> str:
        ctx.execute(login)
        return run_make(make, installed_root_password(ctx))

    return Step(
        f"copy nixos-config to {vm.name} (vm/copy as root)",
        host_label(ctx, vm, installed=False),
        [login, make],
        probe=lambda: _installed(ctx, vm),
        action=apply,
        remote=True,
    )


def switch(ctx: Context, vm: VM) -> Step:
    make = make_command(ctx, "vm/switch", vm, user="root")
    argv = list(make.argv)

    def apply() -> str:
        keeper = root_session(ctx, vm)  # connected: held open across the switch (lesson 3)
        result = make_result(make, installed_root_password(ctx))
        code = recipe_exit(result) if result.exit_code != 0 else 0
        if code not in (0, UNIT_FAILED):
            raise _failed(vm, argv, result, code)
        fresh = fresh_login(ctx, vm, keeper)
        if code == UNIT_FAILED:
            return f"{atticd_pending(ctx, vm, argv, result)}; {fresh}"
        return f"{make_target_done(result)}; {fresh}"

    return Step(
        f"switch {vm.name} (vm/switch as root)",
        host_label(ctx, vm, installed=False),
        [
            make,
            "# then a fresh login must work (lesson 3):",
            fresh_login_check(ctx, vm),
            "# if it fails, over the root session kept open across the switch:",
            root_login(ctx, vm, REPAIR_SSHD),
        ],
        probe=lambda: _installed(ctx, vm),
        action=apply,
        remote=True,
    )


def make_target_done(result: Result) -> str:
    return f"vm/switch finished in {result.duration:.1f}s"


def _failed(vm: VM, argv: list[str], result: Result, code: int | None) -> CommandError:
    return CommandError(
        host=vm.name,
        command=render(argv),
        exit_code=code if code is not None else result.exit_code,
        stderr=result.stderr or result.stdout,
    )


def fresh_login(ctx: Context, vm: VM, keeper: Connection) -> str:
    """Lesson 3: a new SSH connection (the user + key, sudo) must work after the switch; if
    it cannot connect, `ssh-keygen -A` + sshd restart over the kept root session, then again."""
    try:
        check = login_works(ctx, vm)
    except HostKeyChangedError:
        raise
    except AuthenticationRefusedError as exc:  # sshd and its host keys are fine: no repair
        raise key_not_authorized(ctx, vm, exc) from None
    except ConnectError as exc:
        print(
            f"      fresh SSH failed after the switch ({exc}): repairing sshd over the kept session"
        )
        if not keeper.connected:
            raise RunbookError(
                f"fresh SSH to {vm.name} fails after the switch and the kept root session is "
                "gone: recover through the console (notebook 90)"
            ) from None
        repair_over(ctx, vm, keeper)
        check = login_works(ctx, vm)  # raises again if the repair did not help
        if check.done:
            return (
                f"fresh SSH failed after the switch; repaired over the kept session: {check.reason}"
            )
    if not check.done:
        raise RunbookError("sudo -n failed for the user: check wheelNeedsPassword = false")
    return f"fresh SSH login: {check.reason}"


def key_not_authorized(ctx: Context, vm: VM, exc: AuthenticationRefusedError) -> RunbookError:
    """sshd answered with the known host key and refused the key: the configuration does not
    authorize it (lesson 7), which `ssh-keygen -A` cannot mend. Short: a step's error shows
    its last 400 characters."""
    user = ctx.dep.user
    logger.info("%s: %s", vm.name, exc)
    return RunbookError(
        f"the key is not authorized for {user} on {vm.name}: sshd refused {ctx.dep.identity} "
        "with its host keys intact (nothing repaired); add its .pub to users.users."
        f"{user}.openssh.authorizedKeys.keys (doctor check user-key-authorized) and switch "
        "again, from the console if root's login is off (notebook 90)"
    )


def repair_over(ctx: Context, vm: VM, keeper: Connection) -> None:
    """`ssh-keygen -A` + sshd restart over the kept session; the keys it made are read back
    over that same session (authenticated with the key known before) and pinned, as 90 pins
    the ones read on the console: a fresh connection then checks them strictly."""
    keeper.run(REPAIR_SSHD, elevate=Elevate.SUDO)
    listed = keeper.run(f"cat {HOST_KEYS_PUB}", elevate=Elevate.SUDO).stdout
    keys = parse_public_keys(listed)
    if not keys:
        raise RunbookError(f"no host keys in {HOST_KEYS_PUB} on {vm.name} after ssh-keygen -A")
    pin_host_keys(ctx.dep.known_hosts_path, vm.address, vm.port, keys)
    shown = ", ".join(f"{kind} {key_fingerprint(blob)}" for kind, blob in keys)
    print(f"      host keys now (read over the kept session, pinned): {shown}")


def atticd_pending(ctx: Context, vm: VM, argv: list[str], result: Result) -> str:
    """The one non-zero switch accepted: the cache VM's atticd cannot start before its env file
    exists (notebook 05 installs it), so switch-to-configuration exits 4. Anything else fails."""
    units = _FAILED_UNITS.findall(result.stdout + "\n" + result.stderr)
    failed = set(units[-1].replace(",", " ").split()) if units else set()
    if vm.name != ctx.dep.cache.vm or failed != {"atticd.service"}:
        raise _failed(vm, argv, result, UNIT_FAILED)
    env = ctx.connection(vm).run(["test", "-e", ATTICD_ENV], elevate=Elevate.SUDO, check=False)
    if env.ok:
        raise _failed(vm, argv, result, UNIT_FAILED)  # atticd failed for another reason
    print(
        f"      nixos-rebuild exited {UNIT_FAILED}: atticd.service failed because {ATTICD_ENV} "
        "is not there yet; notebook 05 installs it and starts atticd (accepted)"
    )
    return (
        f"switched; atticd.service failed as expected ({ATTICD_ENV} missing until 05), "
        f"nixos-rebuild exit {UNIT_FAILED} accepted"
    )


def user_login(ctx: Context, vm: VM) -> Step:
    def probe() -> Check:
        try:
            return login_works(ctx, vm)
        except AuthenticationRefusedError as exc:
            raise key_not_authorized(ctx, vm, exc) from None

    def require() -> str:
        check = probe()
        if not check.done:
            raise RunbookError("sudo -n failed for the user: check wheelNeedsPassword = false")
        return check.reason

    return Step(
        f"fresh SSH login to {vm.name} as {ctx.dep.user} + key, sudo (lesson 7)",
        host_label(ctx, vm),
        [fresh_login_check(ctx, vm)],
        probe=probe,
        action=require,
        remote=True,
    )
