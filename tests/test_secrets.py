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
