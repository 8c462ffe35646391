"""03 部署流程速查 3-4: `make vm/bootstrap0` partitions and installs (wipes the disk), then
remove the ISO and boot from disk. The wipe is dangerous: a deploy needs --yes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from runbook.core.errors import CommandError, ConnectError, HostKeyChangedError, RunbookError
from runbook.core.params import VM
from runbook.core.secrets import Secret
from runbook.engine.steps import Check, Context, Step, record_address, run_addresses
from runbook.mac import utm
from runbook.sections.common import (
    host_label,
    installed_root_password,
    known_fingerprints,
    login_works,
    make_command,
    make_result,
    recipe_exit,
    remote_probe,
    remote_script,
)
from runbook.sections.s01_create_vm import listed
from runbook.sections.s02_console import stored_live_password
from runbook.sections.vm_console import MacSide, mac_side, resolve
from runbook.transport.commands import Command, LocalCommand, RemoteScript
from runbook.transport.hostkeys import entry_name
from runbook.transport.remote import Connection

NOTEBOOK: Final = "03-bootstrap0"
MAKEFILE_DISK: Final = (
    "/dev/sda"  # hard-coded in vm/bootstrap0 since 91ea7bd (utm-makefile-keys.md §1)
)
# Installed, not the live ISO: the ISO has /iso mounted; an installed NixOS has /etc/NIXOS. [infer]
INSTALLED_SCRIPT: Final = "test -e /etc/NIXOS && ! test -e /iso"
SSH_DROPPED: Final = 255  # ssh's exit when the reboot closes the session under it
REBOOT_TIMEOUT: Final = 180.0
# Then the address is looked up again, and again every RESOLVE_EVERY: a reboot may bring a
# new DHCP lease (lesson 8), and the reinstalled system asks as a new client.
SAME_ADDRESS_WAIT: Final = 10.0
RESOLVE_EVERY: Final = 10.0
LOGIN_TIMEOUT: Final = 5.0
INSTALL_FINISHED: Final = "installation finished!"  # nixos-install's last line
STOP_TIMEOUT: Final = 60.0  # a guest asked to power down gets this long, then it is forced


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


def live_login(ctx: Context, vm: VM) -> RemoteScript:
    """The live ISO's root login, its host key checked strictly before anything is wiped."""
    return remote_script(ctx, vm, "true", installed=False)


def bootstrap0(ctx: Context, vm: VM) -> Step:
    make = make_command(ctx, "vm/bootstrap0", vm)
    disk = vm.disk_interface.device
    note = f"wipes {disk} on {vm.name}"
    cmds: list[Command | str] = [
        live_login(ctx, vm),
        "# it ends in reboot; afterwards root logs in with bootstrap0's password, and the new",
        "# host keys of the reinstall replace the known ones here only (old and new logged):",
        make,
    ]
    if disk != MAKEFILE_DISK:
        cmds.insert(
            0,
            f"# the Makefile partitions {MAKEFILE_DISK}; this VM's disk is {disk}: "
            f"`runbook doctor {ctx.loaded.path}` names the fix (makefile-disk-device)",
        )
    return Step(
        f"bootstrap0 {vm.name}",
        host_label(ctx, vm, installed=False),
        cmds,
        probe=installed_probe(ctx, vm),
        action=lambda: install(ctx, vm, make, live_root_password(ctx)),
        remote=True,
        dangerous=True,
        note=note,
    )


def live_root_password(ctx: Context) -> Secret:
    """The live ISO's root password 02 set on the console (the runbook's own, or the user's)."""
    found = stored_live_password(ctx)
    if found is None:
        b = ctx.dep.bootstrap
        raise RunbookError(
            f"no live root password in {ctx.store.path(b.password_secret)} or "
            f"${b.password_env}: notebook 02 makes one and sets it on the console; run 02 first"
        )
    return found


