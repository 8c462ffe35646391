"""`attic` client stand-in: config file, login, cache create|configure|info|destroy, push.

Messages, streams and exit codes follow attic.md §4: user-facing output on stderr, errors as
`Error: <Name>: <message>` with exit 1. Store paths come from real Nix (`nix path-info
--json`, `nix-store --dump`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from runbook import keys
from runbook.secrets import write_private

NIX_FLAGS: Final = ["--extra-experimental-features", "nix-command"]


class ClientError(Exception):
    """Printed as `Error: <name>: <message>` (attic.md §4)."""

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message
        super().__init__(f"{name}: {message}")


# ---------------------------------------------------------------------------- config file


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "attic" / "config.toml"


def load_config() -> dict[str, Any]:
    path = config_path()
    return tomllib.loads(path.read_text()) if path.exists() else {}


def save_config(conf: dict[str, Any]) -> None:
    """TOML as in attic.md §4, mode 0600."""
    lines = []
    if conf.get("default-server"):
        lines.append(f"default-server = {json.dumps(conf['default-server'])}")
    for name, server in conf.get("servers", {}).items():
        lines += ["", f"[servers.{json.dumps(name)}]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in server.items()]
    write_private(config_path(), ("\n".join(lines) + "\n").encode())


@dataclass(frozen=True)
class Server:
    name: str
    endpoint: str
    token: str | None


def resolve(ref: str) -> tuple[Server, str]:
    """`[server:]cache` -> (server, cache); default server, else the first one (attic.md §4)."""
    conf = load_config()
    servers: dict[str, Any] = conf.get("servers", {})
    server_name, sep, cache = ref.rpartition(":")
    if not sep:
        server_name = conf.get("default-server") or next(iter(servers), "")
    if server_name not in servers:
        raise ClientError(
            "NoSuchServer" if sep else "NoDefaultServer",
            f'No server named "{server_name}" configured'
            if sep
            else "No servers configured. Run `attic login` first.",
        )
    entry = servers[server_name]
    token = entry.get("token")
    if not token and entry.get("token-file"):
        token = Path(entry["token-file"]).read_text().strip()
    return Server(server_name, str(entry["endpoint"]), token), cache


# ---------------------------------------------------------------------------- HTTP


def api(
    server: Server,
    method: str,
    path: str,
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    endpoint: str | None = None,
) -> Any:
    base = (endpoint or server.endpoint).rstrip("/") + "/"
    hdrs = dict(headers or {})
    if server.token:
        hdrs["Authorization"] = f"Bearer {server.token}"
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path.lstrip("/"), data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())
            raise ClientError(str(err["error"]), str(err["message"])) from None
        except (ValueError, KeyError, TypeError):
            raise ClientError("ApiError", f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise ClientError(
            "RequestError", f"error sending request for url ({base}{path}): {exc.reason}"
        ) from None
    return json.loads(raw) if raw else None


# ---------------------------------------------------------------------------- commands


def cmd_login(args: argparse.Namespace) -> int:
    conf = load_config()
    servers = conf.setdefault("servers", {})
    verb = "Overwriting" if args.name in servers else "Configuring"
    print(f'\u270d\ufe0f {verb} server "{args.name}"', file=sys.stderr)
    entry: dict[str, str] = {"endpoint": args.endpoint}
    if args.token:
        entry["token"] = args.token
    servers[args.name] = entry
    if args.set_default or len(servers) == 1:
        conf["default-server"] = args.name
    save_config(conf)
    return 0


def cmd_cache_create(args: argparse.Namespace) -> int:
    server, cache = resolve(args.cache)
    body = {
        "keypair": "Generate",
        "is_public": args.public,
        "store_dir": "/nix/store",
        "priority": args.priority,
        "upstream_cache_key_names": args.upstream_cache_key_name or ["cache.nixos.org-1"],
    }
    api(server, "POST", f"_api/v1/cache-config/{cache}", body)
    print(f'\u2728 Created cache "{cache}" on "{server.name}"', file=sys.stderr)
    return 0


def cmd_cache_configure(args: argparse.Namespace) -> int:
    server, cache = resolve(args.cache)
    body: dict[str, Any] = {}
    if args.public or args.private:
        body["is_public"] = bool(args.public)
    if args.priority is not None:
        body["priority"] = args.priority
    if args.regenerate_keypair:
        body["keypair"] = "Generate"
    if args.upstream_cache_key_name:
        body["upstream_cache_key_names"] = args.upstream_cache_key_name
    # The client always sends retention_period, hence the need for `cq` (attic.md §4, #144).
    body["retention_period"] = (
        {"Period": args.retention_period} if args.retention_period is not None else "Global"
    )
    api(server, "PATCH", f"_api/v1/cache-config/{cache}", body)
    print(f'\u2705 Configured "{cache}" on "{server.name}"', file=sys.stderr)
    return 0


def cmd_cache_info(args: argparse.Namespace) -> int:
    server, cache = resolve(args.cache)
    info = api(server, "GET", f"_api/v1/cache-config/{cache}")
    retention = info["retention_period"]
    rows = [
        ("Public", str(info["is_public"]).lower()),
        ("Public Key", info["public_key"]),
        ("Binary Cache Endpoint", info["substituter_endpoint"]),
        ("API Endpoint", info["api_endpoint"]),
        ("Store Directory", info["store_dir"]),
        ("Priority", str(info["priority"])),
        ("Upstream Cache Keys", json.dumps(info["upstream_cache_key_names"])),
        (
            "Retention Period",
            "Global Default" if retention == "Global" else str(retention["Period"]),
        ),
    ]
    for label, value in rows:  # eprintln!, right-aligned labels (attic.md §4)
        print(f"{label:>21}: {value}", file=sys.stderr)
    return 0


def cmd_cache_destroy(args: argparse.Namespace) -> int:
    server, cache = resolve(args.cache)
    api(server, "DELETE", f"_api/v1/cache-config/{cache}")
    print(f'\U0001f5d1\ufe0f Deleted cache "{cache}"', file=sys.stderr)
    return 0


def _path_infos(paths: list[str], closure: bool) -> list[dict[str, Any]]:
    argv = ["nix", *NIX_FLAGS, "path-info", "--json", *(["-r"] if closure else []), *paths]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClientError(
            "NixError",
            proc.stderr.strip().splitlines()[-1]
            if proc.stderr
            else f"nix path-info exited with {proc.returncode}",
        )
    infos: list[dict[str, Any]] = json.loads(proc.stdout)
    return infos


def human_bytes(n: float) -> str:
    """indicatif's `HumanBytes` (binary prefixes), as attic's push lines show sizes."""
    if n < 1024:
        return f"{n:.0f} B"
    prefixes = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
    n /= 1024
    while n >= 1024 and len(prefixes) > 1:
        n /= 1024
        prefixes.pop(0)
    return f"{n:.2f} {prefixes[0]}B"


def _upload(server: Server, endpoint: str, cache: str, info: dict[str, Any]) -> str:
    """One path's PUT /_api/v1/upload-path; its result line as `upload_path` prints it
    (zhaofengli/attic `client/src/push.rs`): the store path's base name, then the speed,
    or `deduplicated` when the server had the NAR already."""
    started = time.monotonic()
    path = info["path"]
    proc = subprocess.run(["nix-store", "--dump", path], capture_output=True, check=False)
    if proc.returncode != 0:
        raise ClientError("NixError", proc.stderr.decode(errors="replace").strip())
    nar = proc.stdout
    digest = hashlib.sha256(nar).digest()
    if digest != keys.parse_nix_hash(info["narHash"]) or len(nar) != info["narSize"]:
        raise ClientError("NixError", f"NAR of {path} does not match its registered hash")
    header = {
        "cache": cache,
        "store_path_hash": Path(path).name[:32],
        "store_path": path,
        "references": info.get("references", []),
        "system": None,
        "deriver": info.get("deriver"),
        "sigs": info.get("signatures", []),
        "ca": info.get("ca"),
        "nar_hash": f"sha256:{digest.hex()}",
        "nar_size": len(nar),
    }
    result = api(
        server,
        "PUT",
        "_api/v1/upload-path",
        data=nar,
        endpoint=endpoint,
        headers={
            "X-Attic-Nar-Info": json.dumps(header),
            "Content-Type": "application/octet-stream",
        },
    )
    result = result if isinstance(result, dict) else {}
    if result.get("kind") == "Deduplicated":
        detail = "deduplicated"
    else:
        speed = int(len(nar) / max(time.monotonic() - started, 1e-6))
        detail = f"{human_bytes(speed)}/s"
        frac = result.get("frac_deduplicated")
        if isinstance(frac, int | float) and frac > 0.01:
            detail += f", {frac * 100:.1f}% deduplicated"
    return f"\u2705 {Path(path).name} ({detail})"


def _stdin_roots() -> list[str]:
    """`push_stdin`: one path per line, empty lines skipped, each followed to its store path."""
    return [_follow(line) for line in sys.stdin.read().splitlines() if line]


def _follow(path: str) -> str:
    """`NixStore::follow_store_path`: a symlink such as ./result resolves into the store."""
    return path if path.startswith("/nix/store/") else os.path.realpath(path)


@dataclass(frozen=True)
class PushPlan:
    """`PushPlan::plan` (client/src/push.rs): the closure, less the paths signed by one of
    the cache's upstream keys, less those the server already has."""

    todo: list[dict[str, Any]]
    num_all: int
    already_cached: int
    upstream: int


