"""`runbook keygen` and `runbook verify-cache`: files, modes, output and exit codes."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from runbook.cache import keys
from runbook.lab.attic.token import CachePermission, encode_token, make_claims

REPO = Path(__file__).resolve().parents[1]
ATTICD = REPO / "runbook" / "lab" / "bin" / "atticd"


def runbook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from runbook.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


# ------------------------------------------------------------------ keygen


def test_keygen_writes_one_0600_line_and_prints_nothing_secret(tmp_path):
    out = tmp_path / "sub" / "env"
    proc = runbook("keygen", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    text = out.read_text()
    assert text.count("\n") == 1 and text.endswith("\n")
    name, _, value = text.strip().partition("=")
    assert name == "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64"
    assert keys.load_token_secret(value).key_size == 4096
    assert value not in proc.stdout + proc.stderr and value[:20] not in proc.stdout + proc.stderr
    assert "0600" in proc.stdout


def test_keygen_keeps_a_valid_secret_unless_forced(tmp_path):
    out = tmp_path / "env"
    assert runbook("keygen", "--out", str(out), "--bits", "2048").returncode == 0
    first = out.read_text()
    again = runbook("keygen", "--out", str(out), "--bits", "2048")
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert out.read_text() == first
    forced = runbook("keygen", "--out", str(out), "--bits", "2048", "--force")
    assert forced.returncode == 0 and out.read_text() != first
    assert out.stat().st_mode & 0o777 == 0o600


def test_keygen_replaces_an_invalid_file(tmp_path):
    out = tmp_path / "env"
    out.write_text(
        "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=" + base64.b64encode(os.urandom(48)).decode()
    )
    out.chmod(0o644)
    assert runbook("keygen", "--out", str(out), "--bits", "2048").returncode == 0
    assert out.stat().st_mode & 0o777 == 0o600
    keys.validate_token_secret(keys.parse_env_file(out.read_text())[keys.TOKEN_SECRET_VAR])


def test_keygen_bad_arguments(tmp_path):
    assert runbook("keygen", "--out", str(tmp_path)).returncode == 2
    assert runbook("keygen").returncode == 2


# ------------------------------------------------------------------ verify-cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A stand-in atticd with a public `main` and a private `priv`; (url, main key, token)."""
    root = tmp_path_factory.mktemp("cli")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (root / "env").write_text(f"{keys.TOKEN_SECRET_VAR}={base64.b64encode(pem).decode()}\n")
    port = _free_port()
    env = {**os.environ, "ATTICD_STANDIN_STATE_DIR": str(root / "state")}
    proc = subprocess.Popen(
        [str(ATTICD), "-l", f"127.0.0.1:{port}", "--env-file", str(root / "env")],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    perm = CachePermission(pull=True, create_cache=True)
    token = encode_token(make_claims("t", 600, {"*": perm}), key)
    for name, public in (("main", True), ("priv", False)):
        req = urllib.request.Request(
            f"{url}/_api/v1/cache-config/{name}",
            method="POST",
            data=json.dumps({"keypair": "Generate", "is_public": public}).encode(),
            headers={"Authorization": f"Bearer {token}"},
        )
        urllib.request.urlopen(req, timeout=5).close()
    with urllib.request.urlopen(f"{url}/main/attic-cache-info", timeout=5) as resp:
        main_key = json.loads(resp.read())["public_key"]
    yield url, main_key, token
    proc.terminate()
    proc.wait(timeout=10)


def test_verify_cache_exit_0(server):
    url, key, _ = server
    proc = runbook("verify-cache", f"{url}/main", "--public-key", key)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "StoreDir=/nix/store" in proc.stdout and "verified" in proc.stdout


def test_verify_cache_exit_1_on_failures(server):
    url, key, token = server
    wrong = "main:" + base64.b64encode(os.urandom(32)).decode()
    proc = runbook("verify-cache", f"{url}/main", "--public-key", wrong)
    assert proc.returncode == 1 and "FAILED wrong-key" in proc.stdout
    absent = "/nix/store/" + "0" * 32 + "-absent"
    proc = runbook("verify-cache", f"{url}/main", "--public-key", key, "--store-path", absent)
    assert proc.returncode == 1 and "FAILED not-found" in proc.stdout
    proc = runbook("verify-cache", f"{url}/priv", "--public-key", key)
    assert proc.returncode == 1 and "FAILED unauthorized" in proc.stdout
    # with the token in an environment variable, the private cache answers
    proc = runbook(
        "verify-cache", f"{url}/priv", "--public-key", key, "--token-env", "TOK", env={"TOK": token}
    )
    assert "unauthorized" not in proc.stdout
    assert token not in proc.stdout + proc.stderr
    port = _free_port()  # nothing listens there
    proc = runbook("verify-cache", f"http://127.0.0.1:{port}/main", "--public-key", key)
    assert proc.returncode == 1 and "FAILED unreachable" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["ftp://x/main", "--public-key", "main:" + "A" * 43 + "="],
        ["http://127.0.0.1:1/main", "--public-key", "no-colon"],
        ["http://127.0.0.1:1/main", "--public-key", "main:AAAA"],
        [
            "http://127.0.0.1:1/main",
            "--public-key",
            "main:" + "A" * 43 + "=",
            "--store-path",
            "/tmp/x",
        ],
        [
            "http://127.0.0.1:1/main",
            "--public-key",
            "main:" + "A" * 43 + "=",
            "--token-env",
            "UNSET_VAR_X",
        ],
        ["http://127.0.0.1:1/main"],
    ],
)
def test_verify_cache_exit_2_on_bad_arguments(args):
    proc = runbook("verify-cache", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
