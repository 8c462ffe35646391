"""The only caller of subprocess in product code: host-side commands (make, nix, utmctl...)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Final, TypeAlias

from runbook.core.errors import CommandError, CommandTimeoutError
from runbook.core.masking import mask
from runbook.core.models import Result
from runbook.core.secrets import Secret

logger: Final = logging.getLogger(__name__)

LineSink = Callable[[str, str], None]  # (stream name "stdout"/"stderr", line without newline)

Arg: TypeAlias = str | Path | Secret


def render(argv: Sequence[Arg]) -> str:
    """The copy-pasteable command line, secrets shown masked."""
    return shlex.join(str(a) for a in argv)


def _reveal(argv: Sequence[Arg]) -> list[str]:
    return [a.reveal() if isinstance(a, Secret) else str(a) for a in argv]


def _pump(stream: IO[str], name: str, sink: list[str], on_line: LineSink | None) -> None:
    for line in stream:
        sink.append(line)
        text = mask(line.rstrip("\n"))
        logger.debug("%s: %s", name, text)
        if on_line:
            on_line(name, text)
    stream.close()


def run(
    argv: Sequence[Arg],
    *,
    check: bool = True,
    ok_codes: Sequence[int] = (0,),
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float | None = None,
    cwd: Path | str | None = None,
    on_line: LineSink | None = None,
) -> Result:
    """Run argv locally, streaming each output line to the log and `on_line`.

    Raises CommandError when the exit code is not in `ok_codes` and `check` is set,
    CommandTimeoutError when `timeout` passes (the process is killed).
    """
    shown = render(argv)
    logger.debug("$ %s", shown)
    full_env = {**os.environ, **env} if env else None
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            _reveal(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="surrogateescape",
            env=full_env,
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise CommandError(
            host="localhost", command=shown, exit_code=None, reason=f"not found: {exc.filename}"
        ) from None
    out: list[str] = []
    err: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", out, on_line), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", err, on_line), daemon=True),
    ]
    for t in threads:
        t.start()
    if stdin is not None and proc.stdin is not None:
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for t in threads:
            t.join(1)
        raise CommandTimeoutError(
            host="localhost",
            command=shown,
            exit_code=None,
            stderr="".join(err),
            reason=f"timed out after {timeout:g} s",
        ) from None
    for t in threads:
        t.join()
    result = Result(shown, code, "".join(out), "".join(err), time.monotonic() - start)
    if check and code not in ok_codes:
        raise CommandError(host="localhost", command=shown, exit_code=code, stderr=result.stderr)
    return result


def which(name: str) -> str | None:
    """The path of `name` on PATH, or None."""
    from shutil import which as _which

    return _which(name)
