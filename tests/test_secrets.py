"""runbook.core.secrets: masking everywhere, a 0700/0600 store."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from runbook.core.errors import CommandError, InputError
from runbook.core.masking import MASK, MaskingFilter, mask
from runbook.core.models import Result
from runbook.core.secrets import Secret, SecretStore, write_private


def test_secret_prints_masked_everywhere() -> None:
    s = Secret("hunter2-" + os.urandom(4).hex(), "pw")
    raw = s.reveal()
    assert raw not in f"{s} {s!r} {s!s} {[s]} {s:>20}"
    assert mask(f"the value is {raw}!") == f"the value is {MASK}!"
    r = Result(f"echo {raw}", 0, raw + "\n", "", 0.1)
    assert raw not in repr(r)
    err = CommandError(host="h", command=f"login {raw}", exit_code=1, stderr=f"bad {raw}")
    assert raw not in str(err) and raw not in repr(err) and raw not in repr(err.args)


def test_log_filter_masks_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret("tok-" + os.urandom(6).hex())
    logger = logging.getLogger("test.secrets")
    caplog.handler.addFilter(MaskingFilter())
    with caplog.at_level(logging.INFO, logger="test.secrets"):
        logger.info("token=%s", s.reveal())
        try:
            raise ValueError(s.reveal())
        except ValueError:
            logger.exception("failed")
    assert s.reveal() not in caplog.text
    assert caplog.text.count(MASK) >= 2


def test_short_values_are_not_registered() -> None:
    Secret("root")  # the handbook's live-ISO password: masking it would hide every "root"
    assert mask("root@vm abc") == "root@vm abc"


def test_store_modes(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "store")
    store.put("attic-admin-token", "t0ken-value-xyz")
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    f = tmp_path / "store" / "attic-admin-token"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    got = store.get("attic-admin-token")
    assert got is not None and got.reveal() == "t0ken-value-xyz"
    assert store.get("absent") is None
    with pytest.raises(InputError, match="secret name"):
        store.put("../escape", "x")


def test_write_private_is_0600_under_a_wide_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "f", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


# -- issue 13 item 6: a secret's cost is bounded; a secret never hides the runbook's names ---


@pytest.fixture
def fresh_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masking's process-wide sets, empty for this test (and restored after it)."""
    from runbook.core import masking

    monkeypatch.setattr(masking, "_registered", {})
    monkeypatch.setattr(masking, "_protected", {})
    monkeypatch.setattr(masking, "_pattern", None)
    monkeypatch.setattr(masking, "_dirty", False, raising=False)


def test_a_5mb_secret_is_refused_at_once_naming_it(fresh_masking: None) -> None:
    """Before: each registration recompiled one regex of every value (and its base64), so
    a 5 MB password cost ~30 s per later secret and the deploy 100 s (191 s measured for
    11 registrations). Now: refused in one line, naming the secret, never the value."""
    import time

    value = "p" * (5 * 1024 * 1024)
    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        Secret(value, "live-root-password")
    took = time.perf_counter() - started
    assert took < 1.0, f"{took:.1f} s"
    msg = str(info.value)
    assert "'live-root-password'" in msg and "5,242,880 characters" in msg
    assert "ppppppp" not in msg and info.value.exit_code == 2


def test_the_longest_real_secret_still_masks(fresh_masking: None) -> None:
    """atticd's RS256 secret (base64 of an RSA PEM) is a few KB: under the bound."""
    value = "A" * 6000 + os.urandom(8).hex()
    s = Secret(value, "attic-token-secret")
    assert mask(f"x{s.reveal()}y") == f"x{MASK}y"


