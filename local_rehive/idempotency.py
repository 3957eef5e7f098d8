"""Rehive's `Idempotency-Key`: the first answer to (company, key, method, URL) is replayed for 24 h."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from flask import Response

from local_rehive.model import now_ms

TTL_MS = 24 * 3600 * 1000
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class _Saved:
    status: int
    body: bytes
    content_type: str
    at: int


class IdempotencyCache:
    """Saved answers by scope; a per-scope lock makes concurrent twins wait instead of both running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._saved: dict[Hashable, _Saved] = {}
        self._locks: dict[Hashable, threading.Lock] = {}

    def run_once(self, scope: Hashable, produce: Callable[[], Response]) -> Response:
        """Return the saved answer for `scope` (marked replayed), or produce, save and return one."""
        with self._scope_lock(scope):
            with self._lock:
                saved = self._saved.get(scope)
            if saved is not None:
                replay = Response(saved.body, status=saved.status, content_type=saved.content_type)
                replay.headers[REPLAYED_HEADER] = "true"
                return replay
            response = produce()
            # Throttling and injected faults answer before this point, so a 429 is never saved.
            saved = _Saved(response.status_code, response.get_data(), response.content_type or "", now_ms())
            with self._lock:
                self._saved[scope] = saved
            return response

    def _scope_lock(self, scope: Hashable) -> threading.Lock:
        with self._lock:
            self._forget_expired()
            return self._locks.setdefault(scope, threading.Lock())

    def _forget_expired(self) -> None:
        cutoff = now_ms() - TTL_MS
        for scope in [scope for scope, saved in self._saved.items() if saved.at < cutoff]:
            del self._saved[scope]
            lock = self._locks.get(scope)
            if lock is not None and not lock.locked():
                del self._locks[scope]
