"""Lab services: a unit table (`runbook/lab/units/<name>.json`) and start/stop/state inside a host.

A unit is one JSON file: `exec_start` (argv), optional `exec_start_pre` (list of argv),
`aliases`, `description`, `ready_tcp_port` (start waits until it accepts connections) and
`environment_file` (a default; `services.json` in the host, written from
`services.<name>.environmentFile`, overrides it). Adding a service is adding one file.

Runtime state lives in the host's own /run/lab-systemd/<name>.pid; the pid is the
host's pid namespace view. `root` lets the root namespace read a host through
/proc/<init>/root.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

logger: Final = logging.getLogger(__name__)

UNITS_DIR: Final = Path(__file__).resolve().parent / "units"
RUN_DIR: Final = Path("run/lab-systemd")
STOP_TIMEOUT: Final = 5.0
START_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class Unit:
    name: str
    exec_start: tuple[str, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()
    exec_start_pre: tuple[tuple[str, ...], ...] = ()
    environment_file: str = ""
    ready_tcp_port: int | None = None
    ready_path: str = ""  # start waits until this exists (a socket)
    environment: dict[str, str] = field(default_factory=dict)


class UnitNotFoundError(LookupError):
    pass


def canonical(name: str) -> str:
    return name.removesuffix(".service")


def load_unit(name: str) -> Unit:
    want = canonical(name)
    for path in sorted(UNITS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        if want == path.stem or want in data.get("aliases", ()):
            return Unit(
                name=path.stem,
                exec_start=tuple(data["exec_start"]),
                description=data.get("description", path.stem),
                aliases=tuple(data.get("aliases", ())),
                exec_start_pre=tuple(tuple(a) for a in data.get("exec_start_pre", ())),
                environment_file=data.get("environment_file", ""),
                ready_tcp_port=data.get("ready_tcp_port"),
                ready_path=data.get("ready_path", ""),
                environment=dict(data.get("environment", {})),
            )
    raise UnitNotFoundError(want)


def pid_file(unit: Unit, root: Path = Path("/")) -> Path:
    return root / RUN_DIR / f"{unit.name}.pid"


def main_pid(unit: Unit, root: Path = Path("/")) -> int | None:
    """The running main pid, or None (no pid file, gone, or a zombie)."""
    try:
        pid = int(pid_file(unit, root).read_text().split()[0])
        stat = (root / "proc" / str(pid) / "stat").read_text()
    except (OSError, ValueError, IndexError):
        return None
    state = stat.rsplit(")", 1)[-1].split()[0]
    return None if state in ("Z", "X") else pid


def state(unit: Unit, root: Path = Path("/")) -> str:
    """systemd's ActiveState as `is-active` prints it: active, inactive or failed."""
    if main_pid(unit, root) is not None:
        return "active"
    return "failed" if pid_file(unit, root).exists() else "inactive"


def read_env_file(path: Path) -> dict[str, str]:
    """systemd EnvironmentFile=: KEY=VALUE lines, # comments, optional quotes."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


class StartError(RuntimeError):
    pass


def start(unit: Unit, environment_file: str = "") -> int:
    """Start the unit detached (own session, output to /var/log/<name>.log); its pid.
    A failed start is remembered (state "failed"), as systemd keeps a failed unit."""
    pid = main_pid(unit)
    if pid is not None:
        return pid
    try:
        return _spawn(unit, environment_file)
    except StartError:
        pid_file(unit).parent.mkdir(parents=True, exist_ok=True)
        pid_file(unit).write_text("0\n")
        raise


def _spawn(unit: Unit, environment_file: str) -> int:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"}
    if "PYTHONPATH" in os.environ:  # the stand-in daemons are Python (bin/README)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(unit.environment)
    env_file = environment_file or unit.environment_file
    if env_file:
        try:
            env.update(read_env_file(Path(env_file)))
        except OSError as exc:
            # systemd: "Failed to load environment files: No such file or directory"
            raise StartError(f"Failed to load environment files: {exc.strerror}") from None
    for pre in unit.exec_start_pre:
        if subprocess.run(pre, env=env, check=False, stdin=subprocess.DEVNULL).returncode:
            raise StartError(f"ExecStartPre {' '.join(pre)} failed")
    log = Path(f"/var/log/{unit.name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            unit.exec_start,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd="/",
            start_new_session=True,
        )
    pf = pid_file(unit)
    pf.parent.mkdir(parents=True, exist_ok=True)
    pf.write_text(f"{proc.pid}\n")
    _wait_ready(unit, proc)
    return proc.pid


def _wait_ready(unit: Unit, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code = proc.poll()
        if code is not None:
            raise StartError(f"main process exited, code=exited, status={code}")
        port_ok = unit.ready_tcp_port is None or _accepts(unit.ready_tcp_port)
        if port_ok and (not unit.ready_path or Path(unit.ready_path).exists()):
            return
        if time.monotonic() > deadline:
            what = unit.ready_path or f"port {unit.ready_tcp_port}"
            raise StartError(f"{what} not ready after {START_TIMEOUT} s")
        time.sleep(0.005)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(unit: Unit) -> None:
    """SIGTERM the main process, SIGKILL after STOP_TIMEOUT (systemd's KillMode=process
    for sshd: sessions survive a restart, as on NixOS)."""
    pid = main_pid(unit)
    pid_file(unit).unlink(missing_ok=True)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def started_at(unit: Unit, root: Path = Path("/")) -> float | None:
    try:
        return pid_file(unit, root).stat().st_mtime
    except OSError:
        return None
