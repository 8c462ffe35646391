"""`atticd-atticadm` stand-in: `atticadm make-token` as the NixOS wrapper runs it (attic.md §3).

The wrapper is `systemd-run --pipe --pty ... --property=EnvironmentFile=<envfile> -- atticadm -f
<config> "$@"`, so the env file is loaded first and, because of the pty, the token line ends
with `\\r\\n`. The env file is `$ATTICD_STANDIN_ENV_FILE` or `/var/lib/atticd/env`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Final

from runbook.lab.attic import config as cfg
from runbook.lab.attic.token import (
    PERMISSION_KEYS,
    CachePermission,
    encode_token,
    make_claims,
    parse_duration,
)

PATTERN_FLAGS: Final = {
    "pull": "--pull",
    "push": "--push",
    "delete": "--delete",
    "create_cache": "--create-cache",
    "configure_cache": "--configure-cache",
    "configure_cache_retention": "--configure-cache-retention",
    "destroy_cache": "--destroy-cache",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atticadm")
    parser.add_argument("-f", "--config")
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-token")
    mk.add_argument("--sub", required=True)
    mk.add_argument("--validity", required=True)
    for attr, flag in PATTERN_FLAGS.items():
        mk.add_argument(flag, dest=attr, action="append", default=[], metavar="PATTERN")
    mk.add_argument("--dump-claims", action="store_true")
    return parser


def _permissions(args: argparse.Namespace) -> dict[str, CachePermission]:
    """Patterns in flag order, one CachePermission each (an IndexMap in attic)."""
    caches: dict[str, CachePermission] = {}
    for attr in PERMISSION_KEYS:
        for pattern in getattr(args, attr):
            setattr(caches.setdefault(pattern, CachePermission()), attr, True)
    return caches


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg.load_env_file(None)  # EnvironmentFile= of the systemd-run wrapper
    conf = cfg.load_config(args.config, None)
    try:
        validity = parse_duration(args.validity)
    except ValueError as exc:
        print(
            f"error: invalid value '{args.validity}' for '--validity <VALIDITY>': {exc}",
            file=sys.stderr,
        )
        return 2
    claims = make_claims(args.sub, validity, _permissions(args))
    if args.dump_claims:
        out = json.dumps(claims)
    else:
        signing = cfg.load_signing_keys(conf.raw)
        if signing.private is None:  # only a public key configured (attic.md §1)
            print("Error: PubkeyOnlyCannotCreateToken", file=sys.stderr)
            return 1
        out = encode_token(claims, signing.private)
    # `println!` through `systemd-run --pty`: the pty turns "\n" into "\r\n" (attic.md §3).
    sys.stdout.write(out + "\r\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
