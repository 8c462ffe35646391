"""`runbook lab up|down|status [--json]`: the local lab of simulated NixOS VMs (needs root)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Final

logger: Final = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("lab", help="bring the local lab (simulated VMs) up or down")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--params", type=Path, help="params file with a `lab:` section (default params/lab.yaml)"
    )
    p.add_argument("--json", action="store_true", help="status as JSON, one record per host")
    p.set_defaults(func=run_lab)


def run_lab(args: argparse.Namespace) -> int:
    from runbook.lab import lifecycle

    if args.action == "up":
        hosts = lifecycle.up(args.params)
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
