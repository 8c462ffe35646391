"""`runbook keygen --out FILE [--force]`: an atticd token secret as one env line, mode 0600.

The file holds `ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=<base64 of an RSA-4096 PEM>` (handbook
lesson 2), ready for `/var/lib/atticd/env`. An existing valid secret is kept unless --force:
rotating it invalidates every token minted with it. Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Final

from runbook.cache import keys
from runbook.core.errors import EXIT_OK, InputError
from runbook.core.secrets import write_private

logger: Final = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("keygen", help="write an atticd RS256 token secret env file (mode 0600)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="env file to write")
    p.add_argument("--force", action="store_true", help="replace an existing valid secret")
    p.add_argument("--bits", type=int, default=4096, choices=(2048, 3072, 4096))
    p.set_defaults(func=run_keygen)


def existing_secret_is_valid(path: Path) -> bool:
    """True when `path` already holds a token secret atticd would load."""
    try:
        secret = keys.read_token_secret(path.read_text())
    except (OSError, UnicodeDecodeError):
        return False
    if secret is None:
        return False
    try:
        keys.validate_token_secret(secret.reveal())
    except InputError:
        return False
    return True


def run_keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory, expected a file path")
    if out.exists():
        if existing_secret_is_valid(out) and not args.force:
            raise InputError(
                f"--out {out}: already holds a valid token secret; replacing it invalidates "
                "every attic token made with it (pass --force to rotate)"
            )
        logger.info("replacing %s", out)
    secret = keys.generate_token_secret(args.bits)
    write_private(out, (keys.env_line(secret).reveal() + "\n").encode())
    print(f"wrote {out} (RSA-{args.bits} token secret, {keys.TOKEN_SECRET_VAR}, mode 0600)")
    return EXIT_OK
