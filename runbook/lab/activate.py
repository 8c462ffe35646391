"""Turn an evaluated configuration into a lab host's files and services (the activation).

The options read are the ones the runbook changes (see README): users, SSH login rules,
nix.settings substituters/trusted-public-keys, services.atticd, networking.hostName,
security.sudo.wheelNeedsPassword, and environment.systemPackages (by attribute name: which
lab programs the system has, system.PACKAGED_PROGRAMS).
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Final

from runbook.lab import nixconfig, services, system
from runbook.lab.nixconfig import EvalError, Evaluated

logger: Final = logging.getLogger(__name__)

OPTIONS: Final[dict[tuple[str, ...], str]] = {
    ("networking", "hostName"): "str",
    ("users", "users", "*", "isNormalUser"): "bool",
    ("users", "users", "*", "extraGroups"): "list",
    ("users", "users", "*", "shell"): "shell",
    ("users", "users", "*", "hashedPassword"): "str",
    ("users", "users", "*", "initialPassword"): "str",
    ("users", "users", "*", "password"): "str",
    ("users", "users", "*", "openssh", "authorizedKeys", "keys"): "list",
    ("users", "users", "*", "openssh", "authorizedKeys", "keyFiles"): "paths",
    ("services", "openssh", "enable"): "bool",
    ("services", "openssh", "settings", "PermitRootLogin"): "str",
    ("services", "openssh", "settings", "PasswordAuthentication"): "bool",
    ("services", "openssh", "permitRootLogin"): "str",
    ("services", "openssh", "passwordAuthentication"): "bool",
    ("nix", "settings", "substituters"): "list",
    ("nix", "settings", "trusted-public-keys"): "list",
    ("services", "atticd", "enable"): "bool",
    ("services", "atticd", "environmentFile"): "path",
    ("security", "sudo", "wheelNeedsPassword"): "bool",
}
LAB_UID_START: Final = system.NORMAL_UID


def system_packages(ev: Evaluated) -> tuple[str, ...]:
    """The attribute names in every environment.systemPackages definition of the evaluated
    files (`pkgs.git`, `git` under `with pkgs;`, lists joined with `++`). NixOS merges the
    modules' lists; a form the lab cannot evaluate (a variable, `lib.optionals`, `mkIf`) is
    an error, as for the other options."""
    from runbook.nix.nixcfg import SYSTEM_PACKAGES, package_elements
    from runbook.nix.nixfile import NixFile

    names: set[str] = set()
    for path in ev.files:
        nix = NixFile.read(path)
        for binding in nix.find(SYSTEM_PACKAGES):
            where = f"{path}:{binding.line}"
            if "mkIf" in binding.wrappers:
                raise EvalError(
                    f"{where}: environment.systemPackages: mkIf is not evaluated by the lab"
                )
            packages = package_elements(binding.value, nix)
            if not packages.decided or any(guarded for _, _, guarded in packages.elements):
                raise EvalError(
                    f"{where}: cannot evaluate environment.systemPackages "
                    "(the lab reads list literals, `with pkgs;` and `++` only)"
                )
            names.update(text.rsplit(".", 1)[-1] for text in packages.names())
    return tuple(sorted(names))


def _password(ev: Evaluated, user: str) -> str | None:
    hashed = ev.get("users", "users", user, "hashedPassword")
    if isinstance(hashed, str):
        return hashed
    plain = ev.get("users", "users", user, "initialPassword") or ev.get(
        "users", "users", user, "password"
    )
    return system.hash_password(plain) if isinstance(plain, str) else None


def _keys(ev: Evaluated, user: str) -> tuple[str, ...]:
    keys = ev.strings("users", "users", user, "openssh", "authorizedKeys", "keys")
    for file in ev.strings("users", "users", user, "openssh", "authorizedKeys", "keyFiles"):
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise EvalError(f"getting status of '{file}': {exc.strerror}") from None
        keys += [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip()[0] != "#"]
    return tuple(str(k) for k in keys)


def system_config(ev: Evaluated, phase: str, default_hostname: str) -> system.SystemConfig:
    users = []
    for i, name in enumerate(sorted(ev.names_under("users", "users") - {"root"})):
        if ev.get("users", "users", name, "isNormalUser") is not True:
            raise EvalError(
                f"users.users.{name}: the lab makes normal users only (isNormalUser = true)"
            )
        users.append(
            system.User(
                name=name,
                uid=LAB_UID_START + i,
                shell=str(ev.get("users", "users", name, "shell", default="/bin/bash")),
                groups=tuple(ev.strings("users", "users", name, "extraGroups")),
                hashed_password=_password(ev, name),
                authorized_keys=_keys(ev, name),
            )
        )
    permit = (
        ev.get("services", "openssh", "settings", "PermitRootLogin")
        or ev.get("services", "openssh", "permitRootLogin")
        or "prohibit-password"
    )
    password_auth = ev.get("services", "openssh", "settings", "PasswordAuthentication")
    if password_auth is None:
        password_auth = ev.get("services", "openssh", "passwordAuthentication", default=True)
    svc = {"nix-daemon": ""}  # NixOS always runs it (nix.enable defaults to true)
    if ev.get("services", "openssh", "enable") is not False:
        svc["sshd"] = ""
    if ev.get("services", "atticd", "enable") is True:
        svc["atticd"] = str(ev.get("services", "atticd", "environmentFile", default="") or "")
    return system.SystemConfig(
        hostname=str(ev.get("networking", "hostName", default=default_hostname)),
        phase=phase,
        permit_root_login=str(permit),
        password_authentication=bool(password_auth),
        root_hashed_password=_password(ev, "root"),
        users=tuple(users),
        substituters=tuple(ev.strings("nix", "settings", "substituters")),
        trusted_public_keys=tuple(ev.strings("nix", "settings", "trusted-public-keys")),
        services=svc,
        wheel_needs_password=ev.get("security", "sudo", "wheelNeedsPassword") is True,
        packages=system_packages(ev),
    )


def evaluate_files(files: list[Path]) -> Evaluated:
    return nixconfig.evaluate(files, OPTIONS)


def write(cfg: system.SystemConfig, root: Path = Path("/")) -> None:
    system.apply(root, cfg)
    peers = _peers(root)
    system.write_names(root, cfg.hostname, peers)


def _peers(root: Path) -> dict[str, str]:
    """The other lab hosts from the current /etc/hosts (they stay resolvable)."""
    peers = {}
    try:
        for line in (root / "etc/hosts").read_text().splitlines():
            cols = line.split()
            if len(cols) >= 2 and not cols[0].startswith(("127.", "::1")):
                peers[cols[1]] = cols[0]
    except OSError:
        pass
    return peers


# The files whose change restarts a unit (its restartTriggers / X-Restart-Triggers on NixOS).
TRIGGERS: Final = {"sshd": "/etc/ssh/sshd_config", "nix-daemon": "/etc/nix/nix.conf"}


def snapshot() -> dict[str, str]:
    """The trigger files' contents, to compare before and after an activation."""
    found = {}
    for unit, path in TRIGGERS.items():
        try:
            found[unit] = Path(path).read_text()
        except OSError:
            found[unit] = ""
    return found


