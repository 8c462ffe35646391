"""runbook.cache.keys: atticd's token-secret decode chain and Nix narinfo signatures (attic.md §1, §6)."""

from __future__ import annotations

import base64
import os
import subprocess
import textwrap

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from runbook.cache import keys
from runbook.core.errors import InputError
from runbook.core.masking import MASK, mask

# attic.md §6, from attic's server/src/narinfo/tests.rs
VEC_HEX = "sha256:91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a"
VEC_NIX32 = "sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci"
VEC_PATH = "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10"
VEC_REFS = [
    "/nix/store/563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56",
    "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
]
VEC_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
VEC_SIG = (
    "cache.nixos.org-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXF"
    "PNtRkFcCp0hGAQ=="
)
VEC_FINGERPRINT = f"1;{VEC_PATH};{VEC_NIX32};206104;{','.join(VEC_REFS)}"


def narinfo(nar_hash: str = VEC_HEX, size: int = 206104, sig: str = VEC_SIG) -> str:
    refs = " ".join(r.rsplit("/", 1)[1] for r in VEC_REFS)
    return textwrap.dedent(f"""\
        StorePath: {VEC_PATH}
        URL: nar/xcp9cav49dmsjbwdjlmkjxj10gkpx553.nar
        Compression: zstd
        NarHash: {nar_hash}
        NarSize: {size}
        References: {refs}
        Sig: {sig}
        """)


# ------------------------------------------------------------------ Nix base32 + fingerprint


def test_hex_to_nix32_vector():
    assert keys.hex_to_nix32_hash(VEC_HEX) == VEC_NIX32


def test_nix32_round_trip_and_lengths():
    for size in (20, 32, 64):
        data = os.urandom(size)
        text = keys.nix32_encode(data)
        assert len(text) == (size * 8 - 1) // 5 + 1
        assert keys.nix32_decode(text) == data
    with pytest.raises(ValueError, match="invalid nix32"):
        keys.nix32_decode("e" * 52)  # 'e' is not in Nix's alphabet
    with pytest.raises(ValueError, match="bits beyond"):
        keys.nix32_decode("z" * 52)


def test_nix32_matches_real_nix():
    """`nix-hash --to-base32` is the reference implementation."""
    if not os.path.exists("/usr/bin/nix-hash"):
        pytest.skip("nix-hash not installed")
    hexd = os.urandom(32).hex()
    out = subprocess.run(
        ["nix-hash", "--type", "sha256", "--to-base32", hexd],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert keys.nix32_encode(bytes.fromhex(hexd)) == out


def test_fingerprint_vector_any_hash_form():
    for form in (VEC_HEX, VEC_NIX32):
        assert keys.narinfo_fingerprint(VEC_PATH, form, 206104, VEC_REFS) == VEC_FINGERPRINT
    basenames = [r.rsplit("/", 1)[1] for r in VEC_REFS]
    assert keys.narinfo_fingerprint(VEC_PATH, VEC_HEX, 206104, basenames) == VEC_FINGERPRINT
    assert keys.narinfo_fingerprint(VEC_PATH, VEC_HEX, 1, []).endswith(";1;")


def test_verify_vector_signature_hex_narhash():
    info = keys.parse_narinfo(narinfo())
    assert info.fingerprint() == VEC_FINGERPRINT
    check = keys.verify_narinfo_signature(narinfo(), VEC_KEY)
    assert check.ok and check.reason == "valid"


def test_verify_rejects_tampered_and_other_keys():
    tampered = keys.verify_narinfo_signature(narinfo(size=206105), VEC_KEY)
    assert not tampered and tampered.reason == "bad-signature"
    other = "cache.nixos.org-1:" + base64.b64encode(os.urandom(32)).decode()
    assert keys.verify_narinfo_signature(narinfo(), other).reason == "bad-signature"
    foreign = "main:" + base64.b64encode(os.urandom(32)).decode()
    check = keys.verify_narinfo_signature(narinfo(), foreign)
    assert check.reason == "no-signature-by-key" and check.key_names == ["cache.nixos.org-1"]


def test_parse_public_key_errors():
    assert str(keys.parse_public_key(VEC_KEY)) == VEC_KEY
    for bad in (
        "nocolon",
        ":AAAA",
        "main:not base64!",
        "main:" + base64.b64encode(b"x" * 31).decode(),
    ):
        with pytest.raises(InputError, match="public key"):
            keys.parse_public_key(bad)


def test_parse_narinfo_missing_fields():
    with pytest.raises(keys.NarInfoError, match="NarHash"):
        keys.parse_narinfo("StorePath: /nix/store/x\nURL: nar/x.nar\nNarSize: 1\n")


# ------------------------------------------------------------------ RS256 token secret


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def test_generate_default_is_rsa4096_pkcs8_one_line():
    secret = keys.generate_token_secret()
    value = secret.reveal()
    assert "\n" not in value and str(secret) == MASK
    decoded = base64.b64decode(value, validate=True)
    # PKCS#8 ("BEGIN PRIVATE KEY"), as `openssl genpkey` writes it, not PKCS#1 ("BEGIN RSA ...")
    assert decoded.splitlines()[0] == b"-----BEGIN " + b"PRIVATE KEY-----"
    assert keys.load_token_secret(value).key_size == 4096
    line = keys.env_line(secret)
    assert line.reveal() == f"ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64={value}"
    assert mask(f"log {line.reveal()}") == f"log {MASK}"


def test_pkcs1_and_pkcs8_accepted(rsa2048):
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        keys.validate_token_secret(base64.b64encode(pem(rsa2048, fmt)).decode())
    # surrounding whitespace is trimmed (jwt-simple `pem.trim()`)
    padded = b"\n\n" + pem(rsa2048, serialization.PrivateFormat.PKCS8) + b"\n  "
    keys.validate_token_secret(base64.b64encode(padded).decode())


def test_der_fails_at_utf8_with_atticd_text(rsa2048):
    der = rsa2048.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(keys.TokenSecretError) as err:
        keys.validate_token_secret(base64.b64encode(der).decode())
    assert err.value.stage == "UTF-8 decoding"
    # attic.md §1: DER starts 0x30 0x82, so the first byte is valid and the second is not
    assert err.value.panic_message == (
        "RS256 cannot be decoded: Utf8Error(Utf8Error { valid_up_to: 1, error_len: Some(1) })"
    )
    assert "DER" in str(err.value) and err.value.exit_code == 2


def test_random_bytes_give_the_seeds_error():
    """The handbook's `openssl rand -base64 64` error: valid_up_to: 0 when byte 0 is invalid."""
    data = b"\xff" + os.urandom(47)
    with pytest.raises(keys.TokenSecretError) as err:
        keys.validate_token_secret(base64.b64encode(data).decode())
    assert err.value.panic_message == (
        "RS256 cannot be decoded: Utf8Error(Utf8Error { valid_up_to: 0, error_len: Some(1) })"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"abc", None),
        (b"\xff", (0, 1)),
        (b"a\xc3", (1, None)),
        (b"\xe2\x82", (0, None)),
        (b"\xe2\x28\xa1", (0, 1)),
        (b"ab\xe2\x82\x28", (2, 2)),
        (b"\xf0\x90\x80\x28", (0, 3)),
        (b"\xed\xa0\x80", (0, 1)),  # surrogate
        ("h\u00e9llo".encode(), None),
    ],
)
def test_rust_utf8_error_semantics(data, expected):
    assert keys.rust_utf8_error(data) == expected


