"""`utm.iso: auto`: the NixOS ISO downloaded once from a mirror, checked, cached.

A ThreadingHTTPServer on 127.0.0.1 plays channels.nixos.org: it serves
`/nixos-26.05/latest-nixos-minimal-aarch64-linux.iso` and its `.sha256` in the layout and
format the channel scripts publish (NixOS/nixos-channel-scripts mirror-nixos-branch.pl:
`<base16 sha256>  <file name>`). Nothing goes anywhere else.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runbook.core import params
from runbook.core.errors import EXIT_FAILED, RunbookError
from runbook.core.secrets import SecretStore
from runbook.engine.steps import Context, Mode, Outcome
from runbook.mac import iso, utm
from runbook.sections import s01_create_vm

ISO_PATH = "/nixos-26.05/latest-nixos-minimal-aarch64-linux.iso"
NAME = "nixos-minimal-26.05.1234.abcdef-aarch64-linux.iso"
RELEASE = f"/nixos/26.05/nixos-26.05.1234.abcdef/{NAME}"


@dataclass
class Mirror:
    body: bytes
    checksum: str
    cut_after: int | None = None  # close the connection after this many bytes of the ISO
    requests: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    body = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: more than one chunk
    state = Mirror(body, hashlib.sha256(body).hexdigest())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            # the channel's latest-* names redirect to the release's files, as
            # channels.nixos.org does (mirror-nixos-branch.pl `redirect`)
            if self.path in (ISO_PATH, ISO_PATH + ".sha256"):
                self.send_response(301)
                self.send_header("Location", RELEASE + self.path.removeprefix(ISO_PATH))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = self.path.replace(RELEASE, ISO_PATH)
            state.requests.append(path)
            self.path = path
            if self.path == ISO_PATH + ".sha256":
                data = f"{state.checksum}  {NAME}".encode()  # no newline, as the scripts write
            elif self.path == ISO_PATH:
                data = state.body
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.path == ISO_PATH and state.cut_after is not None:
                self.wfile.write(data[: state.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(iso.MIRROR_ENV, raising=False)
    return tmp_path / "xdg" / "runbook" / "iso"


def test_the_url_layout_is_the_channels(cache):
    src = iso.source("26.05", "https://channels.nixos.org")
    assert (
        src.url == "https://channels.nixos.org/nixos-26.05/latest-nixos-minimal-aarch64-linux.iso"
    )
    assert src.checksum_url == src.url + ".sha256"
    assert src.path == cache / "nixos-26.05-minimal-aarch64-linux.iso"


def test_a_good_checksum_is_cached_and_reused(mirror, cache, monkeypatch):
    monkeypatch.setattr(iso, "CHUNK", 64 << 10)  # 17 reads: the progress lines have room
    src = iso.source("26.05", mirror.url)
    lines = io.StringIO()
    path = iso.ensure(src, progress=iso.progress_printer(len(mirror.body), lines))
    assert path == cache / "nixos-26.05-minimal-aarch64-linux.iso"
    assert path.read_bytes() == mirror.body
    assert mirror.requests == [ISO_PATH + ".sha256", ISO_PATH]
    assert not src.part.exists()
    assert (cache / (path.name + ".sha256")).read_text().split()[0] == mirror.checksum
    # not a terminal: a progress line every 10 %, from 0 to 100
    shown = [line.split()[2] for line in lines.getvalue().splitlines()]
    assert shown == [f"{p}%" for p in range(0, 101, 10)]
    again = iso.ensure(src)
    assert again == path
    assert mirror.requests == [ISO_PATH + ".sha256", ISO_PATH]  # the second call fetched nothing


def test_a_bad_checksum_deletes_the_file_and_fails(mirror, cache):
    mirror.checksum = "0" * 64
    src = iso.source("26.05", mirror.url)
    with pytest.raises(iso.ChecksumError) as caught:
        iso.ensure(src, progress=lambda done, total: None)
    message = str(caught.value)
    assert src.url in message
    assert f"expected sha256 {'0' * 64}" in message
    assert f"got {hashlib.sha256(mirror.body).hexdigest()}" in message
    assert caught.value.exit_code == EXIT_FAILED
    assert not src.path.exists() and not src.part.exists()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_an_interrupted_download_leaves_no_iso(mirror, cache):
    mirror.cut_after = 300_000
    src = iso.source("26.05", mirror.url)
    with pytest.raises(RunbookError) as caught:
        iso.ensure(src, progress=lambda done, total: None)
    assert src.url in str(caught.value)
    assert not src.path.exists() and not src.part.exists()
    mirror.cut_after = None  # the next run downloads it whole
    assert iso.ensure(src, progress=lambda done, total: None).read_bytes() == mirror.body


def test_a_missing_release_names_the_url(mirror, cache):
    src = iso.source("25.05", mirror.url)
    with pytest.raises(
        RunbookError,
        match=r"nixos-25\.05/latest-nixos-minimal-aarch64-linux\.iso\.sha256: HTTP 404",
    ):
        iso.ensure(src)
    assert not src.path.exists()


def test_the_env_overrides_the_params_mirror(mirror, cache, monkeypatch):
    monkeypatch.setenv(iso.MIRROR_ENV, mirror.url)
    src = iso.source("26.05", "https://channels.nixos.org")
    assert src.url.startswith(mirror.url)


def write_params(
    tmp_path: Path, iso_value: str, mirror_url: str, *, utm_bin: Path | None = None
) -> Path:
    key = tmp_path / "id"
    key.write_text("k")
    (tmp_path / "flake.nix").touch()
    programs = (
        f"utmctl: {utm_bin / 'utmctl'}, osascript: {utm_bin / 'osascript'}"
        if utm_bin is not None
        else f"utmctl: {tmp_path}/no-utmctl"
    )
    path = tmp_path / "iso.yaml"
    path.write_text(
        f"deployment: t\nnixos_config: {tmp_path}\nidentity: {key}\n"
        "vms:\n  - {name: vm-aarch64-utm-cache, role: cache, address: 127.0.0.1}\n"
        "cache: {vm: vm-aarch64-utm-cache, host: 127.0.0.1}\n"
        f"utm: {{iso: {iso_value}, iso_mirror: '{mirror_url}', {programs}}}\n"
    )
    return path


def context(path: Path, mode: str, tmp_path: Path) -> Context:
    ctx = Context("01-create-vm", params.load(path), Mode(mode), False, SecretStore(tmp_path / "s"))
    ctx.sink = lambda _record: None
    return ctx


def test_01_plans_the_download_and_downloads_nothing(mirror, cache, tmp_path):
    path = write_params(tmp_path, "auto", mirror.url)
    dep = params.load(path).deployment
    assert [c.key for c in params.check_paths(dep)] == ["nixos_config", "identity"]  # auto: no file
    ctx = context(path, "plan", tmp_path)
    step = s01_create_vm.create(ctx, dep.vms[0])
    shown = "\n".join(step.plan())
    assert "download the NixOS 26.05 ISO once" in shown
    assert f"{mirror.url}{ISO_PATH}.sha256" in shown
    assert str(cache / "nixos-26.05-minimal-aarch64-linux.iso") in shown
    assert ctx.run(step) in (Outcome.PLAN, Outcome.UNCHECKED)  # no UTM here: unchecked
    assert mirror.requests == []  # plan mode: nothing downloaded
    assert not cache.exists() or not any(cache.iterdir())


def test_01_resolves_auto_to_the_cached_iso(mirror, cache, tmp_path):
    path = write_params(tmp_path, "auto", mirror.url)
    dep = params.load(path).deployment
    assert s01_create_vm.ensure_iso(dep) == cache / "nixos-26.05-minimal-aarch64-linux.iso"
    assert mirror.requests == [ISO_PATH + ".sha256", ISO_PATH]
    shown = "\n".join(s01_create_vm.create(context(path, "plan", tmp_path), dep.vms[0]).plan())
    assert "NixOS 26.05 ISO cached at" in shown and "curl" not in shown


def test_01_downloads_once_and_boots_the_vm_from_it(mirror, cache, tmp_path, monkeypatch):
    """A deploy of 01 against the lab's UTM stand-ins: the VM is made with the cached ISO."""
    from tests.console_rig import install_standins

    for key, value in install_standins(tmp_path).items():
        monkeypatch.setenv(key, value)
    path = write_params(tmp_path, "auto", mirror.url, utm_bin=tmp_path / "bin")
    ctx = context(path, "deploy", tmp_path)
    vm = ctx.dep.vms[0]
    assert ctx.run(s01_create_vm.create(ctx, vm)) is Outcome.DONE
    iso_file = cache / "nixos-26.05-minimal-aarch64-linux.iso"
    assert [d.removable for d in utm.drives(vm.name)] == [True, False]  # the ISO, the disk
    # UTM's state (the stand-in's utm.json) has the VM booting the cached ISO
    assert str(iso_file) in (tmp_path / "utm.json").read_text()
    assert ctx.run(s01_create_vm.create(ctx, vm)) is Outcome.ALREADY
    assert mirror.requests == [ISO_PATH + ".sha256", ISO_PATH]  # once


def test_a_file_iso_is_used_as_given(tmp_path, cache):
    given = tmp_path / "my.iso"
    given.write_bytes(b"iso")
    dep = params.load(write_params(tmp_path, str(given), "http://127.0.0.1:9")).deployment
    assert s01_create_vm.iso_path(dep) == given
    assert s01_create_vm.ensure_iso(dep) == given
    assert s01_create_vm.iso_plan(dep) == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_progress_is_a_bar(mirror, cache):
    screen = _Terminal()
    src = iso.source("26.05", mirror.url)
    iso.ensure(src, progress=iso.progress_printer(len(mirror.body), screen))
    shown = screen.getvalue()
    assert "NixOS ISO" in shown and "100%" in shown and "\r" in shown  # tqdm redraws one line
    assert "% (" not in shown  # not the line-per-10% form
