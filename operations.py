"""What operators call: `GET /metrics` (Prometheus) and `GET /readyz` (readiness); `/healthz` is in app.py."""

from __future__ import annotations

import hmac
import logging
import time

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

import metrics
from addresses import Network, in_networks, parse_networks
from errors import ApiError
from rehive_client import admin
from store import TOKEN_INVALID, Store
from webhooks.extension import webhooks_of
from webhooks.inbox import STATUSES

log = logging.getLogger("service")

bp = Blueprint("operations", __name__)


def _address_allowed(networks: tuple[Network, ...]) -> bool:
    return in_networks(request.remote_addr, networks)


def _token_allowed(expected: str) -> bool:
    scheme, _, given = (request.headers.get("Authorization") or "").strip().partition(" ")
    if not expected or scheme.lower() != "bearer" or not given.strip():
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str with a TypeError.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), expected.encode())


@bp.get("/metrics")
def metrics_text() -> Response:
    """Answer Prometheus' scrape: loopback (METRICS_ALLOWED_IPS) or `Bearer <METRICS_TOKEN>` only."""
    settings = current_app.config["SETTINGS"]
    networks = current_app.extensions["metrics_networks"]
    if not (_address_allowed(networks) or _token_allowed(settings.metrics_token)):
        raise ApiError(403, "Metrics are not served to this caller.")
    body = metrics.render(current_app.extensions["metrics_gauges"])
    return Response(body, content_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})


def companies_by_state(inbox: Store) -> dict[str, int]:
    """Count the registrations: active (token ok), token_invalid (active, token refused), inactive."""
    counts = dict.fromkeys(("active", "token_invalid", "inactive"), 0)
    for row in inbox.registrations():
        if not row["active"]:
            counts["inactive"] += 1
        elif row["token_status"] == TOKEN_INVALID:
            counts["token_invalid"] += 1
        else:
            counts["active"] += 1
    return counts


def readiness_problems() -> list[str]:
    """Return why this process should not get traffic now (empty when it is ready)."""
    problems = []
    try:
        webhooks_of().inbox.probe_write()
    except Exception as exc:  # any failure to write means deliveries would get 503s
        log.warning("readiness: the store refused a write: %s", type(exc).__name__)
        problems.append(f"The store does not take writes ({type(exc).__name__}).")
    refused = admin.base().admin_token_refused  # single mode's admin token
    if refused is not None:
        problems.append(f"Rehive refused the admin token on its last use ({refused}).")
    return problems


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when the store takes a write and Rehive last accepted the admin token; 503 with reasons."""
    problems = readiness_problems()
    if problems:
        response = jsonify(status="error", message="Not ready: " + " ".join(problems), reasons=problems)
        return response, 503
    return jsonify(status="ok"), 200


def init_app(app: Flask) -> None:
    """Register /metrics and /readyz, and the hooks that count webhook and custom endpoint answers."""
    settings = app.config["SETTINGS"]
    # Strict, as for webhooks: `10.0.0.1/0` (host bits set) would open /metrics to everyone.
    app.extensions["metrics_networks"] = parse_networks(settings.metrics_allowed_ips, "METRICS_ALLOWED_IPS")
    inbox = webhooks_of(app).inbox
    app.extensions["metrics_gauges"] = metrics.ScrapeTimeGauges(
        lambda: ({**dict.fromkeys(STATUSES, 0), **inbox.counts()}, inbox.oldest_unfinished()),
        time.time,
        companies=(lambda: companies_by_state(inbox)) if settings.multi else None,
    )
    app.register_blueprint(bp)

    @app.before_request
    def _started() -> None:
        g.started = time.monotonic()

    @app.after_request
    def _count(response: Response) -> Response:
        if request.blueprint == "webhooks":
            status = response.status_code
            outcome = metrics.delivery_outcome(status, g.get("webhook_outcome"))
            metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
            if status in (200, 202) and "started" in g:
                metrics.WEBHOOK_ACK_SECONDS.observe(time.monotonic() - g.started)
        elif request.blueprint == "custom":
            metrics.CUSTOM_RESPONSES.labels(str(response.status_code)).inc()
        return response
