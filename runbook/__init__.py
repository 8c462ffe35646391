"""Executable runbooks for a UTM + NixOS + Attic binary cache deployment."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Read lazily: package metadata costs ~30 ms at import, and the lab's stand-ins import
    # this package on every call.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("runbook")
        except PackageNotFoundError:  # running from a checkout without an install
            return "0.0.0+checkout"
    raise AttributeError(f"module 'runbook' has no attribute {name!r}")
