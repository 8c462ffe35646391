"""Issue 13, items 4 and 5: a cache the workers cannot use, and the admin token in an argv.

08 checks each worker's *running* Nix (`nix show-config --json`, root's view, over SSH)
against the key the live cache signs with; 06 writes root's attic client config with `put`
(0600, no token in any argv), redoes it whenever the file does not hold the stored token (a
rotation), and proves the login with a call only an authorized token passes.

The hosts are fake connections; atticd is a small HTTP server on 127.0.0.1 answering the
shapes of `attic/src/api/v1/` with narinfos signed as the lab's stand-in signs them. The
worker's settings are real Nix output: this machine's `nix show-config --json` (Nix 2.8) with
the worker's nix.conf lines in NIX_CONFIG.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runbook.cache import attic
from runbook.core.errors import InputError, RunbookError
from runbook.core.models import Result
from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.doctor.model import Finding
from runbook.engine.steps import Context, Mode
from runbook.lab.attic import client as standin
from runbook.lab.attic.state import CacheRecord, PathObject, generate_keypair
from runbook.sections import s06_cache, s08_verify
from runbook.sections.outline import section_steps
from tests.conftest import need
from tests.run_rig import inject_connection

SYSTEM = "/nix/store/3k1wymic8p7h5pfcqfhh0jan8ny2a712-nixos-system-nixos-utm-cache-25.11"
NAR_HASH = "sha256:" + "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a"
CONFIG_PATH = "/root/.config/attic/config.toml"
TOKEN_A = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLWE"
TOKEN_B = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiIn0.c2lnbmF0dXJlLWI"


# ---------------------------------------------------------------------------- fake atticd


@dataclass
class FakeAtticd:
    cache: CacheRecord
    valid_tokens: set[str] = field(default_factory=set)
    cache_exists: bool = True
    port: int = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
def atticd() -> Iterator[FakeAtticd]:
    state = FakeAtticd(CacheRecord("main", generate_keypair("main"), is_public=True))
    obj = PathObject(SYSTEM, NAR_HASH, 206104, [])

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, name: str, message: str) -> None:
            data = {"code": status, "error": name, "message": message}
            self._send(status, json.dumps(data).encode())

        def _bearer(self) -> str:
            return self.headers.get("Authorization", "").partition(" ")[2]

        def do_GET(self) -> None:
            c = state.cache
            if self.path in ("/_api/v1/cache-config/main", "/main/attic-cache-info"):
                config = {"api_endpoint": state.api, "public_key": c.public_key()}
                self._send(200, json.dumps(config).encode())
            elif self.path == "/main/nix-cache-info":
                self._send(200, b"WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 41\n")
            elif self.path == f"/main/{obj.store_hash}.narinfo":
                self._send(200, obj.narinfo(c).encode(), "text/x-nix-narinfo")
            else:
                self._error(404, "NotFound", "Not found.")

        def do_POST(self) -> None:
            assert self.path == "/_api/v1/get-missing-paths"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body == {"cache": "main", "store_path_hashes": []}
            # auth first, as get_missing_paths.rs: a refused token is anonymous (403 on a
            # public cache); an authorized one gets 404 while the cache does not exist
            if self._bearer() not in state.valid_tokens:
                self._error(403, "AccessError", "Access error.")
            elif not state.cache_exists:
                self._error(404, "NoSuchCache", "The requested cache does not exist.")
            else:
                self._send(200, b'{"missing_paths":[]}')

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- fake hosts


def _nix_show_config(nix_conf: str) -> str:
    """This machine's Nix, given the worker's nix.conf lines (no daemon needed)."""
    env = {**os.environ, "NIX_CONFIG": nix_conf, "NIX_USER_CONF_FILES": "/dev/null"}
    argv = list(attic.NIX_SHOW_CONFIG_ARGV)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout


class FakeHost:
    """A host's shell: the scripts and argvs it is given, the files `put` writes."""

    def __init__(self, name: str, show_config: str = "") -> None:
        self.name, self.show_config = name, show_config
        self.commands: list[str] = []
        self.files: dict[str, tuple[bytes, int, str | None]] = {}

    def connect(self) -> None:
        pass

    def _ok(self, command: str, stdout: str, code: int = 0) -> Result:
        return Result(command, code, stdout, "", 0.1, self.name)

    def run(self, command: str | Sequence[str], **_: object) -> Result:
        shown = command if isinstance(command, str) else " ".join(command)
        self.commands.append(shown)
        if command == attic.CLIENT_CONFIG_PATH_SCRIPT:
            return self._ok(shown, CONFIG_PATH + "\n")
        if command == s08_verify.SAMPLE_PATH_SCRIPT:
            return self._ok(shown, SYSTEM + "\n")
        if _words(command) == list(attic.NIX_SHOW_CONFIG_ARGV):
            return self._ok(shown, self.show_config)
        if shown.startswith("stat -c %a "):
            if CONFIG_PATH not in self.files:
                return self._ok(shown, "", 1)
            data, mode, _owner = self.files[CONFIG_PATH]
            digest = hashlib.sha256(data).hexdigest()
            return self._ok(shown, f"{mode:o}\n{digest}  {CONFIG_PATH}\n")
        if shown.startswith("attic cache info"):
            return self._ok(shown, "")  # a public cache answers whatever the token
        raise AssertionError(f"unexpected command on {self.name}: {shown}")

    def put(
        self, path: str, content: Secret, *, mode: int, owner: str | None, **_: object
    ) -> Result:
        self.files[path] = (content.reveal().encode(), mode, owner)
        return self._ok(f"put {path}", "")


