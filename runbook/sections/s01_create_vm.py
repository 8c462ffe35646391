"""01 部署流程速查 1: create each VM in UTM (bridged network, booting the NixOS ISO), start it.

Through runbook.mac.utm: one `make new virtual machine` whose configuration record holds every
setting (RAM, cores, the bridged NIC with its MAC, a display, the disk's interface and, where
known, a TCP serial console; `utm.create_vm_record`), so a failure leaves no VM behind, and
`utmctl list/status/start` (§2). A VM of that name counts as done only when UTM's configuration,
read back (`utm.vm_config`), has what the later notebooks need (`utm.config_differences`); one
that exists but differs is a failing check that says what differs, never created twice. The
checks are unchecked where the params' utmctl cannot run (runbook.mac.utm.can_run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from runbook.core.errors import InputError, RunbookError
from runbook.core.params import VM, Deployment
from runbook.engine.steps import DONE, TODO, Check, Context, Step, unchecked
from runbook.mac import iso as nixos_iso
from runbook.mac import utm
from runbook.sections.vm_console import MacSide, mac_side
from runbook.transport.commands import LocalCommand

NOTEBOOK: Final = "01-create-vm"
ISO_PLACEHOLDER: Final = "/path/to/nixos-minimal-aarch64.iso"
EXISTS: Final = {"stopped", "starting", "started", "pausing", "paused", "resuming", "stopping"}


def iso_source(dep: Deployment) -> nixos_iso.IsoSource | None:
    """Where `utm.iso: auto` comes from and is kept; None when the params name a file."""
    if dep.utm.iso != "auto":
        return None
    return nixos_iso.source(dep.utm.iso_release, dep.utm.iso_mirror)


def iso_path(dep: Deployment) -> Path | None:
    """The ISO 01 boots the VMs from: the params' file, or the cached `auto` one."""
    src = iso_source(dep)
    if src is not None:
        return src.path
    return dep.utm.iso if isinstance(dep.utm.iso, Path) else None


def iso_plan(dep: Deployment) -> list[str]:
    """What `utm.iso: auto` does before the first VM is made: nothing once it is cached."""
    src = iso_source(dep)
    if src is None:
        return []
    if src.cached():
        return [f"# utm.iso auto: NixOS {src.release} ISO cached at {src.path}"]
    return [
        f"# utm.iso auto: download the NixOS {src.release} ISO once, checked against its SHA-256:",
        f"GET {src.checksum_url} (from here: the published SHA-256)",
        f"GET {src.url} -> {src.part} (hashed as it comes)",
        f"# the hash must match, then {src.part} is renamed {src.path}",
    ]


def ensure_iso(dep: Deployment) -> Path | None:
    """The ISO to boot from, downloading `utm.iso: auto` if it is not cached yet (one
    download however many VMs are created in parallel: runbook.mac.iso locks it)."""
    src = iso_source(dep)
    if src is not None:
        return nixos_iso.ensure(src)
    return iso_path(dep)


def new_vm(ctx: Context, mac: MacSide, vm: VM) -> utm.NewVm:
    """What UTM is asked to make for `vm`, from the params: the ISO, the bridged interface,
    the VM's MAC when given (else UTM picks one, read back from its configuration later) and
    a TCP serial console at `console.serial_port` + the VM's index when that is set."""
    serial = ctx.dep.console.serial_port
    return utm.NewVm(
        name=vm.name,
        iso=iso_path(ctx.dep) or Path(ISO_PLACEHOLDER),
        host_interface=mac.host_interface,
        disk_interface=vm.disk_interface.value,
        mac=vm.mac,
        serial_tcp_port=serial + ctx.dep.vms.index(vm) if serial is not None else None,
    )


def _script_command(mac: MacSide, spec: utm.NewVm) -> LocalCommand:
    address = utm.normalize_mac(spec.mac) if spec.mac else ""  # as utm.create_vm sends it
    script = utm.create_vm_script(spec)
    args = (spec.name, str(spec.iso), spec.host_interface, address)
    return utm.applescript_command(script, *args, osascript=mac.osascript)


