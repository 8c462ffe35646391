"""runbook.transport.hostkeys: trust on first use, refuse a change, replace every old line."""

from __future__ import annotations

import base64
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from runbook.core.errors import HostKeyChangedError
from runbook.transport.hostkeys import KnownHosts, entry_name, fingerprint


def _ed25519() -> paramiko.PKey:
    raw = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    kind, blob = raw.split()[:2]
    return paramiko.PKey.from_type_string(kind.decode(), base64.b64decode(blob))


def test_tofu_then_refuse_then_replace_all_lines(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "known_hosts")
    old, new = _ed25519(), _ed25519()
    name = entry_name("10.0.0.5", 2222)
    assert name == "[10.0.0.5]:2222"
    assert kh.verify(name, old) == "learned"
    assert kh.verify(name, old) == "known"
    # a second line for the same host (another key type seen earlier)
    rsa = paramiko.RSAKey.generate(1024)
    with (tmp_path / "known_hosts").open("a") as f:
        f.write(f"{name} ssh-rsa {rsa.get_base64()}\n")
    with pytest.raises(HostKeyChangedError) as info:
        kh.verify(name, new)
    assert fingerprint(new) in str(info.value) and fingerprint(old) in str(info.value)
    assert kh.verify(name, new, replace=True) == "replaced"
    text = (tmp_path / "known_hosts").read_text()
    assert text.count(name) == 1 and new.get_base64() in text
    assert old.get_base64() not in text and rsa.get_base64() not in text
