"""What the reliability tests and bench/reliability.py share: snapshots of what a plan must not
touch, the lab's fault scenarios, the secret sweep and the hostile-params corpus run.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

NIX_STATE: Final = Path("/nix/var/nix")
NIX_STORE: Final = Path("/nix/store")


# -- what a plan must leave as it was --------------------------------------------------------


@dataclass(frozen=True)
class NixSnapshot:
    """The machine's Nix store and database as a plan could change them: db.sqlite's mtime and
    size, what its directory holds (a -wal or -shm left behind, or made and removed: the
    directory's mtime), the registered paths (count, newest id), the store's and the GC
    roots' and temp roots' entries."""

    db: tuple[int, int]
    db_dir: tuple[int, tuple[str, ...]]
    valid_paths: tuple[int, int]
    store: tuple[int, int, str]
    roots: tuple[str, ...]

    @classmethod
    def take(cls) -> NixSnapshot:
        db_dir = NIX_STATE / "db"
        db = db_dir / "db.sqlite"
        st = db.stat()
        # immutable=1: read the file as it is, no lock, no -wal/-shm made (a read that
        # changed the database would spoil the snapshot)
        con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        try:
            count, top = con.execute("SELECT count(*), max(id) FROM ValidPaths").fetchone()
        finally:
            con.close()
        names = sorted(os.listdir(NIX_STORE))
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
        roots = tuple(
            sorted(
                str(p.relative_to(NIX_STATE))
                for d in ("gcroots", "temproots", "profiles")
                if (NIX_STATE / d).is_dir()
                for p in (NIX_STATE / d).rglob("*")
            )
        )
        return cls(
            db=(st.st_mtime_ns, st.st_size),
            db_dir=(db_dir.stat().st_mtime_ns, tuple(sorted(os.listdir(db_dir)))),
            valid_paths=(int(count), int(top or 0)),
            store=(NIX_STORE.stat().st_mtime_ns, len(names), digest),
            roots=roots,
        )

    def changes(self, other: NixSnapshot) -> list[str]:
        """What differs from `other`, named (empty when nothing did)."""
        return [
            f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}"[:300]
            for name in ("db", "db_dir", "valid_paths", "store", "roots")
            if getattr(self, name) != getattr(other, name)
        ]


def tree_listing(root: Path) -> list[str]:
    """Every path under `root`, relative (a HOME that must stay empty)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def clean_env(home: Path) -> dict[str, str]:
    """The environment with HOME at `home` and no XDG/Jupyter/IPython directories of its own,
    so anything written to a user's dotfiles lands in `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "JUPYTER", "IPYTHON"))}
    env["HOME"] = str(home)
    return env
