"""Lab stand-in for macOS `osascript`: runs the few UTM AppleScripts the runbook sends.

`osascript - ARG...` reads the script from stdin and gives it ARG... as `argv` (the form
packer-plugin-utm uses, reference/utm-peers.md §1). Scripts are recognised by their UTM
commands (reference/utm-makefile-keys.md §3): `make new virtual machine`, `update
configuration` with the removable drives dropped, the drives listed (id, removable, host
size; no source, as UTM reads them), `address of item 1 of network interfaces`,
`... of first serial port`, `version of application "UTM"`, and the Input Automation Suite:
`input scan code of vm codes {...}` is decoded as set-1 make/break codes with a US keymap and
`input keystroke of vm text "..."` typed as is (UTM maps `\\n` to Enter), both onto the VM's
lab console. Anything else fails like osascript does: `execution error: ...` and exit 1.
Like UTM, input needs a started VM ("notRunning", utm-peers.md §0).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from runbook.lab.standins import utm_state


def _fail(message: str, code: int = -2700) -> int:
    print(f"execution error: {message} ({code})", file=sys.stderr)
    return 1


def _vm(state: dict[str, Any], argv: list[str]) -> dict[str, Any] | None:
    return utm_state.find(state, argv[0]) if argv else None


def _applescript_text(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), literal)


def _input(script: str, vm: dict[str, Any]) -> int:
    if vm["status"] != "started":
        return _fail(f"UTM got an error: Virtual machine {vm['name']} is not running.")
    codes = re.search(r"input scan code of vm codes \{([\d,\s]*)\}", script)
    if codes:
        text = utm_state.decode_scan_codes([int(c) for c in re.findall(r"\d+", codes[1])])
    else:
        literal = re.search(r'input keystroke of vm text "((?:[^"\\]|\\.)*)"', script)
        if not literal:
            return _fail("A identifier can\u2019t go after this identifier.", -2740)
        text = _applescript_text(literal[1]).replace("\r\n", "\n").replace("\r", "\n")
    utm_state.type_on_console(vm, text)
    return 0


def _create(state: dict[str, Any], script: str, argv: list[str]) -> int:
    name, iso, host_if, mac = [*argv, "", "", "", ""][:4]
    vm = utm_state.new_vm(name)
    vm["drives"] = [
        {"id": "ISO-0", "removable": True, "source": iso},
        {"id": "DISK-1", "removable": False, "source": None},
    ]
    vm["network"] = {"mode": "bridged", "host_interface": host_if}
    if mac:
        vm["mac"] = mac.upper()
    port = re.search(r"serial ports of config to \{\{interface:tcp, port:(\d+)\}\}", script)
    if port:
        vm["serial"] = {"host": "127.0.0.1", "port": int(port[1])}
    state["vms"].append(vm)
    utm_state.save(state)
    print(vm["uuid"])
    return 0


def run(script: str, argv: list[str]) -> int:
    state = utm_state.load()
    if 'version of application "UTM"' in script:
        print(state.get("version", "4.7.2"))
        return 0
    if "make new virtual machine" in script:
        return _create(state, script, argv)
    vm = _vm(state, argv)
    if vm is None:
        return _fail("UTM got an error: Can\u2019t get virtual machine.", -1728)
    if "input scan code of vm" in script or "input keystroke of vm" in script:
        return _input(script, vm)
    if "if removable of d then" in script:
        if vm["status"] != "stopped":
            return _fail("UTM got an error: The VM must be in the stopped state.")
        gone = [d for d in vm["drives"] if d["removable"]]
        vm["drives"] = [d for d in vm["drives"] if not d["removable"]]
        utm_state.save(state)
        print(len(gone))
        return 0
    if "host size of d" in script:  # runbook.utm.DRIVES_SCRIPT: read-only
        print("\n".join(utm_state.drive_rows(vm)))
        return 0
    if "address of item 1 of network interfaces" in script:
        print(vm["mac"])
        return 0
    if "first serial port of vm" in script:
        serial = vm.get("serial") if vm["status"] == "started" else None
        print(
            f"tcp {serial['host']} {serial['port']}" if serial else "ptty unavailable unavailable"
        )
        return 0
    return _fail("the lab's osascript stand-in does not know this script", -2741)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "-":
        return _fail("the lab's osascript stand-in reads scripts from stdin only (osascript -)")
    script = sys.stdin.read()
    with utm_state.serialized():
        return run(script, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
