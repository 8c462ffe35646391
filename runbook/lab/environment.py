"""What `runbook lab up` hands the product: an ordinary deployment params file, and nothing
in the secret store (the live ISO's root password is the runbook's own: notebook 02 makes it,
stores it and types it with `passwd` on the console, whose real root shell really sets it).

The product reads both as it reads a Mac's: the params name the Mac-side programs (here the
stand-ins: `utm.utmctl`, `utm.osascript`, `console.hs`), the ISO, the bridged interface and
subnet, the VMs' serial ports (`console.serial_port`), the checkout, identity and known_hosts,
and the nix.conf lines of this machine's own nix calls (`local_nix_config`); every one is a
value a Mac user could set too. Nothing in the product asks whether it runs in the lab.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from runbook.core.errors import InputError
from runbook.lab import console
from runbook.lab.config import LabParams

PARAMS_FILE: Final = "params.yaml"  # in the lab's state dir, unless `lab up --out` says
# This machine's nix, for the product's local toplevel build (lesson 3): flakes on (Nix 2.8
# has them behind experimental-features), no build users (a test machine has no nixbld
# group: single-user as root), no sandbox (the lab flake's builder is the machine's /bin/sh),
# and no substituter: the build is offline, nothing is asked of cache.nixos.org.
LOCAL_NIX_CONFIG: Final = (
    "experimental-features = nix-command flakes\n"
    "build-users-group =\n"
    "sandbox = false\n"
    "substituters =\n"
)
# The first serial port tried: one block per lab (by its subnet), so labs run side by side.
SERIAL_BASE: Final = 24000
SERIAL_BLOCK: Final = 16


@dataclass(frozen=True)
class Environment:
    """A lab's deployment: which VM each host plays and the VMs' serial ports."""

    plays: dict[str, console.Plays]  # host name -> the VM it plays
    serial_port: int  # params console.serial_port: VM i's is serial_port + i
    template: dict[str, Any]  # the lab file without `lab:`


def vm_names(template: dict[str, Any]) -> list[str]:
    vms = template.get("vms") or []
    return [str(v.get("name")) for v in vms if isinstance(v, dict)]


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((console.LOOPBACK, port))
        except OSError:
            return False
    return True


def choose_serial_port(lab: LabParams, count: int, previous: int | None) -> int:
    """The first port of `count` consecutive free loopback ports (or ports this lab's consoles
    hold already: `previous`, from its last up)."""
    if previous:
        ours = {console.port(lab, s.name) for s in lab.hosts}
        if all(p in ours or _free(p) for p in range(previous, previous + count)):
            return previous
    start = SERIAL_BASE + (int(lab.subnet.network_address.packed[2]) % 64) * SERIAL_BLOCK
    for base in range(start, 60000, SERIAL_BLOCK):
        if all(_free(p) for p in range(base, base + count)):
            return base
    raise InputError(f"lab: no {count} free consecutive loopback ports for the consoles")


def environment(
    lab: LabParams, template: dict[str, Any], source: str, previous_port: int | None
) -> Environment:
    """Which VM each host plays (its `nixname`, one of the template's vms) and the serial
    ports: VM i's console is on serial_port + i. Without a deployment (a lab made from its
    `lab:` section only) host i plays VM i, named its nixname, or its own name when several
    hosts share one."""
    nixnames = [spec.nixname for spec in lab.hosts]
    names = vm_names(template)
    if not names:
        unique = len(set(nixnames)) == len(nixnames)
        names = nixnames if unique else [spec.name for spec in lab.hosts]
        port = choose_serial_port(lab, len(names), previous_port)
        plays = {s.name: console.Plays(names[i], port + i) for i, s in enumerate(lab.hosts)}
        return Environment(plays, port, template)
    missing = [n for n in nixnames if n not in names]
    if missing:
        raise InputError(f"{source}: lab.hosts: {missing[0]!r} (nixname) is not one of the vms")
    twice = [n for n in nixnames if nixnames.count(n) > 1]
    if twice:
        raise InputError(f"{source}: lab.hosts: two hosts play {twice[0]!r} (nixname)")
    port = choose_serial_port(lab, len(names), previous_port)
    plays = {
        spec.name: console.Plays(spec.nixname, port + names.index(spec.nixname))
        for spec in lab.hosts
    }
    return Environment(plays, port, template)


def params(lab: LabParams, env: Environment) -> dict[str, Any]:
    """The deployment's params: the lab file's, with every value the lab makes."""
    data = dict(env.template)
    data.update(
        nixos_config=str(lab.state_dir / "nixos-config"),
        identity=str(lab.identity_path),
        local_nix_config=LOCAL_NIX_CONFIG,
    )
    # the lab's holds every host's key (strict from the first login); a lab file may name
    # another, learned on first use as on a Mac that never saw the VMs
    data.setdefault("known_hosts", str(lab.known_hosts))
    data["utm"] = {
        **(data.get("utm") or {}),
        "utmctl": str(console.program(lab, "utmctl")),
        "osascript": str(console.program(lab, "osascript")),
        "iso": str(console.iso_file(lab)),
        # the lab's bridge plays the Mac's bridged interface (lesson 8's sweep and call-back)
        "host_interface": lab.bridge,
        "bridged_subnet": str(lab.subnet),
    }
    data["console"] = {
        **(data.get("console") or {}),
        "hs": str(console.program(lab, "hs")),
        "serial_port": env.serial_port,
    }
    return data


HEADER: Final = (
    "# Written by `runbook lab up` from {source}: an ordinary deployment params file whose\n"
    "# Mac-side programs are the lab's stand-ins. Deploy it: runbook deploy {path} --yes\n"
)


def write_params(lab: LabParams, env: Environment, source: str, out: Path) -> Path:
    """Validate the params as the product does, then write them (no secret in them)."""
    from runbook.core.params import parse

    data = params(lab, env)
    text = yaml.safe_dump(data, sort_keys=False)
    parse(text, f"{source} (the params lab up writes)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(HEADER.format(source=source, path=out) + text)
    return out