def _ctx(tmp_path: Path, atticd: FakeAtticd, hosts: dict[str, FakeHost]) -> Context:
    config = tmp_path / "nixos-config"
    config.mkdir()
    (config / "flake.nix").touch()
    (tmp_path / "id").touch()
    params = tmp_path / "p.yaml"
    params.write_text(
        f"deployment: t\nnixos_config: {config}\nidentity: {tmp_path / 'id'}\n"
        "vms:\n  - name: vm-cache\n    role: cache\n    address: 127.0.0.1\n"
        "  - name: vm-worker\n    role: worker\n    address: 127.0.0.2\n"
        f"cache:\n  vm: vm-cache\n  host: 127.0.0.1\n  port: {atticd.port}\n"
    )
    ctx = Context("08-verify", load(params), Mode.DEPLOY, True, SecretStore(tmp_path / "s"))
    for name, host in hosts.items():
        inject_connection(ctx, (name, True, ""), host)
    return ctx


def _worker_trusting(atticd: FakeAtticd, *trusted: str, substituter: str = "") -> FakeHost:
    url = substituter or f"http://127.0.0.1:{atticd.port}/main"
    conf = f"substituters = {url}\ntrusted-public-keys = {' '.join(trusted)}\n"
    return FakeHost("vm-worker", _nix_show_config(conf))


@pytest.fixture
def nix() -> None:
    need(shutil.which("nix") is not None, "needs nix (Debian nix-bin) for `nix show-config`")


# ---------------------------------------------------------------------------- 08: key drift


def test_08_fails_when_a_worker_trusts_the_old_key(tmp_path, atticd, nix) -> None:
    """The keypair regenerated, 07 not rerun: 08 fails, naming the worker and both keys."""
    old = atticd.cache.public_key()
    atticd.cache.keypair = generate_keypair("main")  # `attic cache configure --regenerate-keypair`
    new = atticd.cache.public_key()
    worker = _worker_trusting(
        atticd, old, "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
    )
    ctx = _ctx(tmp_path, atticd, {"vm-cache": FakeHost("vm-cache"), "vm-worker": worker})
    s08_verify.verify(ctx).check()  # the cache itself signs consistently: verify passes
    (step,) = [s for s in section_steps(s08_verify)(ctx) if "trusts the key" in s.name]
    with pytest.raises(attic.TrustMismatchError) as caught:
        step.check()
    message = str(caught.value)
    assert "vm-worker" in message and old in message and new in message
    assert "not signed by any of the keys" in message
    assert any("show-config --json" in c for c in worker.commands)  # read from the worker


