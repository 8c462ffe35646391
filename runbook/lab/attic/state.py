"""The atticd stand-in's state: caches (with their Ed25519 keypairs), path objects and NARs.

Plain JSON files under the state dir (real atticd uses SQLite at the same place):
`caches/<name>.json`, `objects/<cache>/<store-hash>.json`; NARs under the storage dir
as `nars/<sha256 hex>.nar`, shared by all caches (deduplicated).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runbook.cache import keys

logger: Final = logging.getLogger(__name__)

CACHE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]{0,49}$")
STORE_HASH_RE: Final = re.compile(r"^[0-9a-df-np-sv-z]{32}$")
DEFAULT_UPSTREAM: Final = ["cache.nixos.org-1"]


@dataclass
class CacheRecord:
    name: str
    keypair: str  # "{name}:" + base64(sk || pk), as attic stores it (attic.md §6)
    is_public: bool = False
    store_dir: str = "/nix/store"
    priority: int = 41
    upstream_cache_key_names: list[str] = field(default_factory=lambda: list(DEFAULT_UPSTREAM))
    retention_period: int | None = None  # None = Global default

    def public_key(self) -> str:
        raw = base64.b64decode(self.keypair.partition(":")[2])
        return f"{self.name}:{base64.b64encode(raw[32:]).decode()}"

    def sign(self, message: str) -> str:
        raw = base64.b64decode(self.keypair.partition(":")[2])
        sig = Ed25519PrivateKey.from_private_bytes(raw[:32]).sign(message.encode())
        return f"{self.name}:{base64.b64encode(sig).decode()}"


def generate_keypair(name: str) -> str:
    sk = Ed25519PrivateKey.generate()
    seed = sk.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{name}:{base64.b64encode(seed + pk).decode()}"


@dataclass
class PathObject:
    store_path: str
    nar_hash: str  # sha256:<hex>
    nar_size: int
    references: list[str]  # basenames
    deriver: str | None = None
    sigs: list[str] = field(default_factory=list)
    ca: str | None = None

    @property
    def store_hash(self) -> str:
        return self.store_path.rsplit("/", 1)[1][:32]

    def narinfo(self, cache: CacheRecord) -> str:
        """Field order as attic serves it; NarHash in hex; signed on the fly (attic.md §6).

        Compression is `none`: the stand-in stores NARs uncompressed (real atticd defaults
        to zstd; `compression.type = "none"` is a valid atticd setting).
        """
        lines = [
            f"StorePath: {self.store_path}",
            f"URL: nar/{self.store_hash}.nar",
            "Compression: none",
            f"NarHash: {self.nar_hash}",
            f"NarSize: {self.nar_size}",
            f"References: {' '.join(self.references)}",
        ]
        if self.deriver:
            lines.append(f"Deriver: {self.deriver}")
        fingerprint = keys.narinfo_fingerprint(
            self.store_path, self.nar_hash, self.nar_size, self.references
        )
        lines.append(f"Sig: {cache.sign(fingerprint)}")
        if self.ca:
            lines.append(f"CA: {self.ca}")
        return "\n".join(lines) + "\n"


class Store:
    """All reads and writes of the state dir; one lock per process."""

    def __init__(self, state_dir: Path, storage_dir: Path) -> None:
        self.state_dir = state_dir
        self.storage_dir = storage_dir
        self._lock = threading.Lock()
        for d in (state_dir / "caches", state_dir / "objects", storage_dir / "nars"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _cache_file(self, name: str) -> Path:
        return self.state_dir / "caches" / f"{name}.json"

    def get_cache(self, name: str) -> CacheRecord | None:
        if not CACHE_NAME_RE.match(name):
            return None
        path = self._cache_file(name)
        if not path.exists():
            return None
        return CacheRecord(**json.loads(path.read_text()))

    def put_cache(self, cache: CacheRecord) -> None:
        with self._lock:
            _write_json(self._cache_file(cache.name), asdict(cache))

    def delete_cache(self, name: str) -> None:
        with self._lock:
            self._cache_file(name).unlink(missing_ok=True)
            objects = self.state_dir / "objects" / name
            for f in objects.glob("*.json"):
                f.unlink()

    def get_object(self, cache: str, store_hash: str) -> PathObject | None:
        if not CACHE_NAME_RE.match(cache) or not STORE_HASH_RE.match(store_hash):
            return None
        if self.get_cache(cache) is None:
            return None
        path = self.state_dir / "objects" / cache / f"{store_hash}.json"
        if not path.exists():
            return None
        return PathObject(**json.loads(path.read_text()))

    def put_object(self, cache: str, obj: PathObject) -> None:
        with self._lock:
            _write_json(self.state_dir / "objects" / cache / f"{obj.store_hash}.json", asdict(obj))

    def nar_path(self, nar_hash: str) -> Path:
        return self.storage_dir / "nars" / f"{nar_hash.partition(':')[2]}.nar"

    def receive_nar(self, stream: BinaryIO, length: int) -> tuple[str, int, bool]:
        """Store `length` bytes from `stream`; (sha256:<hex>, size, was already stored)."""
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.storage_dir / "nars", prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                left = length
                while left > 0:
                    chunk = stream.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
            nar_hash = f"sha256:{digest.hexdigest()}"
            size = length - left
            target = self.nar_path(nar_hash)
            existed = target.exists()
            os.replace(tmp, target)
            return nar_hash, size, existed
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
