"""The checks on this machine: the SSH identity, and on macOS UTM's command line, its
version and the console backend."""

from __future__ import annotations

import logging
import plistlib
from pathlib import Path
from typing import Final

from runbook.core.errors import tail
from runbook.doctor.context import NO_PARAMS, DoctorContext
from runbook.doctor.model import DoctorCheck, Status, Verdict, check, ok, unchecked_verdict
from runbook.mac.utm import INPUT_AUTOMATION_MIN
from runbook.transport import local

logger: Final = logging.getLogger(__name__)

DEFAULT_UTMCTL: Final = Path("/Applications/UTM.app/Contents/MacOS/utmctl")
# UTM `input scan code`/`input keystroke` (utm-makefile-keys.md §6) work from 4.7.3: 4.7.2's
# Scripting/UTM.sdef gave `UTM version` the code of the class `virtual machine` (UTM #7360).
UTM_INPUT_MIN: Final = INPUT_AUTOMATION_MIN
NOT_MACOS: Final = "not on macOS"

CHECKS: Final[list[DoctorCheck]] = []


@check(CHECKS, "ssh-key", "lesson 7: after the switch only the user's key logs in")
def check_ssh_key(ctx: DoctorContext) -> Verdict:
    if ctx.deployment is None:
        return unchecked_verdict(NO_PARAMS)
    key = ctx.deployment.identity
    if not key.is_file():
        return Verdict(
            Status.FAIL,
            f"identity {key} does not exist",
            f"create it: ssh-keygen -t ed25519 -f {key}",
        )
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        return Verdict(
            Status.FAIL,
            f"identity {key} has mode {mode:04o}: ssh refuses a private key others can read",
            f"chmod 600 {key}",
        )
    public = key.with_name(key.name + ".pub")
    if not public.is_file():
        return Verdict(
            Status.FAIL,
            f"{public} (the public half) does not exist",
            f"ssh-keygen -y -f {key} > {public}",
        )
    if not _halves_match(key, public):
        return Verdict(
            Status.FAIL,
            f"{public} is not the public half of {key}",
            f"ssh-keygen -y -f {key} > {public}",
        )
    return ok(f"{key} (mode {mode:04o}) and {public.name}")


def _halves_match(key: Path, public: Path) -> bool:
    """False only when both halves load and differ (a passphrase-protected key is not read)."""
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        derived = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    except (ValueError, TypeError, OSError):
        return True
    written = public.read_bytes().split()[:2]
    return written == derived.split()[:2]


def _utmctl(ctx: DoctorContext) -> Path:
    return ctx.deployment.utm.utmctl if ctx.deployment is not None else DEFAULT_UTMCTL


@check(CHECKS, "utmctl", "部署流程 1: UTM's command line drives the VMs")
def check_utmctl(ctx: DoctorContext) -> Verdict:
    if ctx.system != "Darwin":
        return unchecked_verdict(NOT_MACOS)
    utmctl = _utmctl(ctx)
    if not utmctl.is_file():
        return Verdict(
            Status.FAIL,
            f"{utmctl} not found",
            "install UTM (https://mac.getutm.app) or set utm.utmctl in params",
        )
    result = local.run([str(utmctl), "list"], check=False, timeout=30)
    if result.exit_code != 0 or "Error" in result.stderr or "NOTE:" in result.stderr:
        return Verdict(
            Status.FAIL,
            f"`utmctl list` did not answer: {tail(result.stderr or result.stdout, 2)}",
            "run from a logged-in session (not over SSH) and allow Automation for UTM",
        )
    return ok(f"{utmctl} answers ({max(len(result.stdout.splitlines()) - 1, 0)} VMs)")


def utm_version(utmctl: Path) -> tuple[int, ...] | None:
    """UTM's version from UTM.app's Info.plist (…/UTM.app/Contents/MacOS/utmctl)."""
    try:
        info = plistlib.loads((utmctl.parents[1] / "Info.plist").read_bytes())
        return tuple(int(p) for p in str(info["CFBundleShortVersionString"]).split("."))
    except (OSError, KeyError, ValueError, IndexError, plistlib.InvalidFileException):
        return None


def _backend(ctx: DoctorContext) -> str:
    return ctx.deployment.console.backend if ctx.deployment is not None else "utm-input"


@check(CHECKS, "utm-version", "lesson 4: UTM >= 4.7.3 types on the console without Hammerspoon")
def check_utm_version(ctx: DoctorContext) -> Verdict:
    if ctx.system != "Darwin":
        return unchecked_verdict(NOT_MACOS)
    version = utm_version(_utmctl(ctx))
    if version is None:
        return Verdict(
            Status.FAIL, "UTM's version unreadable (no UTM.app Info.plist)", "install UTM >= 4.7.3"
        )
    shown = ".".join(map(str, version))
    if version >= UTM_INPUT_MIN:
        return ok(f"UTM {shown} (the utm-input backend needs >= 4.7.3)")
    status = Status.FAIL if _backend(ctx) == "utm-input" else Status.WARN
    why = (
        "its scripting dictionary gives `UTM version` the code of `virtual machine`, UTM #7360"
        if version[:3] == (4, 7, 2)
        else "no working `input scan code`/`input keystroke` before 4.7.3"
    )
    return Verdict(
        status,
        f"UTM {shown} < 4.7.3: the utm-input backend cannot type ({why})",
        "update UTM to 4.7.3 or later, or use console.backend: hammerspoon",
    )


@check(CHECKS, "console-backend", "lesson 4: the console backend can type into the VM")
def check_console_backend(ctx: DoctorContext) -> Verdict:
    if ctx.system != "Darwin":
        return unchecked_verdict(NOT_MACOS)
    backend = _backend(ctx)
    if backend == "hammerspoon":
        if local.which("hs") is None:
            return Verdict(
                Status.FAIL,
                "`hs` (Hammerspoon's CLI) is not on PATH",
                'in Hammerspoon: hs.ipc.cliInstall("/opt/homebrew")',
            )
        result = local.run(["hs", "-c", "return 1"], check=False, timeout=10)
        if result.exit_code != 0:
            return Verdict(
                Status.FAIL,
                f"`hs -c` exits {result.exit_code} (69: Hammerspoon not running or hs.ipc not loaded)",
                'add require("hs.ipc") to ~/.hammerspoon/init.lua and reload',
            )
        return ok("hammerspoon: hs answers through hs.ipc")
    if backend == "utm-input":
        if local.which("osascript") is None:
            return Verdict(
                Status.FAIL, "osascript not found", "the utm-input backend needs macOS's osascript"
            )
        return ok("utm-input: osascript present (UTM's version: see utm-version)")
    if backend == "serial":
        port = ctx.deployment.console.serial_port if ctx.deployment else None
        if port is None:
            return Verdict(
                Status.FAIL,
                "console.backend serial without console.serial_port",
                "set console.serial_port",
            )
        return ok(f"serial console on TCP port {port}")
    import importlib.util

    if importlib.util.find_spec("Quartz") is None:
        return Verdict(
            Status.FAIL,
            "quartz backend: pyobjc's Quartz is not installed",
            "pip install pyobjc-framework-Quartz",
        )
    return ok("quartz: pyobjc Quartz importable")
