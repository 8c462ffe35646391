"""Lab stand-in for macOS `osascript`: runs the few UTM AppleScripts the runbook sends.

`osascript - ARG...` reads the script from stdin and gives it ARG... as `argv` (the form
packer-plugin-utm uses, reference/utm-peers.md §1). Scripts are recognised by their UTM
commands (reference/utm-makefile-keys.md §3): `make new virtual machine`, `update
configuration` with the removable drives dropped, the drives listed (id, removable, host
size; no source, as UTM reads them), the configuration read back (runbook.mac.utm.VM_CONFIG_SCRIPT),
`address of item 1 of network interfaces`, `... of first serial port`, `version of
application "UTM"`, and the Input Automation Suite: `input scan code of vm codes {...}` is
decoded as set-1 make/break codes with a US keymap and `input keystroke of vm text "..."` typed
as is (UTM maps `\\n` to Enter), both onto the VM's lab console. Like UTM, input needs a
started VM ("notRunning", utm-peers.md §0).

It refuses what UTM and AppleScript refuse, and what UTM would silently drop (utmapp/UTM
`Scripting/UTM.sdef`, `Scripting/UTMScriptingCreateCommand.swift`,
`Scripting/UTMScriptingConfigImpl.swift`, read at e4a4c34 = v5.0.3):
- `serial ports of <a configuration record>`: the name is the plural of the class `serial
  port` (SeRi), so AppleScript makes it an element reference that fails at run time, after any
  statement before it ran ("Can't set every «class SeRi» of ...", UTM #7460);
- a `make new virtual machine` record key the sdef does not define for that record, a value
  of the wrong type or enumeration (see RECORDS): UTM would ignore it without a word;
- UTM's own errors when it applies the record (an `index` with no element there: "Index N
  cannot be found."); the record is applied before the VM is created, so then nothing is.
Anything else fails like osascript does: `execution error: ... (number)` on stderr, exit 1.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Final

from runbook.lab.standins import utm_state

# --- UTM's terminology (Scripting/UTM.sdef) -----------------------------------------------------

# Record labels (property names) -> codes. `serial ports` is also the plural of the class
# `serial port` (SeRi): AppleScript compiles the name as the class (UTM #7460), so a record
# label `serial ports:` is no configuration key either; only «class SrPt» names the property.
TERMS: Final = {
    "backend": "BaKe", "configuration": "CoFg", "name": "pnam", "icon": "IcOn",
    "notes": "NoTe", "architecture": "ArCh", "machine": "MaCh", "memory": "MeMy",
    "cpu cores": "CpUc", "hypervisor": "HyPr", "uefi": "UeFi",
    "directory share mode": "DrSm", "drives": "DrVs", "network interfaces": "NtIf",
    "serial ports": "SeRi", "serial port": "SeRi", "displays": "DiPs",
    "qemu additional arguments": "QeAd", "id": "ID  ", "removable": "ReMv",
    "interface": "InTf", "host size": "HoSz", "guest size": "GuSz", "raw": "RaAw",
    "source": "SrCe", "index": "pidx", "hardware": "HaWe", "mode": "MoDe", "address": "AdDr",
    "host interface": "HoIf", "port forwards": "PtFw", "protocol": "PrTl",
    "host address": "HoAd", "host port": "HoPo", "guest address": "GuAd",
    "guest port": "GuPo", "port": "PoRt", "dynamic resolution": "DyRe",
    "native resolution": "NaRe", "upscaling filter": "UpFi", "downscaling filter": "DoFi",
    "argument string": "ArSt", "file urls": "FlUr",
}  # fmt: skip
NAMES: Final = {code: name for name, code in TERMS.items() if name != "serial port"}
NAMES["SrPt"] = "serial ports"

# Enumerations (name -> code). AppleScript terms ignore case, so `tcp` (serial interface) could
# also compile as `TCP` of `network protocol` (TcPp); which one a Mac picks is not known here,
# so the stand-in takes the enumeration the key expects.
ENUMS: Final = {
    "backend": {"apple": "ApPl", "qemu": "QeMu"},
    "qemu network mode": {"emulated": "EmUd", "shared": "ShRd", "host": "HoSt", "bridged": "BrGd"},
    "serial interface": {"ptty": "PtTy", "tcp": "TcP "},
    "qemu drive interface": {
        "none": "QdIN", "IDE": "QdIi", "SCSI": "QdIs", "SD": "QdId", "MTD": "QdIm",
        "Floppy": "QdIf", "PFlash": "QdIp", "VirtIO": "QdIv", "NVMe": "QdIn", "USB": "QdIu",
    },
    "qemu directory share mode": {"none": "SmOf", "WebDAV": "SmWv", "VirtFS": "SmVs"},
    "qemu scaler": {"linear": "QsLi", "nearest": "QsNe"},
    "network protocol": {"TCP": "TcPp", "UDP": "UdPp"},
}  # fmt: skip
_ENUMERATORS: Final = {name.lower() for names in ENUMS.values() for name in names}

# Record types: code -> what UTM reads there (`as? String`, `as? Int`, `as? Bool`, `as? URL`,
# an enumerator, a record, ("list", T) a list of T records). The create command reads
# resolvedKeyDictionary["backend"] and ["configuration"] (UTMScriptingCreateCommand.swift); the
# rest is UTMScriptingConfigImpl.swift `updateQemuConfiguration` and what it calls.
Kind = str | tuple[str, str]
RECORDS: Final[dict[str, dict[str, Kind]]] = {
    "make properties": {"BaKe": ("enum", "backend"), "CoFg": ("record", "qemu configuration")},
    "qemu configuration": {
        "pnam": "text", "IcOn": "text", "NoTe": "text", "ArCh": "text", "MaCh": "text",
        "MeMy": "int", "CpUc": "int", "HyPr": "bool", "UeFi": "bool",
        "DrSm": ("enum", "qemu directory share mode"),
        "DrVs": ("list", "qemu drive configuration"),
        "NtIf": ("list", "qemu network configuration"),
        "SrPt": ("list", "qemu serial configuration"),
        "DiPs": ("list", "qemu display configuration"),
        "QeAd": ("list", "qemu argument"),
    },
    "qemu drive configuration": {
        "ID  ": "text", "ReMv": "bool", "InTf": ("enum", "qemu drive interface"),
        "HoSz": "int", "GuSz": "int", "RaAw": "bool", "SrCe": "file",
    },
    "qemu network configuration": {
        "pidx": "int", "HaWe": "text", "MoDe": ("enum", "qemu network mode"), "AdDr": "text",
        "HoIf": "text", "PtFw": ("list", "qemu port forward"),
    },
    "qemu port forward": {
        "PrTl": ("enum", "network protocol"), "HoAd": "text", "HoPo": "int", "GuAd": "text",
        "GuPo": "int",
    },
    "qemu serial configuration": {
        "pidx": "int", "HaWe": "text", "InTf": ("enum", "serial interface"), "PoRt": "int",
    },
    "qemu display configuration": {
        "pidx": "int", "HaWe": "text", "DyRe": "bool", "NaRe": "bool",
        "UpFi": ("enum", "qemu scaler"), "DoFi": ("enum", "qemu scaler"),
    },
    "qemu argument": {"ArSt": "text", "FlUr": ("files", "")},
}  # fmt: skip


class ScriptError(Exception):
    """What osascript prints as `execution error: <message> (<number>)`, exit 1."""

    def __init__(self, message: str, number: int) -> None:
        super().__init__(message)
        self.number = number


def _refuse(message: str) -> ScriptError:
    return ScriptError(f"lab osascript stand-in refuses: {message}", -10000)


def _fail(message: str, code: int = -2700) -> int:
    print(f"execution error: {message} ({code})", file=sys.stderr)
    return 1


# --- AppleScript values: records, lists, strings, numbers, enumerators, variables ----------------


@dataclass(frozen=True)
class Enum:
    name: str


@dataclass(frozen=True)
class File:
    path: str


@dataclass(frozen=True)
class Label:
    """A record label and the code it compiles to (None: a user-defined field)."""

    text: str
    code: str | None


_TOKEN: Final = re.compile(
    r'\s*(?:«class (?P<code>.{4})»|"(?P<str>(?:[^"\\]|\\.)*)"|(?P<int>-?\d+)'
    r"|(?P<punct>[{}:,])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while text[pos:].strip():
        found = _TOKEN.match(text, pos)
        if not found:
            raise ScriptError(f"Expected expression but found “{text[pos:].strip()[:20]}”.", -2741)
        kind = next(k for k in ("code", "str", "int", "punct", "word") if found[k] is not None)
        out.append((kind, found[kind]))
        pos = found.end()
    return out


class _Parser:
    def __init__(self, text: str, variables: dict[str, Any]) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.variables = variables

    def peek(self, ahead: int = 0) -> tuple[str, str] | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ScriptError("Expected “}” but found end of line.", -2741)
        self.i += 1
        return tok

    def label_length(self) -> int:
        """Tokens of a record label here (words, or one raw code, before `:`); 0 if none."""
        first = self.peek()
        j = 1 if first is not None and first[0] == "code" else 0
        if not j:
            while (tok := self.peek(j)) is not None and tok[0] == "word":
                j += 1
        return j if j and self.peek(j) == ("punct", ":") else 0

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), text)
        if kind == "int":
            return int(text)
        if (kind, text) == ("punct", "{"):
            return self.braces()
        if kind == "word":
            after = self.peek()
            if after is not None and after[0] == "word":
                raise ScriptError(f"Expected “,” or “}}” but found “{after[1]}”.", -2741)
            if text in ("true", "false"):
                return text == "true"
            if text in self.variables:
                return self.variables[text]
            if text.lower() in _ENUMERATORS:
                return Enum(text)
            raise ScriptError(f"The variable {text} is not defined.", -2753)
        raise ScriptError(f"Expected expression but found “{text}”.", -2741)

    def braces(self) -> Any:
        if self.peek() == ("punct", "}"):
            self.take()
            return []
        if not self.label_length():
            items = [self.value()]
            while (tok := self.take()) != ("punct", "}"):
                if tok != ("punct", ","):
                    raise ScriptError(f"Expected “,” or “}}” but found “{tok[1]}”.", -2741)
                items.append(self.value())
            return items
        record: dict[Label, Any] = {}
        while True:
            n = self.label_length()
            if not n:
                raise ScriptError("Expected a record label before “:”.", -2741)
            parts = [self.take() for _ in range(n)]
            self.take()  # the ':'
            if parts[0][0] == "code":
                label = Label(f"«class {parts[0][1]}»", parts[0][1])
            else:
                words = " ".join(v for _, v in parts)
                label = Label(words, TERMS.get(words.lower()))
            record[label] = self.value()
            tok = self.take()
            if tok == ("punct", "}"):
                return record
            if tok != ("punct", ","):
                raise ScriptError(f"Expected “,” or “}}” but found “{tok[1]}”.", -2741)


def parse_value(text: str, variables: dict[str, Any]) -> Any:
    """One AppleScript value: a record (labels resolved to codes), list, string, number,
    boolean, enumerator or variable from `variables`."""
    parser = _Parser(text, variables)
    found = parser.value()
    if parser.peek() is not None:
        raise ScriptError(f"Expected end of line but found “{parser.take()[1]}”.", -2741)
    return found


def checked(value: Any, record_type: str, where: str = "") -> dict[str, Any]:
    """`value` as a `record_type` record keyed by code; refuses what UTM would not read."""
    where = where or record_type
    if not isinstance(value, dict):
        raise _refuse(f"{where}: expected a record, got {value!r}")
    allowed = RECORDS[record_type]
    out: dict[str, Any] = {}
    for label, item in value.items():
        if label.code is None:
            raise _refuse(
                f"{where}: `{label.text}` is no term of UTM's dictionary (Scripting/UTM.sdef); "
                "AppleScript would send it as a user field and UTM ignore it"
            )
        if label.code not in allowed:
            hint = (
                "; `serial ports` compiles as the class plural «class SeRi» (UTM #7460): "
                "name the property «class SrPt»"
                if label.code == "SeRi"
                else ""
            )
            raise _refuse(
                f"{where}: `{label.text}` («class {label.code}») is no key of a {record_type} "
                f"in Scripting/UTM.sdef, UTM would ignore it{hint}"
            )
        name = NAMES.get(label.code, label.text)
        out[label.code] = _checked_value(item, allowed[label.code], f"{where} > {name}")
    return out


def _checked_value(item: Any, kind: Kind, where: str) -> Any:
    simple = {"text": str, "int": int, "bool": bool, "file": File}
    if isinstance(kind, str):
        wanted = simple[kind]
        if isinstance(item, wanted) and (kind == "bool" or not isinstance(item, bool)):
            return item
        raise _refuse(f"{where}: expected {kind}, got {item!r} (UTM would skip the key)")
    shape, inner = kind
    if shape == "enum" and isinstance(item, Enum):
        names = {n.lower(): n for n in ENUMS[inner]}
        if item.name.lower() in names:
            return names[item.name.lower()]
        raise _refuse(f"{where}: {item.name} is no {inner} ({', '.join(ENUMS[inner])})")
    if shape == "record" and isinstance(item, dict):
        return checked(item, inner, where)
    if shape == "list" and isinstance(item, list):
        return [checked(entry, inner, f"{where} item {n + 1}") for n, entry in enumerate(item)]
    if shape == "files" and isinstance(item, list) and all(isinstance(f, File) for f in item):
        return item
    expected = f"a list of {inner} records" if shape == "list" else f"{shape} {inner}".strip()
    raise _refuse(f"{where}: expected {expected}, got {item!r} (UTM would skip the key)")


# --- make new virtual machine (Scripting/UTMScriptingCreateCommand.swift) ------------------------


def _elements(
    current: list[dict[str, Any]], records: list[dict[str, Any]], fill: Any
) -> list[dict[str, Any]]:
    """UTMScriptingConfigImpl.swift `updateElements`: a record with `index` updates that
    element (an index with none there fails), one without appends a new element, and the
    elements no record named are removed."""
    kept: dict[int, dict[str, Any]] = {}
    added: list[dict[str, Any]] = []
    for record in records:
        if "pidx" in record:
            index = record["pidx"]
            if not 0 <= index < len(current):
                raise ScriptError(f"UTM got an error: Index {index} cannot be found.", -10000)
            kept[index] = fill(dict(current[index]), record)
        else:
            added.append(fill(None, record))
    return [kept[i] for i in sorted(kept)] + added


def _nic(old: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    nic = old or {"mode": "shared", "address": utm_state.random_mac(), "host_interface": ""}
    if "MoDe" in record:
        nic["mode"] = record["MoDe"]
    if record.get("AdDr"):  # kept as given; "if empty a random address will be generated"
        nic["address"] = record["AdDr"]
    if record.get("HoIf"):
        nic["host_interface"] = record["HoIf"]
    return nic


def _serial(old: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    port = old or {"interface": "ptty", "port": 0}
    if "InTf" in record:
        port["interface"] = record["InTf"]
    if "PoRt" in record:
        port["port"] = record["PoRt"]
    return port


def _display(old: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    display = old or {"hardware": "virtio-ramfb"}
    if record.get("HaWe"):
        display["hardware"] = record["HaWe"]
    return display


def _drives(vm: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`updateIdentifiedElements` over the drives: an `id` must exist, a record without one
    is a new drive (`unserializeQemuDriveNew`), drives no record named are removed."""
    by_id = {d["id"]: d for d in vm["drives"]}
    out: list[dict[str, Any]] = []
    for record in records:
        if "ID  " in record:
            if record["ID  "] not in by_id:
                raise ScriptError(
                    f"UTM got an error: Identifier '{record['ID  ']}' cannot be found.", -10000
                )
            drive = dict(by_id[record["ID  "]])
        else:
            removable = bool(record.get("ReMv", False))
            drive = {
                "id": utm_state.drive_id(),
                "removable": removable,
                "source": None,
                "interface": utm_state.default_interface(removable),
            }
        if "SrCe" in record:
            drive["source"] = record["SrCe"].path
        if "InTf" in record:
            drive["interface"] = record["InTf"]
        out.append(drive)
    return out


