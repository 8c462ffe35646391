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
import re
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

from runbook.cache import keys
from runbook.core.secrets import write_private

NIX_FLAGS: Final = ["--extra-experimental-features", "nix-command"]


class ClientError(Exception):
    """Printed as `Error: <name>: <message>` for an API error (attic.md §4), or as
    `Error: <message>` for the client's own anyhow errors (`name` empty)."""

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message
        super().__init__(f"{name}: {message}" if name else message)


# ---------------------------------------------------------------------------- config file
#
# zhaofengli/attic `client/src/config.rs`: `$XDG_CONFIG_HOME/attic/config.toml` (the xdg crate:
# XDG_CONFIG_HOME when absolute, else $HOME/.config), read whole, UTF-8, TOML into
# `ConfigData { default-server: Option<ServerName>, servers: HashMap<ServerName, ServerConfig> }`.
# `ServerConfig { endpoint: String, #[serde(flatten)] token: Option<ServerTokenConfig> }`, the
# token `untagged`: `{ token }` tried first, then `{ token-file }` (read and trimmed when a
# command builds its API client, `ServerTokenConfig::get`). serde's flatten of an Option gives
# None when the inner value does not deserialize, so a token of the wrong type is no token.
# Unknown keys are ignored (no deny_unknown_fields). Server names are cache names
# (`client/src/cache.rs` `ServerName(CacheName)`; `attic/src/cache.rs` CACHE_NAME_REGEX).

NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-_+]{0,49}$")
_URL_SCHEME_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def config_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg.startswith("/") else Path.home() / ".config"
    return base / "attic" / "config.toml"


@dataclass(frozen=True)
class ServerEntry:
    endpoint: str
    token: str | None = None  # `ServerTokenConfig::Raw`
    token_file: str | None = None  # `ServerTokenConfig::File`


@dataclass
class Config:
    default_server: str | None
    servers: dict[str, ServerEntry]


def _type_error(value: object, expected: str) -> ClientError:
    kinds = {bool: "boolean", int: "integer", float: "floating point", list: "sequence"}
    kind = "map" if isinstance(value, dict) else kinds.get(type(value), "string")
    return ClientError("", f"invalid type: {kind}, expected {expected}")


def _server_name(value: object) -> str:
    """`CacheName::deserialize`: a string matching the cache-name pattern."""
    if not isinstance(value, str):
        raise _type_error(value, "a string")
    if not NAME_RE.match(value):
        raise ClientError("", f'Invalid cache name "{value}"')  # AtticError::InvalidCacheName
    return value


def _server_entry(raw: object) -> ServerEntry:
    if not isinstance(raw, dict):
        raise _type_error(raw, "struct ServerConfig")
    if "endpoint" not in raw:
        raise ClientError("", "missing field `endpoint`")
    if not isinstance(raw["endpoint"], str):
        raise _type_error(raw["endpoint"], "a string")
    token, token_file = raw.get("token"), raw.get("token-file")
    if isinstance(token, str):  # untagged: Raw first
        return ServerEntry(raw["endpoint"], token=token)
    if isinstance(token_file, str):
        return ServerEntry(raw["endpoint"], token_file=token_file)
    return ServerEntry(raw["endpoint"])  # flatten Option: None when neither deserializes


