"""06's push judged as attic prints it: `attic push CACHE --stdin` (zhaofengli/attic
`client/src/command/push.rs`, `push_stdin`) prints only the per-path lines of
`client/src/push.rs` (`✅ <hash-name> (<speed>/s)`, `✅ <hash-name> (deduplicated)`,
`❌ <hash-name>: <error>`) and nothing when nothing needs uploading; then the server says what
is still missing (`POST /_api/v1/get-missing-paths`), with the cache's own upstream keys.

The cache VM is a fake connection; atticd's two API routes are a small HTTP server on
127.0.0.1 answering the request/response shapes of `attic/src/api/v1/`.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runbook.cache import attic
from runbook.core.errors import CommandError, RunbookError
from runbook.core.models import Elevate, Result
from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine.steps import Context, Mode
from runbook.sections import s06_cache, s07_workers
from tests.run_rig import inject_connection

SYSTEM = "/nix/store/3k1wymic8p7h5pfcqfhh0jan8ny2a712-nixos-system-nixos-utm-cache-25.11"
ETC = "/nix/store/544qcchwgcgpz3xi1bbml28f8jj6009p-etc"
GLIBC = "/nix/store/n7q4i7rlmbk4xz8qdsxpm6jbhrnxraq2-glibc-2.40-66"
DRV = "/nix/store/nm1w9sdm6j6icmhd2q3260hl1w9zj6li-hello-2.12.1.drv"
NIXOS_SIG = "cache.nixos.org-1:" + "A" * 86 + "=="
# `nix path-info --all --sigs`: the path, then its signatures
PATH_INFO = f"{SYSTEM}\n{ETC}\n{GLIBC}\t{NIXOS_SIG}\n{DRV}\n"


def b(path: str) -> str:
    return path.rsplit("/", 1)[1]


def h(path: str) -> str:
    return b(path)[:32]


@dataclass
class FakeAtticd:
    """`GET /_api/v1/cache-config/{cache}` and `POST /_api/v1/get-missing-paths`."""

    upstream_keys: list[str]
    have: set[str] = field(default_factory=set)
    asked: list[list[str]] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def atticd() -> Iterator[FakeAtticd]:
    state = FakeAtticd(["cache.nixos.org-1"])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, data: object) -> None:
            raw = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            assert self.path == "/_api/v1/cache-config/main"
            assert self.headers["Authorization"].startswith("Bearer ")
            base = f"http://127.0.0.1:{state.port}/"
            self._answer(
                {
                    "substituter_endpoint": base + "main",
                    "api_endpoint": base,
                    "public_key": "main:" + "B" * 43 + "=",
                    "is_public": True,
                    "store_dir": "/nix/store",
                    "priority": 41,
                    "upstream_cache_key_names": state.upstream_keys,
                    "retention_period": "Global",
                }
            )

        def do_POST(self) -> None:
            assert self.path == "/_api/v1/get-missing-paths"
            assert self.headers["Content-Type"] == "application/json"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["cache"] == "main"
            state.asked.append(body["store_path_hashes"])
            missing = [x for x in body["store_path_hashes"] if x not in state.have]
            self._answer({"missing_paths": missing})

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


class FakeCacheVM:
    """The cache VM's shell: path-info answers PATH_INFO; the push prints `push_output`,
    exits with `push_exit` and leaves the `uploads` in the fake atticd."""

    def __init__(
        self, atticd: FakeAtticd, output: str, exit_code: int = 0, uploads: Sequence[str] = ()
    ) -> None:
        self.atticd, self.output, self.exit_code, self.uploads = atticd, output, exit_code, uploads
        self.scripts: list[str] = []

    def connect(self) -> None:
        pass

    def run(self, command: str, **_: object) -> Result:
        self.scripts.append(command)
        if command == s06_cache.PATHS_SCRIPT:
            return Result(command, 0, PATH_INFO, "", 0.1, "vm-test-cache")
        assert "attic push main --stdin" in command
        self.atticd.have.update(h(p) for p in self.uploads)
        return Result(command, self.exit_code, "", self.output, 1.0, "vm-test-cache")


def _ctx(
    tmp_path: Path,
    atticd: FakeAtticd,
    vm: FakeCacheVM,
    upstream_filter: bool = True,
    workers: int = 0,
) -> Context:
    config = tmp_path / "nixos-config"
    config.mkdir()
    (config / "flake.nix").touch()
    (tmp_path / "id").touch()
    params = tmp_path / "p.yaml"
    params.write_text(
        f"deployment: t\nnixos_config: {config}\nidentity: {tmp_path / 'id'}\n"
        "vms:\n  - name: vm-test-cache\n    role: cache\n    address: 127.0.0.1\n"
        + "  - name: vm-test-worker\n    role: worker\n    address: 127.0.0.2\n"
        * workers
        + f"cache:\n  vm: vm-test-cache\n  host: 127.0.0.1\n  port: {atticd.port}\n"
        f"  upstream_filter: {'true' if upstream_filter else 'false'}\n"
    )
    ctx = Context("06-cache", load(params), Mode.DEPLOY, True, SecretStore(tmp_path / "s"))
    ctx.store.put(ctx.dep.cache.admin_token, Secret("eyJh.eyJz.c2ln", "attic token"))
    inject_connection(ctx, (ctx.dep.cache_vm.name, True, ""), vm)
    return ctx


# What `upload_path` prints for SYSTEM and ETC (client/src/push.rs format strings).
PUSHED = f"\u2705 {b(SYSTEM)} (2.41 MiB/s)\n\u2705 {b(ETC)} (1.02 MiB/s, 37.5% deduplicated)\n"


def test_a_real_stdin_push_passes(tmp_path: Path, atticd: FakeAtticd) -> None:
    vm = FakeCacheVM(atticd, PUSHED, uploads=[SYSTEM, ETC])
    ctx = _ctx(tmp_path, atticd, vm)
    step = s06_cache.push(ctx, ctx.dep.cache_vm)
    assert step.probe is not None and step.action is not None
    assert step.probe().done is False
    summary = step.action()
    assert summary == (
        "pushed 2 of 2 paths; 0 already in main, 1 skipped as in upstream "
        "(the cache's upstream keys: cache.nixos.org-1)"
    )
    # the server was asked about the eligible paths (no .drv, no upstream-signed path)
    assert sorted(atticd.asked[-1]) == sorted([h(SYSTEM), h(ETC)])
    assert step.probe().done is True


def test_nothing_printed_and_nothing_missing_passes(tmp_path: Path, atticd: FakeAtticd) -> None:
    atticd.have.update({h(SYSTEM), h(ETC)})
    ctx = _ctx(tmp_path, atticd, FakeCacheVM(atticd, ""))
    summary = s06_cache.push(ctx, ctx.dep.cache_vm).action()  # type: ignore[misc]
    assert summary is not None and summary.startswith("pushed 0 of 2 paths; 2 already in main")


def test_a_path_still_missing_after_exit_0_fails(tmp_path: Path, atticd: FakeAtticd) -> None:
    # attic says both were uploaded and exits 0, but the server has only one of them
    vm = FakeCacheVM(atticd, PUSHED, uploads=[SYSTEM])
    ctx = _ctx(tmp_path, atticd, vm)
    with pytest.raises(RunbookError, match=rf"1 of 2 eligible paths are still missing .*{b(ETC)}"):
        s06_cache.push(ctx, ctx.dep.cache_vm).action()  # type: ignore[misc]


def test_a_failed_path_names_it_with_the_exit_code(tmp_path: Path, atticd: FakeAtticd) -> None:
    out = (
        f"\u2705 {b(SYSTEM)} (2.41 MiB/s)\n"
        f"\u274c {b(ETC)}: IncompleteNar: The NAR is incomplete.\n"
        "Error: IncompleteNar: The NAR is incomplete.\n"
    )
    ctx = _ctx(tmp_path, atticd, FakeCacheVM(atticd, out, exit_code=1, uploads=[SYSTEM]))
    with pytest.raises(CommandError) as caught:
        s06_cache.push(ctx, ctx.dep.cache_vm).action()  # type: ignore[misc]
    text = str(caught.value)
    assert "exited with 1: 1 paths failed, 1 pushed" in text
    assert f"{b(ETC)}: IncompleteNar" in text and "vm-test-cache" in text


def test_the_caches_own_upstream_keys_decide(tmp_path: Path, atticd: FakeAtticd) -> None:
    """A cache created with other upstream keys: the cache.nixos.org-signed path is pushed
    too, so it must be in the cache before the step is done."""
    atticd.upstream_keys = ["my-upstream-1"]
    atticd.have.update({h(SYSTEM), h(ETC)})
    ctx = _ctx(tmp_path, atticd, FakeCacheVM(atticd, ""))
    step = s06_cache.push(ctx, ctx.dep.cache_vm)
    assert step.probe().done is False  # type: ignore[misc]
    assert sorted(atticd.asked[-1]) == sorted([h(SYSTEM), h(ETC), h(GLIBC)])


def test_no_upstream_filter_checks_every_path(tmp_path: Path, atticd: FakeAtticd) -> None:
    vm = FakeCacheVM(
        atticd, PUSHED + f"\u2705 {b(GLIBC)} (deduplicated)\n", uploads=[SYSTEM, ETC, GLIBC]
    )
    ctx = _ctx(tmp_path, atticd, vm, upstream_filter=False)
    step = s06_cache.push(ctx, ctx.dep.cache_vm)
    summary = step.action()  # type: ignore[misc]
    assert summary is not None and summary.startswith("pushed 3 of 3 paths")
    assert "--ignore-upstream-cache-filter" in vm.scripts[-1]


# ------------------------------------------------------------------ the pure parts


def test_parse_push_lines_reads_push_rs_lines() -> None:
    out = (
        PUSHED
        + f"\r\u2705 {b(GLIBC)} (deduplicated)\r\n"
        + f"\u274c {b(DRV)}: HTTP 500 Internal Server Error: boom\n"
        + "Error: HTTP 500 Internal Server Error: boom\n"
    )
    lines = attic.parse_push_lines(out)
    assert lines.pushed == (b(SYSTEM), b(ETC), b(GLIBC))
    assert lines.failed == ((b(DRV), "HTTP 500 Internal Server Error: boom"),)
    # a /nix/store/ prefix is read too; a push_static summary line is no path
    other = attic.parse_push_lines(
        f"\u2705 {SYSTEM} (1 B/s)\n\u2705 All done! (2 already cached, 0 in upstream)\n"
    )
    assert other.pushed == (b(SYSTEM),)


def test_split_upstream_follows_the_push_plan() -> None:
    infos = attic.parse_path_info_sigs(PATH_INFO)
    assert [i.path for i in infos] == [SYSTEM, ETC, GLIBC]  # the .drv is left out
    assert attic.split_upstream(infos, ["cache.nixos.org-1"], ignore_filter=False) == (
        [SYSTEM, ETC],
        [GLIBC],
    )
    assert attic.split_upstream(infos, [], ignore_filter=False) == ([SYSTEM, ETC, GLIBC], [])
    assert attic.split_upstream(infos, ["cache.nixos.org-1"], ignore_filter=True)[1] == []


def test_judge_push_refuses_an_empty_plan() -> None:
    with pytest.raises(attic.PushFailedError, match="nothing to push: all 7 paths are signed"):
        attic.judge_push(
            cache="main",
            exit_code=0,
            output="",
            eligible=[],
            upstream=7,
            upstream_keys=["cache.nixos.org-1"],
            missing_after=[],
        )


# ------------------------------------------------------------------ 07: a worker's closure (issue 15)

# `nix path-info --json -r SYSTEM` as Nix 2.8 prints it (a list; no `signatures` key when a
# path has none), the worker's system closure: its system, etc, and an upstream-signed glibc
WORKER_SYSTEM = "/nix/store/a1kv1vqmi2ghkqwgilla4c1q8nx7pbx0-nixos-system-dev-lab"
CLOSURE_JSON = json.dumps(
    [
        {"path": WORKER_SYSTEM, "narHash": "sha256-x", "narSize": 2304, "references": [ETC]},
        {"path": ETC, "narHash": "sha256-y", "narSize": 81920, "references": []},
        {"path": GLIBC, "narHash": "sha256-z", "narSize": 30000000, "signatures": [NIXOS_SIG]},
    ]
)


class FakeWorker:
    """A worker's shell: its system, its closure's path-info, and root's `attic push`."""

    def __init__(self, atticd: FakeAtticd, output: str, uploads: Sequence[str] = ()) -> None:
        self.atticd, self.output, self.uploads = atticd, output, uploads
        self.runs: list[tuple[str, object]] = []

    def connect(self) -> None:
        pass

    def run(self, command: str | Sequence[str], **kw: object) -> Result:
        shown = command if isinstance(command, str) else " ".join(command)
        self.runs.append((shown, kw.get("elevate")))
        if command == s06_cache.SYSTEM_SCRIPT:
            return Result(shown, 0, WORKER_SYSTEM + "\n", "", 0.1, "vm-test-worker")
        if command == shlex.join(s06_cache.closure_argv(WORKER_SYSTEM)):
            return Result(shown, 0, CLOSURE_JSON, "", 0.1, "vm-test-worker")
        assert isinstance(command, str) and "| attic push main --stdin" in command, shown
        self.atticd.have.update(h(p) for p in self.uploads)
        return Result(shown, 0, "", self.output, 1.0, "vm-test-worker")