def apply_configuration(vm: dict[str, Any], config: dict[str, Any]) -> None:
    """A checked `qemu configuration` record onto `vm`, as `updateQemuConfiguration` does."""
    if config.get("pnam"):
        vm["name"] = config["pnam"]
    if config.get("MeMy"):  # `memory != 0`
        vm["memory"] = config["MeMy"]
    if "CpUc" in config:
        vm["cpu_cores"] = config["CpUc"]
    if "DrVs" in config:
        vm["drives"] = _drives(vm, config["DrVs"])
    if "NtIf" in config:
        vm["nics"] = _elements(vm["nics"], config["NtIf"], _nic)
    if "SrPt" in config:
        vm["serial_ports"] = _elements(vm["serial_ports"], config["SrPt"], _serial)
    if "DiPs" in config:
        vm["displays"] = _elements(vm["displays"], config["DiPs"], _display)
    vm["mac"] = vm["nics"][0]["address"] if vm["nics"] else None
    tcp = [p for p in vm["serial_ports"] if p["interface"] == "tcp"]
    vm["serial"] = {"host": "127.0.0.1", "port": tcp[0]["port"]} if tcp else None


_ARGV_TEXT: Final = re.compile(r"^set (\w+) to item (\d+) of argv$")
_ARGV_FILE: Final = re.compile(r"^set (\w+) to POSIX file \(item (\d+) of argv\)$")
_MAKE: Final = re.compile(r"^set (\w+) to make new virtual machine with properties (\{.*\})$")
_GET_CONFIG: Final = re.compile(r"^set (\w+) to configuration of (\w+)$")
_SET_KEY: Final = re.compile(r"^set (.+?) of (\w+) to (.+)$")
_UPDATE: Final = re.compile(r"^update configuration of (\w+) with (\w+)$")
_RETURN_ID: Final = re.compile(r"^return id of (\w+)$")
_FRAME: Final = ("on run argv", "end run", 'tell application "UTM"', "end tell")