def load_config() -> Config:
    """`ConfigData::load_from_path`: no file is an empty config; anything else must parse."""
    path = config_path()
    if not path.exists():
        return Config(None, {})
    raw = path.read_bytes()
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:  # std::str::from_utf8's Utf8Error
        raise ClientError(
            "", f"invalid utf-8 sequence of {exc.end - exc.start} bytes from index {exc.start}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClientError("", f"TOML parse error: {exc}") from None
    default = data.get("default-server")
    servers_raw = data.get("servers", {})
    if not isinstance(servers_raw, dict):
        raise _type_error(servers_raw, "a map")
    servers = {_server_name(k): _server_entry(v) for k, v in servers_raw.items()}
    return Config(_server_name(default) if default is not None else None, servers)


def save_config(conf: Config) -> None:
    """`Config::save`: `toml::to_string(ConfigData)`, mode 0600 (`FILE_MODE`)."""
    lines = []
    if conf.default_server is not None:
        lines.append(f"default-server = {json.dumps(conf.default_server)}")
    for name, server in conf.servers.items():
        lines += ["", f"[servers.{name}]", f"endpoint = {json.dumps(server.endpoint)}"]
        if server.token is not None:
            lines.append(f"token = {json.dumps(server.token)}")
        elif server.token_file is not None:
            lines.append(f"token-file = {json.dumps(server.token_file)}")
    write_private(config_path(), ("\n".join(lines) + "\n").encode())


@dataclass(frozen=True)
class Server:
    name: str
    endpoint: str
    token: str | None


def cache_ref(text: str) -> tuple[str | None, str]:
    """`CacheRef::from_str` (client/src/cache.rs): the whole string as a cache name, else
    `server:cache` split at the first colon, both valid names; else "Invalid cache reference"
    (a clap value error, exit 2)."""
    if NAME_RE.match(text):
        return None, text
    server, sep, cache = text.partition(":")
    if sep and NAME_RE.match(server) and NAME_RE.match(cache):
        return server, cache
    raise argparse.ArgumentTypeError("Invalid cache reference")


def resolve(ref: tuple[str | None, str]) -> tuple[Server, str]:
    """`ConfigData::resolve_cache` and `default_server`, then the token as
    `ApiClient::from_server_config` reads it (`ServerConfig::token`) and the endpoint as it
    parses it (`Url::parse`)."""
    conf = load_config()
    server_name, cache = ref
    if server_name is not None:
        if server_name not in conf.servers:
            raise ClientError("", f'Server "{server_name}" does not exist')
    elif conf.default_server is not None:
        server_name = conf.default_server
        if server_name not in conf.servers:
            raise ClientError("", f'Configured default server "{server_name}" does not exist')
    elif conf.servers:
        server_name = next(iter(conf.servers))  # a HashMap's first: any of them upstream
    else:
        raise ClientError("", "No servers are available.")
    entry = conf.servers[server_name]
    token = entry.token
    if entry.token_file is not None:
        try:
            token = Path(entry.token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "stream did not contain valid UTF-8"
            raise ClientError(
                "", f"Failed to read token from {entry.token_file}\n\nCaused by:\n    {why}"
            ) from None
    if not _URL_SCHEME_RE.match(entry.endpoint):
        raise ClientError("", "relative URL without a base")  # url::ParseError
    return Server(server_name, entry.endpoint, token), cache


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
    """`client/src/command/login.rs`: loads the config (a broken one fails here too), then
    overwrites the endpoint and, only when one is given, the token of an existing server,
    or adds a new one; default when `--set-default` or the only server. No request is sent.
    The token may come from ATTIC_LOGIN_TOKEN (clap `env`)."""
    conf = load_config()
    token = args.token if args.token is not None else os.environ.get("ATTIC_LOGIN_TOKEN")
    old = conf.servers.get(args.name)
    if old is not None:
        print(f'\u270d\ufe0f Overwriting server "{args.name}"', file=sys.stderr)
        keep = (old.token, old.token_file) if token is None else (token, None)
        conf.servers[args.name] = ServerEntry(args.endpoint, *keep)
    else:
        print(f'\u270d\ufe0f Configuring server "{args.name}"', file=sys.stderr)
        conf.servers[args.name] = ServerEntry(args.endpoint, token=token)
    if args.set_default or len(conf.servers) == 1:
        conf.default_server = args.name
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
    login.add_argument("name", type=_login_name)
    login.add_argument("endpoint")
    login.add_argument("token", nargs="?")
    login.add_argument("--set-default", action="store_true")
    login.set_defaults(func=cmd_login)

    cache = sub.add_parser("cache").add_subparsers(dest="cache_command", required=True)
    create = cache.add_parser("create")
    create.add_argument("cache", type=cache_ref)
    create.add_argument("--public", action="store_true")
    create.add_argument("--priority", type=int, default=41)
    create.add_argument("--upstream-cache-key-name", action="append", default=[])
    create.set_defaults(func=cmd_cache_create)
    configure = cache.add_parser("configure")
    configure.add_argument("cache", type=cache_ref)
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
    info.add_argument("cache", type=cache_ref)
    info.set_defaults(func=cmd_cache_info)
    destroy = cache.add_parser("destroy")
    destroy.add_argument("cache", type=cache_ref)
    destroy.add_argument("--no-confirm", action="store_true")
    destroy.set_defaults(func=cmd_cache_destroy)

    push = sub.add_parser("push")
    push.add_argument("cache", type=cache_ref)
    push.add_argument("paths", nargs="*")
    push.add_argument("--stdin", action="store_true")
    push.add_argument("--no-closure", action="store_true")
    push.add_argument("--ignore-upstream-cache-filter", action="store_true")
    push.add_argument("--force-preamble", action="store_true", help=argparse.SUPPRESS)
    push.add_argument("-j", "--jobs", type=int, default=5)
    push.set_defaults(func=cmd_push)
    return parser


def _login_name(text: str) -> str:
    if not NAME_RE.match(text):
        raise argparse.ArgumentTypeError(f'Invalid cache name "{text}"')
    return text


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
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
