"""known_hosts per deployment: trust on first use, refuse a changed key, replace on request.

paramiko's own policies either trust everything (AutoAddPolicy, which also accepts a
*changed* key when the file is not loaded) or nothing; this keeps the one decision that
matters here in one place.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from pathlib import Path
from typing import Final

import paramiko

from runbook.core.errors import HostKeyChangedError

logger: Final = logging.getLogger(__name__)
_lock = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, e.g. `SHA256:abc...` (no padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def entry_name(host: str, port: int) -> str:
    """The known_hosts name OpenSSH uses: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


class KnownHosts:
    """One known_hosts file (OpenSSH format)."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()

    def _load(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.path.exists():
            keys.load(str(self.path))
        return keys

    def known_types(self, name: str) -> list[str]:
        entry = self._load().lookup(name)
        return list(entry.keys()) if entry else []

    def verify(self, name: str, key: paramiko.PKey, *, replace: bool = False) -> str:
        """Accept or refuse `key` for `name`; returns "known", "learned" or "replaced"."""
        with _lock:
            keys = self._load()
            entry = keys.lookup(name)
            if entry is not None and entry.get(key.get_name()) == key:
                return "known"
            if entry:
                old = ", ".join(f"{t} {fingerprint(k)}" for t, k in entry.items())
                if not replace:
                    raise HostKeyChangedError(
                        f"host key for {name} changed: known_hosts {self.path} has {old}, "
                        f"the host now presents {key.get_name()} {fingerprint(key)} (compare "
                        "it with the VM's keys on its console before trusting it)"
                    )
                logger.warning(
                    "replacing host key for %s: old %s, new %s %s",
                    name,
                    old,
                    key.get_name(),
                    fingerprint(key),
                )
                self._remove(keys, name)
                status = "replaced"
            else:
                logger.info(
                    "learned host key for %s: %s %s (trust on first use, saved to %s)",
                    name,
                    key.get_name(),
                    fingerprint(key),
                    self.path,
                )
                status = "learned"
            keys.add(name, key.get_name(), key)
            self._save(keys)
            return status

    @staticmethod
    def _remove(keys: paramiko.HostKeys, name: str) -> None:
        # HostKeys.__delitem__ drops one matching line at a time; a host may have several
        while keys.lookup(name) is not None:
            del keys[name]

    def pin(self, name: str, keys: list[tuple[str, str]]) -> None:
        """Make `name`'s entry exactly `keys` ((type, base64) pairs read over a trusted
        channel, such as the VM's console), replacing whatever was known."""
        with _lock:
            known = self._load()
            self._remove(known, name)
            for kind, blob in keys:
                known.add(name, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
            self._save(known)
            logger.info("pinned %d host key(s) for %s in %s", len(keys), name, self.path)

    def forget(self, name: str) -> None:
        with _lock:
            keys = self._load()
            self._remove(keys, name)
            self._save(keys)

    def _save(self, keys: paramiko.HostKeys) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        keys.save(str(tmp))
        tmp.replace(self.path)
