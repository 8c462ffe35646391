"""Frozen value types shared by the seams: results, hosts, privilege, deadlines."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from runbook.core.masking import mask


class Elevate(enum.Enum):
    """How a remote command gets root: as the login user, or through sudo."""

    NONE = "none"
    SUDO = "sudo"  # passwordless sudo (`sudo -n`), as wheelNeedsPassword = false gives

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Result:
    """What a command did. `command` is the rendered command, already masked."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    host: str = "localhost"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def __post_init__(self) -> None:
        # Mask once, here, so every consumer of a Result sees masked text.
        object.__setattr__(self, "command", mask(self.command))
        object.__setattr__(self, "stdout", mask(self.stdout))
        object.__setattr__(self, "stderr", mask(self.stderr))


@dataclass(frozen=True)
class Deadlines:
    """How long remote work may take, in seconds; each bound holds when the peer vanishes.

    A host that misses `keepalive_count` keepalives sent `keepalive` seconds apart is dead
    (OpenSSH's ServerAliveInterval/ServerAliveCountMax). `command` bounds one command's wall
    time; a transfer is judged by progress instead: no byte either way for `stall` seconds.
    The deployment's `timeouts:` params fill these (runbook.core.params.Timeouts).
    """

    connect: float = 10.0
    command: float = 3600.0
    stall: float = 300.0
    keepalive: float = 5.0
    keepalive_count: int = 3

    @property
    def dead_after(self) -> float:
        """The longest a dead peer goes unnoticed: one interval before the first unanswered
        keepalive, then `keepalive_count` intervals without an answer."""
        return self.keepalive * (self.keepalive_count + 1)


@dataclass(frozen=True)
class Host:
    """A remote target. It never holds a password: passwords are `Secret`s passed apart."""

    name: str
    address: str
    user: str
    port: int = 22
    identity: Path | None = None
    role: str = "worker"
    known_hosts: Path | None = field(default=None, compare=False)
    deadlines: Deadlines = field(default=Deadlines(), compare=False)

    @property
    def label(self) -> str:
        port = "" if self.port == 22 else f":{self.port}"
        return f"{self.user}@{self.address}{port}"
