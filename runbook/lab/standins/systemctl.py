"""Lab stand-in for systemd's `systemctl`: start/stop/restart/status/is-active/enable/disable.

Reproduces what the runbook and the handbook rely on (reference/handbook.zh.md §2 and §3:
`systemctl restart atticd`, `systemctl restart sshd`), with systemd's conventions:
`is-active` prints active/inactive/failed and exits 0 when active, 3 otherwise
(systemctl(1), "is-active PATTERN…"); `status` exits 0 running, 3 not running, 4 no such
unit (LSB codes, systemctl(1) "Exit status"); an unknown unit on start is
"Failed to start X.service: Unit X.service not found." with exit 5.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from runbook.lab import services, system

EXIT_NOT_RUNNING = 3
EXIT_NO_UNIT = 4
EXIT_NOT_FOUND = 5


def _unit(name: str) -> services.Unit | None:
    try:
        return services.load_unit(name)
    except services.UnitNotFoundError:
        return None


def _env_file(unit: services.Unit) -> str:
    return system.enabled_services(Path("/")).get(unit.name, "")


def _start(unit: services.Unit) -> int:
    try:
        services.start(unit, _env_file(unit))
    except services.StartError as exc:
        print(
            f"Job for {unit.name}.service failed because the control process exited with "
            f'error code.\nSee "systemctl status {unit.name}.service" and '
            f'"journalctl -xeu {unit.name}.service" for details.',
            file=sys.stderr,
        )
        print(f"({exc})", file=sys.stderr)
        return 1
    return 0


def _status(unit: services.Unit) -> int:
    state = services.state(unit)
    pid = services.main_pid(unit)
    enabled = "enabled" if unit.name in system.enabled_services(Path("/")) else "disabled"
    dot = {"active": "●", "failed": "\u00d7"}.get(state, "○")
    print(f"{dot} {unit.name}.service - {unit.description}")
    print(
        f"     Loaded: loaded (/etc/systemd/system/{unit.name}.service; {enabled}; preset: enabled)"
    )
    since = services.started_at(unit)
    when = time.strftime(" since %a %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else ""
    sub = {"active": "active (running)", "failed": "failed (Result: exit-code)"}.get(
        state, "inactive (dead)"
    )
    print(f"     Active: {sub}{when if state != 'inactive' else ''}")
    if pid is not None:
        print(f"   Main PID: {pid} ({Path(unit.exec_start[0]).name})")
    log = Path(f"/var/log/{unit.name}.log")
    if log.exists():
        lines = log.read_text(errors="replace").splitlines()[-10:]
        if lines:
            print()
            print("\n".join(lines))
    return 0 if state == "active" else EXIT_NOT_RUNNING


def _one(verb: str, name: str) -> int:
    unit = _unit(name)
    if unit is None:
        shown = services.canonical(name)
        if verb == "is-active":
            print("inactive")
            return EXIT_NOT_RUNNING
        if verb == "status":
            print(f"Unit {shown}.service could not be found.", file=sys.stderr)
            return EXIT_NO_UNIT
        print(f"Failed to {verb} {shown}.service: Unit {shown}.service not found.", file=sys.stderr)
        return EXIT_NOT_FOUND
    if verb == "is-active":
        state = services.state(unit)
        print(state)
        return 0 if state == "active" else EXIT_NOT_RUNNING
    if verb == "status":
        return _status(unit)
    if verb in ("stop", "restart"):
        services.stop(unit)
    if verb in ("start", "restart") or (verb == "reload-or-restart"):
        return _start(unit)
    if verb in ("enable", "disable", "reload", "daemon-reload"):
        return 0
    return 0


VERBS = (
    "start",
    "stop",
    "restart",
    "reload-or-restart",
    "status",
    "is-active",
    "enable",
    "disable",
    "reload",
)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    quiet = "--quiet" in argv or "-q" in argv
    if not args:
        print("systemctl (runbook lab stand-in): verbs " + ", ".join(VERBS), file=sys.stderr)
        return 1
    verb, names = args[0], args[1:]
    if verb == "daemon-reload":
        return 0
    if verb not in VERBS:
        print(f"Unknown command verb '{verb}'.", file=sys.stderr)
        return 1
    if not names:
        print("Too few arguments.", file=sys.stderr)
        return 1
    if quiet and verb == "is-active":
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            return max(_one(verb, n) for n in names)
    return max(_one(verb, n) for n in names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
