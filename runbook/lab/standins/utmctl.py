"""Lab stand-in for UTM's `utmctl` (macOS only): list, status, start, stop, suspend,
ip-address, attach, delete, version, over the lab's UTM state (utm_state.py).

Output formats are utmctl's (reference/utm-makefile-keys.md §2): the `list` header
`UUID<33 spaces>Status   Name` and rows `<uuid> <status padded to 8> <name>`; `status` one
word; `ip-address` one address per line; `attach` `TCP: <addr>:<port>` or `PTTY: <path>`.
Errors go to stderr as `Error from event: <desc>` + UTM's text, and like the real tool the
exit code stays 0 (its AppleEvent error handler never sets one, §2 "Errors", §8).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runbook.lab.standins import utm_state

EVENT_FAILED = "Error from event: The operation couldn\u2019t be completed. (OSStatus error -2700.)"
# UTM's ScriptingError texts (utmapp/UTM `Scripting/UTMScriptingVirtualMachineImpl.swift`):
# `withGuestAgent` throws notRunning unless the VM is started, then guestAgentNotRunning when
# QEMU has no guest agent channel answering. Neither the NixOS ISO
# (`nixos/modules/profiles/installation-device.nix`) nor mitchellh's UTM config enables
# `services.qemuGuest`, so every lab VM's `guest_agent` is false and `ip-address` fails.
NOT_RUNNING = "The virtual machine is not running."
NO_AGENT = "The QEMU guest agent is not running or not installed on the guest."
# `start` of a VM neither stopped nor paused, and `stop` (but --kill) of one not started, are
# refused (UTMScriptingVirtualMachineImpl.swift `start`: operationNotAvailable; `stop`:
# notRunning). A VM a lab host plays (`hosts` in the state) really starts and stops: the
# host boots from its tree or powers off (runbook/lab/vm.py).
NOT_AVAILABLE = "Operation not available."


def _event_error(message: str) -> int:
    print(EVENT_FAILED, file=sys.stderr)
    print(message, file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="utmctl")
    p.add_argument("-d", "--debug", action="store_true")
    p.add_argument("--hide", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    sub.add_parser("list")
    for name in ("status", "ip-address", "delete"):
        sub.add_parser(name).add_argument("vm")
    start = sub.add_parser("start")
    start.add_argument("vm")
    for flag in ("--attach", "--disposable", "--recovery"):
        start.add_argument(flag, action="store_true")
    stop = sub.add_parser("stop")
    stop.add_argument("vm")
    mode = stop.add_mutually_exclusive_group()
    for flag in ("--force", "--kill", "--request"):
        mode.add_argument(flag, action="store_true")
    suspend = sub.add_parser("suspend")
    suspend.add_argument("vm")
    suspend.add_argument("-s", "--save-state", action="store_true")
    attach = sub.add_parser("attach")
    attach.add_argument("vm")
    attach.add_argument("--index", type=int, default=0)
    return p


def _run(args: argparse.Namespace, state: dict[str, Any], vm: dict[str, Any]) -> int:
    if args.cmd == "status":
        print(vm["status"])
    elif args.cmd == "start":
        if vm["status"] not in ("stopped", "paused"):
            return _event_error(NOT_AVAILABLE)
        played = utm_state.host_of(state, vm)
        if played is not None and vm["status"] == "stopped":
            from runbook.lab import vm as lab_vm

            serial = vm.get("serial") or {}
            lab_vm.power_on(played, int(serial.get("port") or 0))
        vm["status"] = "started"
    elif args.cmd == "stop":
        if vm["status"] != "started" and not args.kill:
            return _event_error(NOT_RUNNING)
        played = utm_state.host_of(state, vm)
        if played is not None:
            from runbook.lab import vm as lab_vm

            lab_vm.power_off(played, force=not args.request)  # utmctl: --force by default
        vm["status"] = "stopped"
    elif args.cmd == "suspend":
        vm["status"] = "paused"
    elif args.cmd == "delete":
        state["vms"].remove(vm)
    elif args.cmd == "ip-address":
        if vm["status"] != "started":
            return _event_error(NOT_RUNNING)
        if not vm.get("guest_agent"):
            return _event_error(NO_AGENT)
        for address in sorted(vm["addresses"], key=lambda a: ":" in a):  # IPv4 first
            print(address)
    elif args.cmd == "attach":
        serial = vm.get("serial")
        if vm["status"] != "started" or not serial:
            return _event_error("Operation not supported by the backend.")
        print(f"TCP: {serial['host']}:{serial['port']}")
    utm_state.save(state)
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    with utm_state.serialized():
        return _answer(args)


def _answer(args: argparse.Namespace) -> int:
    state = utm_state.load()
    if args.cmd == "version":
        print(state.get("version", utm_state.DEFAULT_VERSION))
        return 0
    if args.cmd == "list":
        print("UUID                                 Status   Name")
        for vm in state["vms"]:
            print(f"{vm['uuid']} {vm['status']:<8} {vm['name']}")
        return 0
    vm = utm_state.find(state, args.vm)
    if vm is None:
        print("Virtual machine not found.", file=sys.stderr)
        return 1
    return _run(args, state, vm)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
