"""`lab up`, `lab down`, `lab status`: the whole lab's lifecycle, idempotent and crash-safe.

`up` keeps every host that is healthy (init alive, sshd answering) and rebuilds the others
from scratch, so a crash or a killed run is recovered by the next `up`. `down` kills each
host's processes (its mount and pid namespaces die with them), deletes its network
namespace and veth, the bridge, /nix-config's mount point and the state directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from runbook.core.errors import InputError, RunbookError
from runbook.core.secrets import write_private
from runbook.lab import console, environment, host, net, services, system
from runbook.lab.config import SSH_PORT, HostSpec, LabParams, Phase, from_mapping, load, load_file
from runbook.transport.local import run

logger: Final = logging.getLogger(__name__)

REGISTRY: Final = "lab.json"
# Mount points the hosts bind over (system.BIND_DIRS) that a Debian machine lacks: made by up.
# /nix is there only once Nix first ran (Debian's nix-bin makes none: that is nix-setup-systemd,
# a recommends), so a clean machine has no mount point for the hosts' stores.
MOUNT_POINTS: Final = (Path("/nix"), Path("/nix-config"))
# Removed by down when empty; /nix stays (the machine's own Nix uses it too).
REMOVED_BY_DOWN: Final = (Path("/nix-config"),)
TEMPLATE: Final = Path(__file__).resolve().parent / "nixos-config"
REQUIRED: Final = (
    "/usr/sbin/sshd",
    "/usr/bin/fish",
    "/usr/bin/sudo",
    "/usr/bin/rsync",
    "/usr/bin/nix-store",
    "/usr/sbin/ip",
    "/usr/bin/unshare",
    "/usr/bin/ssh-keygen",
)


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    port: int
    user: str
    identity: str
    known_hosts: str
    phase: str
    services: dict[str, str]
    running: bool
    console_port: int | None = None  # the host's console on 127.0.0.1 (lab/console.py)

    def public(self) -> dict[str, Any]:
        """The `lab status --json` record that tools and tests rely on."""
        keys = ("name", "address", "port", "user", "identity", "known_hosts", "phase")
        return {k: v for k, v in asdict(self).items() if k in keys}


def require_root() -> None:
    if os.geteuid() != 0:
        raise InputError("runbook lab needs root (network and mount namespaces): run it with sudo")
    missing = [p for p in REQUIRED if not Path(p).exists()]
    if missing:
        raise InputError(
            f"runbook lab needs {', '.join(missing)}: apt-get install -y openssh-server fish "
            "sudo rsync nix-bin iproute2 util-linux"
        )


def _coerce(params: LabParams | Path | str | dict[str, Any] | None) -> LabParams:
    if isinstance(params, LabParams):
        return params
    if isinstance(params, dict):
        return from_mapping(params)
    return load(params)


def _coerce_file(
    params: LabParams | Path | str | dict[str, Any] | None,
) -> tuple[LabParams, dict[str, Any], str]:
    """The lab, the deployment it plays (empty without a lab file) and where they came from."""
    if isinstance(params, LabParams):
        return params, {}, "lab params"
    if isinstance(params, dict):
        return from_mapping(params), {}, "lab params"
    lab, template = load_file(params)
    return lab, template, str(params or "lab/lab.yaml")


def params_path(params: LabParams | Path | str | dict[str, Any] | None = None) -> Path:
    """Where `up` writes the deployment's params by default: `<state_dir>/params.yaml`."""
    return _coerce(params).state_dir / environment.PARAMS_FILE


def _registered_serial_port(state_dir: Path) -> int | None:
    try:
        return int(json.loads((state_dir / REGISTRY).read_text())["serial_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _registered(state_dir: Path) -> LabParams | None:
    """The lab the registry names, without its passwords (`down` and `status` need none)."""
    try:
        data = json.loads((state_dir / REGISTRY).read_text())
        params = {**data["params"], "passwords": {}}
        return from_mapping(params, str(state_dir / REGISTRY))
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def write_registry(lab: LabParams, serial_port: int) -> Path:
    """`<state_dir>/lab.json`: the lab's params for `down`, `status` and the UTM stand-ins,
    and the serial ports' first. No password is in it (they are in passwords/USER, 0600);
    it is 0600 from its first byte all the same, as the lab's other private files."""
    params = lab.model_dump(mode="json", exclude={"passwords"})
    path = lab.state_dir / REGISTRY
    body = {"params": params, "serial_port": serial_port}
    write_private(path, json.dumps(body, indent=1).encode())
    return path


def _client_key(params: LabParams) -> str:
    key = params.identity_path
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "runbook-lab", "-f", key])
    os.chmod(key, 0o600)
    return " ".join(Path(f"{key}.pub").read_text().split()[:2]) + " runbook-lab"


