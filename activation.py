"""`/activate/`, `/deactivate/`, `/rotate/`: how Rehive installs the extension for a company (multi mode).

Public endpoints: each trusts the posted token only after Rehive confirms it (`GET /3/auth/`, group
`service` or `admin`). Rehive counts only 200/201 as success and gives each call 10 s, so every answer
comes within BUDGET_SECONDS: each Rehive call gets only what is left of it, and a Rehive too slow for
it gives 504 with nothing changed. Registered only when EXTENSION_MODE=multi (a 404 otherwise).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from auth import _TOKEN, group_names
from companies import CompanyRegistry, registry_of
from errors import ApiError
from rehive_client import (
    RehiveBadResponse,
    RehiveClient,
    RehiveError,
    RehiveForbidden,
    RehiveRateLimited,
    RehiveRequestError,
    RehiveTimeout,
    RehiveUnauthorized,
    RehiveUnavailable,
)
from webhooks.extension import webhooks_of

log = logging.getLogger("service")

bp = Blueprint("activation", __name__)

BUDGET_SECONDS = 8.0  # Rehive waits 10 s; what is left covers the network and our own work
MIN_CALL_SECONDS = 0.05  # less than this left: do not start another Rehive call
MAX_BODY_BYTES = 16_384
RETRY_AFTER_SECONDS = "5"
EXTENSION_GROUPS = frozenset({"service", "admin"})
NOT_ACTIVATED = "Company has not been activated."
# Rehive's answer when our webhook for that url and event exists already (activating again is fine).
ALREADY_EXISTS = ("already exists", "duplicate key value")


class Budget:
    """What is left of BUDGET_SECONDS for the Rehive calls of one request."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def client(self, token: str | None = None) -> RehiveClient:
        """Return a client whose calls may take only what is left (no retries: no time for them)."""
        left = self.deadline - time.monotonic()
        if left < MIN_CALL_SECONDS:
            raise ApiError(504, "Rehive did not answer in time.")
        settings = current_app.config["SETTINGS"]
        return RehiveClient(
            settings.rehive_api_url, token, timeout=(min(settings.connect_timeout, left), left), get_retries=0
        )


def _upstream(exc: RehiveError) -> ApiError:
    """Map Rehive failing during an activation call; nothing has been changed when this is raised."""
    if isinstance(exc, RehiveRateLimited):
        return ApiError(
            429,
            "Rehive is throttling requests; retry later.",
            {"Retry-After": exc.retry_after or RETRY_AFTER_SECONDS},
        )
    if isinstance(exc, RehiveTimeout):
        return ApiError(504, "Rehive did not answer in time.")
    if isinstance(exc, RehiveUnavailable):
        return ApiError(503, "Rehive is unavailable; retry later.", {"Retry-After": RETRY_AFTER_SECONDS})
    return ApiError(502, "Rehive gave an unexpected answer.")


def _body(*, purge: bool = False) -> tuple[str, bool]:
    """Return the posted token (and purge flag), or raise a 400 naming what is wrong."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
    request.max_content_length = MAX_BODY_BYTES
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, 'The body must be JSON: {"token": "..."}.') from None
    if not isinstance(body, dict):
        raise ApiError(400, 'The body must be a JSON object: {"token": "..."}.')
    if "token" not in body:
        raise ApiError(400, "Field 'token' is required.")
    token = body["token"]
    if not isinstance(token, str):
        raise ApiError(400, "Field 'token' must be a string.")
    if not _TOKEN.fullmatch(token):
        raise ApiError(400, "Field 'token' is not a token (1 to 512 visible ASCII characters).")
    flag = body.get("purge", False)
    if purge and not isinstance(flag, bool):
        raise ApiError(400, "Field 'purge' must be true or false.")
    return token, bool(flag) if purge else False


def _service_user(budget: Budget, token: str) -> dict[str, Any]:
    """Return the Rehive user of `token` if Rehive accepts it and it is a service (or admin) user."""
    try:
        user = budget.client().whoami(token)
    except (RehiveUnauthorized, RehiveForbidden, RehiveRequestError):
        raise ApiError(400, "Rehive did not accept the token.") from None
    except RehiveError as exc:
        raise _upstream(exc) from None
    if not group_names(user) & EXTENSION_GROUPS:
        raise ApiError(400, "The token's user must be in group 'service' or 'admin'.")
    if not isinstance(user.get("company"), str) or not user["company"]:
        raise ApiError(400, "Rehive did not say which company the token's user is in.")
    return user


def _registry() -> CompanyRegistry:
    registry = registry_of()
    assert isinstance(registry, CompanyRegistry)  # the blueprint exists in multi mode only
    return registry


def _events() -> list[str]:
    """Return the events to subscribe: WEBHOOK_EVENTS, else every event a registered handler wants."""
    configured = current_app.config["SETTINGS"].webhook_events
    return list(configured) if configured else webhooks_of().registry.names()


def _create_webhooks(budget: Budget, token: str, secret: str, events: list[str]) -> None:
    """Ask Rehive to deliver each event to us with the company's secret; an existing one is fine."""
    url = current_app.config["SETTINGS"].public_url + "/webhooks/"
    for event in events:
        try:
            budget.client(token).post("admin/webhooks/", {"url": url, "event": event, "secret": secret})
        except RehiveRequestError as exc:
            if exc.status == 400 and any(text in json.dumps(exc.body).lower() for text in ALREADY_EXISTS):
                continue
            log.warning("activation: Rehive refused to create the %s webhook (%s)", event, exc.status)
            raise ApiError(502, f"Rehive refused to create the webhook for {event}.") from None
        except (RehiveUnauthorized, RehiveForbidden):
            log.warning(
                "activation: the service user may not create webhooks (permission: admin webhook add)"
            )
            raise ApiError(502, f"Rehive refused to create the webhook for {event}.") from None
        except RehiveError as exc:
            raise _upstream(exc) from None


