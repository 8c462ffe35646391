"""`runbook doctor`: examine a nixos-config checkout (and this machine) for the handbook's
known mistakes before anything is deployed, and plan the fixes that are safe to make.

Each check is one function that reads parsed files (`runbook.nixfile`, never regular
expressions over Nix text) and returns findings; the fixable ones come with edits.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypedDict
from urllib.parse import urlsplit

from runbook import local
from runbook.errors import InputError, RunbookError
from runbook.keys import parse_public_key
from runbook.nixcfg import (
    ConfigTree,
    Plan,
    attic_inputs,
    declared_inputs,
    lock_text,
    plan_attic_flake_removal,
    plan_list_item,
    prune_lock,
    read_lock,
    stale_lock_inputs,
)
from runbook.nixfile import NixFile, string_value

logger: Final = logging.getLogger(__name__)

SUBSTITUTERS: Final = ("nix", "settings", "substituters")
EXTRA_SUBSTITUTERS: Final = ("nix", "settings", "extra-substituters")
TRUSTED_KEYS: Final = ("nix", "settings", "trusted-public-keys")
EXTRA_TRUSTED_KEYS: Final = ("nix", "settings", "extra-trusted-public-keys")
# Where the handbook keeps the worker settings (handbook.zh.md §Worker VM 配置).
DEFAULT_WORKER_MODULE: Final = Path("machines/vm-shared.nix")
# What the host side runs: make (the Makefile targets), ssh and rsync (vm/copy), nix (preflight).
HOST_TOOLS: Final = ("nix", "ssh", "rsync", "make")


class Severity(enum.Enum):
    ERROR = "error"  # the deployment will fail or be wrong
    WARNING = "warning"  # likely to bite on UTM; the runbook cannot work around it
    NOTE = "note"  # known and handled by the runbook; said so the user knows

    def __str__(self) -> str:
        return self.value


class FindingJson(TypedDict):
    check: str
    severity: str
    file: str | None
    line: int | None
    message: str
    fixable: bool


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None
    fixable: bool = False

    @property
    def where(self) -> str:
        if self.file is None:
            return "-"
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def as_json(self) -> FindingJson:
        return {
            "check": self.check,
            "severity": str(self.severity),
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "fixable": self.fixable,
        }


@dataclass(frozen=True)
class DoctorOptions:
    config: Path
    cache_url: str | None = None
    public_key: str | None = None
    worker_module: Path = DEFAULT_WORKER_MODULE


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)

    @property
    def errors(self) -> int:
        return sum(f.severity is Severity.ERROR for f in self.findings)

    def count(self, severity: Severity) -> int:
        return sum(f.severity is severity for f in self.findings)


class _Files:
    """The checkout's Nix files that parse; the others become `nix-syntax` findings."""

    def __init__(self, tree: ConfigTree) -> None:
        self.tree = tree
        self.ok = tree.parsed()
        self.broken = [
            Finding("nix-syntax", Severity.ERROR, str(exc), str(rel))
            for rel, exc in tree.broken.items()
        ]

    def bindings(self, path: tuple[str, ...]) -> Iterator[tuple[Path, NixFile, str, int]]:
        """(file, parsed, string value, line) for each string bound at `path`, in lists or not."""
        for rel, nix in self.ok.items():
            for b in nix.find(path):
                values = [b.value] if b.value.type != "list_expression" else b.value.named_children
                for node in values:
                    value = string_value(node, nix.source)
                    if value is not None:
                        yield rel, nix, value, node.start_point.row + 1


# -- options checked before anything is read ------------------------------------------------------


def _is_public_key(key: str) -> bool:
    try:
        parse_public_key(key)
    except InputError:
        return False
    return True


def validate_cache_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--cache-url {url!r}: expected http(s)://HOST[:PORT]/CACHE")


# -- the checks ------------------------------------------------------------------------------------

Check = Callable[[_Files, DoctorOptions, Plan], list[Finding]]


def _from_problems(check: str, plan: Plan, sub: Plan, severity: Severity) -> list[Finding]:
    plan.extend(sub)
    return [
        Finding(check, severity, p.message, str(p.file), p.line, p.fixable) for p in sub.problems
    ]


def check_attic_flake(files: _Files, _opts: DoctorOptions, plan: Plan) -> list[Finding]:
    """Lesson 1: the attic flake's client does not build; nixpkgs' attic does."""
    if Path("flake.nix") not in files.ok:
        return []
    sub = plan_attic_flake_removal(files.tree)
    return _from_problems("attic-flake", plan, sub, Severity.ERROR)


