"""Console typing backends (handbook lesson 4): each turns text into what one channel accepts.

- `utm-input`: UTM >= 4.7.2 AppleScript `input scan code` (default) or `input keystroke`,
  run through `osascript`; no window focus or Accessibility permission needed, QEMU backend only
  (reference/utm-makefile-keys.md §3 "Input Automation Suite", §6.1; utm-peers.md §0).
- `hammerspoon`: `hs -c` running raw `hs.eventtap.event.newKeyEvent` events, Shift sent as its
  own flagsChanged events (utm-makefile-keys.md §5 "Recommended UTM typing pattern").
- `quartz`: pyobjc `CGEventCreateKeyboardEvent` + `CGEventPostToPid` to UTM (§6.2), imported
  only when used, only on macOS.
- `serial`: a TCP serial console (UTM's `interface:tcp` serial port on 127.0.0.1, §3): bytes
  written to host:port, and the console's answer read back.

Every backend has `type_text(vm, text)` and `screenshot(vm, path)` (raising UnsupportedError
where the channel has none). Text is checked against the US key map before anything is sent.
External programs go through `runbook.transport.local.run`; a password typed on the console may be a
`Secret`: it never reaches an argv, a log line or a non-0600 file.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Protocol, Self

from runbook.core.errors import CommandError, ConnectError, InputError, RunbookError
from runbook.core.masking import mask
from runbook.core.secrets import Secret, write_private
from runbook.mac.console import keymap
from runbook.mac.utm import (
    OSASCRIPT,
    MacOnlyError,
    VmStatus,
    list_vms,
    require_macos,
    run_applescript,
)
from runbook.transport import local

logger: Final = logging.getLogger(__name__)

UTM_BUNDLE_ID: Final = "com.utmapp.UTM"
BACKENDS: Final = ("utm-input", "hammerspoon", "quartz", "serial")
# UTM waits 20 ms per scan code (UTMScriptingInputImpl.swift, reference §3); allow for it.
UTM_CODE_DELAY: Final = 0.02
SCAN_CODE_CHUNK: Final = 256


class UnsupportedError(RunbookError):
    """This backend has no such operation (e.g. screenshots over `utm-input`)."""


class ConsoleBackend(Protocol):
    """What the notebooks call: type into a VM's console, and keep a picture of it."""

    name: str

    def type_text(self, vm: str, text: str | Secret) -> None: ...

    def screenshot(self, vm: str, path: Path) -> Path: ...


def _reveal(text: str | Secret) -> str:
    return text.reveal() if isinstance(text, Secret) else text


# --- utm-input ---------------------------------------------------------------------------------


