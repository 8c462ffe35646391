"""Keys: atticd's RS256 token secret, Nix Ed25519 cache keys, narinfo fingerprints and signatures.

Every format here comes from /work/shared/reference/attic.md (cited per function as
`attic.md §N`). Nothing needs openssl, on the VM or locally (handbook lessons 2 and 6).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runbook.core.errors import InputError, RunbookError
from runbook.core.secrets import Secret

logger: Final = logging.getLogger(__name__)

TOKEN_SECRET_VAR: Final = "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64"
# rsa 0.7.2 `check_public`: modulus <= MAX_SIZE bits, 2 <= e <= 2^33-1 (attic.md §1).
RSA_MAX_BITS: Final = 4096
RSA_MAX_EXPONENT: Final = 2**33 - 1
# The prefix of atticd's panic when the env value does not decode (attic.md §1).
ATTICD_PANIC_PREFIX: Final = "RS256 cannot be decoded"

NIX32_ALPHABET: Final = "0123456789abcdfghijklmnpqrsvwxyz"
_B64_ALPHABET: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)
_PEM_LABELS: Final = ("PRIVATE KEY", "RSA PRIVATE KEY")  # PKCS#8, PKCS#1 (attic.md §1)
_STORE_PATH_RE: Final = re.compile(r"^/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$")


# --------------------------------------------------------------------------- RS256 token secret


class TokenSecretError(InputError):
    """The token secret would not load in atticd; `stage` names the step of its decode chain."""

    def __init__(self, stage: str, atticd_error: str, hint: str) -> None:
        self.stage = stage
        self.atticd_error = atticd_error  # the Debug text atticd panics with, after the prefix
        super().__init__(
            f"{TOKEN_SECRET_VAR}: {stage} failed; atticd would print "
            f"`{ATTICD_PANIC_PREFIX}: {atticd_error}`: {hint}"
        )

    @property
    def panic_message(self) -> str:
        return f"{ATTICD_PANIC_PREFIX}: {self.atticd_error}"


def generate_token_secret(bits: int = 4096) -> Secret:
    """A new RSA key as atticd wants it: base64 of the whole PKCS#8 PEM, no newlines (lesson 2).

    PKCS#8 is what the handbook's `openssl genpkey` writes; atticd also takes PKCS#1 (attic.md §1).
    """
    if bits not in (2048, 3072, 4096):  # what `RsaPrivateKey::new` allows (attic.md §1)
        raise InputError(f"--bits {bits}: expected 2048, 3072 or 4096")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Secret(base64.b64encode(pem).decode("ascii"), TOKEN_SECRET_VAR)


def env_line(secret: Secret) -> Secret:
    """`ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=<value>` (no trailing newline)."""
    return Secret(f"{TOKEN_SECRET_VAR}={secret.reveal()}", f"{TOKEN_SECRET_VAR} line")


def validate_token_secret(value: str) -> None:
    """Raise TokenSecretError unless atticd would load `value` (see `load_token_secret`).

    An empty value is refused too: atticd treats it as unset (`read_non_empty_var`) and
    panics with "You must configure JWT signing..." (attic.md §1).
    """
    if not value:
        raise InputError(
            f"{TOKEN_SECRET_VAR} is empty: atticd treats it as unset and panics "
            '"You must configure JWT signing..." (a command that printed nothing, attic.md §1)'
        )
    load_token_secret(value)


def load_token_secret(value: str) -> rsa.RSAPrivateKey:
    """Decode `value` the way atticd does (attic.md §1) and return the RSA key.

    strict standard base64 (padding, no newlines) -> UTF-8 text -> PKCS#8 or PKCS#1 PEM
    (trimmed), unencrypted, modulus <= 4096 bits. Each failure names its stage and the
    Debug text atticd would panic with.
    """
    decoded = _strict_b64decode(value)
    pem = _utf8_text(decoded)
    return _rsa_from_pem(pem.strip())


def _strict_b64decode(value: str) -> bytes:
    """Rust `BASE64_STANDARD.decode`: canonical padding, no whitespace (attic.md §1)."""
    raw = value.encode("utf-8", "surrogateescape")
    for i, b in enumerate(raw):
        if b not in _B64_ALPHABET and b != ord("="):
            hint = (
                "the value is wrapped; base64 the PEM without line breaks (`base64 -w0`)"
                if b in (10, 13)
                else "not standard base64"
            )
            raise TokenSecretError("base64 decoding", f"Base64Error(InvalidByte({i}, {b}))", hint)
    data = raw.rstrip(b"=")
    pads = len(raw) - len(data)
    if b"=" in data:
        pos = data.index(b"=")
        raise TokenSecretError(
            "base64 decoding", f"Base64Error(InvalidByte({pos}, 61))", "padding inside the value"
        )
    # Only InvalidByte is documented in attic.md; the rest follow the base64 crate's error names.
    if len(data) % 4 == 1 or pads > 2:
        raise TokenSecretError("base64 decoding", "Base64Error(InvalidLength)", "truncated value")
    if len(raw) % 4 != 0:
        raise TokenSecretError(
            "base64 decoding", "Base64Error(InvalidPadding)", "missing '=' padding"
        )
    try:
        decoded = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise TokenSecretError("base64 decoding", "Base64Error(InvalidPadding)", str(exc)) from None
    if base64.b64encode(decoded) != raw:  # non-zero trailing bits
        last = len(data) - 1
        raise TokenSecretError(
            "base64 decoding",
            f"Base64Error(InvalidLastSymbol({last}, {data[last]}))",
            "non-canonical last symbol",
        )
    return decoded


def rust_utf8_error(data: bytes) -> tuple[int, int | None] | None:
    """`(valid_up_to, error_len)` as Rust's `std::str::from_utf8` reports them, or None if valid."""
    i, n = 0, len(data)
    while i < n:
        first = data[i]
        if first < 0x80:
            i += 1
            continue
        width, second_ok = _utf8_lead(first)
        if width == 0:
            return i, 1
        if i + 1 >= n:
            return i, None
        if not second_ok(data[i + 1]):
            return i, 1
        for k in range(2, width):
            if i + k >= n:
                return i, None
            if not 0x80 <= data[i + k] <= 0xBF:
                return i, k
        i += width
    return None


