"""`runbook init [DIR] [--out FILE] [--force] [--yes] ...`: write a deployment params file.

Reads the nixos-config checkout DIR (or --nixos-config, else .), this machine's ~/.ssh and
UTM, and writes ONE params file holding the cache and its workers (default ./runbook.yaml),
each value with a comment saying why it was chosen (runbook.doctor.init_params). On a
terminal it asks, with the found value as the default; with --yes or without a terminal it
takes the defaults. It never replaces a file without --force (exit 2 naming it). At the end
it runs the doctor's checks on what it wrote: exit 1 naming the failing checks, 0 when none
fails.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Final

from runbook.core.errors import EXIT_FAILED, EXIT_OK, InputError
from runbook.doctor import init_params
from runbook.doctor.init_params import Answers

logger: Final = logging.getLogger(__name__)
BACKENDS: Final = ("utm-input", "hammerspoon", "quartz", "serial")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "init",
        help="write a deployment params file from your nixos-config, SSH key and UTM",
        description="Write ONE params file (the cache VM and its workers) from the nixos-config "
        "checkout DIR, ~/.ssh/*.pub and UTM, each value explained in a comment. Asks on a "
        "terminal; --yes (or no terminal) takes the defaults. Never replaces a file without "
        "--force. Exit 2 on bad input, 1 when the doctor finds a failing check in the result.",
    )
    p.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="the nixos-config checkout")
    p.add_argument("--nixos-config", type=Path, metavar="DIR", help="same as DIR")
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help=f"the params file to write (default ./{init_params.DEFAULT_OUT})",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--yes", "-y", action="store_true", help="take every default, ask nothing")
    p.add_argument(
        "--deployment",
        default=None,
        metavar="NAME",
        help=f"the deployment's name (default {init_params.DEFAULT_DEPLOYMENT})",
    )
    p.add_argument(
        "--workers",
        default=None,
        metavar="NAME,...",
        help="only these worker configurations (default: every nixosConfiguration but the cache)",
    )
    p.add_argument(
        "--user", default=None, help="the installed systems' user (default: the flake's)"
    )
    p.add_argument(
        "--identity",
        type=Path,
        metavar="KEY",
        help="the SSH private key (default: the first ~/.ssh/*.pub the user authorizes)",
    )
    p.add_argument(
        "--ssh-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to look for public keys (default ~/.ssh)",
    )
    p.add_argument(
        "--utm",
        type=Path,
        default=init_params.DEFAULT_UTM_APP,
        metavar="APP",
        help=f"UTM.app (default {init_params.DEFAULT_UTM_APP})",
    )
    p.add_argument(
        "--console", choices=BACKENDS, help="the console backend (default: by UTM's version)"
    )
    p.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="VM=ADDR",
        help="a VM's address (IP or name) instead of <hostName>.local; repeatable",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="any params key (dotted: utm.host_interface=en1, vms.NAME.port=2222; VALUE is "
        "YAML), written as given; repeatable",
    )
    p.set_defaults(func=run_init)


def _addresses(items: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise InputError(
                f"--address {item!r}: expected VM=ADDRESS, e.g. vm-aarch64-utm=10.0.0.5"
            )
        found[name] = address
    return found


def _ask(question: str, default: str) -> str:
    """One prompt on the terminal; an empty answer takes `default`."""
    try:
        answer = input(f"{question} [{default}]: ").strip()
    except EOFError:
        answer = ""
    return answer or default


def run_init(args: argparse.Namespace) -> int:
    if args.dir is not None and args.nixos_config is not None and args.dir != args.nixos_config:
        raise InputError(f"DIR {args.dir} and --nixos-config {args.nixos_config}: give one")
    interactive = not args.yes and sys.stdin.isatty()
    given = args.dir or args.nixos_config
    if given is None and interactive:
        given = Path(_ask("your nixos-config checkout", "."))
    root = (given or Path(".")).expanduser().resolve()
    ssh_dir = (args.ssh_dir or Path.home() / ".ssh").expanduser()
    found = init_params.read(
        root,
        ssh_dir=ssh_dir,
        utm_app=args.utm.expanduser(),
        user=args.user,
        only_workers=[w for w in args.workers.split(",") if w]
        if args.workers is not None
        else None,
    )
    for note in found.notes:
        logger.info("note: %s", note)
    answers = Answers(
        deployment=args.deployment or init_params.DEFAULT_DEPLOYMENT,
        identity=args.identity.expanduser().resolve() if args.identity else None,
        backend=args.console,
        addresses=_addresses(args.address),
        overrides=list(args.overrides),
    )
    unknown = [n for n in answers.addresses if n not in [found.cache, *found.workers]]
    if unknown:
        raise InputError(
            f"--address {unknown[0]}: not one of the VMs ({found.cache}, "
            f"{', '.join(found.workers)})"
        )
    has_hs = shutil.which("hs") is not None
    out: Path = args.out or init_params.DEFAULT_OUT
    if interactive:
        print(
            f"nixos-config {root}: cache {found.cache}, workers {', '.join(found.workers) or 'none'}"
        )
        answers.deployment = _ask("deployment name", answers.deployment)
        if answers.identity is None and len(found.keys) > 1:
            for i, (key, where) in enumerate(found.keys, 1):
                print(f"  {i}. {key} (authorized at {where})")
            pick = _ask("SSH key", "1")
            if not pick.isdigit() or not 1 <= int(pick) <= len(found.keys):
                raise InputError(f"SSH key {pick!r}: expected a number from 1 to {len(found.keys)}")
            answers.identity = found.keys[int(pick) - 1][0]
        if answers.backend is None:
            default = init_params.backend_for(found.utm_version, has_hs=has_hs).value
            backend = _ask(f"console backend ({', '.join(BACKENDS)})", default)
            if backend not in BACKENDS:
                raise InputError(
                    f"console backend {backend!r}: expected one of {', '.join(BACKENDS)}"
                )
            answers.backend = None if backend == default else backend
        out = Path(_ask("write the params to", str(out)))
    data = init_params.choose(found, answers, has_hs=has_hs)
    text = init_params.render(data, root=root, out=out)
    dep = init_params.validate(text, out)
    init_params.write_atomically(out, text, force=args.force)
    print(
        f"wrote {out}: cache {found.cache}, {len(found.workers)} worker(s), user {dep.user}, "
        f"key {dep.identity}"
    )
    fails = init_params.failing(init_params.doctor_findings(dep, root))
    if fails:
        for f in fails:
            print(f"doctor: fail {f.check}: {f.finding}" + (f" — fix: {f.fix}" if f.fix else ""))
        print(
            f"{out} does not pass `runbook doctor {out}` yet ({len(fails)} failing check(s) above)"
        )
        return EXIT_FAILED
    print(f"runbook doctor {out}: no failing check. Next: runbook deploy {out} --yes")
    return EXIT_OK
