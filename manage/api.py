"""`/manage/api/`: the JSON behind the manage page, for admin and service users of the company.

Every call is `@require_groups("admin", "service")` and passes the caller's company to every inbox
call, so an admin only ever reads, replays or changes their own company's rows.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from auth import current_user, require_groups
from companies import CompanyRegistry, registry_of
from errors import ApiError
from rehive_client import RehiveError, RehiveForbidden, RehiveUnauthorized, admin
from webhooks.events import is_sensitive, iso, redact
from webhooks.extension import webhooks_of
from webhooks.inbox import REPLAYABLE, STATUSES
from webhooks.savings import savings_percent_for

log = logging.getLogger("webhooks")

bp = Blueprint("manage_api", __name__, url_prefix="/manage/api")

MANAGERS = ("admin", "service")
LIST_PARAMETERS = frozenset({"status", "event", "page", "page_size"})
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100  # larger is served as 100, as /custom/transactions/ serves 250
MAX_NUMBER = 999_999_999
MAX_EVENT_NAME = 100
WEBHOOKS_CACHE_SECONDS = 30.0  # the page polls status every few seconds; Rehive is asked at most this often
SETTINGS = ("savings_percent",)


def _ok(data: Any) -> Response:
    return jsonify(status="success", data=data)


def _company() -> str:
    """Return the caller's company: the only company any query here may touch."""
    return current_user["company"]


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event": row["event"],
        "status": row["status"],
        "attempts": row["attempts"],
        "received_at": iso(row["received_at"]),
        "updated_at": iso(row["updated_at"]),
        "last_error": row["last_error"],
    }


# -- status ---------------------------------------------------------------------------------------


MAX_CACHED = 64  # (company, our URL) answers kept at once