def _utf8_lead(first: int) -> tuple[int, _ByteCheck]:
    """Width of a UTF-8 sequence starting with `first` and the allowed range of its 2nd byte."""
    cont = _range(0x80, 0xBF)
    if 0xC2 <= first <= 0xDF:
        return 2, cont
    if first == 0xE0:
        return 3, _range(0xA0, 0xBF)
    if first == 0xED:
        return 3, _range(0x80, 0x9F)
    if 0xE1 <= first <= 0xEF:
        return 3, cont
    if first == 0xF0:
        return 4, _range(0x90, 0xBF)
    if first == 0xF4:
        return 4, _range(0x80, 0x8F)
    if 0xF1 <= first <= 0xF3:
        return 4, cont
    return 0, cont


class _ByteCheck:
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, b: int) -> bool:
        return self.lo <= b <= self.hi


def _range(lo: int, hi: int) -> _ByteCheck:
    return _ByteCheck(lo, hi)


def _utf8_text(decoded: bytes) -> str:
    err = rust_utf8_error(decoded)
    if err is None:
        return decoded.decode("utf-8")
    valid_up_to, error_len = err
    shown = "None" if error_len is None else f"Some({error_len})"
    debug = f"Utf8Error(Utf8Error {{ valid_up_to: {valid_up_to}, error_len: {shown} }})"
    if decoded[:1] == b"\x30":
        hint = (
            "the base64 decodes to DER bytes, not PEM text; base64 the whole PEM file "
            "including its BEGIN/END lines (handbook lesson 2)"
        )
    else:
        hint = (
            "the base64 decodes to binary data, not PEM text (random bytes such as "
            "`openssl rand` are not an RSA key); use `runbook keygen` (handbook lesson 2)"
        )
    raise TokenSecretError("UTF-8 decoding", debug, hint)