def _create(state: dict[str, Any], script: str, argv: list[str]) -> int:
    """Run a `make new virtual machine` script statement by statement, as osascript would:
    every line is known before anything runs (else nothing happens), then each runs in turn,
    so a failing statement after `make new` leaves the VM made (as on a Mac)."""
    lines = [ln.strip() for ln in script.splitlines() if ln.strip()]
    shapes = (_ARGV_TEXT, _ARGV_FILE, _MAKE, _GET_CONFIG, _SET_KEY, _UPDATE, _RETURN_ID)
    unknown = [ln for ln in lines if ln not in _FRAME and not any(p.match(ln) for p in shapes)]
    if unknown:
        return _fail(f"the lab's osascript stand-in does not know the line {unknown[0]!r}", -2741)
    variables: dict[str, Any] = {}
    pending: dict[str, dict[str, Any]] = {}  # configuration records fetched, then edited
    made: dict[str, dict[str, Any]] = {}
    try:
        for line in lines:
            if line in _FRAME:
                continue
            if found := _ARGV_TEXT.match(line):
                variables[found[1]] = _argv(argv, int(found[2]))
            elif found := _ARGV_FILE.match(line):
                variables[found[1]] = File(_argv(argv, int(found[2])))
            elif found := _MAKE.match(line):
                props = checked(parse_value(found[2], variables), "make properties")
                if props.get("BaKe") != "qemu":
                    raise _refuse("the lab plays QEMU virtual machines only (backend:qemu)")
                if "CoFg" not in props:
                    raise ScriptError(
                        "UTM got an error: A valid configuration must be specified.", -10000
                    )
                config = props["CoFg"]
                if not config.get("pnam"):
                    raise ScriptError(
                        "UTM got an error: No name specified in the configuration.", -10000
                    )
                if not config.get("ArCh"):
                    raise ScriptError(
                        "UTM got an error: No architecture specified in the configuration.", -10000
                    )
                vm = utm_state.new_vm(config["pnam"])
                played = _played(state, vm)
                apply_configuration(vm, config)  # before the VM exists: a failure makes none
                if played is not None and vm["mac"] and vm["mac"] != played.get("mac"):
                    from runbook.lab import vm as lab_vm

                    lab_vm.set_mac(played, vm["mac"])  # the host's NIC is the VM's
                state["vms"].append(vm)
                utm_state.save(state)
                made[found[1]] = vm
            elif found := _GET_CONFIG.match(line):
                if found[2] not in made:
                    raise ScriptError(f"The variable {found[2]} is not defined.", -2753)
                pending[found[1]] = {}
            elif found := _SET_KEY.match(line):
                _set_key(found[1], found[2], found[3], pending, made, variables)
            elif found := _UPDATE.match(line):
                vm = _made(made, found[1])
                if vm["status"] != "stopped":
                    raise ScriptError(
                        "UTM got an error: The VM must be in the stopped state.", -10000
                    )
                apply_configuration(vm, pending.get(found[2], {}))
                utm_state.save(state)
            elif found := _RETURN_ID.match(line):
                print(_made(made, found[1])["uuid"])
                return 0
    except ScriptError as error:
        return _fail(str(error), error.number)
    return 0


