"""Parse Rehive's delivery body `{id, event, company, data}` strictly; a pure function, no Flask."""

from __future__ import annotations

import json
import math
from typing import Any

from webhooks.events import Event

MAX_ID_LENGTH = 100
MAX_EVENT_LENGTH = 100
MAX_DEPTH = 64  # real payloads nest a few levels; deeper is an attack on whoever walks the data


class EnvelopeError(ValueError):
    """The body is not a delivery we can store; the message says what is wrong."""


def _refuse_constant(name: str) -> None:
    raise EnvelopeError(f"The body is not valid JSON ({name} is not JSON).")


def _finite(text: str) -> float:
    # 1e999 is valid JSON text, but Python reads it as inf, which no JSON encoder can write back.
    value = float(text)
    if not math.isfinite(value):
        raise EnvelopeError(f"The body is not valid JSON ({text} is out of range).")
    return value


def _is_text(value: str) -> bool:
    # "\ud800" is a valid JSON escape but not Unicode text: SQLite (and any UTF-8 encoder) refuse it.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def parse_envelope(body: bytes) -> Event:
    """Decode and check a delivery body, or raise EnvelopeError naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("The body is not UTF-8.") from None
    try:
        payload = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except EnvelopeError:
        raise
    except RecursionError:
        raise EnvelopeError("The body is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError, and ints too long to convert
        raise EnvelopeError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise EnvelopeError("The body must be a JSON object.")
    if _too_deep(payload, MAX_DEPTH):
        raise EnvelopeError("The body is nested too deeply.")
    missing = [name for name in ("id", "event", "company", "data") if name not in payload]
    if missing:
        raise EnvelopeError("Missing field(s): " + ", ".join(missing) + ".")

    raw_id = payload["id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise EnvelopeError("Field 'id' must be a string or an integer.")
    event_id = str(raw_id)
    if not event_id or len(event_id) > MAX_ID_LENGTH:
        raise EnvelopeError(f"Field 'id' must have 1 to {MAX_ID_LENGTH} characters.")
    event = payload["event"]
    if not isinstance(event, str) or not event or len(event) > MAX_EVENT_LENGTH:
        raise EnvelopeError(f"Field 'event' must be a string of 1 to {MAX_EVENT_LENGTH} characters.")
    if not (_is_text(event_id) and _is_text(event)):
        raise EnvelopeError("Fields 'id' and 'event' must be Unicode text (no lone surrogates).")
    company = payload["company"]
    if not isinstance(company, str):
        raise EnvelopeError("Field 'company' must be a string.")
    data = payload["data"]
    if not isinstance(data, dict):
        raise EnvelopeError("Field 'data' must be an object.")
    return Event(company=company, id=event_id, name=event, data=data)
