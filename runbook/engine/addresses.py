"""The addresses this run found for its VMs (02, 03), kept in its record folder.

A VM's address changes on reboot (handbook lesson 8), so it is found again on every run and
never remembered across runs; within a run, 03-09 use what 02/03 found.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Final

from runbook.core.params import Loaded

ADDRESSES_FILE: Final = "addresses.json"  # in the run's record dir: VM name -> address found
ADDRESS_PROBE_TIMEOUT: Final = 2.0
_addresses_lock = threading.Lock()


def record_address(record_dir: Path | None, vm: str, address: str, method: str) -> None:
    """Remember where `vm` answers now, for the later notebooks of this run only (02 finds it;
    03 again after its reboot). Never a secret: a name, an address and how it was found."""
    if record_dir is None:
        return
    from datetime import UTC, datetime

    from runbook.core.secrets import write_private

    path = record_dir / ADDRESSES_FILE
    with _addresses_lock:
        found = run_addresses(record_dir)
        found[vm] = {
            "address": address,
            "method": method,
            "found": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_private(path, (json.dumps(found, indent=2, sort_keys=True) + "\n").encode())


def run_addresses(record_dir: Path) -> dict[str, dict[str, str]]:

    try:
        data = json.loads((record_dir / ADDRESSES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict) and "address" in v}


def with_run_addresses(loaded: Loaded, record_dir: Path) -> Loaded:
    """The deployment with each VM at the address this run found for it (02, 03), instead of
    the params' one. An address that no longer answers on the SSH port (a resumed run after a
    reboot) is dropped, so a stale IP is never used; a cache host given as the cache VM's
    params address moves with it (lesson 8)."""
    from runbook.transport.remote import tcp_probe

    dep = loaded.deployment
    found = run_addresses(record_dir)
    vms, moved = [], {}
    for vm in dep.vms:
        entry = found.get(vm.name)
        address = str(entry["address"]) if entry else vm.address
        if entry and address != vm.address:
            if tcp_probe(vm.port, ADDRESS_PROBE_TIMEOUT)(address):
                print(f"{vm.name}: {address} (found by {entry.get('method')} in this run)")
                moved[vm.address] = address
                vm = vm.model_copy(update={"address": address})
            else:
                print(f"{vm.name}: {address} (found earlier in this run) no longer answers")
        vms.append(vm)
    if not moved:
        return loaded
    update: dict[str, object] = {"vms": tuple(vms)}
    if dep.cache.host in moved:
        update["cache"] = dep.cache.model_copy(update={"host": moved[dep.cache.host]})
    return Loaded(loaded.path, loaded.digest, dep.model_copy(update=update))
