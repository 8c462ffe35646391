"""runbook.mac.utm: golden argv for utmctl/osascript, parsers on the reference's output samples."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from runbook.core.errors import CommandError, InputError, RunbookError
from runbook.core.models import Result
from runbook.core.params import VM, Role
from runbook.mac import utm

UTMCTL = "/Applications/UTM.app/Contents/MacOS/utmctl"

# utm-makefile-keys.md §2: `print("UUID                                 Status   Name")`, rows
# "\(id) \(status.padding(toLength: 8)) \(name)"; the example row is quoted verbatim.
LIST_SAMPLE = (
    "UUID                                 Status   Name\n"
    "5D419106-2824-4FED-BFE1-24A7F7E253D8 started  NixOS\n"
    "0F3C2B1A-1111-4222-8333-944455556666 stopped  vm aarch64 utm cache\n"
    "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE stopping win 11\n"
)


def res(stdout: str = "", stderr: str = "", code: int = 0) -> Result:
    return Result("cmd", code, stdout, stderr, 0.01)


@pytest.fixture
def on_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")  # a Mac: utm runs its programs


@pytest.fixture
def run(on_mac: None):
    with mock.patch("runbook.transport.local.run", autospec=True) as m:
        m.return_value = res()
        yield m


def test_list_header_columns_match_the_reference() -> None:
    header = LIST_SAMPLE.splitlines()[0]
    assert header.index("Status") == 37 and header.index("Name") == 46


def test_parse_list_sample() -> None:
    entries = utm.parse_list(LIST_SAMPLE)
    assert entries == [
        utm.VmEntry("5D419106-2824-4FED-BFE1-24A7F7E253D8", utm.VmStatus.STARTED, "NixOS"),
        utm.VmEntry(
            "0F3C2B1A-1111-4222-8333-944455556666", utm.VmStatus.STOPPED, "vm aarch64 utm cache"
        ),
        utm.VmEntry("AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE", utm.VmStatus.STOPPING, "win 11"),
    ]


def test_parse_list_header_only_is_empty() -> None:
    assert utm.parse_list("UUID                                 Status   Name\n") == []


def test_parse_list_rejects_garbage() -> None:
    with pytest.raises(CommandError, match="unexpected line"):
        utm.parse_list("UUID                                 Status   Name\nhello world\n")


@pytest.mark.parametrize(
    ("out", "want"),
    [
        ("stopped\n", utm.VmStatus.STOPPED),
        ("started\n", utm.VmStatus.STARTED),
        ("pausing", utm.VmStatus.PAUSING),
        ("resuming\n", utm.VmStatus.RESUMING),
        ("saving\n", utm.VmStatus.UNKNOWN),  # utmctl maps saving -> pausing itself
        ("", utm.VmStatus.UNKNOWN),
    ],
)
def test_parse_status(out: str, want: utm.VmStatus) -> None:
    assert utm.parse_status(out) is want


def test_parse_ip_addresses_ipv4_first_as_printed() -> None:
    out = "192.168.64.13\n10.0.2.15\nfe80::5894:efff:fee4:cee%enp0s1\nfd00::1\n"
    assert utm.parse_ip_addresses(out) == [
        "192.168.64.13",
        "10.0.2.15",
        "fe80::5894:efff:fee4:cee",
        "fd00::1",
    ]
    assert utm.parse_ip_addresses("") == []


def test_parse_attach() -> None:
    assert utm.parse_attach("PTTY: /dev/ttys003\n") == utm.SerialEndpoint(
        "ptty", path="/dev/ttys003"
    )
    assert utm.parse_attach(
        "WARNING: attach command is not implemented yet!\nTCP: 127.0.0.1:4444\n"
    ) == utm.SerialEndpoint("tcp", host="127.0.0.1", port=4444)
    with pytest.raises(CommandError, match="no PTTY"):
        utm.parse_attach("nothing\n")


# --- golden argv --------------------------------------------------------------------------------


def test_list_vms_argv(run: mock.MagicMock) -> None:
    run.return_value = res(LIST_SAMPLE)
    assert utm.list_vms()[0].name == "NixOS"
    run.assert_called_once_with([UTMCTL, "list"], check=False, timeout=utm.UTMCTL_TIMEOUT)


def test_find_vm_by_name_or_uuid(run: mock.MagicMock) -> None:
    run.return_value = res(LIST_SAMPLE)
    assert utm.find_vm("vm aarch64 utm cache", utmctl="utmctl") is not None
    assert utm.find_vm("5D419106-2824-4FED-BFE1-24A7F7E253D8", utmctl="utmctl") is not None
    assert utm.find_vm("nope", utmctl="utmctl") is None


@pytest.mark.parametrize(
    ("call", "argv"),
    [
        (lambda: utm.status("NixOS"), [UTMCTL, "status", "NixOS"]),
        (lambda: utm.start("NixOS"), [UTMCTL, "start", "NixOS"]),
        (
            lambda: utm.start("NixOS", disposable=True, recovery=True),
            [UTMCTL, "start", "NixOS", "--disposable", "--recovery"],
        ),
        (lambda: utm.stop("NixOS"), [UTMCTL, "stop", "NixOS", "--force"]),
        (
            lambda: utm.stop("NixOS", mode=utm.StopMode.REQUEST),
            [UTMCTL, "stop", "NixOS", "--request"],
        ),
        (
            lambda: utm.stop("a b", mode=utm.StopMode.KILL, utmctl="utmctl"),
            ["utmctl", "stop", "a b", "--kill"],
        ),
        (
            lambda: utm.suspend("NixOS", save_state=True),
            [UTMCTL, "suspend", "NixOS", "--save-state"],
        ),
        (lambda: utm.delete("NixOS"), [UTMCTL, "delete", "NixOS"]),
    ],
)
def test_utmctl_golden_argv(run: mock.MagicMock, call, argv: list[str]) -> None:
    run.return_value = res("stopped\n")
    call()
    run.assert_called_once_with(argv, check=False, timeout=utm.UTMCTL_TIMEOUT)


def test_ip_addresses_argv_is_capped(run: mock.MagicMock) -> None:
    run.return_value = res("192.168.64.13\n")
    assert utm.ip_addresses("NixOS") == ["192.168.64.13"]
    run.assert_called_once_with(
        [UTMCTL, "ip-address", "NixOS"], check=False, timeout=utm.IP_ADDRESS_TIMEOUT
    )


def test_attach_with_index(run: mock.MagicMock) -> None:
    run.return_value = res("TCP: 127.0.0.1:4444\n")
    assert utm.attach("NixOS", index=1).port == 4444
    run.assert_called_once_with(
        [UTMCTL, "attach", "NixOS", "--index", "1"], check=False, timeout=utm.UTMCTL_TIMEOUT
    )


@pytest.mark.parametrize(
    "stderr",
    [
        # §2 "Errors": printed with no exit code set, so exit 0 must still fail
        (
            "Error from event: The operation couldn\u2019t be completed. (OSStatus error -2700.)\n"
            "The QEMU guest agent is not running or not installed on the guest.\n"
        ),
        "Virtual machine not found.\n",
        "NOTE: utmctl does not work from SSH sessions or before logging in.\n",
    ],
)
def test_utmctl_errors_on_stderr_fail_even_with_exit_0(run: mock.MagicMock, stderr: str) -> None:
    run.return_value = res("", stderr, 0)
    with pytest.raises(CommandError) as info:
        utm.ip_addresses("NixOS")
    assert info.value.stderr_tail.split(" | ")[0] in stderr


def test_nonzero_exit_fails(run: mock.MagicMock) -> None:
    run.return_value = res("", "boom", 3)
    with pytest.raises(CommandError, match="boom"):
        utm.start("NixOS")


def test_off_macos_is_unchecked_and_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    with mock.patch("runbook.transport.local.run", autospec=True) as run:
        for call in (
            lambda: utm.list_vms(),
            lambda: utm.start("x"),
            lambda: utm.remove_iso("x"),
            lambda: utm.attached_isos("x"),
            lambda: utm.mac_address("x"),
            lambda: utm.create_vm(utm.NewVm("x", Path("/x.iso"))),
        ):
            with pytest.raises(utm.MacOnlyError, match=r"^unchecked: .* needs macOS"):
                call()
        run.assert_not_called()


# --- AppleScript ----------------------------------------------------------------------------------


def test_create_vm_argv_and_script(run: mock.MagicMock) -> None:
    run.return_value = res("5D419106-2824-4FED-BFE1-24A7F7E253D8\n")
    spec = utm.NewVm(
        'my "vm"', Path("/Users/j/nixos minimal.iso"), host_interface="en1",
        mac="02:ab:00:00:00:01", serial_tcp_port=4444,
    )  # fmt: skip
    assert utm.create_vm(spec) == "5D419106-2824-4FED-BFE1-24A7F7E253D8"
    (argv,), kwargs = run.call_args
    # user strings travel as argv, never inside the script text; the MAC as UTM writes them
    assert argv == [
        str(utm.OSASCRIPT), "-", 'my "vm"', "/Users/j/nixos minimal.iso", "en1", "02:AB:00:00:00:01",
    ]  # fmt: skip
    script = kwargs["stdin"]
    assert 'my "vm"' not in script and "minimal.iso" not in script
    assert script == utm.create_vm_script(spec)


# What 01 sends for a VM with a MAC and a TCP serial console: one `make new virtual machine`
# whose configuration record holds every setting (Scripting/UTM.sdef keys; the serial ports by
# their raw code, UTM #7460), and nothing set afterwards.
CREATE_GOLDEN = """on run argv
  set vmName to item 1 of argv
  set isoFile to POSIX file (item 2 of argv)
  set hostIf to item 3 of argv
  set macAddr to item 4 of argv
  tell application "UTM"
    set vm to make new virtual machine with properties {backend:qemu, configuration:{\
name:vmName, architecture:"aarch64", memory:4096, cpu cores:4, \
drives:{{removable:true, source:isoFile}, {guest size:65536, interface:VirtIO}}, \
network interfaces:{{index:0, mode:bridged, host interface:hostIf, address:macAddr}}, \
displays:{{hardware:"virtio-ramfb"}}, «class SrPt»:{{interface:tcp, port:4444}}}}
    return id of vm
  end tell
