"""SSH to the VMs through paramiko: run, sudo and put, with streaming and masked results.

The only module that touches paramiko. One transport per host, reused for every command
(like OpenSSH's ControlPersist) and reopened on demand after a drop. TCP_NODELAY on the
socket matters: without it Nagle + delayed ACK cost ~40 ms a round trip on loopback
(shared/reference/lab-notes.md, "SSH round trips").

Every wait has a deadline that holds when the peer vanishes (`models.Deadlines`, from the
params' `timeouts:`). paramiko's `set_keepalive` only sends; a watcher thread here sends
`keepalive@openssh.com` with want-reply (as OpenSSH's ServerAliveInterval does) and closes
the transport after `keepalive_count` intervals without an answer, so a frozen host or a cut
link ends the command as `connection to HOST lost during ...` within `Deadlines.dead_after`.
A command's wall time is bounded by `command`; a transfer (`put`, or `run(transfer=True)`)
by progress instead: no byte either way for `stall` seconds.
"""

from __future__ import annotations

import codecs
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypedDict, Unpack

import paramiko

from runbook.core.errors import (
    AuthenticationRefusedError,
    CommandError,
    CommandStalledError,
    CommandTimeoutError,
    ConnectError,
    ConnectionLostError,
    HostKeyChangedError,
)
from runbook.core.masking import mask
from runbook.core.models import Deadlines, Elevate, Host, Result
from runbook.core.secrets import Secret
from runbook.transport.hostkeys import KnownHosts, entry_name, fingerprint
from runbook.transport.shell import Wrapped, install_file_script, wrap

logger: Final = logging.getLogger(__name__)

LineSink = Callable[[str, str], None]

CONNECT_TIMEOUT: Final = Deadlines().connect
KEEPALIVE_REQUEST: Final = "keepalive@openssh.com"  # what OpenSSH's ServerAliveInterval sends
_POLL: Final = 0.05
_CHUNK: Final = 32768


class _Liveness:
    """Sends a want-reply keepalive every `interval` s; after `count` intervals without an
    answer the peer is dead: `reason` says so and the transport is closed, which ends every
    wait on it (channel reads, exec_command, a send blocked on a full TCP buffer)."""

    def __init__(self, transport: paramiko.Transport, interval: float, count: int) -> None:
        self.transport = transport
        self.interval = interval
        self.count = count
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ssh-keepalive", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _ping(self, answered: threading.Event) -> None:
        try:
            self.transport.global_request(KEEPALIVE_REQUEST, wait=True)
        except (paramiko.SSHException, EOFError, OSError):
            return  # the transport is going away; the watcher sees that
        if self.transport.is_active():  # global_request also returns when the link closes
            answered.set()

    def _watch(self) -> None:
        answered = threading.Event()
        answered.set()  # nothing outstanding yet
        missed = 0
        while not self._stop.wait(self.interval):
            if not self.transport.is_active():
                return
            if answered.is_set():
                missed = 0
                answered.clear()
                threading.Thread(target=self._ping, args=(answered,), daemon=True).start()
                continue
            missed += 1
            if missed >= self.count:
                self.reason = (
                    f"the host stopped answering: no reply to {self.count} keepalives over "
                    f"{self.count * self.interval:g} s (host frozen or network cut?)"
                )
                logger.debug("%s", self.reason)
                self.transport.close()
                return


class RunOptions(TypedDict, total=False):
    """`Connection.run`'s keyword options, for the calls that pass them on (`sudo`)."""

    env: Mapping[str, str] | None
    cwd: str | None
    check: bool
    ok_codes: Sequence[int]
    timeout: float | None
    display: str | None
    transfer: bool