def listed(mac: MacSide, vm: VM) -> utm.VmEntry | Check:
    """The VM's row in `utmctl list` (its status column is `utmctl status`, §2), or the
    check that says why there is none: TODO when UTM does not have it."""
    if not utm.can_run(mac.utmctl):
        return unchecked(f"UTM is not on this machine (no utmctl at {mac.utmctl}: utm.utmctl)")
    if not Path(mac.utmctl).exists():
        return unchecked(f"utmctl not found at {mac.utmctl} (params utm.utmctl)")
    found = utm.find_vm(vm.name, utmctl=mac.utmctl)
    return TODO if found is None else found


def made_as_asked(mac: MacSide, spec: utm.NewVm, vm: VM) -> Check:
    """Done when UTM has the VM and its configuration matches `spec`; TODO without it; a
    failing check naming each difference when it exists but differs."""
    found = listed(mac, vm)
    if isinstance(found, Check):
        return found
    config = utm.vm_config(vm.name, osascript=mac.osascript)
    wrong = utm.config_differences(spec, config)
    if wrong:
        return Check(False, f"{vm.name} exists in UTM but differs: {'; '.join(wrong)}")
    return Check(True, f"utmctl status: {found.status}; {config.summary()}")


def create(ctx: Context, vm: VM) -> Step:
    mac = mac_side(ctx)
    spec = new_vm(ctx, mac, vm)
    note = "" if ctx.dep.utm.network == "bridged" else "utm.create_vm makes a bridged network"

    def probe() -> Check:
        return made_as_asked(mac, spec, vm)

    def action() -> str:
        if utm.find_vm(vm.name, utmctl=mac.utmctl) is not None:
            # never a second VM of the same name: the user decides what happens to this one
            wrong = utm.config_differences(spec, utm.vm_config(vm.name, osascript=mac.osascript))
            raise RunbookError(
                f"{vm.name} exists in UTM but differs ({'; '.join(wrong) or 'see the check'}): "
                f"fix it in UTM's settings, or delete it (`{mac.utmctl} delete {vm.name}`, its "
                "disk goes with it) and rerun 01"
            )
        found = ensure_iso(ctx.dep)
        if found is None or not found.is_file():
            raise InputError(
                f"utm.iso: the NixOS ISO to boot {vm.name} from is missing ({spec.iso})"
            )
        uuid = utm.create_vm(spec, osascript=mac.osascript)
        if utm.find_vm(vm.name, utmctl=mac.utmctl) is None:
            raise RunbookError(f"UTM made {uuid or 'no VM'} but `utmctl list` has no {vm.name}")
        wrong = utm.config_differences(spec, utm.vm_config(vm.name, osascript=mac.osascript))
        if wrong:
            raise RunbookError(f"UTM made {vm.name} ({uuid}) but it differs: {'; '.join(wrong)}")
        return f"created {vm.name} ({uuid}) with {mac.where}"

    return Step(
        f"create {vm.name} in UTM (bridged, ISO)",
        "localhost (UTM)",
        [
            *iso_plan(ctx.dep),
            "# already done when UTM has it as asked (read-only):",
            utm.utmctl_command(mac.utmctl, "list"),
            utm.applescript_command(utm.VM_CONFIG_SCRIPT, vm.name, osascript=mac.osascript),
            _script_command(mac, spec),
        ],
        probe=probe,
        action=action,
        note=note,
    )


def start(ctx: Context, vm: VM) -> Step:
    mac = mac_side(ctx)

    def probe() -> Check:
        found = listed(mac, vm)  # one utmctl call: list has the status column
        if isinstance(found, Check):
            return found
        started = found.status is utm.VmStatus.STARTED
        return DONE if started else Check(False, f"utmctl status: {found.status}")

    def action() -> str:
        utm.start(vm.name, utmctl=mac.utmctl)
        now = utm.status(vm.name, utmctl=mac.utmctl)
        if now not in (utm.VmStatus.STARTED, utm.VmStatus.STARTING):
            raise RunbookError(f"`utmctl start {vm.name}` left it {now}")
        return f"utmctl status: {now}"

    return Step(
        f"start {vm.name} from the ISO",
        "localhost (UTM)",
        [
            utm.utmctl_command(mac.utmctl, "start", vm.name),
            utm.utmctl_command(mac.utmctl, "status", vm.name),
        ],
        probe=probe,
        action=action,
    )