class WebhooksCache:
    """The company's Rehive webhooks that point at us, remembered for a short while per company."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, company: str, our_url: str) -> dict[str, Any]:
        """Return `{token_status, webhooks, webhooks_error}`, asking Rehive when the answer is stale."""
        key = (company, our_url)
        with self._lock:
            item = self._items.get(key)
        if item is not None and item[0] > time.monotonic():
            return item[1]
        answer = _ask_rehive_for_webhooks(our_url)
        with self._lock:
            now = time.monotonic()
            # The key holds the Host a caller sent (when WEBHOOK_URL is unset): keep only live entries,
            # and at most MAX_CACHED of them, so varying Host cannot grow memory.
            for stale in [k for k, (expires, _) in self._items.items() if expires <= now]:
                del self._items[stale]
            while len(self._items) >= MAX_CACHED:
                del self._items[next(iter(self._items))]
            self._items[key] = (now + self.ttl, answer)
        return answer


def _ask_rehive_for_webhooks(our_url: str) -> dict[str, Any]:
    # The page must work when this fails: say why instead of failing the whole status.
    try:
        body = admin.get("admin/webhooks/", params={"page_size": 250})
    except RehiveUnauthorized:
        log.error("Rehive refused the company's token while listing webhooks")
        return {"token_status": "invalid", "webhooks": None, "webhooks_error": "Rehive refused our token."}
    except RehiveForbidden:
        return {
            "token_status": "valid",
            "webhooks": None,
            "webhooks_error": "Our service user may not list webhooks (permission: admin webhook view).",
        }
    except RehiveError as exc:
        return {
            "token_status": "unknown",
            "webhooks": None,
            "webhooks_error": f"Could not ask Rehive ({type(exc).__name__}).",
        }
    data = body.get("data")
    results = data.get("results") if isinstance(data, dict) else data
    ours = [
        # Never the secret: only what the page shows.
        {"id": hook.get("id"), "event": hook.get("event"), "enabled": hook.get("enabled"), "url": hook["url"]}
        for hook in results or []
        if isinstance(hook, dict) and isinstance(hook.get("url"), str) and hook["url"].rstrip("/") == our_url
    ]
    return {"token_status": "valid", "webhooks": ours, "webhooks_error": None}


def our_webhook_url() -> str:
    """Return the URL Rehive delivers to: WEBHOOK_URL (in multi mode PUBLIC_URL's), else this request's."""
    configured = current_app.config["SETTINGS"].webhook_url
    if configured:
        return configured.rstrip("/")
    return request.host_url.rstrip("/") + "/webhooks"


@bp.get("/status/")
@require_groups(*MANAGERS)
def status() -> Response:
    """The company's state: mode, token status, our webhooks at Rehive, counts by state."""
    company = _company()
    counts = webhooks_of().inbox.counts_of(company)
    cache: WebhooksCache = current_app.extensions["manage"]
    mode = {"mode": "single", "active_since": None}  # single: the token comes from the environment
    registry = registry_of()
    if isinstance(registry, CompanyRegistry):
        found = registry.get(company)  # active: require_groups refused the caller otherwise
        mode = {"mode": "multi", "active_since": iso(found.activated_at) if found else None}
    return _ok(
        {
            "company": company,
            **mode,
            **cache.get(company, our_webhook_url()),
            "webhook_url": our_webhook_url() + "/",
            "counts": {name: counts.get(name, 0) for name in STATUSES},
            "local_mode": current_app.config["SETTINGS"].local_mode,
        }
    )


# -- events ---------------------------------------------------------------------------------------


def _number(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_NUMBER:
        raise ApiError(400, f"{name} must be a positive integer.")
    return int(raw)


def _list_query() -> tuple[str | None, str | None, int, int]:
    for name in request.args:
        if name not in LIST_PARAMETERS:
            raise ApiError(400, f"Unknown query parameter: {name[:50]}.")
        if len(request.args.getlist(name)) > 1:
            raise ApiError(400, f"Repeated query parameter: {name}.")
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}.")
    event = request.args.get("event") or None
    if event is not None and len(event) > MAX_EVENT_NAME:
        raise ApiError(400, f"event must be at most {MAX_EVENT_NAME} characters.")
    return status, event, _number("page", 1), min(_number("page_size", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)


def _page_link(page: int) -> str:
    query = {name: request.args[name] for name in ("status", "event", "page_size") if request.args.get(name)}
    query["page"] = str(page)
    return request.base_url + "?" + urlencode(query)


@bp.get("/events/")
@require_groups(*MANAGERS)
def list_events() -> Response:
    """The company's events, newest first, filtered by state and event name, paged."""
    status, event, page, page_size = _list_query()
    offset = (page - 1) * page_size
    count, rows = webhooks_of().inbox.page_of(_company(), status, event, offset, page_size)
    if page > 1 and not rows:
        raise ApiError(404, "Invalid page.")
    return _ok(
        {
            "count": count,
            "next": _page_link(page + 1) if offset + len(rows) < count else None,
            "previous": _page_link(page - 1) if page > 1 else None,
            "results": [_summary(row) for row in rows],
        }
    )


def _event_row(event_id: str) -> dict[str, Any]:
    rows = webhooks_of().inbox.get(event_id, _company()) if len(event_id) <= 100 else []
    if not rows:
        raise ApiError(404, "No such event.")
    return rows[0]


@bp.get("/events/<event_id>/")
@require_groups(*MANAGERS)
def show_event(event_id: str) -> Response:
    """One event: its state, attempts, last error, next try and payload (codes masked, as the CLI)."""
    row = _event_row(event_id)
    sensitive = is_sensitive(row["event"])
    data = json.loads(row["body"]).get("data")
    return _ok(
        {
            **_summary(row),
            "done_at": iso(row["done_at"]),
            "next_attempt_at": iso(row["due_at"]) if row["status"] in ("received", "failed") else None,
            "lease_expires_at": iso(row["due_at"]) if row["status"] == "processing" else None,
            # A traceback may quote a one-time code: shown only for events that carry none.
            "traceback": None if sensitive else row["traceback"],
            "data": redact(data) if sensitive else data,
        }
    )


@bp.post("/events/<event_id>/replay/")
@require_groups(*MANAGERS)
def replay_event(event_id: str) -> Response:
    """Put a failed, dead or done event back to received (409 while it is received or processing)."""
    company = _company()
    row = _event_row(event_id)
    state = webhooks_of()
    before = state.inbox.replay(company, row["id"])
    if before is None:
        raise ApiError(404, "No such event.")
    if before not in REPLAYABLE:
        raise ApiError(409, f"The event is {before}; only failed, dead or done events are replayed.")
    state.pool.wake()
    log.info("replayed company=%s id=%r from=%s by=%s", company, row["id"], before, current_user.get("id"))
    return _ok(_summary(_event_row(event_id)))


@bp.post("/events/replay-dead/")
@require_groups(*MANAGERS)
def replay_dead() -> Response:
    """Put every dead event of the company back to received."""
    company = _company()
    state = webhooks_of()
    replayed = state.inbox.replay_dead_of(company)
    if replayed:
        state.pool.wake()
    log.info("replayed %d dead event(s) company=%s by=%s", replayed, company, current_user.get("id"))
    return _ok({"replayed": replayed})


# -- settings -------------------------------------------------------------------------------------


def _settings_of(company: str) -> dict[str, Any]:
    return {"savings_percent": savings_percent_for(company)}


@bp.get("/settings/")
@require_groups(*MANAGERS)
def get_settings() -> Response:
    """The company's settings."""
    return _ok(_settings_of(_company()))


@bp.patch("/settings/")
@require_groups(*MANAGERS)
def change_settings() -> Response:
    """Change some of the company's settings; anything invalid is a 400 that changes nothing."""
    body = request.get_json(force=True, silent=True) if request.get_data() else None
    if not isinstance(body, dict) or not body:
        raise ApiError(400, 'Send a JSON object, e.g. {"savings_percent": 10}.')
    for name in body:
        if name not in SETTINGS:
            raise ApiError(400, f"Unknown setting: {str(name)[:50]}.")
    percent = body["savings_percent"]
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ApiError(400, "savings_percent must be an integer from 0 to 100.")
    company = _company()
    webhooks_of().inbox.set_company_setting(company, "savings_percent", percent)
    log.info("settings company=%s savings_percent=%d by=%s", company, percent, current_user.get("id"))
    return _ok(_settings_of(company))


def init_app(app: Flask) -> None:
    """Register the API and its short-lived cache of our webhooks at Rehive."""
    app.extensions["manage"] = WebhooksCache(WEBHOOKS_CACHE_SECONDS)
    app.register_blueprint(bp)