def _played(state: dict[str, Any], vm: dict[str, Any]) -> dict[str, Any] | None:
    """A new VM whose name a lab host plays (`hosts`, written by lab up) runs on that host:
    the MAC UTM picks for its first NIC (`random_mac` on a Mac) is the host's."""
    played: dict[str, Any] | None = state.get("hosts", {}).get(vm["name"])
    if played is None:
        return None
    vm["lab_host"] = played["lab_host"]
    if played.get("mac"):
        vm["nics"][0]["address"] = vm["mac"] = played["mac"]
    return played


def _made(made: dict[str, dict[str, Any]], variable: str) -> dict[str, Any]:
    if variable not in made:
        raise ScriptError(f"The variable {variable} is not defined.", -2753)
    return made[variable]


def _argv(argv: list[str], item: int) -> str:
    if not 1 <= item <= len(argv):
        raise ScriptError(f"Can\u2019t get item {item} of {{{', '.join(argv)}}}.", -1728)
    return argv[item - 1]


def _set_key(
    label: str,
    target: str,
    value: str,
    pending: dict[str, dict[str, Any]],
    made: dict[str, dict[str, Any]],
    variables: dict[str, Any],
) -> None:
    """`set <label> of <configuration record> to <value>`: edits the record in the script only."""
    if target not in pending:
        raise ScriptError(f"The variable {target} is not defined.", -2753)
    words = label.strip()
    code = words[7:11] if words.startswith("«class ") else TERMS.get(words.lower())
    if code == "SeRi":  # an element reference into a record (UTM #7460)
        vm = next(iter(made.values()), {"name": "?"})
        raise ScriptError(
            f'Can\u2019t set every «class SeRi» of {{name:"{vm["name"]}", …}} to {value}.', -10006
        )
    record = {Label(words, code): parse_value(value, variables)}
    pending[target].update(checked(record, "qemu configuration", "configuration"))