def test_08_passes_when_the_worker_trusts_the_live_key(tmp_path, atticd, nix) -> None:
    worker = _worker_trusting(atticd, atticd.cache.public_key())
    ctx = _ctx(tmp_path, atticd, {"vm-cache": FakeHost("vm-cache"), "vm-worker": worker})
    reason = s08_verify.trust(ctx, ctx.dep.workers[0]).check().reason
    assert f"trusts its key {atticd.cache.public_key()}" in reason and SYSTEM in reason


def test_08_takes_the_first_key_of_a_name_as_nix_does(tmp_path, atticd, nix) -> None:
    """getDefaultPublicKeys `emplace`s by name: with `main:OLD main:NEW` Nix holds OLD."""
    old = CacheRecord("main", generate_keypair("main")).public_key()
    worker = _worker_trusting(atticd, old, atticd.cache.public_key())
    ctx = _ctx(tmp_path, atticd, {"vm-cache": FakeHost("vm-cache"), "vm-worker": worker})
    with pytest.raises(attic.TrustMismatchError, match=re.escape(f"vm-worker trusts {old}")):
        s08_verify.trust(ctx, ctx.dep.workers[0]).check()


def test_08_fails_when_the_worker_does_not_use_the_cache(tmp_path, atticd, nix) -> None:
    worker = _worker_trusting(
        atticd, atticd.cache.public_key(), substituter="https://cache.nixos.org/"
    )
    ctx = _ctx(tmp_path, atticd, {"vm-cache": FakeHost("vm-cache"), "vm-worker": worker})
    with pytest.raises(attic.TrustMismatchError, match="vm-worker does not use http://127"):
        s08_verify.trust(ctx, ctx.dep.workers[0]).check()


def test_parse_nix_show_config_reads_real_nix_output(nix) -> None:
    conf = "substituters = http://c:8080/main https://cache.nixos.org/\n"
    conf += "extra-trusted-public-keys = main:" + "A" * 43 + "=\n"
    got = attic.parse_nix_show_config(_nix_show_config(conf))
    assert got.substituters == ("http://c:8080/main", "https://cache.nixos.org/")
    assert "main:" + "A" * 43 + "=" in got.trusted_public_keys  # extra-* merged by Nix
    with pytest.raises(attic.AtticOutputError):
        attic.parse_nix_show_config("warning: something\n")


# ---------------------------------------------------------------------------- 06: the login


def _login_ctx(tmp_path: Path, atticd: FakeAtticd, token: str) -> tuple[Context, FakeHost]:
    cache = FakeHost("vm-cache")
    ctx = _ctx(tmp_path, atticd, {"vm-cache": cache})
    ctx.store.put(ctx.dep.cache.admin_token, Secret(token, "attic token"))
    atticd.valid_tokens = {token}
    return ctx, cache


def test_login_writes_the_client_config_with_put_and_no_token_in_argv(
    tmp_path, atticd, monkeypatch
) -> None:
    ctx, cache = _login_ctx(tmp_path, atticd, TOKEN_A)
    step = s06_cache.login(ctx, ctx.dep.cache_vm)
    assert step.check().done is False  # no config yet
    reason = step.apply() or ""
    assert CONFIG_PATH in reason and "push on main" in reason
    data, mode, owner = cache.files[CONFIG_PATH]
    assert mode == 0o600 and owner == "root"
    assert not [c for c in cache.commands if TOKEN_A in c]
    assert all(TOKEN_A not in c for c in step.plan())
    # the stand-in client (config.rs's reading) finds the server and the token in it
    home = tmp_path / "xdg"
    (home / "attic").mkdir(parents=True)
    (home / "attic" / "config.toml").write_bytes(data)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    server, cache_name = standin.resolve(standin.cache_ref("main"))
    assert (server.name, server.endpoint, server.token, cache_name) == (
        "local",
        "http://localhost:8080",
        TOKEN_A,
        "main",
    )
    assert step.check().done is True  # the file holds the token, and atticd takes it