def applescript_string(text: str) -> str:
    """An AppleScript string literal for `text` (only `\\`, `"`, CR, LF, tab need escapes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def scan_code_script(codes: Sequence[int]) -> str:
    """AppleScript typing `codes` into the VM named by argv item 1 (`input scan code`, §3)."""
    listed = ", ".join(str(int(c)) for c in codes)
    return (
        "on run argv\n"
        '  tell application "UTM"\n'
        "    set vm to virtual machine named (item 1 of argv)\n"
        f"    input scan code of vm codes {{{listed}}}\n"
        "  end tell\n"
        "end run\n"
    )


def keystroke_script(text: str) -> str:
    """AppleScript typing `text` with `input keystroke` (UTM maps `\\n` to Enter, §3)."""
    return (
        "on run argv\n"
        '  tell application "UTM"\n'
        "    set vm to virtual machine named (item 1 of argv)\n"
        f"    input keystroke of vm text {applescript_string(text)}\n"
        "  end tell\n"
        "end run\n"
    )


class UtmInputBackend:
    """UTM's own input automation (>= 4.7.2, QEMU backend): scan codes by default.

    Scan codes are exact (our US table, set-1 make/break); `method="keystroke"` lets UTM map
    the text itself. The script, and so the text, goes on osascript's stdin, never in argv.
    """

    name = "utm-input"

    def __init__(
        self,
        method: str = "scan-codes",
        chunk: int = SCAN_CODE_CHUNK,
        osascript: str | Path = OSASCRIPT,
    ) -> None:
        if method not in ("scan-codes", "keystroke"):
            raise InputError(f"utm-input method: {method!r}, expected scan-codes or keystroke")
        self.method = method
        self.chunk = chunk
        self.osascript = osascript  # params utm.osascript

    def scripts(self, text: str) -> list[str]:
        """The AppleScripts that type `text` (several for long texts), in order."""
        if self.method == "keystroke":
            keymap.keys_for(text)  # same US-layout check as scan codes
            return [keystroke_script(text.replace("\r\n", "\n"))]
        codes = keymap.scan_code_values(text)
        return [scan_code_script(part) for part in keymap.chunks(codes, self.chunk)]

    def type_text(self, vm: str, text: str | Secret) -> None:
        require_macos("typing with UTM `input scan code`", self.osascript)
        for script in self.scripts(_reveal(text)):
            budget = 30 + script.count(",") * UTM_CODE_DELAY * 2
            what = f"typing into {vm!r}"
            run_applescript(script, vm, what=what, timeout=budget, osascript=self.osascript)
        logger.info("typed %d characters into %s with %s", len(_reveal(text)), vm, self.name)

    def screenshot(self, vm: str, path: Path) -> Path:
        raise UnsupportedError(
            f"utm-input cannot take a picture of {vm!r} for {path}; "
            "use the hammerspoon backend for console pictures"
        )


# --- hammerspoon -------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    """A Lua string literal: every byte that is not plain ASCII word text as `\\ddd`."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        out.append(ch if ch.isascii() and (ch.isalnum() or ch in " -_./:") else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _lua_window(vm: str) -> list[str]:
    # The SPICE window is titled with the VM name; the main window is "UTM" (§5 "Windows").
    return [
        f"local app = hs.application.get({lua_string(UTM_BUNDLE_ID)})",
        'if not app then error("UTM is not running") end',
        f"local win = app:getWindow({lua_string(vm)})",
        f"if not win then error({lua_string(f'no UTM window titled {vm}')}) end",
    ]


def hammerspoon_lua(vm: str, events: Sequence[keymap.KeyEvent], delay: float = 0.01) -> str:
    """Lua that focuses the VM's window and posts `events` as raw key events to UTM.

    Each event is `{keyCode, down, shift}`: Shift is pressed with `newKeyEvent({"shift"}, 56,
    true)` and released with `newKeyEvent({}, 56, false)`, real flagsChanged events (§5).
    """
    rows = ",".join(
        f"{{{e.key_code},{int(e.is_down)},{int(bool(e.flags & keymap.FLAG_SHIFT))}}}"
        for e in events
    )
    return "\n".join(
        [
            "local E = hs.eventtap.event",
            *_lua_window(vm),
            "win:focus()",
            "hs.timer.usleep(200000)",
            f"local seq = {{{rows}}}",
            "for _, e in ipairs(seq) do",
            '  local mods = {}; if e[3] == 1 then mods = {"shift"} end',
            "  E.newKeyEvent(mods, e[1], e[2] == 1):post(app)",
            f"  hs.timer.usleep({int(delay * 1_000_000)})",
            "end",
            'print("typed " .. #seq .. " events")',
        ]
    )


def hammerspoon_screenshot_lua(vm: str, path: Path) -> str:
    """Lua that saves the VM window's snapshot (needs Screen Recording permission, §5).

    `hs.image:saveToFile(path[, scale][, filetype])`: with both optional arguments, `scale` must
    be a boolean (Hammerspoon/hammerspoon `extensions/image/libimage.m`, `saveToFile`: four
    values on the stack are checked as image, string, boolean, string), so a number there raises
    "incorrect type 'number' for argument 3 (expected boolean)". `false` keeps the size in
    points, the documented default.
    """
    return "\n".join(
        [
            *_lua_window(vm),
            "local img = win:snapshot()",
            'if not img then error("snapshot failed: grant Hammerspoon Screen Recording") end',
            f'if not img:saveToFile({lua_string(str(path))}, false, "PNG") then',
            '  error("could not save the snapshot") end',
            f"print({lua_string(str(path))})",
        ]
    )