# --- the other scripts ----------------------------------------------------------------------------


def _vm(state: dict[str, Any], argv: list[str]) -> dict[str, Any] | None:
    return utm_state.find(state, argv[0]) if argv else None


def _applescript_text(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), literal)


def _input(script: str, vm: dict[str, Any]) -> int:
    if vm["status"] != "started":
        return _fail(f"UTM got an error: Virtual machine {vm['name']} is not running.")
    codes = re.search(r"input scan code of vm codes \{([\d,\s]*)\}", script)
    if codes:
        text = utm_state.decode_scan_codes([int(c) for c in re.findall(r"\d+", codes[1])])
    else:
        literal = re.search(r'input keystroke of vm text "((?:[^"\\]|\\.)*)"', script)
        if not literal:
            return _fail("A identifier can\u2019t go after this identifier.", -2740)
        text = _applescript_text(literal[1]).replace("\r\n", "\n").replace("\r", "\n")
    utm_state.type_on_console(vm, text)
    return 0


# `serial ports of X` where X is no virtual machine (`vm` is one in the runbook's scripts): the
# element reference into a record that fails at run time (UTM #7460).
_SERIAL_PORTS_OF_RECORD: Final = re.compile(r"(\bset\s+)?\bserial ports of (?!vm\b)(\(?[\w ]+\)?)")


