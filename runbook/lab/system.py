"""What a lab host *is* (users, SSH rules, nix.conf, services) and how it is written to its tree.

One `SystemConfig` renders to the files a NixOS activation would produce. The same code runs
from the root namespace on `<state>/hosts/<name>/root` (lab up) and inside a host on `/`
(the nixos-rebuild / nixos-install stand-ins). Files that are bind-mounted one by one
(/etc/passwd, /etc/shadow, ...) are rewritten in place, never replaced by a rename.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from runbook.transport.local import run

logger: Final = logging.getLogger(__name__)

LAB_VAR: Final = Path("var/lib/runbook-lab")  # phase and enabled services, inside the host
NORMAL_UID: Final = 1000  # NixOS isNormalUser: uids from 1000, primary group `users`
USERS_GID: Final = 100
WHEEL_GROUP: Final = "wheel"
# NixOS keeps keys in /etc/ssh/authorized_keys.d/%u (nixos/modules/services/networking/ssh/sshd.nix)
AUTHORIZED_KEYS_D: Final = "/etc/ssh/authorized_keys.d"
# Found first by sshd sessions, fish, and `sudo` (secure_path below): the lab's stand-ins.
LAB_PATH: Final = (
    "/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:"
    "/usr/sbin:/usr/bin:/sbin:/bin"
)
HOST_KEY_TYPES: Final = ("ed25519",)
# The NixOS system profile's bin directory, where a host's init links the lab's programs.
SYSTEM_BIN: Final = Path("/run/current-system/sw/bin")
LAB_BIN: Final = Path(__file__).resolve().parent / "bin"
# Lab programs that a NixOS system has only when its environment.systemPackages holds their
# package: `services.atticd` alone installs `atticd-atticadm`, not `attic` (nixpkgs
# nixos/modules/services/networking/atticd.nix), so `attic` needs pkgs.attic-client.
PACKAGED_PROGRAMS: Final = {"attic": "attic-client"}
# Directories every host tree has (bind-mounted over the same paths inside the host).
TREE_DIRS: Final = (
    "etc/ssh",
    "etc/nix",
    "etc/sudoers.d",
    "var/lib",
    "var/log",
    "nix",
    "home",
    "root",
    "nix-config",
    "tmp",
    "mnt",
)
# The host's /etc is an overlay: the machine's /etc below, <tree>/etc (these files, and the
# directories above marked opaque) on top. Binding single files instead would not last: a
# mount on a file is detached when the machine replaces that file (useradd renames over
# /etc/passwd), in every namespace.
OPAQUE_DIRS: Final = ("etc/ssh", "etc/nix", "etc/sudoers.d")
BIND_DIRS: Final = tuple(d for d in TREE_DIRS if not d.startswith("etc/"))


@dataclass(frozen=True)
class User:
    name: str
    shell: str = "/usr/bin/fish"
    groups: tuple[str, ...] = ()
    hashed_password: str | None = None  # None: no password (key only), never "locked"
    authorized_keys: tuple[str, ...] = ()
    uid: int = NORMAL_UID


@dataclass(frozen=True)
class SystemConfig:
    hostname: str
    phase: str
    permit_root_login: str = "no"
    password_authentication: bool = True
    root_hashed_password: str | None = None  # None: root has no password ("!")
    users: tuple[User, ...] = ()
    substituters: tuple[str, ...] = ()
    trusted_public_keys: tuple[str, ...] = ()
    # service name -> environment file (or "" for none); sshd is always enabled
    services: dict[str, str] = field(default_factory=lambda: {"sshd": "", "nix-daemon": ""})
    wheel_needs_password: bool = False
    packages: tuple[str, ...] = ()  # environment.systemPackages, by attribute name


def hash_password(password: str) -> str:
    """A SHA-512 crypt hash, as `mkpasswd -m sha-512` gives for users.users.*.hashedPassword."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Rewrite in place (keeps a bind-mounted file's inode), then set the mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def _system_accounts(table: str) -> list[list[str]]:
    """Rows of the machine's own /etc/<table> for system accounts (root excluded)."""
    rows = []
    for line in Path("/etc", table).read_text().splitlines():
        cols = line.split(":")
        if len(cols) < 3 or cols[0] == "root":
            continue
        if table in ("passwd", "group"):
            ident = int(cols[2]) if cols[2].isdigit() else 0
            if NORMAL_UID <= ident < 65534:
                continue
        rows.append(cols)
    return rows


