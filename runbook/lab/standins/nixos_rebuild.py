"""Lab stand-in for `nixos-rebuild switch|test|build|dry-build --flake /nix-config#NAME`.

Reproduces the handbook's `vm/switch` (reference/utm-makefile-keys.md §1: `sudo nixos-rebuild
switch --flake "/nix-config#${NIXNAME}"`): the system is what lib/mksystem.nix assembles
(machines/NAME.nix + users/USER/nixos.nix, USER from flake.nix), read with runbook/nix/nixfile.py.
A file that does not parse fails before anything changes, with `error: …` on stderr and exit
1, as Nix's evaluation does; `switch` then applies the settings the runbook changes and
restarts changed units like switch-to-configuration (exit 4 when a unit fails, as
switch-to-configuration does; reference/code-anchors.md §1 "Activation").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runbook.core.errors import InputError
from runbook.lab import activate, services, system

ACTIONS = ("switch", "test", "boot", "build", "dry-build", "dry-activate")
EXIT_UNIT_FAILED = 4
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
USAGE = "Usage: nixos-rebuild [switch|boot|test|build|dry-build|dry-activate] [--flake REF#NAME]"


def parse(argv: list[str]) -> tuple[str, str]:
    action, flake = "", ""
    it = iter(argv)
    for arg in it:
        if arg in ACTIONS and not action:
            action = arg
        elif arg == "--flake":
            flake = next(it, "")
        elif arg.startswith("--flake="):
            flake = arg.split("=", 1)[1]
        elif arg in ("--option",):
            next(it, None)
            next(it, None)
        elif arg.startswith("-"):
            continue  # -v, --impure, --show-trace...: no effect in the lab
        else:
            raise InputError(f"unknown argument '{arg}'\n{USAGE}")
    if not action:
        raise InputError(f"no action given\n{USAGE}")
    return action, flake or "/etc/nixos"


def resolve(flake: str) -> tuple[Path, str]:
    """`/nix-config#NAME` (or path:, or no #NAME: the hostname, as nixos-rebuild defaults)."""
    ref, _, name = flake.partition("#")
    ref = ref.removeprefix("path:").removeprefix("git+file://")
    name = name.strip('"') or os.uname().nodename
    root = Path(ref or ".").resolve()
    if not (root / "flake.nix").exists():
        raise InputError(f"path '{root}' does not contain a 'flake.nix'")
    return root, name


def system_files(root: Path, name: str) -> list[Path]:
    from runbook.lab.nixconfig import EvalError, flake_user

    user = flake_user(root / "flake.nix", name)
    files = [root / "machines" / f"{name}.nix", root / "users" / user / "nixos.nix"]
    for path in files:
        if not path.exists():
            raise EvalError(f"path '{path}' does not exist")
    # every .nix file of the flake must parse, as `nix` reads them while evaluating
    from runbook.nix.nixfile import NixFile

    for nixfile in sorted(root.rglob("*.nix")):
        NixFile.read(nixfile)
    return files


# `nix build` of a flake needs these (Nix 2.8 has them behind experimental-features); the
# host's nix.conf gives the rest (no build users, no sandbox: system.write_nix_conf).
FLAKE_FEATURES = "experimental-features = nix-command flakes"


def build_toplevel(root: Path, name: str) -> str:
    """`nix build` the flake's `nixosConfigurations.NAME.config.system.build.toplevel` with the
    host's real Nix, as nixos-rebuild does (NixOS/nixpkgs
    pkgs/by-name/ni/nixos-rebuild-ng/src/nixos_rebuild/nix.py `build_flake`: `nix build
    --print-out-paths FLAKE#nixosConfigurations."NAME".config.system.build.toplevel`); the store path, read from `--json` (Nix 2.8 has no --print-out-paths).
    A configuration that does not evaluate or build fails here, before anything changes."""
    attr = f'path:{root}#nixosConfigurations."{name}".config.system.build.toplevel'
    before = os.environ.get("NIX_CONFIG", "")
    env = {**os.environ, "NIX_CONFIG": f"{before}\n{FLAKE_FEATURES}".strip()}
    proc = subprocess.run(
        ["nix", "build", "--json", "--no-link", "--impure", attr],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise InputError(f"building the system failed: {proc.stderr.strip()[-600:]}")
    try:
        return str(json.loads(proc.stdout)[0]["outputs"]["out"])
    except (ValueError, LookupError, TypeError):
        raise InputError(f"nix build printed no store path: {proc.stdout[:200]!r}") from None


def set_system_profile(toplevel: str) -> None:
    """/nix/var/nix/profiles/system -> the new generation, as switch-to-configuration's
    caller does (`nix-env -p /nix/var/nix/profiles/system --set`); it is also a GC root."""
    subprocess.run(
        ["nix-env", "-p", SYSTEM_PROFILE, "--set", toplevel],
        capture_output=True,
        text=True,
        check=True,
    )


def switch(action: str, flake: str) -> int:
    root, name = resolve(flake)
    files = system_files(root, name)
    cfg = activate.system_config(activate.evaluate_files(files), "installed", os.uname().nodename)
    print("building the system configuration...", file=sys.stderr)
    if action in ("dry-build", "dry-activate"):
        return 0
    toplevel = build_toplevel(root, name)
    if action in ("build", "boot"):
        return 0
    set_system_profile(toplevel)
    before = system.enabled_services(Path("/"))
    old = activate.snapshot()
    print("activating the configuration...", file=sys.stderr)
    print("setting up /etc...", file=sys.stderr)
    activate.write(cfg)
    activate.set_hostname(cfg.hostname)
    new = activate.snapshot()
    failed = activate.reconcile(before, cfg.services, {u for u in new if new[u] != old[u]})
    if failed:
        print("warning: the following units failed: " + ", ".join(failed), file=sys.stderr)
        return EXIT_UNIT_FAILED
    return 0


def main(argv: list[str]) -> int:
    if not Path("/run/runbook-lab/env").exists():  # never rewrite this machine's /etc
        print("error: this lab stand-in runs only inside a runbook lab host", file=sys.stderr)
        return 1
    try:
        action, flake = parse(argv)
        return switch(action, flake)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except services.UnitNotFoundError as exc:
        print(f"error: unit {exc}.service not found", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
