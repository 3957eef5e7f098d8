"""`Platform`: everything one running stand-in holds, found from a request via `platform_of()`."""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Callable

from flask import Flask, current_app

from local_rehive import shapes
from local_rehive.courier import LOG_SIZE, Courier, Delivery
from local_rehive.idempotency import IdempotencyCache
from local_rehive.knobs import Knobs
from local_rehive.model import Transaction
from local_rehive.seed import seed_store
from local_rehive.store import Store


class Platform:
    """Everything one stand-in holds: data, knobs, idempotency answers, webhook courier, call log."""

    def __init__(self, *, seed: int, knobs: Knobs, webhook_timeout: float) -> None:
        self.store = Store()
        self.idempotency = IdempotencyCache()
        self.courier = Courier(lambda: self.knobs.webhook_retry_delays, timeout=webhook_timeout)
        self._knobs = knobs
        self._lock = threading.Lock()
        self._auth_calls: deque[dict] = deque(maxlen=LOG_SIZE)
        seed_store(self.store, seed)
        self.store.on_event = self._publish

    @property
    def knobs(self) -> Knobs:
        """Return the current knobs."""
        return self._knobs

    def change_knobs(self, change: Callable[[Knobs], Knobs]) -> Knobs:
        """Replace the knobs with `change(current)` and return the new ones."""
        with self._lock:
            self._knobs = change(self._knobs)
            return self._knobs

    def record_auth_call(self, call: dict) -> None:
        """Remember one `/3/auth/...` request for the control API."""
        with self._lock:
            self._auth_calls.append(call)

    def auth_calls(self) -> list[dict]:
        """Return the remembered `/3/auth/...` requests, oldest first."""
        with self._lock:
            return list(self._auth_calls)

    def _publish(self, event: str, tx: Transaction) -> None:
        """Queue `event` for every subscribed webhook; called by the store under its lock, in order."""
        subscribers = self.store.subscribers(tx.company, event)
        if not subscribers:
            return
        data = shapes.admin_transaction(self.store, tx, extended=True)
        for webhook in subscribers:
            envelope_id = str(uuid.uuid4())
            envelope = {"id": envelope_id, "event": event, "company": tx.company, "data": data}
            body = json.dumps(envelope).encode()
            self.courier.send(
                Delivery(webhook.id, webhook.url, webhook.secret, event, envelope_id, tx.id, body)
            )


def platform_of(app: Flask | None = None) -> Platform:
    """Return the Platform of `app` (or of the current app)."""
    return (app or current_app).extensions["local_rehive"]