def test_a_rotated_token_is_logged_in_again(tmp_path, atticd) -> None:
    """After `rotate_token_secret`, 06 mints a new token: the file still holds the old one
    and `attic cache info` of the public cache still answers; the login is redone anyway."""
    ctx, cache = _login_ctx(tmp_path, atticd, TOKEN_A)
    step = s06_cache.login(ctx, ctx.dep.cache_vm)
    step.apply()
    ctx.store.put(ctx.dep.cache.admin_token, Secret(TOKEN_B, "attic token"))
    atticd.valid_tokens = {TOKEN_B}  # atticd restarted with the new secret
    assert step.check().done is False
    step.apply()
    assert TOKEN_B.encode() in cache.files[CONFIG_PATH][0]
    assert step.check().done is True


def test_a_token_atticd_refuses_fails_the_login(tmp_path, atticd) -> None:
    ctx, _ = _login_ctx(tmp_path, atticd, TOKEN_A)
    atticd.valid_tokens = set()  # atticd runs with another secret than the store's
    step = s06_cache.login(ctx, ctx.dep.cache_vm)
    with pytest.raises(RunbookError, match=r"atticd refuses attic-admin-token \(HTTP 403"):
        step.apply()
    with pytest.raises(RunbookError, match="notebook 05"):
        step.check()  # the file holds the token now, but the proof fails: not "done"


def test_login_before_the_cache_exists_is_proven_by_404_no_such_cache(tmp_path, atticd) -> None:
    ctx, _ = _login_ctx(tmp_path, atticd, TOKEN_A)
    atticd.cache_exists = False
    reason = s06_cache.login(ctx, ctx.dep.cache_vm).apply() or ""
    assert "404 NoSuchCache" in reason


def test_client_config_is_what_login_rs_writes() -> None:
    text = attic.client_config("local", "http://localhost:8080", Secret(TOKEN_A)).reveal()
    assert text == (
        'default-server = "local"\n\n[servers.local]\n'
        f'endpoint = "http://localhost:8080"\ntoken = "{TOKEN_A}"\n'
    )
    with pytest.raises(InputError):
        attic.client_config("-bad", "http://x", Secret(TOKEN_A))
    with pytest.raises(InputError):
        attic.client_config("local", "http://x", Secret('a"b'))


# ---------------------------------------------------------------------------- doctor: key drift


@dataclass(frozen=True)
class Checkout:
    config: Path
    key: Path


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    """The doctor's clean fixture checkout (tests/test_doctor.py), its user authorizing a key."""
    from tests import test_doctor

    key = test_doctor.write_key(tmp_path / "id_ed25519")
    config = tmp_path / "doctor-config"
    shutil.copytree(test_doctor.CLEAN, config)
    test_doctor.authorize(config, key, test_doctor.FIXTURE_KEY)
    return Checkout(config, key)


def _doctor(checkout: Checkout, atticd: FakeAtticd, runs: frozenset[str] = frozenset()) -> Finding:
    from runbook.doctor import run_context
    from runbook.doctor.context import DoctorContext
    from tests.test_doctor import deployment

    dep = deployment(checkout.config, checkout.key, host="127.0.0.1", port=atticd.port)
    found = run_context(DoctorContext(dep, checkout.config, deploy_runs=runs))
    return next(f for f in found if f.check == "worker-trusted-key")


def _checkout_key(checkout: Checkout) -> str:
    shared = (checkout.config / "machines" / "vm-shared.nix").read_text()
    (found,) = re.findall(r'"(main:[A-Za-z0-9+/]{43}=)"', shared)
    return str(found)


