"""Lab stand-in for Hammerspoon's `hs` CLI: runs the runbook's typing and snapshot Lua.

`hs [-a] [-q] [-t SEC] -c LUA` (reference/utm-makefile-keys.md §5 "hs.ipc / hs CLI"); a
`dofile("PATH")` chunk is read from PATH. The typing Lua carries `local seq = {{code, down,
shift}, ...}` and `app:getWindow("VM")`: the events go to a key sink that behaves like UTM's
view (§4, §8 "Fake UTM key sink"): key codes only, Shift only from flagsChanged events of the
Shift key (56/60), then a US keymap; the characters land on the VM's lab console. A snapshot
Lua writes a PNG to its `saveToFile` path once its arguments pass the type checks Hammerspoon
makes (`check_save_to_file`). Lua errors exit 65, no such window is a Lua error ("no UTM window
titled ..."), as with the real CLI.

How `hs -c` reports a Lua error (Hammerspoon/hammerspoon `extensions/ipc/ipc.lua`, the
`MSG_ID.COMMAND` branch of the port callback): the chunk runs under `pcall`; on failure the error
value plus a newline is sent back with `MSG_ID.ERROR` and the command answers "error".
`extensions/ipc/cli/hs.m` writes messages with a negative id to stderr (`localPortCallback`; `-c`
turns colours off), and a `-c` command whose answer is not "ok" stops the run with `EX_DATAERR`
(65, the `preRun` loop in `main`).
"""

from __future__ import annotations

import re
import struct
import sys
import zlib
from pathlib import Path

from runbook.lab.standins import utm_state

EXIT_LUA_ERROR = 65  # EX_DATAERR (extensions/ipc/cli/hs.m)
# hs.image:saveToFile's file types, compared case-insensitively (libimage.m `saveToFile`).
IMAGE_TYPES = ("png", "tiff", "bmp", "gif", "jpeg", "jpg")
# One literal argument: a "..." or '...' string (backslash escapes), or a bare token.
_LUA_ATOM = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^,()"']+)\s*""")


def _lua_unquote(literal: str) -> str:
    raw = re.sub(r"\\(\d{1,3})", lambda m: chr(int(m[1])), literal)
    return raw.encode("latin-1").decode("utf-8", errors="replace")


def _string_arg(lua: str, call: str) -> str | None:
    found = re.search(re.escape(call) + r'\("((?:[^"\\]|\\.)*)"', lua)
    return _lua_unquote(found[1]) if found else None


def replay(rows: list[tuple[int, int, int]]) -> str:
    """What UTM's view would type for these `{code, down, shift}` events (§4)."""
    out, shift = [], False
    for code, down, _flags in rows:
        if code in utm_state.KVK_SHIFTS:  # a flagsChanged event: the only way Shift counts
            shift = bool(down)
        elif down and code in utm_state.KVK_TO_CHAR:  # keyDown: the code, never a string
            ch = utm_state.KVK_TO_CHAR[code]
            out.append(utm_state.shifted(ch) if shift else ch)
    return "".join(out)


