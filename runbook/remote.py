"""SSH to the VMs through paramiko: run, sudo and put, with streaming and masked results.

The only module that touches paramiko. One transport per host, reused for every command
(like OpenSSH's ControlPersist) and reopened on demand after a drop. TCP_NODELAY on the
socket matters: without it Nagle + delayed ACK cost ~40 ms a round trip on loopback
(shared/reference/lab-notes.md, "SSH round trips").
"""

from __future__ import annotations

import codecs
import logging
import select
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import paramiko

from runbook.errors import (
    AuthenticationRefusedError,
    CommandError,
    CommandTimeoutError,
    ConnectError,
    ConnectionLostError,
    HostKeyChangedError,
)
from runbook.hostkeys import KnownHosts, entry_name, fingerprint
from runbook.models import Elevate, Host, Result
from runbook.secrets import Secret, mask
from runbook.shell import Wrapped, install_file_script, wrap

logger: Final = logging.getLogger(__name__)

LineSink = Callable[[str, str], None]

CONNECT_TIMEOUT: Final = 10.0
KEEPALIVE_INTERVAL: Final = 15
_POLL: Final = 0.05


class Connection:
    """A reusable SSH connection to one host, as one user."""

    def __init__(
        self,
        host: Host,
        *,
        password: Secret | None = None,
        known_hosts: Path | None = None,
        replace_host_key: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT,
        on_line: LineSink | None = None,
    ) -> None:
        self.host = host
        self._password = password
        kh = known_hosts or host.known_hosts
        if kh is None:
            raise ValueError("a known_hosts path is required")
        self.known_hosts = KnownHosts(kh)
        self.replace_host_key = replace_host_key
        self.connect_timeout = connect_timeout
        self.on_line = on_line
        self._transport: paramiko.Transport | None = None

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
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
        try:
            self._negotiate(transport)
            self._authenticate(transport)
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(KEEPALIVE_INTERVAL)
        self._transport = transport
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
        status = self.known_hosts.verify(name, key, replace=self.replace_host_key)
        logger.debug("host key %s for %s: %s", fingerprint(key), name, status)

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
    ) -> Result:
        """Run a bash script (str) or argv (sequence) on the host; the login shell never parses it."""
        if elevate is Elevate.SUDO and self.host.user == "root":
            elevate = Elevate.NONE  # the live ISO's root needs no sudo (and may lack it)
        wrapped = wrap(command, elevate=elevate, env=env, cwd=cwd)
        return self._execute(wrapped, display or wrapped.display, check, ok_codes, timeout)

    def sudo(self, command: str | Sequence[str], **kwargs: object) -> Result:
        """`run` as root through passwordless sudo."""
        return self.run(command, elevate=Elevate.SUDO, **kwargs)  # type: ignore[arg-type]

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
        return self.run(script, elevate=elevate, display=shown)

    def _execute(
        self,
        wrapped: Wrapped,
        display: str,
        check: bool,
        ok_codes: Sequence[int],
        timeout: float | None,
    ) -> Result:
        transport = self.connect()
        label = self.host.label
        logger.debug("%s$ %s", label, mask(display))
        start = time.monotonic()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(wrapped.command)
            chan.sendall(wrapped.stdin)
            chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise ConnectionLostError(
                host=label, command=display, exit_code=None, reason=f"could not start: {exc}"
            ) from None
        out, err, code = self._collect(chan, transport, display, timeout, start)
        result = Result(display, code, out, err, time.monotonic() - start, host=label)
        if check and code not in ok_codes:
            raise CommandError(host=label, command=display, exit_code=code, stderr=result.stderr)
        return result

    def _collect(
        self,
        chan: paramiko.Channel,
        transport: paramiko.Transport,
        display: str,
        timeout: float | None,
        start: float,
    ) -> tuple[str, str, int]:
        streams = {
            "stdout": _LineSplitter("stdout", self._emit),
            "stderr": _LineSplitter("stderr", self._emit),
        }
        deadline = None if timeout is None else start + timeout
        label = self.host.label
        while True:
            while chan.recv_ready():
                streams["stdout"].feed(chan.recv(65536))
            while chan.recv_stderr_ready():
                streams["stderr"].feed(chan.recv_stderr(65536))
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if chan.closed or not transport.is_active():
                if chan.exit_status_ready():
                    break
                raise self._lost(display, streams["stderr"].text())
            if deadline is not None and time.monotonic() > deadline:
                chan.close()
                raise CommandTimeoutError(
                    host=label,
                    command=display,
                    exit_code=None,
                    stderr=streams["stderr"].text(),
                    reason=f"timed out after {timeout:g} s",
                )
            select.select([chan], [], [], _POLL)
        code = chan.recv_exit_status()
        chan.close()
        if code == -1:  # closed without an exit status: the session died under us
            raise self._lost(display, streams["stderr"].text())
        return streams["stdout"].text(), streams["stderr"].text(), code

    def _lost(self, display: str, stderr: str) -> ConnectionLostError:
        self.close()
        return ConnectionLostError(
            host=self.host.label,
            command=display,
            exit_code=None,
            stderr=stderr,
            reason="lost its connection before it finished (host rebooted or sshd stopped?)",
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