def install(ctx: Context, vm: VM, make: LocalCommand, live_password: Secret | None) -> str:
    """vm/bootstrap0, then the installed system's identity: new host keys, expected here."""
    ctx.execute(live_login(ctx, vm))
    name = entry_name(vm.address, vm.port)
    known = ctx.dep.known_hosts_path
    before = known_fingerprints(known, name)
    result = make_result(make, live_password)
    code = recipe_exit(result)
    # `nixos-install ... && reboot` drops the session: ssh may report 255 for it, but only
    # after nixos-install said it finished
    finished = INSTALL_FINISHED in result.stdout + result.stderr
    if result.exit_code != 0 and not (code == SSH_DROPPED and finished):
        raise CommandError(
            host=vm.name, command=make.render(), exit_code=code or result.exit_code,
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


def back_after_reboot(
    ctx: Context,
    vm: VM,
    *,
    login: Callable[[Context, VM, str], bool] = reinstalled_login,
    who: str = "root with bootstrap0's password",
    after: str = "bootstrap0's reboot",
) -> str:
    """Where the VM answers (`login` works) once back from a reboot: this run's address, else,
    if it stays silent, wherever it is found now, looked up every RESOLVE_EVERY seconds
    (lesson 8: a reboot may bring a new lease); kept for the rest of the run. Nothing is
    typed on the console: after a reboot it shows a login prompt."""
    start = time.monotonic()
    address, method = vm.address, ""
    next_lookup = start + SAME_ADDRESS_WAIT
    mac: MacSide | None = None
    while not login(ctx, vm, address):
        now = time.monotonic()
        if now - start > REBOOT_TIMEOUT:
            raise RunbookError(
                f"{vm.name} did not come back from {after} within {REBOOT_TIMEOUT:g}s "
                f"({who} at {address}): check its console"
            )
        if now >= next_lookup:
            next_lookup = now + RESOLVE_EVERY
            try:
                mac = mac or mac_side(ctx)
                found = resolve(mac, vm, None, typing=False, timeout=RESOLVE_EVERY * 2)
            except RunbookError as exc:
                print(f"      {vm.name}: not found yet after {after} ({exc})")
            else:
                if found.address != address:
                    print(f"      {vm.name}: now at {found.address} (found by {found.method})")
                address, method = found.address, found.method
        time.sleep(0.3)
    if address != vm.address:
        record_address(ctx.record_dir, vm.name, address, method)
    return address


def this_run(ctx: Context, vm: VM) -> VM:
    """`vm` at the address this run found last (02, or a reboot earlier in this notebook)."""
    found = run_addresses(ctx.record_dir).get(vm.name) if ctx.record_dir else None
    return vm.model_copy(update={"address": found["address"]}) if found else vm


def installed_login(ctx: Context, vm: VM, address: str) -> bool:
    """The installed system answers at `address`: the user with the key (after 04), else root
    with bootstrap0's password (before 04; lesson 7). Host keys are checked strictly: removing
    the ISO changes no key, so a changed one fails the step instead of being taken."""
    for installed, password in ((True, None), (False, installed_root_password(ctx))):
        host = ctx.dep.host(vm, installed=installed, address=address)
        try:
            with Connection(host, password=password, connect_timeout=LOGIN_TIMEOUT) as conn:
                if conn.run(INSTALLED_SCRIPT, check=False).ok:
                    return True
        except HostKeyChangedError:
            raise
        except (ConnectError, CommandError):
            continue  # not this identity (or not up yet)
    return False


def remove_iso(ctx: Context, vm: VM) -> Step:
    """部署流程速查 4: the ISO out of the VM's removable drive in UTM, then boot from disk.

    Already done when no removable drive holds an image (`utm.attached_isos`, read-only) and
    the VM is not left stopped (a run that failed after the removal starts it on the rerun).
    Otherwise: stop the VM if it runs (UTM changes a configuration only while it is stopped,
    utm-makefile-keys.md §3), drop its removable drives (`utm.remove_iso`), start it, and wait
    until the installed system answers on SSH, wherever it is now (a boot may bring a new
    DHCP lease, lesson 8: it is looked up again, as after bootstrap0's reboot).
    """
    mac = mac_side(ctx)
    wait = (
        f"# then an SSH login at {vm.address}: {ctx.dep.user} with the key, else root with "
        "bootstrap0's password"
    )
    cmds: list[Command | str] = [
        "# already done when no removable drive holds an image (read-only):",
        utm.applescript_command(utm.DRIVES_SCRIPT, vm.name, osascript=mac.osascript),
        "# UTM changes a configuration only while the VM is stopped (§3); if it runs:",
        utm.utmctl_command(mac.utmctl, "stop", vm.name, "--request"),
        f"# then `--force` if it still runs after {STOP_TIMEOUT:g}s",
        utm.applescript_command(utm.REMOVE_ISO_SCRIPT, vm.name, osascript=mac.osascript),
        utm.utmctl_command(mac.utmctl, "start", vm.name),
        wait,
    ]

    def probe() -> Check:
        found = listed(mac, vm)  # unchecked without UTM, TODO when UTM has no such VM
        if isinstance(found, Check):
            return found
        isos = utm.attached_isos(vm.name, osascript=mac.osascript)
        if isos:
            return Check(False, f"{len(isos)} removable drive(s) hold an image")
        if found.status is utm.VmStatus.STOPPED:  # e.g. a run that failed after the removal
            return Check(False, "no ISO, but the VM is stopped: it still has to boot from disk")
        return Check(True, f"no ISO attached to {vm.name} in {mac.where}")

    return Step(
        f"remove the ISO from {vm.name} and boot from disk",
        "localhost (UTM)",
        cmds,
        probe=probe,
        action=lambda: boot_from_disk(ctx, mac, this_run(ctx, vm)),  # bootstrap0 may move it
    )


def boot_from_disk(ctx: Context, mac: MacSide, vm: VM) -> str:
    """Stop (if running), remove the ISO, start; then wait for the installed system's login."""
    now = utm.status(vm.name, utmctl=mac.utmctl)
    if now is not utm.VmStatus.STOPPED:
        # without the installed system answering, the ISO is all the VM could boot
        if not installed_login(ctx, vm, vm.address):
            raise RunbookError(
                f"{vm.name} does not answer as an installed system at {vm.address}: run "
                "bootstrap0 first (without the ISO it would have nothing to boot)"
            )
        _stop(mac, vm)
    removed = utm.remove_iso(vm.name, utmctl=mac.utmctl, osascript=mac.osascript)
    utm.start(vm.name, utmctl=mac.utmctl)
    who = f"{ctx.dep.user} with the key, or root with bootstrap0's password"
    address = back_after_reboot(ctx, vm, login=installed_login, who=who, after="the restart")
    return (
        f"removed {removed} removable drive(s) from {vm.name} in UTM; started from disk "
        f"(was {now}); answers at {address}"
    )


def _stop(mac: MacSide, vm: VM) -> None:
    """`utmctl stop --request` (the guest shuts down cleanly), `--force` if it lingers."""
    for mode in (utm.StopMode.REQUEST, utm.StopMode.FORCE):
        utm.stop(vm.name, mode=mode, utmctl=mac.utmctl)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if utm.status(vm.name, utmctl=mac.utmctl) is utm.VmStatus.STOPPED:
                return
            time.sleep(1.0)
    raise RunbookError(f"{vm.name} is still not stopped after `utmctl stop {vm.name} --force`")