def reconcile(before: dict[str, str], after: dict[str, str], changed: set[str]) -> list[str]:
    """Stop, restart and start units as switch-to-configuration does; the failed units."""
    stop = [n for n in before if n not in after]
    restart = [n for n in after if n in before and (before[n] != after[n] or n in changed)]
    start = [n for n in after if n not in before]
    failed = []
    if stop:
        print(
            "stopping the following units: " + ", ".join(f"{n}.service" for n in stop),
            file=sys.stderr,
        )
        for name in stop:
            services.stop(services.load_unit(name))
    for verb, names in (("restarting", restart), ("starting", start)):
        if names:
            print(
                f"{verb} the following units: " + ", ".join(f"{n}.service" for n in names),
                file=sys.stderr,
            )
        for name in names:
            unit = services.load_unit(name)
            try:
                if verb == "restarting":
                    services.stop(unit)
                services.start(unit, after[name])
            except (services.StartError, OSError) as exc:
                logger.debug("%s: %s", name, exc)
                failed.append(f"{name}.service")
    # units enabled before and after but not running (e.g. killed) are started too
    for name, env_file in after.items():
        if name not in start and services.state(services.load_unit(name)) != "active":
            try:
                services.start(services.load_unit(name), env_file)
            except (services.StartError, OSError):
                failed.append(f"{name}.service")
    return failed


def set_hostname(name: str) -> None:
    try:
        socket.sethostname(name)
    except OSError as exc:  # not in the host's UTS namespace (tests on a tree)
        logger.debug("sethostname: %s", exc)
