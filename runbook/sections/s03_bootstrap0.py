"""03 部署流程速查 3-4: `make vm/bootstrap0` partitions and installs (wipes the disk), then
remove the ISO and boot from disk. The wipe is dangerous: a deploy needs --yes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from runbook.errors import CommandError, ConnectError, HostKeyChangedError, RunbookError
from runbook.hostkeys import entry_name
from runbook.params import VM
from runbook.remote import Connection
from runbook.secrets import Secret
from runbook.sections.common import (
    host_label,
    installed_root_password,
    known_fingerprints,
    login_works,
    make_argv,
    make_result,
    osascript,
    recipe_exit,
    remote_probe,
    render,
    utmctl,
)
from runbook.sections.vm_console import MacSide, VmConsole, mac_side, open_console, resolve
from runbook.steps import Check, Context, Step, record_address

NOTEBOOK: Final = "03-bootstrap0"
MAKEFILE_DISK: Final = (
    "/dev/sda"  # hard-coded in vm/bootstrap0 since 91ea7bd (utm-makefile-keys.md §1)
)
# Installed, not the live ISO: the ISO has /iso mounted; an installed NixOS has /etc/NIXOS. [infer]
INSTALLED_SCRIPT: Final = "test -e /etc/NIXOS && ! test -e /iso"
SSH_DROPPED: Final = 255  # ssh's exit when the reboot closes the session under it
REBOOT_TIMEOUT: Final = 180.0
SAME_ADDRESS_WAIT: Final = 30.0  # then the address is looked up again (lesson 8)
LOGIN_TIMEOUT: Final = 5.0
INSTALL_FINISHED: Final = "installation finished!"  # nixos-install's last line


def installed_probe(ctx: Context, vm: VM) -> Callable[[], Check]:
    """Installed already? As the installed user + key (after vm/bootstrap root cannot log in
    any more, lesson 7), then as root with bootstrap0's password (installed, not switched
    yet), then as root on the live ISO. A changed host key is never taken here: it fails."""
    after_bootstrap0 = remote_probe(
        ctx, vm, INSTALLED_SCRIPT, installed=False, password=installed_root_password(ctx)
    )
    live = remote_probe(ctx, vm, INSTALLED_SCRIPT, installed=False)

    def probe() -> Check:
        checks: list[Callable[[], Check]] = [lambda: login_works(ctx, vm), after_bootstrap0]
        for check in checks:
            try:
                if (found := check()).done:
                    return Check(True, f"installed: {found.reason or 'bootstrap0 ran'}")
            except HostKeyChangedError:
                raise
            except RunbookError:
                pass  # not this identity yet: the next one
        return live()

    return probe


def bootstrap0(ctx: Context, vm: VM) -> Step:
    argv = make_argv(ctx, "vm/bootstrap0", vm)
    disk = vm.disk_interface.device
    note = f"wipes {disk} on {vm.name}"
    cmds = [
        "# it ends in reboot; afterwards root logs in with bootstrap0's password, and the new",
        "# host keys of the reinstall replace the known ones here only (old and new logged):",
        render(argv),
    ]
    if disk != MAKEFILE_DISK:
        cmds.insert(
            0,
            f"# the Makefile partitions {MAKEFILE_DISK}; this VM's disk is {disk}: "
            f"runbook doctor {ctx.dep.nixos_config} --fix first",
        )
    b = ctx.dep.bootstrap
    return Step(
        f"bootstrap0 {vm.name}",
        host_label(ctx, vm, installed=False),
        cmds,
        probe=installed_probe(ctx, vm),
        action=lambda: install(ctx, vm, argv, ctx.secret(b.password_secret, b.password_env)),
        remote=True,
        dangerous=True,
        note=note,
    )


def install(ctx: Context, vm: VM, argv: list[str], live_password: Secret | None) -> str:
    """vm/bootstrap0, then the installed system's identity: new host keys, expected here."""
    # the live ISO's key, checked strictly before anything is wiped
    ctx.connection(vm, installed=False).run("true")
    name = entry_name(vm.address, vm.port)
    known = ctx.dep.known_hosts_path
    before = known_fingerprints(known, name)
    result = make_result(argv, live_password)
    code = recipe_exit(result)
    # `nixos-install ... && reboot` drops the session: ssh may report 255 for it, but only
    # after nixos-install said it finished
    finished = INSTALL_FINISHED in result.stdout + result.stderr
    if result.exit_code != 0 and not (code == SSH_DROPPED and finished):
        raise CommandError(
            host=vm.name, command=render(argv), exit_code=code or result.exit_code,
            stderr=result.stderr or result.stdout,
        )  # fmt: skip
    address = back_after_reboot(ctx, vm)
    after = known_fingerprints(known, entry_name(address, vm.port))
    old, new = ", ".join(before) or "none known", ", ".join(after)
    print(f"      host key of {name}: was {old}; now {new} (reinstalled: replaced as expected)")
    return (
        f"installed in {result.duration:.1f}s; back at {address}; host key {old} -> {new}; "
        f"root now logs in with bootstrap0's password (lesson 7)"
    )