def _worker_ctx(tmp_path: Path, atticd: FakeAtticd, worker: FakeWorker) -> Context:
    ctx = _ctx(tmp_path, atticd, FakeCacheVM(atticd, ""), workers=1)
    ctx.store.put(s06_cache.WORKER_TOKEN, Secret("eyJh.eyJ3.d29ya2Vy", "attic token"))
    inject_connection(ctx, ("vm-test-worker", True, ""), worker)
    return ctx


def test_a_workers_closure_push_says_paths_and_bytes_sent(tmp_path: Path, atticd: FakeAtticd):
    """Before issue 15 nothing pushed a worker's system: 07 had no such step."""
    atticd.have.add(h(ETC))  # the cache VM's push had etc already
    out = f"\u2705 {b(WORKER_SYSTEM)} (1.10 MiB/s)\n"
    worker = FakeWorker(atticd, out, uploads=[WORKER_SYSTEM])
    ctx = _worker_ctx(tmp_path, atticd, worker)
    step = s07_workers.warm_push(ctx, ctx.dep.workers[0])
    assert step.probe is not None and step.action is not None
    assert step.probe().done is False
    summary = step.action()
    assert summary is not None and summary.startswith(
        f"vm-test-worker's system {WORKER_SYSTEM}: sent 1 paths, 2304 bytes of NAR (2.25 KiB); "
        "0 deduplicated by the server; pushed 1 of 2 paths; 1 already in main, 1 skipped"
    ), summary
    push = next((c, e) for c, e in worker.runs if "attic push" in c)
    assert push[0].startswith(s06_cache.SYSTEM_SCRIPT + " | attic push main --stdin -j 4")
    assert push[1] is Elevate.SUDO  # root's client, logged in with the push token
    assert step.probe().done is True


