"""A real OpenSSH sshd on 127.0.0.1 with a fish-shell sudo user (tests and benches).

Needs root: it creates the users and runs sshd with its own config and host key.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FISH_USER = "rbfish"
PASS_USER = "rbpass"
PASS_WORD = "Rb-pass-w0rd!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user(name: str, shell: str, password: str | None) -> None:
    if subprocess.run(["id", name], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", shell, name], check=True)
    subprocess.run(["usermod", "-s", shell, name], check=True)
    if password:
        subprocess.run(["chpasswd"], input=f"{name}:{password}", text=True, check=True)
    else:
        # useradd leaves the account locked ("!"), and sshd refuses locked accounts
        subprocess.run(["usermod", "-p", "*", name], check=True)


@dataclass
class Sshd:
    root: Path
    port: int
    user_key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes] | None = None
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.root / "sshd_config"

    def new_host_key(self) -> None:
        key = self.root / "ssh_host_ed25519_key"
        key.unlink(missing_ok=True)
        Path(f"{key}.pub").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    def start(self) -> None:
        with open(self.root / "sshd.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)], stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("sshd did not start: " + (self.root / "sshd.log").read_text())

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

    def kill_all(self) -> None:
        """Kill the listener and every session it forked (a dropped VM)."""
        subprocess.run(["pkill", "-KILL", "-f", f"sshd.*{self.config}"], check=False)
        subprocess.run(["pkill", "-KILL", "-u", FISH_USER], check=False)
        if self.proc:
            self.proc.wait(5)
            self.proc = None


def start_sshd() -> Sshd:
    """Create the users, keys and config, start sshd; the caller stops it."""
    # pytest's tmp dirs are 0700; sshd reads authorized_keys as the user, so use a 0755 dir
    root = Path(tempfile.mkdtemp(prefix="runbook-sshd-"))
    os.chmod(root, 0o755)
    fish = shutil.which("fish") or "/usr/bin/fish"
    _ensure_user(FISH_USER, fish, None)
    _ensure_user(PASS_USER, "/bin/bash", PASS_WORD)
    Path(f"/etc/sudoers.d/{FISH_USER}").write_text(f"{FISH_USER} ALL=(ALL) NOPASSWD: ALL\n")
    os.chmod(f"/etc/sudoers.d/{FISH_USER}", 0o440)
    user_key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user_key)], check=True)
    auth = root / "authorized_keys"
    auth.write_text(Path(f"{user_key}.pub").read_text())
    os.chmod(auth, 0o644)
    Path("/run/sshd").mkdir(exist_ok=True)
    s = Sshd(root=root, port=free_port(), user_key=user_key, known_hosts=root / "known_hosts")
    s.new_host_key()
    s.config.write_text(
        f"Port {s.port}\nListenAddress 127.0.0.1\nHostKey {root}/ssh_host_ed25519_key\n"
        f"AuthorizedKeysFile {auth}\nUsePAM no\nPasswordAuthentication yes\n"
        f"PermitRootLogin no\nPidFile {root}/sshd.pid\nStrictModes no\n"
        "MaxSessions 50\nMaxStartups 50\nSubsystem sftp internal-sftp\n"
    )
    s.start()
    return s


def stop_sshd(s: Sshd) -> None:
    s.stop()
    shutil.rmtree(s.root, ignore_errors=True)
