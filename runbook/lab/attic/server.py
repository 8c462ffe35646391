"""The atticd stand-in: attic's HTTP API and a real Nix binary cache (attic.md §5, §6).

Command line (as the NixOS unit runs it, attic.md §3):
    atticd [-f CONFIG] [--mode monolithic|check-config] [-l LISTEN]
           [--env-file FILE] [--pid-file FILE]
`--env-file`/`--pid-file` are stand-in additions for the lab's systemctl (EnvironmentFile=,
PIDFile=). It runs in the foreground until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Final

from runbook.lab.attic import config as cfg
from runbook.lab.attic.state import (
    CACHE_NAME_RE,
    CacheRecord,
    PathObject,
    Store,
    generate_keypair,
)
from runbook.lab.attic.token import CachePermission, Token, decode_token

logger: Final = logging.getLogger(__name__)

ROOT_HTML: Final = (
    b"<!DOCTYPE html>\n<html><body><p>Attic Binary Cache (stand-in)</p></body></html>\n"
)
# Error names and messages of `server/src/error.rs` (attic.md §4, §5).
ERRORS: Final = {
    "Unauthorized": (401, "Unauthorized."),
    "AccessError": (403, "Access error: User does not have permission to complete this action."),
    "NoSuchCache": (404, "The requested cache does not exist."),
    "NoSuchObject": (404, "The requested object does not exist."),
    "CacheAlreadyExists": (400, "The cache already exists."),
    "RequestError": (400, "Bad request."),
    "NotFound": (404, "Not found."),
}
_NARINFO_RE: Final = re.compile(r"^/([^/]+)/([0-9a-df-np-sv-z]{32})\.narinfo$")
_NAR_RE: Final = re.compile(r"^/([^/]+)/nar/([0-9a-df-np-sv-z]{32})\.nar$")
_STORE_HASH_RE: Final = re.compile(r"^[0-9a-df-np-sv-z]{32}$")  # attic/src/nix_store/mod.rs


class ApiError(Exception):
    def __init__(self, name: str, message: str | None = None) -> None:
        self.status, default = ERRORS[name]
        self.name = name
        self.message = message or default
        super().__init__(self.message)


class AtticServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        family: int,
        conf: cfg.ServerConfig,
        signing: cfg.SigningKeys,
    ) -> None:
        self.address_family = family
        self.conf = conf
        self.signing = signing
        self.store = Store(conf.state_dir, conf.storage_dir)
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Handler(BaseHTTPRequestHandler):
    server: AtticServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------------ plumbing

    def _send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: object, status: int = 200, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", extra)

    def _error(self, err: ApiError) -> None:
        if int(self.headers.get("Content-Length") or 0) and not getattr(self, "_body_read", False):
            self.close_connection = True  # the body was not read; do not reuse the socket
        body = {"code": err.status, "error": err.name, "message": err.message}
        self._json(body, err.status)

    def _body(self) -> bytes:
        self._body_read = True
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token(self) -> Token | None:
        """Bearer or Basic (password = JWT); a bad token is ignored silently (attic.md §2)."""
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        jwt = ""
        if scheme.lower() == "bearer":
            jwt = value.strip()
        elif scheme.lower() == "basic":
            try:
                jwt = base64.b64decode(value.strip()).decode().partition(":")[2]
            except ValueError:
                return None
        if not jwt:
            return None
        try:
            return decode_token(jwt, self.server.signing.public)
        except ValueError as exc:
            logger.debug("Ignoring bad JWT token: %s", exc)
            return None

    def _permission(self, cache: str) -> CachePermission:
        token = self._token()
        return token.permission_for(cache) if token else CachePermission()

    def _auth_cache(self, name: str, need: tuple[str, ...]) -> CacheRecord:
        """attic's `auth_cache`: no discover -> 401, missing -> 404, lacking -> 403 (attic.md §5)."""
        perm = self._permission(name)
        cache = self.server.store.get_cache(name)
        if cache is None:
            raise ApiError("NoSuchCache" if perm.can_discover() else "Unauthorized")
        if cache.is_public:
            perm.pull = True
        if not all(getattr(perm, n) for n in need):
            raise ApiError("AccessError" if perm.can_discover() else "Unauthorized")
        return cache

    def _api_endpoint(self) -> str:
        if self.server.conf.api_endpoint:
            return self.server.conf.api_endpoint
        proto = "https" if self.headers.get("X-Forwarded-Proto") == "https" else "http"
        return f"{proto}://{self.headers.get('Host', 'localhost')}/"

    def _dispatch(self) -> None:
        allowed = self.server.conf.allowed_hosts
        if allowed and self.headers.get("Host") not in allowed:
            self._error(ApiError("RequestError", "Bad Host"))
            return
        path = self.path.split("?", 1)[0]
        try:
            route = self._route(self.command, path)
            route()
        except ApiError as err:
            self._error(err)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch  # noqa: N815

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, path: str) -> Any:
        read = method in ("GET", "HEAD")
        if path == "/" and read:
            return lambda: self._send(200, ROOT_HTML, "text/html; charset=utf-8")
        if path.startswith("/_api/v1/cache-config/"):
            name = path[len("/_api/v1/cache-config/") :]
            table = {
                "GET": self._get_config,
                "HEAD": self._get_config,
                "POST": self._create_cache,
                "PATCH": self._configure_cache,
                "DELETE": self._destroy_cache,
            }
            if method in table:
                return lambda: table[method](name)
        if path == "/_api/v1/get-missing-paths" and method == "POST":
            return self._missing_paths
        if path == "/_api/v1/upload-path" and method == "PUT":
            return self._upload_path
        parts = path.strip("/").split("/")
        if read and len(parts) == 2 and parts[1] == "nix-cache-info":
            return lambda: self._nix_cache_info(parts[0])
        if read and len(parts) == 2 and parts[1] == "attic-cache-info":
            return lambda: self._get_config(parts[0])
        if read and (m := _NARINFO_RE.match(path)):
            return lambda: self._narinfo(m.group(1), m.group(2))
        if read and (m := _NAR_RE.match(path)):
            return lambda: self._nar(m.group(1), m.group(2))
        raise ApiError("NotFound")

    def _visibility(self, cache: CacheRecord) -> dict[str, str]:
        return {"X-Attic-Cache-Visibility": "public"} if cache.is_public else {}

    def _config_json(self, cache: CacheRecord) -> dict[str, Any]:
        api = self._api_endpoint()
        retention: Any = (
            "Global" if cache.retention_period is None else {"Period": cache.retention_period}
        )
        return {
            "substituter_endpoint": api + cache.name,
            "api_endpoint": api,
            "public_key": cache.public_key(),
            "is_public": cache.is_public,
            "store_dir": cache.store_dir,
            "priority": cache.priority,
            "upstream_cache_key_names": cache.upstream_cache_key_names,
            "retention_period": retention,
        }

    def _get_config(self, name: str) -> None:
        cache = self._auth_cache(name, ("pull",))
        self._json(self._config_json(cache), extra=self._visibility(cache))

    def _create_cache(self, name: str) -> None:
        body = _json_body(self._body())
        perm = self._permission(name)
        if not perm.create_cache:
            raise ApiError("AccessError" if perm.can_discover() else "Unauthorized")
        if not CACHE_NAME_RE.match(name):
            raise ApiError("RequestError", f"Invalid cache name {name!r}")
        if self.server.store.get_cache(name) is not None:
            raise ApiError("CacheAlreadyExists")
        cache = CacheRecord(
            name=name,
            keypair=generate_keypair(name),
            is_public=bool(body.get("is_public", False)),
            store_dir=str(body.get("store_dir", "/nix/store")),
            priority=int(body.get("priority", 41)),
            upstream_cache_key_names=list(
                body.get("upstream_cache_key_names", ["cache.nixos.org-1"])
            ),
        )
        self.server.store.put_cache(cache)
        self._json({})

    def _configure_cache(self, name: str) -> None:
        body = _json_body(self._body())
        need = ("configure_cache",) + (
            ("configure_cache_retention",) if "retention_period" in body else ()
        )
        cache = self._auth_cache(name, need)
        changed = _apply_patch(cache, body)
        if not changed:
            raise ApiError("RequestError", "No modifiable fields were set.")
        self.server.store.put_cache(cache)
        self._json({})

    def _destroy_cache(self, name: str) -> None:
        self._auth_cache(name, ("destroy_cache",))
        self.server.store.delete_cache(name)
        self._json({})

    def _nix_cache_info(self, name: str) -> None:
        cache = self._auth_cache(name, ("pull",))
        body = f"WantMassQuery: 1\nStoreDir: {cache.store_dir}\nPriority: {cache.priority}\n"
        self._send(200, body.encode(), "text/x-nix-cache-info", self._visibility(cache))

    def _lookup(self, name: str, store_hash: str) -> tuple[CacheRecord, PathObject]:
        # The object lookup runs before the auth check: unknown -> 404 even anonymously (§5).
        obj = self.server.store.get_object(name, store_hash)
        if obj is None:
            raise ApiError("NoSuchObject")
        return self._auth_cache(name, ("pull",)), obj

    def _narinfo(self, name: str, store_hash: str) -> None:
        cache, obj = self._lookup(name, store_hash)
        self._send(200, obj.narinfo(cache).encode(), "text/x-nix-narinfo", self._visibility(cache))

    def _nar(self, name: str, store_hash: str) -> None:
        _, obj = self._lookup(name, store_hash)
        nar = self.server.store.nar_path(obj.nar_hash)
        if not nar.exists():
            raise ApiError("NoSuchObject")
        data = nar.read_bytes() if self.command == "GET" else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-nix-nar")
        self.send_header("Content-Length", str(nar.stat().st_size))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)

    def _missing_paths(self) -> None:
        """zhaofengli/attic `server/src/api/v1/get_missing_paths.rs`: the body is axum's
        `Json<GetMissingPathsRequest>` (`attic/src/api/v1/get_missing_paths.rs`), so a body
        that is not `application/json` gets 415 and one whose hashes are not valid
        `StorePathHash`es (32 nix-base32 characters) 422, both as plain text before any
        auth; then push permission; the answer lists the requested hashes the cache lacks."""
        raw = self._body()
        if self.headers.get_content_type() != "application/json":
            self._plain(415, "Expected request with `Content-Type: application/json`")
            return
        body = _json_body(raw)
        hashes = body.get("store_path_hashes")
        name = body.get("cache")
        if not isinstance(name, str) or not isinstance(hashes, list):
            self._plain(422, "Failed to deserialize the JSON body into the target type")
            return
        bad = [h for h in hashes if not isinstance(h, str) or not _STORE_HASH_RE.match(h)]
        if bad:
            self._plain(
                422,
                "Failed to deserialize the JSON body into the target type: "
                f"store_path_hashes: Invalid store path hash {bad[0]!r}",
            )
            return
        self._auth_cache(name, ("push",))
        wanted = sorted(set(hashes))  # a HashSet upstream: each hash once
        missing = [h for h in wanted if self.server.store.get_object(name, h) is None]
        self._json({"missing_paths": missing})

    def _plain(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _upload_path(self) -> None:
        try:
            info = json.loads(self.headers.get("X-Attic-Nar-Info", ""))
        except ValueError:
            raise ApiError("RequestError", "Missing or invalid X-Attic-Nar-Info header") from None
        cache = self._auth_cache(str(info.get("cache", "")), ("push",))
        length = int(self.headers.get("Content-Length") or 0)
        self._body_read = True
        nar_hash, size, existed = self.server.store.receive_nar(self.rfile, length)  # type: ignore[arg-type]
        claimed = str(info.get("nar_hash", ""))
        if nar_hash != claimed or size != int(info.get("nar_size", -1)):
            if not existed:
                self.server.store.nar_path(nar_hash).unlink(missing_ok=True)
            raise ApiError("RequestError", "Bad NAR Hash or Size")
        obj = PathObject(
            store_path=str(info["store_path"]),
            nar_hash=nar_hash,
            nar_size=size,
            references=[str(r).rsplit("/", 1)[-1] for r in info.get("references", [])],
            deriver=(str(info["deriver"]).rsplit("/", 1)[-1] if info.get("deriver") else None),
            sigs=[str(s) for s in info.get("sigs", [])],
            ca=info.get("ca"),
        )
        self.server.store.put_object(cache.name, obj)
        kind = "Deduplicated" if existed else "Uploaded"
        self._json({"kind": kind, "file_size": size, "frac_deduplicated": 1.0 if existed else 0.0})


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError("RequestError", "Request body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError("RequestError", "Request body is not a JSON object")
    return data


def _apply_patch(cache: CacheRecord, body: dict[str, Any]) -> bool:
    changed = False
    if "is_public" in body:
        cache.is_public, changed = bool(body["is_public"]), True
    if "priority" in body:
        cache.priority, changed = int(body["priority"]), True
    if "store_dir" in body:
        cache.store_dir, changed = str(body["store_dir"]), True
    if "upstream_cache_key_names" in body:
        cache.upstream_cache_key_names = [str(k) for k in body["upstream_cache_key_names"]]
        changed = True
    if body.get("keypair") == "Generate":
        cache.keypair, changed = generate_keypair(cache.name), True
    if "retention_period" in body:
        period = body["retention_period"]
        cache.retention_period = int(period["Period"]) if isinstance(period, dict) else None
        changed = True
    return changed


def parse_listen(listen: str) -> tuple[str, int, int]:
    """`[::]:8080` / `0.0.0.0:8080` / `host:port` -> (host, port, family)."""
    if listen.startswith("["):
        host, _, port = listen[1:].partition("]:")
        return host, int(port), socket.AF_INET6
    host, _, port = listen.rpartition(":")
    return host, int(port), socket.AF_INET6 if ":" in host else socket.AF_INET


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atticd")
    parser.add_argument("-f", "--config", help="server.toml")
    parser.add_argument(
        "--mode",
        default="monolithic",
        choices=["monolithic", "api-server", "garbage-collector", "check-config", "db-migrations"],
    )
    parser.add_argument("-l", "--listen")
    parser.add_argument("--env-file", help="stand-in: load this like systemd's EnvironmentFile=")
    parser.add_argument("--pid-file", help="stand-in: write the pid here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("ATTICD_STANDIN_DEBUG") else logging.INFO,
        format="%(message)s",
    )
    cfg.load_env_file(args.env_file)
    conf = cfg.load_config(args.config, args.listen)
    signing = cfg.load_signing_keys(conf.raw)
    if args.mode == "check-config":
        return 0
    host, port, family = parse_listen(conf.listen)
    try:
        server = AtticServer((host, port), family, conf, signing)
    except OSError as exc:
        if family != socket.AF_INET6 or host not in ("::", ""):
            raise
        logger.info("IPv6 unavailable (%s); listening on 0.0.0.0:%d", exc, port)
        server = AtticServer(("0.0.0.0", port), socket.AF_INET, conf, signing)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host!s}]" if family == socket.AF_INET6 else str(bound_host)
    print(f"Listening on {shown}:{bound_port}...", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