def _rsa_from_pem(pem: str) -> rsa.RSAPrivateKey:
    """jwt-simple `RS256KeyPair::from_pem`: PKCS#8, else PKCS#1, then `validate()` (attic.md §1)."""
    match = re.fullmatch(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*\n-----END \1-----", pem, re.DOTALL)
    if match is None or match.group(1) not in _PEM_LABELS:
        label = match.group(1) if match else "none"
        raise TokenSecretError(
            "PEM parsing",
            "TokenError(not an unencrypted RSA private key PEM)",
            f"the text is not a PKCS#8 or PKCS#1 RSA private key PEM (label: {label})",
        )
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TokenSecretError(
            "PEM parsing", "TokenError(invalid RSA private key)", type(exc).__name__
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TokenSecretError(
            "PEM parsing", "TokenError(not an RSA key)", f"got a {type(key).__name__}"
        )
    numbers = key.public_key().public_numbers()
    if key.key_size > RSA_MAX_BITS:
        raise TokenSecretError(
            "RSA key check",
            "TokenError(modulus too large)",
            f"{key.key_size}-bit key; atticd takes at most {RSA_MAX_BITS} bits",
        )
    if not 2 <= numbers.e <= RSA_MAX_EXPONENT:
        raise TokenSecretError(
            "RSA key check", "TokenError(invalid public exponent)", f"e = {numbers.e}"
        )
    return key


def parse_env_file(text: str) -> dict[str, str]:
    """Variables of a systemd `EnvironmentFile=`: `KEY=VALUE` lines, `#`/`;` comments, quotes.

    A line without `=` is ignored, as systemd does (with a warning). Values are returned
    as plain strings: wrap secret ones in `Secret` (see `read_token_secret`).
    """
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            logger.debug("env file: ignoring a line without '='")
            continue
        key, value = line.split("=", 1)
        key, value = key.strip(), value.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def read_token_secret(text: str) -> Secret | None:
    """The token secret from an env file's text, or None when unset or empty (attic.md §1)."""
    value = parse_env_file(text).get(TOKEN_SECRET_VAR, "")
    return Secret(value, TOKEN_SECRET_VAR) if value else None


# --------------------------------------------------------------------------- Nix base32, hashes


def nix32_encode(data: bytes) -> str:
    """Nix base32: its own alphabet and reversed bit order (attic.md §6)."""
    value = int.from_bytes(data, "little")
    length = (len(data) * 8 - 1) // 5 + 1
    return "".join(NIX32_ALPHABET[(value >> (5 * n)) & 0x1F] for n in reversed(range(length)))


def nix32_decode(text: str, size: int | None = None) -> bytes:
    """Inverse of `nix32_encode`; `size` bytes (default: what the length implies)."""
    nbytes = size if size is not None else len(text) * 5 // 8
    if len(text) != (nbytes * 8 - 1) // 5 + 1:
        raise ValueError(f"nix32 string of length {len(text)} does not hold {nbytes} bytes")
    value = 0
    for n, char in enumerate(reversed(text)):
        digit = NIX32_ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"invalid nix32 character {char!r}")
        value |= digit << (5 * n)
    if value >> (8 * nbytes):
        raise ValueError("nix32 string has bits beyond the hash size")
    return value.to_bytes(nbytes, "little")


def parse_nix_hash(text: str) -> bytes:
    """The 32 digest bytes of a `sha256:` hash in hex, nix32 or base64 form, or SRI `sha256-`."""
    if text.startswith("sha256-"):
        digest = base64.b64decode(text[len("sha256-") :], validate=True)
    elif text.startswith("sha256:"):
        body = text[len("sha256:") :]
        if len(body) == 64:
            digest = bytes.fromhex(body)
        elif len(body) == 52:
            digest = nix32_decode(body, 32)
        elif len(body) == 44:
            digest = base64.b64decode(body, validate=True)
        else:
            raise ValueError(f"sha256 hash of unexpected length {len(body)}")
    else:
        raise ValueError(f"expected a sha256 hash, got {text[:20]!r}")
    if len(digest) != 32:
        raise ValueError("sha256 digest is not 32 bytes")
    return digest


def hex_to_nix32_hash(text: str) -> str:
    """`sha256:<hex>` (as attic serves NarHash) -> `sha256:<nix32>` (as Nix signs it, attic.md §6)."""
    if not text.startswith("sha256:") or len(text) != len("sha256:") + 64:
        raise ValueError(f"expected sha256:<64 hex digits>, got {text[:80]!r}")
    return "sha256:" + nix32_encode(bytes.fromhex(text[len("sha256:") :]))


def narinfo_fingerprint(
    store_path: str, nar_hash: str, nar_size: int, references: list[str]
) -> str:
    """Nix's signed fingerprint `1;path;sha256:<nix32>;size;refs` (attic.md §6).

    `nar_hash` may be in any form; `references` are full store paths or basenames.
    """
    nix32 = "sha256:" + nix32_encode(parse_nix_hash(nar_hash))
    store_dir = store_path.rsplit("/", 1)[0]
    full = [r if r.startswith("/") else f"{store_dir}/{r}" for r in references]
    return f"1;{store_path};{nix32};{nar_size};{','.join(full)}"


# --------------------------------------------------------------------------- narinfo + signatures


@dataclass(frozen=True)
class NixPublicKey:
    """A Nix signing public key `name:base64(32 bytes)`."""

    name: str
    key: bytes

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"


def parse_public_key(text: str) -> NixPublicKey:
    """`name:base64` -> NixPublicKey; InputError naming what is wrong (attic.md §6)."""
    name, sep, b64 = text.strip().partition(":")
    if not sep or not name:
        raise InputError(f"public key {text!r}: expected NAME:BASE64, e.g. main:C929...Rw=")
    try:
        key = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise InputError(f"public key {text!r}: the part after ':' is not base64") from None
    if len(key) != 32:
        raise InputError(f"public key {text!r}: expected 32 bytes of Ed25519 key, got {len(key)}")
    return NixPublicKey(name, key)


@dataclass(frozen=True)
class NarInfo:
    """A parsed .narinfo; `fields` keeps every key (last wins), `sigs` every `Sig:` line."""

    store_path: str
    url: str
    compression: str
    nar_hash: str
    nar_size: int
    references: list[str]
    sigs: list[str] = field(default_factory=list)
    deriver: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        return narinfo_fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)


