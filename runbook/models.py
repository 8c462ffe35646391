"""Frozen value types shared by the seams: results, hosts, privilege."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from runbook.secrets import mask


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
class Host:
    """A remote target. It never holds a password: passwords are `Secret`s passed apart."""

    name: str
    address: str
    user: str
    port: int = 22
    identity: Path | None = None
    role: str = "worker"
    known_hosts: Path | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        port = "" if self.port == 22 else f":{self.port}"
        return f"{self.user}@{self.address}{port}"
