"""The Attic client side: argv builders, output parsers and a binary-cache verifier.

Pure functions over the commands the handbook runs on the cache VM ("Attic 缓存管理"):
`atticd-atticadm make-token`, `attic login`, `attic cache create|configure|info`,
`attic push`; and `verify_cache`, which checks a cache over HTTP the way Nix would.
Formats, flags and messages: /work/shared/reference/attic.md (cited per function).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from runbook.cache import keys
from runbook.core.errors import InputError, RunbookError
from runbook.core.secrets import Secret

logger: Final = logging.getLogger(__name__)

DEFAULT_CACHE: Final = "main"
DEFAULT_SERVER: Final = "local"
DEFAULT_JOBS: Final = 5  # attic push default (attic.md §4)
_JWT_RE: Final = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class AtticOutputError(RunbookError):
    """An attic command printed something this module cannot read."""


# ---------------------------------------------------------------------------- make-token


@dataclass(frozen=True)
class TokenPermissions:
    """Cache patterns per permission flag of `atticadm make-token` (attic.md §3).

    The defaults are the handbook's admin token: every permission on `*` except delete.
    """

    pull: tuple[str, ...] = ("*",)
    push: tuple[str, ...] = ("*",)
    delete: tuple[str, ...] = ()
    create_cache: tuple[str, ...] = ("*",)
    configure_cache: tuple[str, ...] = ("*",)
    # `attic cache configure` always sends retention_period, so --public needs it (§4, #144).
    configure_cache_retention: tuple[str, ...] = ("*",)
    destroy_cache: tuple[str, ...] = ("*",)

    def flags(self) -> list[str]:
        argv: list[str] = []
        for name in (
            "pull",
            "push",
            "delete",
            "create_cache",
            "configure_cache",
            "configure_cache_retention",
            "destroy_cache",
        ):
            for pattern in getattr(self, name):
                argv += ["--" + name.replace("_", "-"), pattern]
        return argv


def make_token_argv(
    sub: str = "admin",
    validity: str = "10y",
    permissions: TokenPermissions | None = None,
) -> list[str]:
    """`atticd-atticadm make-token ...` as in the handbook; run it as root with stdin </dev/null."""
    perms = permissions or TokenPermissions()
    return ["atticd-atticadm", "make-token", "--sub", sub, "--validity", validity, *perms.flags()]


def parse_make_token_output(stdout: str) -> Secret:
    """The token from make-token's output: `systemd-run --pty` adds `\\r` (attic.md §3)."""
    lines = [ln.strip() for ln in stdout.replace("\r", "").splitlines() if ln.strip()]
    if not lines or not _JWT_RE.match(lines[-1]):
        raise AtticOutputError(
            f"atticd-atticadm make-token printed no token ({len(lines)} non-empty lines; "
            "expected one JWT line)"
        )
    return Secret(lines[-1], "attic token")


# ---------------------------------------------------------------------------- login + cache


# `client/src/config.rs`: `$XDG_CONFIG_HOME/attic/config.toml`, where the xdg crate takes
# XDG_CONFIG_HOME only when it is absolute and falls back to $HOME/.config. Resolved on the
# host, under the same sudo the client runs with, so the file written is the one it reads.
CLIENT_CONFIG_PATH_SCRIPT: Final = (
    'h=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}\n'
    'case "${XDG_CONFIG_HOME:-}" in /*) d=$XDG_CONFIG_HOME ;; *) d=$h/.config ;; esac\n'
    "printf '%s\\n' \"$d/attic/config.toml\""
)
CLIENT_CONFIG_MODE: Final = 0o600  # `FILE_MODE` in client/src/config.rs
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-_+]{0,49}$")  # attic/src/cache.rs


def client_config(name: str, endpoint: str, token: Secret) -> Secret:
    """What `attic login NAME ENDPOINT TOKEN --set-default` leaves in a fresh config.toml
    (`client/src/command/login.rs`, serialized `ConfigData` of `client/src/config.rs`):
    `default-server`, then `[servers.NAME]` with `endpoint` and `token`. Written with
    `Connection.put` (mode 0600 from the first byte), the token never is in an argv."""
    if not _NAME_RE.match(name):
        raise InputError(f"attic server name {name!r}: expected [A-Za-z0-9][A-Za-z0-9-_+]{{0,49}}")
    if not _JWT_RE.match(token.reveal()):
        raise InputError("attic token: expected a JWT (three base64url parts)")
    # JSON string escapes are TOML basic-string escapes for this character set
    text = (
        f"default-server = {json.dumps(name)}\n\n"
        f"[servers.{name}]\n"
        f"endpoint = {json.dumps(endpoint)}\n"
        f"token = {json.dumps(token.reveal())}\n"
    )
    return Secret(text, "attic client config")