class NarInfoError(RunbookError):
    """A narinfo that does not parse."""


def parse_narinfo(text: str) -> NarInfo:
    fields: dict[str, str] = {}
    sigs: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise NarInfoError(f"narinfo line without ': ': {line[:80]!r}")
        if key == "Sig":
            sigs.append(value.strip())
        else:
            fields[key] = value.strip()
    missing = [k for k in ("StorePath", "URL", "NarHash", "NarSize") if k not in fields]
    if missing:
        raise NarInfoError(f"narinfo lacks {', '.join(missing)}")
    try:
        size = int(fields["NarSize"])
    except ValueError:
        raise NarInfoError(f"narinfo NarSize is not a number: {fields['NarSize']!r}") from None
    return NarInfo(
        store_path=fields["StorePath"],
        url=fields["URL"],
        compression=fields.get("Compression", "bzip2"),  # Nix's default when absent
        nar_hash=fields["NarHash"],
        nar_size=size,
        references=fields.get("References", "").split(),
        sigs=sigs,
        deriver=fields.get("Deriver"),
        fields=fields,
    )


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of checking a narinfo against one trusted key."""

    ok: bool
    reason: str  # "valid", "no-signature-by-key" or "bad-signature"
    key_names: list[str]  # names of every key that signed the narinfo

    def __bool__(self) -> bool:
        return self.ok


def verify_narinfo_signature(narinfo_text: str, public_key: str | NixPublicKey) -> SignatureCheck:
    """Check the narinfo's `Sig:` by `public_key` over Nix's fingerprint (attic.md §6)."""
    key = parse_public_key(public_key) if isinstance(public_key, str) else public_key
    info = parse_narinfo(narinfo_text)
    names = [s.partition(":")[0] for s in info.sigs]
    ours = [s.partition(":")[2] for s in info.sigs if s.partition(":")[0] == key.name]
    if not ours:
        return SignatureCheck(False, "no-signature-by-key", names)
    message = info.fingerprint().encode()
    verifier = Ed25519PublicKey.from_public_bytes(key.key)
    for sig_b64 in ours:
        try:
            verifier.verify(base64.b64decode(sig_b64, validate=True), message)
            return SignatureCheck(True, "valid", names)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    return SignatureCheck(False, "bad-signature", names)


def is_store_path(text: str) -> bool:
    return bool(_STORE_PATH_RE.match(text))


def token_signed_by(token: str, secret: str, now: float | None = None) -> bool:
    """Whether an atticd JWT (RS256, attic.md §2) verifies with the public key of `secret`
    and is inside its nbf..exp window (atticd allows 0 s of clock skew). A token minted
    with another secret is ignored by atticd as if anonymous, so it must be made again."""
    import json
    import time

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    parts = token.split(".")
    if len(parts) != 3:
        return False

    def b64url(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    try:
        header = json.loads(b64url(parts[0]))
        claims = json.loads(b64url(parts[1]))
        signature = b64url(parts[2])
    except ValueError:
        return False
    if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
        return False
    public = load_token_secret(secret).public_key()
    signed = f"{parts[0]}.{parts[1]}".encode()
    try:
        public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    at = time.time() if now is None else now
    return float(claims.get("nbf", 0)) <= at <= float(claims.get("exp", 0))