def check_lock(files: _Files, _opts: DoctorOptions, plan: Plan) -> list[Finding]:
    """Lesson 1's last step: the lock must lose the inputs flake.nix no longer has."""
    lock_path = files.tree.root / "flake.lock"
    flake = files.ok.get(Path("flake.nix"))
    if flake is None or not lock_path.is_file():
        return []
    lock = read_lock(lock_path)
    removed = set(attic_inputs(flake))  # the attic-flake fix removes these too
    stale = stale_lock_inputs(lock, declared_inputs(flake) - removed)
    if not stale:
        return []
    message = f"flake.lock still pins {', '.join(stale)}, which flake.nix "
    message += "will no longer have" if set(stale) <= removed else "does not have"
    try:
        plan.rewrites[Path("flake.lock")] = lock_text(prune_lock(lock, stale))
    except RunbookError as exc:
        return [Finding("flake-lock", Severity.ERROR, f"{message}; {exc}", "flake.lock")]
    return [Finding("flake-lock", Severity.ERROR, message, "flake.lock", fixable=True)]


def check_worker_cache(files: _Files, opts: DoctorOptions, plan: Plan) -> list[Finding]:
    """The workers' nix.settings name the cache and trust its key (handbook §Worker VM 配置)."""
    if opts.cache_url is None and opts.public_key is None:
        return []
    rel = opts.worker_module
    nix = files.ok.get(rel)
    if nix is None:
        if (files.tree.root / rel).is_file():
            return []  # it does not parse: already a nix-syntax finding
        return [Finding("worker-cache", Severity.ERROR, f"{rel} not found (set --worker-module)")]
    wanted = [
        (opts.cache_url, SUBSTITUTERS, EXTRA_SUBSTITUTERS, "substituter"),
        (opts.public_key, TRUSTED_KEYS, EXTRA_TRUSTED_KEYS, "trusted public key"),
    ]
    found: list[Finding] = []
    for value, path, extra, what in wanted:
        if value is None or value.rstrip("/") in {
            v.rstrip("/") for v in nix.strings(path) + nix.strings(extra)
        }:
            continue
        edit = plan_list_item(nix, path, value, first=True)  # `attic use` prepends (attic.md §4)
        line = next((b.line for b in nix.find(path)), None)
        found.append(
            Finding(
                "worker-cache",
                Severity.ERROR,
                f"{'.'.join(path)} lacks the {what} {value}",
                str(rel),
                line,
                True,
            )
        )
        if edit is not None:
            plan.edits.setdefault(rel, []).append(edit)
    return found


def check_substituter_addresses(files: _Files, _opts: DoctorOptions, _plan: Plan) -> list[Finding]:
    """Lesson 8: a VM's address changes on reboot, so a substituter must use a name."""
    found: list[Finding] = []
    for path in (SUBSTITUTERS, EXTRA_SUBSTITUTERS):
        for rel, _nix, url, line in files.bindings(path):
            host = urlsplit(url).hostname or ""
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            if not ipaddress.ip_address(host).is_loopback:
                found.append(
                    Finding(
                        "substituter-address",
                        Severity.WARNING,
                        f"substituter {url} uses an IP address, which changes when "
                        "the VM reboots; use its mDNS name (HOST.local)",
                        str(rel),
                        line,
                    )
                )
    return found


def check_trusted_keys(files: _Files, _opts: DoctorOptions, _plan: Plan) -> list[Finding]:
    """A malformed trusted key makes Nix reject every signature from that cache."""
    found: list[Finding] = []
    for path in (TRUSTED_KEYS, EXTRA_TRUSTED_KEYS):
        for rel, _nix, key, line in files.bindings(path):
            if not _is_public_key(key):
                found.append(
                    Finding(
                        "trusted-key",
                        Severity.ERROR,
                        f"{key!r} is not NAME:KEY with KEY the base64 of 32 bytes",
                        str(rel),
                        line,
                    )
                )
    return found


