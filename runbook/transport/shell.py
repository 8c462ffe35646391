"""Remote command building that no login shell can misread (handbook lesson 5).

NixOS gives the user fish as the login shell, and SSH hands the command string to it:
`if ...; then ...; fi` and `&&` chains fail there. So the string the login shell sees is
always one of a few fixed words (`bash -s`, `sudo -n bash -s`), valid in fish, bash and
sh alike, and the real script travels on stdin where only bash reads it. Environment,
`cd`, pipes and redirects are part of that script, so they all run inside the sudo'd
bash (invoke's unquoted sudo is the counter-example).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from runbook.core.models import Elevate

# The only command strings a login shell is ever given.
BASH_STDIN: Final = "bash -s"
SUDO_BASH_STDIN: Final = "sudo -n bash -s"


@dataclass(frozen=True)
class Wrapped:
    """What to exec over SSH (`command`) and what to feed on its stdin (`stdin`)."""

    command: str
    stdin: bytes
    display: str  # for logs and results; the caller masks secrets in it


def quote_argv(argv: Sequence[str]) -> str:
    """One bash command line with every argument quoted."""
    return shlex.join(argv)


def script_for(
    body: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    strict: bool = True,
) -> str:
    """A bash script: optional `set -euo pipefail`, exported env, `cd`, then `body`."""
    lines: list[str] = []
    if strict:
        lines.append("set -eo pipefail")
    for key, value in (env or {}).items():
        if not key.isidentifier():
            raise ValueError(f"environment name {key!r} is not a shell identifier")
        lines.append(f"export {key}={shlex.quote(value)}")
    if cwd:
        lines.append(f"cd {shlex.quote(cwd)}")
    lines.append(body)
    return "\n".join(lines) + "\n"


def wrap(
    command: str | bytes | Sequence[str],
    *,
    elevate: Elevate = Elevate.NONE,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    strict: bool = False,
) -> Wrapped:
    """Wrap a script (str) or an argv (sequence) to run as bash, with or without sudo."""
    if isinstance(command, bytes):  # a prepared script (e.g. with a raw payload): as is
        if env or cwd:
            raise ValueError("env and cwd cannot be added to a prepared script")
        script = command
        body = "<script>"
    else:
        body = command if isinstance(command, str) else quote_argv(command)
        script = script_for(body, env=env, cwd=cwd, strict=strict).encode()
    match elevate:
        case Elevate.NONE:
            exec_cmd = BASH_STDIN
        case Elevate.SUDO:
            exec_cmd = SUDO_BASH_STDIN
    display = _short(command) if isinstance(command, str) else body
    if elevate is Elevate.SUDO:
        display = f"sudo: {display}"
    return Wrapped(command=exec_cmd, stdin=script, display=display)


def install_file_script(path: str, content: bytes, mode: int, owner: str | None) -> bytes:
    """A bash script (bytes) that writes `content` to `path` with `mode` from the first byte.

    The temp file is created under umask 077 in the target directory, so it is never
    readable by others, then chmod/chown'd and renamed over the target atomically. The
    content follows the `head -c` line raw: bash reads a script on stdin one byte at a
    time, so `head` gets exactly the payload and bash resumes after it.
    """
    directory = path.rsplit("/", 1)[0] or "/"
    q = shlex.quote
    head = [
        "set -euo pipefail",
        "umask 077",
        f"mkdir -p {q(directory)}",
        f"tmp=$(mktemp {q(directory + '/.runbook-put.XXXXXX')})",
        "trap 'rm -f \"$tmp\"' EXIT",
        f'head -c {len(content)} > "$tmp"',
    ]
    tail = [f'chmod {mode:04o} "$tmp"']
    if owner:
        tail.append(f'chown {q(owner)} "$tmp"')
    tail += [f'mv -f "$tmp" {q(path)}', "trap - EXIT"]
    return ("\n".join(head) + "\n").encode() + content + ("\n" + "\n".join(tail) + "\n").encode()


def _short(script: str, limit: int = 200) -> str:
    one = "; ".join(ln.strip() for ln in script.strip().splitlines() if ln.strip())
    return one if len(one) <= limit else one[: limit - 3] + "..."