class Connection:
    """A reusable SSH connection to one host, as one user."""

    def __init__(
        self,
        host: Host,
        *,
        password: Secret | None = None,
        known_hosts: Path | None = None,
        replace_host_key: bool = False,
        connect_timeout: float | None = None,
        on_line: LineSink | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.host = host
        self._password = password
        kh = known_hosts or host.known_hosts
        if kh is None:
            raise ValueError("a known_hosts path is required")
        self.known_hosts = KnownHosts(kh)
        self.replace_host_key = replace_host_key
        self.deadlines = deadlines or host.deadlines
        self.connect_timeout = connect_timeout or self.deadlines.connect
        self.on_line = on_line
        self._transport: paramiko.Transport | None = None
        self._liveness: _Liveness | None = None

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._liveness is not None:
            self._liveness.stop()
            self._liveness = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    def connect(self) -> paramiko.Transport:
        """Open (or reuse) the transport: host key checked, then authenticated."""
        if self._transport is not None and self._transport.is_active():
            return self._transport
        self.close()
        h = self.host
        try:
            sock = socket.create_connection((h.address, h.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise ConnectError(f"cannot reach {h.label}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = self.connect_timeout
        transport.auth_timeout = max(self.connect_timeout, 30.0)
        try:
            self._negotiate(transport)
            self._authenticate(transport)
        except BaseException:
            transport.close()
            raise
        self._transport = transport
        d = self.deadlines
        self._liveness = _Liveness(transport, d.keepalive, d.keepalive_count)
        return transport

    def _negotiate(self, transport: paramiko.Transport) -> None:
        name = entry_name(self.host.address, self.host.port)
        known = self.known_hosts.known_types(name)
        if known:  # ask for the key type we know, as OpenSSH does, so a match is possible
            opts = transport.get_security_options()
            opts.key_types = [t for t in known if t in opts.key_types] + [
                t for t in opts.key_types if t not in known
            ]
        try:
            transport.start_client(timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectError(
                f"SSH handshake with {self.host.label} failed: {exc or type(exc).__name__} "
                "(if sshd lost its host keys after a switch, recover through the console: "
                "notebook 90)"
            ) from None
        key = transport.get_remote_server_key()
        try:
            status = self.known_hosts.verify(name, key, replace=self.replace_host_key)
        except HostKeyChangedError as exc:
            raise HostKeyChangedError(f"{exc}; {self._replace_command()}") from None
        logger.debug("host key %s for %s: %s", fingerprint(key), name, status)

    def _replace_command(self) -> str:
        """A command that accepts the new key (`runbook exec` has --replace-host-key; deploy
        and the notebooks do not, on purpose): run it only once the console showed the VM's
        new keys are the ones presented."""
        h = self.host
        port = "" if h.port == 22 else f":{h.port}"
        auth = f"--identity {h.identity}" if h.identity is not None else "--password-env VAR"
        return (
            f"if the host was reinstalled, accept its new key with `runbook exec "
            f"ssh://{h.user}@{h.address}{port} {auth} --known-hosts {self.known_hosts.path} "
            "--replace-host-key -- true`, then run again"
        )

    def _authenticate(self, transport: paramiko.Transport) -> None:
        h = self.host
        try:
            if h.identity is not None:
                pkey = _load_key(h.identity)
                transport.auth_publickey(h.user, pkey)
            elif self._password is not None:
                transport.auth_password(h.user, self._password.reveal())
            else:
                raise ConnectError(f"no identity or password for {h.label}")
        except paramiko.AuthenticationException as exc:  # BadAuthenticationType too
            raise AuthenticationRefusedError(
                f"authentication as {h.label} refused: {exc}"
            ) from None
        except paramiko.SSHException as exc:
            raise ConnectError(f"SSH error authenticating {h.label}: {exc}") from None

    # -- commands --------------------------------------------------------------

    def run(
        self,
        command: str | bytes | Sequence[str],
        *,
        elevate: Elevate = Elevate.NONE,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
        ok_codes: Sequence[int] = (0,),
        timeout: float | None = None,
        display: str | None = None,
        transfer: bool = False,
    ) -> Result:
        """Run a bash script (str) or argv (sequence) on the host; the login shell never parses it.

        `timeout` bounds the wall time (default `deadlines.command`). A `transfer` is judged
        by progress instead: it fails when no byte moves either way for `deadlines.stall`
        seconds, however long it runs (unless `timeout` is given too).
        """
        if elevate is Elevate.SUDO and self.host.user == "root":
            elevate = Elevate.NONE  # the live ISO's root needs no sudo (and may lack it)
        wrapped = wrap(command, elevate=elevate, env=env, cwd=cwd)
        wall = timeout if timeout is not None else (None if transfer else self.deadlines.command)
        stall = self.deadlines.stall if transfer else None
        return self._execute(wrapped, display or wrapped.display, check, ok_codes, wall, stall)

    def sudo(self, command: str | Sequence[str], **kwargs: Unpack[RunOptions]) -> Result:
        """`run` as root through passwordless sudo."""
        return self.run(command, elevate=Elevate.SUDO, **kwargs)

    def put(
        self,
        path: str,
        content: bytes | str | Secret,
        *,
        mode: int = 0o644,
        owner: str | None = None,
        elevate: Elevate = Elevate.SUDO,
    ) -> Result:
        """Install `content` at `path` with `mode` (and `owner`) from the first byte."""
        raw = content.reveal() if isinstance(content, Secret) else content
        data = raw.encode() if isinstance(raw, str) else raw
        script = install_file_script(path, data, mode, owner)
        shown = (
            f"put {path} (mode {mode:04o}{', owner ' + owner if owner else ''}, {len(data)} bytes)"
        )
        return self.run(script, elevate=elevate, display=shown, transfer=True)

    def _execute(
        self,
        wrapped: Wrapped,
        display: str,
        check: bool,
        ok_codes: Sequence[int],
        timeout: float | None,
        stall: float | None,
    ) -> Result:
        transport = self.connect()
        label = self.host.label
        logger.debug("%s$ %s", label, mask(display))
        start = time.monotonic()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(wrapped.command)  # waits for the reply, or the transport's close
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(display, "", f"the command could not start ({exc})") from None
        out, err, code = self._collect(chan, transport, display, wrapped.stdin, timeout, stall)
        result = Result(display, code, out, err, time.monotonic() - start, host=label)
        if check and code not in ok_codes:
            raise CommandError(host=label, command=display, exit_code=code, stderr=result.stderr)
        return result

    def _collect(
        self,
        chan: paramiko.Channel,
        transport: paramiko.Transport,
        display: str,
        stdin: bytes,
        timeout: float | None,
        stall: float | None,
    ) -> tuple[str, str, int]:
        """Feed stdin as the window allows while reading output (neither side can block the
        other), until the exit status, the deadline, a stall, or the transport's end."""
        streams = {
            "stdout": _LineSplitter("stdout", self._emit),
            "stderr": _LineSplitter("stderr", self._emit),
        }
        start = last_progress = time.monotonic()
        deadline = None if timeout is None else start + timeout
        label = self.host.label
        sent = 0  # bytes of stdin sent so far
        if not stdin:
            chan.shutdown_write()
        try:
            while True:
                moved = False
                while chan.recv_ready():
                    streams["stdout"].feed(chan.recv(65536))
                    moved = True
                while chan.recv_stderr_ready():
                    streams["stderr"].feed(chan.recv_stderr(65536))
                    moved = True
                if sent < len(stdin) and chan.send_ready():
                    n = chan.send(stdin[sent : sent + _CHUNK])
                    sent += n
                    moved = moved or n > 0
                    if sent == len(stdin):
                        chan.shutdown_write()
                now = time.monotonic()
                if moved:
                    last_progress = now
                if (
                    chan.exit_status_ready()
                    and not chan.recv_ready()
                    and not chan.recv_stderr_ready()
                ):
                    break
                if chan.closed or not transport.is_active():
                    if chan.exit_status_ready():
                        break
                    raise self._lost(display, streams["stderr"].text())
                if deadline is not None and now > deadline:
                    chan.close()
                    raise CommandTimeoutError(
                        host=label,
                        command=display,
                        exit_code=None,
                        stderr=streams["stderr"].text(),
                        reason=f"timed out after {timeout:g} s (timeouts.command)",
                    )
                if stall is not None and now - last_progress > stall:
                    chan.close()
                    raise CommandStalledError(
                        host=label,
                        command=display,
                        exit_code=None,
                        stderr=streams["stderr"].text(),
                        reason=f"stalled: no byte sent or received for {stall:g} s "
                        f"(timeouts.stall; {sent} of {len(stdin)} bytes sent)",
                    )
                if not moved:
                    select.select([chan], [], [], _POLL)
        except (OSError, EOFError, paramiko.SSHException) as exc:  # a send on a dying link
            raise self._lost(display, streams["stderr"].text(), f"sending failed ({exc})") from None
        code = chan.recv_exit_status()
        chan.close()
        if code == -1:  # closed without an exit status: the session died under us
            raise self._lost(display, streams["stderr"].text())
        return streams["stdout"].text(), streams["stderr"].text(), code

    def _lost(self, display: str, stderr: str, why: str = "") -> ConnectionLostError:
        dead = self._liveness.reason if self._liveness is not None else None
        self.close()
        return ConnectionLostError(
            host=self.host.label,
            command=display,
            exit_code=None,
            stderr=stderr,
            reason=dead
            or why
            or "the connection closed before the command finished (host rebooted or sshd stopped?)",
        )

    def _emit(self, stream: str, line: str) -> None:
        text = mask(line)
        logger.debug("%s %s: %s", self.host.name, stream, text)
        if self.on_line:
            self.on_line(stream, text)


class _LineSplitter:
    """Decodes a byte stream incrementally and emits whole lines as they complete."""

    def __init__(self, name: str, emit: LineSink) -> None:
        self.name = name
        self._emit = emit
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._pending = ""

    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        self._parts.append(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(self.name, line)

    def text(self) -> str:
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._parts.append(tail)
            self._pending += tail
        if self._pending:
            self._emit(self.name, self._pending)
            self._pending = ""
        return "".join(self._parts)


def _load_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(str(path.expanduser()))
    except FileNotFoundError:
        raise ConnectError(f"identity file {path} does not exist") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise ConnectError(f"identity file {path} could not be loaded: {exc}") from None


__all__ = ["Connection", "HostKeyChangedError"]


def tcp_probe(port: int = 22, timeout: float = 2.0) -> Callable[[str], bool]:
    """A probe that says whether ADDRESS:port accepts a TCP connection (sshd is up)."""

    def probe(address: str) -> bool:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return True
        except OSError:
            return False

    return probe