def _write_passwords(params: LabParams) -> None:
    for user, password in params.passwords.items():
        write_private(params.state_dir / "passwords" / user, password.encode())


def _working_config(params: LabParams, pubkey: str) -> None:
    """The lab's nixos-config checkout (what a user clones), with the lab key authorized."""
    dest = params.state_dir / "nixos-config"
    if not dest.exists() and TEMPLATE.is_dir():
        shutil.copytree(TEMPLATE, dest)
    if dest.is_dir():
        authorize_key(dest, params.user, pubkey)


def authorize_key(config: Path, user: str, pubkey: str) -> None:
    """Put `pubkey` in `users.users.USER.openssh.authorizedKeys.keys` of the user's file, as a
    user pastes their Mac's key (mitchellh/nixos-config users/mitchellh/nixos.nix lists it
    inline): a splice at the parser's byte ranges; nothing when it is there already."""
    from runbook.nix.nixcfg import plan_list_item, write_keeping_mode
    from runbook.nix.nixfile import NixFile, apply_edits

    rel = Path("users") / user / "nixos.nix"
    if not (config / rel).is_file():
        return
    nix = NixFile.read(config / rel)
    keys = ("users", "users", user, "openssh", "authorizedKeys", "keys")
    edit = plan_list_item(nix, keys, pubkey)
    if edit is not None:
        write_keeping_mode(config / rel, apply_edits(nix.source, [edit], str(rel)))


def _healthy(spec: HostSpec) -> bool:
    """Init alive and sshd active, read from the host's own /run: no packet to the host, so
    the Mac side's ARP table stays as a fresh VM leaves it (empty until traffic)."""
    pid = host.init_pid(spec.name)
    if pid is None:
        return False
    root = Path(f"/proc/{pid}/root")
    return services.state(services.load_unit("sshd"), root) == "active"


def _destroy_host(params: LabParams | None, name: str) -> None:
    if params is not None:
        console.stop(params, name)
    host.stop(name)
    net.delete_host_net(name)
    if params is not None and params.host_dir(name).exists():
        shutil.rmtree(params.host_dir(name), ignore_errors=True)


def up(
    params: LabParams | Path | str | dict[str, Any] | None = None,
    *,
    secrets_dir: Path | None = None,  # noqa: ARG001 - older callers: the lab stores no secret
    out: Path | None = None,
) -> list[HostStatus]:
    """Bring every host of `params` up (a lab file, default lab/lab.yaml); returns their
    status. With a lab file, also writes the deployment's params (`out`, default
    `<state_dir>/params.yaml`). Nothing goes into the secret store: a live host's root has
    no password until `passwd` runs on its console, and the runbook makes and types its own
    there (notebook 02), as on a Mac."""
    require_root()
    lab, template, source = _coerce_file(params)
    started = time.monotonic()
    previous = _registered(lab.state_dir)
    previous_port = _registered_serial_port(lab.state_dir)
    if previous is not None and (previous.subnet, previous.bridge) != (lab.subnet, lab.bridge):
        down(previous)
    wanted = {spec.name for spec in lab.hosts}
    if previous is not None:  # hosts of this lab's last run that params no longer has
        for stale in {s.name for s in previous.hosts} - wanted:
            _destroy_host(previous, stale)
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lab.state_dir, 0o755)  # sshd reads per-host trees as the login user
    pubkey = _client_key(lab)
    _write_passwords(lab)
    _working_config(lab, pubkey)
    for point in MOUNT_POINTS:
        point.mkdir(exist_ok=True)
    net.ensure_bridge(lab)
    env = environment.environment(lab, template, source, previous_port)
    # written before any host exists, so a killed run is cleaned up by the next up or down
    write_registry(lab, env.serial_port)
    peers = {spec.name: lab.address(i) for i, spec in enumerate(lab.hosts)}
    todo = [(i, s) for i, s in enumerate(lab.hosts) if not _healthy(s)]
    with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
        list(pool.map(lambda item: _create(lab, item[0], item[1], peers, pubkey), todo))
    _write_known_hosts(lab)
    console.ensure_all(lab, env.plays)  # consoles on the VMs' serial ports, UTM's state
    if "deployment" in template:  # a lab file: the deployment's params
        written = environment.write_params(lab, env, source, out or params_path(lab))
        logger.info("lab up: deployment params in %s", written)
    # the Mac knows a VM's MAC only after traffic to it (reference §7.3): none yet
    net.flush_neighbours(lab)
    logger.info(
        "lab up: %d host(s), %d (re)created, %.2f s",
        len(lab.hosts),
        len(todo),
        time.monotonic() - started,
    )
    return status(lab)


