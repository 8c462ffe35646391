"""attic's JWTs: RS256 minting and verification, claims and cache permissions (attic.md §2).

Implemented with `cryptography` (RSASSA-PKCS1-v1_5, SHA-256), no JWT library.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from dataclasses import dataclass, fields
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

logger: Final = logging.getLogger(__name__)

CLAIMS_NAMESPACE: Final = "https://jwt.attic.rs/v1"
# `CachePermission` keys (attic.md §2); values must be the integers 0/1 (BoolFromInt).
PERMISSION_KEYS: Final = {
    "pull": "r",
    "push": "w",
    "delete": "d",
    "create_cache": "cc",
    "configure_cache": "cr",
    "configure_cache_retention": "cq",
    "destroy_cache": "cd",
}
_PATTERN_RE: Final = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9\-_+*]{0,49}$")
# humantime units in seconds (a month is 30.44 days, a year 365.25 days).
_UNITS: Final = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
    **dict.fromkeys(("M", "month", "months"), 2_630_016),
    **dict.fromkeys(("y", "year", "years"), 31_557_600),
}


@dataclass
class CachePermission:
    pull: bool = False
    push: bool = False
    delete: bool = False
    create_cache: bool = False
    configure_cache: bool = False
    configure_cache_retention: bool = False
    destroy_cache: bool = False

    def can_discover(self) -> bool:
        """Any permission implies discovering the cache (attic.md §2)."""
        return any(getattr(self, f.name) for f in fields(self))

    def to_claim(self) -> dict[str, int]:
        return {PERMISSION_KEYS[f.name]: 1 for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_claim(cls, claim: object) -> CachePermission:
        if not isinstance(claim, dict):
            raise ValueError("permission entry is not an object")  # noqa: TRY004 (any bad token is ValueError)
        perm = cls()
        by_key = {v: k for k, v in PERMISSION_KEYS.items()}
        for key, value in claim.items():
            if type(value) is not int or value not in (0, 1):  # BoolFromInt
                raise ValueError(f"permission {key!r} is not 0 or 1")
            if key in by_key:
                setattr(perm, by_key[key], value == 1)
        return perm


def parse_duration(text: str) -> int:
    """A humantime duration ("10y", "2 years", "3 months 2d") in seconds (attic.md §3)."""
    parts = re.findall(r"\s*(\d+)\s*([A-Za-z]+)", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"invalid duration {text!r}")
    total = 0
    for number, unit in parts:
        if unit not in _UNITS:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += int(number) * _UNITS[unit]
    return total


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_claims(
    sub: str, validity_s: int, caches: dict[str, CachePermission], now: int | None = None
) -> dict[str, Any]:
    """The claims `Token::new` writes: sub, exp, nbf = now, no iat (attic.md §2)."""
    issued = int(time.time()) if now is None else now
    return {
        "sub": sub,
        "exp": issued + validity_s,
        "nbf": issued,
        CLAIMS_NAMESPACE: {"caches": {p: perm.to_claim() for p, perm in caches.items()}},
    }


def encode_token(claims: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    header = {"alg": "RS256", "typ": "JWT"}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(sig)}"


@dataclass(frozen=True)
class Token:
    sub: str
    caches: list[tuple[str, CachePermission]]  # in token order (IndexMap)

    def permission_for(self, cache: str) -> CachePermission:
        """Exact key first, then the first matching pattern in token order (attic.md §2)."""
        for pattern, perm in self.caches:
            if pattern == cache:
                return perm
        for pattern, perm in self.caches:
            if "*" in pattern and _wildcard(pattern).fullmatch(cache):
                return perm
        return CachePermission()


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def decode_token(jwt: str, public_key: rsa.RSAPublicKey, now: int | None = None) -> Token:
    """Verify `jwt` like jwt-simple with 0 s tolerance (attic.md §2); ValueError when bad."""
    try:
        head_b64, claims_b64, sig_b64 = jwt.strip().split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        signature = _b64url_decode(sig_b64)
    except ValueError as exc:
        raise ValueError(f"malformed token: {exc}") from None
    if not isinstance(header, dict) or header.get("alg") != "RS256":
        raise ValueError("alg is not RS256")
    typ = header.get("typ")
    if typ is not None and not (typ == "JWT" or str(typ).endswith("+JWT")):
        raise ValueError("typ is not JWT")
    try:
        public_key.verify(
            signature, f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise ValueError("bad signature") from None
    return _check_claims(claims, int(time.time()) if now is None else now)


def _check_claims(claims: object, now: int) -> Token:
    if not isinstance(claims, dict):
        raise ValueError("claims are not an object")  # noqa: TRY004 (any bad token is ValueError)
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int) and exp < now:
        raise ValueError("token expired")
    if isinstance(nbf, int) and nbf > now:
        raise ValueError("token not valid yet")
    namespace = claims.get(CLAIMS_NAMESPACE)
    if not isinstance(namespace, dict) or not isinstance(namespace.get("caches"), dict):
        raise ValueError(f"missing {CLAIMS_NAMESPACE} caches")  # noqa: TRY004 (any bad token is ValueError)
    caches: list[tuple[str, CachePermission]] = []
    for pattern, claim in namespace["caches"].items():
        if not _PATTERN_RE.match(pattern):
            raise ValueError(f"invalid cache pattern {pattern!r}")
        caches.append((pattern, CachePermission.from_claim(claim)))
    return Token(sub=str(claims.get("sub", "")), caches=caches)