class HammerspoonBackend:
    """Raw key events through Hammerspoon's `hs` CLI (needs `require("hs.ipc")` in init.lua)."""

    name = "hammerspoon"

    def __init__(self, hs: str = "hs", delay: float = 0.01) -> None:
        self.hs = hs
        self.delay = delay

    def argv(self, lua: str, timeout: float) -> list[str]:
        """`hs -a -q -t SEC -c LUA`: fail fast when Hammerspoon is not running (exit 75, §5)."""
        return [self.hs, "-a", "-q", "-t", f"{timeout:g}", "-c", lua]

    def type_text(self, vm: str, text: str | Secret) -> None:
        require_macos("typing with Hammerspoon", self.hs)
        events = keymap.mac_events(_reveal(text))
        # The events spell the text, so they go in a 0600 file, not in argv (ps, logs).
        budget = 10 + len(events) * (self.delay + 0.002)
        with tempfile.TemporaryDirectory(prefix="runbook-hs-") as tmp:
            script = Path(tmp) / "type.lua"
            write_private(script, hammerspoon_lua(vm, events, self.delay).encode())
            lua = f"dofile({lua_string(str(script))})"
            local.run(self.argv(lua, budget), timeout=budget + 5)
        logger.info("typed %d key events into %s with %s", len(events), vm, self.name)

    def screenshot(self, vm: str, path: Path) -> Path:
        require_macos("a Hammerspoon window snapshot", self.hs)
        path = path.expanduser().absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        local.run(self.argv(hammerspoon_screenshot_lua(vm, path), 10), timeout=15)
        return path


# --- quartz ------------------------------------------------------------------------------------


def _import_macos(module: str) -> ModuleType:
    platform: str = sys.platform  # a variable, so mypy on Linux keeps the rest reachable
    if platform != "darwin":
        raise MacOnlyError(f"unchecked: the quartz backend needs macOS and pyobjc ({module})")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MacOnlyError(
            f"the quartz backend needs pyobjc: pip install pyobjc-framework-Quartz ({exc})"
        ) from None


# UTM titles a VM's display window with the VM's name: `window!.title = defaultTitle` with
# `defaultTitle = vmQemuConfig.information.name` in enterLive (utmapp/UTM
# Platform/macOS/Display/VMDisplayQemuDisplayController.swift); secondary windows are
# "NAME (Display N)" (VMDisplayQemuMetalWindowController.swift) or "NAME (Terminal N)"
# (VMDisplayQemuTerminalWindowController.swift), and until the VM is live the window keeps the
# xib's title "UTM" (Base.lproj/VMDisplayWindow.xib), like the main window.
QUARTZ_FOCUS_TIMEOUT: Final = 2.0
# Key events between two checks that UTM's key window is still the VM's (taken only between
# whole key presses, so a stop never leaves a key or Shift pressed).
QUARTZ_RECHECK_EVERY: Final = 32


class WindowFocusError(RunbookError):
    """The VM's window is not UTM's key window, and keys posted to UTM could reach another VM."""


class WindowsUnreadableError(RunbookError):
    """UTM's windows cannot be read or raised (e.g. no Accessibility permission)."""


@dataclass(frozen=True)
class UtmFocus:
    """Where keys posted to UTM's process land: is UTM frontmost, and its key window's title.

    `readable=False`: the Accessibility API could not say (then both are None).
    """

    frontmost: bool | None
    window: str | None
    readable: bool = True


UNREADABLE_FOCUS: Final = UtmFocus(None, None, readable=False)


