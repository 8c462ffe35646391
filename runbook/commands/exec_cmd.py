"""`runbook exec ssh://USER@HOST[:PORT] -- SCRIPT`: run SCRIPT as bash, whatever the login shell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runbook.core.errors import CommandError, InputError
from runbook.core.models import Elevate, Host
from runbook.core.secrets import secret_from_env
from runbook.transport.remote import Connection


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "exec",
        help="run a bash script on a host over SSH",
        usage="runbook exec ssh://USER@HOST[:PORT] [options] -- SCRIPT",
        description="Runs SCRIPT as bash whatever the login shell is (fish included), "
        "prints its output and exits with its exit code.",
    )
    p.add_argument("target", metavar="ssh://USER@HOST[:PORT]")
    p.add_argument("--identity", type=Path, help="private key file")
    p.add_argument(
        "--password-env", metavar="VAR", help="environment variable holding the password"
    )
    p.add_argument("--known-hosts", type=Path, help="known_hosts file (default ~/.ssh/known_hosts)")
    p.add_argument("--sudo", action="store_true", help="run the script as root through sudo")
    p.add_argument(
        "--replace-host-key",
        action="store_true",
        help="accept a changed host key (after a reinstall)",
    )
    p.add_argument("--timeout", type=float, help="seconds before the command is stopped")
    p.set_defaults(func=run_exec)


def parse_target(target: str) -> tuple[str, str, int]:
    """`ssh://user@host[:port]` -> (user, host, port); InputError naming the argument."""
    parts = urlsplit(target)
    try:
        port = parts.port or 22
    except ValueError:
        raise InputError(f"target {target!r}: port must be a number 1-65535") from None
    if parts.scheme != "ssh" or not parts.hostname or not parts.username:
        raise InputError(f"target {target!r}: expected ssh://USER@HOST[:PORT]")
    if parts.path not in ("", "/"):
        raise InputError(f"target {target!r}: expected no path after the host")
    return parts.username, parts.hostname, port


def run_exec(args: argparse.Namespace) -> int:
    user, address, port = parse_target(args.target)
    script_words: list[str] = list(args.passthrough or [])
    if not script_words:
        raise InputError("SCRIPT: expected a script after --")
    script = " ".join(script_words)
    password = None
    if args.password_env:
        password = secret_from_env(args.password_env)
        if password is None:
            raise InputError(f"--password-env {args.password_env}: the variable is not set")
    if args.identity is not None and not args.identity.expanduser().is_file():
        raise InputError(f"--identity {args.identity}: no such file")
    if args.identity is None and password is None:
        raise InputError("expected --identity KEY or --password-env VAR")
    known = args.known_hosts or Path("~/.ssh/known_hosts")
    host = Host(name=address, address=address, user=user, port=port, identity=args.identity)

    def show(stream: str, line: str) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        print(line, file=out, flush=True)

    with Connection(
        host,
        password=password,
        known_hosts=known,
        replace_host_key=args.replace_host_key,
        on_line=show,
    ) as conn:
        try:
            result = conn.run(
                script,
                elevate=Elevate.SUDO if args.sudo else Elevate.NONE,
                check=False,
                timeout=args.timeout,
            )
        except CommandError as exc:
            if exc.returncode is None:
                raise
            return exc.returncode
    return result.exit_code