def write_accounts(root: Path, cfg: SystemConfig) -> None:
    """passwd/shadow/group/gshadow: the machine's system accounts plus root and cfg.users."""
    passwd = [":".join(c) for c in _system_accounts("passwd")]
    system_names = {line.split(":")[0] for line in passwd}
    shadow = [f"{n}:*:::::::" for n in sorted(system_names)]
    groups = _system_accounts("group")
    members: dict[str, list[str]] = {}
    for user in cfg.users:
        for g in user.groups:
            members.setdefault(g, []).append(user.name)
    used_gids = {int(g[2]) for g in groups if g[2].isdigit()}
    known = {g[0] for g in groups}
    for extra in sorted(set(members) - known):
        gid = next(i for i in range(990, 100, -1) if i not in used_gids)
        used_gids.add(gid)
        groups.append([extra, "x", str(gid), ""])
    group_lines = [
        ":".join(
            [g[0], g[1], g[2], ",".join(filter(None, [*g[3].split(","), *members.get(g[0], [])]))]
        )
        for g in groups
    ]
    root_hash = cfg.root_hashed_password or "!"
    passwd.insert(0, "root:x:0:0:root:/root:/bin/bash")
    shadow.insert(0, f"root:{root_hash}:::::::")
    for user in cfg.users:
        passwd.append(f"{user.name}:x:{user.uid}:{USERS_GID}::/home/{user.name}:{user.shell}")
        # "*" not "!": sshd refuses a locked account even for key login (lab-notes, Packages)
        shadow.append(f"{user.name}:{user.hashed_password or '*'}:::::::")
    _write(root / "etc/passwd", "\n".join(passwd) + "\n")
    _write(root / "etc/group", "\n".join(["root:x:0:", *group_lines]) + "\n")
    _write(root / "etc/shadow", "\n".join(shadow) + "\n", 0o640)
    _write(
        root / "etc/gshadow",
        "".join(f"{g.split(':')[0]}:!::\n" for g in ["root:", *group_lines]),
        0o640,
    )
    for user in cfg.users:
        home = root / "home" / user.name
        if not home.exists():
            home.mkdir(parents=True)
            os.chown(home, user.uid, USERS_GID)
            os.chmod(home, 0o700)


def write_ssh(root: Path, cfg: SystemConfig) -> None:
    """sshd_config as services.openssh renders it, and authorized_keys.d/<user>."""
    keys = "".join(f"HostKey /etc/ssh/ssh_host_{t}_key\n" for t in HOST_KEY_TYPES)
    _write(
        root / "etc/ssh/sshd_config",
        "# written by the runbook lab (services.openssh)\n"
        f"Port 22\n{keys}PidFile /run/sshd.pid\nUsePAM no\n"
        f"PermitRootLogin {cfg.permit_root_login}\n"
        f"PasswordAuthentication {'yes' if cfg.password_authentication else 'no'}\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"AuthorizedKeysFile .ssh/authorized_keys {AUTHORIZED_KEYS_D}/%u\n"
        f"SetEnv PATH={LAB_PATH}\n"
        "MaxStartups 100\nMaxSessions 100\nSubsystem sftp /usr/lib/openssh/sftp-server\n",
    )
    keydir = root / AUTHORIZED_KEYS_D.lstrip("/")
    keydir.mkdir(parents=True, exist_ok=True)
    for old in keydir.iterdir():
        old.unlink()
    for user in cfg.users:
        if user.authorized_keys:
            _write(keydir / user.name, "\n".join(user.authorized_keys) + "\n", 0o444)


def write_sudo(root: Path, cfg: SystemConfig) -> None:
    """security.sudo.wheelNeedsPassword, and a PATH that finds the stand-ins."""
    tag = "" if cfg.wheel_needs_password else "NOPASSWD: "
    _write(
        root / "etc/sudoers.d/runbook-lab",
        f'Defaults secure_path="{LAB_PATH}"\n%{WHEEL_GROUP} ALL=(ALL:ALL) {tag}ALL\n',
        0o440,
    )


