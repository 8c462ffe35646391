"""`runbook lab up|down|status [--json]`: the local lab of simulated NixOS VMs (needs root).

The one entry point from the product into runbook.lab: `up` makes an environment (hosts, the
Mac-side stand-ins, an ordinary deployment params file naming them; nothing in the secret
store) that `runbook deploy` then reads as it reads a Mac's."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Final

logger: Final = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("lab", help="bring the local lab (simulated VMs) up or down")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--lab",
        "--params",
        dest="params",
        type=Path,
        help="lab file: a deployment's params with a `lab:` section (default lab/lab.yaml)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="up: where to write the deployment's params (default <lab.state_dir>/params.yaml)",
    )
    p.add_argument(
        "--secrets",
        type=Path,
        help="up: accepted for older scripts; the lab stores no secret (02 makes the live password)",
    )
    p.add_argument("--json", action="store_true", help="status as JSON, one record per host")
    p.set_defaults(func=run_lab)


def run_lab(args: argparse.Namespace) -> int:
    from runbook.lab import lifecycle

    if args.action == "up":
        hosts = lifecycle.up(args.params, secrets_dir=args.secrets, out=args.out)
        written = args.out or lifecycle.params_path(args.params)
        if written.exists():
            print(
                f"deployment params: {written}   (runbook deploy {written} --yes)", file=sys.stderr
            )
    elif args.action == "down":
        lifecycle.down(args.params)
        return 0
    else:
        lifecycle.require_root()
        hosts = lifecycle.status(args.params)
    if args.json:
        print(json.dumps([h.public() for h in hosts], indent=1))
        return 0
    print(f"{'HOST':<20} {'PHASE':<10} {'ADDRESS':<15} {'USER':<8} SERVICES")
    for h in hosts:
        svc = " ".join(f"{k}={v}" for k, v in h.services.items()) if h.running else "(down)"
        print(f"{h.name:<20} {h.phase:<10} {h.address:<15} {h.user:<8} {svc}")
    return 0
