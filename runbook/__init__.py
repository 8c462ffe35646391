"""Executable runbooks for a UTM + NixOS + Attic binary cache deployment."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("runbook")
except PackageNotFoundError:  # running from a checkout without an install
    __version__ = "0.0.0+checkout"