class UtmWindows(Protocol):
    """The macOS side of QuartzBackend besides posting: UTM's windows (faked in tests)."""

    def titles(self) -> list[str]:
        """UTM's window titles, in the order `raise_window` indexes; WindowsUnreadableError if not."""
        ...

    def raise_window(self, index: int) -> None: ...

    def activate(self) -> None: ...

    def focus(self) -> UtmFocus: ...


def _running_text(running: Sequence[str] | None) -> str:
    if running is None:
        return "an unknown number of VMs run (utmctl list failed)"
    names = ", ".join(repr(n) for n in running) or "none"
    return f"{len(running)} VMs run ({names})"


def _only_this_runs(vm: str, running: Sequence[str] | None) -> bool:
    return running is not None and list(running) == [vm]


def choose_vm_window(
    vm: str, titles: Sequence[str] | None, running: Sequence[str] | None, why: str = ""
) -> int | None:
    """Which of UTM's windows to raise before posting keys for `vm` (pure decision code).

    `titles`: UTM's window titles, or None when they cannot be read (`why`); `running`: the
    names of UTM's VMs that are not stopped, or None when unknown. Returns the index of the one
    window titled `vm`, or None when the titles cannot be read but `vm` is the only VM running
    (then UTM is only activated, as before). Raises WindowFocusError when the keys could reach
    another VM's window or no window of `vm` is there to take them.
    """
    if running is not None and vm not in running:
        raise WindowFocusError(f"{vm!r} is not running in UTM; {_running_text(running)}")
    if titles is None:
        if _only_this_runs(vm, running):
            return None
        raise WindowFocusError(
            f"cannot raise {vm!r}'s window ({why or 'its windows cannot be read'}) and "
            f"{_running_text(running)}: keys posted to UTM go to its key window, whichever VM "
            "that is; grant this process the Accessibility permission, or use the utm-input "
            "backend"
        )
    matches = [i for i, title in enumerate(titles) if title == vm]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(repr(t) for t in titles) or "none"
    if matches:
        raise WindowFocusError(
            f"{len(matches)} UTM windows are titled {vm!r}, so the VM's own cannot be told "
            f"apart; give the VMs distinct names ({_running_text(running)})"
        )
    raise WindowFocusError(
        f"no UTM window titled {vm!r} (UTM's windows: {shown}); open the VM's display window "
        "(UTM titles it with the VM's name) on the current Space"
    )


def focus_problem(vm: str, focus: UtmFocus, running: Sequence[str] | None) -> str | None:
    """Why keys posted now could miss `vm`'s window, or None when they reach it (pure)."""
    if not focus.readable:
        if _only_this_runs(vm, running):
            return None
        return f"UTM's key window cannot be read and {_running_text(running)}"
    if focus.frontmost is False:
        return "UTM is not the frontmost application (its key window would get no keys)"
    if focus.window != vm:
        shown = "none" if focus.window is None else repr(focus.window)
        return f"UTM's key window is {shown}, not {vm!r}'s"
    return None


def _started_vms() -> list[str] | None:
    """The names of UTM's VMs that are not stopped (`utmctl list`), or None if it fails."""
    try:
        return [e.name for e in list_vms() if e.status is not VmStatus.STOPPED]
    except RunbookError as exc:
        logger.warning("quartz: cannot list UTM's VMs: %s", exc)
        return None


