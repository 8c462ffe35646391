"""Secret values: masked wherever output goes, and a 0600 store outside the repo.

Every `Secret` registers its value in a process-wide set; `mask()` replaces every
registered value in any text. The logging filter, result objects, error messages and
notebook display all pass through `mask()`, so a secret is never written in clear.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from runbook.core.errors import InputError
from runbook.core.masking import MASK, MaskingError, register

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Secret:
    """A secret string: prints as `*****`; `reveal()` is the only way to the value."""

    __slots__ = ("_value", "name")

    def __init__(self, value: str, name: str = "secret") -> None:
        """Raises InputError (exit 2, naming the secret, never its value) for a value too
        long to mask cheaply or one that is a name the runbook prints (masking.register)."""
        try:
            register(value, name)
        except MaskingError as exc:
            raise InputError(str(exc)) from None
        self._value = value
        self.name = name

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, {MASK})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def _repr_html_(self) -> str:  # notebook display
        return MASK


def secret_from_env(var: str, name: str | None = None) -> Secret | None:
    """The environment variable `var` as a Secret, or None when unset or empty."""
    value = os.environ.get(var)
    return Secret(value, name or var) if value else None


def default_store_dir() -> Path:
    """`$RUNBOOK_SECRETS`, else `$XDG_STATE_HOME/runbook/secrets`, else ~/.local/state/..."""
    explicit = os.environ.get("RUNBOOK_SECRETS")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "runbook" / "secrets"


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the first byte (atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class SecretStore:
    """A directory (0700) of secret files (0600), one per name, outside the repository.

    Notebooks receive only the *name* of a secret as a parameter and read the value
    here, so papermill never stores it.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_store_dir()).expanduser()

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def path(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise InputError(f"secret name {name!r}: expected letters, digits, '.', '_' or '-'")
        return self.root / name

    def put(self, name: str, value: str | Secret) -> Secret:
        raw = value.reveal() if isinstance(value, Secret) else value
        secret = Secret(raw, name)
        self._ensure_root()
        write_private(self.path(name), raw.encode())
        return secret

    def get(self, name: str) -> Secret | None:
        p = self.path(name)
        if not p.exists():
            return None
        return Secret(p.read_text(), name)

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def load_all(self) -> int:
        """Register every stored secret for masking; returns how many."""
        if not self.root.is_dir():
            return 0
        n = 0
        for p in sorted(self.root.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                Secret(p.read_text(), p.name)
                n += 1
        return n