def _plan(
    server: Server, endpoint: str, cache: str, conf: dict[str, Any], roots: list[str], args: Any
) -> PushPlan:
    infos = _path_infos(roots, closure=not args.no_closure) if roots else []
    upstream_names = [] if args.ignore_upstream_cache_filter else conf["upstream_cache_key_names"]
    candidates = [
        i
        for i in infos
        if not {s.partition(":")[0] for s in i.get("signatures", [])} & set(upstream_names)
    ]
    hashes = [Path(i["path"]).name[:32] for i in candidates]
    missing: set[str] = set()
    if hashes:
        body = {"cache": cache, "store_path_hashes": hashes}
        answer = api(server, "POST", "_api/v1/get-missing-paths", body, endpoint=endpoint)
        missing = set(answer["missing_paths"])
    todo = [i for i in candidates if Path(i["path"]).name[:32] in missing]
    return PushPlan(todo, len(infos), len(candidates) - len(todo), len(infos) - len(candidates))


def cmd_push(args: argparse.Namespace) -> int:
    """`attic push` (client/src/command/push.rs): with paths (`push_static`) it says what it
    plans; with --stdin (`push_stdin`) it prints only the per-path result lines, and nothing
    when nothing needs uploading."""
    if args.jobs == 0:
        raise ClientError("PushError", "The number of jobs cannot be 0")
    server, cache = resolve(args.cache)
    conf = api(server, "GET", f"_api/v1/cache-config/{cache}")
    endpoint = str(conf.get("api_endpoint") or server.endpoint)  # the delegated endpoint
    if args.stdin:
        plan = _plan(server, endpoint, cache, conf, _stdin_roots(), args)
        return _push_all(server, endpoint, cache, plan.todo, args.jobs)
    if not args.paths:
        print("\U0001f937 Nothing specified.", file=sys.stderr)
        if not sys.stdin.isatty():
            print(
                "Hint: Pass --stdin to read the list of store paths from standard input.",
                file=sys.stderr,
            )
        return 0
    plan = _plan(server, endpoint, cache, conf, [_follow(p) for p in args.paths], args)
    if not plan.todo:
        if plan.num_all == 0:
            print("\U0001f937 Nothing selected.", file=sys.stderr)
        else:
            print(
                f"\u2705 All done! ({plan.already_cached} already cached, "
                f"{plan.upstream} in upstream)",
                file=sys.stderr,
            )
        return 0
    print(
        f'\u2699\ufe0f Pushing {len(plan.todo)} paths to "{cache}" on "{server.name}" '
        f"({plan.already_cached} already cached, {plan.upstream} in upstream)...",
        file=sys.stderr,
        flush=True,
    )
    return _push_all(server, endpoint, cache, plan.todo, args.jobs)


