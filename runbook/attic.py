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

from runbook import keys
from runbook.errors import InputError, RunbookError
from runbook.secrets import Secret

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


def login_argv(name: str, endpoint: str, token: Secret, set_default: bool = False) -> list[str]:
    """`attic login NAME ENDPOINT TOKEN`: writes the config only, no request (attic.md §4).

    The token is in the argv; it is a registered Secret, so every Result and log masks it.
    """
    return ["attic", "login", name, endpoint, token.reveal(), *(["--set-default"] * set_default)]


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
    needed uploading (`client/src/command/push.rs`, `push_stdin`)."""

    pushed: tuple[str, ...]  # base names
    failed: tuple[tuple[str, str], ...]  # (base name, error)


def parse_push_lines(output: str) -> PushLines:
    text = output.replace("\r", "\n")
    return PushLines(
        tuple(m.group(1) for m in _PUSHED_RE.finditer(text)),
        tuple((m.group(1), m.group(2)) for m in _FAILED_RE.finditer(text)),
    )


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
    paths: Sequence[StorePathSigs], upstream_key_names: Sequence[str], *, ignore_filter: bool
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
    """A request to atticd's API failed."""


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
        raise AtticApiError(f"{method} {url}: HTTP {exc.code} {detail[:200]}") from None
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
