"""A deployment changes only the VMs it owns (issue 10, 9): a `reference: true` VM is read.

params/worker.yaml lists the cache VM as a reference: its plan creates, types on, installs
and switches the worker only; the cache stays readable for 06 (its key, the token) and 08.
params/cache.yaml owns its one VM: every step for it is still planned.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import yaml

from runbook.core.errors import InputError, RunbookError
from runbook.core.params import load
from runbook.core.secrets import SecretStore
from runbook.engine.steps import Context, Mode
from runbook.sections import (
    s00_preflight,
    s01_create_vm,
    s02_console,
    s03_bootstrap0,
    s04_bootstrap,
    s05_token_secret,
    s07_workers,
    s09_update,
    s90_recover,
)
from runbook.sections.outline import section_steps
from tests.run_rig import PARAMS, guard_env, runbook

CACHE_VM = "vm-aarch64-utm-cache"
# what a deployment may do to a VM it does not own: read the cache's key and token (06),
# check the cache and substitute from it (08)
READS_THE_REFERENCE = {"06", "08"}
CHANGING = (
    s00_preflight, s01_create_vm, s02_console, s03_bootstrap0, s04_bootstrap, s05_token_secret,
    s07_workers, s09_update, s90_recover,
)  # fmt: skip


def _ctx(tmp_path: Path, name: str) -> Context:
    return Context("x", load(PARAMS / name), Mode.PLAN, False, SecretStore(tmp_path / "s"))


def _names_cache(step: dict[str, str]) -> bool:
    return CACHE_VM in step["step"] or CACHE_VM in step["host"]


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """`runbook plan` of worker.yaml and cache.yaml, each step with its notebook."""
    out = {}
    for name in ("worker.yaml", "cache.yaml"):
        tmp = tmp_path_factory.mktemp(name.split(".")[0])
        proc = runbook(
            "plan", str(PARAMS / name), "--records", str(tmp / "records"),
            "--secrets", str(tmp / "secrets"), env=guard_env(tmp),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        (record,) = [p for p in (tmp / "records").iterdir() if p.is_dir()]
        manifest = json.loads((record / "manifest.json").read_text())
        out[name] = [
            {**s, "notebook": nb["notebook"][:2]}
            for nb in manifest["notebooks"]
            for s in nb["steps"]
        ]
    return out


def test_the_worker_plan_changes_no_step_of_the_cache_vm(
    plans: dict[str, list[dict[str, str]]],
) -> None:
    steps = plans["worker.yaml"]
    touching = [(s["notebook"], s["step"]) for s in steps if _names_cache(s)]
    assert [t for t in touching if t[0] not in READS_THE_REFERENCE] == [], touching
    planned = {(s["notebook"], s["step"].split(" ")[0]) for s in steps}
    for nb, word in [("01", "create"), ("03", "bootstrap0"), ("04", "switch"), ("09", "update")]:
        assert (nb, word) in planned, (nb, word)  # the worker's own are all still there
    assert not [s for s in steps if s["notebook"] == "05" and s["outcome"] != "skipped"]


def test_the_cache_plan_still_does_everything_to_its_vm(
    plans: dict[str, list[dict[str, str]]],
) -> None:
    mine = {
        (s["notebook"], s["step"].split(" ")[0]) for s in plans["cache.yaml"] if _names_cache(s)
    }
    for nb, word in [
        ("00", "build"), ("01", "create"), ("01", "start"), ("02", "set"), ("02", "find"),
        ("03", "bootstrap0"), ("03", "remove"), ("04", "build"), ("04", "copy"), ("04", "switch"),
        ("04", "fresh"), ("09", "build"), ("09", "update"), ("90", "recover"),
    ]:  # fmt: skip
        assert (nb, word) in mine, (nb, word, sorted(mine))
    assert len([s for s in plans["cache.yaml"] if s["notebook"] == "05"]) >= 4


def test_sections_steps_iterate_the_owned_vms(tmp_path: Path) -> None:
    """The sections' own `steps()` (the interactive panels) agree with the notebooks."""
    worker = _ctx(tmp_path, "worker.yaml")
    assert [v.name for v in worker.dep.owned_vms] == ["vm-aarch64-utm"]
    for module in CHANGING:
        hit = [s.name for s in section_steps(module)(worker) if CACHE_VM in f"{s.name} {s.host}"]
        assert hit == [], (module.__name__, hit)
    cache = _ctx(tmp_path, "cache.yaml")
    assert cache.dep.owned_vms == cache.dep.vms
    assert len(section_steps(s05_token_secret)(cache)) >= 4


def test_a_deployment_owns_at_least_one_vm(tmp_path: Path) -> None:
    data = yaml.safe_load((PARAMS / "cache.yaml").read_text())
    data["vms"][0]["reference"] = True
    path = tmp_path / "all-references.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"key vms: every VM is a reference"):
        load(path)


def test_the_worker_plan_only_reads_the_referenced_cache_in_06(
    plans: dict[str, list[dict[str, str]]],
) -> None:
    in_06 = [s["step"] for s in plans["worker.yaml"] if s["notebook"] == "06"]
    assert in_06 == ["read cache main on vm-aarch64-utm-cache (referenced: nothing changes there)"]
    owned_06 = [s["step"] for s in plans["cache.yaml"] if s["notebook"] == "06"]
    assert len(owned_06) == 6 and owned_06[0].startswith("admin token")  # + the workers' token


class _CacheConfig(http.server.BaseHTTPRequestHandler):
    """attic's `GET /_api/v1/cache-config/{cache}` for a public cache (cache_config.rs), 401 else."""

    key = "main:" + "A" * 43 + "="
    public = True

    def do_GET(self) -> None:
        if self.path == "/_api/v1/cache-config/main" and self.public:
            body = json.dumps({"public_key": self.key, "is_public": True}).encode()
            self.send_response(200)
        else:
            body = b'{"code":401,"error":"Unauthorized","message":"Unauthorized."}'
            self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("public", [True, False])
def test_06_reads_a_referenced_cache_and_keeps_its_key(tmp_path: Path, public: bool) -> None:
    from runbook.sections import s06_cache

    _CacheConfig.public = public
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CacheConfig)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        raw = yaml.safe_load((PARAMS / "worker.yaml").read_text())
        raw["cache"].update(host="127.0.0.1", port=server.server_address[1])
        (tmp_path / "w.yaml").write_text(yaml.safe_dump(raw))
        ctx = Context(
            "x", load(tmp_path / "w.yaml"), Mode.DEPLOY, True, SecretStore(tmp_path / "s")
        )
        (step,) = section_steps(s06_cache)(ctx)
        check = step.check()
        if public:
            assert check.done and _CacheConfig.key in check.reason
            assert s06_cache.public_key_file(ctx).read_text().strip() == _CacheConfig.key
        else:
            assert not check.done and "HTTP 401" in check.reason
            with pytest.raises(RunbookError, match="deploy the cache with its own params first"):
                step.apply()
    finally:
        server.shutdown()