def test_a_workers_push_that_leaves_a_path_missing_fails(tmp_path: Path, atticd: FakeAtticd):
    out = f"\u2705 {b(WORKER_SYSTEM)} (1.10 MiB/s)\n\u2705 {b(ETC)} (deduplicated)\n"
    ctx = _worker_ctx(tmp_path, atticd, FakeWorker(atticd, out, uploads=[WORKER_SYSTEM]))
    with pytest.raises(RunbookError, match=rf"1 of 2 eligible paths are still missing .*{b(ETC)}"):
        s07_workers.warm_push(ctx, ctx.dep.workers[0]).action()  # type: ignore[misc]


def test_deduplicated_paths_send_no_bytes() -> None:
    infos = attic.parse_path_info_json(CLOSURE_JSON)
    assert [(i.path, i.nar_size) for i in infos] == [
        (WORKER_SYSTEM, 2304), (ETC, 81920), (GLIBC, 30000000)
    ]  # fmt: skip
    assert infos[2].signers == {"cache.nixos.org-1"} and infos[0].signers == set()
    lines = attic.parse_push_lines(
        f"\u2705 {b(WORKER_SYSTEM)} (1 KiB/s)\n\u2705 {b(ETC)} (deduplicated)\n"
        f"\u2705 {b(GLIBC)} (9.50 MiB/s, 37.5% deduplicated)\n"
    )
    assert lines.deduplicated == (b(ETC),)
    sent = attic.push_sent(lines, infos)
    assert (sent.uploaded, sent.nar_bytes, sent.deduplicated) == (2, 2304 + 30000000, 1)
    # Nix >= 2.19 prints an object keyed by path
    newer = json.dumps({ETC: {"narSize": 5, "signatures": []}, DRV: {"narSize": 1}})
    assert attic.parse_path_info_json(newer) == [attic.PathInfo(ETC, 5, frozenset())]
    with pytest.raises(attic.AtticOutputError, match="was not in the plan"):
        attic.push_sent(attic.parse_push_lines(f"\u2705 {b(DRV)} (1 B/s)\n"), infos)


