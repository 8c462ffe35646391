"""The commands a step runs, as values: what its plan shows is what its apply executes.

Each kind is a frozen value that renders itself (masked) for the plan and runs through one
place, `Context.execute`:

- `LocalCommand`: an argv run on this machine (`make`, `nix`, `utmctl`...);
- `RemoteScript`: a bash script run on a VM over SSH, as the login user or through sudo; the
  login shell only ever sees `bash -s` or `sudo -n bash -s` (`runbook.transport.shell`);
- `FilePut`: a file installed on a VM with its mode (and owner) from the first byte;
- `ConsoleTyping`: a line typed on a VM's console (the live ISO before SSH works).

A step whose work is Python (an edit of the nixos-config, a key made here) says so in a plain
string instead; it runs no shell.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from runbook.core.masking import mask
from runbook.core.models import Elevate, Host
from runbook.core.secrets import Secret
from runbook.transport.shell import BASH_STDIN, SUDO_BASH_STDIN


@dataclass(frozen=True)
class LocalCommand:
    """An argv run here (within `timeout` seconds, if given), in `cwd`, with `env` added to
    the environment (shown as `env_shown`, or as the names alone: a value may be long), and
    `stdin` fed to it (an AppleScript for `osascript -`, shown as a here-document `heredoc`)."""

    argv: tuple[str, ...]
    timeout: float | None = None
    stdin: str | None = None
    heredoc: str = "EOF"
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    env_shown: str = ""

    @classmethod
    def of(
        cls,
        argv: Sequence[str | Path],
        *,
        timeout: float | None = None,
        stdin: str | None = None,
        heredoc: str = "EOF",
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        env_shown: str = "",
    ) -> LocalCommand:
        return cls(
            tuple(str(a) for a in argv),
            timeout=timeout,
            stdin=stdin,
            heredoc=heredoc,
            cwd=str(cwd) if cwd is not None else None,
            env=dict(env or {}),
            env_shown=env_shown,
        )

    def render(self) -> str:
        line = shlex.join(self.argv)
        if self.env:  # the environment on the command's own words, where a shell applies it
            line = f"{self.env_shown or ' '.join(f'{k}=…' for k in self.env)} {line}"
        if self.cwd is not None:
            line = f"cd {shlex.quote(self.cwd)} && {line}"
        if self.stdin is None:
            return mask(line)
        return mask(f"{line} <<'{self.heredoc}'\n{self.stdin}{self.heredoc}")


@dataclass(frozen=True)
class RemoteScript:
    """A bash script for `host`, on stdin of `bash -s` (or `sudo -n bash -s`). `installed`
    says which login the step uses: the installed user with the key, or root before the
    switch (with `password`). A `transfer` is judged by progress, not by wall time."""

    host: Host
    script: str
    sudo: bool = False
    installed: bool = True
    transfer: bool = False
    password: Secret | None = field(default=None, compare=False)

    @property
    def elevate(self) -> Elevate:
        return Elevate.SUDO if self.sudo else Elevate.NONE

    @property
    def login_words(self) -> str:
        """What the login shell is given: as `Connection.run` decides (root needs no sudo)."""
        return SUDO_BASH_STDIN if self.sudo and self.host.user != "root" else BASH_STDIN

    def render(self) -> str:
        h = self.host
        port = f" -p {h.port}" if h.port != 22 else ""
        script = shlex.quote(self.script)
        return mask(f"ssh{port} {h.user}@{h.address} {self.login_words} <<< {script}")


@dataclass(frozen=True)
class FilePut:
    """`content` installed at `path` on `host` with `mode` (and `owner`) from the first byte,
    through sudo unless `sudo` is False. The content is never rendered: its size, and `shows`
    (what it is, e.g. "VAR=<the store's secret>"). A plan may leave `content` None when it is
    made only at apply time (`with_content`)."""

    host: Host
    path: str
    content: bytes | str | Secret | None = field(repr=False, compare=False)
    mode: int = 0o644
    owner: str | None = None
    sudo: bool = True
    installed: bool = True
    shows: str = ""

    def with_content(self, content: bytes | str | Secret) -> FilePut:
        return replace(self, content=content)

    @property
    def elevate(self) -> Elevate:
        return Elevate.SUDO if self.sudo else Elevate.NONE

    @property
    def size(self) -> int | None:
        if self.content is None:
            return None
        raw = self.content.reveal() if isinstance(self.content, Secret) else self.content
        return len(raw.encode() if isinstance(raw, str) else raw)

    def render(self) -> str:
        owner = f", owner {self.owner}" if self.owner else ""
        size = f", {self.size} bytes" if self.size is not None else ""
        shows = f": {self.shows}" if self.shows else ""
        where = f"{self.path} on {self.host.label}"
        return mask(f"put {where} (mode {self.mode:04o}{owner}{size}){shows}")


@dataclass(frozen=True)
class ConsoleTyping:
    """A line typed on `vm`'s console, then Return; where the console can be read, typing
    goes on once it shows `wait_for` (a regular expression). `shown` is how the console
    backend's typing looks in a plan (a secret prints as `*****`)."""

    vm: str
    text: str | Secret
    wait_for: str | None = None
    shown: Callable[[str | Secret], str] | None = field(default=None, compare=False, repr=False)

    def render(self) -> str:
        line = self.shown(self.text) if self.shown else f"type on {self.vm}'s console: {self.text}"
        wait = f"   # then waits for /{self.wait_for}/" if self.wait_for else ""
        return mask(f"{line}{wait}")


Command = LocalCommand | RemoteScript | FilePut | ConsoleTyping


def rendered(commands: Sequence[Command | str]) -> list[str]:
    """A step's plan: each command's rendering; a plain string (work done in Python) as is."""
    return [c if isinstance(c, str) else c.render() for c in commands]
