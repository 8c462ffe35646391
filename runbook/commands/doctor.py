"""`runbook doctor [CONFIG] [--cache-url URL] [--public-key KEY] [--fix | --diff] [--json]`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Final

from runbook.doctor import (
    DEFAULT_WORKER_MODULE,
    DoctorOptions,
    Report,
    examine,
    render_json,
    render_text,
)
from runbook.errors import EXIT_FAILED, EXIT_OK
from runbook.nixcfg import ConfigTree, write_changes

logger: Final = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check a nixos-config checkout for the handbook's known mistakes",
        description="Check a nixos-config checkout (and this machine) for the mistakes the "
        "handbook records; --fix makes the safe fixes, keeping formatting and comments. "
        "Exits 1 while an error remains.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        type=Path,
        default=Path("."),
        help="the nixos-config checkout (default: the current directory)",
    )
    parser.add_argument(
        "--cache-url",
        metavar="URL",
        help="the substituter the workers must use, e.g. http://nixos-utm-cache.local:8080/main",
    )
    parser.add_argument("--public-key", metavar="NAME:KEY", help="the cache key workers must trust")
    parser.add_argument(
        "--worker-module",
        type=Path,
        default=DEFAULT_WORKER_MODULE,
        metavar="PATH",
        help=f"the workers' module (default: {DEFAULT_WORKER_MODULE})",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--fix", action="store_true", help="make the fixable changes")
    action.add_argument(
        "--diff", action="store_true", help="print the fixes as a diff, change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    opts = DoctorOptions(
        config=args.config,
        cache_url=args.cache_url,
        public_key=args.public_key,
        worker_module=args.worker_module,
    )
    report = examine(opts)
    changes = ConfigTree(opts.config).changes(report.plan)
    if args.diff:
        for change in changes:
            print(change.diff(str(change.path.relative_to(opts.config))), end="")
    elif args.fix and changes:
        write_changes(changes)
        logger.info("fixed %d file(s); checking again", len(changes))
        report = examine(opts)
    _print(report, as_json=args.json)
    return EXIT_FAILED if report.errors else EXIT_OK


def _print(report: Report, *, as_json: bool) -> None:
    print(render_json(report) if as_json else render_text(report))