def test_the_doctor_fails_naming_the_worker_and_both_keys(checkout, atticd) -> None:
    """The checkout's key (07 wrote it) against the live cache's, reached on loopback."""
    from runbook.doctor import Status

    finding = _doctor(checkout, atticd)
    assert finding.status is Status.FAIL, finding
    checkout, live = _checkout_key(checkout), atticd.cache.public_key()
    assert "vm-aarch64-utm trusts " + checkout in finding.finding, finding.finding
    assert live in finding.finding and live in finding.fix


def test_in_a_deploy_that_runs_07_the_drift_is_a_warning_07_fixes(checkout, atticd) -> None:
    """Before: worker-trusted-key failed and 00's gate stopped the deploy whose 07 would
    have written the live key."""
    from runbook.doctor import Status

    finding = _doctor(checkout, atticd, frozenset({"01", "07", "08"}))
    assert finding.status is Status.WARN, finding
    assert "07 replaces it" in finding.finding and atticd.cache.public_key() in finding.finding
    later = _doctor(checkout, atticd, frozenset({"08"}))  # --only 08: nothing replaces it
    assert later.status is Status.FAIL


def test_the_first_key_of_the_name_is_the_one_compared(checkout, atticd) -> None:
    """`main:LIVE` listed after a stale `main:OLD`: Nix holds OLD (keys.cc), so a failure."""
    from runbook.doctor import Status

    shared = checkout.config / "machines" / "vm-shared.nix"
    old = _checkout_key(checkout)
    shared.write_text(
        shared.read_text().replace(f'"{old}"', f'"{old}" "{atticd.cache.public_key()}"')
    )
    assert _doctor(checkout, atticd).status is Status.FAIL
    shared.write_text(shared.read_text().replace(f'"{old}" ', ""))
    assert _doctor(checkout, atticd).status is Status.OK


def test_00_reads_the_notebooks_of_its_run_from_the_manifest(tmp_path) -> None:
    from runbook.sections import s00_preflight

    record = tmp_path / "record"
    record.mkdir()
    names = ["00-architecture-preflight", "07-workers", "08-verify"]
    manifest: dict[str, object] = {
        "deployment": "t", "record": str(record), "params": "p", "params_digest": "d",
        "runbook_version": "0", "papermill_version": "0", "nixos_config_commit": None,
        "mode": "deploy", "status": "running", "started": "2026-01-01T00:00:00Z", "ended": None,
        "duration": None, "failure": None,
        "notebooks": [{"notebook": n, "status": "pending", "start": None, "end": None,
                       "duration": None, "failed_step": None, "error": None, "steps": []}
                      for n in names],
    }  # fmt: skip
    (record / "manifest.json").write_text(json.dumps(manifest))

    class Ctx:
        record_dir: Path | None = record

    assert s00_preflight._later_notebooks(Ctx()) == {"07", "08"}  # type: ignore[arg-type]
    Ctx.record_dir = None
    assert s00_preflight._later_notebooks(Ctx()) == frozenset()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- 08: a warm cache

OTHER = "/nix/store/szw91dvx6gzl0fcvr3ymn40ry5wfsis0-nixos-system-dev-2-lab"


def _words(command: str | Sequence[str]) -> list[str]:
    """A command as its words, whether it came as an argv or as the script of one."""
    if not isinstance(command, str):
        return list(command)
    try:
        return shlex.split(command)
    except ValueError:
        return [command]


