"""`runbook verify-cache URL --public-key NAME:KEY [--store-path PATH ...] [--token-env VAR]`.

Exit 0 when every check passes, 1 when the cache fails verification, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Final
from urllib.parse import urlsplit

from runbook.cache import keys
from runbook.cache.attic import verify_cache
from runbook.core.errors import EXIT_FAILED, EXIT_OK, InputError
from runbook.core.secrets import secret_from_env

logger: Final = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "verify-cache", help="check a binary cache's nix-cache-info and narinfo signatures"
    )
    p.add_argument(
        "url", metavar="URL", help="cache URL, e.g. http://nixos-utm-cache.local:8080/main"
    )
    p.add_argument("--public-key", required=True, metavar="NAME:KEY", help="the trusted key")
    p.add_argument(
        "--store-path",
        action="append",
        default=[],
        metavar="PATH",
        help="a /nix/store path whose narinfo must be signed by the key (repeatable)",
    )
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding a pull token")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    p.set_defaults(func=run_verify_cache)


def _check_args(args: argparse.Namespace) -> None:
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"URL {args.url!r}: expected http(s)://HOST[:PORT]/CACHE")
    keys.parse_public_key(args.public_key)  # raises InputError naming the key
    for path in args.store_path:
        if not keys.is_store_path(path):
            raise InputError(f"--store-path {path!r}: expected /nix/store/<32-char hash>-<name>")


def run_verify_cache(args: argparse.Namespace) -> int:
    _check_args(args)
    token = None
    if args.token_env:
        token = secret_from_env(args.token_env, "attic token")
        if token is None:
            raise InputError(f"--token-env {args.token_env}: the variable is unset or empty")
    report = verify_cache(args.url, args.public_key, args.store_path, token, args.timeout)
    if report.cache_info:
        fields = ", ".join(f"{k}={v}" for k, v in report.cache_info.items())
        print(f"nix-cache-info: {fields}")
    for path in report.verified_paths:
        print(f"ok: {path} signed by {report.public_key.partition(':')[0]}")
    for failure in report.failures:
        print(f"FAILED {failure}")
    if report.ok:
        print(f"cache {report.url} verified ({len(report.verified_paths)} paths)")
        return EXIT_OK
    return EXIT_FAILED