def check_logins(files: _Files, _opts: DoctorOptions, _plan: Plan) -> list[Finding]:
    """Lessons 5 and 7: after vm/switch root cannot log in, and users may have fish."""
    found: list[Finding] = []
    for rel, _nix, value, line in files.bindings(
        ("services", "openssh", "settings", "PermitRootLogin")
    ):
        if value == "no":
            found.append(
                Finding(
                    "root-login",
                    Severity.NOTE,
                    "root cannot log in over SSH after "
                    "vm/switch; the runbook uses the user's key from then on",
                    str(rel),
                    line,
                )
            )
    for rel, nix in files.ok.items():
        for b in nix.under(("users", "users")):
            if len(b.path) == 4 and b.path[3] == "shell" and nix.text(b.value).endswith("fish"):
                found.append(
                    Finding(
                        "fish-shell",
                        Severity.NOTE,
                        f"{b.path[2]} logs in to fish; "
                        "the runbook sends bash on stdin, never a command line",
                        str(rel),
                        b.line,
                    )
                )
    return found


def check_dhcp_interface(files: _Files, _opts: DoctorOptions, _plan: Plan) -> list[Finding]:
    """DHCP pinned to one NIC name (`networking.interfaces.enp0s10.useDHCP`, with the global
    switch off) leaves a VM whose NIC is named otherwise without an address
    (reference/utm-makefile-keys.md §1 "What this means for UTM")."""
    found: list[Finding] = []
    global_off = any(
        nix.text(b.value) == "false"
        for nix in files.ok.values()
        for b in nix.find(("networking", "useDHCP"))
    )
    if not global_off:
        return found
    for rel, nix in files.ok.items():
        for b in nix.under(("networking", "interfaces")):
            if len(b.path) == 4 and b.path[3] == "useDHCP" and nix.text(b.value) == "true":
                found.append(
                    Finding(
                        "dhcp-interface",
                        Severity.WARNING,
                        f"DHCP runs only on {b.path[2]}; check the VM's NIC has that "
                        "name (`ip link` on the console)",
                        str(rel),
                        b.line,
                    )
                )
    return found


def check_makefile_disk(files: _Files, _opts: DoctorOptions, _plan: Plan) -> list[Finding]:
    """vm/bootstrap0 partitions /dev/sda, but UTM's default disk is VirtIO: /dev/vda
    (reference/utm-makefile-keys.md §1 "What this means for UTM")."""
    makefile = files.tree.root / "Makefile"
    if not makefile.is_file():
        return []
    for number, line in enumerate(makefile.read_text(errors="replace").splitlines(), 1):
        if "/dev/sda" in line and "parted" in line:
            return [
                Finding(
                    "bootstrap-disk",
                    Severity.WARNING,
                    "vm/bootstrap0 partitions /dev/sda; "
                    "a UTM VirtIO disk is /dev/vda (create the disk as SCSI, or patch "
                    "the target)",
                    "Makefile",
                    number,
                )
            ]
    return []


def check_host_tools(_files: _Files, _opts: DoctorOptions, _plan: Plan) -> list[Finding]:
    return [
        Finding("host-tool", Severity.WARNING, f"`{tool}` is not on PATH")
        for tool in HOST_TOOLS
        if local.which(tool) is None
    ]


CHECKS: Final[tuple[Check, ...]] = (
    check_attic_flake,
    check_lock,
    check_worker_cache,
    check_substituter_addresses,
    check_trusted_keys,
    check_logins,
    check_dhcp_interface,
    check_makefile_disk,
    check_host_tools,
)


def examine(opts: DoctorOptions) -> Report:
    """Run every check; the report's plan holds the edits for the fixable findings."""
    if opts.cache_url is not None:
        validate_cache_url(opts.cache_url)
    if opts.public_key is not None:
        try:
            parse_public_key(opts.public_key)
        except InputError as exc:
            raise InputError(f"--public-key: {exc}") from None
    files = _Files(ConfigTree(opts.config))
    report = Report(findings=list(files.broken))
    for check in CHECKS:
        report.findings.extend(check(files, opts, report.plan))
    return report


def render_text(report: Report) -> str:
    lines = [
        f"{f.severity!s:<8}{f.where:<32}{f.check:<20}{f.message}"
        + ("  [fixable]" if f.fixable else "")
        for f in report.findings
    ]
    fixable = sum(f.fixable for f in report.findings)
    summary = (
        f"{report.count(Severity.ERROR)} errors, {report.count(Severity.WARNING)} warnings, "
        f"{report.count(Severity.NOTE)} notes"
    )
    lines.append(summary + (f"; {fixable} fixable with --fix" if fixable else ""))
    return "\n".join(lines)


def render_json(report: Report) -> str:
    return json.dumps([f.as_json() for f in report.findings], indent=2)