class AxUtmWindows:
    """UTM's windows through the Accessibility API (pyobjc ApplicationServices, macOS only).

    Needs the Accessibility permission, as posting key events does (§6.2). Unverified off a
    Mac: written from Apple's AXUIElement API (AXUIElementCopyAttributeValue returns
    `(error, value)` in pyobjc).
    """

    def __init__(self, app: Any, appkit: ModuleType, ax: ModuleType) -> None:
        self._app, self._appkit, self._ax = app, appkit, ax
        self._element = ax.AXUIElementCreateApplication(app.processIdentifier())
        self._windows: list[Any] = []

    def _get(self, element: Any, attribute: str) -> Any:
        err, value = self._ax.AXUIElementCopyAttributeValue(element, attribute, None)
        if err == self._ax.kAXErrorNoValue:
            return None
        if err != self._ax.kAXErrorSuccess:
            raise WindowsUnreadableError(f"Accessibility error {err} reading UTM's {attribute}")
        return value

    def titles(self) -> list[str]:
        if not self._ax.AXIsProcessTrusted():
            raise WindowsUnreadableError(
                "this process has no Accessibility permission (System Settings > Privacy & "
                "Security > Accessibility: add the app that runs the runbook)"
            )
        self._windows = list(self._get(self._element, self._ax.kAXWindowsAttribute) or [])
        return [str(self._get(w, self._ax.kAXTitleAttribute) or "") for w in self._windows]

    def raise_window(self, index: int) -> None:
        ax, window = self._ax, self._windows[index]
        ax.AXUIElementSetAttributeValue(window, ax.kAXMinimizedAttribute, False)
        ax.AXUIElementSetAttributeValue(window, ax.kAXMainAttribute, True)
        err = ax.AXUIElementPerformAction(window, ax.kAXRaiseAction)
        if err != ax.kAXErrorSuccess:
            raise WindowsUnreadableError(f"Accessibility error {err} raising UTM window {index}")

    def activate(self) -> None:
        # From macOS 14 activateWithOptions_ may be refused to a background process, so UTM is
        # also made frontmost through its AX element.
        self._ax.AXUIElementSetAttributeValue(self._element, self._ax.kAXFrontmostAttribute, True)
        self._app.activateWithOptions_(self._appkit.NSApplicationActivateIgnoringOtherApps)

    def focus(self) -> UtmFocus:
        # Read through AX, not NSRunningApplication.isActive: that one is refreshed only by a
        # main run loop, which a notebook kernel does not run.
        try:
            front = self._get(self._element, self._ax.kAXFrontmostAttribute)
            window = self._get(self._element, self._ax.kAXFocusedWindowAttribute)
            title = None if window is None else self._get(window, self._ax.kAXTitleAttribute)
        except WindowsUnreadableError:
            return UNREADABLE_FOCUS
        return UtmFocus(
            None if front is None else bool(front), None if title is None else str(title)
        )


def _ax_windows(app: Any, appkit: ModuleType) -> UtmWindows:
    return AxUtmWindows(app, appkit, _import_macos("ApplicationServices"))