end run
"""


def test_create_vm_script_golden_every_key_in_the_record() -> None:
    spec = utm.NewVm("v", Path("/i.iso"), mac="02:AB:00:00:00:01", serial_tcp_port=4444)
    script = utm.create_vm_script(spec)
    assert script == CREATE_GOLDEN
    assert "serial ports" not in script and "update configuration" not in script
    assert "set memory of" not in script and " of config" not in script


def test_create_vm_script_defaults() -> None:
    script = utm.create_vm_script(utm.NewVm("v", Path("/i.iso"), display=False))
    assert "address:" not in script and "displays" not in script and "SrPt" not in script
    assert "network interfaces:{{index:0, mode:bridged, host interface:hostIf}}" in script
    scsi = utm.create_vm_script(utm.NewVm("v", Path("/i.iso"), disk_interface="scsi"))
    assert "{guest size:65536, interface:SCSI}" in scsi


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"architecture": "arm64"}, "architecture"),
        ({"disk_interface": "sata"}, "disk_interface"),
        ({"mac": "zz:00:00:00:00:00"}, "mac"),
        ({"memory_mib": 0}, "memory_mib"),
        ({"serial_tcp_port": 70000}, "serial_tcp_port"),
    ],
)
def test_create_vm_bad_spec_is_input_error(kwargs: dict[str, object], msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        utm.create_vm_script(utm.NewVm("v", Path("/i.iso"), **kwargs))  # type: ignore[arg-type]


def test_remove_iso_checks_stopped_then_updates(run: mock.MagicMock) -> None:
    run.side_effect = [res("stopped\n"), res("1\n")]
    assert utm.remove_iso("NixOS") == 1
    first, second = run.call_args_list
    assert first.args[0] == [UTMCTL, "status", "NixOS"]
    assert second.args[0] == [str(utm.OSASCRIPT), "-", "NixOS"]
    assert second.kwargs["stdin"] == utm.REMOVE_ISO_SCRIPT
    assert "if removable of d then" in utm.REMOVE_ISO_SCRIPT


def test_remove_iso_refuses_a_running_vm(run: mock.MagicMock) -> None:
    run.return_value = res("started\n")
    with pytest.raises(RunbookError, match="is started: stop it"):
        utm.remove_iso("NixOS")
    assert run.call_count == 1


# DRIVES_SCRIPT's lines. A read of UTM 5.0.3 gives no source (its drive record is id, removable,
# interface, host size), so the ISO shows by its size; a UTM that did report it is read too.
DRIVES_READ = (
    "8A3F6C1E-5B2D-4E7A-9C10-2F4B6D8E0A11\ttrue\t1013\t\n"
    "0D9E8F7A-6B5C-4D3E-8F21-3A4B5C6D7E8F\tfalse\t2048\t\n"
)
DRIVES_WITH_SOURCE = (
    "ISO-0\ttrue\t0\t/Users/j/Downloads/nixos minimal\taarch64.iso\n"
    "DISK-1\tfalse\t65536\t/Users/j/Library/Containers/com.utmapp.UTM/Data/Documents/v.utm/Data/d.qcow2\n"
)


def test_parse_drives_golden() -> None:
    assert utm.parse_drives(DRIVES_READ) == [
        utm.Drive("8A3F6C1E-5B2D-4E7A-9C10-2F4B6D8E0A11", True, 1013, None),
        utm.Drive("0D9E8F7A-6B5C-4D3E-8F21-3A4B5C6D7E8F", False, 2048, None),
    ]
    iso, disk = utm.parse_drives(DRIVES_WITH_SOURCE)
    assert iso == utm.Drive("ISO-0", True, 0, "/Users/j/Downloads/nixos minimal\taarch64.iso")
    assert disk.source is not None and disk.source.endswith("/d.qcow2") and not disk.removable
    assert utm.parse_drives("") == [] and utm.parse_drives("\n") == []


@pytest.mark.parametrize(
    ("drive", "holds"),
    [
        (utm.Drive("a", True, 1013, None), True),  # the ISO, known by its size
        (utm.Drive("a", True, 0, "/x.iso"), True),  # the ISO, known by its source
        # host size 0: an empty drive, or an ISO UTM cannot stat; a read cannot tell them
        # apart (no `source`, serializeQemuDriveExisting), so it counts as attached
        (utm.Drive("a", True, 0, None), True),
        (utm.Drive("a", False, 65536, "/d.qcow2"), False),  # the disk
    ],
)
def test_drive_holds_image(drive: utm.Drive, holds: bool) -> None:
    assert drive.holds_image is holds


@pytest.mark.parametrize(
    "line", ["ISO-0\tyes\t0\t", "ISO-0\ttrue\t\t", "ISO-0 true 0", "missing value"]
)
def test_parse_drives_rejects_garbage(line: str) -> None:
    with pytest.raises(CommandError, match="unexpected drive line"):
        utm.parse_drives(line + "\n")


def test_drives_argv_and_script(run: mock.MagicMock) -> None:
    run.return_value = res(DRIVES_READ)
    assert [d.id[:4] for d in utm.attached_isos("my vm")] == ["8A3F"]
    run.assert_called_once_with(
        [str(utm.OSASCRIPT), "-", "my vm"], stdin=utm.DRIVES_SCRIPT, timeout=utm.OSASCRIPT_TIMEOUT
    )
    script = utm.DRIVES_SCRIPT
    assert "my vm" not in script and "update configuration" not in script  # argv; read-only
    assert "repeat with d in drives of (configuration of vm)" in script
    assert "try\n        set src to POSIX path of (source of d)\n      end try" in script
    assert "(removable of d as text) & tab & (mib as text) & tab & src" in script


def test_osascript_shown_is_a_heredoc() -> None:
    shown = utm.osascript_shown(utm.DRIVES_SCRIPT, "a b")
    assert shown == f"osascript - 'a b' <<'APPLESCRIPT'\n{utm.DRIVES_SCRIPT}APPLESCRIPT"


def test_mac_address_and_serial_endpoint(run: mock.MagicMock) -> None:
    run.return_value = res("5A:94:EF:E4:0C:EE\n")
    assert utm.mac_address("NixOS") == "5A:94:EF:E4:0C:EE"
    run.return_value = res("tcp 127.0.0.1 4444\n")
    assert utm.serial_tcp_endpoint("NixOS") == ("127.0.0.1", 4444)
    run.return_value = res("ptty unavailable unavailable\n")
    assert utm.serial_tcp_endpoint("NixOS") is None
    run.return_value = res("missing value\n")
    with pytest.raises(CommandError, match="gave no MAC"):
        utm.mac_address("NixOS")


def test_utm_version(run: mock.MagicMock) -> None:
    run.return_value = res("4.7.2\n")
    assert utm.utm_version() == (4, 7, 2)
    # 4.7.2 gave `UTM version` the code of `virtual machine` (UTM #7360), fixed in 4.7.3
    assert not utm.supports_input_automation((4, 7, 2))
    assert utm.supports_input_automation((4, 7, 3))
    assert utm.supports_input_automation((5, 0, 3))
    assert not utm.supports_input_automation((4, 6, 5))
    refusal = utm.input_automation_refusal((4, 7, 2))
    assert refusal is not None and "UTM >= 4.7.3" in refusal and "UTM 4.7.2" in refusal
    assert "#7360" in refusal and utm.input_automation_refusal((4, 7, 3)) is None


def test_input_scripts_refused_before_they_run_on_utm_4_7_2(run: mock.MagicMock) -> None:
    run.return_value = res("4.7.2\n")
    script = 'tell application "UTM"\n  input scan code of vm codes {28, 156}\nend tell\n'
    with pytest.raises(RunbookError, match=r"needs UTM >= 4\.7\.3, this Mac has UTM 4\.7\.2"):
        utm.run_applescript(script, "vm", what="typing")
    (call,) = run.call_args_list  # only the version was read: nothing typed
    assert call.kwargs["stdin"] == utm.UTM_VERSION_SCRIPT
    run.reset_mock()
    run.side_effect = [res("4.7.3\n"), res("")]
    utm.run_applescript(script, "vm", what="typing")
    assert [c.kwargs["stdin"] for c in run.call_args_list] == [utm.UTM_VERSION_SCRIPT, script]


# --- against the lab's stand-ins (runbook/lab/standins/utmctl.py, osascript.py) -----------------


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.console_rig import install_standins

    for key, value in install_standins(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_vm_lifecycle_through_the_standins(standins: Path) -> None:
    spec = utm.NewVm(
        "vm-aarch64-utm-cache", standins / "nixos minimal.iso", mac="02:AB:CD:00:0E:01"
    )
    uuid = utm.create_vm(spec)
    assert len(uuid) == 36
    entries = utm.list_vms(utmctl="utmctl")
    assert entries == [utm.VmEntry(uuid, utm.VmStatus.STOPPED, "vm-aarch64-utm-cache")]
    assert utm.mac_address("vm-aarch64-utm-cache") == "02:AB:CD:00:0E:01"
    utm.start(uuid, utmctl="utmctl")
    assert utm.status("vm-aarch64-utm-cache", utmctl="utmctl") is utm.VmStatus.STARTED
    # the live ISO has no guest agent: utmctl says so on stderr and still exits 0
    with pytest.raises(CommandError, match="guest agent is not running"):
        utm.ip_addresses("vm-aarch64-utm-cache", utmctl="utmctl")
    with pytest.raises(RunbookError, match="stop it before removing the ISO"):
        utm.remove_iso("vm-aarch64-utm-cache", utmctl="utmctl")
    utm.stop("vm-aarch64-utm-cache", mode=utm.StopMode.REQUEST, utmctl="utmctl")
    iso, disk = utm.drives("vm-aarch64-utm-cache")
    # as UTM reads them: no source; the ISO (a name in the lab's state) by its size
    assert (iso.removable, iso.source, iso.holds_image) == (True, None, True)
    assert (disk.removable, disk.holds_image) == (False, False)
    assert utm.attached_isos("vm-aarch64-utm-cache") == [iso]
    assert utm.remove_iso("vm-aarch64-utm-cache", utmctl="utmctl") == 1
    assert utm.drives("vm-aarch64-utm-cache") == [disk] and not utm.attached_isos(uuid)
    assert utm.remove_iso("vm-aarch64-utm-cache", utmctl="utmctl") == 0  # already done
    with pytest.raises(CommandError, match="Virtual machine not found"):
        utm.status("nope", utmctl="utmctl")
    assert utm.supports_input_automation(utm.utm_version())


# --- reading the configuration back (01's check) ---------------------------------------------------

# VM_CONFIG_SCRIPT's rows for a VM 01 made as asked, with one enum as a raw constant (what
# `as text` gives when it cannot name it) and a last empty host interface stripped
CONFIG_READ = (
    "memory\t4096\ncpu cores\t4\n"
    "nic\t«constant ****BrGd»\t02:ab:00:00:00:01\ten0\n"
    "display\tvirtio-ramfb\nserial\ttcp\t4444\n"
    "drive\ttrue\tUSB\ndrive\tfalse\t«constant ****QdIv»\n"
)
MADE = utm.NewVm("v", Path("/i.iso"), mac="02:AB:00:00:00:01", serial_tcp_port=4444)


def test_parse_vm_config_golden() -> None:
    config = utm.parse_vm_config(CONFIG_READ)
    assert config == utm.VmConfig(
        4096, 4, (utm.NicConfig("bridged", "02:AB:00:00:00:01", "en0"),), ("virtio-ramfb",),
        (utm.SerialConfig("tcp", 4444),),
        (utm.DriveConfig(True, "USB"), utm.DriveConfig(False, "VirtIO")),
    )  # fmt: skip
    assert utm.config_differences(MADE, config) == []
    assert config.summary() == (
        "bridged 02:AB:00:00:00:01; display virtio-ramfb; serial tcp 4444; disk VirtIO; "
        "4096 MiB, 4 cores"
    )
    assert utm.parse_vm_config("memory\t512\ncpu cores\t0\nnic\tshared\t02:00:00:00:00:09").nics


@pytest.mark.parametrize("out", ["", "memory\t4096\n", "memory\t4096\ncpu cores\t4\nwhat\t1\n"])
def test_parse_vm_config_rejects_garbage(out: str) -> None:
    with pytest.raises(CommandError, match="unexpected configuration line"):
        utm.parse_vm_config(out)


@pytest.mark.parametrize(
    ("replace", "by", "says"),
    [
        ("«constant ****BrGd»", "shared", "network: no bridged interface (UTM has: shared"),
        ("02:ab:00:00:00:01", "02:AB:00:00:00:99", "has MAC 02:AB:00:00:00:99, params say"),
        ("display\tvirtio-ramfb\n", "", "display: none"),
        ("false\t«constant ****QdIv»", "false\tNVMe", "disk: interface NVMe, params say VirtIO"),
        ("drive\tfalse\t«constant ****QdIv»\n", "", "disk: no fixed drive"),
        ("serial\ttcp\t4444", "serial\tptty\t0", "serial: no TCP port 4444 (UTM has: ptty 0)"),
    ],
)
def test_config_differences_say_what_differs(replace: str, by: str, says: str) -> None:
    config = utm.parse_vm_config(CONFIG_READ.replace(replace, by))
    (wrong,) = utm.config_differences(MADE, config)
    assert says in wrong


def test_vm_config_argv_and_script(run: mock.MagicMock) -> None:
    run.return_value = res(CONFIG_READ)
    assert utm.vm_config("my vm").memory_mib == 4096
    run.assert_called_once_with(
        [str(utm.OSASCRIPT), "-", "my vm"],
        stdin=utm.VM_CONFIG_SCRIPT,
        timeout=utm.OSASCRIPT_TIMEOUT,
    )
    script = utm.VM_CONFIG_SCRIPT
    assert "my vm" not in script and "update configuration" not in script  # argv; read-only
    assert "repeat with p in «class SrPt» of cfg" in script and "serial ports" not in script


# --- the stand-ins refuse what UTM and AppleScript refuse -------------------------------------------

# What 01 sent before issue 9 (its create_vm_script for MADE): the VM is made first, then
# `set serial ports of config` is an element reference into a record (UTM #7460).
OLD_CREATE = """on run argv
  set vmName to item 1 of argv
  set isoFile to POSIX file (item 2 of argv)
  set hostIf to item 3 of argv
  set macAddr to item 4 of argv
  tell application "UTM"
    set vm to make new virtual machine with properties {backend:qemu, configuration:\
{name:vmName, architecture:"aarch64", drives:{{removable:true, source:isoFile}, {guest size:65536}}}}
    set config to configuration of vm
    set memory of config to 4096
    set cpu cores of config to 4
    set network interfaces of config to {{index:0, mode:bridged, host interface:hostIf, address:macAddr}}
    set displays of config to {{hardware:"virtio-ramfb"}}
    set serial ports of config to {{interface:tcp, port:4444}}
    update configuration of vm with config
    return id of vm
  end tell
