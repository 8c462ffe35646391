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


def _upload(server: Server, endpoint: str, cache: str, info: dict[str, Any]) -> str:
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
    api(
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
    rate = len(nar) / (1 << 20) / max(time.monotonic() - started, 1e-6)
    return f"\u2705 {Path(path).name} ({rate:.2f} MiB/s)"


def _roots(args: argparse.Namespace) -> list[str]:
    raw = sys.stdin.read().split() if args.stdin else list(args.paths)
    return [os.path.realpath(p) if not p.startswith("/nix/store/") else p for p in raw]


def cmd_push(args: argparse.Namespace) -> int:
    if args.jobs == 0:
        raise ClientError("PushError", "The number of jobs cannot be 0")
    server, cache = resolve(args.cache)
    conf = api(server, "GET", f"_api/v1/cache-config/{cache}")
    endpoint = str(conf["api_endpoint"])  # push uses the endpoint the server returns (§4)
    roots = _roots(args)
    infos = _path_infos(roots, closure=not args.no_closure) if roots else []
    upstream_names = [] if args.ignore_upstream_cache_filter else conf["upstream_cache_key_names"]
    candidates, in_upstream = [], 0
    for info in infos:
        sig_names = {s.partition(":")[0] for s in info.get("signatures", [])}
        if sig_names & set(upstream_names):
            in_upstream += 1
        else:
            candidates.append(info)
    hashes = [Path(i["path"]).name[:32] for i in candidates]
    missing = (
        set(
            api(
                server,
                "POST",
                "_api/v1/get-missing-paths",
                {"cache": cache, "store_path_hashes": hashes},
                endpoint=endpoint,
            )["missing_paths"]
        )
        if hashes
        else set()
    )
    todo = [i for i in candidates if Path(i["path"]).name[:32] in missing]
    cached = len(candidates) - len(todo)
    if not todo:
        print(
            f"\u2705 All done! ({cached} already cached, {in_upstream} in upstream)",
            file=sys.stderr,
        )
        return 0
    print(
        f'\u2699\ufe0f Pushing {len(todo)} paths to "{cache}" on "{server.name}" '
        f"({cached} already cached, {in_upstream} in upstream)...",
        file=sys.stderr,
        flush=True,
    )
    return _push_all(server, endpoint, cache, todo, args.jobs)


def _push_all(
    server: Server, endpoint: str, cache: str, todo: list[dict[str, Any]], jobs: int
) -> int:
    failed = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [(i["path"], pool.submit(_upload, server, endpoint, cache, i)) for i in todo]
        for path, fut in futures:
            try:
                print(fut.result(), file=sys.stderr, flush=True)
            except ClientError as exc:
                failed += 1
                print(f"\u274c {Path(path).name}: {exc}", file=sys.stderr, flush=True)
    if failed:
        raise ClientError("PushError", f"Failed to push {failed} paths")
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