class QuartzBackend:
    """pyobjc Quartz events posted to UTM's process; UTM types into its key window.

    `CGEventPostToPid` reaches UTM's key window, whichever VM that is (reference, Corrections),
    so the VM's own window is raised first (by its title, the VM's name) and UTM's key window is
    checked before typing and every QUARTZ_RECHECK_EVERY events; when the window cannot be
    raised or read, typing goes ahead only if this VM is the only one running. The posting
    process (Terminal or Jupyter) needs the Accessibility permission (§6.2). `running_vms` and
    `windows` are the seams tests fake.
    """

    name = "quartz"

    def __init__(
        self,
        delay: float = 0.01,
        *,
        running_vms: Callable[[], Sequence[str] | None] = _started_vms,
        windows: Callable[[Any, ModuleType], UtmWindows] = _ax_windows,
        focus_timeout: float = QUARTZ_FOCUS_TIMEOUT,
    ) -> None:
        self.delay = delay
        self.running_vms = running_vms
        self.windows = windows
        self.focus_timeout = focus_timeout

    def _utm_app(self, appkit: ModuleType) -> Any:
        for app in appkit.NSWorkspace.sharedWorkspace().runningApplications():
            if app.bundleIdentifier() == UTM_BUNDLE_ID:
                return app
        raise RunbookError("UTM is not running (no process with bundle id com.utmapp.UTM)")

    def focus_vm(self, vm: str, ui: UtmWindows, running: Sequence[str] | None) -> UtmFocus:
        """Raise `vm`'s window and activate UTM; wait (bounded) until keys would reach it."""
        try:
            titles: list[str] | None = ui.titles()
            why = ""
        except WindowsUnreadableError as exc:
            titles, why = None, str(exc)
        index = choose_vm_window(vm, titles, running, why)
        if index is None:
            logger.warning(
                "quartz: cannot read UTM's windows (%s); %r is the only VM running", why, vm
            )
        else:
            try:
                ui.raise_window(index)
            except WindowsUnreadableError as exc:  # the focus check below decides
                logger.warning("quartz: %s", exc)
        ui.activate()
        deadline = time.monotonic() + self.focus_timeout
        while True:
            focus = ui.focus() if titles is not None else UNREADABLE_FOCUS
            problem = focus_problem(vm, focus, running)
            if problem is None:
                return focus
            if time.monotonic() >= deadline:
                raise WindowFocusError(
                    f"nothing typed into {vm!r}: {problem} (waited {self.focus_timeout:g} s)"
                )
            time.sleep(0.1)

    def type_text(self, vm: str, text: str | Secret) -> None:
        events = keymap.mac_events(_reveal(text))  # InputError before touching macOS
        quartz, appkit = _import_macos("Quartz"), _import_macos("AppKit")
        app = self._utm_app(appkit)
        ui = self.windows(app, appkit)
        running = self.running_vms()
        focus = self.focus_vm(vm, ui, running)
        pid = app.processIdentifier()
        checked = 0
        for i, e in enumerate(events):
            # between whole key presses only: no key down, Shift released
            idle = i == 0 or not (events[i - 1].is_down or events[i - 1].flags & keymap.FLAG_SHIFT)
            if focus.readable and idle and i - checked >= QUARTZ_RECHECK_EVERY:
                checked = i
                problem = focus_problem(vm, ui.focus(), running)
                if problem is not None:
                    raise WindowFocusError(
                        f"stopped typing into {vm!r} after {i} of {len(events)} key events: "
                        f"{problem}"
                    )
            ev = quartz.CGEventCreateKeyboardEvent(None, e.key_code, e.is_down)
            quartz.CGEventSetFlags(ev, e.flags)
            quartz.CGEventPostToPid(pid, ev)
            time.sleep(self.delay)
        logger.info("typed %d key events into %s's window with %s", len(events), vm, self.name)

    def screenshot(self, vm: str, path: Path) -> Path:
        raise UnsupportedError(
            f"quartz cannot take a picture of {vm!r} for {path}; use the hammerspoon backend"
        )


# --- serial ------------------------------------------------------------------------------------

_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def clean_console_text(raw: str) -> str:
    """Console output as plain text: ANSI escapes and carriage returns dropped."""
    return _ANSI_RE.sub("", raw).replace("\r\n", "\n").replace("\r", "\n")


class SerialConsole:
    """One connection to a TCP serial console: send keys, read what the console answers.

    UTM's TCP-server serial port listens on 127.0.0.1 (§3 "Serial, TCP server mode"). Enter is
    sent as CR, as a terminal does; the tty's icrnl turns it into a newline.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.transcript = ""
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectError(f"serial console {host}:{port}: {exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, text: str | Secret) -> None:
        plain = _reveal(text)
        keymap.keys_for(plain)  # the same US-typable check as the key-event backends
        self._sock.sendall(plain.replace("\r\n", "\n").replace("\n", "\r").encode())

    def read_until(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """Read until `pattern` matches the cleaned text received since the last match."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        start = len(self.transcript)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(clean_console_text(self.transcript[start:]))
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                tail = mask(clean_console_text(self.transcript[start:])[-300:])
                raise CommandError(
                    host=f"{self.host}:{self.port}",
                    command=f"console: wait for /{regex.pattern}/",
                    exit_code=None,
                    stderr=tail,
                    reason=f"no match within {timeout:g} s",
                )
            self._sock.settimeout(min(left, 0.5))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectError(f"serial console {self.host}:{self.port} closed")
            self.transcript += chunk.decode(errors="replace")

    def drain(self, quiet: float = 0.3) -> str:
        """Read whatever arrives until the console is quiet for `quiet` seconds."""
        got = ""
        self._sock.settimeout(quiet)
        while True:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return got
            if not chunk:
                return got
            text = chunk.decode(errors="replace")
            self.transcript += text
            got += text


