"""Server-side configuration of the atticd stand-in: TOML, environment and the env file.

Defaults are the NixOS module's (attic.md §3): env file `/var/lib/atticd/env`, state in
`/var/lib/atticd` (`StateDirectory`), storage `/var/lib/atticd/storage`, listen `[::]:8080`.
Stand-in-only knobs are environment variables prefixed `ATTICD_STANDIN_` (see `ServerConfig`).
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import unquote, urlparse

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from runbook.cache import keys

logger: Final = logging.getLogger(__name__)

DEFAULT_ENV_FILE: Final = "/var/lib/atticd/env"
DEFAULT_STATE_DIR: Final = "/var/lib/atticd"
DEFAULT_LISTEN: Final = "[::]:8080"  # `default_listen_address` (attic.md §3)
ENV_FILE_VAR: Final = "ATTICD_STANDIN_ENV_FILE"
STATE_DIR_VAR: Final = "ATTICD_STANDIN_STATE_DIR"
CONFIG_VAR: Final = "ATTICD_STANDIN_CONFIG"
PUBKEY_VAR: Final = "ATTIC_SERVER_TOKEN_RS256_PUBKEY_BASE64"
HS256_VAR: Final = "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"
CONFIG_B64_VAR: Final = "ATTIC_SERVER_CONFIG_BASE64"
TOKEN_VARS: Final = (PUBKEY_VAR, keys.TOKEN_SECRET_VAR, HS256_VAR)
PANIC_EXIT: Final = 101  # a Rust panic's exit status


def panic(message: str, location: str = "server/src/config.rs") -> NoReturn:
    """Exit the way a Rust `expect()` panic does: message on stderr, status 101."""
    sys.stderr.write(
        f"thread 'main' panicked at {location}:\n{message}\n"
        "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
    )
    sys.stderr.flush()
    raise SystemExit(PANIC_EXIT)


def load_env_file(path: str | None) -> None:
    """Overlay `path` on os.environ as systemd's `EnvironmentFile=` would.

    An explicit path that is missing fails like systemd does. The default one is read only
    when no token variable is set yet: the lab's systemctl has usually loaded the unit's
    `EnvironmentFile=` already, and that one wins.
    """
    explicit = path or os.environ.get(ENV_FILE_VAR)
    target = Path(explicit or DEFAULT_ENV_FILE)
    if not explicit and any(os.environ.get(v) for v in TOKEN_VARS):
        return
    if not target.exists():
        if explicit:
            sys.stderr.write(f"Failed to load environment files: {target}: No such file\n")
            raise SystemExit(1)
        return
    os.environ.update(keys.parse_env_file(target.read_text()))


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    state_dir: Path
    storage_dir: Path
    api_endpoint: str | None
    allowed_hosts: list[str]
    raw: dict[str, Any]


def load_config(config_path: str | None, listen: str | None) -> ServerConfig:
    """`-f CONFIG` (or ATTIC_SERVER_CONFIG_BASE64, or $ATTICD_STANDIN_CONFIG), then defaults."""
    raw: dict[str, Any] = {}
    path = config_path or os.environ.get(CONFIG_VAR)
    if path:
        raw = tomllib.loads(Path(path).read_text())
    elif os.environ.get(CONFIG_B64_VAR):
        raw = tomllib.loads(base64.b64decode(os.environ[CONFIG_B64_VAR]).decode())
    state = Path(os.environ.get(STATE_DIR_VAR) or _state_from_db_url(raw) or DEFAULT_STATE_DIR)
    storage = raw.get("storage", {})
    storage_path = storage.get("path") if isinstance(storage, dict) else None
    endpoint = raw.get("api-endpoint")
    if endpoint is not None and not str(endpoint).endswith("/"):
        panic("api-endpoint must end with a slash")
    return ServerConfig(
        listen=listen or str(raw.get("listen", DEFAULT_LISTEN)),
        state_dir=state,
        storage_dir=Path(storage_path) if storage_path else state / "storage",
        api_endpoint=str(endpoint) if endpoint else None,
        allowed_hosts=[str(h) for h in raw.get("allowed-hosts", [])],
        raw=raw,
    )


def _state_from_db_url(raw: dict[str, Any]) -> str | None:
    """The directory of a `sqlite:///var/lib/atticd/server.db?mode=rwc` database URL."""
    db = raw.get("database", {})
    url = db.get("url") if isinstance(db, dict) else None
    if not url or not str(url).startswith("sqlite://"):
        return None
    return str(Path(unquote(urlparse(str(url)).path)).parent)


@dataclass(frozen=True)
class SigningKeys:
    """What the server signs (None when pubkey-only) and verifies tokens with."""

    private: rsa.RSAPrivateKey | None
    public: rsa.RSAPublicKey


def load_signing_keys(raw: dict[str, Any]) -> SigningKeys:
    """TOML `[jwt.signing]` wins; else env PUBKEY, then RS256 SECRET, then HS256 (attic.md §1)."""
    signing = raw.get("jwt", {}).get("signing", {}) if isinstance(raw.get("jwt"), dict) else {}
    sources = [
        ("pubkey", signing.get("token-rs256-pubkey-base64")),
        ("secret", signing.get("token-rs256-secret-base64")),
        ("hs256", signing.get("token-hs256-secret-base64")),
    ]
    if not any(v for _, v in sources):
        # `read_non_empty_var`: an empty variable counts as unset.
        sources = [
            ("pubkey", os.environ.get(PUBKEY_VAR)),
            ("secret", os.environ.get(keys.TOKEN_SECRET_VAR)),
            ("hs256", os.environ.get(HS256_VAR)),
        ]
    for kind, value in sources:
        if not value:
            continue
        if kind == "secret":
            try:
                private = keys.load_token_secret(value)
            except keys.TokenSecretError as exc:
                panic(exc.panic_message)
            return SigningKeys(private, private.public_key())
        if kind == "pubkey":
            return SigningKeys(None, _load_pubkey(value))
        panic("stand-in atticd supports RS256 only (HS256 secret given)")
    panic("You must configure JWT signing\u2026")  # text truncated in attic.md §1


def _load_pubkey(value: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(base64.b64decode(value, validate=True))
    except ValueError as exc:
        panic(f"RS256 public key cannot be decoded: {type(exc).__name__}")
    if not isinstance(key, rsa.RSAPublicKey):
        panic("RS256 public key cannot be decoded: not an RSA key")
    return key
