"""The checks on the checkout as a whole: every .nix file parses, each VM is one of the
flake's nixosConfigurations, and no trace of the attic flake (lesson 1) is left in
flake.nix, flake.lock or the modules."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from runbook.core.errors import tail
from runbook.doctor.context import NO_PARAMS, NOT_A_SYSTEM, DoctorContext
from runbook.doctor.model import DoctorCheck, Status, Verdict, check, ok, unchecked_verdict
from runbook.nix.nixcfg import attic_inputs, is_attic_url, read_lock
from runbook.transport import local

logger: Final = logging.getLogger(__name__)

CHECKS: Final[list[DoctorCheck]] = []


@check(CHECKS, "nix-parse", "all: a file that does not parse stops every nixos-rebuild")
def check_nix_parse(ctx: DoctorContext) -> Verdict:
    broken = [f"{rel}: {exc}" for rel, exc in ctx.tree.broken.items()]
    confirmed = "tree-sitter"
    if local.which("nix-instantiate") is not None and ctx.parsed:
        confirmed += " and nix-instantiate --parse"
        broken += _nix_refuses(ctx.root, list(ctx.parsed))
    if broken:
        return Verdict(Status.FAIL, "; ".join(broken), "fix the syntax error at the place named")
    return ok(f"{len(ctx.parsed)} .nix files parse ({confirmed})")


# Parsing needs no store: with the local one, nix-instantiate opens its database (creating
# and removing db.sqlite-wal/-shm) and fixes the permissions of /nix/var/nix's directories
# (2.8 libstore/local-store.cc LocalStore::LocalStore), though --parse sets readOnlyMode.
# dummy:// (libstore/dummy-store.cc, in 2.8 as now) has no files at all.
PARSE_ARGV: Final = ("nix-instantiate", "--parse", "--store", "dummy://")


def _nix_refuses(root: Path, files: list[Path]) -> list[str]:
    """The files the installed Nix does not parse: one call for all, one per file on failure."""
    argv = list(PARSE_ARGV)
    if local.run([*argv, *(str(root / f) for f in files)], check=False).exit_code == 0:
        return []
    refused = []
    for rel in files:
        result = local.run([*argv, str(root / rel)], check=False)
        if result.exit_code != 0:
            refused.append(f"{rel}: nix-instantiate: {tail(result.stderr, 2)}")
    return refused


@check(CHECKS, "vm-configurations", "部署流程: NIXNAME=<vm> builds flake.nix's nixosConfiguration")
def check_vm_configurations(ctx: DoctorContext) -> Verdict:
    if ctx.flake is None:
        return unchecked_verdict("flake.nix does not parse")
    if not ctx.systems:
        return unchecked_verdict("flake.nix names no nixosConfigurations this reader can list")
    listed = ", ".join(
        f"{name} (user {system.user})" if system.user else name
        for name, system in sorted(ctx.systems.items())
    )
    if ctx.deployment is None:
        return ok(f"{NO_PARAMS}: checking every nixosConfiguration: {listed}")
    bad = ctx.unbuildable_vms()
    absent = [vm.name for vm, why in bad if why == NOT_A_SYSTEM]
    wrong = [f"vms {vm.name}: {why}" for vm, why in bad if why != NOT_A_SYSTEM]
    if absent:
        verb = "is not one of" if len(absent) == 1 else "are not among"
        wrong.insert(
            0,
            f"vms {', '.join(absent)} {verb} flake.nix's nixosConfigurations "
            f"({ctx.listed_systems()})",
        )
    if wrong:
        return Verdict(
            Status.FAIL,
            "; ".join(wrong) + ": the runbook runs make vm/switch NIXNAME=<vm name>",
            "name each VM in params after its nixosConfiguration, or add it to flake.nix: "
            '`nixosConfigurations.NAME = mkSystem "NAME" { system = "aarch64-linux"; '
            'user = "USER"; };` with machines/NAME.nix',
        )
    cache = ctx.deployment.cache.vm
    return ok(
        f"the workers are nixosConfigurations: {listed} (the cache VM {cache}: atticd-enabled)"
    )


@check(
    CHECKS, "attic-flake-input", "lesson 1: the attic flake's client fails to build (-std=c++2a)"
)
def check_attic_flake_input(ctx: DoctorContext) -> Verdict:
    flake = ctx.flake
    if flake is None:
        return unchecked_verdict("flake.nix does not parse")
    found = [
        f"flake.nix:{flake.under(('inputs', name))[0].line}: input {name} = {source}"
        for name, source in sorted(attic_inputs(flake).items())
    ]
    lock_path = ctx.root / "flake.lock"
    if lock_path.is_file():
        for key, node in sorted(read_lock(lock_path)["nodes"].items()):
            if _fetches_attic(node):
                found.append(f"flake.lock: node {key!r} locks the attic repository")
    if found:
        return Verdict(
            Status.FAIL,
            "; ".join(found),
            "delete the attic input (and `attic` from outputs' arguments) from flake.nix, run "
            "`nix flake lock`; nixpkgs' services.atticd and pkgs.attic-client replace it "
            "(`runbook doctor --fix` does this)",
        )
    return ok("flake.nix has no attic input and flake.lock no attic node")


def _fetches_attic(node: Any) -> bool:
    for part in ("original", "locked"):
        ref = node.get(part) if isinstance(node, dict) else None
        if not isinstance(ref, dict):
            continue
        if ref.get("repo") == "attic" or is_attic_url(str(ref.get("url", "x"))):
            return True
    return False


@check(
    CHECKS,
    "attic-module-import",
    "lesson 1: the attic flake's module and packages go with its input",
)
def check_attic_module_import(ctx: DoctorContext) -> Verdict:
    names = {"attic"} | (set(attic_inputs(ctx.flake)) if ctx.flake is not None else set())
    found: list[str] = []
    for rel, nix in ctx.parsed.items():
        for node, path in nix.selects("inputs"):
            if path[0] in names and len(path) > 1:
                found.append(f"{rel}:{node.start_point.row + 1}: {nix.text(node)}")
        if rel == Path("flake.nix"):  # `outputs = { attic, ... }:` names the input directly
            for name in names:
                for node, path in nix.selects(name):
                    if path[0] in ("nixosModules", "packages", "overlays"):
                        found.append(f"{rel}:{node.start_point.row + 1}: {nix.text(node)}")
    if found:
        return Verdict(
            Status.FAIL,
            "uses the attic flake: " + "; ".join(found),
            "remove inputs.attic.nixosModules.atticd from lib/mksystem.nix (nixpkgs has "
            "services.atticd) and use pkgs.attic-client for inputs.attic.packages "
            "(`runbook doctor --fix` does this)",
        )
    if ctx.tree.broken:
        return unchecked_verdict("some .nix files do not parse (see nix-parse)")
    return ok("no module uses inputs.attic")