end run
"""
ARGV = ("v", "/i.iso", "en0", "02:AB:00:00:00:01")


def test_the_old_create_form_fails_and_leaves_a_vm_01_does_not_call_done(standins: Path) -> None:
    from runbook.sections import s01_create_vm
    from runbook.sections.vm_console import MacSide

    with pytest.raises(CommandError) as info:
        utm.run_applescript(OLD_CREATE, *ARGV, what="creating v")
    assert info.value.exit_code == 1
    assert "Can\u2019t set every «class SeRi» of" in info.value.stderr_tail
    # as on a Mac, `make new` ran before the failing line: a VM with UTM's defaults
    assert [e.name for e in utm.list_vms(utmctl="utmctl")] == ["v"]
    config = utm.vm_config("v")
    assert (config.memory_mib, config.displays, config.nics[0].mode) == (512, (), "shared")
    wrong = utm.config_differences(MADE, config)
    assert [w.split(":")[0] for w in wrong] == ["network", "display", "serial"]
    vm = VM(name="v", role=Role.CACHE, address="10.0.0.1")
    check = s01_create_vm.made_as_asked(MacSide(str(standins / "bin" / "utmctl")), MADE, vm)
    assert check.done is False and check.reason.startswith("v exists in UTM but differs: network")


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("memory:4096", "ram:4096", "`ram` is no term of UTM's dictionary"),
        ("«class SrPt»:", "serial ports:", "name the property «class SrPt»"),
        ('displays:{{hardware:"virtio-ramfb"}}', 'displays:{hardware:"virtio-ramfb"}',
         "expected a list of qemu display configuration records"),
        ("mode:bridged", "mode:tcp", "tcp is no qemu network mode"),
        ("memory:4096", 'memory:"4096"', "memory: expected int"),
        ("index:0", "index:1", "UTM got an error: Index 1 cannot be found."),
        ("cpu cores:4", "cpu cores:four", "The variable four is not defined."),
        ("interface:VirtIO", "interface:Sata", "The variable Sata is not defined."),
        ("backend:qemu", "backend:apple", "QEMU virtual machines only"),
    ],
)  # fmt: skip
def test_the_standin_refuses_a_record_utm_would_not_take_and_creates_nothing(
    standins: Path, old: str, new: str, says: str
) -> None:
    script = CREATE_GOLDEN.replace(old, new, 1)
    assert script != CREATE_GOLDEN
    with pytest.raises(CommandError) as info:
        utm.run_applescript(script, *ARGV, what="creating v")
    assert info.value.exit_code == 1 and says in info.value.stderr_tail
    assert utm.list_vms(utmctl="utmctl") == []  # the record is applied before the VM exists


def test_the_standin_refuses_serial_ports_of_a_record_in_any_script(standins: Path) -> None:
    utm.create_vm(MADE)
    read = (
        'on run argv\n  tell application "UTM"\n'
        "    return serial ports of (configuration of virtual machine named (item 1 of argv))\n"
        "  end tell\nend run\n"
    )
    with pytest.raises(CommandError, match="Can\u2019t get every «class SeRi» of"):
        utm.run_applescript(read, "v", what="reading")
    assert utm.serial_tcp_endpoint("v") == ("127.0.0.1", 4444)  # the element: fine


def test_create_through_the_standins_reads_back_what_was_asked(standins: Path) -> None:
    spec = utm.NewVm(
        "v", standins / "nixos.iso", host_interface="en1", mac="02:ab:00:00:00:01",
        serial_tcp_port=4455, disk_interface="scsi", memory_mib=8192, cpu_cores=6,
    )  # fmt: skip
    uuid = utm.create_vm(spec)
    config = utm.vm_config(uuid)
    assert config == utm.VmConfig(
        8192, 6, (utm.NicConfig("bridged", "02:AB:00:00:00:01", "en1"),), ("virtio-ramfb",),
        (utm.SerialConfig("tcp", 4455),),
        (utm.DriveConfig(True, "USB"), utm.DriveConfig(False, "SCSI")),
    )  # fmt: skip
    assert utm.config_differences(spec, config) == []
    # the default serial port (ptty) and the default drives are gone, as UTM removes them
    assert utm.serial_tcp_endpoint("v") == ("127.0.0.1", 4455)
    assert [d.removable for d in utm.drives("v")] == [True, False]


def test_the_standins_utm_lets_utm_input_run_and_4_7_2_is_refused(standins: Path) -> None:
    import json

    utm.create_vm(MADE)  # stopped: a typed script that gets through says "not running"
    typing = 'tell application "UTM"\n  input scan code of vm codes {28, 156}\nend tell\n'
    assert utm.supports_input_automation(utm.utm_version())
    with pytest.raises(CommandError, match="is not running"):
        utm.run_applescript(typing, "v", what="typing")
    state_file = standins / "utm.json"
    state = json.loads(state_file.read_text())
    state["version"] = "4.7.2"
    state_file.write_text(json.dumps(state))
    with pytest.raises(RunbookError, match=r"needs UTM >= 4\.7\.3, this Mac has UTM 4\.7\.2"):
        utm.run_applescript(typing, "v", what="typing")


def _context_01(tmp_path: Path, standins: Path, mode: str) -> Any:
    """Notebook 01's context for one VM (vm-test-cache) on the stand-ins' UTM."""
    from runbook.core.params import load
    from runbook.core.secrets import SecretStore
    from runbook.engine.steps import Context, Mode
    from tests.run_rig import write_params

    (tmp_path / "nixos.iso").write_bytes(b"iso")
    params = write_params(tmp_path)
    with params.open("a") as f:
        f.write(
            f"utm:\n  utmctl: {standins / 'bin' / 'utmctl'}\n"
            f"  osascript: {standins / 'bin' / 'osascript'}\n  iso: {tmp_path / 'nixos.iso'}\n"
        )
    ctx = Context("01-create-vm", load(params), Mode(mode), False, SecretStore(tmp_path / "s"))
    ctx.sink = lambda _record: None
    return ctx


def test_01_creates_once_then_is_done_and_never_calls_a_wrong_vm_done(
    tmp_path: Path, standins: Path
) -> None:
    from runbook.engine.steps import Outcome, StepFailed
    from runbook.sections import s01_create_vm

    ctx = _context_01(tmp_path, standins, "deploy")
    vm = ctx.dep.vms[0]
    assert ctx.run(s01_create_vm.create(ctx, vm)) is Outcome.DONE
    assert ctx.run(s01_create_vm.create(ctx, vm)) is Outcome.ALREADY
    assert "bridged" in ctx.records[-1]["reason"] and "disk VirtIO" in ctx.records[-1]["reason"]
    utm.delete(vm.name, utmctl="utmctl")
    # the old two-stage form: it fails after `make new`, leaving a VM with UTM's defaults
    with pytest.raises(CommandError, match="SeRi"):
        utm.run_applescript(OLD_CREATE, vm.name, "/i.iso", "en0", "", what="creating")
    plan = _context_01(tmp_path, standins, "plan")
    assert plan.run(s01_create_vm.create(plan, vm)) is Outcome.PLAN  # not "already done"
    with pytest.raises(StepFailed, match=r"exists in UTM but differs \(network: no bridged"):
        ctx.run(s01_create_vm.create(ctx, vm))
    assert [e.name for e in utm.list_vms(utmctl="utmctl")] == [vm.name]  # no second VM
