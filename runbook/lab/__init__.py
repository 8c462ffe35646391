"""The local lab: simulated NixOS VMs (hosts in Linux namespaces with real sshd, fish, sudo, nix).

Public API: `up(lab_file, secrets_dir=None, out=None) -> list[HostStatus]` (also writes the
deployment's params, at `params_path(lab_file)` by default), `down(params=None)`,
`status(params=None)`, `exec_in(name, argv)`, `askpass_env(user)`. Imported lazily, so the
stand-ins that run inside hosts (`runbook.lab.services`, `runbook.lab.standins.*`) start fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["askpass_env", "down", "exec_in", "params_path", "status", "up"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runbook.lab import lifecycle

        return getattr(lifecycle, name)
    raise AttributeError(name)
