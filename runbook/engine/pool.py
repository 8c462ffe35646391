"""The SSH connections a notebook's steps share: one per (VM, login, password), opened once.

Steps run in parallel may ask for the same connection at once: one connects, the others wait
for it and reuse it. `close` ends them all (the notebook's summary does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.transport.remote import Connection

# which VM, as the installed user (True) or root before the switch, with which password
Key = tuple[str, bool, str]


class ConnectionPool:
    def __init__(self) -> None:
        self._connections: dict[Key, Connection] = {}
        self._connecting: dict[Key, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Key, make: Callable[[], Connection]) -> Connection:
        """The connected connection for `key`, made by `make` the first time."""
        with self._lock:
            if key not in self._connections:
                self._connections[key] = make()
                self._connecting[key] = threading.Lock()
            conn, connecting = self._connections[key], self._connecting[key]
        with connecting:  # one connects, the others reuse
            conn.connect()
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()
            self._connecting.clear()