def _create(lab: LabParams, index: int, spec: HostSpec, peers: dict[str, str], pubkey: str) -> None:
    _destroy_host(lab, spec.name)
    host.prepare(lab, spec, peers, pubkey)
    net.create_host_net(lab, index, spec.name)
    host.start(lab, spec)
    host.wait_booted(lab, spec, time.monotonic() + host.BOOT_TIMEOUT)


def _write_known_hosts(lab: LabParams) -> None:
    lines = []
    for i, spec in enumerate(lab.hosts):
        names = f"{lab.address(i)},{spec.name},{spec.name}.local"
        lines += [f"{names} {key}" for key in system.host_public_keys(host.tree(lab, spec.name))]
    lab.known_hosts.write_text("\n".join(lines) + "\n")


def down(params: LabParams | Path | str | dict[str, Any] | None = None) -> None:
    """Remove everything `up` made, for the registered lab and any stale rblab-* leftovers."""
    require_root()
    lab = _registered(_coerce(params).state_dir) if not isinstance(params, LabParams) else params
    if lab is None:
        lab = _coerce(params)
    # this lab's hosts only: another lab (other state_dir) may be running beside it
    names = {s.name for s in lab.hosts}
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        list(pool.map(lambda n: _destroy_host(lab, n), sorted(names)))
    for veth in net.stale_veths(lab):
        run(["ip", "link", "del", veth], check=False)
    net.remove_bridge(lab)
    # Removing a mount point detaches it in every namespace: only when no lab host is left.
    if not net.list_lab_netns():
        for point in REMOVED_BY_DOWN:
            if point.is_dir() and not os.path.ismount(point) and not any(point.iterdir()):
                point.rmdir()
    if lab.state_dir.exists():
        shutil.rmtree(lab.state_dir)
    logger.info("lab down: %d host(s) removed", len(names))


def status(params: LabParams | Path | str | dict[str, Any] | None = None) -> list[HostStatus]:
    """Each host of the registered lab (or of `params` when none is registered)."""
    given = _coerce(params)
    lab = _registered(given.state_dir) or given
    out = []
    for i, spec in enumerate(lab.hosts):
        root = host.tree(lab, spec.name)
        phase = system.read_phase(root)
        pid = host.init_pid(spec.name)
        out.append(
            HostStatus(
                name=spec.name,
                address=host.current_address(spec.name) or lab.address(i),
                port=SSH_PORT,
                user="root" if phase == Phase.LIVE.value else lab.user,
                identity=str(lab.identity_path),
                known_hosts=str(lab.known_hosts),
                phase=phase,
                services=_services(pid),
                running=pid is not None,
                console_port=console.port(lab, spec.name),
            )
        )
    return out


def _services(pid: int | None) -> dict[str, str]:
    if pid is None:
        return {}
    root = Path(f"/proc/{pid}/root")
    found = {}
    for path in sorted(services.UNITS_DIR.glob("*.json")):
        unit = services.load_unit(path.stem)
        found[unit.name] = services.state(unit, root)
    return found


def exec_in(name: str, argv: list[str], stdin: str | None = None) -> Any:
    """Run argv as root inside a host's namespaces (nsenter), like a console session: with the
    host's own PATH, so `systemctl` is the host's stand-in, never this machine's systemd."""
    pid = host.init_pid(name)
    if pid is None:
        raise RunbookError(f"lab host {name} is not running")
    argv = [*host.enter_argv(pid), "env", f"PATH={system.LAB_PATH}", *argv]
    return run(argv, check=False, stdin=stdin)


def askpass_env(
    user: str | None = None, params: LabParams | Path | str | dict[str, Any] | None = None
) -> dict[str, str]:
    """Environment for OpenSSH (ssh, rsync, make vm/*) to log in with the lab passwords through
    SSH_ASKPASS: the password of `user`, or with no user the one named in each prompt."""
    lab = _coerce(params)
    env = {
        "SSH_ASKPASS": str(Path(__file__).resolve().parent.parent / "askpass"),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": os.environ.get("DISPLAY", ":0"),
    }
    if user is None:
        env["RUNBOOK_ASKPASS_DIR"] = str(lab.state_dir / "passwords")
    else:
        env["RUNBOOK_ASKPASS_FILE"] = str(lab.state_dir / "passwords" / user)
    return env
