"""A lab file (the shape of lab/lab.yaml) for any size of lab.

Tests and benchmarks run their own lab beside the one of lab/lab.yaml (another state dir,
subnet and bridge); this writes the matching lab file: the cache VM first, then `workers`
worker VMs, each VM named for its flake configuration (vm-aarch64-utm, -2, ...), every host
in `phase` (`live`: the NixOS ISO, for the first-install path 01-04). `lab.up(path)` then
writes the deployment's params (`lab.params_path(path)`), which `runbook deploy` takes.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Final

import yaml

from runbook.lab.config import FIRST_HOST

MAX_WORKERS: Final = 4  # the lab nixos-config's flake has vm-aarch64-utm, -2, -3, -4


def worker_name(i: int) -> str:
    return "vm-aarch64-utm" if i == 0 else f"vm-aarch64-utm-{i + 1}"


def deployment(
    *,
    state_dir: Path,
    subnet: str,
    bridge: str,
    workers: int = 1,
    passwords: dict[str, str] | None = None,
    name: str = "labtest",
    phase: str = "installed",
) -> dict[str, Any]:
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers: expected 1..{MAX_WORKERS}")
    net = ipaddress.IPv4Network(subnet)

    def addr(i: int) -> str:
        return str(net.network_address + FIRST_HOST + i)

    names = ["vm-aarch64-utm-cache", *(worker_name(i) for i in range(workers))]
    hosts = ["nixos-utm-cache", *(f"nixos-utm-worker{i + 1}" for i in range(workers))]
    return {
        "deployment": name,
        "user": "jqwang",
        "vms": [
            {"name": n, "role": "cache" if i == 0 else "worker", "address": addr(i)}
            for i, n in enumerate(names)
        ],
        "cache": {"vm": names[0], "host": addr(0), "port": 8080, "name": "main"},
        "lab": {
            "state_dir": str(state_dir),
            "subnet": subnet,
            "bridge": bridge,
            "passwords": passwords or {"root": "zu8Rk-live-4pq", "jqwang": "jqwang-lab"},
            "hosts": [
                {"name": h, "nixname": n, "phase": phase} for h, n in zip(hosts, names, strict=True)
            ],
        },
    }


def write(path: Path, **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(deployment(**kwargs), sort_keys=False))
    return path
