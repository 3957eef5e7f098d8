"""`POST /webhooks/`: check the sender, store the delivery once, answer; never run handlers here."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, g, jsonify, request

from addresses import in_networks
from companies import company_of, registry_of
from errors import ApiError
from store import StoreUnavailable
from webhooks.envelope import EnvelopeError, parse_envelope
from webhooks.events import Event
from webhooks.extension import Webhooks, webhooks_of
from webhooks.verify import WebhookAuthError, verify_secret

log = logging.getLogger("webhooks")

bp = Blueprint("webhooks", __name__)

JSON_TYPES = ("application/json",)


def _check_address(state: Webhooks) -> None:
    if not state.allowed_networks:
        return
    # remote_addr is already the client's address when ProxyFix trusts our proxies (app.py).
    if not in_networks(request.remote_addr, state.allowed_networks):
        raise ApiError(403, "Webhooks are not accepted from this address.")


def _read_body(max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, f"The body is larger than {max_bytes} bytes.")
    mimetype = request.mimetype
    if mimetype not in JSON_TYPES and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise ApiError(415, "The body must be JSON (Content-Type: application/json).")
    # Also caps what is read when no Content-Length was sent (a chunked body). One byte more than
    # allowed: werkzeug stops a chunked body at this cap without an error, so a body cut exactly at
    # max_bytes could not be told from a complete one, and its first max_bytes would be stored.
    request.max_content_length = max_bytes + 1
    body = request.get_data(cache=False)
    if len(body) > max_bytes:
        raise ApiError(413, f"The body is larger than {max_bytes} bytes.")
    return body


@bp.post("/webhooks/", strict_slashes=False)
def receive() -> tuple[Response, int]:
    """Store a Rehive delivery: 202 when new, 200 when already stored, 4xx (nothing stored) if bad."""
    settings = current_app.config["SETTINGS"]
    state = webhooks_of()
    _check_address(state)
    if settings.multi:
        return _store(state, _receive_for_a_company(settings.webhook_max_bytes))
    try:
        verify_secret(request.headers.get("Authorization"), state.secrets)
    except WebhookAuthError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Secret"}) from None
    body = _read_body(settings.webhook_max_bytes)
    try:
        envelope = parse_envelope(body)
    except EnvelopeError as exc:
        raise ApiError(400, str(exc)) from None
    # Configured, or learned from Rehive in the background (503 until then): never asked in here.
    if envelope.company != company_of().for_deliveries():
        g.webhook_outcome = "other_company"  # the metrics' refusal reason; 403 alone means the address
        raise ApiError(403, "This webhook is for another company.")
    return _store(state, (envelope, body))


def _receive_for_a_company(max_bytes: int) -> tuple[Event, bytes]:
    """Multi mode: check size, type, JSON, envelope fields, then the company, then its secret.

    The company must be read before the secret can be: each has its own. Nothing is stored on refusal.
    """
    body = _read_body(max_bytes)
    try:
        envelope = parse_envelope(body)
    except EnvelopeError as exc:
        raise ApiError(400, str(exc)) from None
    secrets = registry_of().secrets_for(envelope.company)
    if not secrets:  # never activated, inactive, or purged
        g.webhook_outcome = "other_company"
        raise ApiError(403, "This webhook is for a company that has not activated the extension.")
    try:
        verify_secret(request.headers.get("Authorization"), secrets)
    except WebhookAuthError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Secret"}) from None
    return envelope, body


def _store(state: Webhooks, received: tuple[Event, bytes]) -> tuple[Response, int]:
    envelope, body = received
    try:
        stored = state.inbox.insert(envelope.company, envelope.id, envelope.name, body.decode("utf-8"))
    except StoreUnavailable:  # down, locked for too long, full: nothing was stored
        # Not stored, so not acknowledged: Rehive delivers it again later.
        log.exception(
            "webhook not stored company=%s id=%r event=%s", envelope.company, envelope.id, envelope.name
        )
        raise ApiError(503, "The event could not be stored; retry later.", {"Retry-After": "30"}) from None
    if not stored:
        log.info("webhook duplicate company=%s id=%r event=%s", envelope.company, envelope.id, envelope.name)
        return jsonify(status="success"), 200
    state.pool.wake()
    log.info("webhook received company=%s id=%r event=%s", envelope.company, envelope.id, envelope.name)
    return jsonify(status="success"), 202