def test_the_pattern_is_built_once_per_change(
    fresh_masking: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every registration rebuilt the regex (50 secrets: 50 compiles); now it is
    built lazily, once, at the next mask() after a change."""
    import re

    compiles = []
    real = re.compile

    def counting(pattern: str, flags: int = 0) -> re.Pattern[str]:
        compiles.append(len(pattern))
        return real(pattern, flags)

    monkeypatch.setattr(re, "compile", counting)
    values = [f"secret-{i}-{os.urandom(4).hex()}" for i in range(50)]
    for i, v in enumerate(values):
        Secret(v, f"s{i}")
    assert mask(" ".join(values)) == " ".join([MASK] * 50)
    assert mask(values[0]) == MASK  # no change since: no new compile
    assert len(compiles) == 1


def test_a_secret_equal_to_a_vm_name_is_refused(fresh_masking: None, tmp_path: Path) -> None:
    """Before: a password equal to a VM name turned every `utmctl` line naming that VM into
    `*****` and broke the deploy. Now the secret is refused, by name, in either order."""
    from runbook.core import params

    f = tmp_path / "p.yaml"
    f.write_text(
        "deployment: clash\nnixos_config: /nonexistent/cfg\nidentity: /nonexistent/id\n"
        "vms:\n  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local}\n"
        "cache: {vm: vm-aarch64-utm-cache, host: nixos-utm-cache.local}\n"
    )
    params.load(f)
    with pytest.raises(InputError) as info:
        Secret("vm-aarch64-utm-cache", "live-root-password")
    msg = str(info.value)
    assert "'live-root-password' is vms[0].name" in msg and info.value.exit_code == 2
    assert "vm-aarch64-utm-cache" not in msg
    # a part of a name masks it too ("vm-aarch64-*****")
    with pytest.raises(InputError, match=r"'pw' is part of (vms\[0\]\.|cache\.)"):
        Secret("utm-cache", "pw")
    assert mask("utmctl start vm-aarch64-utm-cache") == "utmctl start vm-aarch64-utm-cache"


def test_a_stored_secret_that_is_a_name_refuses_the_params(
    fresh_masking: None, tmp_path: Path
) -> None:
    """The other order: the secret was registered first (a notebook reads the store before
    the params); loading params that print it is refused naming the secret."""
    from runbook.core import params

    Secret("nixos-utm-cache.local", "attic-admin-token")
    f = tmp_path / "p.yaml"
    f.write_text(
        "deployment: clash\nnixos_config: /nonexistent/cfg\nidentity: /nonexistent/id\n"
        "vms:\n  - {name: vm-c, role: cache, address: nixos-utm-cache.local}\n"
        "cache: {vm: vm-c, host: nixos-utm-cache.local}\n"
    )
    with pytest.raises(InputError) as info:
        params.load(f)
    msg = str(info.value)
    assert msg.startswith(f"{f}: the secret 'attic-admin-token' is ")
    assert "nixos-utm-cache.local" not in msg.replace(str(f), "")


def test_a_secret_equal_to_a_runbook_word_is_refused(fresh_masking: None) -> None:
    from runbook.core import params

    params.load(Path(__file__).resolve().parents[1] / "params" / "cache.yaml")
    with pytest.raises(InputError, match="'pw' is the runbook's word 'completed'"):
        Secret("completed", "pw")


def test_mask_inside_a_registration_does_not_deadlock(
    fresh_masking: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A garbage collection during the pattern's build can run a __del__ that logs, and the
    log filter masks: mask() re-entered in the thread holding masking's lock. With a plain
    Lock that hung a test run for good; the lock is reentrant."""
    import re
    import threading

    real = re.compile
    inner: list[str] = []

    def compile_and_log(pattern: str, flags: int = 0) -> re.Pattern[str]:
        if not inner:
            inner.append("building")
            inner.append(mask("a __del__ logs while the pattern is built"))
        return real(pattern, flags)

    monkeypatch.setattr(re, "compile", compile_and_log)
    Secret("reentrant-" + os.urandom(4).hex(), "r")
    worker = threading.Thread(target=lambda: inner.append(mask("x")), daemon=True)
    done = threading.Event()

    def go() -> None:
        mask("trigger the build")
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(10), "mask() deadlocked on its own lock"
    worker.start()
    worker.join(10)
    assert inner


def test_one_line_keeps_the_start_and_the_hint() -> None:
    """A message cut to its width keeps what failed and the hint at its end."""
    from runbook.core.masking import one_line

    text = "host key changed: " + "x" * 800 + " (accept with --replace-host-key)"
    out = one_line(text, 300)
    assert len(out) <= 300 and out.startswith("host key changed: ")
    assert out.endswith("(accept with --replace-host-key)") and "(851 characters)" in out
    assert one_line("a\nb\x00c") == "a\\nb\\x00c"