def test_the_workers_token_pushes_and_pulls_that_cache_only(tmp_path: Path, atticd: FakeAtticd):
    ctx = _ctx(tmp_path, atticd, FakeCacheVM(atticd, ""))
    (cmd,) = s06_cache.make_worker_token(ctx, ctx.dep.cache_vm).plan()
    flags = cmd.split("make-token", 1)[1]
    assert "--pull main --push main" in flags
    for refused in ("--delete", "--create-cache", "--configure-cache", "--destroy-cache", "'*'"):
        assert refused not in flags, flags


def test_a_workers_login_puts_the_push_token_0600(tmp_path: Path, atticd: FakeAtticd) -> None:
    class Worker(FakeWorker):
        def run(self, command: str | Sequence[str], **_: object) -> Result:
            if command == attic.CLIENT_CONFIG_PATH_SCRIPT:
                return Result("p", 0, "/root/.config/attic/config.toml\n", "", 0.1, "w")
            raise AssertionError(command)

        def put(
            self, path: str, content: Secret, *, mode: int, owner: str | None, **_: object
        ) -> Result:
            self.put_ = (path, content.reveal(), mode, owner)
            return Result("put", 0, "", "", 0.1, "w")

    worker = Worker(atticd, "")
    ctx = _worker_ctx(tmp_path, atticd, worker)
    step = s07_workers.worker_login(ctx, ctx.dep.workers[0])
    assert step.name == f"attic login on vm-test-worker ({s06_cache.WORKER_TOKEN})"
    said = step.action()  # type: ignore[misc]
    assert said is not None and "atticd grants the token push on main" in said
    assert atticd.asked[-1] == []  # the proof: get-missing-paths with no hashes
    path, text, mode, owner = worker.put_
    assert (path, mode, owner) == ("/root/.config/attic/config.toml", 0o600, "root")
    assert f'endpoint = "http://127.0.0.1:{atticd.port}/"' in text
    assert 'token = "eyJh.eyJ3.d29ya2Vy"' in text
    assert all("eyJh.eyJ3" not in line for line in step.plan())