SERIAL_TYPE_PAUSE: Final = 0.2


class SerialBackend:
    """A TCP serial console at host:port; `vm` only labels messages (the port names the VM).

    QEMU's `-chardev socket,server=on` serves one client at a time: once a client is
    connected it stops accepting until that client leaves (qemu/qemu `chardev/char-socket.c`,
    `tcp_chr_new_client` clears the listener's accept callback, `tcp_chr_disconnect_locked`
    sets it again), so a second connection waits in the kernel's backlog, unread. Typing,
    reading and the address call-back therefore share `session()`, this backend's one
    connection, until `close()`.
    """

    name = "serial"

    def __init__(self, host: str = "127.0.0.1", port: int = 4444, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.last_transcript = ""
        self._session: SerialConsole | None = None

    def session(self) -> SerialConsole:
        """The one open connection to the console (opened on first use, kept until close)."""
        if self._session is None:
            self._session = SerialConsole(self.host, self.port, self.timeout)
        return self._session

    def close(self) -> None:
        """Leave the console: the next client (ours later, or a user's `nc`) is served."""
        if self._session is not None:
            self.last_transcript = self._session.transcript or self.last_transcript
            self._session.close()
            self._session = None

    def type_text(self, vm: str, text: str | Secret) -> None:
        try:
            console = self.session()
            # sent only: what the console answers stays unread for whoever waits for it on
            # this same connection (a prompt, a marker); the pause lets the program read it
            # before the next keys (passwd and `read -s` flush input typed ahead)
            console.send(text)
            time.sleep(SERIAL_TYPE_PAUSE)
            self.last_transcript = console.transcript
        except (OSError, ConnectError):
            self.close()
            raise
        logger.info("typed %d characters into %s over serial", len(_reveal(text)), vm)

    def run(self, vm: str, command: str, done: str, timeout: float = 30.0) -> str:
        """Type `command` + Enter and return the console text up to the regex `done`."""
        try:
            console = self.session()
            console.drain(0.2)
            console.send(command + "\n")
            match = console.read_until(done, timeout)
            self.last_transcript = console.transcript
        except (OSError, ConnectError):
            self.close()
            raise
        logger.info("ran a command on %s's serial console", vm)
        return match.string[: match.end()]

    def screenshot(self, vm: str, path: Path) -> Path:
        """A text picture of the console: the last transcript, masked, in a 0600 file."""
        text = clean_console_text(self.last_transcript)
        write_private(path, mask(text).encode())
        logger.info("saved %s's console text to %s", vm, path)
        return path


def make_backend(
    name: str,
    *,
    serial_port: int | None = None,
    hs: str | Path | None = None,
    osascript: str | Path = OSASCRIPT,
) -> ConsoleBackend:
    """The backend called `name` (params `console.backend`: utm-input|hammerspoon|quartz|serial);
    `hs` and `osascript` are the programs' paths (params `console.hs`, `utm.osascript`)."""
    if name == "utm-input":
        return UtmInputBackend(osascript=osascript)
    if name == "hammerspoon":
        return HammerspoonBackend(hs=str(hs or shutil.which("hs") or "hs"))
    if name == "quartz":
        return QuartzBackend()
    if name == "serial":
        if serial_port is None:
            raise InputError("console.serial_port: required when console.backend is serial")
        return SerialBackend(port=serial_port)
    raise InputError(f"console.backend: {name!r}, expected one of {', '.join(BACKENDS)}")