def _push_all(
    server: Server, endpoint: str, cache: str, todo: list[dict[str, Any]], jobs: int
) -> int:
    """Upload with `jobs` workers; each result line as it comes. A failure makes the command
    fail with that error (`results.into_values().collect::<Result<…>>()?`)."""
    errors: list[ClientError] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [(i["path"], pool.submit(_upload, server, endpoint, cache, i)) for i in todo]
        for path, fut in futures:
            try:
                print(fut.result(), file=sys.stderr, flush=True)
            except ClientError as exc:
                errors.append(exc)
                print(f"\u274c {Path(path).name}: {exc}", file=sys.stderr, flush=True)
    if errors:
        raise errors[0]
    return 0


# ---------------------------------------------------------------------------- argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attic")
    sub = parser.add_subparsers(dest="command", required=True)
    login = sub.add_parser("login")
    login.add_argument("name")
    login.add_argument("endpoint")
    login.add_argument("token", nargs="?")
    login.add_argument("--set-default", action="store_true")
    login.set_defaults(func=cmd_login)

    cache = sub.add_parser("cache").add_subparsers(dest="cache_command", required=True)
    create = cache.add_parser("create")
    create.add_argument("cache")
    create.add_argument("--public", action="store_true")
    create.add_argument("--priority", type=int, default=41)
    create.add_argument("--upstream-cache-key-name", action="append", default=[])
    create.set_defaults(func=cmd_cache_create)
    configure = cache.add_parser("configure")
    configure.add_argument("cache")
    vis = configure.add_mutually_exclusive_group()
    vis.add_argument("--public", action="store_true")
    vis.add_argument("--private", action="store_true")
    configure.add_argument("--priority", type=int)
    ret = configure.add_mutually_exclusive_group()
    ret.add_argument("--retention-period", type=_seconds)
    ret.add_argument("--reset-retention-period", action="store_true")
    configure.add_argument("--regenerate-keypair", action="store_true")
    configure.add_argument("--upstream-cache-key-name", action="append", default=[])
    configure.set_defaults(func=cmd_cache_configure)
    info = cache.add_parser("info")
    info.add_argument("cache")
    info.set_defaults(func=cmd_cache_info)
    destroy = cache.add_parser("destroy")
    destroy.add_argument("cache")
    destroy.add_argument("--no-confirm", action="store_true")
    destroy.set_defaults(func=cmd_cache_destroy)

    push = sub.add_parser("push")
    push.add_argument("cache")
    push.add_argument("paths", nargs="*")
    push.add_argument("--stdin", action="store_true")
    push.add_argument("--no-closure", action="store_true")
    push.add_argument("--ignore-upstream-cache-filter", action="store_true")
    push.add_argument("--force-preamble", action="store_true", help=argparse.SUPPRESS)
    push.add_argument("-j", "--jobs", type=int, default=5)
    push.set_defaults(func=cmd_push)
    return parser


def _seconds(text: str) -> int:
    from runbook.lab.attic.token import parse_duration

    return parse_duration(text)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "stdin", False) and args.paths:
        parser.error("the argument '--stdin' cannot be used with '[PATHS]...'")
    try:
        return int(args.func(args))
    except ClientError as exc:
        print(f"Error: {exc.name}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