def run(script: str, argv: list[str]) -> int:
    state = utm_state.load()
    if 'version of application "UTM"' in script:
        print(state.get("version", utm_state.DEFAULT_VERSION))
        return 0
    if "make new virtual machine" in script:
        return _create(state, script, argv)
    wrong = _SERIAL_PORTS_OF_RECORD.search(script)
    if wrong:
        verb, number = ("set", -10006) if wrong[1] else ("get", -1728)
        return _fail(f"Can\u2019t {verb} every «class SeRi» of {wrong[2].strip()}.", number)
    vm = _vm(state, argv)
    if vm is None:
        return _fail("UTM got an error: Can\u2019t get virtual machine.", -1728)
    if "input scan code of vm" in script or "input keystroke of vm" in script:
        return _input(script, vm)
    if "if removable of d then" in script:
        if vm["status"] != "stopped":
            return _fail("UTM got an error: The VM must be in the stopped state.")
        gone = [d for d in vm["drives"] if d["removable"]]
        vm["drives"] = [d for d in vm["drives"] if not d["removable"]]
        utm_state.save(state)
        print(len(gone))
        return 0
    if "host size of d" in script:  # runbook.mac.utm.DRIVES_SCRIPT: read-only
        print("\n".join(utm_state.drive_rows(vm)))
        return 0
    if "«class SrPt» of cfg" in script:  # runbook.mac.utm.VM_CONFIG_SCRIPT: read-only
        print("\n".join(utm_state.configuration_rows(vm)))
        return 0
    if "address of item 1 of network interfaces" in script:
        print(vm["mac"])
        return 0
    if "first serial port of vm" in script:
        # UTMScriptingSerialPortImpl.swift: a TCP server port reports tcp, its address
        # (127.0.0.1 by default) and port from the configuration, running or not; a ptty
        # has a device path only while the VM runs, the lab has none: unavailable.
        serial = vm.get("serial")
        print(f"tcp {serial['host']} {serial['port']}" if serial else "unavailable  0")
        return 0
    return _fail("the lab's osascript stand-in does not know this script", -2741)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "-":
        return _fail("the lab's osascript stand-in reads scripts from stdin only (osascript -)")
    script = sys.stdin.read()
    with utm_state.serialized():
        return run(script, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
