"""The project's exception hierarchy; every message is masked before it is shown."""

from __future__ import annotations

from typing import Final

from runbook.secrets import mask

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2


class RunbookError(Exception):
    """Base error: formats as one masked line; `exit_code` is what the CLI exits with."""

    exit_code: int = EXIT_FAILED

    def __init__(self, *args: object) -> None:
        # Mask at construction too, so args, repr() and pickles never hold a secret.
        super().__init__(*(mask(a) if isinstance(a, str) else a for a in args))

    def __str__(self) -> str:
        return mask(super().__str__())

    def __repr__(self) -> str:
        return mask(super().__repr__())


class InputError(RunbookError):
    """A user's mistake in a file, key or argument (exit 2, no traceback)."""

    exit_code = EXIT_BAD_INPUT


class ConnectError(RunbookError):
    """A host could not be reached or refused authentication."""


class HostKeyChangedError(ConnectError):
    """The host presented a key other than the one in known_hosts."""


class AuthenticationRefusedError(ConnectError):
    """sshd answered (its host key checked) but refused the user's key or password."""


class CommandError(RunbookError):
    """A command exited with a code the caller did not accept."""

    def __init__(
        self,
        *,
        host: str,
        command: str,
        exit_code: int | None,
        stderr: str = "",
        reason: str = "",
    ) -> None:
        self.host = host
        self.command = mask(command)
        self.returncode = exit_code
        self.stderr_tail = tail(stderr)
        what = reason or f"exited with {exit_code}"
        msg = f"on {host}: `{command}` {what}"
        if self.stderr_tail:
            msg += f"; stderr tail: {self.stderr_tail}"
        super().__init__(msg)


class CommandTimeoutError(CommandError):
    """A command ran past its timeout and was stopped."""


class ConnectionLostError(CommandError):
    """The connection dropped while a command ran."""


def tail(text: str, lines: int = 5, width: int = 400) -> str:
    """The last few non-empty lines of `text`, joined with ' | ' (one line for a summary)."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= width else "..." + joined[-width:]
