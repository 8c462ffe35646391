"""Lab stand-in for `nixos-install [--no-root-passwd] [--root /mnt] [--flake REF#NAME]`.

The handbook's `vm/bootstrap0` ends with `nixos-install --no-root-passwd && reboot`
(reference/utm-makefile-keys.md §1, from `024db3c`). The lab has no disk: the "installed
disk" is the host's own tree, so the new system (read from /mnt/etc/nixos/configuration.nix
and its imports, or from a flake) is written now, with fresh SSH host keys, and takes effect
at the next `reboot` (the running sshd keeps its keys until then, as the live ISO's does).
Without --no-root-passwd the real command prompts for a root password; the lab, having no
terminal to prompt on, refuses instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runbook.core.errors import InputError
from runbook.lab import activate, system
from runbook.lab.standins import nixos_rebuild


def parse(argv: list[str]) -> tuple[Path, str, bool]:
    root, flake, no_root_passwd = Path("/mnt"), "", False
    it = iter(argv)
    for arg in it:
        if arg == "--root":
            root = Path(next(it, "/mnt"))
        elif arg == "--flake":
            flake = next(it, "")
        elif arg == "--no-root-passwd":
            no_root_passwd = True
        elif arg.startswith("-"):
            continue  # --no-channel-copy, --no-bootloader, -v...
        else:
            raise InputError(f"unrecognised argument '{arg}'")
    return root, flake, no_root_passwd


def install(argv: list[str]) -> int:
    root, flake, no_root_passwd = parse(argv)
    if flake:
        repo, name = nixos_rebuild.resolve(flake)
        files = nixos_rebuild.system_files(repo, name)
    else:
        config = root / "etc/nixos/configuration.nix"
        if not config.exists():
            raise InputError(f"configuration file {config} doesn't exist")
        files = [config]
    cfg = activate.system_config(activate.evaluate_files(files), "installed", "nixos")
    if not no_root_passwd and sys.stdin.isatty() is False and cfg.root_hashed_password is None:
        raise InputError(
            "setting up the root password needs a terminal; "
            "pass --no-root-passwd (the handbook does)"
        )
    print(
        "copying channel...\nbuilding the configuration in /mnt/etc/nixos/configuration.nix...",
        file=sys.stderr,
    )
    activate.write(cfg)
    system.new_host_keys(Path("/"))
    print("installing the boot loader...\ninstallation finished!", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    if not Path("/run/runbook-lab/env").exists():  # never rewrite this machine's /etc
        print("error: this lab stand-in runs only inside a runbook lab host", file=sys.stderr)
        return 1
    try:
        return install(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