def reinstalled_login(ctx: Context, vm: VM, address: str) -> bool:
    """root logs in at `address` with bootstrap0's password and the system is installed.
    The one place a changed host key is accepted: this step has just reinstalled the VM."""
    host = ctx.dep.host(vm, installed=False, address=address)
    password = installed_root_password(ctx)
    try:
        with Connection(
            host, password=password, replace_host_key=True, connect_timeout=LOGIN_TIMEOUT
        ) as conn:
            return conn.run(INSTALLED_SCRIPT, check=False).ok
    except (ConnectError, CommandError):
        return False  # still rebooting (or still the live ISO's sshd): again


def back_after_reboot(ctx: Context, vm: VM) -> str:
    """Where the VM answers once back from bootstrap0's reboot: this run's address, else, if
    it stays silent, wherever it is found now (lesson 8: a reboot may change it); kept for
    the rest of the run."""
    start = time.monotonic()
    address = vm.address
    while not reinstalled_login(ctx, vm, address):
        waited = time.monotonic() - start
        if waited > REBOOT_TIMEOUT:
            raise RunbookError(
                f"{vm.name} did not come back from bootstrap0's reboot within {REBOOT_TIMEOUT:g}s "
                f"(root with bootstrap0's password at {address}): check its console"
            )
        if waited > SAME_ADDRESS_WAIT and address == vm.address:
            try:
                mac = mac_side(ctx)
                found = resolve(mac, vm, _console(ctx, mac, vm))
            except RunbookError:
                continue
            address = found.address
            record_address(ctx.record_dir, vm.name, address, found.method)
        time.sleep(0.3)
    return address


def _console(ctx: Context, mac: MacSide, vm: VM) -> VmConsole | None:
    try:
        return open_console(ctx, mac, vm)
    except RunbookError:
        return None


def remove_iso(ctx: Context, vm: VM) -> Step:
    # update configuration needs a stopped VM and drops every drive left out (§3).
    script = [
        'tell application "UTM"',
        f'set vm to virtual machine named "{vm.name}"',
        "set config to configuration of vm",
        "set drives of config to (items 2 thru -1 of drives of config)",
        "update configuration of vm with config",
        "end tell",
    ]
    return Step(
        f"remove the ISO from {vm.name} and boot from disk",
        "localhost (UTM)",
        [
            render([utmctl(ctx), "stop", vm.name]),
            osascript(script),
            render([utmctl(ctx), "start", vm.name]),
        ],
        probe=installed_probe(ctx, vm),
        remote=True,
        # runbook.utm.remove_iso can do it, but this check (installed?) cannot tell whether the
        # ISO is still attached, so a rerun could not say "already done": by hand until it can
        plan_only="its check cannot see UTM's drives yet (runbook.utm.remove_iso does the removal)",
    )


def steps(ctx: Context) -> list[Step]:
    return [s for vm in ctx.dep.vms for s in (bootstrap0(ctx, vm), remove_iso(ctx, vm))]