class SystemHost(FakeHost):
    """A worker running `system`, holding `has`; `nix-store -r` prints Nix's copy lines."""

    def __init__(self, name: str, system: str, has: set[str], log: str = "") -> None:
        super().__init__(name)
        self.system, self.has, self.log = system, has, log

    def run(self, command: str | Sequence[str], **kw: object) -> Result:
        shown = command if isinstance(command, str) else " ".join(command)
        self.commands.append(shown)
        if command == s06_cache.SYSTEM_SCRIPT:
            return self._ok(shown, self.system + "\n")
        words = _words(command)
        if words[:2] == ["nix-store", "--check-validity"]:
            return self._ok(shown, "", 0 if words[2] in self.has else 1)
        if words[:2] == ["nix-store", "-r"]:
            self.has.add(words[2])
            return Result(shown, 0, words[2] + "\n", self.log, 0.1, self.name)
        return super().run(command, **kw)


def _two_workers(tmp_path: Path, atticd: FakeAtticd, a: FakeHost, b: FakeHost) -> Context:
    ctx = _ctx(tmp_path, atticd, {"vm-cache": FakeHost("vm-cache"), "vm-worker": a})
    text = ctx.loaded.path.read_text().replace(
        "cache:\n", "  - name: vm-worker-2\n    role: worker\n    address: 127.0.0.3\ncache:\n"
    )
    ctx.loaded.path.write_text(text)
    ctx = Context("08-verify", load(ctx.loaded.path), Mode.DEPLOY, True, ctx.store)
    for name, host in {"vm-cache": FakeHost("vm-cache"), "vm-worker": a, "vm-worker-2": b}.items():
        inject_connection(ctx, (name, True, ""), host)
    return ctx


def test_08_the_second_worker_substitutes_the_firsts_system(tmp_path, atticd) -> None:
    url = f"http://127.0.0.1:{atticd.port}/main"
    copied = f"copying path '{OTHER}' from '{url}'...\n"
    a, b = (
        SystemHost("vm-worker", OTHER, {OTHER}),
        SystemHost("vm-worker-2", SYSTEM, {SYSTEM}, copied),
    )
    ctx = _two_workers(tmp_path, atticd, a, b)
    (step,) = [s for s in section_steps(s08_verify)(ctx) if "a warm cache" in s.name]
    assert step.name == "vm-worker-2 substitutes vm-worker's system (a warm cache)"
    assert step.probe is not None and step.action is not None
    assert step.probe().done is False
    said = step.action()
    assert said is not None and f"{copied.strip().rstrip('.')}" in said
    assert step.probe().done is True  # a rerun: it has it now


def test_08_a_substitution_from_elsewhere_fails(tmp_path, atticd) -> None:
    a = SystemHost("vm-worker", OTHER, {OTHER})
    b = SystemHost("vm-worker-2", SYSTEM, {SYSTEM}, f"copying path '{OTHER}' from 'https://x'\n")
    ctx = _two_workers(tmp_path, atticd, a, b)
    with pytest.raises(RunbookError, match=r"vm-worker-2 realised vm-worker's system .* but not"):
        s08_verify.substitute_peer(ctx, *ctx.dep.workers).action()  # type: ignore[misc]


def test_08_one_configuration_for_both_is_said(tmp_path, atticd) -> None:
    a, b = SystemHost("vm-worker", SYSTEM, {SYSTEM}), SystemHost("vm-worker-2", SYSTEM, {SYSTEM})
    ctx = _two_workers(tmp_path, atticd, a, b)
    check = s08_verify.substitute_peer(ctx, *ctx.dep.workers).probe()  # type: ignore[misc]
    assert check.done and "vm-worker-2 runs vm-worker's system" in check.reason


def test_the_key_drift_hint_names_the_notebooks_that_fix_it() -> None:
    """07 alone trusts the key 06 kept: the hint once said "run notebook 07", which failed."""
    old, new = (f"main:{base64.b64encode(bytes([n]) * 32).decode()}" for n in (1, 2))
    settings = attic.NixTrust(substituters=("http://c:8080/main",), trusted_public_keys=(old,))
    with pytest.raises(attic.TrustMismatchError) as raised:
        attic.judge_trust("vm-worker", settings, "http://c:8080/main", new)
    assert "--only 06,07" in str(raised.value) and "run notebook 07 " not in str(raised.value)