def _success(company: str, status: int = 200, **extra: Any) -> tuple[Response, int]:
    return jsonify(status="success", data={"company": company, **extra}), status


@bp.post("/activate/", strict_slashes=False)
def activate() -> tuple[Response, int]:
    """Serve the token's company from now on: 201 the first time, 200 on a re-activation."""
    budget = Budget(BUDGET_SECONDS)
    token, _ = _body()
    user = _service_user(budget, token)
    try:
        body = budget.client(token).get("admin/company/")
    except (RehiveUnauthorized, RehiveForbidden, RehiveRequestError):
        raise ApiError(400, "Rehive did not name the token's company.") from None
    except RehiveError as exc:
        raise _upstream(exc) from None
    data = body.get("data")
    company = data.get("id") if isinstance(data, dict) else None
    if not isinstance(company, str) or not company or company != user["company"]:
        raise _upstream(RehiveBadResponse("Rehive's company is not the token user's"))
    allowed = current_app.config["SETTINGS"].activation_allowed_companies
    if allowed and company not in allowed:
        log.warning("activation refused company=%s: not in ACTIVATION_ALLOWED_COMPANIES", company)
        raise ApiError(403, "This company may not activate this extension.")
    registry = _registry()
    secret = registry.secret_for_activation(company)
    events = _events()
    _create_webhooks(budget, token, secret, events)
    created = registry.activate(company, token, user["id"], secret, events)
    log.info("company activated company=%s new=%s webhook_events=%d", company, created, len(events))
    return _success(company, 201 if created else 200)


@bp.post("/deactivate/", strict_slashes=False)
def deactivate() -> tuple[Response, int]:
    """Stop serving the token user's company (its token is deleted); `purge` deletes all of its rows."""
    budget = Budget(BUDGET_SECONDS)
    token, purge = _body(purge=True)
    company = _service_user(budget, token)["company"]
    registry = _registry()
    if registry.store.registration(company) is None:
        raise ApiError(400, NOT_ACTIVATED)
    if purge:
        deleted = registry.purge(company)
        log.info("company purged company=%s rows=%s", company, deleted)
    else:
        registry.deactivate(company)
        log.info("company deactivated company=%s", company)
    return _success(company, purged=purge)


@bp.post("/rotate/", strict_slashes=False)
def rotate() -> tuple[Response, int]:
    """Replace an active company's token with the posted one (and clear token_invalid)."""
    budget = Budget(BUDGET_SECONDS)
    token, _ = _body()
    user = _service_user(budget, token)
    company = user["company"]
    if not _registry().replace_token(company, token, user["id"]):
        raise ApiError(400, "Company is not active.")
    log.info("company token rotated company=%s", company)
    return _success(company)


def init_app(app: Flask) -> None:
    """Register the three endpoints in multi mode (single mode has no such endpoints: 404)."""
    if app.config["SETTINGS"].multi:
        app.register_blueprint(bp)