def _png(path: Path) -> None:
    """A 1x1 grey PNG: the lab has no screen to photograph."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


class LuaError(Exception):
    """What Lua's `error` (or LuaSkin's `luaL_error`) would raise; `hs -c` prints it, exits 65."""


def lua_call_args(lua: str, call: str) -> list[tuple[str, object]] | None:
    """The literal arguments of the first `call(...)` in `lua` as (Lua type, value), or None.

    Only literals are understood (strings, numbers, true/false/nil): what the runbook writes.
    """
    start = lua.find(call + "(")
    if start < 0:
        return None
    pos, args = start + len(call) + 1, []
    if lua[pos:].lstrip().startswith(")"):
        return []
    while True:
        atom = _LUA_ATOM.match(lua, pos)
        if atom is None:
            raise LuaError(f"the lab's hs stand-in cannot read the arguments of {call}")
        args.append(_lua_value(atom[1].strip(), call))
        pos = atom.end()
        if lua[pos : pos + 1] == ")":
            return args
        if lua[pos : pos + 1] != ",":
            raise LuaError(f"the lab's hs stand-in cannot read the arguments of {call}")
        pos += 1


def _lua_value(token: str, call: str) -> tuple[str, object]:
    if token[:1] in "\"'":
        return "string", _lua_unquote(token[1:-1])
    if token in ("true", "false"):
        return "boolean", token == "true"
    if token == "nil":
        return "nil", None
    try:
        return "number", float(token)
    except ValueError:
        raise LuaError(f"the lab's hs stand-in cannot evaluate {token!r} in {call}") from None


def _expect(args: list[tuple[str, object]], index: int, allowed: tuple[str, ...]) -> None:
    # LuaSkin's checkArgs (Hammerspoon/hammerspoon LuaSkin/LuaSkin/Skin.m): argument 1 is the
    # image itself, a missing one is typed "no value", the expected types are listed in
    # specMaskToString's order (string before boolean).
    kind = args[index - 2][0] if index - 2 < len(args) else "no value"
    if kind not in allowed:
        expected = " or ".join(allowed)
        raise LuaError(f"ERROR: incorrect type '{kind}' for argument {index} (expected {expected})")


def check_save_to_file(args: list[tuple[str, object]]) -> Path:
    """The path `img:saveToFile(args...)` writes, or the LuaError Hammerspoon raises for them.

    Follows Hammerspoon/hammerspoon `extensions/image/libimage.m` `saveToFile`: the path is a
    string; with one optional argument it is the scale (boolean) or the file type (string); with
    two, the scale must be a boolean and the type a string, and a fifth value is refused; the
    type is one of PNG, TIFF, BMP, GIF, JPEG, JPG in any case.
    """
    _expect(args, 2, ("string",))
    file_type = "png"
    if len(args) == 2:
        _expect(args, 3, ("string", "boolean"))
        if args[1][0] == "string":
            file_type = str(args[1][1])
    elif len(args) > 2:
        _expect(args, 3, ("boolean",))
        _expect(args, 4, ("string",))
        if len(args) > 3:
            raise LuaError(f"ERROR: incorrect number of arguments. Expected 4, got {len(args) + 1}")
        file_type = str(args[2][1])
    if file_type.lower() not in IMAGE_TYPES:
        raise LuaError("hs.image:saveToFile:: invalid file type specified")
    return Path(str(args[0][1]))


def run_lua(lua: str) -> int:
    try:
        return _run_lua(lua)
    except LuaError as exc:
        print(exc, file=sys.stderr)  # ipc.lua: the error value and "\n", sent to stderr
        return EXIT_LUA_ERROR


def _run_lua(lua: str) -> int:
    inner = _string_arg(lua, "dofile")
    if inner is not None:
        lua = Path(inner).read_text()
    window = _string_arg(lua, "app:getWindow")
    state = utm_state.load()
    vm = utm_state.find(state, window) if window else None
    if window is not None and (vm is None or vm["status"] != "started"):
        print(f"error: no UTM window titled {window}", file=sys.stderr)
        return EXIT_LUA_ERROR
    seq = re.search(r"local seq = \{(.*)\}\n", lua)
    if seq and vm is not None:
        rows = [(int(a), int(b), int(c)) for a, b, c in re.findall(r"\{(\d+),(\d),(\d)\}", seq[1])]
        utm_state.type_on_console(vm, replay(rows))
        print(f"typed {len(rows)} events")
        return 0
    save_args = lua_call_args(lua, "img:saveToFile")
    if save_args is not None:
        target = check_save_to_file(save_args)
        _png(target)
        print(target)
        return 0
    print("error: the lab's hs stand-in does not know this Lua", file=sys.stderr)
    return EXIT_LUA_ERROR


def main(argv: list[str]) -> int:
    chunks = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-c"]
    if not chunks:
        print("usage: hs [-a] [-q] [-t SEC] -c LUA", file=sys.stderr)
        return 64
    for lua in chunks:
        code = run_lua(lua)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
