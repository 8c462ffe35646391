"""The `runbook` command line: the only module that parses arguments.

Each subcommand lives in `runbook/commands/<name>.py` and exposes
`register(subparsers) -> None`, which adds its parser with `set_defaults(func=handler)`;
a handler takes the parsed namespace and returns the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from runbook import __version__
from runbook.core import terminal
from runbook.core.errors import EXIT_BAD_INPUT, RunbookError
from runbook.core.masking import install_log_masking, one_line

logger: Final = logging.getLogger(__name__)
EXIT_PIPE: Final = 128 + 13  # a writer whose reader went away, as a shell reports SIGPIPE
# flags of the whole command line, accepted anywhere before a `--` (before or after COMMAND)
GLOBAL_FLAGS: Final = ("--debug", "--no-color")

# One line per subcommand module; each helper adds its own.
COMMAND_MODULES: Final[tuple[str, ...]] = (
    "runbook.commands.exec_cmd",
    "runbook.commands.doctor",
    "runbook.commands.keygen",
    "runbook.commands.verify_cache",
    "runbook.commands.lab",
    "runbook.commands.deploy",
    "runbook.commands.records",
    "runbook.commands.keys",
    "runbook.commands.init",
    "runbook.commands.open_cmd",
)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, one_line(f"{self.prog}: error: {message}") + "\n")


def get_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runbook", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"runbook {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show debug logs and tracebacks (anywhere on the line)"
    )
    parser.add_argument(
        "--no-color",
        action="store_true",
        help="no colour in the output (also NO_COLOR=1; colour is only ever used on a terminal)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at each record (it may be swapped after setup)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging(debug: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(message)s" if not debug else "debug: %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("paramiko", "papermill", "traitlets", "asyncio", "blib2to3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # paramiko logs a whole traceback when a handshake fails (sshd without host keys,
    # lesson 3); ConnectError already says it in one line
    logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)
    install_log_masking(root)


def execute(argv: Sequence[str]) -> int:
    parser = get_parser()
    argv = list(argv)
    # Everything after the first `--` is passed through untouched (e.g. exec's SCRIPT):
    # argparse cannot mix a positional list with options reliably.
    passthrough: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    # `runbook plan P --debug` as `runbook --debug plan P`: the global flags move to the front
    flags = [a for a in argv if a in GLOBAL_FLAGS]
    argv = [*dict.fromkeys(flags), *(a for a in argv if a not in GLOBAL_FLAGS)]
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    _setup_logging(bool(args.debug))
    terminal.configure(sys.stdout, bool(args.no_color))
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
        return code
    except BrokenPipeError:  # `runbook records | head -1`: the reader has what it wanted
        _silence_stdout()
        return EXIT_PIPE
    except RunbookError as exc:
        if args.debug:
            logger.exception("traceback")
        # one line per problem (a params file's several): bad input at most 300 characters,
        # a failure (step, host, command, stderr tail, hint) at most 1000, cut in the middle
        width = 300 if exc.exit_code == EXIT_BAD_INPUT else 1000
        for line in getattr(exc, "lines", None) or [str(exc)]:
            print(one_line(f"error: {line}", width), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line unless --debug
        if args.debug:
            raise
        why = one_line(f"{type(exc).__name__}: {exc}", 200)
        print(f"error: internal error: {why} (rerun with --debug)", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """stdout's pipe is closed: point it at /dev/null so the interpreter's last flush is
    quiet (Python's documented way: docs.python.org/3/library/signal.html, SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main() -> None:
    sys.exit(execute(sys.argv[1:]))