def test_wrapped_base64_is_invalid_byte_76_10(rsa2048):
    wrapped = base64.encodebytes(pem(rsa2048, serialization.PrivateFormat.PKCS8)).decode()
    with pytest.raises(keys.TokenSecretError) as err:
        keys.validate_token_secret(wrapped.strip())
    assert err.value.panic_message == "RS256 cannot be decoded: Base64Error(InvalidByte(76, 10))"
    assert "-w0" in str(err.value)


def test_base64_padding_and_length_errors():
    with pytest.raises(keys.TokenSecretError, match="InvalidPadding"):
        keys.validate_token_secret("QUJD" + "QQ")
    with pytest.raises(keys.TokenSecretError, match="InvalidLength"):
        keys.validate_token_secret("QUJDQ")
    with pytest.raises(keys.TokenSecretError, match=r"InvalidByte\(2, 61\)"):
        keys.validate_token_secret("QU=DQUJD")


def test_not_a_pem_or_not_rsa_or_encrypted(rsa2048):
    text = base64.b64encode(b"hello, not a key").decode()
    with pytest.raises(keys.TokenSecretError) as err:
        keys.validate_token_secret(text)
    assert err.value.stage == "PEM parsing" and "TokenError" in err.value.panic_message
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(keys.TokenSecretError, match="not an RSA key"):
        keys.validate_token_secret(base64.b64encode(ec_pem).decode())
    encrypted = rsa2048.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(keys.TokenSecretError, match="ENCRYPTED PRIVATE KEY"):
        keys.validate_token_secret(base64.b64encode(encrypted).decode())


def test_oversized_key_refused():
    big = rsa.generate_private_key(public_exponent=65537, key_size=4608)
    value = base64.b64encode(pem(big, serialization.PrivateFormat.TraditionalOpenSSL)).decode()
    with pytest.raises(keys.TokenSecretError) as err:
        keys.validate_token_secret(value)
    assert err.value.stage == "RSA key check"
    assert err.value.panic_message == "RS256 cannot be decoded: TokenError(modulus too large)"


def test_empty_value_is_unset():
    with pytest.raises(InputError, match="You must configure JWT signing"):
        keys.validate_token_secret("")


def test_bits_limited_to_what_rsa_generates():
    with pytest.raises(InputError, match="--bits 1024"):
        keys.generate_token_secret(1024)


def test_error_messages_never_contain_the_value(rsa2048):
    der = rsa2048.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    value = base64.b64encode(der).decode()
    with pytest.raises(keys.TokenSecretError) as err:
        keys.validate_token_secret(value)
    assert value not in str(err.value) and value[:40] not in str(err.value)


def test_parse_env_file_systemd_semantics():
    text = textwrap.dedent("""\
        # comment
        ; also a comment

        ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=abc=
        QUOTED="x y"
        garbage line without equals
        SPACED = v
        """)
    env = keys.parse_env_file(text)
    assert env == {"ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64": "abc=", "QUOTED": "x y", "SPACED": "v"}
    secret = keys.read_token_secret(text)
    assert secret is not None and secret.reveal() == "abc="
    assert keys.read_token_secret("ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=\n") is None


def test_is_store_path():
    assert keys.is_store_path(VEC_PATH)
    assert not keys.is_store_path("/nix/store/short-x")
    assert not keys.is_store_path("/tmp/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10")
