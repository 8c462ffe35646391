"""`utm.iso: auto`: the minimal aarch64 NixOS installer ISO of a release, downloaded once,
checked against its published SHA-256 and kept in a cache folder.

Where the channels publish it (NixOS/nixos-channel-scripts `mirror-nixos-branch.pl`): each
channel `nixos-YY.MM` on channels.nixos.org redirects `latest-nixos-minimal-ARCH.iso` and
`latest-nixos-minimal-ARCH.iso.sha256` to the release's files on releases.nixos.org, and the
`.sha256` file holds `<base16 SHA-256>  <file name>` (`write_file("$dstFile.sha256",
"$sha256_expected  $dstName")`, the hash Hydra recorded for the build product). So:

    {mirror}/nixos-{release}/latest-nixos-minimal-aarch64-linux.iso        (+ .sha256)

The mirror is params `utm.iso_mirror` ($RUNBOOK_ISO_MIRROR overrides it: tests serve a local
one). The ISO is kept as `$XDG_CACHE_HOME/runbook/iso/nixos-{release}-minimal-aarch64-linux.iso`
(default ~/.cache/runbook/iso/); it is downloaded to a `.part` file beside it, hashed while it
streams and renamed into place only when the hash matches, so a file under the final name is
always a checked one and a second call downloads nothing. A wrong checksum deletes the
download and fails (RunbookError, exit 1) naming the URL, the expected and the actual hash;
an interrupted download leaves no ISO behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from runbook.core.errors import RunbookError

logger: Final = logging.getLogger(__name__)

MIRROR_ENV: Final = "RUNBOOK_ISO_MIRROR"
ARCH: Final = "aarch64-linux"  # UTM on Apple silicon runs aarch64 guests (handbook 架构)
CHUNK: Final = 1 << 20
READ_TIMEOUT: Final = 60.0  # seconds without a byte from the mirror: the download is dead
LOCK_WAIT: Final = 3600.0  # seconds to wait for another download of the same ISO
LINE_EVERY: Final = 10  # percent between progress lines when stderr is not a terminal
_SHA256_RE: Final = re.compile(r"^[0-9a-fA-F]{64}$")

Progress = Callable[[int, int | None], None]


class ChecksumError(RunbookError):
    """The downloaded ISO's SHA-256 is not the published one (the file is deleted)."""


@dataclass(frozen=True)
class IsoSource:
    """Where the ISO of `release` comes from and where it is kept."""

    release: str
    mirror: str
    cache_dir: Path

    @property
    def url(self) -> str:
        base = self.mirror.rstrip("/")
        return f"{base}/nixos-{self.release}/latest-nixos-minimal-{ARCH}.iso"

    @property
    def checksum_url(self) -> str:
        return self.url + ".sha256"

    @property
    def path(self) -> Path:
        return self.cache_dir / f"nixos-{self.release}-minimal-{ARCH}.iso"

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    def cached(self) -> bool:
        return self.path.is_file()


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/runbook/iso, else ~/.cache/runbook/iso (XDG Base Directory spec)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runbook" / "iso"


def source(release: str, mirror: str) -> IsoSource:
    """The ISO of `release` from `mirror` (params utm.iso_mirror), or $RUNBOOK_ISO_MIRROR."""
    return IsoSource(release, os.environ.get(MIRROR_ENV) or mirror, cache_dir())


def parse_checksum(text: str, url: str) -> str:
    """The base16 SHA-256 of a `.sha256` file: `<hash>  <name>` (or a bare hash)."""
    words = text.split()
    if not words or not _SHA256_RE.match(words[0]):
        raise RunbookError(f"{url}: expected `<sha256>  <file name>`, got {text[:80]!r}")
    return words[0].lower()


def _open(url: str) -> IO[bytes]:
    try:
        response: IO[bytes] = urllib.request.urlopen(url, timeout=READ_TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise RunbookError(f"downloading {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RunbookError(f"downloading {url}: {getattr(exc, 'reason', exc)}") from None
    return response


def fetch_checksum(src: IsoSource) -> str:
    with _open(src.checksum_url) as response:
        try:
            text = response.read(4096).decode(errors="replace")
        except OSError as exc:
            raise RunbookError(f"downloading {src.checksum_url}: {exc}") from None
    return parse_checksum(text, src.checksum_url)


def ensure(src: IsoSource, *, progress: Progress | None = None) -> Path:
    """The checked ISO of `src`: the cached one, else downloaded once (see the module doc).
    One download at a time per ISO (an flock on `<iso>.lock`): VMs created in parallel, or
    two runbooks, wait for the first and then find it cached."""
    if src.cached():
        logger.info("NixOS %s ISO: cached at %s", src.release, src.path)
        return src.path
    src.cache_dir.mkdir(parents=True, exist_ok=True)
    with open(src.path.with_name(src.path.name + ".lock"), "w") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunbookError(
                        f"{src.path}: another download of it has held {lock.name} for "
                        f"{LOCK_WAIT:.0f} s"
                    ) from None
                time.sleep(0.5)
        if src.cached():
            return src.path
        return _download(src, progress)


def _download(src: IsoSource, progress: Progress | None) -> Path:
    expected = fetch_checksum(src)
    digest = hashlib.sha256()
    logger.info("downloading %s to %s", src.url, src.path)
    try:
        with _open(src.url) as response, open(src.part, "wb") as out:
            length = (
                response.headers.get("Content-Length") if hasattr(response, "headers") else None
            )
            total = int(length) if length and str(length).isdigit() else None
            done = 0
            report = progress or progress_printer(total)
            report(0, total)
            while True:
                try:
                    chunk = response.read(CHUNK)
                except OSError as exc:  # includes a socket timeout: no byte for READ_TIMEOUT
                    raise RunbookError(f"downloading {src.url}: {exc} after {done} bytes") from None
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                report(done, total)
            if total is not None and done != total:
                raise RunbookError(f"downloading {src.url}: got {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != expected:
            raise ChecksumError(
                f"{src.url}: checksum mismatch: expected sha256 {expected} (from "
                f"{src.checksum_url}), got {got}; the download is deleted"
            )
        (src.cache_dir / (src.path.name + ".sha256")).write_text(f"{got}  {src.path.name}\n")
        os.replace(src.part, src.path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            src.part.unlink()
    logger.info("NixOS %s ISO: %s (sha256 %s)", src.release, src.path, expected)
    return src.path


def progress_printer(total: int | None, stream: IO[str] | None = None) -> Progress:
    """A progress bar on a terminal (tqdm), else a line every LINE_EVERY percent."""
    out = stream or sys.stderr
    if out.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, file=out, desc="NixOS ISO")

        def on_tty(done: int, _total: int | None) -> None:
            bar.update(done - bar.n)
            if total is not None and done >= total:
                bar.close()

        return on_tty
    shown = [-1]

    def by_line(done: int, size: int | None) -> None:
        if not size:
            if done == 0:
                print("NixOS ISO: downloading (size unknown)", file=out, flush=True)
            return
        percent = done * 100 // size
        step = percent // LINE_EVERY * LINE_EVERY
        if step > shown[0]:
            shown[0] = step
            print(f"NixOS ISO: {step}% ({done >> 20} of {size >> 20} MiB)", file=out, flush=True)

    return by_line
