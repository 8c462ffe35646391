"""The checks on the checkout's Makefile: the disk vm/bootstrap0 partitions, SSH options
that turn keys off, and NIXNAME's default on a Mac."""

from __future__ import annotations

import logging
import re
from typing import Final

from runbook.core.params import DiskInterface
from runbook.doctor.context import NO_PARAMS, DoctorContext
from runbook.doctor.model import DoctorCheck, Status, Verdict, check, ok, unchecked_verdict
from runbook.nix.makefile import Makefile

logger: Final = logging.getLogger(__name__)

_DEVICE: Final = re.compile(r"/dev/(\$\((\w+)\)|\$\{(\w+)\}|[A-Za-z0-9]+)")

CHECKS: Final[list[DoctorCheck]] = []


def _makefile(ctx: DoctorContext) -> Makefile | Verdict:
    if ctx.makefile is None:
        return unchecked_verdict("no Makefile in the checkout")
    return ctx.makefile


@check(CHECKS, "makefile-disk-device", "部署流程 3: vm/bootstrap0 partitions the VM's disk")
def check_makefile_disk_device(ctx: DoctorContext) -> Verdict:
    make = _makefile(ctx)
    if isinstance(make, Verdict):
        return make
    recipe = make.recipes.get("vm/bootstrap0")
    if recipe is None:
        return unchecked_verdict("the Makefile has no vm/bootstrap0 target")
    used: dict[str, int] = {}
    for number, line in recipe:
        for device in _devices(line, make):
            used.setdefault(device, number)
    if not used:
        return unchecked_verdict("vm/bootstrap0 names no /dev disk")
    dep = ctx.deployment
    vms = (
        {vm.name: vm.disk_interface for vm in dep.vms}
        if dep
        else {"(UTM default)": DiskInterface.VIRTIO}
    )
    wrong = [
        f"{name} has a {iface.value} disk ({iface.device})"
        for name, iface in vms.items()
        if set(used) != {iface.device}
    ]
    shown = ", ".join(f"{dev} (Makefile:{line})" for dev, line in used.items())
    if not wrong:
        return ok(f"vm/bootstrap0 partitions {shown}, the VMs' disk")
    fix = (
        "create the disk with interface SCSI in UTM (disk_interface: scsi in params), or change "
        f"{next(iter(used))} in vm/bootstrap0 to the VM's device (utm-makefile-keys.md §1)"
    )
    if dep is None:
        return Verdict(
            Status.WARN,
            f"vm/bootstrap0 partitions {shown}; {NO_PARAMS}: UTM's default VirtIO disk is /dev/vda",
            fix,
        )
    return Verdict(Status.FAIL, f"vm/bootstrap0 partitions {shown} but {'; '.join(wrong)}", fix)


def _devices(line: str, make: Makefile) -> list[str]:
    """Whole-disk devices in a recipe line, `$(VAR)` expanded from the Makefile's default."""
    found: list[str] = []
    for match in _DEVICE.finditer(line):
        name = match[2] or match[3]
        var = make.on_mac(name) if name else None
        device = "/dev/" + (var.value.strip() if var else match[1])
        if device.startswith("/dev/nvme"):
            device = re.sub(r"p\d+$", "", device)
        elif re.match(r"^/dev/[sv]d[a-z]", device):
            device = device.rstrip("0123456789")
        else:
            continue
        found.append(device)
    return found


@check(
    CHECKS,
    "makefile-password-ssh",
    "lesson 7: the Makefile's ssh options give way to the runbook's",
)
def check_makefile_password_ssh(ctx: DoctorContext) -> Verdict:
    make = _makefile(ctx)
    if isinstance(make, Verdict):
        return make
    # The runbook passes SSH_OPTIONS on make's command line (the key, IdentitiesOnly, the
    # deployment's known_hosts, StrictHostKeyChecking=yes): it wins over a plain assignment,
    # not over `override` (GNU make manual, "Overriding Variables", "The override Directive").
    pinned = make.overridden("SSH_OPTIONS")
    if pinned is not None:
        return Verdict(
            Status.FAIL,
            f"Makefile:{pinned.line}: `override SSH_OPTIONS` keeps the Makefile's ssh options "
            "against make's command line: the runbook's key and host-key checks cannot apply",
            "drop `override` from that line (a plain `SSH_OPTIONS=...` is fine)",
        )
    options = [v for v in make.variables if v.name == "SSH_OPTIONS"]
    off = [v for v in options if "PubkeyAuthentication=no" in v.value.replace(" ", "")]
    if off:
        return ok(
            f"Makefile:{off[0].line}: SSH_OPTIONS turns key authentication off; the runbook "
            "replaces it on make's command line (your key, host keys checked)"
        )
    return ok("SSH_OPTIONS is replaced on make's command line" if options else "no SSH_OPTIONS")


@check(CHECKS, "makefile-nixname-default", "部署流程: NIXNAME names the VM's configuration")
def check_makefile_nixname_default(ctx: DoctorContext) -> Verdict:
    make = _makefile(ctx)
    if isinstance(make, Verdict):
        return make
    var = make.on_mac("NIXNAME")
    if var is None:
        return ok("NIXNAME has no default on a Mac: the runbook passes NIXNAME=<vm>")
    value = var.value.strip()
    if value in ctx.systems:
        return ok(f"Makefile:{var.line}: NIXNAME defaults to {value}, a nixosConfiguration")
    return Verdict(
        Status.WARN,
        f"Makefile:{var.line}: on a Mac NIXNAME defaults to {value}, which is not one of "
        "flake.nix's nixosConfigurations (a darwin configuration)",
        "nothing to do: the runbook passes NIXNAME=<vm name> to every make target; by hand "
        "use `make vm/switch NIXNAME=vm-aarch64-utm`",
    )
