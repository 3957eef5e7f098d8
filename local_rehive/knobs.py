"""Fault knobs and delivery settings, and the WSGI middleware that applies faults to `/3/` requests."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # Rehive's 7 retries, compressed
MAX_RETRIES = 7
MAX_RETRY_DELAY = 3600.0  # Rehive's cap between two attempts
FAULTS = ("latency_ms", "error_rate", "error_status", "throttle", "throttle_retry_after", "down")


@dataclass(frozen=True)
class Knobs:
    """What the control API can change at run time; every instance is valid."""

    latency_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 500  # what `error_rate` answers: a 5xx is an outage, a 4xx a refusal
    throttle: bool = False
    throttle_retry_after: int = 2
    down: bool = False
    webhook_retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS

    def __post_init__(self) -> None:
        _check(isinstance(self.latency_ms, int) and 0 <= self.latency_ms <= 60_000, "latency_ms", "0..60000")
        rate = self.error_rate
        _check(_is_number(rate) and 0.0 <= rate <= 1.0, "error_rate", "a number in 0..1")
        status = self.error_status
        _check(
            isinstance(status, int) and 400 <= status <= 599 and status != 429,
            "error_status",
            "400..599, not 429",
        )
        _check(isinstance(self.throttle, bool), "throttle", "true or false")
        wait = self.throttle_retry_after
        _check(isinstance(wait, int) and 0 <= wait <= 86_400, "throttle_retry_after", "seconds, 0..86400")
        _check(isinstance(self.down, bool), "down", "true or false")
        delays = self.webhook_retry_delays
        _check(
            len(delays) <= MAX_RETRIES and all(_is_number(d) and 0 <= d <= MAX_RETRY_DELAY for d in delays),
            "webhook_retry_delays",
            f"at most {MAX_RETRIES} delays of 0..{MAX_RETRY_DELAY:g} s",
        )

    def updated(self, changes: Mapping[str, Any]) -> Knobs:
        """Return a copy with `changes` applied; raise ValueError naming a bad or unknown field."""
        unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        changes = dict(changes)
        if "webhook_retry_delays" in changes:
            changes["webhook_retry_delays"] = _delays(changes["webhook_retry_delays"])
        return dataclasses.replace(self, **changes)

    def without_faults(self) -> Knobs:
        """Return a copy with every fault switched off (delivery settings kept)."""
        return dataclasses.replace(self, **{name: getattr(Knobs, name) for name in FAULTS})

    def as_json(self) -> dict:
        """Return the knobs as the control API shows them."""
        return {**dataclasses.asdict(self), "webhook_retry_delays": list(self.webhook_retry_delays)}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}")


def _delays(value: object) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, Iterable):
        raise ValueError("webhook_retry_delays must be a list of seconds")
    try:
        return tuple(float(item) for item in value)
    except (TypeError, ValueError):
        raise ValueError("webhook_retry_delays must be a list of seconds") from None


class FaultInjector:
    """WSGI middleware: delay, drop, throttle or fail `/3/` requests as the knobs say."""

    def __init__(self, app: Any, current: Callable[[], Knobs]) -> None:
        self.app = app
        self.current = current
        self._random = random.Random()

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        """Serve one request, faulted if it is an API request."""
        if not environ.get("PATH_INFO", "").startswith("/3/"):
            return self.app(environ, start_response)
        knobs = self.current()
        if knobs.latency_ms:
            time.sleep(knobs.latency_ms / 1000)
        if knobs.down:
            _drop_connection(environ)
        if knobs.throttle:
            wait = knobs.throttle_retry_after
            message = f"Request was throttled. Expected available in {wait} second{'' if wait == 1 else 's'}."
            return _error(start_response, "429 Too Many Requests", message, [("Retry-After", str(wait))])
        if knobs.error_rate and self._random.random() < knobs.error_rate:
            if knobs.error_status >= 500:
                return _error(
                    start_response, f"{knobs.error_status} Server Error", "Internal server error.", []
                )
            return _error(start_response, f"{knobs.error_status} Refused", "Refused by the fault knob.", [])
        return self.app(environ, start_response)


def _drop_connection(environ: dict) -> None:
    """Close the client's connection without an answer; werkzeug treats this as a dropped client."""
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")  # `--keep-alive` is gunicorn
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    raise ConnectionAbortedError("local_rehive is down (fault knob `down`)")


def _error(start_response: Any, status: str, message: str, headers: list[tuple[str, str]]) -> list[bytes]:
    body = json.dumps({"status": "error", "message": message}).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers]
    )
    return [body]
