"""The atticd / atticd-atticadm / attic stand-ins against real Nix, on 127.0.0.1.

Nix runs in a private mount namespace with a temporary directory bind-mounted on /nix
(lab-notes.md "One store per host"), so the host store is untouched.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from runbook.cache import attic, keys
from runbook.core.errors import InputError
from runbook.core.secrets import Secret, write_private
from runbook.lab.attic.token import CachePermission, encode_token, make_claims

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "runbook" / "lab" / "bin"
NIX_CONFIG = "experimental-features = nix-command\nsandbox = false\nbuild-users-group ="
ADMIN_FLAGS = [
    "--pull",
    "*",
    "--push",
    "*",
    "--create-cache",
    "*",
    "--configure-cache",
    "*",
    "--configure-cache-retention",
    "*",
    "--destroy-cache",
    "*",
]
IN_CI = bool(os.environ.get("CI"))


def need(condition: bool, reason: str) -> None:
    """Skip outside CI when a requirement is missing; in CI, fail instead."""
    if not condition:
        (pytest.fail if IN_CI else pytest.skip)(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


UNAUTHORIZED = {"code": 401, "error": "Unauthorized", "message": "Unauthorized."}


@dataclass
class Lab:
    root: Path
    port: int
    env_file: Path
    nix_dir: Path
    key: rsa.RSAPrivateKey
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, home: str = "home") -> dict[str, str]:
        return {
            **os.environ,
            "ATTICD_STANDIN_STATE_DIR": str(self.root / "state"),
            "ATTICD_STANDIN_ENV_FILE": str(self.env_file),
            "XDG_CONFIG_HOME": str(self.root / home),
            "NIX_CONFIG": NIX_CONFIG,
        }

    def in_store(
        self, argv: list[str], home: str = "home", stdin: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in a mount namespace whose /nix is this lab's store."""
        script = 'mount --make-rprivate / && mount --bind "$0" /nix && exec "$@"'
        return subprocess.run(
            ["unshare", "-m", "--", "sh", "-c", script, str(self.nix_dir), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(home),
            check=check,
            timeout=120,
        )

    def attic(self, *args: str, home: str = "home", stdin: str | None = None):
        return self.in_store([str(BIN / "attic"), *args], home=home, stdin=stdin)

    def make_token(self, *flags: str, sub: str = "admin", validity: str = "10y") -> str:
        proc = subprocess.run(
            [
                str(BIN / "atticd-atticadm"),
                "make-token",
                "--sub",
                sub,
                "--validity",
                validity,
                *flags,
            ],
            capture_output=True,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            check=True,
        )
        out = proc.stdout.decode()
        assert out.endswith("\r\n")  # systemd-run --pty (attic.md §3)
        return attic.parse_make_token_output(out).reveal()


def start_atticd(lab: Lab) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            str(BIN / "atticd"),
            "-l",
            f"127.0.0.1:{lab.port}",
            "--pid-file",
            str(lab.root / "atticd.pid"),
        ],
        env=lab.env(),
        stderr=(lab.root / "atticd.log").open("ab"),
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(lab.url + "/", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("atticd did not start: " + (lab.root / "atticd.log").read_text())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need(os.geteuid() == 0, "needs root for a private /nix mount namespace")
    need(
        shutil.which("nix-store") is not None and shutil.which("unshare") is not None,
        "needs nix-bin and util-linux unshare",
    )
    # the private store is bound over /nix, which a clean Debian lacks until Nix first runs
    # (as `runbook lab up` does, see lifecycle.MOUNT_POINTS)
    Path("/nix").mkdir(exist_ok=True)
    root = tmp_path_factory.mktemp("attic")
    (root / "nix").mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    env_file = root / "env"
    line = keys.env_line(Secret(base64.b64encode(pem).decode()))
    write_private(env_file, (line.reveal() + "\n").encode())
    lab = Lab(root=root, port=free_port(), env_file=env_file, nix_dir=root / "nix", key=key)
    lab.proc = start_atticd(lab)
    admin = lab.make_token(*ADMIN_FLAGS)
    assert lab.attic("login", "local", lab.url, admin).returncode == 0
    yield lab
    lab.proc.terminate()
    assert lab.proc.wait(timeout=10) == 0
    assert not (root / "atticd.pid").exists()


def http(
    url: str,
    token: str | None = None,
    method: str = "GET",
    body: object = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"  # what attic's client sends (reqwest .json)
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def add_path(lab: Lab, content: str, name: str = "f") -> str:
    src = lab.root / name
    src.write_text(content)
    return lab.in_store(["nix-store", "--add", str(src)], check=True).stdout.strip()


# ------------------------------------------------------------------ atticd start-up


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            "der",
            "RS256 cannot be decoded: Utf8Error(Utf8Error { valid_up_to: 1, error_len: Some(1) })",
        ),
        (
            "random",
            "RS256 cannot be decoded: Utf8Error(Utf8Error { valid_up_to: 0, error_len: Some(1) })",
        ),
        ("wrapped", "RS256 cannot be decoded: Base64Error(InvalidByte(76, 10))"),
        ("empty", "You must configure JWT signing"),
    ],
)
def test_atticd_refuses_bad_secret_like_atticd(lab, tmp_path, payload, expected):
    der = lab.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    value = {
        "der": base64.b64encode(der).decode(),
        "random": base64.b64encode(b"\xfe" + os.urandom(47)).decode(),
        "wrapped": base64.encodebytes(der).decode().strip(),  # `base64` without -w0
        "empty": "",
    }[payload]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTIC_SERVER")}
    env["ATTICD_STANDIN_STATE_DIR"] = str(tmp_path / "state")
    env_file = tmp_path / "env"
    if "\n" in value:  # an env file cannot hold it on one line: pass it in the environment
        env_file.write_text("")
        env[keys.TOKEN_SECRET_VAR] = value
    else:
        env_file.write_text(f"{keys.TOKEN_SECRET_VAR}={value}\n")
    proc = subprocess.run(
        [
            str(BIN / "atticd"),
            "-l",
            f"127.0.0.1:{free_port()}",
            "--env-file",
            str(env_file),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 101, proc.stderr
    assert expected in proc.stderr
    if payload != "empty":  # the runbook's validation catches it first, with the same text
        with pytest.raises(keys.TokenSecretError) as err:
            keys.validate_token_secret(value)
        assert err.value.panic_message == expected


def test_root_is_a_health_probe(lab):
    status, _, body = http(lab.url + "/")
    assert status == 200 and b"Attic" in body


def test_check_config_mode(lab):
    proc = subprocess.run(
        [str(BIN / "atticd"), "--mode", "check-config"],
        env=lab.env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ tokens


def test_make_token_claims_and_cr_output(lab):
    token = lab.make_token(*ADMIN_FLAGS)
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "typ": "JWT"}
    assert claims["sub"] == "admin" and "iat" not in claims
    assert claims["exp"] - claims["nbf"] == 10 * 31_557_600
    assert claims["https://jwt.attic.rs/v1"]["caches"] == {
        "*": {"r": 1, "w": 1, "cc": 1, "cr": 1, "cq": 1, "cd": 1}
    }
    dump = subprocess.run(
        [
            str(BIN / "atticd-atticadm"),
            "make-token",
            "--sub",
            "x",
            "--validity",
            "1 month",
            "--pull",
            "main",
            "--dump-claims",
        ],
        capture_output=True,
        text=True,
        env=lab.env(),
        check=True,
    )
    assert json.loads(dump.stdout)["https://jwt.attic.rs/v1"]["caches"] == {"main": {"r": 1}}


def test_http_status_codes(lab):
    admin = lab.make_token(*ADMIN_FLAGS)
    assert (
        http(
            f"{lab.url}/_api/v1/cache-config/priv",
            admin,
            "POST",
            {"keypair": "Generate", "is_public": False},
        )[0]
        == 200
    )
    # private cache or missing cache, anonymous: 401 with attic's JSON (attic.md §5)
    for cache in ("priv", "nosuch"):
        status, _, body = http(f"{lab.url}/{cache}/nix-cache-info")
        assert (status, json.loads(body)) == (401, UNAUTHORIZED)
    # permission somewhere but the cache is missing: 404 NoSuchCache
    status, _, body = http(f"{lab.url}/nosuch/nix-cache-info", admin)
    assert status == 404 and json.loads(body)["error"] == "NoSuchCache"
    # some permission, not the one needed: 403 AccessError
    puller = lab.make_token("--pull", "priv")
    status, _, body = http(
        f"{lab.url}/_api/v1/cache-config/priv", puller, "PATCH", {"is_public": True}
    )
    assert status == 403 and json.loads(body)["error"] == "AccessError"
    assert http(f"{lab.url}/priv/nix-cache-info", puller)[0] == 200
    # unknown narinfo: 404 even anonymously on a private cache (the lookup runs first)
    status, _, body = http(f"{lab.url}/priv/{'0' * 32}.narinfo")
    assert status == 404 and json.loads(body)["error"] == "NoSuchObject"
    # creating it again: 400 CacheAlreadyExists
    status, _, body = http(f"{lab.url}/_api/v1/cache-config/priv", admin, "POST", {})
    assert status == 400 and json.loads(body)["error"] == "CacheAlreadyExists"
    # empty PATCH: 400
    assert http(f"{lab.url}/_api/v1/cache-config/priv", admin, "PATCH", {})[0] == 400


def test_bad_tokens_are_ignored_as_anonymous(lab):
    now = int(time.time())
    full = {"priv2": CachePermission(pull=True, create_cache=True)}
    good = encode_token(make_claims("t", 3600, full, now=now), lab.key)
    assert http(f"{lab.url}/_api/v1/cache-config/priv2", good, "POST", {})[0] == 200
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expired = encode_token(make_claims("t", 10, full, now=now - 20), lab.key)
    future = encode_token(make_claims("t", 3600, full, now=now + 30), lab.key)  # 0 s leeway
    foreign = encode_token(make_claims("t", 3600, full, now=now), other_key)
    for token in (expired, future, foreign, "not-a-jwt"):
        assert http(f"{lab.url}/priv2/nix-cache-info", token)[0] == 401
    assert http(f"{lab.url}/priv2/nix-cache-info", good)[0] == 200
    # Basic auth with the JWT as password is what Nix sends from netrc (attic.md §2)
    basic = base64.b64encode(f"anyone:{good}".encode()).decode()
    req = urllib.request.Request(
        f"{lab.url}/priv2/nix-cache-info", headers={"Authorization": f"Basic {basic}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def test_client_cache_create_configure_info(lab):
    create = lab.attic("cache", "create", "main")
    assert create.returncode == 0 and '\u2728 Created cache "main" on "local"' in create.stderr
    again = lab.attic("cache", "create", "main")
    assert again.returncode == 1
    assert "Error: CacheAlreadyExists: The cache already exists." in again.stderr
    assert attic.is_cache_exists_error(again.stderr)
    # without cq, --public fails: the client always sends retention_period (#144)
    no_cq = lab.make_token("--pull", "*", "--push", "*", "--configure-cache", "*")
    lab.attic("login", "nocq", lab.url, no_cq, home="nocq")
    denied = lab.attic("cache", "configure", "main", "--public", home="nocq")
    assert denied.returncode == 1
    assert (
        "Error: AccessError: Access error: User does not have permission to complete this action."
    ) in denied.stderr
    ok = lab.attic(*attic.cache_configure_argv("main", public=True)[1:])
    assert ok.returncode == 0 and '\u2705 Configured "main" on "local"' in ok.stderr
    info = lab.attic(*attic.cache_info_argv("main")[1:])
    assert info.returncode == 0 and info.stdout == ""  # cache info prints on stderr
    parsed = attic.parse_cache_info(info.stderr)
    assert parsed.public and parsed.binary_cache_endpoint == f"{lab.url}/main"
    assert parsed.upstream_cache_keys == ["cache.nixos.org-1"]
    status, headers, body = http(f"{lab.url}/main/attic-cache-info")
    assert status == 200 and json.loads(body)["public_key"] == parsed.public_key
    assert headers.get("X-Attic-Cache-Visibility") == "public"
    status, _, body = http(f"{lab.url}/main/nix-cache-info")
    assert body == b"WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 41\n"
    # anonymous push to a public cache: 403 (attic.md §5)
    status, _, _ = http(
        f"{lab.url}/_api/v1/get-missing-paths",
        None,
        "POST",
        {"cache": "main", "store_path_hashes": []},
    )
    assert status == 403
    config = lab.root / "home" / "attic" / "config.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    assert 'default-server = "local"' in config.read_text()


@pytest.fixture(scope="module")
def pushed(lab) -> dict[str, object]:
    """A built path (with a reference and deriver) and a file signed by a fake cache.nixos.org-1."""
    if lab.attic("cache", "info", "main").returncode != 0:
        lab.attic("cache", "create", "main", "--public")
    stamp = f"{time.time_ns()}"
    expr = (
        f'let dep = builtins.toFile "dep-{stamp}" "dep {stamp}"; in derivation '
        f'{{ name = "built-{stamp}"; system = builtins.currentSystem; builder = "/bin/sh"; '
        f'args = [ "-c" "echo ${{dep}} > $out" ]; }}'
    )
    built = lab.in_store(["nix-build", "--no-out-link", "-E", expr], check=True).stdout.strip()
    dep = lab.in_store(["nix-store", "-q", "--references", built], check=True).stdout.split()
    upstream = add_path(lab, f"upstream {stamp}", "up")
    keydir = lab.root / "fakekey"
    keydir.mkdir(exist_ok=True)
    lab.in_store(
        [
            "nix-store",
            "--generate-binary-cache-key",
            "cache.nixos.org-1",
            str(keydir / "sk"),
            str(keydir / "pk"),
        ],
        check=True,
    )
    lab.in_store(["nix", "store", "sign", "--key-file", str(keydir / "sk"), upstream], check=True)
    return {"built": built, "dep": dep, "upstream": upstream}


def _missing(lab, paths: list[str]) -> list[str]:
    admin = lab.make_token(*ADMIN_FLAGS)
    return attic.get_missing_paths(lab.url, "main", paths, Secret(admin))


def test_push_stdin_prints_only_per_path_lines(lab, pushed):
    """`push_stdin` (client/src/command/push.rs): no `Pushing`/`All done` line, one
    `✅ <hash-name> (…)` line per upload (client/src/push.rs), nothing when nothing is left."""
    built, dep, up = str(pushed["built"]), list(pushed["dep"]), str(pushed["upstream"])
    paths = f"{built}\n\n{up}\n"  # an empty line is skipped
    argv = attic.push_argv("main", jobs=2)
    assert sorted(_missing(lab, [built, *dep])) == sorted([built, *dep])
    first = lab.attic(*argv[1:], stdin=paths)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    # closure: built + dep pushed; the cache.nixos.org-1-signed path skipped
    assert len(lines) == 2 and "Pushing" not in first.stderr and "All done" not in first.stderr
    assert sorted(attic.parse_push_lines(first.stderr).pushed) == sorted(
        Path(p).name for p in [built, *dep]
    )
    assert all(re.fullmatch(r"\u2705 \S+ \(\d+(\.\d\d [KMG]i)? ?B/s\)", ln) for ln in lines), lines
    assert _missing(lab, [built, *dep]) == []
    again = lab.attic(*argv[1:], stdin=paths)
    assert (again.returncode, again.stderr) == (0, "")
    upstream_only = lab.attic(*argv[1:], stdin=f"{up}\n")
    assert (upstream_only.returncode, upstream_only.stderr) == (0, "")
    assert _missing(lab, [up]) == [up]
    forced = lab.attic(
        *attic.push_argv("main", jobs=2, ignore_upstream_filter=True)[1:], stdin=paths
    )
    assert attic.parse_push_lines(forced.stderr).pushed == (Path(up).name,)
    zero = lab.attic("push", "main", "--stdin", "-j", "0", stdin=paths)
    assert zero.returncode == 1 and "Error:" in zero.stderr


def test_push_with_paths_says_its_plan(lab, pushed):
    """`push_static`: `⚙️ Pushing N paths …` before the uploads, `✅ All done! (…)` when
    nothing is left, `🤷 Nothing specified.` without paths."""
    fresh = add_path(lab, f"static {time.time_ns()}", "static")
    first = lab.attic("push", "main", fresh, str(pushed["built"]))
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith(
        '\u2699\ufe0f Pushing 1 paths to "main" on "local" (2 already cached, 0 in upstream)...\n'
    )
    assert attic.parse_push_lines(first.stderr).pushed == (Path(fresh).name,)
    again = lab.attic("push", "main", fresh)
    assert again.stderr == "\u2705 All done! (1 already cached, 0 in upstream)\n"
    up = lab.attic("push", "main", str(pushed["upstream"]))
    assert up.stderr == "\u2705 All done! (0 already cached, 1 in upstream)\n"
    nothing = lab.attic("push", "main", stdin="")
    assert nothing.returncode == 0 and nothing.stderr.startswith("\U0001f937 Nothing specified.")
    both = lab.attic("push", "main", "--stdin", fresh, stdin="")
    assert both.returncode != 0


def test_get_missing_paths_refuses_what_axum_refuses(lab):
    """The body is axum's Json<GetMissingPathsRequest> (server/src/api/v1/get_missing_paths.rs):
    415 without the JSON content type, 422 for a hash that is no StorePathHash."""
    admin = lab.make_token(*ADMIN_FLAGS)
    url = f"{lab.url}/_api/v1/get-missing-paths"
    body = json.dumps({"cache": "main", "store_path_hashes": ["e" * 32]}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as no_type:
        urllib.request.urlopen(req, timeout=10)
    assert no_type.value.code == 415
    status, _, text = http(url, admin, "POST", {"cache": "main", "store_path_hashes": ["e" * 32]})
    assert status == 422 and b"store_path_hashes" in text
    ok = "0" * 32
    status, _, text = http(url, admin, "POST", {"cache": "main", "store_path_hashes": [ok, ok]})
    assert status == 200 and json.loads(text) == {"missing_paths": [ok]}


def test_real_nix_substitutes_from_the_standin(lab, pushed):
    def realise(trusted: str) -> list[str]:
        return ["nix-store", "-r", built, "--option", "substituters", f"{lab.url}/main",
                "--option", "trusted-public-keys", trusted]  # fmt: skip

    built = str(pushed["built"])
    key = json.loads(http(f"{lab.url}/main/attic-cache-info")[2])["public_key"]
    narinfo = http(f"{lab.url}/main/{Path(built).name[:32]}.narinfo")[2].decode()
    assert keys.parse_narinfo(narinfo).nar_hash.startswith("sha256:")
    assert len(keys.parse_narinfo(narinfo).nar_hash) == len("sha256:") + 64  # hex, as attic
    assert keys.verify_narinfo_signature(narinfo, key).ok
    before = lab.in_store(["cat", built], check=True).stdout
    lab.in_store(["nix-store", "--delete", built], check=True)
    assert lab.in_store(["test", "-e", built]).returncode != 0
    proc = lab.in_store(realise(key))
    assert proc.returncode == 0, proc.stderr
    assert f"copying path '{built}' from '{lab.url}/main'" in proc.stderr
    assert lab.in_store(["cat", built], check=True).stdout == before
    # with a key Nix does not trust, substitution is refused
    lab.in_store(["nix-store", "--delete", built], check=True)
    wrong = "main:" + base64.b64encode(os.urandom(32)).decode()
    refused = lab.in_store(realise(wrong))
    assert refused.returncode != 0
    lab.in_store(realise(key), check=True)  # restore for later tests


# ------------------------------------------------------------------ verify_cache


class TamperingProxy(BaseHTTPRequestHandler):
    upstream = ""

    def do_GET(self) -> None:
        status, _, body = http(self.upstream + self.path)
        if self.path.endswith(".narinfo"):
            body = body.replace(b"NarSize: ", b"NarSize: 1")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_verify_cache_success_and_distinct_failures(lab, pushed):
    built, dep = str(pushed["built"]), list(pushed["dep"])
    key = json.loads(http(f"{lab.url}/main/attic-cache-info")[2])["public_key"]
    ok = attic.verify_cache(f"{lab.url}/main", key, [built, *dep])
    assert ok.ok, ok.failures
    assert ok.cache_info == {"WantMassQuery": "1", "StoreDir": "/nix/store", "Priority": "41"}
    assert ok.verified_paths == [built, *dep]

    wrong = "main:" + base64.b64encode(os.urandom(32)).decode()
    report = attic.verify_cache(f"{lab.url}/main", wrong, [built])
    assert [f.kind for f in report.failures] == ["wrong-key"]

    missing = "/nix/store/" + "0" * 32 + "-absent"
    report = attic.verify_cache(f"{lab.url}/main", key, [missing])
    assert [f.kind for f in report.failures] == ["not-found"]

    report = attic.verify_cache(f"{lab.url}/priv", key, [built])
    assert [f.kind for f in report.failures] == ["unauthorized"]
    assert "private" in report.failures[0].message

    TamperingProxy.upstream = lab.url
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), TamperingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        report = attic.verify_cache(f"http://127.0.0.1:{proxy.server_port}/main", key, [built])
    finally:
        proxy.shutdown()
    assert [f.kind for f in report.failures] == ["tampered"]
    with pytest.raises(attic.CacheVerificationError, match="tampered"):
        report.raise_for_failures()


def test_verify_cache_private_with_token(lab, pushed):
    admin = lab.make_token(*ADMIN_FLAGS)
    status, _, _ = http(f"{lab.url}/_api/v1/cache-config/vpriv", admin, "POST", {})
    assert status == 200
    push = lab.attic("push", "local:vpriv", str(pushed["built"]))
    assert push.returncode == 0, push.stderr
    key = json.loads(http(f"{lab.url}/vpriv/attic-cache-info", admin)[2])["public_key"]
    token = Secret(lab.make_token("--pull", "vpriv"))
    assert attic.verify_cache(f"{lab.url}/vpriv", key, [str(pushed["built"])], token).ok
    # a known path on a private cache, anonymous: 401 (attic.md §5)
    status, _, _ = http(f"{lab.url}/vpriv/{Path(str(pushed['built'])).name[:32]}.narinfo")
    assert status == 401


def test_argv_builders_follow_the_handbook():
    assert attic.make_token_argv() == [
        "atticd-atticadm", "make-token", "--sub", "admin", "--validity", "10y",
        "--pull", "*", "--push", "*", "--create-cache", "*", "--configure-cache", "*",
        "--configure-cache-retention", "*", "--destroy-cache", "*",
    ]  # fmt: skip
    assert attic.push_argv("main", jobs=8) == ["attic", "push", "main", "--stdin", "-j", "8"]
    with pytest.raises(InputError):
        attic.push_argv("main", jobs=0)
    token = attic.parse_make_token_output("\r\n  eyJh.eyJz.c2ln\r\n")
    assert token.reveal() == "eyJh.eyJz.c2ln" and str(token) == "*****"
    with pytest.raises(attic.AtticOutputError):
        attic.parse_make_token_output("Error: PubkeyOnlyCannotCreateToken\r\n")


# ---------------------------------------------------------------------------- the client's config
# zhaofengli/attic client/src/config.rs (ConfigData, ServerConfig, ServerTokenConfig), cache.rs


def _client_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | bytes) -> Path:
    from runbook.lab.attic import client

    path = tmp_path / "xdg" / "attic" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert client.config_path() == path
    return path


def test_client_reads_the_config_06_writes(tmp_path, monkeypatch):
    from runbook.lab.attic import client

    token = "eyJh.eyJz.c2ln"
    _client_with(
        tmp_path, monkeypatch, attic.client_config("local", "http://h:8080", Secret(token)).reveal()
    )
    server, cache = client.resolve(client.cache_ref("main"))
    assert (server.name, server.endpoint, server.token, cache) == (
        "local",
        "http://h:8080",
        token,
        "main",
    )
    server, _ = client.resolve(client.cache_ref("local:main"))
    assert server.token == token


# (config text, the error, whether loading fails: `attic login` loads the config first too)
@pytest.mark.parametrize(
    ("text", "message", "on_load"),
    [
        (b"default-server = \"local\"\xff\n", "invalid utf-8 sequence of 1 bytes from index 24", True),
        ("servers = [", "TOML parse error", True),
        ('[servers.local]\ntoken = "t"\n', "missing field `endpoint`", True),
        ('[servers.local]\nendpoint = 8080\n', "invalid type: integer, expected a string", True),
        ('[servers."bad name"]\nendpoint = "http://h"\n', 'Invalid cache name "bad name"', True),
        ('default-server = "-x"\n', 'Invalid cache name "-x"', True),
        ('default-server = "other"\n[servers.local]\nendpoint = "http://h"\n',
         'Configured default server "other" does not exist', False),
        ("", "No servers are available.", False),
        ('[servers.local]\nendpoint = "localhost"\n', "relative URL without a base", False),
        ('[servers.local]\nendpoint = "http://h"\ntoken-file = "/nonexistent/t"\n',
         "Failed to read token from /nonexistent/t", False),
    ],
)  # fmt: skip
def test_client_refuses_what_config_rs_refuses(
    tmp_path, monkeypatch, capsys, text, message, on_load
):
    from runbook.lab.attic import client

    _client_with(tmp_path, monkeypatch, text)
    with pytest.raises(client.ClientError) as caught:
        client.resolve(client.cache_ref("main"))
    assert message in str(caught.value)
    assert client.main(["cache", "info", "main"]) == 1
    assert f"Error: {message}" in capsys.readouterr().err
    assert client.main(["login", "x", "http://h"]) == (1 if on_load else 0)


def test_client_token_forms_as_config_rs_reads_them(tmp_path, monkeypatch):
    """untagged: `token` first, then `token-file` (trimmed); flatten of an Option: a token of
    the wrong type is no token, not an error. A qualified server that is missing is named."""
    from runbook.lab.attic import client

    (tmp_path / "t").write_text("  eyJf.eyJg.aGk \n")
    _client_with(
        tmp_path, monkeypatch,
        '[servers.a]\nendpoint = "http://h"\ntoken = "eyJr.eyJz.c2ln"\n'
        f'token-file = "{tmp_path / "t"}"\n'
        f'[servers.b]\nendpoint = "http://h"\ntoken-file = "{tmp_path / "t"}"\n'
        '[servers.c]\nendpoint = "http://h"\ntoken = 5\n',
    )  # fmt: skip
    assert client.resolve(client.cache_ref("a:main"))[0].token == "eyJr.eyJz.c2ln"
    assert client.resolve(client.cache_ref("b:main"))[0].token == "eyJf.eyJg.aGk"
    assert client.resolve(client.cache_ref("c:main"))[0].token is None
    with pytest.raises(client.ClientError, match='Server "d" does not exist'):
        client.resolve(client.cache_ref("d:main"))
    with pytest.raises(argparse.ArgumentTypeError, match="Invalid cache reference"):
        client.cache_ref("a:b:c")


def test_client_login_keeps_the_token_when_none_is_given(tmp_path, monkeypatch, capsys):
    """login.rs: an existing server gets the new endpoint, and a token only when given."""
    from runbook.lab.attic import client

    path = _client_with(tmp_path, monkeypatch, "")
    assert client.main(["login", "local", "http://h", "eyJr.eyJz.c2ln"]) == 0
    assert client.main(["login", "local", "http://other"]) == 0
    assert '\u270d\ufe0f Overwriting server "local"' in capsys.readouterr().err
    assert path.stat().st_mode & 0o777 == 0o600
    server, _ = client.resolve(client.cache_ref("main"))
    assert (server.endpoint, server.token) == ("http://other", "eyJr.eyJz.c2ln")