def client_config_shown(name: str, endpoint: str) -> str:
    """The config file as a plan shows it, the token masked."""
    return f'default-server = "{name}" [servers.{name}] endpoint = "{endpoint}" token = "*****"'


def cache_create_argv(cache: str = DEFAULT_CACHE, public: bool = False) -> list[str]:
    return ["attic", "cache", "create", cache, *(["--public"] * public)]


def cache_configure_argv(cache: str = DEFAULT_CACHE, public: bool | None = True) -> list[str]:
    vis = [] if public is None else ["--public" if public else "--private"]
    return ["attic", "cache", "configure", cache, *vis]


def cache_info_argv(cache: str = DEFAULT_CACHE) -> list[str]:
    return ["attic", "cache", "info", cache]


def is_cache_exists_error(stderr: str) -> bool:
    """`attic cache create` on an existing cache (exit 1), which a rerun treats as done (§4)."""
    return "CacheAlreadyExists" in stderr


@dataclass(frozen=True)
class CacheInfo:
    """`attic cache info` (printed on stderr, attic.md §4)."""

    public: bool
    public_key: str
    binary_cache_endpoint: str
    api_endpoint: str
    store_directory: str
    priority: int
    upstream_cache_keys: list[str]
    retention_period: int | None  # None = Global Default


def parse_cache_info(stderr: str) -> CacheInfo:
    """Parse the right-aligned `Label: value` lines; split on the first ': ' only (§4)."""
    values: dict[str, str] = {}
    for line in stderr.replace("\r", "").splitlines():
        label, sep, value = line.strip().partition(": ")
        if sep:
            values[label] = value.strip()
    needed = ("Public", "Public Key", "Binary Cache Endpoint", "API Endpoint")
    missing = [k for k in needed if k not in values]
    if missing:
        raise AtticOutputError(f"`attic cache info` output lacks {', '.join(missing)} (on stderr)")
    keys.parse_public_key(values["Public Key"])
    retention = values.get("Retention Period", "Global Default")
    try:
        upstream = json.loads(values.get("Upstream Cache Keys", "[]"))
    except ValueError:
        upstream = []
    return CacheInfo(
        public=values["Public"] == "true",
        public_key=values["Public Key"],
        binary_cache_endpoint=values["Binary Cache Endpoint"],
        api_endpoint=values["API Endpoint"],
        store_directory=values.get("Store Directory", "/nix/store"),
        priority=int(values.get("Priority", "41")),
        upstream_cache_keys=[str(k) for k in upstream],
        retention_period=None if retention == "Global Default" else int(retention),
    )


# ---------------------------------------------------------------------------- push


def push_argv(
    cache: str = DEFAULT_CACHE,
    paths: Sequence[str] = (),
    *,
    stdin: bool = True,
    jobs: int = DEFAULT_JOBS,
    ignore_upstream_filter: bool = False,
) -> list[str]:
    """`attic push CACHE --stdin -j N [--ignore-upstream-cache-filter]` (attic.md §4)."""
    if jobs < 1:
        raise InputError(f"jobs {jobs}: expected 1 or more (attic refuses 0)")
    if stdin and paths:
        raise InputError("attic push: --stdin cannot be combined with paths")
    argv = ["attic", "push", cache, *(["--stdin"] if stdin else list(paths)), "-j", str(jobs)]
    if ignore_upstream_filter:
        argv.append("--ignore-upstream-cache-filter")
    return argv


