"""`runbook doctor [PARAMS] [--nixos-config DIR] [--json] [--fix | --diff]`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Final

from runbook.core import params
from runbook.core.errors import EXIT_FAILED, EXIT_OK, InputError
from runbook.doctor import DoctorContext, failed, plan_fixes, render_json, render_text, run_context
from runbook.nix.nixcfg import write_changes

logger: Final = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "doctor",
        help="name every handbook pitfall in a nixos-config, the params and this Mac",
        description="Run every check (ids, handbook lesson, status ok/warn/fail/unchecked, "
        "finding, fix) against the nixos-config checkout named in PARAMS (or --nixos-config). "
        "Exits 1 if any check fails, 2 on bad input.",
    )
    parser.add_argument(
        "params", nargs="?", type=Path, metavar="PARAMS", help="a deployment YAML (params/*.yaml)"
    )
    parser.add_argument(
        "--nixos-config",
        type=Path,
        metavar="DIR",
        help="the nixos-config checkout (default: nixos_config from PARAMS, else .)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--fix",
        action="store_true",
        help="make the safe fixes (lesson 1, worker substituter, the identity's key for the user)",
    )
    action.add_argument("--diff", action="store_true", help="print the safe fixes as a diff")
    parser.set_defaults(func=handle)


def _context(args: argparse.Namespace) -> DoctorContext:
    deployment = params.load(args.params).deployment if args.params is not None else None
    config = args.nixos_config or (deployment.nixos_config if deployment else Path("."))
    # the error names where the path came from: the option, or the params file's key
    if args.nixos_config is not None:
        source = f"--nixos-config {config}"
    elif deployment is not None:
        source = f"{args.params}: key nixos_config: {config}"
    else:
        source = f"{config} (no PARAMS or --nixos-config: the current directory)"
    if not config.is_dir():
        raise InputError(f"{source}: not a directory")
    if not (config / "flake.nix").is_file():
        raise InputError(f"{source}: not a nixos-config checkout (expected a flake.nix in it)")
    return DoctorContext(deployment, config)


def handle(args: argparse.Namespace) -> int:
    ctx = _context(args)
    findings = run_context(ctx)
    if args.diff or args.fix:
        changes = ctx.tree.changes(plan_fixes(ctx, findings))
        if args.diff:
            for change in changes:
                print(change.diff(str(change.path.relative_to(ctx.root))), end="")
        elif changes:
            write_changes(changes)
            logger.info("fixed %d file(s); checking again", len(changes))
            ctx = DoctorContext(ctx.deployment, ctx.root)
            findings = run_context(ctx)
    print(render_json(findings) if args.json else render_text(findings, ctx.notes()))
    return EXIT_FAILED if failed(findings) else EXIT_OK