def write_nix_conf(root: Path, cfg: SystemConfig) -> None:
    """nix.settings as /etc/nix/nix.conf; no daemon, so root builds single-user (lab-notes)."""
    lines = [
        "# written by the runbook lab (nix.settings)",
        "build-users-group =",
        "sandbox = false",
        "experimental-features = nix-command flakes",
        # The lab has no route out: cache.nixos.org fails at once, so no retries with
        # back-off (nix.conf(5) `download-attempts`, default 5: ~4 s per query).
        "download-attempts = 1",
        "connect-timeout = 2",
        f"substituters = {' '.join(cfg.substituters)}",
        f"trusted-public-keys = {' '.join(cfg.trusted_public_keys)}",
    ]
    _write(root / "etc/nix/nix.conf", "\n".join(lines) + "\n")


def write_names(root: Path, hostname: str, peers: dict[str, str], mdns: bool = True) -> None:
    """/etc/hostname and /etc/hosts: every lab host as NAME, and NAME.local (avahi's mDNS)
    unless `mdns` is off (the live ISO runs no avahi: installation-device.nix)."""
    _write(root / "etc/hostname", hostname + "\n")
    rows = ["127.0.0.1 localhost", "::1 localhost"]
    local = " {name}.local" if mdns else ""
    rows += [f"{addr} {name}{local.format(name=name)}" for name, addr in sorted(peers.items())]
    _write(root / "etc/hosts", "\n".join(rows) + "\n")


def write_state(root: Path, cfg: SystemConfig) -> None:
    _write(root / LAB_VAR / "phase", cfg.phase + "\n")
    _write(root / LAB_VAR / "services.json", json.dumps(cfg.services, indent=1) + "\n")
    _write(root / LAB_VAR / "packages.json", json.dumps(sorted(cfg.packages)) + "\n")


def absent_programs(root: Path) -> set[str]:
    """The lab programs the host's system does not install (see PACKAGED_PROGRAMS)."""
    try:
        packages = set(json.loads((root / LAB_VAR / "packages.json").read_text()))
    except (OSError, ValueError):
        packages = set()
    return {prog for prog, pkg in PACKAGED_PROGRAMS.items() if pkg not in packages}


def link_programs(bin_dir: Path, absent: set[str], lab_bin: Path = LAB_BIN) -> None:
    """Make `bin_dir` hold a link to each lab program but the `absent` ones, as a switch
    changes what /run/current-system/sw/bin holds."""
    for program in sorted(lab_bin.iterdir()):
        link = bin_dir / program.name
        if program.name in absent:
            link.unlink(missing_ok=True)
        elif program.is_file() and os.access(program, os.X_OK) and not link.is_symlink():
            link.symlink_to(program)


def apply(root: Path, cfg: SystemConfig) -> None:
    """Write every file `cfg` decides (the activation script's part the lab plays)."""
    write_accounts(root, cfg)
    write_ssh(root, cfg)
    write_sudo(root, cfg)
    write_nix_conf(root, cfg)
    write_state(root, cfg)
    if root == Path("/") and SYSTEM_BIN.is_dir():  # inside a running host: the switch's PATH
        link_programs(SYSTEM_BIN, absent_programs(root))
    # an installed NixOS has /etc/NIXOS (the runbook's "installed?" check, notebook 03); the
    # lab's live ISO has none, so that check can tell the phases apart
    marker = root / "etc/NIXOS"
    if cfg.phase == "installed":
        _write(marker, "")
    else:
        marker.unlink(missing_ok=True)


def read_phase(root: Path) -> str:
    try:
        return (root / LAB_VAR / "phase").read_text().strip()
    except OSError:
        return "unknown"


def enabled_services(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / LAB_VAR / "services.json").read_text())
    except (OSError, ValueError):
        return {"sshd": "", "nix-daemon": ""}
    return {str(k): str(v) for k, v in data.items()}


def new_host_keys(root: Path) -> None:
    """Fresh SSH host keys, as a new installation gets (ssh-keygen, like sshd.nix's preStart)."""
    sshdir = root / "etc/ssh"
    sshdir.mkdir(parents=True, exist_ok=True)
    for kind in HOST_KEY_TYPES:
        key = sshdir / f"ssh_host_{kind}_key"
        key.unlink(missing_ok=True)
        Path(f"{key}.pub").unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@lab", "-f", key])


def host_public_keys(root: Path) -> list[str]:
    """`TYPE KEY` of each host key (for known_hosts)."""
    out = []
    for kind in HOST_KEY_TYPES:
        pub = root / f"etc/ssh/ssh_host_{kind}_key.pub"
        if pub.exists():
            out.append(" ".join(pub.read_text().split()[:2]))
    return out
