"""What a handler receives, the Idempotency-Key it sends, and what must never reach a log."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_KEY_LENGTH = 99  # Rehive accepts keys "under 100 characters"
_READABLE = re.compile(r"[A-Za-z0-9._-]+")
# Events whose data carries one-time codes or reset keys (rehive-api.md §4.3).
SENSITIVE_EVENTS = ("user.*.verify", "user.password.reset", "mfa.*")
_SENSITIVE_KEY = re.compile(r"otp|code|token|key|secret|password", re.IGNORECASE)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Event:
    """One stored webhook delivery, as handlers see it."""

    company: str
    id: str
    name: str
    data: dict[str, Any]


def idempotency_key(event: Event, step: str) -> str:
    """Return the Idempotency-Key for one `step` of handling `event` (same inputs, same key)."""
    return derived_key(event.company, event.id, step)


def derived_key(*parts: str) -> str:
    """Return a key under 100 characters that only these `parts`, in this order, produce."""
    # Readable when every part is plain (no ':' inside a part, so two tuples never join alike);
    # otherwise a hash of an unambiguous encoding, marked with '~', which a readable key never has.
    readable = ":".join(parts)
    if all(_READABLE.fullmatch(part) for part in parts) and len(readable) <= MAX_KEY_LENGTH:
        return readable
    digest = hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()
    return f"sha256~{digest}"


def is_sensitive(event_name: str) -> bool:
    """Tell whether an event's data may hold one-time codes or reset keys."""
    return any(fnmatch.fnmatchcase(event_name, pattern) for pattern in SENSITIVE_EVENTS)


def redact(value: Any) -> Any:
    """Return a copy of `value` with every field named like a code, token, key or secret masked."""
    if isinstance(value, dict):
        return {
            key: REDACTED if isinstance(key, str) and _SENSITIVE_KEY.search(key) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def iso(timestamp: float | None) -> str | None:
    """Return a stored time (epoch seconds) as ISO 8601 in UTC with milliseconds, as CLI and page show it."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