# How `attic push` reports each path (zhaofengli/attic `client/src/push.rs`, `upload_path`):
# `✅ <hash>-<name> (<speed>/s[, N% deduplicated])` or `✅ <hash>-<name> (deduplicated)` once a
# path is uploaded, `❌ <hash>-<name>: <error>` when it fails. The store path is printed as
# its base name (`StorePath::as_os_str`); a /nix/store/ prefix is accepted too.
_BASE_NAME: Final = r"(?:/nix/store/)?([0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+)"
_PUSHED_RE: Final = re.compile(r"^\s*\u2705 " + _BASE_NAME + r" \((.*)\)\s*$", re.MULTILINE)
_FAILED_RE: Final = re.compile(r"^\s*\u274c " + _BASE_NAME + r": (.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PushLines:
    """The per-path result lines of `attic push` (stderr). With `--stdin` these are all it
    prints: no `Pushing N paths` and no `All done` line, and nothing at all when nothing
    needed uploading (`client/src/command/push.rs`, `push_stdin`). No line says a size:
    `upload_path` prints the speed, or `deduplicated` when the server had the NAR (its
    progress bar, which shows bytes, is cleared: `bar.finish_and_clear()`)."""

    pushed: tuple[str, ...]  # base names
    failed: tuple[tuple[str, str], ...]  # (base name, error)
    deduplicated: tuple[str, ...] = ()  # base names the server had the NAR of already


def parse_push_lines(output: str) -> PushLines:
    text = output.replace("\r", "\n")
    pushed = [(m.group(1), m.group(2)) for m in _PUSHED_RE.finditer(text)]
    return PushLines(
        tuple(name for name, _ in pushed),
        tuple((m.group(1), m.group(2)) for m in _FAILED_RE.finditer(text)),
        tuple(name for name, detail in pushed if detail == "deduplicated"),
    )


@dataclass(frozen=True)
class PathInfo:
    """One path of `nix path-info --json`: its NAR size and its signatures' key names."""

    path: str
    nar_size: int
    signers: frozenset[str]


def parse_path_info_json(stdout: str) -> list[PathInfo]:
    """`nix path-info --json [-r] PATH…`: a list of `{path, narSize, signatures, …}` (Nix 2.8,
    src/libstore/store-api.cc `pathInfoToJSON`), or an object keyed by path (Nix ≥ 2.19,
    src/nix/path-info.cc); derivations left out (workers substitute outputs)."""
    try:
        data = json.loads(stdout)
    except ValueError:
        raise AtticOutputError("`nix path-info --json` printed no JSON") from None
    if isinstance(data, dict):
        entries = [{**v, "path": k} for k, v in data.items() if isinstance(v, dict)]
    elif isinstance(data, list):
        entries = [e for e in data if isinstance(e, dict)]
    else:
        raise AtticOutputError("`nix path-info --json` printed neither a list nor an object")
    found: list[PathInfo] = []
    for entry in entries:
        path, size = entry.get("path"), entry.get("narSize")
        if not isinstance(path, str) or not keys.is_store_path(path) or path.endswith(".drv"):
            continue
        if not isinstance(size, int):
            raise AtticOutputError(f"`nix path-info --json`: {path} has no narSize")
        sigs = entry.get("signatures") or []
        signers = frozenset(str(s).split(":", 1)[0] for s in sigs if isinstance(s, str))
        found.append(PathInfo(path, size, signers))
    return found


@dataclass(frozen=True)
class PushSent:
    """What one push sent: the paths it uploaded (their NARs, uncompressed, as
    `upload_path` streams them) and the ones the server deduplicated (no NAR sent)."""

    uploaded: int
    nar_bytes: int
    deduplicated: int

    def summary(self) -> str:
        return (
            f"sent {self.uploaded} paths, {self.nar_bytes} bytes of NAR "
            f"({human_bytes(self.nar_bytes)}); {self.deduplicated} deduplicated by the server"
        )


def push_sent(lines: PushLines, infos: Sequence[PathInfo]) -> PushSent:
    """Paths and bytes a push sent: each `✅` line but `(deduplicated)`, sized by its
    `narSize` (the push lines give no size)."""
    sizes = {i.path.rsplit("/", 1)[-1]: i.nar_size for i in infos}
    dedup = set(lines.deduplicated)
    sent = [name for name in lines.pushed if name not in dedup]
    unknown = [name for name in sent if name not in sizes]
    if unknown:
        raise AtticOutputError(f"attic push reported {unknown[0]}, which was not in the plan")
    return PushSent(len(sent), sum(sizes[name] for name in sent), len(dedup))


def human_bytes(n: int) -> str:
    """Binary prefixes, as attic shows sizes (indicatif `HumanBytes`)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


@dataclass(frozen=True)
class StorePathSigs:
    """One line of `nix path-info --all --sigs`: a store path and its signatures' key names."""

    path: str
    signers: frozenset[str]


def parse_path_info_sigs(stdout: str) -> list[StorePathSigs]:
    """`/nix/store/… sig1 sig2` per line; derivations left out (workers substitute outputs)."""
    found: list[StorePathSigs] = []
    for line in stdout.splitlines():
        cols = line.split()
        if not cols or not keys.is_store_path(cols[0]) or cols[0].endswith(".drv"):
            continue
        found.append(StorePathSigs(cols[0], frozenset(s.split(":", 1)[0] for s in cols[1:])))
    return found


def split_upstream(
    paths: Sequence[StorePathSigs | PathInfo],
    upstream_key_names: Sequence[str],
    *,
    ignore_filter: bool,
) -> tuple[list[str], list[str]]:
    """(eligible, skipped as in upstream), as attic's push plan filters: a path signed by one
    of the cache's `upstream_cache_key_names` is not uploaded (`PushPlan::plan`)."""
    upstream = set() if ignore_filter else set(upstream_key_names)
    eligible = [p.path for p in paths if not p.signers & upstream]
    skipped = [p.path for p in paths if p.signers & upstream]
    return eligible, skipped


class PushFailedError(RunbookError):
    """`attic push` failed, or left eligible paths out of the cache."""


@dataclass(frozen=True)
class PushVerdict:
    cache: str
    eligible: int
    pushed: int
    upstream: int
    upstream_keys: tuple[str, ...]

    def summary(self) -> str:
        keys_shown = ", ".join(self.upstream_keys) or "none"
        return (
            f"pushed {self.pushed} of {self.eligible} paths; "
            f"{self.eligible - self.pushed} already in {self.cache}, {self.upstream} skipped "
            f"as in upstream (the cache's upstream keys: {keys_shown})"
        )


def judge_push(
    *,
    cache: str,
    exit_code: int,
    output: str,
    eligible: Sequence[str],
    upstream: int,
    upstream_keys: Sequence[str],
    missing_after: Sequence[str],
) -> PushVerdict:
    """A push passes when attic exited 0 with no `❌` line and the server says no eligible
    path is missing (`POST /_api/v1/get-missing-paths` after the push)."""
    lines = parse_push_lines(output)
    if exit_code != 0 or lines.failed:
        first = f"; first: {lines.failed[0][0]}: {lines.failed[0][1]}" if lines.failed else ""
        raise PushFailedError(
            f"attic push exited with {exit_code}: {len(lines.failed)} paths failed, "
            f"{len(lines.pushed)} pushed{first}"
        )
    if not eligible:
        raise PushFailedError(
            f"nothing to push: all {upstream} paths are signed by an upstream key of {cache} "
            f"({', '.join(upstream_keys)}); set cache.upstream_filter: false to push them"
        )
    if missing_after:
        shown = ", ".join(missing_after[:3]) + (" …" if len(missing_after) > 3 else "")
        raise PushFailedError(
            f"attic push exited 0 ({len(lines.pushed)} paths pushed) but {len(missing_after)} "
            f"of {len(eligible)} eligible paths are still missing from {cache}: {shown}"
        )
    return PushVerdict(cache, len(eligible), len(lines.pushed), upstream, tuple(upstream_keys))


# ---------------------------------------------------------------------------- API


class AtticApiError(RunbookError):
    """A request to atticd's API failed; `status` is the HTTP status, if one came, and
    `error` the name in atticd's JSON error body (`NoSuchCache`, `Unauthorized`, ...)."""

    def __init__(self, message: str, status: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.status, self.error = status, error


def _api(
    url: str, token: Secret | None, timeout: float, body: object | None = None
) -> dict[str, object]:
    headers = {"User-Agent": "runbook", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token.reveal()}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            answer = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise AtticApiError(
            f"{method} {url}: HTTP {exc.code} {detail[:200]}", exc.code, _error_name(detail)
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise AtticApiError(f"{method} {url}: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise AtticApiError(f"{method} {url}: the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise AtticApiError(f"{method} {url}: expected a JSON object")
    return answer


@dataclass(frozen=True)
class CacheConfig:
    """`GET /_api/v1/cache-config/{cache}` (zhaofengli/attic `attic/src/api/v1/cache_config.rs`)."""

    api_endpoint: str
    upstream_cache_key_names: tuple[str, ...]
    public_key: str


def get_cache_config(
    endpoint: str, cache: str, token: Secret | None, timeout: float = 10.0
) -> CacheConfig:
    base = endpoint.rstrip("/") + "/"
    data = _api(f"{base}_api/v1/cache-config/{cache}", token, timeout)
    names = data.get("upstream_cache_key_names") or []
    api_endpoint = data.get("api_endpoint")
    return CacheConfig(
        # push uses the endpoint the server returns, if any (`client/src/command/push.rs`)
        str(api_endpoint) if isinstance(api_endpoint, str) and api_endpoint else base,
        tuple(str(n) for n in names) if isinstance(names, list) else (),
        str(data.get("public_key", "")),
    )


def get_missing_paths(
    api_endpoint: str,
    cache: str,
    store_paths: Sequence[str],
    token: Secret | None,
    timeout: float = 30.0,
) -> list[str]:
    """The store paths whose hashes the cache lacks: `POST /_api/v1/get-missing-paths` with
    `{"cache", "store_path_hashes"}`, answered `{"missing_paths": [hash, …]}` (attic
    `server/src/api/v1/get_missing_paths.rs`; needs push permission)."""
    if not store_paths:
        return []
    by_hash = {store_path_hash(p): p for p in store_paths}
    body = {"cache": cache, "store_path_hashes": list(by_hash)}
    url = api_endpoint.rstrip("/") + "/_api/v1/get-missing-paths"
    missing = _api(url, token, timeout, body).get("missing_paths")
    if not isinstance(missing, list):
        raise AtticApiError(f"POST {url}: no missing_paths list in the answer")
    return sorted(by_hash[str(h)] for h in missing if str(h) in by_hash)


def token_authorized(api_endpoint: str, cache: str, token: Secret, timeout: float = 10.0) -> str:
    """Prove that atticd takes `token` for a push to `cache`: `POST get-missing-paths` with no
    hashes needs push permission and reads nothing. atticd checks the permission first
    (`server/src/api/v1/get_missing_paths.rs`, `auth_cache`), and ignores a bad token as
    anonymous: 401 or 403 means the token is refused; 404 `NoSuchCache` comes only to a token
    with permission on a cache not created yet (attic.md §5). Returns what was proven;
    raises AtticApiError otherwise (its `status` says 401/403 for a refused token)."""
    url = api_endpoint.rstrip("/") + "/_api/v1/get-missing-paths"
    try:
        _api(url, token, timeout, {"cache": cache, "store_path_hashes": []})
    except AtticApiError as exc:
        if exc.status == 404 and exc.error == "NoSuchCache":
            return f"atticd grants the token push on {cache} (not created yet: 404 NoSuchCache)"
        raise
    return f"atticd grants the token push on {cache} (POST get-missing-paths: 200)"


def store_path_hash(store_path: str) -> str:
    """The 32-character hash part of a store path."""
    return store_path.rsplit("/", 1)[-1][:32]


# ---------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyFailure:
    """One failed check. `kind`: unauthorized, not-found, wrong-key, tampered, bad-cache-info,
    unreachable, bad-narinfo."""

    kind: str
    message: str
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class VerifyReport:
    url: str
    public_key: str
    cache_info: dict[str, str] = field(default_factory=dict)
    verified_paths: list[str] = field(default_factory=list)
    failures: list[VerifyFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> None:
        if self.failures:
            raise CacheVerificationError(self)


class CacheVerificationError(RunbookError):
    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        super().__init__(f"cache {report.url}: " + "; ".join(str(f) for f in report.failures))


class _HttpStatusError(Exception):
    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}")


def _get(url: str, token: Secret | None, timeout: float) -> str:
    headers = {"User-Agent": "runbook-verify-cache"}
    if token:
        headers["Authorization"] = f"Bearer {token.reveal()}"
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise _HttpStatusError(exc.code, exc.read().decode(errors="replace")) from None


def _http_failure(
    exc: _HttpStatusError, what: str, private_hint: bool, path: str | None
) -> VerifyFailure:
    """401/403/404 as attic sends them (attic.md §5), each with its own kind."""
    if exc.status == 401:
        hint = (
            "the cache is private and no valid token was sent" if private_hint else "unauthorized"
        )
        return VerifyFailure(
            "unauthorized",
            f"{what}: 401 Unauthorized ({hint}; make it public with "
            "`attic cache configure main --public` or pass --token-env)",
            path,
        )
    if exc.status == 403:
        return VerifyFailure("unauthorized", f"{what}: 403 the token lacks pull permission", path)
    if exc.status == 404:
        name = _error_name(exc.body)
        detail = "the cache does not exist" if name == "NoSuchCache" else "not in the cache"
        return VerifyFailure("not-found", f"{what}: 404 {detail}", path)
    return VerifyFailure("unreachable", f"{what}: HTTP {exc.status}", path)


def _error_name(body: str) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


def verify_cache(
    url: str,
    public_key: str,
    store_paths: Sequence[str] = (),
    token: Secret | None = None,
    timeout: float = 10.0,
) -> VerifyReport:
    """Check a binary cache as Nix would: nix-cache-info fields, then each path's narinfo
    signature against the trusted `public_key` (attic.md §5, §6).

    Failures are collected with distinct kinds: `unauthorized` (401 on a private cache),
    `not-found` (404), `wrong-key` (signed by a key other than the trusted one) and
    `tampered` (the signature by the cache's own key does not match the narinfo).
    """
    trusted = keys.parse_public_key(public_key)
    base = url.rstrip("/")
    report = VerifyReport(url=base, public_key=str(trusted))
    try:
        info_text = _get(f"{base}/nix-cache-info", token, timeout)
    except _HttpStatusError as exc:
        report.failures.append(_http_failure(exc, "nix-cache-info", True, None))
        return report
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        report.failures.append(VerifyFailure("unreachable", f"{base}: {reason}"))
        return report
    report.cache_info = _parse_cache_info_fields(info_text)
    if report.cache_info.get("StoreDir") != "/nix/store":
        report.failures.append(
            VerifyFailure(
                "bad-cache-info",
                f"nix-cache-info StoreDir is "
                f"{report.cache_info.get('StoreDir')!r}, expected '/nix/store'",
            )
        )
    advertised = _advertised_key(base, token, timeout)
    for path in store_paths:
        failure = _verify_path(base, path, trusted, advertised, token, timeout)
        if failure:
            report.failures.append(failure)
        else:
            report.verified_paths.append(path)
    if not store_paths and advertised and advertised != trusted:
        report.failures.append(_wrong_key(trusted, advertised, None))
    return report


def _parse_cache_info_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _advertised_key(base: str, token: Secret | None, timeout: float) -> keys.NixPublicKey | None:
    """The key the cache says it signs with (`GET /{cache}/attic-cache-info`, §5); best effort."""
    try:
        data = json.loads(_get(f"{base}/attic-cache-info", token, timeout))
        return keys.parse_public_key(str(data["public_key"]))
    except (
        _HttpStatusError,
        urllib.error.URLError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        InputError,
    ):
        return None


def _wrong_key(
    trusted: keys.NixPublicKey, advertised: keys.NixPublicKey | None, path: str | None
) -> VerifyFailure:
    signer = f" ({advertised})" if advertised else ""
    return VerifyFailure(
        "wrong-key",
        f"the cache signs with another key{signer} than the trusted {trusted}; Nix would "
        "refuse its paths (update trusted-public-keys from `attic cache info`)",
        path,
    )


def _verify_path(
    base: str,
    path: str,
    trusted: keys.NixPublicKey,
    advertised: keys.NixPublicKey | None,
    token: Secret | None,
    timeout: float,
) -> VerifyFailure | None:
    if not keys.is_store_path(path):
        return VerifyFailure("bad-narinfo", f"{path!r} is not a /nix/store path", path)
    store_hash = path.rsplit("/", 1)[1][:32]
    try:
        text = _get(f"{base}/{store_hash}.narinfo", token, timeout)
        info = keys.parse_narinfo(text)
    except _HttpStatusError as exc:
        return _http_failure(exc, f"narinfo of {path}", True, path)
    except keys.NarInfoError as exc:
        return VerifyFailure("bad-narinfo", f"{path}: {exc}", path)
    if info.store_path != path:
        return VerifyFailure("tampered", f"narinfo names {info.store_path}, not {path}", path)
    check = keys.verify_narinfo_signature(text, trusted)
    if check.ok:
        return None
    if check.reason == "no-signature-by-key" or (
        advertised is not None
        and advertised != trusted
        and keys.verify_narinfo_signature(text, advertised).ok
    ):
        return _wrong_key(trusted, advertised, path)
    return VerifyFailure(
        "tampered",
        f"narinfo of {path}: the signature by {trusted.name} does not match its content "
        "(tampered narinfo, or the trusted key is not the cache's)",
        path,
    )


def netrc_line(host: str, token: Secret) -> Secret:
    """`machine HOST password TOKEN` for Nix's netrc-file on private caches (attic.md §7, #140)."""
    return Secret(f"machine {host} password {token.reveal()}", "netrc")


def basic_auth_header(token: Secret) -> Secret:
    """What Nix sends from netrc: Basic auth, the JWT as password (attic.md §2)."""
    return Secret("Basic " + base64.b64encode(f"x:{token.reveal()}".encode()).decode(), "auth")


# ---------------------------------------------------------------------------- what a worker trusts

# The settings a host's Nix runs with: `nix show-config --json` exists in Nix 2.8 and is kept
# in newer Nix (and Lix) as a deprecated alias of `nix config show`; each setting is an object
# whose `value` is the effective value (`BaseSetting<T>::toJSONObject`, NixOS/nix
# src/libutil/config-impl.hh), `extra-*` lines already merged in.
NIX_SHOW_CONFIG_ARGV: Final = (
    "nix",
    "--extra-experimental-features",
    "nix-command",
    "show-config",
    "--json",
)


@dataclass(frozen=True)
class NixTrust:
    """A host's effective `substituters` and `trusted-public-keys`."""

    substituters: tuple[str, ...]
    trusted_public_keys: tuple[str, ...]


def parse_nix_show_config(stdout: str) -> NixTrust:
    """The two settings from `nix show-config --json`."""
    try:
        data = json.loads(stdout)
    except ValueError:
        raise AtticOutputError("`nix show-config --json` printed no JSON") from None
    if not isinstance(data, dict):
        raise AtticOutputError("`nix show-config --json` printed no JSON object")

    def strings(name: str) -> tuple[str, ...]:
        entry = data.get(name)
        value = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(value, str):
            return tuple(value.split())
        if isinstance(value, list):
            return tuple(str(v) for v in value)
        raise AtticOutputError(f"`nix show-config --json` has no {name} value")

    return NixTrust(strings("substituters"), strings("trusted-public-keys"))


class TrustMismatchError(RunbookError):
    """A host's Nix would refuse the cache: it does not list it, or trusts another key."""


def effective_keys(trusted_public_keys: Sequence[str]) -> dict[str, keys.NixPublicKey]:
    """The key Nix checks each signer name against: the FIRST key of each name
    (`getDefaultPublicKeys` puts them in a map with `emplace`, which keeps the first;
    NixOS/nix src/libstore/keys.cc). A key Nix could not parse is left out here."""
    found: dict[str, keys.NixPublicKey] = {}
    for text in trusted_public_keys:
        try:
            key = keys.parse_public_key(text)
        except InputError:
            continue
        found.setdefault(key.name, key)
    return found


def judge_trust(host: str, trust: NixTrust, cache_url: str, cache_key: str) -> str:
    """Whether `host`'s Nix takes paths from `cache_url` signed by the live `cache_key`:
    the URL among its substituters (up to a trailing slash), and the live key the one it
    holds for the key's name (`effective_keys`). A mismatch names both keys and the host."""
    live = keys.parse_public_key(cache_key)
    url = cache_url.rstrip("/")
    if url not in {s.rstrip("/") for s in trust.substituters}:
        shown = " ".join(trust.substituters) or "none"
        raise TrustMismatchError(
            f"{host} does not use {url}: its Nix's substituters are {shown} (run notebook 07)"
        )
    held = effective_keys(trust.trusted_public_keys).get(live.name)
    if held == live:
        return f"{host} uses {url} and trusts its key {live}"
    trusts = f"trusts {held}" if held else f"trusts no {live.name}: key"
    raise TrustMismatchError(
        f"{host} {trusts}, but the cache {url} signs with {live}: Nix there refuses its "
        'paths ("not signed by any of the keys"); run notebooks 06 and 07 (`runbook deploy '
        "PARAMS --only 06,07`): 06 reads the key the cache signs with, 07 has the workers trust it"
    )
