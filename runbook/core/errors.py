"""The project's exception hierarchy; every message is masked before it is shown."""

from __future__ import annotations

from typing import Final

from runbook.core.masking import mask

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
    """A command exited with a code the caller did not accept (or never exited: see below)."""

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
        self.outcome = mask(reason or f"exited with {exit_code}")
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"on {self.host}: `{self.command}` {self.outcome}"
        if self.stderr_tail:
            msg += f"; stderr tail: {self.stderr_tail}"
        return msg

    @property
    def summary(self) -> str:
        """What happened, without the command: `exit 3` or why there is no exit code."""
        return f"exit {self.returncode}" if self.returncode is not None else self.outcome


class CommandTimeoutError(CommandError):
    """A command ran past its timeout and was stopped."""


class CommandStalledError(CommandError):
    """A transfer moved no byte either way for its stall bound and was stopped."""


class ConnectionLostError(CommandError):
    """The connection dropped while a command ran: `connection to HOST lost during ...`."""

    @property
    def summary(self) -> str:
        return f"connection to {self.host} lost during the command: {self.outcome}"

    def _message(self) -> str:
        msg = f"connection to {self.host} lost during `{self.command}`: {self.outcome}"
        if self.stderr_tail:
            msg += f"; stderr tail: {self.stderr_tail}"
        return msg


class RunLockedError(RunbookError):
    """Another live process runs this deployment (or this record): refused before anything runs."""

    exit_code = EXIT_BAD_INPUT


class RecordWriteError(RunbookError):
    """The records root cannot be written (disk full, read-only): the run stops."""


def tail(text: str, lines: int = 5, width: int = 400) -> str:
    """The last few non-empty lines of `text`, joined with ' | ' (one line for a summary)."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= width else "..." + joined[-width:]
